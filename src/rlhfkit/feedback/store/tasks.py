"""Prompts, responses and ranking tasks in; the labelling loop's queue out (next task, skip, progress)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from rlhfkit.feedback.store.errors import Conflict, NotFound, StoreError
from rlhfkit.feedback.store.schema import KINDS, offers, prompts, rankings, responses, skips, task_responses, tasks


class Tasks:
    """Content and the queue of a FeedbackStore (needs StoreBase's _read/_write)."""

    def add_prompt(self, text: str, meta: dict | None = None) -> int:
        with self._write() as conn:
            return self._add_prompt(conn, text, meta)

    def _add_prompt(self, conn, text, meta=None) -> int:
        return conn.execute(prompts.insert().values(text=text, meta=meta or {}, created_at=time.time())
                            ).inserted_primary_key[0]

    def add_response(self, prompt_id: int, text: str, model: str = "", sampling: dict | None = None) -> int:
        with self._write() as conn:
            if conn.execute(sa.select(prompts.c.id).where(prompts.c.id == prompt_id)).first() is None:
                raise NotFound(f"prompt {prompt_id} not found")
            return self._add_response(conn, prompt_id, text, model, sampling)

    def _add_response(self, conn, prompt_id, text, model="", sampling=None) -> int:
        return conn.execute(responses.insert().values(
            prompt_id=prompt_id, text=text, model=model, sampling=sampling or {}, created_at=time.time())
        ).inserted_primary_key[0]

    def create_task(self, prompt_id: int, response_ids: list[int], kind: str = "rank", overlap: int = 1) -> int:
        with self._write() as conn:
            return self._create_task(conn, prompt_id, response_ids, kind, overlap)

    def _create_task(self, conn, prompt_id, response_ids, kind="rank", overlap=1, key=None) -> int:
        if kind not in KINDS:
            raise StoreError(f"task kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if len(response_ids) < 2 or len(set(response_ids)) != len(response_ids):
            raise StoreError(f"a task needs at least 2 distinct responses, got {response_ids}")
        if kind == "arena" and len(response_ids) != 2:
            raise StoreError(f"an arena task compares exactly 2 responses, got {len(response_ids)}")
        if overlap < 1:
            raise StoreError(f"overlap must be >= 1, got {overlap}")
        owners = dict(conn.execute(sa.select(responses.c.id, responses.c.prompt_id)
                                   .where(responses.c.id.in_(response_ids))).all())
        missing = [r for r in response_ids if r not in owners]
        if missing:
            raise NotFound(f"responses not found: {missing}")
        if any(p != prompt_id for p in owners.values()):
            raise StoreError(f"responses {response_ids} do not all answer prompt {prompt_id}")
        task_id = conn.execute(tasks.insert().values(prompt_id=prompt_id, kind=kind, overlap=overlap, key=key,
                                                     created_at=time.time())).inserted_primary_key[0]
        conn.execute(task_responses.insert(), [{"task_id": task_id, "response_id": r, "position": i}
                                               for i, r in enumerate(response_ids)])
        return task_id

    def add_sampled(self, prompt: str, meta: dict | None, texts: list[str], model: str = "",
                    sampling: dict | None = None, kind: str = "rank", overlap: int = 1, key: str | None = None) -> int:
        """A prompt, its sampled responses and their ranking task in one transaction; -> task id."""
        return self.add_sampled_many([(prompt, meta, texts, key)], model, sampling, kind, overlap)[0]

    def add_sampled_many(self, items: list[tuple[str, dict | None, list[str], str | None]], model: str = "",
                         sampling: dict | None = None, kind: str = "rank", overlap: int = 1) -> list[int]:
        """(prompt, meta, texts, key) items, each a prompt + responses + task, all in one transaction
        (a killed fill keeps whole batches or nothing of them); -> task ids."""
        try:
            with self._write() as conn:
                out = []
                for prompt, meta, texts, key in items:
                    pid = self._add_prompt(conn, prompt, meta)
                    rids = [self._add_response(conn, pid, t, model, sampling) for t in texts]
                    out.append(self._create_task(conn, pid, rids, kind, overlap, key))
                return out
        except IntegrityError:  # a task key taken meanwhile (two fills at once): nothing of this batch is kept
            raise Conflict("these prompts were stored meanwhile by another fill or import; run again to "
                           "sample only what is still missing") from None

    def task_keys(self, keys: list[str]) -> set[str]:
        """Those of `keys` that some task already carries (what an earlier fill or import stored)."""
        found: set[str] = set()
        with self._read() as conn:
            for lo in range(0, len(keys), 500):  # bounded IN lists
                found.update(conn.execute(sa.select(tasks.c.key).where(tasks.c.key.in_(keys[lo: lo + 500]))
                                          ).scalars())
        return found

    # ---------------------------------------------------------------- the labelling loop

    def _open_tasks(self, annotator_id: int, kind: str):
        """Tasks of `kind` this annotator has not ranked or skipped, with fewer than `overlap` rankings."""
        n_rankings = (sa.select(sa.func.count()).select_from(rankings)
                      .where(rankings.c.task_id == tasks.c.id).scalar_subquery())
        mine = sa.select(rankings.c.task_id).where(rankings.c.annotator_id == annotator_id)
        skipped = sa.select(skips.c.task_id).where(skips.c.annotator_id == annotator_id)
        return (sa.select(tasks.c.id, tasks.c.prompt_id, tasks.c.kind)
                .where(tasks.c.kind == kind, n_rankings < tasks.c.overlap,
                       tasks.c.id.not_in(mine), tasks.c.id.not_in(skipped)))

    def next_task(self, annotator_id: int, kind: str = "rank") -> dict | None:
        """The oldest open task for this annotator, recorded as offered to them (the web API accepts
        rankings only for offered tasks); None when nothing is left."""
        with self._write() as conn:
            row = conn.execute(self._open_tasks(annotator_id, kind).order_by(tasks.c.id).limit(1)).first()
            if row is None:
                return None
            insert = (sqlite_insert if conn.dialect.name == "sqlite" else pg_insert)(offers)
            conn.execute(insert.values(task_id=row.id, annotator_id=annotator_id, created_at=time.time())
                         .on_conflict_do_nothing())  # offered again (a reload, an undo): one row
            return self._task(conn, row.id)

    def task(self, task_id: int) -> dict:
        """{"task_id", "prompt", "responses": [{"id", "text"}], "kind"} (responses in stored order)."""
        with self._read() as conn:
            return self._task(conn, task_id)

    def _task(self, conn, task_id: int) -> dict:
        row = conn.execute(sa.select(tasks.c.id, tasks.c.kind, tasks.c.overlap, prompts.c.text, prompts.c.meta)
                           .join(prompts, prompts.c.id == tasks.c.prompt_id).where(tasks.c.id == task_id)).first()
        if row is None:
            raise NotFound(f"task {task_id} not found")
        resp = conn.execute(sa.select(responses.c.id, responses.c.text)
                            .join(task_responses, task_responses.c.response_id == responses.c.id)
                            .where(task_responses.c.task_id == task_id).order_by(task_responses.c.position)).all()
        return {"task_id": row.id, "prompt": row.text, "responses": [{"id": r.id, "text": r.text} for r in resp],
                "kind": row.kind, "overlap": row.overlap, "meta": row.meta or {}}

    def skip_task(self, task_id: int, annotator_id: int) -> None:
        with self._write() as conn:
            if conn.execute(sa.select(tasks.c.id).where(tasks.c.id == task_id)).first() is None:
                raise NotFound(f"task {task_id} not found")
            done = conn.execute(sa.select(skips.c.task_id).where(skips.c.task_id == task_id,
                                                                 skips.c.annotator_id == annotator_id)).first()
            if done is None:
                conn.execute(skips.insert().values(task_id=task_id, annotator_id=annotator_id, created_at=time.time()))

    def progress(self, annotator_id: int, kind: str = "rank") -> dict:
        with self._read() as conn:
            done = conn.execute(sa.select(sa.func.count()).select_from(rankings.join(tasks))
                                .where(rankings.c.annotator_id == annotator_id, tasks.c.kind == kind)).scalar()
            remaining = conn.execute(sa.select(sa.func.count()).select_from(
                self._open_tasks(annotator_id, kind).subquery())).scalar()
        return {"done": done, "remaining": remaining}

    def open_tasks(self, annotator_id: int, kind: str = "rank") -> list[int]:
        """Ids of the tasks this annotator could still rank, oldest first (the simulated labeler walks them)."""
        with self._read() as conn:
            return list(conn.execute(self._open_tasks(annotator_id, kind).with_only_columns(tasks.c.id)
                                     .order_by(tasks.c.id)).scalars())
