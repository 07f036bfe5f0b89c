"""What the side-by-side benchmarks share: the model to run, a worker subprocess with its peak
memory, and a table. Not a library: benchmark scripts import it from their own folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

PEAK_GFLOPS = 166.0  # fp32 matmul peak of the project's 2-core machine (a 2048^2 matmul, both cores)


def smollm2_135m_shape():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                       rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                       bos_token_id=1, eos_token_id=2, pad_token_id=3)


def smollm2_or_random(work: Path, model: str = "") -> tuple[str, str]:
    """-> (model dir, what it is). `model` if given; else SmolLM2-135M-Instruct pulled by
    `rlhfkit models pull` (the download is tried once); else a random-weight model of the same
    shape with a small byte-level BPE tokenizer (49,152-row embedding kept, so every matmul has
    SmolLM2's shape; the random model rarely ends a response, so each runs to the budget)."""
    if model:
        return model, model
    from rlhfkit.models import home, pull

    local = home() / "models" / "smollm2-135m-instruct"
    if not (local / "config.json").exists():
        try:
            pull("smollm2-135m-instruct", quiet=True)
        except Exception as e:  # no network: fall back to the random model of the same shape
            print(f"(pull failed: {e}; using a random model of SmolLM2-135M's shape)", file=sys.stderr)
    if (local / "config.json").exists():
        return str(local), "SmolLM2-135M-Instruct"
    out = work / "random-smollm2-shape"
    if not (out / "config.json").exists():
        import random

        import torch
        from transformers import LlamaForCausalLM

        from rlhfkit.tokenizer import train_tokenizer
        from rlhfkit.world import corpus_docs

        torch.manual_seed(0)
        tok = train_tokenizer(corpus_docs(random.Random(0), set(), 200_000), vocab_size=1024)
        cfg = smollm2_135m_shape()
        cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (tok.convert_tokens_to_ids(t) for t in
                                                                (tok.bos_token, tok.eos_token, tok.pad_token))
        LlamaForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return str(out), "random weights, SmolLM2-135M shape"


def side_by_side_parser(doc: str):
    """The options both TRL-vs-rlhfkit benchmarks take, and the hidden ones of their workers."""
    import argparse

    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--steps", type=int, default=6, help="steps per framework (median over 2..N)")
    p.add_argument("--model", default="", help="model dir (default: SmolLM2-135M-Instruct, else random)")
    p.add_argument("--only", choices=["trl", "rlhfkit"], help="run one side only")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--trl-gradient-checkpointing", action="store_true", help="TRL's default; off here")
    p.add_argument("--work", default="", help="scratch dir (default: a temporary one)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--worker", choices=["trl", "rlhfkit"], help=argparse.SUPPRESS)
    p.add_argument("--result", default="", help=argparse.SUPPRESS)
    return p


def parse_side_by_side(p):
    a = p.parse_args()
    if a.steps < 2:
        p.error("--steps must be >= 2 (step 1 is warm-up)")
    return a


def run_worker(script: str, args: list[str], result: Path, env: dict | None = None) -> dict:
    """Run `python script --worker ... --result result` in a fresh process; -> its JSON result
    plus `peak_rss_mb` (the child's maximum resident set, from wait4's rusage) and `wall_s`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, script, *args, "--result", str(result)],
                            env={**os.environ, **(env or {})})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{Path(script).name} {' '.join(args)}: worker exited with {proc.returncode}")
    out = json.loads(result.read_text())
    out["peak_rss_mb"] = usage.ru_maxrss / 1024  # Linux reports KiB
    out["wall_s"] = time.perf_counter() - t0
    return out


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in header]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def pick_pairs(n: int, hh: Path, encode) -> tuple[list[dict], str]:
    """The first n preference pairs that `encode(messages, chosen, rejected)` accepts (it returns their
    token ids, or None for a pair too long for the benchmark): real HH-RLHF pairs from `hh`, else pairs
    of the embedded world -> ([{"prompt": messages, "chosen": [assistant], "rejected": [assistant],
    "_ids": ids}], where they came from)."""
    import random

    if hh.exists():
        from rlhfkit.feedback.formats import read_preferences

        candidates = [(r["meta"]["messages"], r["responses"][0], r["responses"][1]) for r in read_preferences(hh, "hh")]
        where = f"HH-RLHF harmless-base test ({hh.name})"
    else:
        from rlhfkit.world import conversation

        rng = random.Random(0)
        convs = [conversation(rng, set())["messages"] for _ in range(4 * n)]
        candidates = [(c[:-1], c[-1]["content"], convs[(i + 1) % len(convs)][-1]["content"]) for i, c in enumerate(convs)]
        where = "the embedded world (HH-RLHF file absent)"
    out = []
    for msgs, chosen, rejected in candidates:
        ids = encode(msgs, chosen, rejected) if chosen != rejected else None
        if ids is not None:
            out.append({"prompt": msgs, "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}], "_ids": ids})
        if len(out) == n:
            return out, where
    raise SystemExit(f"only {len(out)} of {n} pairs fit the benchmark's lengths in {where}")
