"""The feedback store's tables, its engine (SQLite in WAL mode, or PostgreSQL) and the schema version check.

    prompts(id, text, meta)                       meta: {"messages": [...]} for chat prompts, ...
    responses(id, prompt_id, text, model, sampling)   model = checkpoint that produced it
    tasks(id, prompt_id, kind, overlap, key)      kind "rank" (K responses) or "arena" (2 checkpoints)
    task_responses(task_id, response_id, position)
    annotators(id, name, token_hash, role)        only sha256(token) is stored
    rankings(id, task_id, annotator_id, ranked_ids best->worst, all_bad, tie, seconds, source)
                                                  UNIQUE(task_id, annotator_id): exactly once
    skips(task_id, annotator_id)
    offers(task_id, annotator_id)                 tasks served to an annotator (only those can be ranked
                                                  through the web API)
    schema_version(version)                       2 (version 1 lacked offers; it is upgraded in place)

Concurrency: the web app writes from many worker threads. SQLite runs in WAL mode with a
30 s busy_timeout, and every write transaction starts with BEGIN IMMEDIATE, so writers
queue on the database lock instead of failing with "database is locked" when a read
transaction tries to upgrade to a write (SQLite does not wait in that case). PostgreSQL
relies on the unique constraint (a racing duplicate insert is caught and re-read) and on
SELECT ... FOR UPDATE of the task row, so two annotators cannot both take a task's last place.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from rlhfkit.feedback.store.errors import StoreError
from rlhfkit.files import UserError

SCHEMA_VERSION = 2
SOURCES = ("human", "simulated", "imported", "arena")
KINDS = ("rank", "arena")

md = sa.MetaData()
schema_version = sa.Table("schema_version", md, sa.Column("version", sa.Integer, nullable=False))
prompts = sa.Table(
    "prompts", md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("meta", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", sa.Float, nullable=False),
)
responses = sa.Table(
    "responses", md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("model", sa.Text, nullable=False, default=""),
    sa.Column("sampling", sa.JSON, nullable=False, default=dict),
    sa.Column("created_at", sa.Float, nullable=False),
)
tasks = sa.Table(
    "tasks", md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("prompt_id", sa.Integer, sa.ForeignKey("prompts.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("overlap", sa.Integer, nullable=False, default=1),
    # content hash of an imported or filled task, so importing the same file (or filling from the
    # same prompts and settings) twice adds nothing
    sa.Column("key", sa.String(64), unique=True, nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
task_responses = sa.Table(
    "task_responses", md,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("response_id", sa.Integer, sa.ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
)
annotators = sa.Table(
    "annotators", md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False, unique=True),
    sa.Column("token_hash", sa.String(64), nullable=True, unique=True),
    sa.Column("role", sa.String(32), nullable=False, default="annotator"),
    sa.Column("created_at", sa.Float, nullable=False),
)
rankings = sa.Table(
    "rankings", md,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False, index=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"), nullable=False,
              index=True),
    sa.Column("ranked_ids", sa.JSON, nullable=False),  # response ids, best -> worst
    sa.Column("all_bad", sa.Boolean, nullable=False, default=False),
    sa.Column("tie", sa.Boolean, nullable=False, default=False),
    sa.Column("seconds", sa.Float, nullable=True),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("task_id", "annotator_id", name="one_ranking_per_annotator"),
)
skips = sa.Table(
    "skips", md,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)
offers = sa.Table(
    "offers", md,
    sa.Column("task_id", sa.Integer, sa.ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("annotator_id", sa.Integer, sa.ForeignKey("annotators.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False),
)


def _sqlite_events(engine: sa.Engine) -> None:
    # pysqlite's own transaction handling issues a deferred BEGIN lazily; take it over so a
    # write transaction can start with BEGIN IMMEDIATE (see the module docstring).
    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=FULL")  # a commit survives power loss, not just a crash
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


def create_engine(url: str) -> sa.Engine:
    """An engine for `url`: SQLite (its directory made, WAL, BEGIN IMMEDIATE for writes) or PostgreSQL (psycopg 3)."""
    try:
        u = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(f"{url}: not a database URL (expected sqlite:///path or postgresql://...)") from None
    if u.drivername.startswith("sqlite"):
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        _sqlite_events(engine)
        return engine
    if u.drivername == "postgresql":  # the psycopg 3 driver, not psycopg2
        u = u.set(drivername="postgresql+psycopg")
    try:
        return sa.create_engine(u, pool_pre_ping=True)
    except sa.exc.NoSuchModuleError:
        raise UserError(f"{url}: unknown database kind {u.drivername!r} (use sqlite:/// or postgresql://)") from None
    except ModuleNotFoundError as e:
        raise UserError(f"{url}: the database driver is not installed ({e.name}); "
                        "pip install 'psycopg[binary]'") from None


def open_schema(conn: sa.Connection, where: str) -> None:
    """Create the tables in an empty database, or check that an existing one has this schema version."""
    names = set(sa.inspect(conn).get_table_names())
    if "schema_version" not in names:
        if names & {"prompts", "rankings", "tasks"}:
            raise StoreError(f"{where}: has feedback tables but no schema_version table; "
                             "not a database written by rlhfkit")
        md.create_all(conn)
        conn.execute(schema_version.insert().values(version=SCHEMA_VERSION))
        return
    version = conn.execute(sa.select(schema_version.c.version)).scalar()
    if version == 1:  # version 2 only added the offers table: upgrade in place
        md.create_all(conn, tables=[offers])
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION))
        return
    if version != SCHEMA_VERSION:
        newer = "a newer" if (version or 0) > SCHEMA_VERSION else "an older"
        raise StoreError(f"{where}: feedback schema version {version}, but this rlhfkit reads version "
                         f"{SCHEMA_VERSION} (the database was written by {newer} rlhfkit; "
                         f"use that version, or export and re-import the rankings)")
