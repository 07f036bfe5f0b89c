"""Annotators: people with a login token (only its sha256 is stored), simulated and imported ones without."""

from __future__ import annotations

import secrets
import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback.store.base import hash_token
from rlhfkit.feedback.store.errors import Conflict, NotFound, StoreError
from rlhfkit.feedback.store.schema import annotators


class Annotators:
    """Who ranks, in a FeedbackStore (needs StoreBase's _read/_write)."""

    def add_annotator(self, name: str, role: str = "annotator") -> str:
        """Create an annotator; returns the plaintext token (only its sha256 is stored)."""
        name = name.strip()
        if not name:
            raise StoreError("an annotator needs a name")
        token = secrets.token_urlsafe(32)
        try:
            with self._write() as conn:
                conn.execute(annotators.insert().values(name=name, token_hash=hash_token(token), role=role,
                                                        created_at=time.time()))
        except IntegrityError:
            raise Conflict(f"annotator {name!r} already exists") from None
        return token

    def annotator(self, name: str, role: str = "annotator", create: bool = True) -> dict:
        """{"id", "name", "role"} of the annotator called `name` (created without a token: simulated, imported)."""
        with self._write() as conn:
            row = conn.execute(sa.select(annotators.c.id, annotators.c.name, annotators.c.role)
                               .where(annotators.c.name == name)).first()
            if row is None:
                if not create:
                    raise NotFound(f"annotator {name!r} not found")
                conn.execute(annotators.insert().values(name=name, token_hash=None, role=role, created_at=time.time()))
                row = conn.execute(sa.select(annotators.c.id, annotators.c.name, annotators.c.role)
                                   .where(annotators.c.name == name)).first()
        return dict(row._mapping)

    def annotators(self) -> list[dict]:
        with self._read() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(annotators.c.id, annotators.c.name, annotators.c.role).order_by(annotators.c.id))]

    def authenticate(self, token: str) -> dict | None:
        if not token:
            return None
        with self._read() as conn:
            row = conn.execute(sa.select(annotators.c.id, annotators.c.name, annotators.c.role)
                               .where(annotators.c.token_hash == hash_token(token))).first()
        return dict(row._mapping) if row else None

