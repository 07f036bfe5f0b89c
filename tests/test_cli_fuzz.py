"""Every command, fed malformed keys, values and files, answers with one line and exit 2.

A table of cases (each listed in issue 15, plus the neighbours they suggest) and
hypothesis-drawn bad values for every numeric key of every stage run through `cli.main` in
this process: each must fail in validation, before a model loads, so the whole table takes
seconds. For each case: exit code 2, exactly one line on stderr, no traceback, the expected
words in it, and the working directory (inputs, `out`, the current directory where a default
`out` would land) exactly as it was. A few cases run as real processes: the exit code seen by
a shell, and a closed stdout pipe (`rlhfkit --help | head -1`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import rlhfkit
from rlhfkit.cli import main

from rlhfkit.cli import COMMANDS

# the config stages' modules, as the CLI dispatches them
CONFIG_STAGES = {s: COMMANDS[s][0] for s in ("tokenizer", "pretrain", "sft", "reward", "ppo", "grpo", "rloo")}
RAN: list[str] = []  # every case run, counted by test_zz_case_count


@pytest.fixture(scope="module")
def ws(tiny_tokenizer, tmp_path_factory) -> Path:
    """Inputs good and bad, a tiny causal LM and reward model, and damaged copies of them."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhfkit.models import load_tokenizer, save_model, tiny_llama_config

    d = tmp_path_factory.mktemp("fuzz")
    tok = load_tokenizer(str(tiny_tokenizer))
    cfg = tiny_llama_config(len(tok), d_model=32, n_layers=1, n_heads=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    save_model(AutoModelForCausalLM.from_config(cfg), tok, d / "lm")
    cfg.num_labels = 1
    save_model(AutoModelForSequenceClassification.from_config(cfg), tok, d / "rm")
    for name in ("lm", "rm"):
        shutil.copytree(d / name, d / f"{name}-cut")
        f = d / f"{name}-cut" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a copy cut short
    shutil.copytree(tiny_tokenizer, d / "tok")
    shutil.copytree(tiny_tokenizer, d / "tok-garbage")
    (d / "tok-garbage" / "tokenizer.json").write_bytes(b"\x00\x01 not json")

    conv = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    (d / "corpus.txt").write_text("The cat sat.\n\nThe dog ran.\n")
    (d / "sft.jsonl").write_text(json.dumps(conv) + "\n")
    (d / "prompts.jsonl").write_text(json.dumps({"prompt": "2+2?", "answer": "4"}) + "\n")
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    (d / "latin1.jsonl").write_bytes(json.dumps(conv).encode() + b"\n" + '{"prompt": "café"}\n'.encode("latin-1"))
    (d / "latin1-prompts.jsonl").write_bytes(b'{"prompt": "x"}\n' + '{"prompt": "café"}\n'.encode("latin-1"))
    (d / "oasst.jsonl").write_text(json.dumps({"message_tree_id": "t", "prompt": {
        "message_id": "p", "role": "prompter", "text": "hi", "replies": [
            {"message_id": "a", "role": "assistant", "text": "A", "rank": "first"},
            {"message_id": "b", "role": "assistant", "text": "B", "rank": 1}]}}) + "\n")
    (d / "assistant-first.jsonl").write_text(json.dumps({"messages": conv["messages"][::-1] + conv["messages"][::-1][:1]}) + "\n")
    (d / "ctl.jsonl").write_text('{"prompt": "a\tb"}\n')  # a raw tab: "Invalid control character at"
    full = gzip.compress((json.dumps({"prompt": "2+2?"}) + "\n").encode() * 200)
    (d / "prompts-cut.jsonl.gz").write_bytes(full[: len(full) // 2])
    (d / "binary.toml").write_bytes(b"max_steps = 3\n\x00\x00\x89PNG")
    (d / "latin1.toml").write_bytes('out = "café"\n'.encode("latin-1"))
    (d / "same.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "chosen": "a", "rejected": "a"}) + "\n"
                                          for i in range(3)))
    (d / "repeat.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n"
                                    + json.dumps({"prompt": "q", "responses": ["a", "b", "a"]}) + "\n")
    (d / "prefs.jsonl").write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n")
    (d / "myrun").mkdir()
    (d / "myrun" / "feedback.db").write_bytes(b"precious")
    (d / "pretrained").mkdir()
    (d / "pretrained" / "config.toml").write_text("# rlhfkit pretrain\nmax_steps = 1\n")
    (d / "afile").write_text("not a directory\n")
    return d


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else (-1, 0)
            for p in root.rglob("*")}


def one_line_exit_2(ws: Path, argv: list[str], expect: str, monkeypatch) -> str:
    """Run `rlhfkit ARGV` in this process from `ws`; -> its stderr after the checks."""
    RAN.append(" ".join(argv))
    monkeypatch.chdir(ws)
    before = _tree(ws)
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    text = err.getvalue()
    assert rc == 2, f"rlhfkit {' '.join(argv)}: exit {rc}, stderr {text!r}"
    assert len(text.strip().splitlines()) == 1 and "Traceback" not in text, text
    assert expect.lower() in text.lower(), f"expected {expect!r} in {text!r}"
    assert _tree(ws) == before, f"rlhfkit {' '.join(argv)} changed files: {set(_tree(ws)) ^ set(before)}"
    return text


S = lambda *items: [x for i in items for x in ("--set", i)]  # noqa: E731
PRE = S("tokenizer=tok", "data=corpus.txt")  # a pretrain whose inputs are fine
LM, RM = "model=lm", "model=rm"

CASES = [
    # ---- config values: ranges, finite numbers, divisibility
    (["pretrain", *S("learning_rate=-1")], "learning_rate must be > 0"),
    (["pretrain", *S("learning_rate=nan")], "learning_rate must be a finite number"),
    (["sft", *S("learning_rate=inf")], "learning_rate must be a finite number"),
    (["grpo", *S("learning_rate=0")], "learning_rate must be > 0"),
    (["pretrain", *S("micro_batch_size=-1")], "micro_batch_size must be >= 0"),  # 0: from micro_batch_tokens
    (["pretrain", *S("micro_batch_tokens=0")], "micro_batch_tokens must be >= 1"),
    (["sft", *S("micro_batch_size=0")], "micro_batch_size must be >= 1"),
    (["reward", *S("micro_batch_size=-1")], "micro_batch_size must be >= 0"),  # 0: from micro_batch_tokens
    (["reward", *S("micro_batch_tokens=0")], "micro_batch_tokens must be >= 1"),
    (["ppo", *S("micro_batch_size=-1")], "micro_batch_size must be >= 0"),  # 0: from micro_batch_tokens
    (["grpo", *S("micro_batch_tokens=0")], "micro_batch_tokens must be >= 1"),
    (["pretrain", *S("block_size=0")], "block_size must be >= 1"),
    (["pretrain", *S("n_heads=3")], "n_heads=3 must divide d_model=256"),
    (["pretrain", *S("d_model=90")], "n_heads=4 must divide d_model=90"),
    (["pretrain", *S("n_kv_heads=3")], "n_kv_heads=3 must divide n_heads=4"),
    (["pretrain", *S("d_model=30", "n_heads=2")], "d_model / n_heads = 15 must be even"),
    (["pretrain", *S("eval_fraction=1")], "eval_fraction must be in [0, 1)"),
    (["sft", *S("eval_fraction=1")], "eval_fraction must be in [0, 1)"),
    (["reward", *S("eval_fraction=1.5")], "eval_fraction must be in [0, 1)"),
    (["sft", *S("lora_r=0")], "lora_r must be >= 1"),
    (["reward", *S("lora=true", "lora_r=0")], "lora_r must be >= 1"),
    (["grpo", *S("lora_r=-2")], "lora_r must be >= 1"),
    (["sft", *S("lora_dropout=1")], "lora_dropout must be in [0, 1)"),
    (["sft", *S("batch_size=0")], "batch_size must be >= 1"),
    (["reward", *S("batch_size=0")], "batch_size must be >= 1"),
    (["pretrain", *S("max_steps=0")], "max_steps must be >= 1"),
    (["pretrain", *S("max_steps=-5")], "max_steps must be >= 1"),
    (["grpo", *S("max_steps=0")], "max_steps must be >= 1"),
    (["ppo", *S("max_steps=-1")], "max_steps must be >= 1"),
    (["sft", *S("max_steps=-1")], "max_steps must be >= 0"),  # 0 is "use epochs" there
    (["reward", *S("epochs=0")], "epochs must be > 0"),
    (["grpo", *S("temperature=-1")], "temperature must be >= 0"),
    (["grpo", *S("top_p=0")], "top_p must be in (0, 1]"),
    (["rloo", *S("top_p=1.5")], "top_p must be in (0, 1]"),
    (["ppo", *S("gamma=2")], "gamma must be in [0, 1]"),
    (["ppo", *S("group_size=0")], "group_size must be >= 1"),
    (["grpo", *S("prompts_per_step=0")], "prompts_per_step must be >= 1"),
    (["grpo", *S("max_new_tokens=0")], "max_new_tokens must be >= 1"),
    (["rloo", *S("kl_coef=-0.1")], "kl_coef must be >= 0"),
    (["pretrain", *S("warmup_steps=-1")], "warmup_steps must be >= 0"),
    (["pretrain", *S("log_every=0")], "log_every must be >= 1"),
    (["sft", *S("keep_checkpoints=0")], "keep_checkpoints must be >= 1"),
    (["tokenizer", *S("vocab_size=0")], "vocab_size must be >= 1"),
    # ---- keys, types, flags
    (["pretrain", *S("bogus=1")], "unknown key 'bogus'"),
    (["pretrain", *S("max_step=3")], "did you mean 'max_steps'"),
    (["pretrain", *S("max_steps=ten")], "expected an integer"),
    (["sft", *S("lora=maybe")], "expected true or false"),
    (["sft", "--set", "max_steps"], "expected key=value"),
    (["sft", "--bogus"], "unrecognized arguments: --bogus"),
    (["pretrain", "--config", "nope.toml"], "config file not found"),
    (["pretrain", "--config", "binary.toml"], "binary.toml:2: binary data"),
    (["pretrain", "--config", "latin1.toml"], "latin1.toml:1: not UTF-8 text"),
    (["nosuchcommand"], "unknown command"),
    # ---- out: empty, a file, someone else's directory
    *[([stage, *S("out=")], "out must not be empty") for stage in CONFIG_STAGES],
    (["pretrain", *S("out=afile")], "afile: exists and is not a directory"),
    (["tokenizer", *S("files=corpus.txt", "out=myrun")], "not empty and not an earlier `rlhfkit tokenizer`"),
    (["sft", *S(LM, "data=sft.jsonl", "out=pretrained")], "the output of `rlhfkit pretrain`"),
    (["pretrain", *PRE, "--set", "out=afile/sub"], "afile is not a directory"),
    # ---- input files: encoding, compression, record shape, file and line
    (["tokenizer", *S("files=binary.bin", "out=o")], "binary.bin:1: binary data"),
    (["tokenizer", *S("files=latin1.txt", "out=o")], "latin1.txt:1: not UTF-8 text (byte 0xe9"),
    (["tokenizer", *S("files=missing.txt", "out=o")], "missing.txt: file not found"),
    (["pretrain", *S("tokenizer=tok", "data=binary.bin", "out=o")], "binary.bin:1: binary data"),
    (["pretrain", *S("tokenizer=tok", "data=latin1.txt", "out=o")], "not UTF-8 text"),
    (["pretrain", *S("tokenizer=tok-garbage", "data=corpus.txt", "out=o")], "tokenizer.json: not valid JSON"),
    (["sft", *S(LM, "data=binary.bin", "out=o")], "binary.bin:1: binary data"),
    (["sft", *S(LM, "data=latin1.jsonl", "out=o")], "latin1.jsonl:2: not UTF-8 text"),
    (["sft", *S(LM, "data=assistant-first.jsonl", "out=o")], "assistant-first.jsonl:1: conversation starts with an assistant"),
    (["sft", *S(LM, "data=sft.jsonl", "eval_data=ctl.jsonl", "out=o")], "ctl.jsonl:1: malformed JSON (Invalid control character at column"),
    (["grpo", *S(LM, "prompts=binary.bin", "out=o")], "binary.bin:1: binary data"),
    (["grpo", *S(LM, "prompts=latin1-prompts.jsonl", "out=o")], "latin1-prompts.jsonl:2: not UTF-8 text"),
    (["grpo", *S(LM, "prompts=prompts-cut.jsonl.gz", "out=o")], "prompts-cut.jsonl.gz: truncated or corrupt gzip"),
    (["ppo", *S(LM, "prompts=ctl.jsonl", "out=o")], "ctl.jsonl:1: malformed JSON (Invalid control character at column"),
    (["rloo", *S(LM, "prompts=prompts.jsonl", "eval_prompts=sft.jsonl", "out=o")], "sft.jsonl:1: a prompt's messages must end with a user turn"),
    (["grpo", *S(LM, "prompts=missing.jsonl", "out=o")], "missing.jsonl: file not found"),
    (["reward", *S(LM, "data=same.jsonl", "out=o")], "every pair has chosen == rejected"),
    (["reward", *S(LM, "data=repeat.jsonl", "out=o")], "repeat.jsonl:2: the ranking lists the same response twice"),
    (["reward", *S(LM, "data=binary.bin", "out=o")], "binary.bin:1: binary data"),
    # ---- damaged models: found before anything loads
    (["sft", *S("model=lm-cut", "data=sft.jsonl", "out=o")], "lm-cut/model.safetensors: truncated"),
    (["grpo", *S("model=lm-cut", "prompts=prompts.jsonl", "out=o")], "lm-cut/model.safetensors: truncated"),
    (["grpo", *S(LM, "prompts=prompts.jsonl", "reward=rm:rm-cut", "out=o")], "rm-cut/model.safetensors: truncated"),
    (["ppo", *S(LM, "prompts=prompts.jsonl", "reward=math", "value_init=rm:rm-cut", "out=o")], "rm-cut/model.safetensors: truncated"),
    (["reward", *S("model=lm-cut", "data=prefs.jsonl", "out=o")], "lm-cut/model.safetensors: truncated"),
    (["sample", "lm-cut", "--prompt", "hi"], "lm-cut/model.safetensors: truncated"),
    (["eval-reward", "rm-cut", "--data", "prefs.jsonl", "--out", "o"], "safetensors"),
    # ---- sample / chat arguments
    (["sample", "lm", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["sample", "lm", "--prompt", "hi", "--temperature", "-1"], "--temperature must be >= 0"),
    (["sample", "lm", "--prompt", "hi", "--temperature", "nan"], "--temperature must be >= 0"),
    (["sample", "lm", "--prompt", "hi", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["sample", "lm", "--prompt", "hi", "-n", "0"], "-n must be at least 1"),
    (["sample", "lm"], "the following arguments are required: --prompt"),
    (["chat", "lm", "--max-new-tokens", "-3"], "--max-new-tokens must be at least 1"),
]


@pytest.mark.parametrize("argv,expect", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(ws, argv, expect, monkeypatch):
    one_line_exit_2(ws, argv, expect, monkeypatch)


def test_oasst_rank_that_is_not_a_number(ws, monkeypatch):
    one_line_exit_2(ws, ["reward", *S(LM, "data=oasst.jsonl", "out=o")], "rank", monkeypatch)


# ---- hypothesis: any out-of-range value of any numeric key of any stage

def _rules():
    """(stage, key, kind, zero allowed) for every int/float key a range rule covers."""
    from rlhfkit.config import FLOAT_RULES, NON_NEGATIVE_INTS, POSITIVE_INTS, _zero_has_meaning

    out = []
    for stage, mod in CONFIG_STAGES.items():
        module = importlib.import_module(mod)
        cls = module.Config
        for f in dataclasses.fields(cls):
            if f.name in POSITIVE_INTS:
                out.append((stage, f.name, "int", 0 if _zero_has_meaning(f.metadata["help"]) else 1))
            elif f.name in NON_NEGATIVE_INTS:
                out.append((stage, f.name, "int", 0))
            elif f.name in FLOAT_RULES:
                out.append((stage, f.name, "float", None))
    return out


RULES = _rules()


def _bad_float(name: str):
    """Values outside the rule of `name` (NaN and infinities are outside every rule)."""
    from rlhfkit.config import FLOAT_RULES

    special = st.sampled_from(["nan", "inf", "-inf"])
    drawn = st.floats(-1e6, 1e6, allow_nan=False).filter(lambda v: FLOAT_RULES[name](v) is not None).map(repr)
    return st.one_of(special, drawn)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hypothesis_out_of_range_numbers(ws, data, monkeypatch):
    stage, name, kind, lo = data.draw(st.sampled_from(RULES), label="rule")
    if kind == "int":
        value = str(data.draw(st.integers(-10**9, lo - 1), label="value"))
    else:
        value = data.draw(_bad_float(name), label="value")
    one_line_exit_2(ws, [stage, "--set", f"{name}={value}"], f"{name} must", monkeypatch)


# ---- a run that fails after it started writing leaves `out` as it found it

def _start_then_fail(out: Path, metrics_line: str = ""):
    """What every stage does at its start (config.toml, an empty metrics.jsonl and
    samples.jsonl), then the error a later check raises."""
    from rlhfkit.files import UserError, atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.toml", "# rlhfkit sft\nmax_steps = 9\n")
    (out / "metrics.jsonl").write_text(metrics_line)
    (out / "samples.jsonl").write_text("")
    raise UserError("a bad line found after setup")


def test_failed_start_removes_only_what_it_created(tmp_path):
    from rlhfkit.files import OutGuard, UserError

    new = tmp_path / "runs" / "r1" / "sft"  # runs/ does not exist yet: all three go
    with pytest.raises(UserError), OutGuard(new):
        _start_then_fail(new)
    assert list(tmp_path.iterdir()) == []

    own = tmp_path / "own"  # an earlier run's dir: its files stay, its config.toml comes back
    own.mkdir()
    (own / "config.toml").write_text("# rlhfkit sft\nmax_steps = 3\n")
    (own / "model.safetensors").write_bytes(b"weights")
    os.utime(own / "model.safetensors", (1, 1))  # made long before this run
    with pytest.raises(UserError), OutGuard(own):
        _start_then_fail(own)
    assert sorted(p.name for p in own.iterdir()) == ["config.toml", "model.safetensors"]
    assert (own / "config.toml").read_text() == "# rlhfkit sft\nmax_steps = 3\n"

    trained = tmp_path / "trained"  # once a metrics line is written, the run is worth keeping
    with pytest.raises(UserError), OutGuard(trained):
        _start_then_fail(trained, '{"step": 1}\n')
    assert sorted(p.name for p in trained.iterdir()) == ["config.toml", "metrics.jsonl", "samples.jsonl"]


def test_force_writes_into_a_foreign_dir_and_deletes_nothing(ws, tmp_path, monkeypatch):
    """`rlhfkit tokenizer --set out=runs/myrun` used to replace the whole directory."""
    run = tmp_path / "myrun"
    shutil.copytree(ws / "myrun", run)
    rc = main(["tokenizer", "--set", f"files={ws / 'corpus.txt'}", "--set", f"out={run}", "--set", "vocab_size=300",
               "--set", "min_frequency=1", "--force"])
    assert rc == 0
    assert (run / "feedback.db").read_bytes() == b"precious"  # the file that was there
    assert (run / "tokenizer.json").is_file() and (run / "config.toml").read_text().startswith("# rlhfkit tokenizer")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left beside it
    # now it is the tokenizer's own output: a rerun needs no --force
    assert main(["tokenizer", "--set", f"files={ws / 'corpus.txt'}", "--set", f"out={run}", "--set", "vocab_size=300",
                 "--set", "min_frequency=1"]) == 0


def wrong_length(prompts, completions, **_):
    """A reward function with a bug a user makes: one score for the whole batch."""
    return [0.0]


def test_rl_run_failing_at_its_first_step_leaves_nothing(ws, monkeypatch):
    """The stage has written config.toml, metrics.jsonl and samples.jsonl when the reward
    function fails on the first rollout: `out` must be gone again."""
    monkeypatch.chdir(ws)
    before = _tree(ws)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["grpo", *S(LM, "prompts=prompts.jsonl", "reward=test_cli_fuzz:wrong_length", "out=runs/r/grpo",
                              "max_steps=1", "prompts_per_step=1", "group_size=2", "max_new_tokens=4",
                              "micro_batch_size=2", "threads=1")])
    assert rc == 2 and "reward wrong_length returned 1 values for 2 completions" in err.getvalue(), err.getvalue()
    assert "Traceback" not in err.getvalue()
    assert _tree(ws) == before  # runs/, runs/r/, runs/r/grpo/ and their files all removed


# ---- real processes: what a shell sees

@pytest.mark.parametrize("args,expect", [(["sft", "--set", "out="], "out must not be empty")])
def test_exit_code_in_a_shell(args, expect, tmp_path):
    RAN.append(" ".join(args))
    r = rlhfkit(*args, check=False, cwd=tmp_path)
    assert r.returncode == 2 and expect in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing written where a default `out` would land


@pytest.mark.parametrize("args", [["--help"], ["pretrain", "--help"]])
def test_closed_stdout_pipe_is_quiet(args):
    """`rlhfkit --help | head -1`: the reader is gone before we write; no BrokenPipeError."""
    RAN.append(" ".join(args) + " | (closed)")
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, deterministically
    try:
        r = subprocess.run([sys.executable, "-m", "rlhfkit", *args], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=60)
    finally:
        os.close(write_end)
    assert "Traceback" not in r.stderr and "BrokenPipeError" not in r.stderr and r.stderr == ""
    assert r.returncode in (0, 141)  # 141 = 128 + SIGPIPE, as `cat` killed by the pipe


def test_zz_case_count():
    """The number of cases this module ran (run it with -s to see it)."""
    print(f"\ntest_cli_fuzz: {len(RAN)} cases ran")
    assert len(RAN) >= len(CASES)
