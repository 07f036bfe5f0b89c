"""Rankings: submitted exactly once per (task, annotator), undone, and read back with counts."""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from rlhfkit.feedback.store.base import iso
from rlhfkit.feedback.store.errors import Conflict, InvalidRanking, NotFound, StoreError
from rlhfkit.feedback.store.schema import (SOURCES, annotators, offers, prompts, rankings, responses, skips, task_responses,
                                           tasks)


class Rankings:
    """Rankings in and out of a FeedbackStore (needs StoreBase's _read/_write)."""

    def submit_ranking(self, task_id: int, annotator_id: int, order: list[int], all_bad: bool = False,
                       seconds: float | None = None, source: str = "human", tie: bool = False,
                       offered_only: bool = False) -> tuple[int, bool]:
        """Store one ranking (response ids best -> worst); -> (ranking_id, created). Exactly once per
        (task, annotator): the same order again returns the stored id; a different order is a Conflict.
        Also a Conflict: a task that already has its `overlap` rankings, one this annotator skipped, and
        (with `offered_only`, as the web API asks) one that next_task never offered to this annotator."""
        if source not in SOURCES:
            raise StoreError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
        try:
            order = [int(r) for r in order]
        except (TypeError, ValueError):
            raise InvalidRanking(f"task {task_id}: the order must be a list of response ids, got {order!r}") from None
        try:
            with self._write() as conn:
                rid = self._submit(conn, task_id, annotator_id, order, all_bad, seconds, source, tie, offered_only)
                if isinstance(rid, tuple):
                    return rid
                return rid, True
        except IntegrityError:
            # PostgreSQL: another request inserted the same (task, annotator) between our check and insert
            with self._read() as conn:
                return self._existing(conn, task_id, annotator_id, order)

    def _submit(self, conn, task_id, annotator_id, order, all_bad, seconds, source, tie, offered_only):
        # FOR UPDATE (PostgreSQL; SQLite's BEGIN IMMEDIATE already serialises writers): two annotators
        # racing for a task's last place queue here, so the overlap count below cannot be overtaken
        task = conn.execute(sa.select(tasks.c.kind, tasks.c.overlap).where(tasks.c.id == task_id)
                            .with_for_update()).first()
        if task is None:
            raise NotFound(f"task {task_id} not found")
        if conn.execute(sa.select(annotators.c.id).where(annotators.c.id == annotator_id)).first() is None:
            raise NotFound(f"annotator {annotator_id} not found")
        ids = conn.execute(sa.select(task_responses.c.response_id).where(task_responses.c.task_id == task_id)
                           .order_by(task_responses.c.position)).scalars().all()
        if sorted(order) != sorted(ids):
            raise InvalidRanking(f"task {task_id}: the order {order} is not a permutation of the task's "
                                 f"responses {list(ids)}")
        if tie and len(ids) != 2:
            raise InvalidRanking(f"task {task_id}: a tie is only for 2-way (arena) comparisons")
        if conn.execute(sa.select(rankings.c.id).where(rankings.c.task_id == task_id,
                                                       rankings.c.annotator_id == annotator_id)).first():
            return self._existing(conn, task_id, annotator_id, order)
        mine = (skips.c.task_id == task_id, skips.c.annotator_id == annotator_id)
        if conn.execute(sa.select(skips.c.task_id).where(*mine)).first():
            raise Conflict(f"task {task_id}: annotator {annotator_id} skipped it; a skipped task takes no ranking")
        n = conn.execute(sa.select(sa.func.count()).select_from(rankings).where(rankings.c.task_id == task_id)).scalar()
        if n >= task.overlap:
            raise Conflict(f"task {task_id} is full: it has its {task.overlap} ranking{'s' * (task.overlap > 1)} "
                           "(overlap); ask for the next task")
        if offered_only and conn.execute(sa.select(offers.c.task_id).where(
                offers.c.task_id == task_id, offers.c.annotator_id == annotator_id)).first() is None:
            raise Conflict(f"task {task_id} was never offered to annotator {annotator_id}: rank the task "
                           "that /api/tasks/next gives you")
        return conn.execute(rankings.insert().values(
            task_id=task_id, annotator_id=annotator_id, ranked_ids=order, all_bad=bool(all_bad), tie=bool(tie),
            seconds=None if seconds is None else float(seconds), source=source, created_at=time.time(),
        )).inserted_primary_key[0]

    def _existing(self, conn, task_id, annotator_id, order) -> tuple[int, bool]:
        row = conn.execute(sa.select(rankings.c.id, rankings.c.ranked_ids).where(
            rankings.c.task_id == task_id, rankings.c.annotator_id == annotator_id)).first()
        if list(row.ranked_ids) != list(order):
            raise Conflict(f"task {task_id}: annotator {annotator_id} already ranked it as {list(row.ranked_ids)}; "
                           "undo that ranking first to change it")
        return row.id, False

    def undo_last(self, annotator_id: int) -> int | None:
        """Delete this annotator's most recent ranking; -> its task id (to show again), or None."""
        with self._write() as conn:
            row = conn.execute(sa.select(rankings.c.id, rankings.c.task_id)
                               .where(rankings.c.annotator_id == annotator_id)
                               .order_by(rankings.c.id.desc()).limit(1)).first()
            if row is None:
                return None
            conn.execute(rankings.delete().where(rankings.c.id == row.id))
            return row.task_id

    # ---------------------------------------------------------------- reading back

    def rankings(self, source: str | None = None) -> list[dict]:
        """Every ranking, oldest first: {"ranking_id", "task_id", "prompt", "responses" (text best->worst),
        "response_ids", "models" (checkpoint per response, best->worst), "annotator", "source", "all_bad",
        "tie", "seconds", "created_at", "kind", "meta" (the prompt's)}."""
        q = (sa.select(rankings, tasks.c.kind, prompts.c.text.label("prompt"), prompts.c.meta,
                       annotators.c.name.label("annotator"))
             .join(tasks, tasks.c.id == rankings.c.task_id).join(prompts, prompts.c.id == tasks.c.prompt_id)
             .join(annotators, annotators.c.id == rankings.c.annotator_id).order_by(rankings.c.id))
        if source is not None:
            q = q.where(rankings.c.source == source)
        with self._read() as conn:
            rows = conn.execute(q).all()
            resp = {r.id: (r.text, r.model) for r in conn.execute(
                sa.select(responses.c.id, responses.c.text, responses.c.model)
                .join(task_responses, task_responses.c.response_id == responses.c.id)
                .join(rankings, rankings.c.task_id == task_responses.c.task_id)
                .where(*([rankings.c.source == source] if source is not None else [])))}
        out = []
        for r in rows:
            ids = [int(i) for i in r.ranked_ids]
            out.append({
                "ranking_id": r.id, "task_id": r.task_id, "prompt": r.prompt,
                "responses": [resp[i][0] for i in ids], "response_ids": ids, "models": [resp[i][1] for i in ids],
                "annotator": r.annotator, "source": r.source, "all_bad": bool(r.all_bad), "tie": bool(r.tie),
                "seconds": r.seconds, "created_at": iso(r.created_at), "kind": r.kind, "meta": r.meta or {},
            })
        return out

    def counts(self) -> dict[str, Any]:
        """Row counts and task coverage for `rlhfkit feedback stats`."""
        with self._read() as conn:
            def n(table, *where):
                return conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar()
            per_task = (sa.select(tasks.c.id, tasks.c.overlap, sa.func.count(rankings.c.id).label("n"))
                        .select_from(tasks.outerjoin(rankings)).group_by(tasks.c.id, tasks.c.overlap).subquery())
            complete = conn.execute(sa.select(sa.func.count()).select_from(per_task)
                                    .where(per_task.c.n >= per_task.c.overlap)).scalar()
            by_source = dict(conn.execute(sa.select(rankings.c.source, sa.func.count())
                                          .group_by(rankings.c.source)).all())
            by_kind = dict(conn.execute(sa.select(tasks.c.kind, sa.func.count()).group_by(tasks.c.kind)).all())
            return {"prompts": n(prompts), "responses": n(responses), "tasks": n(tasks),
                    "tasks_by_kind": by_kind, "tasks_complete": complete, "rankings": n(rankings),
                    "rankings_by_source": by_source, "skips": n(skips), "annotators": n(annotators),
                    "all_bad": n(rankings, rankings.c.all_bad.is_(True))}

