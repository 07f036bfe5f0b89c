"""Damaged artefacts, a read-only directory and a full disk: one clear line, nothing lost.

Each artefact a stage reads is damaged the way it happens (a copy cut short, a file
overwritten with garbage, a line torn by a kill mid-write) and the stage must say so in one
line naming the file, leave every file as it was, and — where it resumes — still resume
from the checkpoint before. The full disk is an RLIMIT_FSIZE in a child process (CPython
ignores SIGXFSZ, so an oversized write fails with EFBIG as on a full disk, ENOSPC).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_PRETRAIN
from rlhfkit.cli import main
from rlhfkit.files import UserError


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pretrain_args(tiny_data, tiny_tokenizer, out: Path, steps: int) -> list[str]:
    sets = [f"data={tiny_data['corpus']}", f"tokenizer={tiny_tokenizer}", f"out={out}", f"max_steps={steps}",
            "save_every=2", "keep_checkpoints=2", "threads=1", *TINY_PRETRAIN]
    return ["pretrain", *[x for s in sets for x in ("--set", s)]]


@pytest.fixture(scope="module")
def run4(tiny_data, tiny_tokenizer, tmp_path_factory) -> tuple[Path, Path]:
    """A pretrain run stopped at step 4 (checkpoints step-2 and step-4, metrics, a model) and
    a pristine copy of it."""
    d = tmp_path_factory.mktemp("corrupt")
    rc, _, err = run_cli(*pretrain_args(tiny_data, tiny_tokenizer, d / "base", 4))
    assert rc == 0, err
    assert sorted(p.name for p in (d / "base" / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    shutil.copytree(d / "base", d / "pristine")
    return d / "base", d / "pristine"


@pytest.fixture
def run_copy(run4) -> Path:
    """The step-4 run, restored in place: a checkpoint remembers its `out`, so a copy
    elsewhere would not resume."""
    base, pristine = run4
    shutil.rmtree(base)
    shutil.copytree(pristine, base)
    return base


def one_line(rc: int, err: str, *words: str) -> None:
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err


# ---- models and tokenizers

def test_truncated_safetensors_is_one_line_and_left_alone(run_copy):
    from rlhfkit.models import load_causal_lm

    f = run_copy / "model.safetensors"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size - 100])  # the last 100 bytes never arrived
    before = snapshot(run_copy)
    with pytest.raises(UserError, match=rf"model.safetensors: truncated \({size - 100} bytes, its header needs {size}\)"):
        load_causal_lm(str(run_copy))
    rc, _, err = run_cli("sample", str(run_copy), "--prompt", "hi")
    one_line(rc, err, "model.safetensors: truncated")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("garbage", [b"", b"\x00\x01\x02", b'{"version": "1.0", "model": ', "é".encode("latin-1")])
def test_garbage_tokenizer_json(run_copy, garbage):
    from rlhfkit.models import load_tokenizer

    (run_copy / "tokenizer.json").write_bytes(garbage)
    with pytest.raises(UserError, match="tokenizer.json: not valid JSON"):
        load_tokenizer(str(run_copy))


def test_tokenizer_json_that_is_json_but_not_a_tokenizer(run_copy):
    # valid JSON, so only the tokenizers library can tell: its error is still one line
    from rlhfkit.models import load_tokenizer

    (run_copy / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "NoSuchModel"}}')
    with pytest.raises(UserError, match="could not load"):
        load_tokenizer(str(run_copy))


# ---- checkpoints and metrics

def test_truncated_checkpoint_falls_back_to_the_one_before(run_copy, tiny_data, tiny_tokenizer):
    state = run_copy / "checkpoints" / "step-0000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    rc, out, err = run_cli(*pretrain_args(tiny_data, tiny_tokenizer, run_copy, 6))
    # one warning naming the damaged file, then the run resumes from step 2 by itself
    assert rc == 0 and "resuming at step 2" in out, err
    assert "step-0000004/state.pt: unreadable checkpoint" in err and "Traceback" not in err
    steps = [json.loads(x)["step"] for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # 3 and 4 trained again, their old lines dropped


def test_only_checkpoint_damaged_is_one_line(run_copy, tiny_data, tiny_tokenizer):
    for old in sorted((run_copy / "checkpoints").glob("step-*"))[:-1]:
        shutil.rmtree(old)
    state = run_copy / "checkpoints" / "step-0000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    before = snapshot(run_copy)
    rc, _, err = run_cli(*pretrain_args(tiny_data, tiny_tokenizer, run_copy, 6))
    one_line(rc, err, "step-0000004/state.pt: unreadable checkpoint")
    assert snapshot(run_copy) == before  # the failed start touched nothing (config.toml neither)


def test_torn_last_metrics_line_resumes(run_copy, tiny_data, tiny_tokenizer):
    with (run_copy / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "train/lo')  # killed mid-write
    rc, out, err = run_cli(*pretrain_args(tiny_data, tiny_tokenizer, run_copy, 6))
    assert rc == 0 and "resuming at step 4" in out, err
    steps = [json.loads(x)["step"] for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# ---- a read-only directory and a full disk

@pytest.fixture
def read_only_dir(tmp_path):
    """A directory no one may write: chmod for a normal user; root ignores modes, so for root
    a read-only tmpfs (skipped where mounting is not allowed)."""
    d = tmp_path / "ro"
    d.mkdir()
    (d / "keep.txt").write_text("precious\n")
    if os.geteuid() != 0:
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
        return
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        (d / "keep.txt").write_text("precious\n")
        subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True, capture_output=True)
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_read_only_out_is_one_line(read_only_dir, tiny_data):
    for out in (read_only_dir / "tok", read_only_dir):  # a new dir inside, or the dir itself (--force)
        rc, _, err = run_cli("tokenizer", "--set", f"files={tiny_data['corpus']}", "--set", f"out={out}",
                             "--set", "vocab_size=300", "--force")
        one_line(rc, err, "not writable")
    assert [p.name for p in read_only_dir.iterdir()] == ["keep.txt"]
    assert (read_only_dir / "keep.txt").read_text() == "precious\n"


def _file_size_limit(limit: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_full_disk_keeps_the_last_checkpoint_and_resumes(run_copy, tiny_data, tiny_tokenizer):
    """The step-6 checkpoint cannot be written (a file size limit far below its size): one
    line, exit 2; step-2 and step-4 stay whole, and with room again the run resumes at 4."""
    step4 = snapshot(run_copy / "checkpoints" / "step-0000004")
    limit = 20_000  # bytes: config.toml and metrics lines fit, a checkpoint (~100 kB) does not
    assert min(len(b) for n, b in step4.items() if n.endswith("state.pt")) > 2 * limit
    r = subprocess.run([sys.executable, "-m", "rlhfkit", *pretrain_args(tiny_data, tiny_tokenizer, run_copy, 6)],
                       capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(limit),
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    # the run had started, so its progress bar shares stderr; the error is one line of it
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert sum("error:" in line for line in r.stderr.splitlines()) == 1, r.stderr
    assert "rlhfkit pretrain: error: could not write a file (disk full or a file size limit?)" in r.stderr
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["step-0000002", "step-0000004"]
    assert snapshot(run_copy / "checkpoints" / "step-0000004") == step4
    rc, out, err = run_cli(*pretrain_args(tiny_data, tiny_tokenizer, run_copy, 6))
    assert rc == 0 and "resuming at step 4" in out, err
    steps = [json.loads(x)["step"] for x in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_no_space_left_is_one_line_and_leaves_nothing_behind(tmp_path, tiny_data):
    """A real ENOSPC: a one-page tmpfs (root only; skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = tmp_path / "tiny"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(d)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        (d / "keep.txt").write_text("precious\n")
        rc, _, err = run_cli("tokenizer", "--set", f"files={tiny_data['corpus']}", "--set", f"out={d / 'tok'}",
                             "--set", "vocab_size=300")
        one_line(rc, err, "No space left on device", "(disk full or a file size limit)")
        assert [p.name for p in d.iterdir()] == ["keep.txt"]  # no half tokenizer, no temp dir
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
