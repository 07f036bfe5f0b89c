"""Reward-model training throughput, TRL's RewardTrainer vs `rlhfkit reward`, same model, same pairs, one after the other.

    python benchmarks/reward_vs_trl.py --steps 5 --out benchmarks/results/reward_vs_trl.json
    python benchmarks/reward_vs_trl.py --steps 4 --threads 1            # on a shared machine
    python benchmarks/reward_vs_trl.py --only rlhfkit --steps 3          # one side only

The setting: SmolLM2-135M-Instruct (`rlhfkit models pull`; a random model of the same shape where
the pull is unavailable) with a new one-output score head, full fine-tuning in fp32 on the CPU, the
same threads on both sides, 8 preference pairs per optimizer step (TRL per_device_train_batch_size
8, no gradient accumulation; rlhfkit batch_size 8), the Bradley-Terry loss -log sigmoid(r_chosen -
r_rejected) averaged over the pairs (rlhfkit loss "pairwise", one member), constant learning rate
1e-5 (no warmup), AdamW betas (0.9, 0.95), no weight decay, clipping at 1.0, max length 256.
TRL runs with gradient_checkpointing off (RewardConfig's default is on, which recomputes the
forward; `--trl-gradient-checkpointing` for that), bf16 off (its default is on), no
center_rewards_coefficient (its default) and no margin.

The pairs: the first 8 real HH-RLHF pairs (../shared/data/hh-rlhf-harmless-base-test.jsonl.gz)
whose chosen and rejected dialogues both render to at most 256 tokens under SmolLM2's chat
template, so neither side truncates or drops one (pairs of the embedded world where the file is
absent); TRL gets them as conversational prompt/chosen/rejected records, rlhfkit the same records
in a TRL-format file, and the TRL worker checks that its tokenised chosen/rejected ids are exactly
rlhfkit's. Both sides start from the same reward model (the parent builds it once: SmolLM2's body,
a seeded score head) and every step trains on the same 8 pairs (one epoch is one step), so their
per-step losses must agree; the parent prints the largest difference.

What differs is how each computes the same loss. TRL puts the 16 chosen and rejected rows,
right-padded to the longest, through one forward. rlhfkit (its defaults: micro_batch_size 0 and
micro_batch_tokens 4096, the packed forward, fused AdamW) runs each pair's shared tokens (the
dialogue so far, and any common start of the two answers) once and each answer's own tokens once,
the step's pairs side by side in one unpadded sequence (`rlhfkit.stages.reward.collate_packed`;
passes of at most micro_batch_tokens, `plan_micro_batches`).

Each side runs in its own process (peak resident memory from wait4). A step's time is the wall time
of one optimizer step (TRL: on_step_begin -> on_step_end callbacks, which leave out its dataloader's
collation; rlhfkit: metrics.jsonl time/step_s, which includes it), and beside it the process's CPU
time for the same span (time/step_cpu_s), which other jobs on the machine disturb much less: with
one thread it is the better ratio on a shared machine. Pairs/s = 8 / median step time; tokens/s
counts the real tokens of the 16 sequences. The median of steps 2..N is reported (step 1 warms up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (
    median,
    parse_side_by_side,
    run_worker,
    side_by_side_parser,
    smollm2_or_random,
    table,
)
from _common import pick_pairs as common_pick_pairs

SETTING = {"pairs_per_step": 8, "max_length": 256, "learning_rate": 1e-5}
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def pick_pairs(tokenizer, n: int, hh: Path) -> tuple[list[dict], str]:
    """n {"prompt", "chosen", "rejected", "_ids": [chosen ids, rejected ids]} records within
    max_length, and where they came from."""
    from rlhfkit.rewards.rm import encode as encode_rm

    def encode(msgs, chosen, rejected):
        ids = encode_rm(tokenizer, [msgs, msgs], [chosen, rejected], 10**9)
        return ids if max(map(len, ids)) <= SETTING["max_length"] else None
    return common_pick_pairs(n, hh, encode)


def initial_reward_model(model: str, out: Path) -> str:
    """SmolLM2's body with a score head drawn from seed 0, saved once so both sides start from it."""
    import torch

    from rlhfkit.models import load_tokenizer
    from rlhfkit.stages.reward import build_model

    if not (out / "config.json").exists():
        tok = load_tokenizer(model)
        torch.manual_seed(0)
        build_model(model, tok.pad_token_id).save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


# --------------------------------------------------------------------------- workers


def worker_trl(model: str, data: Path, threads: int, steps: int, grad_ckpt: bool, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl import RewardConfig, RewardTrainer

    torch.set_num_threads(threads)
    times, cpu, t0 = [], [], [0.0, 0.0]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **k):
            t0[:] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **k):
            times.append(time.perf_counter() - t0[0])
            cpu.append(time.process_time() - t0[1])
            print(f"trl step {len(times)}: {times[-1]:.2f} s (cpu {cpu[-1]:.2f} s)", flush=True)

    recs = [json.loads(line) for line in data.read_text().splitlines()]
    ours = [r.pop("_ids") for r in recs]
    tok = AutoTokenizer.from_pretrained(model)
    args = RewardConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=SETTING["pairs_per_step"],
        gradient_accumulation_steps=1, max_length=SETTING["max_length"], learning_rate=SETTING["learning_rate"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0,
        use_cpu=True, bf16=False, gradient_checkpointing=grad_ckpt, center_rewards_coefficient=None,
        logging_steps=1, report_to="none", save_strategy="no", seed=0, disable_tqdm=True)
    rm = AutoModelForSequenceClassification.from_pretrained(model, dtype=torch.float32)
    trainer = RewardTrainer(model=rm, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok,
                            callbacks=[StepTimer()])
    ds = trainer.train_dataset
    if len(ds) != len(ours) or [[r["chosen_ids"], r["rejected_ids"]] for r in ds] != ours:
        raise SystemExit("TRL's tokenised pairs differ from rlhfkit's")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_s": times, "step_cpu_s": cpu, "loss": losses, "optimizer_steps": trainer.state.global_step,
            "optimizer": type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                              else trainer.optimizer).__name__ + f" ({args.optim})"}


