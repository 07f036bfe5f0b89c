"""One GRPO step of rl_step_vs_trl.py's setting, in one process, with and without a speed lever,
the two arms alternating from the same weights and AdamW state (so they sample the same tokens
and do the same work); CPU seconds per part, which a loaded machine distorts far less than wall
time (run it on one thread there: `--threads 1`).

    python benchmarks/rl_step_levers.py --steps 3 --threads 1 --out results/rl_step_levers.json

Levers (an arm is "before" or "after" for each):
- packed: the forwards over the response run only its real tokens (`rl.rollout.token_logits`,
  with what rides on it: attention segment by segment, the reference through generation/score.py);
  before: every row padded to the longest response (`response_logits`), the pads selected out,
  the reference through the HF modules: the 2026-12-02 path.
- scorer: the reference forward runs through the sampler's fast path, its weights reordered
  once (`generation/score.py`); before: through the HF modules (both packed).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import median, smollm2_or_random  # noqa: E402


def padded_token_logits(model, inputs, temperature):
    from rlhfkit.rl.rollout import response_logits

    return response_logits(model, inputs, temperature)[inputs["mask"]]


LEVERS = {"packed": [("rlhfkit.rl.rollout", "token_logits", padded_token_logits),
                     ("rlhfkit.rl.update", "token_logits", padded_token_logits)],
          "scorer": [("rlhfkit.rl.rollout", "frozen_scorer", lambda model: None)]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lever", default="packed", choices=sorted(LEVERS))
    p.add_argument("--int8", action="store_true", help="rollout_quant=int8, is_correction=tis")
    p.add_argument("--model", default="")
    p.add_argument("--work", default="/tmp/rl_step_levers", help="where the prompts (and a random model) go")
    p.add_argument("--out", default="")
    a = p.parse_args()

    import importlib

    import torch

    import rl_step_vs_trl as bench
    from rlhfkit.models import eos_token_ids
    from rlhfkit.rewards.spec import resolve_reward
    from rlhfkit.rl.config import RolloutSpec, UpdateSpec
    from rlhfkit.rl.rollout import collect
    from rlhfkit.rl.setup import load_models, load_prompts
    from rlhfkit.rl.update import update
    from rlhfkit.stages.grpo import Config, clipped_loss, grpo_advantages
    from rlhfkit.training import make_optimizer

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model, what = smollm2_or_random(work, a.model)
    (work / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in bench.PROMPTS))
    extra = {"rollout_quant": "int8", "is_correction": "tis"} if a.int8 else {}
    cfg = Config(model=model, prompts=str(work / "prompts.jsonl"), reward="rl_step_vs_trl:rlhfkit_reward",
                 threads=a.threads, **bench.SETTING, **extra)
    tok, policy, ref = load_models(cfg.model, cfg.ref_model, 0, False, 16, 32, 0.0, a.threads)
    eos = eos_token_ids(policy, tok)
    reward = resolve_reward(cfg.reward, cfg.format_regex, 0.0)
    records = load_prompts(cfg.prompts, tok, reward, cfg.max_prompt_len)
    rs, us = RolloutSpec.of(cfg, 1), UpdateSpec.of(cfg)
    optimizer = make_optimizer(policy, cfg.learning_rate, cfg.weight_decay)
    params = [q for q in policy.parameters() if q.requires_grad]
    loss = partial(clipped_loss, name="grpo", clip=cfg.clip, clip_high=cfg.clip_high, reduction=cfg.loss_reduction,
                   max_len=cfg.max_new_tokens, temperature=cfg.temperature, kl_coef=cfg.kl_coef)
    quant = None
    if a.int8:
        from rlhfkit.generation.quant import Int8Weights

        quant = Int8Weights(policy)
    originals = [(importlib.import_module(m), name, getattr(importlib.import_module(m), name))
                 for m, name, _ in LEVERS[a.lever]]

    def set_arm(arm: str) -> None:
        for (mod, name, orig), (_, _, before) in zip(originals, LEVERS[a.lever]):
            setattr(mod, name, orig if arm == "after" else before)

    print(f"model: {what}; lever {a.lever}; threads {torch.get_num_threads()}", flush=True)
    rows = []
    for step in range(a.steps):
        start = (copy.deepcopy(policy.state_dict()), copy.deepcopy(optimizer.state_dict()))
        for arm in (["before", "after"] if step % 2 == 0 else ["after", "before"]):
            policy.load_state_dict(start[0])
            optimizer.load_state_dict(start[1])
            set_arm(arm)
            c0, w0 = time.process_time(), time.perf_counter()
            quantize_s = quant.refresh() if quant is not None else 0.0
            c1 = time.process_time()
            policy.eval()
            exp, _ = collect(policy, ref, None, tok, records, reward, rs, step, eos, None, old_logprobs=False,
                             quantized=quant)
            policy.train()
            c2 = time.process_time()
            per_row, _ = grpo_advantages(exp, cfg.kl_coef, cfg.scale_rewards, cfg.group_size)
            met = update(policy, params, optimizer, exp, per_row, loss, us, step)
            c3 = time.process_time()
            row = {"step": step + 1, "arm": arm, "quantize_cpu_s": c1 - c0, "rollout_cpu_s": c2 - c1,
                   "train_cpu_s": c3 - c2, "step_cpu_s": c3 - c0, "wall_s": time.perf_counter() - w0,
                   "tokens": int(exp.mask.sum()), "padded": int(exp.mask.shape[0] * exp.mask.sum(1).max()),
                   "loss": met["train/loss"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    set_arm("after")
    summary = {}
    for part in ("quantize_cpu_s", "rollout_cpu_s", "train_cpu_s", "step_cpu_s"):
        b = median([r[part] for r in rows if r["arm"] == "before" and r["step"] > 1 or a.steps == 1 and r["arm"] == "before"])
        f = median([r[part] for r in rows if r["arm"] == "after" and r["step"] > 1 or a.steps == 1 and r["arm"] == "after"])
        summary[part] = {"before": b, "after": f, "ratio": b / f if f else None}
        print(f"{part}: before {b:.2f} after {f:.2f} ratio {b / f if f else float('nan'):.3f} (median of steps 2..N)")
    if a.out:
        Path(a.out).write_text(json.dumps({"model": what, "lever": a.lever, "int8": a.int8, "threads": a.threads,
                                           "rows": rows, "summary": summary, "date": time.strftime("%Y-%m-%d")},
                                          indent=1))


if __name__ == "__main__":
    main()
