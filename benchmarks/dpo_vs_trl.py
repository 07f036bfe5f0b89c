"""DPO training throughput, TRL's DPOTrainer vs `rlhfkit dpo`, same model, same pairs, one after the other.

    python benchmarks/dpo_vs_trl.py --steps 4 --out dpo_vs_trl.json
    python benchmarks/dpo_vs_trl.py --steps 3 --trl-precompute-ref     # TRL with its reference pass up front
    python benchmarks/dpo_vs_trl.py --only rlhfkit --steps 3           # one side only

The setting: SmolLM2-135M-Instruct (`rlhfkit models pull`; a random model of the same shape where
the pull is unavailable), full fine-tuning in fp32 on the CPU, the same threads (all cores), loss
"sigmoid" with beta 0.1, 8 preference pairs per optimizer step in one forward (TRL
per_device_train_batch_size 8, no gradient accumulation; rlhfkit batch_size = micro_batch_size = 8),
constant learning rate 1e-6 (no warmup), AdamW betas (0.9, 0.95), no weight decay, clipping at 1.0,
no truncation. TRL runs with gradient_checkpointing off (`--trl-gradient-checkpointing` for its default).

The pairs: the first 8 real HH-RLHF pairs (../shared/data/hh-rlhf-harmless-base-test.jsonl.gz) whose
prompt has at most 128 tokens and whose responses at most 64 under SmolLM2's chat template (pairs of
the embedded world where the file is absent), given to TRL as conversational prompt/chosen/rejected
records and to rlhfkit as the same records in a TRL-format file. Every step trains on the same 8
pairs (one epoch is one step), so both sides do the same work whatever order their samplers draw;
the TRL worker checks that its tokenised dataset has exactly rlhfkit's prompt/chosen/rejected ids,
and the parent prints the largest per-step difference of the two losses.

What differs is how each computes the same loss: TRL (its defaults) runs the 2 x 8 [prompt | response]
rows, right-padded, through the policy and, without gradients, through a reference copy at every
step; rlhfkit runs each prompt once with its KV cache shared by the pair's two responses, the LM head
on response tokens only, and reads the reference log-probs from a pass made once before training
(`time/ref_s`, reported beside the steps: on one epoch over new pairs it costs about what TRL's
per-step reference forwards do, so `tokens/s incl. ref` adds it back, spread over the steps of an
epoch: here, each step). `--trl-precompute-ref` gives TRL its own up-front reference pass
(precompute_ref_log_probs), which its step time then leaves out too.

Each side runs in its own process (peak resident memory from wait4). A step's time is the wall time
of one optimizer step (TRL: on_step_begin -> on_step_end callbacks; rlhfkit: metrics.jsonl
time/step_s). Tokens/s counts the real tokens of the 16 [prompt | response] sequences (padding not
counted; the same number on both sides). The median of steps 2..N is reported (step 1 warms up).
Under a shared, loaded CPU only the ratio of two side-by-side runs means anything.
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

SETTING = {"pairs_per_step": 8, "beta": 0.1, "learning_rate": 1e-6, "max_prompt_tokens": 128, "max_response_tokens": 64}
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def pick_pairs(tokenizer, n: int, hh: Path) -> tuple[list[dict], str]:
    """n {"prompt", "chosen", "rejected", "_ids": (prompt, chosen, rejected ids)} records within the
    prompt and response limits, and where they came from."""
    from rlhfkit.stages.dpo import encode_pair

    def encode(msgs, chosen, rejected):
        p, c, r = encode_pair(tokenizer, msgs, chosen, rejected, 10**6, 10**7)
        fits = len(p) <= SETTING["max_prompt_tokens"] and max(len(c), len(r)) <= SETTING["max_response_tokens"]
        return (p, c, r) if fits else None
    return common_pick_pairs(n, hh, encode)


# --------------------------------------------------------------------------- workers


def worker_trl(model: str, data: Path, threads: int, steps: int, grad_ckpt: bool, precompute: bool, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(threads)
    times, t0 = [], [0.0]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **k):
            t0[0] = time.perf_counter()

        def on_step_end(self, args, state, control, **k):
            times.append(time.perf_counter() - t0[0])
            print(f"trl step {len(times)}: {times[-1]:.2f} s", flush=True)

    recs = [json.loads(line) for line in data.read_text().splitlines()]
    ours = [r.pop("_ids") for r in recs]
    tok = AutoTokenizer.from_pretrained(model)
    args = DPOConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=SETTING["pairs_per_step"],
        gradient_accumulation_steps=1, max_length=None, beta=SETTING["beta"], loss_type=["sigmoid"],
        learning_rate=SETTING["learning_rate"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta2=0.95, max_grad_norm=1.0, use_cpu=True, bf16=False, gradient_checkpointing=grad_ckpt,
        precompute_ref_log_probs=precompute, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        disable_tqdm=True)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    t = time.perf_counter()
    trainer = DPOTrainer(model=policy, args=args, train_dataset=Dataset.from_list(recs), processing_class=tok,
                         callbacks=[StepTimer()])
    setup_s = time.perf_counter() - t
    ds = trainer.train_dataset
    if [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in ds] != [tuple(x) for x in ours]:
        raise SystemExit("TRL's tokenised pairs differ from rlhfkit's")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # with precompute_ref_log_probs the reference pass runs in DPOTrainer's constructor: setup_s is that
    # pass plus the tokenisation of 8 pairs (~2 s here without it)
    return {"step_s": times, "loss": losses, "optimizer_steps": trainer.state.global_step, "setup_s": setup_s,
            "ref_s": setup_s if precompute else 0.0}


def worker_rlhfkit(model: str, data: Path, threads: int, steps: int, work: Path) -> dict:
    from rlhfkit.cli import main

    out = work / "rlhfkit"
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: no resume, the reference pass made (and timed) here
    sets = {"model": model, "data": str(data), "format": "trl", "out": str(out), "max_steps": steps, "threads": threads,
            "batch_size": SETTING["pairs_per_step"], "micro_batch_size": SETTING["pairs_per_step"],
            "eval_batch_size": SETTING["pairs_per_step"], "max_prompt_len": 10**6, "max_seq_len": 10**7,
            "beta": SETTING["beta"], "loss": "sigmoid", "learning_rate": SETTING["learning_rate"], "warmup_steps": 0,
            "min_lr_ratio": 1.0, "weight_decay": 0.0, "grad_clip": 1.0, "eval_fraction": 0.0, "eval_every": 0,
            "save_every": 0, "log_every": 1, "seed": 0}
    argv = ["dpo"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    if main(argv):
        raise SystemExit("rlhfkit dpo failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r]
    return {"step_s": [r["time/step_s"] for r in rows], "loss": [r["dpo/loss"] for r in rows],
            "optimizer_steps": len(rows), "ref_s": rows[0]["time/ref_s"]}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = side_by_side_parser(__doc__)
    p.add_argument("--trl-precompute-ref", action="store_true", help="TRL computes reference log-probs once, up front")
    p.add_argument("--hh", default=str(HH), help="the HH-RLHF file (default: ../shared/data/...)")
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    a = parse_side_by_side(p)

    if a.worker:  # inside a child process
        work, data = Path(a.work), Path(a.data)
        res = (worker_trl(a.model, data, a.threads, a.steps, a.trl_gradient_checkpointing, a.trl_precompute_ref, work)
               if a.worker == "trl" else worker_rlhfkit(a.model, data, a.threads, a.steps, work))
        Path(a.result).write_text(json.dumps(res))
        return

    load_at_start = os.getloadavg()  # other jobs share the cores: say how busy they were
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, what = smollm2_or_random(work, a.model)
        pairs, where = pick_pairs(AutoTokenizer.from_pretrained(model), SETTING["pairs_per_step"], Path(a.hh))
        data = work / "pairs.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in pairs))
        tokens = sum(2 * len(pr) + len(c) + len(r) for pr, c, r in (x["_ids"] for x in pairs))
        print(f"model: {what}; pairs: {where}, {tokens} tokens a step; {SETTING}; threads {a.threads}", flush=True)
        results = {}
        for side in [a.only] if a.only else ["trl", "rlhfkit"]:
            args = ["--worker", side, "--model", model, "--data", str(data), "--steps", str(a.steps),
                    "--threads", str(a.threads), "--work", str(work)]
            args += ["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else []
            args += ["--trl-precompute-ref"] if a.trl_precompute_ref else []
            r = run_worker(__file__, args, work / f"{side}.json", env={"PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent)] + [x for x in [os.environ.get("PYTHONPATH")] if x])})
            if r["optimizer_steps"] != a.steps:
                raise SystemExit(f"{side}: {r['optimizer_steps']} steps, not {a.steps}")
            r["median_step_s"] = median(r["step_s"][1:])
            r["tokens_per_s"] = tokens / r["median_step_s"]
            # one epoch here is one step: an up-front reference pass is paid once per step's worth of pairs
            r["tokens_per_s_incl_ref"] = tokens / (r["median_step_s"] + r["ref_s"])
            results[side] = r

    rows = [[side, r["median_step_s"], min(r["step_s"][1:]), max(r["step_s"][1:]), r["ref_s"], round(r["tokens_per_s"]),
             round(r["tokens_per_s_incl_ref"]), round(r["peak_rss_mb"])] for side, r in results.items()]
    print()
    print(table(rows, ["framework", "median step s", "min", "max", "ref pass s", "tokens/s", "tokens/s incl. ref",
                       "peak RSS MB"]))
    summary = {"model": what, "pairs": where, "tokens_per_step": tokens, "setting": SETTING, "threads": a.threads,
               "steps": a.steps, "trl_gradient_checkpointing": a.trl_gradient_checkpointing,
               "trl_precompute_ref": a.trl_precompute_ref, "results": results,
               "load_average": [load_at_start, os.getloadavg()], "date": time.strftime("%Y-%m-%d")}
    if len(results) == 2:
        t, o = results["trl"], results["rlhfkit"]
        summary["speedup"] = o["tokens_per_s"] / t["tokens_per_s"]
        summary["speedup_incl_ref"] = o["tokens_per_s_incl_ref"] / t["tokens_per_s_incl_ref"]
        print(f"rlhfkit: {summary['speedup']:.2f}x TRL's tokens/s per step, {summary['speedup_incl_ref']:.2f}x with "
              f"the reference passes counted; peak RSS {o['peak_rss_mb'] / t['peak_rss_mb']:.2f}x; per-step loss, "
              f"largest difference: {max(abs(x - y) for x, y in zip(t['loss'], o['loss'])):.2g}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
