"""Shared fixtures: a tiny corpus, conversations and a tokenizer trained on them, built in
code so every test runs offline in seconds. Runs CLI commands in subprocesses where the
behaviour under test is a process's (exit codes, SIGKILL, torchrun)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ANIMALS = ["cat", "dog", "pelican", "owl", "frog", "horse"]


def _corpus(n: int = 400, seed: int = 0) -> str:
    r = random.Random(seed)
    docs = []
    for _ in range(n):
        a, b, animal = r.randint(0, 30), r.randint(0, 30), r.choice(ANIMALS)
        docs.append(f"The {animal} sat by the river. {a} plus {b} is {a + b}.\nThe {animal} was happy.")
    return "\n\n".join(docs) + "\n"


def _conversations(n: int = 96, seed: int = 1) -> list[dict]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        a, b = r.randint(0, 30), r.randint(0, 30)
        msgs = [{"role": "user", "content": f"What is {a} + {b}?"},
                {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."}]
        if i % 3 == 0:  # some multi-turn, with a system prompt: masks must handle both
            msgs = [{"role": "system", "content": "You are terse."}] + msgs + [
                {"role": "user", "content": "Thanks!"}, {"role": "assistant", "content": "You are welcome."}]
        out.append({"messages": msgs})
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("data")
    (d / "corpus.txt").write_text(_corpus())
    with (d / "sft.jsonl").open("w") as f:
        for c in _conversations():
            f.write(json.dumps(c) + "\n")
    return {"corpus": d / "corpus.txt", "sft": d / "sft.jsonl", "dir": d}


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_data, tmp_path_factory) -> Path:
    from rlhfkit.config import load_config
    from rlhfkit.tokenizer import Config, run

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    run(load_config(Config, sets=[f"files={tiny_data['corpus']},{tiny_data['sft']}", f"out={out}", "vocab_size=320"]))
    return out


TINY_PRETRAIN = ["d_model=32", "n_layers=2", "n_heads=2", "block_size=32", "batch_size=8",
                 "micro_batch_size=4", "warmup_steps=2", "eval_every=0", "log_every=1", "learning_rate=3e-3"]


def rlhfkit(*args: str, check: bool = True, timeout: float = 300, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process, as a user would."""
    e = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    r = subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True, text=True,
                       timeout=timeout, env=e, **kw)
    if check and r.returncode != 0:
        raise AssertionError(f"rlhfkit {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line]


@pytest.fixture(scope="session")
def tiny_base(tiny_data, tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny pre-trained model (20 steps), shared by the tests that need a base model."""
    out = tmp_path_factory.mktemp("base") / "base"
    rlhfkit("pretrain", "--set", f"data={tiny_data['corpus']}", "--set", f"tokenizer={tiny_tokenizer}",
            "--set", f"out={out}", "--set", "max_steps=20", *[x for s in TINY_PRETRAIN for x in ("--set", s)])
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's in-process runs: on 2 shared cores, 2 OpenMP threads spin
    against the other jobs, and reductions then add in one fixed order, so numbers repeat.
    `distributed.setup()` sets the thread count on every run; within the module that call is held."""
    import torch

    mp = pytest.MonkeyPatch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    mp.setattr(torch, "set_num_threads", lambda n: None)
    yield
    mp.undo()
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_lm(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny random causal LM (seed 0, 2 layers of 32) with the test tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from rlhfkit.models import tiny_llama_config

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), d_model=32, n_layers=2, n_heads=2, max_seq_len=128))
    out = tmp_path_factory.mktemp("lm") / "lm"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
