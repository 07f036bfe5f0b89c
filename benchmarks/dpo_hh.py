"""`rlhfkit dpo` with LoRA on real HH-RLHF pairs: held-out reward accuracy from what trains in a budget.

    python benchmarks/dpo_hh.py --train 400 --test 200 --out benchmarks/results/dpo_hh.json

The model: SmolLM2-135M-Instruct (`rlhfkit models pull`). The pairs: HH-RLHF harmless-base test
(../shared/data), conversations whose prompt has at most 128 tokens under SmolLM2's chat template
and whose two responses at most 64; the first `--train` distinct prompts train, the next `--test`
are held out (no prompt in both). Both go to `rlhfkit dpo` as TRL-format files (`eval_data` = the
held-out file), LoRA r16 on every linear layer, loss sigmoid, beta 0.1, batch 8, one epoch, cosine
learning rate from `--lr`. Reported: the reference pass, the training wall time, the whole run, and
the held-out reward accuracy (share of pairs whose implicit reward beta * logratio ranks chosen
above rejected; at step 0 every logratio is 0, so 0.5 is where training starts) and margin.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import smollm2_or_random  # noqa: E402

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base-test.jsonl.gz"


def pick(tokenizer, hh: Path, n: int, max_prompt: int, max_response: int) -> list[dict]:
    from rlhfkit.feedback.formats import read_preferences
    from rlhfkit.stages.dpo import encode_pair

    out, seen = [], set()
    for r in read_preferences(hh, "hh"):
        msgs, chosen, rejected = r["meta"]["messages"], r["responses"][0], r["responses"][1]
        key = json.dumps(msgs)
        if key in seen or chosen == rejected:
            continue
        p, c, rj = encode_pair(tokenizer, msgs, chosen, rejected, 10**6, 10**7)
        if len(p) <= max_prompt and max(len(c), len(rj)) <= max_response:
            seen.add(key)
            out.append({"prompt": msgs, "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}]})
            if len(out) == n:
                break
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/dpo-hh")
    ap.add_argument("--hh", default=str(HH))
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    hh = Path(a.hh)
    if not hh.exists():
        raise SystemExit(f"{hh} is absent (see ../shared/data/README.md)")
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    model, what = smollm2_or_random(work)
    from rlhfkit.models import load_tokenizer

    recs = pick(load_tokenizer(model), hh, a.train + a.test, 128, 64)
    if len(recs) < a.train + a.test:
        raise SystemExit(f"only {len(recs)} pairs fit the token limits")
    for name, rs in (("train", recs[:a.train]), ("test", recs[a.train:])):
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    out = work / "run"
    sets = {"model": model, "data": work / "train.jsonl", "eval_data": work / "test.jsonl", "format": "trl",
            "out": out, "lora": "true", "lora_r": 16, "lora_alpha": 32, "loss": "sigmoid", "beta": a.beta,
            "learning_rate": a.lr, "warmup_steps": 3, "batch_size": 8, "micro_batch_size": 8, "eval_batch_size": 8,
            "epochs": a.epochs, "max_prompt_len": 128, "max_seq_len": 192, "eval_every": 0, "save_every": 0,
            "log_every": 1, "threads": a.threads, "seed": 0}
    from rlhfkit.cli import main as cli

    t0 = time.perf_counter()
    if cli(["dpo"] + [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]):
        raise SystemExit("rlhfkit dpo failed")
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "time/step_s" in r]
    ev = json.loads((out / "eval.json").read_text())
    res = {"model": what, "train_pairs": a.train, "test_pairs": a.test, "lr": a.lr, "beta": a.beta, "epochs": a.epochs,
           "optimizer_steps": len(steps), "ref_s": round(steps[0].get("time/ref_s", 0.0), 1),
           "train_s": round(sum(r["time/step_s"] for r in steps), 1), "wall_s": round(wall, 1),
           "train_reward_accuracy_last10": round(sum(r["dpo/reward_accuracy"] for r in steps[-10:]) / min(10, len(steps)), 3),
           "eval": ev}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
