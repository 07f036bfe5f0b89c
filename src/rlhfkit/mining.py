"""Adversarial mining: the exploits an RL run found go back into the feedback store as ranking tasks.

    rlhfkit feedback mine runs/demo/ppo --store runs/demo/feedback     # then rank them:
    rlhfkit feedback simulate runs/demo/feedback --labeler rlhfkit.rewards.gold:joke   (or people: rlhfkit label)

An exploit is a sample the reward model liked but a person did not: a spot check up to the
guard's stop that the policy lost against the starting policy while the reward model preferred
the policy's response. guard.json `exploits` keeps the top 5 by reward margin; the guard's
spot-check store (RL_DIR/feedback.db, when there) has every one of them, read here with the
margins from samples.jsonl. With an ensemble reward model the guard's high-disagreement evals add candidates too:
samples.jsonl's responses at the evals whose ensemble disagreement rose (guard/
ensemble_std_rel above the disagreement rule's limit), above the start's mean proxy reward.

Each exploit becomes one `rank` task for its prompt: the exploit, the starting policy's
response to the same prompt, and the shipped policy's response to it (samples.jsonl holds
every eval's responses to the same eval prompts), distinct texts only (K >= 2). Ranked, those
tasks teach the next reward model what it got wrong (Ziegler et al. 2019 and Bai et al. 2022
retrain on fresh comparisons of the current policy's samples; this picks the ones the reward
model is wrong about).

Mining is idempotent: a task's key is made of its prompt and its set of responses, so mining
the same guard.json again adds nothing.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from rlhfkit.files import UserError

TOP = 5  # disagreement candidates kept (the strongest), as guard.json keeps its top 5 exploits
MODEL = "mined"  # the model column of mined responses (the store's per-response checkpoint name)


def task_key(prompt: str, texts: list[str]) -> str:
    """The same prompt with the same set of responses is the same task, whatever their order."""
    ident = ["mine", prompt, sorted(texts)]
    return "mine:" + hashlib.sha256(json.dumps(ident, ensure_ascii=False).encode()).hexdigest()


def read_run(rl_dir: str | Path) -> tuple[dict, list[dict]]:
    """-> (guard.json, samples.jsonl records) of an RL run; UserError when the guard did not run there."""
    from rlhfkit.files import read_jsonl

    d = Path(rl_dir)
    if not (d / "guard.json").is_file():
        raise UserError(f"{d}: no guard.json (mining reads what the guard found; run RL with the guard on "
                        "or observe)")
    guard = json.loads((d / "guard.json").read_text())
    samples = read_jsonl(d / "samples.jsonl") if (d / "samples.jsonl").is_file() else []
    return guard, samples


def lost_spot_checks(store, guard: dict, samples: list[dict]) -> list[dict]:
    """Every spot check in the guard's store up to its stop where the person ranked the policy's
    response below the start's while the reward model preferred it (margin = proxy of the policy's
    sample - the start's, from samples.jsonl); arena tasks of 2 and rankings of K alike."""
    reward = {(s["step"], s["prompt"], s["response"]): s["reward"] for s in samples}
    stop, out = guard.get("stop_step"), []
    for r in store.rankings():
        g = (r.get("meta") or {}).get("guard")
        if not g or r["tie"] or (stop is not None and g["step"] > stop):
            continue
        models, me = r["models"], f"step-{g['step']}"
        if me not in models or "step-0" not in models or models.index("step-0") > models.index(me):
            continue  # the policy ranked above the start (or not a guard task)
        start, policy = r["responses"][models.index("step-0")], r["responses"][models.index(me)]
        mine_r, start_r = reward.get((g["step"], r["prompt"], policy)), reward.get((0, r["prompt"], start))
        if mine_r is not None and start_r is not None and mine_r > start_r:
            out.append({"step": g["step"], "prompt": r["prompt"], "response": policy, "start_response": start,
                        "margin": mine_r - start_r})
    return out


