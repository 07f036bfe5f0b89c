"""One GRPO step, TRL's GRPOTrainer vs `rlhfkit grpo`, same model, same work, one after the other.

    python benchmarks/rl_step_vs_trl.py --steps 6 --out rl_step_vs_trl.json
    python benchmarks/rl_step_vs_trl.py --only rlhfkit --steps 4      # one side only
    python benchmarks/rl_step_vs_trl.py --defaults --steps 4         # rlhfkit with its defaults

--defaults runs `rlhfkit grpo` as the performance issue's command does: only the setting
below plus what every run names (model, prompts, reward, out, max_steps), so micro-batches
(micro_batch_size 0: from micro_batch_tokens), threads (0: probe, then follow the load) and
the loss reduction are rlhfkit's defaults; beside it the same with micro_batch_size=8 (the
default before 2026-12-01), and TRL as below with --threads.

The setting (the performance issue's): SmolLM2-135M-Instruct (`rlhfkit models pull`; a random
model of the same shape where the pull is unavailable), 2 prompts x 8 samples per step, at most
48 new tokens, temperature 1.0, KL coefficient 0.04 (so both keep a reference model), learning
rate 1e-6, full fine-tuning in fp32 on the CPU, one optimizer step per rollout, all 16 rows in
one forward (TRL per_device_train_batch_size 16; rlhfkit micro_batch_size 16), the same reward
function (below) and the same threads (all cores). TRL runs with gradient_checkpointing off
(its default is on, which recomputes the forward; `--trl-gradient-checkpointing` for that) and
loss_type "grpo" (rlhfkit's default sequence mean; TRL's default is "dapo").

Each side runs in its own process (peak resident memory from wait4); a step's time is the wall
time from the start of its rollout to the end of its optimizer step (TRL: on_step_begin ->
on_step_end callbacks; rlhfkit: metrics.jsonl time/step_s). The median of steps 2..N is
reported, as step 1 pays one-time warm-up costs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (median, parse_side_by_side, run_worker, side_by_side_parser,  # noqa: E402
                     smollm2_or_random, table)

PROMPTS = ["What is 23 + 45? Answer with the number only.",
           "Tell me a short joke about pelicans."]
SETTING = dict(prompts_per_step=2, group_size=8, max_new_tokens=48, temperature=1.0, kl_coef=0.04,
               learning_rate=1e-6)


def score(prompt: str, completion: str) -> float:
    """The shared reward: 1 for the right sum, else a mild preference for short answers (so the
    two prompts both give the groups a spread of rewards, and the advantages are non-zero)."""
    m = re.search(r"(\d+) \+ (\d+)", prompt)
    if m:
        return float(str(int(m[1]) + int(m[2])) in completion)
    return max(0.0, 1.0 - len(completion) / 200)


def rlhfkit_reward(prompt: str, response: str) -> float:  # rlhfkit's `module:function` per example
    return score(prompt, response)


def trl_reward(prompts, completions, **_) -> list[float]:  # TRL's reward_funcs signature
    return [score(p[-1]["content"], c[0]["content"]) for p, c in zip(prompts, completions)]


# --------------------------------------------------------------------------- workers


def worker_trl(model: str, steps: int, threads: int, grad_ckpt: bool, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    times, t0 = [], [0.0]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            t0[0] = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - t0[0])
            print(f"trl step {len(times)}: {times[-1]:.2f} s", flush=True)

    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS] * (8 * steps))
    n = SETTING["prompts_per_step"] * SETTING["group_size"]
    args = GRPOConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=n,
        gradient_accumulation_steps=1, num_generations=SETTING["group_size"],
        max_completion_length=SETTING["max_new_tokens"], temperature=SETTING["temperature"],
        beta=SETTING["kl_coef"], learning_rate=SETTING["learning_rate"], lr_scheduler_type="constant",
        loss_type="grpo", use_cpu=True, bf16=False, gradient_checkpointing=grad_ckpt, logging_steps=1,
        report_to="none", save_strategy="no", seed=0, shuffle_dataset=False, disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = GRPOTrainer(model=policy, reward_funcs=trl_reward, args=args, train_dataset=ds,
                          processing_class=tok, callbacks=[StepTimer()])
    trainer.train()
    return {"step_s": times}


def worker_rlhfkit(model: str, steps: int, threads: int, work: Path, defaults: bool = False,
                   micro_batch_size: int = 0, int8: bool = False) -> dict:
    from rlhfkit.cli import main

    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = work / f"rlhfkit{micro_batch_size or ''}{'-int8' if int8 else ''}"
    sets = {"model": model, "prompts": str(prompts), "out": str(out), "reward": "rl_step_vs_trl:rlhfkit_reward",
            "max_steps": steps, **SETTING}
    if not defaults:
        sets.update({"micro_batch_size": 16, "threads": threads, "loss_reduction": "sequence", "eval_every": 0,
                     "seed": 0})
    if micro_batch_size:
        sets["micro_batch_size"] = micro_batch_size
    if int8:  # sample from int8 copies, correct the loss with truncated importance sampling
        sets.update({"rollout_quant": "int8", "is_correction": "tis"})
    argv = ["grpo"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    if main(argv):
        raise SystemExit("rlhfkit grpo failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r]
    return {"step_s": [r["time/step_s"] for r in rows], "rollout_s": [r["time/rollout_s"] for r in rows],
            "train_s": [r["time/train_s"] for r in rows], "quantize_s": [r.get("time/quantize_s", 0.0) for r in rows],
            "threads": [r.get("time/threads") for r in rows],
            # the step's response tokens: sides sample different responses, and the training forwards
            # run only the real tokens, so a side with longer responses trains longer
            "tokens": [round(r["time/tokens_per_s"] * r["time/step_s"]) for r in rows]}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = side_by_side_parser(__doc__)
    p.add_argument("--defaults", action="store_true", help="rlhfkit with its defaults (see above)")
    p.add_argument("--micro-batch-size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--int8", action="store_true",
                   help="also run rlhfkit with int8 rollouts + TIS (rollout_quant=int8, is_correction=tis)")
    a = parse_side_by_side(p)

    if a.worker:  # inside a child process
        work = Path(a.work)
        res = (worker_trl(a.model, a.steps, a.threads, a.trl_gradient_checkpointing, work) if a.worker == "trl"
               else worker_rlhfkit(a.model, a.steps, a.threads, work, a.defaults, a.micro_batch_size, a.int8))
        Path(a.result).write_text(json.dumps(res))
        return

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, what = smollm2_or_random(work, a.model)
        print(f"model: {what}; {SETTING}; threads {a.threads}", flush=True)
        results = {}
        sides = [(s, s, []) for s in ([a.only] if a.only else ["trl", "rlhfkit"])]
        if a.defaults and a.only != "trl":
            sides.append(("rlhfkit mb8", "rlhfkit", ["--micro-batch-size", "8"]))
        if a.int8 and a.only != "trl":
            sides.append(("rlhfkit int8", "rlhfkit", ["--int8"]))
        pythonpath = os.pathsep.join(x for x in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if x)
        for name, side, extra in sides:
            args = ["--worker", side, "--model", model, "--steps", str(a.steps), "--threads", str(a.threads),
                    "--work", str(work)] + (["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else []) \
                + (["--defaults"] if a.defaults else []) + extra
            r = run_worker(__file__, args, work / f"{name.replace(' ', '-')}.json", env={"PYTHONPATH": pythonpath})
            r["median_step_s"] = median(r["step_s"][1:])
            results[name] = r
            print(f"{name}: median step {r['median_step_s']:.2f} s, load average {os.getloadavg()[0]:.2f}", flush=True)

    rows = [[side, r["median_step_s"], min(r["step_s"][1:]), max(r["step_s"][1:]), r["peak_rss_mb"]]
            for side, r in results.items()]
    print()
    print(table(rows, ["framework", "median step s", "min", "max", "peak RSS MB"]))
    if "rlhfkit" in results and "rollout_s" in results["rlhfkit"]:
        r = results["rlhfkit"]
        print(f"rlhfkit split (median of steps 2..N): rollout {median(r['rollout_s'][1:]):.2f} s, "
              f"train {median(r['train_s'][1:]):.2f} s")
    for side, r in results.items():
        if "tokens" in r:
            print(f"{side}: response tokens per step {r['tokens']}, re-quantisation s "
                  f"{[round(x, 2) for x in r['quantize_s']]}")
    summary = {"model": what, "setting": SETTING, "threads": a.threads, "steps": a.steps, "defaults": a.defaults,
               "trl_gradient_checkpointing": a.trl_gradient_checkpointing, "results": results,
               "date": time.strftime("%Y-%m-%d")}
    if "trl" in results and "rlhfkit" in results:
        summary["speedup"] = results["trl"]["median_step_s"] / results["rlhfkit"]["median_step_s"]
        print(f"rlhfkit is {summary['speedup']:.2f}x faster per step than TRL (target: >= 2.5x with the defaults)")
    if "rlhfkit mb8" in results:
        summary["speedup_over_mb8"] = results["rlhfkit mb8"]["median_step_s"] / results["rlhfkit"]["median_step_s"]
        print(f"the defaults are {summary['speedup_over_mb8']:.2f}x faster per step than micro_batch_size=8")
    if "trl" in results and "rlhfkit int8" in results:
        summary["speedup_int8"] = results["trl"]["median_step_s"] / results["rlhfkit int8"]["median_step_s"]
        print(f"rlhfkit with int8 rollouts + TIS is {summary['speedup_int8']:.2f}x faster per step than TRL "
              f"(target: >= 3x)")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
