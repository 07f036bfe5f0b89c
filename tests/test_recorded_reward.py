"""Recorded-loss regression test for the reward stage (torchtune style).

Three optimizer steps on a fixed tiny model and fixed rankings; every step's logged
train/loss, train/accuracy and train/grad_norm must equal the values below, which were
recorded from the code before the issue-10 refactor (stages/reward.py split, rankings
loading moved out). A change that alters any number (data order, loss weighting,
micro-batching, LR schedule, head init, normalisation, held-out scoring) fails here, and a
run resumed from its step-2 checkpoint must reach the same numbers.

If a change is MEANT to alter the numbers, re-record: run with RLHFKIT_RECORD=1 and -s,
paste the printed table, and say why in the commit message.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from rlhfkit.config import load_config
from rlhfkit.stages import reward

TOL = 1e-5
FAST = ["batch_size=4", "micro_batch_size=2", "learning_rate=3e-3", "warmup_steps=1", "log_every=1",
        "eval_every=0", "max_seq_len=48", "save_every=0", "max_steps=3"]
ANIMALS = ["cat", "dog", "pelican", "owl", "frog", "horse"]

# "steps": step -> [train/loss, train/accuracy, train/grad_norm]; "norm": reward_norm.json's [mean, std];
# "eval": held-out [rm/accuracy, rm/ece, rm/margin_mean, rm/ensemble_std_mean].
# Recorded from a8347ef (main before issue 10) with RLHFKIT_RECORD=1.
RECORDED = {
    "pairwise": {"steps": {"1": [0.6923265, 0.3333333, 0.3255839], "2": [0.6246401, 1.0, 1.163037],
                           "3": [0.6208384, 1.0, 2.289844]},
                 "norm": [0.2633565068244934, 0.46366262435913086]},
    "plackett_luce": {"steps": {"1": [0.9668476, 0.1666667, 0.4087602], "2": [1.625793, 1.0, 2.824992],
                                "3": [1.1309, 1.0, 3.629973]},
                      "norm": [0.3084942698478699, 0.47490599751472473]},
    "ensemble": {
        "member-0": {"steps": {"1": [0.6903313, 0.5, 0.3860942], "2": [0.666903, 1.0, 0.5003996],
                               "3": [0.4540381, 1.0, 2.884896]},
                     "norm": [0.03957207128405571, 0.44772323966026306]},
        "member-1": {"steps": {"1": [0.692727, 0.1666667, 0.1800573], "2": [0.6717364, 1.0, 0.4118294],
                               "3": [0.5168881, 1.0, 2.046932]},
                     "norm": [0.2417456954717636, 0.48002246022224426]},
        "eval": [1.0, 0.41201377567455255, 0.8090352416038513, 0.19362647831439972]},
}

# one intra-op thread for the whole module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tiny_tokenizer, tmp_path_factory) -> dict:
    """A tiny random Llama (seed 0) with the test tokenizer, and 16 rankings with K = 3 or 2."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from rlhfkit.models import tiny_llama_config

    d = tmp_path_factory.mktemp("recorded")
    tok = AutoTokenizer.from_pretrained(tiny_tokenizer)
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(tok), d_model=32, n_layers=2, n_heads=2, max_seq_len=64))
    model.save_pretrained(d / "lm")
    tok.save_pretrained(d / "lm")
    r = random.Random(3)
    rows = []
    for i in range(16):
        a, k = r.choice(ANIMALS), r.randint(0, 30)
        responses = [f"The {a} was happy.", f"The {a} sat.", f"{k} plus {k} is {k} {k}"]
        rows.append({"prompt": f"Tell me about the {a}, number {k}.",
                     "responses": responses if i % 3 else responses[:2]})  # mixed K: weighting matters
    data = d / "rank.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    return {"lm": d / "lm", "data": data, "dir": d}


def _steps(path: Path) -> dict[int, tuple[float, float, float]]:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x]
    return {m["step"]: (m["train/loss"], m["train/accuracy"], m["train/grad_norm"]) for m in rows if "train/loss" in m}


def _flat(x, key: str = "") -> dict[str, float]:
    """{"a": {"b": [1, 2]}} -> {"a/b/0": 1, "a/b/1": 2}: every recorded number under its own name."""
    if isinstance(x, dict):
        return {k: v for name, y in x.items() for k, v in _flat(y, f"{key}/{name}").items()}
    if isinstance(x, list):
        return {k: v for i, y in enumerate(x) for k, v in _flat(y, f"{key}/{i}").items()}
    return {key: x}


def _check(name: str, got: dict) -> None:
    if os.environ.get("RLHFKIT_RECORD"):
        print(f"\n    {name!r}: {json.dumps(got)},")
        return
    want, have = _flat(RECORDED[name]), _flat(got)
    assert set(have) == set(want), (sorted(have), sorted(want))
    for k in want:
        assert have[k] == pytest.approx(want[k], abs=TOL, rel=TOL), (name, k, have[k], want[k])


def _run(setup, out: str, *sets: str) -> Path:
    path = setup["dir"] / out
    reward.run(load_config(reward.Config, sets=[f"model={setup['lm']}", f"data={setup['data']}", f"out={path}",
                                                *FAST, *sets]))
    return path


@pytest.mark.parametrize("loss", ["pairwise", "plackett_luce"])
def test_recorded_losses(loss, setup):
    out = _run(setup, f"rm-{loss}", f"loss={loss}", "eval_fraction=0")
    norm = json.loads((out / "reward_norm.json").read_text())
    steps = _steps(out / "metrics.jsonl")
    assert sorted(steps) == [1, 2, 3]
    _check(loss, {"steps": {str(s): list(v) for s, v in steps.items()}, "norm": [norm["mean"], norm["std"]]})


def test_resumed_run_gives_the_recorded_losses(setup, capsys):
    """A run stopped right after its step-2 checkpoint (the step-3 one and the saved model
    removed, as a kill would leave it) runs again from step 2 to the recorded numbers."""
    import shutil

    out = _run(setup, "rm-resumed", "loss=pairwise", "eval_fraction=0", "save_every=1")
    shutil.rmtree(out / "checkpoints" / "step-0000003")
    for name in ("model.safetensors", "reward_norm.json"):
        (out / name).unlink()
    capsys.readouterr()
    _run(setup, "rm-resumed", "loss=pairwise", "eval_fraction=0", "save_every=1")
    assert "resuming at step 2" in capsys.readouterr().out
    norm = json.loads((out / "reward_norm.json").read_text())
    steps = _steps(out / "metrics.jsonl")
    _check("pairwise", {"steps": {str(s): list(v) for s, v in steps.items()}, "norm": [norm["mean"], norm["std"]]})


def test_recorded_ensemble_and_held_out(setup):
    """Two members (seeds 0, 1, bootstrap resamples), the default "ranking" loss, 25% held out."""
    out = _run(setup, "rm-ens", "ensemble=2", "eval_fraction=0.25")
    got = {}
    for member in ("member-0", "member-1"):
        norm = json.loads((out / member / "reward_norm.json").read_text())
        got[member] = {"steps": {str(s): list(v) for s, v in _steps(out / member / "metrics.jsonl").items()},
                       "norm": [norm["mean"], norm["std"]]}
    ev = json.loads((out / "eval.json").read_text())["metrics"]
    got["eval"] = [ev[k] for k in ("rm/accuracy", "rm/ece", "rm/margin_mean", "rm/ensemble_std_mean")]
    _check("ensemble", got)
