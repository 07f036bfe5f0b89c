"""Rankings as every reward-model and preference stage reads them: loaded from a run's feedback
store or any preference file, filtered to those that carry an order, split by prompt, resampled.

A ranking is {"prompt": str, "messages": [...], "responses": [best, ..., worst], "tie": bool,
"all_bad": bool}; `messages` is the prompt's conversation (a plain prompt becomes one user turn).
Used by `rlhfkit reward`, `rlhfkit eval-reward` and `rlhfkit dpo`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rlhfkit.files import UserError


def load_rankings(data: str, db: str = "", fmt: str = "auto", source: str | None = None) -> list[dict]:
    """Rankings from a run's store or a preference file -> [{"messages", "responses", "tie", "all_bad", "prompt"}]."""
    from rlhfkit.feedback.formats import read_preferences

    if not data and not db:
        raise UserError("reward: set `data` to a run dir (with feedback.db) or a preference file")
    path = Path(data).expanduser() if data else None
    if db or (path is not None and path.is_dir()):
        from rlhfkit.feedback.store import FeedbackStore

        if not db and not (path / "feedback.db").is_file():
            raise UserError(f"{path}: no feedback.db in this run dir (rank some samples first, or pass a file)")
        with FeedbackStore.for_run(path or ".", db or None) as store:
            records = store.rankings(source or None)
        where = db or str(path / "feedback.db")
    else:
        records = read_preferences(path, fmt)
        where = str(path)
    if not records:
        raise UserError(f"{where}: no rankings" + (f" from source {source!r}" if source else ""))
    out = []
    for r in records:
        msgs = (r.get("meta") or {}).get("messages") or [{"role": "user", "content": r["prompt"]}]
        out.append({"prompt": r["prompt"], "messages": msgs, "responses": list(r["responses"]),
                    "tie": bool(r.get("tie")), "all_bad": bool(r.get("all_bad"))})
    return out


def usable(rankings: list[dict], skip_all_bad: bool = False) -> list[dict]:
    """Drop ties (no order to learn) and, if asked, all-bad rankings; UserError if none is left."""
    keep = [r for r in rankings if not r["tie"] and len(r["responses"]) >= 2 and not (skip_all_bad and r["all_bad"])]
    if not keep:
        raise UserError(f"none of the {len(rankings)} rankings can train a reward model (all ties"
                        + (" or all_bad)" if skip_all_bad else ")"))
    return keep


def prompt_key(r: dict) -> str:
    return json.dumps(r["messages"], sort_keys=True, ensure_ascii=False)


def split_by_prompt(rankings: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out `fraction` of the distinct prompts (all their rankings), so eval prompts are unseen."""
    keys = sorted({prompt_key(r) for r in rankings})
    random.Random(seed).shuffle(keys)
    held = set(keys[:round(len(keys) * fraction)])
    return [r for r in rankings if prompt_key(r) not in held], [r for r in rankings if prompt_key(r) in held]


def bootstrap(indices_by_prompt: list[list[int]], seed: int) -> list[int]:
    """Ranking indices of a bootstrap resample of prompts: as many prompts, drawn with replacement."""
    rng = random.Random(seed)
    return [i for _ in indices_by_prompt for i in rng.choice(indices_by_prompt)]