def worker_rlhfkit(model: str, data: Path, threads: int, steps: int, work: Path) -> dict:
    from rlhfkit.cli import main

    out = work / "rlhfkit"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, no resume
    sets = {"model": model, "data": str(data), "format": "trl", "out": str(out), "max_steps": steps, "threads": threads,
            "batch_size": SETTING["pairs_per_step"], "max_seq_len": SETTING["max_length"], "loss": "pairwise",
            "ensemble": 1, "learning_rate": SETTING["learning_rate"], "warmup_steps": 0, "min_lr_ratio": 1.0,
            "weight_decay": 0.0, "grad_clip": 1.0, "eval_fraction": 0.0, "eval_every": 0, "save_every": 0,
            "log_every": 1, "seed": 0}
    argv = ["reward"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    if main(argv):
        raise SystemExit("rlhfkit reward failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r]
    return {"step_s": [r["time/step_s"] for r in rows], "step_cpu_s": [r["time/step_cpu_s"] for r in rows],
            "loss": [r["train/loss"] for r in rows], "optimizer_steps": len(rows)}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = side_by_side_parser(__doc__)
    p.add_argument("--hh", default=str(HH), help="the HH-RLHF file (default: ../shared/data/...)")
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    a = parse_side_by_side(p)

    if a.worker:  # inside a child process
        work, data = Path(a.work), Path(a.data)
        res = (worker_trl(a.model, data, a.threads, a.steps, a.trl_gradient_checkpointing, work)
               if a.worker == "trl" else worker_rlhfkit(a.model, data, a.threads, a.steps, work))
        Path(a.result).write_text(json.dumps(res))
        return

    load_at_start = os.getloadavg()  # other jobs share the cores: say how busy they were
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        base, what = smollm2_or_random(work, a.model)
        model = initial_reward_model(base, work / "initial-rm")
        pairs, where = pick_pairs(AutoTokenizer.from_pretrained(model), SETTING["pairs_per_step"], Path(a.hh))
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
        tokens = sum(len(x) for r in pairs for x in r["_ids"])
        padded = 2 * len(pairs) * max(len(x) for r in pairs for x in r["_ids"])
        print(f"model: {what}; pairs: {where}, {tokens} tokens a step ({padded} padded in one batch); {SETTING}; "
              f"threads {a.threads}", flush=True)
        results = {}
        for side in [a.only] if a.only else ["trl", "rlhfkit"]:
            args = ["--worker", side, "--model", model, "--data", str(data), "--steps", str(a.steps),
                    "--threads", str(a.threads), "--work", str(work)]
            args += ["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else []
            r = run_worker(__file__, args, work / f"{side}.json", env={"PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent)] + [x for x in [os.environ.get("PYTHONPATH")] if x])})
            if r["optimizer_steps"] != a.steps:
                raise SystemExit(f"{side}: {r['optimizer_steps']} steps, not {a.steps}")
            r["median_step_s"] = median(r["step_s"][1:])
            r["median_step_cpu_s"] = median(r["step_cpu_s"][1:])
            r["pairs_per_s"] = SETTING["pairs_per_step"] / r["median_step_s"]
            r["tokens_per_s"] = tokens / r["median_step_s"]
            results[side] = r

    rows = [[side, r["median_step_s"], min(r["step_s"][1:]), max(r["step_s"][1:]), r["median_step_cpu_s"],
             r["pairs_per_s"], round(r["tokens_per_s"]), round(r["peak_rss_mb"])] for side, r in results.items()]
    print()
    print(table(rows, ["framework", "median step s", "min", "max", "cpu s", "pairs/s", "tokens/s", "peak RSS MB"]))
    import trl

    summary = {"model": what, "pairs": where, "tokens_per_step": tokens, "padded_tokens_one_batch": padded,
               "setting": SETTING, "threads": a.threads, "steps": a.steps, "trl_version": trl.__version__,
               "trl_gradient_checkpointing": a.trl_gradient_checkpointing, "results": results,
               "load_average": [load_at_start, os.getloadavg()], "date": time.strftime("%Y-%m-%d")}
    if len(results) == 2:
        t, o = results["trl"], results["rlhfkit"]
        summary["speedup"] = t["median_step_s"] / o["median_step_s"]
        summary["speedup_cpu"] = t["median_step_cpu_s"] / o["median_step_cpu_s"]
        summary["peak_rss_ratio"] = o["peak_rss_mb"] / t["peak_rss_mb"]
        summary["max_loss_difference"] = max(abs(x - y) for x, y in zip(t["loss"], o["loss"]))
        print(f"rlhfkit: {summary['speedup']:.2f}x TRL's pairs/s ({summary['speedup_cpu']:.2f}x by CPU time); peak RSS "
              f"{summary['peak_rss_ratio']:.2f}x; per-step loss, largest difference: {summary['max_loss_difference']:.2g}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
