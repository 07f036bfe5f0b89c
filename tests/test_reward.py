"""Reward models from rankings: every input format, learning, ensembles, normalisation,
plain-transformers loading, evaluation, and errors for people.

The data is learnable by a tiny random model in a few steps: per prompt about an animal,
the best response is a sentence about that animal, the middle one a shorter sentence, the
worst a string of numbers."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from rlhfkit import rankings
from rlhfkit.config import load_config
from rlhfkit.files import UserError
from rlhfkit.rewards.rm import RewardScorer
from rlhfkit.stages import eval_reward, reward

ANIMALS = ["cat", "dog", "pelican", "owl", "frog", "horse"]
FAST = ["batch_size=8", "micro_batch_size=4", "learning_rate=3e-3", "warmup_steps=1", "log_every=1",
        "eval_every=0", "max_seq_len=64", "save_every=0"]

# one intra-op thread for the whole module (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _rankings(n: int, seed: int = 0) -> list[dict]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        a, k = r.choice(ANIMALS), r.randint(0, 30)
        out.append({"prompt": f"Tell me about the {a}, number {k}.",
                    "responses": [f"The {a} was happy.", f"The {a} sat.", f"{k} plus {k} is {k} {k} {k}"]})
    return out


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in records))
    return path


@pytest.fixture(scope="module")
def lm(tiny_lm) -> Path:
    return tiny_lm


def _run(lm: Path, out: Path, data, *sets: str) -> Path:
    reward.run(load_config(reward.Config, sets=[f"model={lm}", f"data={data}", f"out={out}", *FAST, *sets]))
    return out


def _metrics(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


@pytest.fixture(scope="module")
def trained(lm, tmp_path_factory) -> dict:
    """One full-size run shared by several tests: 24 steps, 20% of prompts held out."""
    d = tmp_path_factory.mktemp("trained")
    data = _write(d / "rank.jsonl", _rankings(100))
    out = _run(lm, d / "rm", data, "max_steps=24", "eval_fraction=0.2", "eval_every=12")
    return {"out": out, "data": data}


# ------------------------------------------------------------------------------ formats

def _formats(tmp: Path) -> dict[str, Path]:
    rs = _rankings(12, seed=1)
    (tmp / "run").mkdir()
    from rlhfkit.feedback.store import FeedbackStore

    with FeedbackStore.for_run(tmp / "run") as store:
        tie = {"prompt": "Which is better?", "responses": ["The cat sat.", "The dog sat."], "tie": True}
        store.import_rankings(rs + [tie], annotator="ann")
    return {
        "store": tmp / "run",
        "rlhfkit": _write(tmp / "r.jsonl", rs),
        "hh": _write(tmp / "hh.jsonl", [{"chosen": f"\n\nHuman: {x['prompt']}\n\nAssistant: {x['responses'][0]}",
                                         "rejected": f"\n\nHuman: {x['prompt']}\n\nAssistant: {x['responses'][2]}"}
                                        for x in rs]),
        "trl": _write(tmp / "trl.jsonl", [{"prompt": x["prompt"], "chosen": x["responses"][0],
                                           "rejected": x["responses"][1]} for x in rs]),
        "oasst": _write(tmp / "oasst.jsonl", [{"message_tree_id": f"t{i}", "prompt": {
            "message_id": f"m{i}", "role": "prompter", "text": x["prompt"],
            "replies": [{"message_id": f"m{i}-{j}", "role": "assistant", "text": t, "rank": j}
                        for j, t in reversed(list(enumerate(x["responses"])))]}} for i, x in enumerate(rs)]),
    }


@pytest.mark.parametrize("fmt", ["store", "rlhfkit", "hh", "trl", "oasst"])
def test_trains_from_each_input_format(fmt, lm, tmp_path, capsys):
    data = _formats(tmp_path)[fmt]
    out = _run(lm, tmp_path / "rm", data, "max_steps=2", "eval_fraction=0")
    printed = capsys.readouterr().out
    assert "12 training rankings" in printed  # the store's tie (a 13th ranking) carries no order: skipped
    assert (out / "model.safetensors").is_file() and (out / "reward_norm.json").is_file()
    losses = [m["train/loss"] for m in _metrics(out / "metrics.jsonl") if "train/loss" in m]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    mean, std = RewardScorer.load(out).score(["Tell me about the cat."], ["The cat was happy."])
    assert mean.shape == (1,) and float(std[0]) == 0.0  # one model: no spread


# ------------------------------------------------------------------------------ learning

def test_learns_changes_parameters_and_evaluates(trained, lm):
    from safetensors.torch import load_file

    out = trained["out"]
    logs = _metrics(out / "metrics.jsonl")
    losses = [m["train/loss"] for m in logs if "train/loss" in m]
    assert len(losses) == 24
    # ln 2 ~= 0.69 is the ranking loss of a scorer that cannot tell responses apart
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    base = load_file(lm / "model.safetensors")
    now = load_file(out / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], now[q])
    final = logs[-1]
    assert final["step"] == 24 and final["rm/accuracy"] >= 0.9, final
    assert {"rm/accuracy_pos_1", "rm/accuracy_pos_2", "rm/ece", "rm/top1_accuracy", "rm/score_std"} <= set(final)
    assert any("rm/accuracy" in m for m in logs[:-1])  # the eval_every=12 evaluation during training
    ev = json.loads((out / "eval.json").read_text())
    held = rankings.split_by_prompt(rankings.load_rankings(str(trained["data"])), 0.2, 0)[1]
    assert ev["metrics"]["rm/rankings"] == len(held) > 10 and ev["calibration_bins"]  # 20% of the prompts
    assert (out / "calibration.png").read_bytes()[:4] == b"\x89PNG"


def test_normalised_on_training_responses_and_same_in_plain_transformers(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = trained["out"]
    usable = rankings.usable(rankings.load_rankings(str(trained["data"])))
    train, _ = rankings.split_by_prompt(usable, 0.2, 0)  # the stage's split: same fraction, same seed
    pairs = sorted({(r["prompt"], t) for r in train for t in r["responses"]})
    prompts, responses = [p for p, _ in pairs], [t for _, t in pairs]
    scorer = RewardScorer.load(out)
    mean, std = scorer.score(prompts, responses, batch_size=7)
    assert abs(float(mean.mean())) < 1e-4 and abs(float(mean.std(correction=0)) - 1) < 1e-4
    assert torch.equal(std, torch.zeros(len(pairs)))

    # plain transformers, one sequence at a time, no rlhfkit code: the scale is in the head;
    # the head has no bias, so the shift is reward_norm.json's offset (differences agree exactly)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    offset = json.loads((out / "reward_norm.json").read_text())["offset"]
    plain = []
    for p, t in zip(prompts[:12], responses[:12]):
        text = tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": t}],
                                       tokenize=False)
        with torch.no_grad():
            plain.append(float(model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]))
    torch.testing.assert_close(torch.tensor(plain) + offset, mean[:12], atol=1e-5, rtol=0)


def test_scorer_is_batched_deterministic_and_takes_strings_or_messages(trained):
    scorer = RewardScorer.load(trained["out"])
    prompts = [f"Tell me about the {a}." for a in ANIMALS] * 2
    responses = [f"The {a} sat by the river and was very happy indeed." if i % 3 else "1"
                 for i, a in enumerate(ANIMALS * 2)]
    one, _ = scorer.score(prompts, responses, batch_size=1)
    many, _ = scorer.score(prompts, responses, batch_size=5)  # sorted by length inside; order restored
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)
    msgs, _ = scorer.score([[{"role": "user", "content": p}] for p in prompts], responses)
    torch.testing.assert_close(msgs, many, atol=1e-5, rtol=0)
    assert torch.equal(scorer.reward(prompts, responses, k=2.0), scorer.score(prompts, responses)[0])  # std 0


def test_ensemble_with_lora_loads_with_one_path(lm, tmp_path):
    from transformers import AutoModelForSequenceClassification

    data = _write(tmp_path / "rank.jsonl", _rankings(40))
    samples = [{"prompt": f"Tell me about the {a}.", "response": f"The {a} {w}."}
               for a in ANIMALS for w in ("ran", "was happy", "sat by the river")]
    norm = _write(tmp_path / "policy.jsonl", samples)
    out = _run(lm, tmp_path / "ens", data, "ensemble=2", "max_steps=4", "lora=true", "lora_r=4",
               f"norm_data={norm}", "eval_fraction=0.2")
    assert json.loads((out / "ensemble.json").read_text())["members"] == ["member-0", "member-1"]
    scorer = RewardScorer.load(out)
    assert len(scorer) == 2
    prompts, responses = [s["prompt"] for s in samples], [s["response"] for s in samples]
    each = scorer.member_scores(prompts, responses)  # (2, 18): each member normalised on norm_data
    torch.testing.assert_close(each.mean(1), torch.zeros(2), atol=1e-4, rtol=0)
    torch.testing.assert_close(each.std(1, correction=0), torch.ones(2), atol=1e-4, rtol=0)
    mean, std = scorer.score(prompts, responses)
    assert bool((std > 0).all())  # different seeds and bootstrap resamples disagree
    torch.testing.assert_close(std, (each[0] - each[1]).abs() / math.sqrt(2))  # unbiased std of 2 values
    # the uncertainty-penalised reward RL uses (rm_uncertainty_k): mean - k * std, with std > 0 here
    torch.testing.assert_close(scorer.reward(prompts, responses, k=1.5), each.mean(0) - 1.5 * std)
    assert not torch.allclose(scorer.reward(prompts, responses, k=1.5), mean)
    # LoRA merged on save: each member is a plain model with the trained score head
    member = AutoModelForSequenceClassification.from_pretrained(out / "member-0")
    assert not any("lora" in n for n, _ in member.named_parameters())
    ev = json.loads((out / "eval.json").read_text())["metrics"]
    assert ev["rm/ensemble_std_mean"] > 0


# ------------------------------------------------------------------------------ evaluation

def test_eval_reward_prints_accuracy(trained, tmp_path, capsys):
    data = _write(tmp_path / "heldout.jsonl", _rankings(10, seed=7))
    argv = [str(trained["out"]), "--data", str(data), "--out", str(tmp_path / "ev")]
    assert eval_reward.cli("eval-reward", argv) == 0
    line = capsys.readouterr().out
    assert "accuracy" in line and "30 pairs (10 rankings)" in line  # 10 rankings of K=3: 3 pairs each
    m = _metrics(tmp_path / "ev" / "metrics.jsonl")[0]
    assert m["rm/pairs"] == 30 and (tmp_path / "ev" / "calibration.png").is_file()


def test_eval_reward_writes_beside_the_model_not_into_it(trained, tmp_path, capsys):
    import shutil

    model = tmp_path / "rm"
    shutil.copytree(trained["out"], model)
    before = sorted(p.name for p in model.iterdir())
    data = _write(tmp_path / "heldout.jsonl", _rankings(4, seed=8))
    assert eval_reward.cli("eval-reward", [str(model), "--data", str(data)]) == 0
    assert sorted(p.name for p in model.iterdir()) == before  # the model dir holds only the model
    assert (tmp_path / "rm-eval-heldout" / "eval.json").is_file()


def test_ranking_metrics_by_hand():
    scores = [torch.tensor([2.0, 1.0, 3.0]), torch.tensor([0.0, -1.0])]
    m, _ = eval_reward.ranking_metrics(scores)
    # pairs: (2>1 yes) (2>3 no) (1>3 no) | (0>-1 yes) -> 2/4
    assert m["rm/accuracy"] == 0.5
    assert m["rm/accuracy_pos_1"] == 1.0  # best vs 2nd: 2>1 and 0>-1
    assert m["rm/accuracy_pos_2"] == 0.0  # 2nd vs 3rd: 1>3 no
    assert m["rm/top1_accuracy"] == 0.5  # 2 is not above 3; 0 is above -1


def test_calibration_error_by_hand():
    # diffs 0 -> p 0.5 twice (once as 0.5 with outcome 1, once as 0.5 with outcome 0): bin [0.5, 0.6)
    # holds p = 0.5 with outcomes {1, 0}: |0.5 - 0.5| = 0 -> ECE 0
    ece, bins = eval_reward.calibration(torch.zeros(3))
    assert ece == 0.0 and bins == [{"lo": 0.5, "hi": 0.6, "n": 6, "p_mean": 0.5, "frac": 0.5}]
    # a very confident, always right model: p ~= 1 with outcome 1 and p ~= 0 with outcome 0 -> ECE ~ 0
    assert eval_reward.calibration(torch.full((4,), 20.0))[0] < 1e-8
    # diff ln 3 -> p = 0.75 (outcome 1) and 0.25 (outcome 0): each bin is off by 0.25 -> ECE 0.25
    assert abs(eval_reward.calibration(torch.tensor([math.log(3)]))[0] - 0.25) < 1e-6


def test_split_and_bootstrap_by_prompt():
    rs = [{"messages": [{"role": "user", "content": f"p{i % 5}"}], "responses": ["a", "b"]} for i in range(20)]
    train, held = rankings.split_by_prompt(rs, 0.2, seed=0)
    assert len(held) == 4 and len({rankings.prompt_key(r) for r in held}) == 1  # 1 of 5 prompts, its 4 rankings
    assert not {rankings.prompt_key(r) for r in held} & {rankings.prompt_key(r) for r in train}
    groups = [[0, 1], [2], [3, 4, 5]]
    picks = rankings.bootstrap(groups, seed=3)
    assert picks == rankings.bootstrap(groups, seed=3)  # seeded
    assert all(g in groups for g in _regroup(picks, groups)) and len(_regroup(picks, groups)) == 3


def _regroup(picks: list[int], groups: list[list[int]]) -> list[list[int]]:
    out, i = [], 0
    while i < len(picks):
        g = next(g for g in groups if g[0] == picks[i])
        out.append(picks[i:i + len(g)])
        i += len(g)
    return out


# ------------------------------------------------------------------------------ errors

@pytest.fixture
def cli_main(monkeypatch):
    from rlhfkit import cli

    monkeypatch.setitem(cli.COMMANDS, "reward", ("rlhfkit.stages.reward", "train a reward model"))
    monkeypatch.setitem(cli.COMMANDS, "eval-reward", ("rlhfkit.stages.eval_reward", "evaluate a reward model"))
    return cli.main


def test_bad_data_file_is_a_one_line_error(cli_main, lm, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rankings(1)[0]) + "\n{not json\n")
    assert cli_main(["reward", "--set", f"model={lm}", "--set", f"data={bad}", "--set", f"out={tmp_path / 'rm'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:2: malformed JSON" in err
    assert not (tmp_path / "rm" / "model.safetensors").exists()
    good = _write(tmp_path / "good.jsonl", _rankings(2))
    assert cli_main(["eval-reward", str(lm), "--data", str(good)]) == 2  # a causal LM is not a reward model
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(UserError, match="unknown loss 'hinge'"):
        reward.run(load_config(reward.Config, sets=[f"model={lm}", f"data={bad}", "loss=hinge"]))


@pytest.mark.parametrize("loss", ["pairwise", "plackett_luce"])
def test_micro_batching_does_not_change_the_update(loss, lm, tmp_path):
    """One step over 4 rankings with K = 3, 2, 3, 2: the same weights whether the forward passes
    take 1 ranking, 4, or rankings grouped by length under micro_batch_tokens (0; 150 tokens:
    a few passes) (micro-batch losses weigh by pairs for pairwise, by rankings otherwise)."""
    from safetensors.torch import load_file

    rs = _rankings(4, seed=5)
    for r in rs[1::2]:
        r["responses"] = r["responses"][:2]
    data = _write(tmp_path / "mixed.jsonl", rs)
    runs = [load_file(_run(lm, tmp_path / f"rm{mb}", data, "max_steps=1", "batch_size=4", f"micro_batch_size={mb}",
                           f"loss={loss}", "eval_fraction=0", "micro_batch_tokens=150") / "model.safetensors")
            for mb in (1, 4, 0)]
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(runs[0][name], load_file(lm / "model.safetensors")[name])
    torch.testing.assert_close(runs[0][name], runs[1][name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(runs[0][name], runs[2][name], atol=1e-6, rtol=1e-5)


def test_a_reward_model_from_elsewhere_scores_as_it_is(lm, tmp_path):
    """A TRL/OpenRLHF-style RM dir (a one-label ...ForSequenceClassification, no reward_norm.json)."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    config = AutoConfig.from_pretrained(lm)
    tok = AutoTokenizer.from_pretrained(lm)
    config.num_labels, config.pad_token_id = 1, tok.pad_token_id
    torch.manual_seed(1)
    theirs = LlamaForSequenceClassification(config).eval()
    theirs.save_pretrained(tmp_path / "theirs")
    tok.save_pretrained(tmp_path / "theirs")
    prompts, responses = ["Tell me about the owl.", "Tell me about the frog."], ["The owl sat.", "1 2 3"]
    mean, std = RewardScorer.load(tmp_path / "theirs").score(prompts, responses)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                     tokenize=False) for p, r in zip(prompts, responses)]
    batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")  # right padding
    with torch.no_grad():
        torch.testing.assert_close(mean, theirs(**batch).logits[:, 0], atol=1e-5, rtol=0)
    assert torch.equal(std, torch.zeros(2))
