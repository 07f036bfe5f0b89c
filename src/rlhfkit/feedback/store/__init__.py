"""The feedback store: prompts, sampled responses, ranking tasks, rankings, annotators.

SQLAlchemy 2 Core over SQLite by default (`RUN/feedback.db`, WAL, foreign keys on) or
PostgreSQL by URL (`--db postgresql://user@host/db`): one code path, one schema.

    schema.py      the tables, the engine (WAL, BEGIN IMMEDIATE), the schema version check
    errors.py      StoreError and its kinds (NotFound, InvalidRanking, Conflict, Unavailable)
    base.py        opening a store, one transaction per call
    tasks.py       prompts, responses, tasks in; the labelling queue (next task, skip, progress)
    annotators.py  annotators and their tokens
    rankings.py    submitting, undoing and reading back rankings; counts
    imports.py     bulk import of ranked records
"""

from __future__ import annotations

from rlhfkit.feedback.store.annotators import Annotators
from rlhfkit.feedback.store.base import StoreBase, hash_token
from rlhfkit.feedback.store.errors import Conflict, InvalidRanking, NotFound, StoreError, Unavailable
from rlhfkit.feedback.store.imports import Imports
from rlhfkit.feedback.store.rankings import Rankings
from rlhfkit.feedback.store.schema import (KINDS, SCHEMA_VERSION, SOURCES, annotators, md, offers, prompts,
                                           rankings, responses, schema_version, skips, task_responses,
                                           tasks)
from rlhfkit.feedback.store.tasks import Tasks

__all__ = ["FeedbackStore", "StoreError", "NotFound", "InvalidRanking", "Conflict", "Unavailable", "hash_token",
           "SCHEMA_VERSION", "SOURCES", "KINDS", "md", "schema_version", "prompts", "responses", "tasks",
           "task_responses", "annotators", "rankings", "skips", "offers"]


class FeedbackStore(Tasks, Annotators, Rankings, Imports, StoreBase):
    """Everything the labelling loop, the importers and the reward stage read and write.

    `FeedbackStore(url)` or `FeedbackStore.for_run(run_dir, db=None)`; each method is one
    transaction. The methods live in the modules of this package, grouped by what they touch."""
