"""Bulk import of ranked records (files in other formats, via feedback/formats.py): one transaction, idempotent."""

from __future__ import annotations

import hashlib
import json
import time

import sqlalchemy as sa

from rlhfkit.feedback.store.errors import StoreError
from rlhfkit.feedback.store.schema import annotators, prompts, rankings, responses, task_responses, tasks


class Imports:
    """`import_rankings` of a FeedbackStore (needs StoreBase's _write)."""

    def import_rankings(self, records: list[dict], annotator: str = "imported", source: str = "imported",
                        model: str = "", chunk: int = 1000) -> tuple[int, int]:
        """Add ranked records {"prompt", "responses": [best..worst], "meta"?, "annotator"?, "all_bad"?,
        "tie"?, "kind"?, "seconds"?} in one transaction; -> (added, already present). Each record's
        content hash is stored on its task, so importing the same file twice adds nothing.
        Inserts go in bulk (executemany with RETURNING in parameter order): ~10x faster than one by one."""
        for i, rec in enumerate(records):
            resp = rec.get("responses")
            if not isinstance(resp, list) or len(resp) < 2 or not all(isinstance(r, str) for r in resp):
                raise StoreError(f"record {i}: 'responses' must be a list of at least 2 strings")
            if (rec.get("tie") or rec.get("kind") == "arena") and len(resp) != 2:
                raise StoreError(f"record {i}: a tie or an arena vote compares exactly 2 responses")
        now = time.time()
        with self._write() as conn:
            existing = set(conn.execute(sa.select(tasks.c.key).where(tasks.c.key.is_not(None))).scalars())
            todo, skipped = [], 0
            for rec in records:
                who = str(rec.get("annotator") or annotator)
                meta = rec.get("meta") or {}
                key = hashlib.sha256(json.dumps([rec["prompt"], rec["responses"], who, meta.get("messages")],
                                                ensure_ascii=False).encode()).hexdigest()
                if key in existing:
                    skipped += 1
                    continue
                existing.add(key)
                todo.append((rec, who, meta, key))
            names = {who for _, who, _, _ in todo}
            known = dict(conn.execute(sa.select(annotators.c.name, annotators.c.id)
                                      .where(annotators.c.name.in_(names))).all()) if names else {}
            for who in sorted(names - set(known)):
                known[who] = conn.execute(annotators.insert().values(
                    name=who, token_hash=None, role="imported", created_at=now)).inserted_primary_key[0]
            for lo in range(0, len(todo), chunk):
                part = todo[lo: lo + chunk]
                pids = conn.execute(prompts.insert().returning(prompts.c.id, sort_by_parameter_order=True), [
                    {"text": rec["prompt"], "meta": meta, "created_at": now} for rec, _, meta, _ in part]
                ).scalars().all()
                rows = []
                for (rec, _, meta, _), pid in zip(part, pids):
                    models = meta.get("models") if len(meta.get("models") or []) == len(rec["responses"]) else None
                    rows += [{"prompt_id": pid, "text": t, "model": models[j] if models else rec.get("model", model),
                              "sampling": {}, "created_at": now} for j, t in enumerate(rec["responses"])]
                rids = iter(conn.execute(responses.insert().returning(responses.c.id, sort_by_parameter_order=True),
                                         rows).scalars().all())
                ranked = [[next(rids) for _ in rec["responses"]] for rec, _, _, _ in part]
                tids = conn.execute(tasks.insert().returning(tasks.c.id, sort_by_parameter_order=True), [
                    {"prompt_id": pid, "kind": "arena" if rec.get("kind") == "arena" else "rank", "overlap": 1,
                     "key": key, "created_at": now} for (rec, _, _, key), pid in zip(part, pids)]).scalars().all()
                conn.execute(task_responses.insert(), [{"task_id": tid, "response_id": r, "position": j}
                                                       for tid, ids in zip(tids, ranked) for j, r in enumerate(ids)])
                conn.execute(rankings.insert(), [
                    {"task_id": tid, "annotator_id": known[who], "ranked_ids": ids, "all_bad": bool(rec.get("all_bad")),
                     "tie": bool(rec.get("tie")), "seconds": rec.get("seconds"), "source": source, "created_at": now}
                    for (rec, who, _, _), tid, ids in zip(part, tids, ranked)])
        return len(todo), skipped

