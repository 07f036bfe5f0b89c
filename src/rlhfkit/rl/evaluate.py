"""Eval on held-out prompts: eval/* metrics and every prompt's sample (what the guard reads and
samples.jsonl holds), identical on every rank."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.files import atomic_write_text
from rlhfkit.rewards.spec import Reward
from rlhfkit.rl.config import RolloutSpec
from rlhfkit.rl.rollout import rank_world, stream_seed


@torch.no_grad()
def evaluate(policy, tokenizer, records: list[dict], reward: Reward, spec: RolloutSpec, step: int,
             eos_ids: list[int], temperature: float = 0.0, gold: Reward | None = None) -> tuple[dict, list[dict]]:
    """-> (eval/* metrics, one sample per record, aligned with `records`, on every rank).

    A sample is {"step", "prompt", "response", "reward"} (+ "gold" with `gold`: for the plots,
    never trained on). temperature 0 is greedy; above it, top_p and the stream (seed, "eval",
    step, call) of spec apply. Records are dealt to ranks in generate calls of
    spec.generation_batch_size, so every call sees the same batch (padding included) on any
    number of processes; the samples are then gathered back into record order.
    """
    from rlhfkit.generation import generate

    rank, world = rank_world()
    chunk = spec.generation_batch_size
    starts = list(range(0, len(records), chunk))[rank::world]
    sums = torch.zeros(len(reward.names) + 3, dtype=torch.float64)  # terms, gold, length, count
    mine: list[tuple[int, list[dict]]] = []
    for i in starts:
        recs = records[i:i + chunk]
        g = torch.Generator().manual_seed(stream_seed(spec.seed, "eval", step, i))
        r = generate(policy, [x["_ids"] for x in recs], max_new_tokens=spec.max_new_tokens, temperature=temperature,
                     top_p=spec.top_p if temperature > 0 else 1.0, eos_token_ids=eos_ids,
                     pad_token_id=tokenizer.pad_token_id, generator=g, backend=spec.backend)
        texts = r.texts(tokenizer)
        rew = reward(recs, texts)
        gold_scores = gold(recs, texts).sum(1) if gold is not None else torch.full((len(recs),), float("nan"))
        sums[:-3] += rew.sum(0).double()
        sums[-3] += float(gold_scores.sum()) if gold is not None else 0.0
        sums[-2] += float(r.mask.sum())
        sums[-1] += len(recs)
        mine.append((i, [{"step": step, "prompt": x["prompt"], "response": t, "reward": float(v),
                          **({"gold": float(gv)} if gold is not None else {})}
                         for x, t, v, gv in zip(recs, texts, rew.sum(1), gold_scores)]))
    sums = torch.tensor([distributed.all_reduce_sum(float(v)) for v in sums])
    n = max(1.0, float(sums[-1]))
    metrics = {"eval/reward_mean": float(sums[:-3].sum() / n), "eval/length_mean": float(sums[-2] / n)}
    if gold is not None:
        metrics["eval/gold_mean"] = float(sums[-3] / n)
    metrics.update({f"eval/{name}_mean": float(sums[j] / n) for j, name in enumerate(reward.names)})
    if "math" in reward.names:
        metrics["eval/accuracy"] = metrics["eval/math_mean"]
    return metrics, [s for _, part in sorted(_gather_objects(mine), key=lambda p: p[0]) for s in part]


def _gather_objects(mine: list) -> list:
    """Every rank's list, concatenated (in rank order), on every rank."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return mine
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, mine)
    return [x for p in parts for x in p]


class SamplesLog:
    """`samples.jsonl`: every eval's samples, one line each (rank 0); rewritten atomically (temp +
    rename) at each eval, and cut back to the checkpoint's step on resume, like metrics.jsonl."""

    def __init__(self, out: Path, resume_step: int):
        self.path = Path(out) / "samples.jsonl"
        self.lines: list[str] = []
        if not distributed.is_main():
            return
        if resume_step and self.path.exists():
            self.lines = [ln for ln in self.path.read_text().splitlines()
                          if ln and json.loads(ln)["step"] <= resume_step]
        atomic_write_text(self.path, "".join(ln + "\n" for ln in self.lines))

    def log(self, samples: list[dict]) -> None:
        if distributed.is_main():
            self.lines += [json.dumps(s) for s in samples]
            atomic_write_text(self.path, "".join(ln + "\n" for ln in self.lines))
