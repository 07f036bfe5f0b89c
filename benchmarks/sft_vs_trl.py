"""SFT training throughput, TRL's SFTTrainer vs `rlhfkit sft`, same model, same work, one after the other.

    python benchmarks/sft_vs_trl.py --steps 6 --out sft_vs_trl.json
    python benchmarks/sft_vs_trl.py --only rlhfkit --steps 4      # one side only

The setting (the performance issue's): SmolLM2-135M-Instruct (`rlhfkit models pull`; a random
model of the same shape where the pull is unavailable), full fine-tuning in fp32 on the CPU, the
same threads (all cores), 8 conversations x 256 tokens per optimizer step in one forward (TRL
per_device_train_batch_size 8, no gradient accumulation; rlhfkit batch_size = micro_batch_size =
8), constant learning rate 1e-5 (no warmup), AdamW with betas (0.9, 0.95) and no weight decay
(both sides' AdamW is torch's fused kernel), clipping at 1.0.
The data are built here, deterministically: conversations of the embedded world
(`rlhfkit.world.conversation`) chained into one multi-turn chat with an explicit system turn until
it renders to more than 256 tokens, so after truncation to 256 *every* sequence is exactly 256
tokens: no padding on either side, and no packing. The loss is on assistant tokens only on both
sides (each assistant turn's content and its `<|im_end|>\\n`): SmolLM2's chat template has no
`{% generation %}` markers, so TRL gets the same ChatML template with them (`TRAIN_TEMPLATE`; it
renders the same text as SmolLM2's when a system turn is present), and the TRL worker checks that
TRL's tokenised dataset has exactly the ids and loss mask of rlhfkit's encoder before it trains.
TRL runs with gradient_checkpointing off (its SFTConfig default is on, which recomputes the
forward; `--trl-gradient-checkpointing` for that) and its default loss ("nll"). Both sides run the
LM head only on the positions that have a target (~60% here): ~8% fewer FLOPs per step than 6N.
Both sides see the same batches in the same order (both draw torch.randperm with seed 0), so their
per-step training losses must agree; the parent prints the largest difference.

Each side runs in its own process (peak resident memory from wait4). A step's time is the wall time
of one optimizer step (TRL: on_step_begin -> on_step_end callbacks, which leave out its dataloader
fetch; rlhfkit: metrics.jsonl time/step_s, which includes collating the batch). Tokens/s counts
every token in the forward (2,048 per step; with no padding that is also the real-token count) and
MFU = tokens/s x 6 x parameters / PEAK_GFLOPS on both sides (model FLOPs: attention's own FLOPs
and TRL's skipped LM-head rows are not counted).
The median of steps 2..N is reported, as step 1 pays one-time warm-up costs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (PEAK_GFLOPS, median, parse_side_by_side, run_worker,  # noqa: E402
                     side_by_side_parser, smollm2_or_random, table)

SETTING = {"batch_size": 8, "max_seq_len": 256, "learning_rate": 1e-5}
SYSTEM = "You are a helpful AI assistant."
# ChatML with TRL's assistant markers: the text it renders is SmolLM2's own template's whenever the
# conversation starts with a system turn (SmolLM2's only adds a default system turn otherwise)
TRAIN_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
                  "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>\n' }}"
                  "{% endgeneration %}{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
                  " + '<|im_end|>\n' }}{% endif %}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def conversations(tokenizer, n: int, seq_len: int) -> list[list[dict]]:
    """n chats of the embedded world, each rendering to more than seq_len tokens (seed 0)."""
    from rlhfkit.data import encode_conversation
    from rlhfkit.world import conversation

    rng, out = random.Random(0), []
    for _ in range(n):
        msgs = [{"role": "system", "content": SYSTEM}]
        while len(encode_conversation(tokenizer, msgs, 10**9)[0]) <= seq_len:
            msgs += [m for m in conversation(rng, set())["messages"] if m["role"] != "system"]
        out.append(msgs)
    return out


# --------------------------------------------------------------------------- workers


def worker_trl(model: str, data: Path, threads: int, steps: int, grad_ckpt: bool, work: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from rlhfkit.data import encode_conversation, read_conversations

    torch.set_num_threads(threads)
    times, tokens, t0 = [], [], [0.0, 0]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **k):
            t0[:] = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **k):
            times.append(time.perf_counter() - t0[0])
            tokens.append(state.num_input_tokens_seen - t0[1])
            print(f"trl step {len(times)}: {times[-1]:.2f} s, {tokens[-1]} tokens", flush=True)

    convs = read_conversations(data)
    tok = AutoTokenizer.from_pretrained(model)
    ours = [encode_conversation(tok, c, SETTING["max_seq_len"]) for c in convs]  # rlhfkit's ids and mask
    tok.chat_template = TRAIN_TEMPLATE
    args = SFTConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=SETTING["batch_size"],
        gradient_accumulation_steps=1, max_length=SETTING["max_seq_len"], assistant_only_loss=True,
        packing=False, learning_rate=SETTING["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, adam_beta2=0.95, max_grad_norm=1.0, use_cpu=True, bf16=False,
        gradient_checkpointing=grad_ckpt, logging_steps=1, report_to="none", save_strategy="no", seed=0,
        disable_tqdm=True, include_num_input_tokens_seen="all")
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    trainer = SFTTrainer(model=policy, args=args, train_dataset=Dataset.from_list([{"messages": c} for c in convs]),
                         processing_class=tok, callbacks=[StepTimer()])
    # the same work: TRL's tokenised examples are rlhfkit's, token for token and target for target
    ds = trainer.train_dataset
    if len(ds) != len(ours) or any(r["input_ids"] != ids or [x != -100 for x in r["labels"]] != mask
                                   for r, (ids, mask) in zip(ds, ours)):
        raise SystemExit("TRL's tokenised data differ from rlhfkit's (ids or assistant mask)")
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_s": times, "tokens": tokens, "loss": losses, "optimizer_steps": trainer.state.global_step}


def worker_rlhfkit(model: str, data: Path, threads: int, steps: int, work: Path) -> dict:
    from rlhfkit.cli import main

    out = work / "rlhfkit"
    sets = {"model": model, "data": str(data), "out": str(out), "max_steps": steps, "threads": threads,
            "batch_size": SETTING["batch_size"], "micro_batch_size": SETTING["batch_size"],
            "max_seq_len": SETTING["max_seq_len"], "learning_rate": SETTING["learning_rate"], "warmup_steps": 0,
            "min_lr_ratio": 1.0, "weight_decay": 0.0, "grad_clip": 1.0, "eval_fraction": 0.0, "eval_every": 0,
            "save_every": 0, "log_every": 1, "seed": 0}
    argv = ["sft"] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    if main(argv):
        raise SystemExit("rlhfkit sft failed")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "time/step_s" in r]
    return {"step_s": [r["time/step_s"] for r in rows], "loss": [r["train/loss"] for r in rows],
            "tokens": [round(r["time/tokens_per_s"] * r["time/step_s"]) for r in rows], "optimizer_steps": len(rows)}


# --------------------------------------------------------------------------- main


def main() -> None:
    p = side_by_side_parser(__doc__)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    a = parse_side_by_side(p)

    if a.worker:  # inside a child process
        work, data = Path(a.work), Path(a.data)
        res = (worker_trl(a.model, data, a.threads, a.steps, a.trl_gradient_checkpointing, work)
               if a.worker == "trl" else worker_rlhfkit(a.model, data, a.threads, a.steps, work))
        Path(a.result).write_text(json.dumps(res))
        return

    load_at_start = os.getloadavg()  # other jobs share the cores: say how busy they were
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, what = smollm2_or_random(work, a.model)
        with torch.device("meta"):  # the parameter count, without the weights (tied embeddings counted once)
            n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
                           .parameters())
        data = work / "sft.jsonl"
        convs = conversations(AutoTokenizer.from_pretrained(model), a.steps * SETTING["batch_size"],
                              SETTING["max_seq_len"])
        data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
        print(f"model: {what} ({n_params / 1e6:.1f}M parameters); {SETTING}; threads {a.threads}", flush=True)
        results, tokens_per_step = {}, SETTING["batch_size"] * SETTING["max_seq_len"]
        for side in [a.only] if a.only else ["trl", "rlhfkit"]:
            args = ["--worker", side, "--model", model, "--data", str(data), "--steps", str(a.steps),
                    "--threads", str(a.threads), "--work", str(work)]
            args += ["--trl-gradient-checkpointing"] if a.trl_gradient_checkpointing else []
            r = run_worker(__file__, args, work / f"{side}.json", env={"PYTHONPATH": str(Path(__file__).parent)})
            if r["optimizer_steps"] != a.steps or set(r["tokens"]) != {tokens_per_step}:  # the same work, or stop
                raise SystemExit(f"{side}: {r['optimizer_steps']} steps of {r['tokens']} tokens: not the setting")
            r["median_step_s"] = median(r["step_s"][1:])
            r["tokens_per_s"] = tokens_per_step / r["median_step_s"]
            r["mfu"] = r["tokens_per_s"] * 6 * n_params / (PEAK_GFLOPS * 1e9)
            results[side] = r

    rows = [[side, r["median_step_s"], min(r["step_s"][1:]), max(r["step_s"][1:]), round(r["tokens_per_s"]),
             f"{100 * r['mfu']:.1f}%", round(r["peak_rss_mb"])] for side, r in results.items()]
    print()
    print(table(rows, ["framework", "median step s", "min", "max", "tokens/s", "MFU", "peak RSS MB"]))
    summary = {"model": what, "params": n_params, "setting": SETTING, "threads": a.threads, "steps": a.steps,
               "peak_gflops": PEAK_GFLOPS, "trl_gradient_checkpointing": a.trl_gradient_checkpointing,
               "results": results, "load_average": [load_at_start, os.getloadavg()], "date": time.strftime("%Y-%m-%d")}
    if len(results) == 2:
        summary["speedup"] = results["trl"]["median_step_s"] / results["rlhfkit"]["median_step_s"]
        print(f"rlhfkit is {summary['speedup']:.2f}x faster per step than TRL; per-step training loss, largest "
              f"difference: {max(abs(x - y) for x, y in zip(results['trl']['loss'], results['rlhfkit']['loss'])):.2g}")
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
