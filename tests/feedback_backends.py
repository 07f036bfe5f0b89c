"""The feedback tests' databases: every store, API and load test runs on SQLite and on PostgreSQL.

PostgreSQL runs need RLHFKIT_TEST_POSTGRES=postgresql://user@host:port/db, a throwaway server
whose user may CREATE DATABASE (.ci/run starts one); each test gets a database of its own,
dropped afterwards. Without the variable the PostgreSQL runs skip (`make test` on a plain machine).

    from feedback_backends import db_url  # noqa: F401  (a fixture: one URL per backend)
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

PG_ENV = "RLHFKIT_TEST_POSTGRES"
PG_URL = os.environ.get(PG_ENV, "")
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql",
                 marks=pytest.mark.skipif(not PG_URL, reason=f"set {PG_ENV} to a throwaway PostgreSQL server")),
]


@contextmanager
def database(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of `backend`: a file in tmp_path, or a fresh PostgreSQL database (dropped after)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'feedback.db'}"
        return
    pytest.importorskip("psycopg", reason="pip install '.[postgres]' for the PostgreSQL runs")
    import sqlalchemy as sa

    admin_url = sa.engine.make_url(PG_URL).set(drivername="postgresql+psycopg")
    name = f"rlhfkit_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield admin_url.set(database=name).set(drivername="postgresql").render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # a killed server's sessions too
        admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path) -> Iterator[str]:
    with database(request.param, tmp_path) as url:
        yield url