def candidates(guard: dict, samples: list[dict], disagreement_rise: float | None = None,
               lost: list[dict] | None = None) -> list[dict]:
    """The exploits to rank: the lost spot checks (guard.json's, or all of them: `lost`), strongest
    first, then (ensembles) the samples of high-disagreement evals up to the stop whose proxy beats
    the start's mean. Each {"step", "prompt", "response", "why", "margin", "start_response"}."""
    spots = {(e["prompt"], e["response"]): e for e in [*guard.get("exploits", []), *(lost or [])]}
    out = sorted(({"step": e["step"], "prompt": e["prompt"], "response": e["response"], "why": "lost spot check",
                   "margin": float(e["margin"]), "start_response": e.get("start_response")}
                  for e in spots.values()), key=lambda c: -c["margin"])
    rise = disagreement_rise if disagreement_rise is not None else (guard.get("rules") or {}).get("disagreement_rise")
    stop = guard.get("stop_step")
    if rise:
        start = [s for s in samples if s["step"] == 0]
        start_proxy = sum(s["reward"] for s in start) / len(start) if start else 0.0
        hot = {e["step"] for e in guard.get("evals", []) if (e.get("ensemble_std_rel") or 0) > rise
               and (stop is None or e["step"] <= stop)}
        out += sorted(({"step": s["step"], "prompt": s["prompt"], "response": s["response"],
                        "why": "ensemble disagreement", "margin": s["reward"] - start_proxy}
                       for s in samples if s["step"] in hot and s["reward"] > start_proxy),
                      key=lambda c: -c["margin"])[:TOP]
    return out


def rank_items(guard: dict, samples: list[dict], cands: list[dict]) -> list[tuple[str, dict, list[str], str]]:
    """One (prompt, meta, texts, key) item per candidate: the exploit, the start's and the shipped
    policy's responses to its prompt, distinct; candidates with no other response are left out."""
    by_step: dict[int, dict[str, str]] = {}
    for s in samples:
        by_step.setdefault(s["step"], {}).setdefault(s["prompt"], s["response"])
    shipped = guard.get("shipped_step")
    items, seen = [], set()
    for c in cands:
        others = [c.get("start_response") or by_step.get(0, {}).get(c["prompt"]),
                  by_step.get(shipped, {}).get(c["prompt"]) if shipped is not None else None]
        texts = [c["response"]] + [t for t in others if t is not None]
        texts = list(dict.fromkeys(texts))  # distinct, the exploit first
        key = task_key(c["prompt"], texts)
        if len(texts) < 2 or key in seen:
            continue
        seen.add(key)
        random.Random(key).shuffle(texts)  # the exploit on no fixed side: people have position bias
        meta = {"mined": {"step": c["step"], "why": c["why"], "margin": c["margin"]}}
        items.append((c["prompt"], meta, texts, key))
    return items


def mine(rl_dir: str | Path, store, limit: int = 0, disagreement_rise: float | None = None) -> list[int]:
    """Queue RL_DIR's exploits (see the module doc) in `store` as rank tasks; -> the ids of the
    tasks added (none for those already there). `limit` > 0 keeps the strongest `limit`."""
    from rlhfkit.feedback.store import FeedbackStore

    guard, samples = read_run(rl_dir)
    lost = []
    if (Path(rl_dir) / "feedback.db").is_file():  # the guard's spot checks (its default store)
        with FeedbackStore.for_run(rl_dir) as spot:
            lost = lost_spot_checks(spot, guard, samples)
    items = rank_items(guard, samples, candidates(guard, samples, disagreement_rise, lost))
    if limit > 0:
        items = items[:limit]
    if not items:
        return []
    done = store.task_keys([it[3] for it in items])
    new = [it for it in items if it[3] not in done]
    return store.add_sampled_many(new, MODEL, {"mined_from": str(Path(rl_dir).resolve())}) if new else []

