"""The store's connection: opening a URL, one transaction per call (writes BEGIN IMMEDIATE on SQLite)."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

from rlhfkit.feedback.store.errors import StoreError, Unavailable
from rlhfkit.feedback.store.schema import create_engine, open_schema


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


class StoreBase:
    """Opens the database at `url` (creating or checking the schema) and hands out transactions."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)
        try:
            with self._write() as conn:
                open_schema(conn, self._where())
        except sa.exc.DatabaseError as e:
            raise StoreError(f"{self._where()}: cannot open ({str(e.orig).splitlines()[0]})") from None

    @classmethod
    def for_run(cls, run_dir: str | Path, db: str | None = None):
        """The store of a run: `db` (a URL, or a path to an SQLite file) or RUN/feedback.db."""
        if db and "://" in db:
            return cls(db)
        path = Path(db) if db else Path(run_dir) / "feedback.db"
        return cls(f"sqlite:///{path.resolve()}")

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        """One committed write transaction (BEGIN IMMEDIATE on SQLite)."""
        try:
            with self.engine.connect().execution_options(write=True) as conn, conn.begin():
                yield conn
        except sa.exc.OperationalError as e:
            raise Unavailable(f"{self._where()}: database error ({str(e.orig).splitlines()[0]})") from None

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        try:
            with self.engine.connect() as conn, conn.begin():
                yield conn
        except sa.exc.OperationalError as e:
            raise Unavailable(f"{self._where()}: database error ({str(e.orig).splitlines()[0]})") from None

    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)
