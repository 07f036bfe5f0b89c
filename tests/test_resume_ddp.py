"""Exact resume after SIGKILL, and data parallelism that changes nothing but speed."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_PRETRAIN, metrics, rlhfkit


def _sets(items):
    return [x for s in items for x in ("--set", s)]


def _pretrain_args(tiny_data, tiny_tokenizer, out, steps):
    return ["pretrain", *_sets([f"data={tiny_data['corpus']}", f"tokenizer={tiny_tokenizer}", f"out={out}",
                                f"max_steps={steps}", "save_every=3", "threads=1", *TINY_PRETRAIN])]


def test_sigkill_then_rerun_is_bitwise_identical(tiny_data, tiny_tokenizer, tmp_path):
    steps = 24
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    rlhfkit(*_pretrain_args(tiny_data, tiny_tokenizer, straight, steps))

    args = _pretrain_args(tiny_data, tiny_tokenizer, killed, steps)
    proc = subprocess.Popen([sys.executable, "-m", "rlhfkit", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-0000009" / "state.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # no chance to clean up: mid-step, maybe mid-save
    assert proc.wait() == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()

    r = rlhfkit(*args)
    assert "resuming at step" in r.stdout
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise, not approximately
    ma, mb = metrics(straight / "metrics.jsonl"), metrics(killed / "metrics.jsonl")
    assert [m["step"] for m in mb] == list(range(1, steps + 1))  # no duplicated or missing lines
    assert [m["train/loss"] for m in ma] == [m["train/loss"] for m in mb]


def test_sft_lora_resume_is_exact(tiny_data, tiny_base, tmp_path):
    base = ["sft", *_sets([f"model={tiny_base}", f"data={tiny_data['sft']}", "batch_size=8", "micro_batch_size=4",
                           "save_every=2", "lora=true", "lora_r=4", "learning_rate=1e-2", "log_every=1",
                           # pinned: two separate runs compared bitwise must run the same thread
                           # count, and a start-up probe of a model this small picks 1 or 2 by noise
                           # (seen: the straight run on 1, the resumed one on 2, step 5 off by 1e-6)
                           "threads=1"])]
    rlhfkit(*base, "--set", f"out={tmp_path / 'a'}", "--set", "max_steps=6")
    # stop at step 4 (a clean stop is a kill after the checkpoint), then ask for 6 again
    rlhfkit(*base, "--set", f"out={tmp_path / 'b'}", "--set", "max_steps=6", "--set", "save_every=2",
            env={"RLHFKIT_STOP_AFTER_STEP": "4"}, check=False)
    r = rlhfkit(*base, "--set", f"out={tmp_path / 'b'}", "--set", "max_steps=6")
    assert "resuming at step 4" in r.stdout
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def _torchrun(*args):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "rlhfkit", *args], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.parametrize("stage", ["pretrain", "sft"])
def test_two_processes_match_one(stage, tiny_data, tiny_tokenizer, tiny_base, tmp_path):
    if stage == "pretrain":
        args = lambda out: _pretrain_args(tiny_data, tiny_tokenizer, out, 8)
    else:  # SFT: ranks see different numbers of assistant tokens; the global normaliser must fix that
        args = lambda out: ["sft", *_sets([f"model={tiny_base}", f"data={tiny_data['sft']}", f"out={out}",
                                           "max_steps=5", "batch_size=8", "micro_batch_size=2", "log_every=1"])]
    rlhfkit(*args(tmp_path / "one"))
    r = _torchrun(*args(tmp_path / "two"))
    assert r.stdout.count(f"{stage}: done") == 1  # rank 0 alone prints and logs
    one, two = metrics(tmp_path / "one" / "metrics.jsonl"), metrics(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two)
    for a, b in zip(one, two):
        assert abs(a["train/loss"] - b["train/loss"]) < 1e-5, (a["step"], a["train/loss"], b["train/loss"])
