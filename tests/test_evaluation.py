"""`rlhfkit eval` (rlhfkit.evaluation): win rates, bootstrap, diversity, KL, the arena verdict, the command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhfkit import evaluation as E
from rlhfkit.cli import main


def test_win_rate_by_hand_ties_count_half():
    scores = [[1.0, 0.0, 2.0], [0.5, 0.5, 0.0]]
    base = [[0.0, 0.0, 3.0], [0.5, 1.0, 1.0]]
    # prompt 0: win, tie, loss -> 1.5 / 3; prompt 1: tie, loss, loss -> 0.5 / 3
    assert E.pair_wins(scores, base) == pytest.approx([0.5, 1 / 6])
    # = (1 + 0.5 + 0 + 0.5 + 0 + 0) / 6 pairs
    assert E.win_rate(scores, base) == pytest.approx(2 / 6)
    assert E.win_rate(base, base) == 0.5  # against itself: all ties
    assert E.win_rate(base, scores) == pytest.approx(1 - 2 / 6)  # the other side of every pair


def test_bootstrap_interval_holds_the_estimate_and_is_seeded():
    per_prompt = [0.0, 0.25, 0.5, 1.0, 0.75, 0.5, 1.0, 0.0, 0.25, 0.5]
    mean = sum(per_prompt) / len(per_prompt)  # 0.475
    lo, hi = E.bootstrap_ci(per_prompt, 1000, seed=0)
    assert lo < mean < hi and 0.0 <= lo and hi <= 1.0
    # standard error = sd / sqrt(10) ~ 0.11: the 95% interval is about +-0.2 wide
    assert 0.25 < hi - lo < 0.6
    assert E.bootstrap_ci(per_prompt, 1000, seed=0) == (lo, hi)
    assert E.bootstrap_ci(per_prompt, 1000, seed=1) != (lo, hi)
    assert E.bootstrap_ci([0.5] * 7, 100, seed=3) == (0.5, 0.5)  # no spread, no interval


def test_distinct_n_by_hand():
    # unigrams a b a | a c: 5, distinct {a, b, c}: 3; bigrams (a b) (b a) | (a c): 3, all distinct
    assert E.distinct_n(["a b a", "a c"], 1) == pytest.approx(3 / 5)
    assert E.distinct_n(["a b a", "a c"], 2) == pytest.approx(1.0)
    # a loop: 4 unigrams, 1 distinct; 2 bigrams (the the) (the the), 1 distinct
    assert E.distinct_n(["the  the\tthe", "the"], 1) == pytest.approx(1 / 4)
    assert E.distinct_n(["the the the", "the"], 2) == pytest.approx(1 / 2)
    assert E.distinct_n(["one", "two"], 2) == 0.0  # no bigram at all


def test_self_bleu_by_hand():
    # "a b c d e" against "a b c d f": n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no
    # brevity penalty): BLEU-4 = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4) = 0.2 ** 0.25; symmetric
    near = ["a b c d e", "a b c d f"]
    assert E.self_bleu([near]) == pytest.approx(0.2 ** 0.25)
    assert E.self_bleu([["a b c d", "a b c d", "a b c d"]]) == pytest.approx(1.0)  # no diversity
    # no word in common: 0; averaged over all four samples with the first group
    assert E.self_bleu([near, ["x y z w", "p q r s"]]) == pytest.approx(0.2 ** 0.25 / 2)
    assert E.self_bleu([["only one sample"]]) is None


def test_distinct_per_prompt():
    assert E.distinct_per_prompt([["a", "a", "b"], ["c", "c", "c"]]) == pytest.approx(1.5)


def _store_with_votes(path: Path, a: str, b: str) -> str:
    from rlhfkit.feedback.store import FeedbackStore

    url = f"sqlite:///{path}"
    with FeedbackStore(url) as store:
        judge = store.annotator("person")["id"]
        # b wins twice, one tie: b's share of the votes = (1 + 1 + 0.5) / 3
        for i, (winner, tie) in enumerate([(b, False), (b, False), (a, True)]):
            pid = store.add_prompt(f"prompt {i}")
            ra, rb = store.add_response(pid, "x", model=a), store.add_response(pid, "y", model=b)
            task = store.create_task(pid, [ra, rb], kind="arena")
            store.submit_ranking(task, judge, [rb, ra] if winner == b else [ra, rb], source="arena", tie=tie)
    return url


def test_people_verdict_from_arena_votes(tmp_path):
    from rlhfkit.feedback.store import FeedbackStore

    a, b = str(tmp_path / "sft"), str(tmp_path / "rl")
    with FeedbackStore(_store_with_votes(tmp_path / "f.db", a, b)) as store:
        v = E.people_verdict(store.rankings(), [a, b, "elsewhere"], baseline=a)
    assert sorted(v) == sorted([a, b])  # a checkpoint nobody rated gets no verdict
    assert v[b]["people_win_rate"] == pytest.approx(2.5 / 3) and v[b]["people_games"] == 3
    assert "people_win_rate" not in v[a]  # the baseline has no head-to-head with itself
    assert v[b]["arena_rating"] > 1000 > v[a]["arena_rating"] and v[a]["arena_games"] == 3


@pytest.fixture(scope="module")
def two_models(tiny_tokenizer, tmp_path_factory) -> list[str]:
    """Two tiny random models sharing the test tokenizer (different init seeds)."""
    import torch
    from transformers import LlamaForCausalLM

    from rlhfkit.models import load_tokenizer, save_model, tiny_llama_config

    tok = load_tokenizer(str(tiny_tokenizer))
    d = tmp_path_factory.mktemp("models")
    out = []
    for i in range(2):
        torch.manual_seed(i)
        cfg = tiny_llama_config(len(tok), d_model=32, n_layers=1, n_heads=2, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)
        save_model(LlamaForCausalLM(cfg), tok, d / f"m{i}")
        out.append(str(d / f"m{i}"))
    return out


def test_sequence_logprobs_reproduce_the_sampler(two_models):
    """The KL's forward scores a model's own samples as the sampler did (temperature 0.7)."""
    import torch

    from rlhfkit.generation import generate
    from rlhfkit.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(two_models[0]), load_causal_lm(two_models[0]).eval()
    prompts = [tok("What is 3 + 4?")["input_ids"], tok("Hi")["input_ids"]]
    r = generate(model, prompts, max_new_tokens=6, temperature=0.7, eos_token_ids=[tok.eos_token_id],
                 pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(0))
    responses = [t[m].tolist() for t, m in zip(r.tokens, r.mask)]
    got = E.sequence_logprobs(model, prompts, responses, 0.7)
    assert got == pytest.approx((r.logprobs * r.mask).sum(1).tolist(), abs=1e-4)


def _prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps({"prompt": f"What is {x} + {y}?", "answer": str(x + y)}) + "\n"
                         for x, y in [(3, 4), (10, 2), (7, 7), (1, 20)]))
    return p


def _eval(models, prompts, out, *extra) -> int:
    sets = [f"models={','.join(models)}", f"baseline={models[0]}", f"prompts={prompts}", "judge=math",
            "samples_per_prompt=3", "max_new_tokens=8", "temperature=1.0", "seed=5", "batch_size=5",
            "bootstrap=200", f"out={out}", *extra]
    return main(["eval", *[x for s in sets for x in ("--set", s)]])


def test_eval_end_to_end_writes_the_contract_and_is_seeded(two_models, tmp_path, capsys):
    prompts = _prompts(tmp_path)
    db = _store_with_votes(tmp_path / "arena.db", *two_models)
    assert _eval(two_models, prompts, tmp_path / "a", f"db={db}") == 0
    rows = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 4 * 3  # models x prompts x samples
    assert all({"model", "prompt", "sample", "response"} <= set(r) for r in rows)
    for m in two_models:
        mine = [r for r in rows if r["model"] == m]
        assert sorted((r["prompt"], r["sample"]) for r in mine) == sorted(
            (f"What is {x} + {y}?", i) for x, y in [(3, 4), (10, 2), (7, 7), (1, 20)] for i in range(3))
    report = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert list(report) == two_models
    base, other = report[two_models[0]], report[two_models[1]]
    for met in (base, other):
        for k in ("win_rate", "win_rate_ci", "judge_mean", "accuracy", "length_mean", "kl_to_baseline",
                  "distinct_1", "distinct_2", "self_bleu", "distinct_answers", "distinct_final_answers"):
            assert k in met, k
        assert 1 <= met["length_mean"] <= 8 and 0 <= met["distinct_2"] <= 1 and 1 <= met["distinct_answers"] <= 3
        assert met["win_rate_ci"][0] <= met["win_rate"] <= met["win_rate_ci"][1]
    assert base["win_rate"] == 0.5 and base["win_rate_ci"] == [0.5, 0.5] and base["kl_to_baseline"] == 0.0
    # two different random models: their samples differ, so the KL estimate is well away from 0
    assert other["kl_to_baseline"] > 0.1
    # the judge_mean is the accuracy for `math`; the win rate agrees with the samples' scores
    assert other["judge_mean"] == pytest.approx(other["accuracy"])
    scores = {(r["model"], r["prompt"], r["sample"]): r["score"] for r in rows}
    pairs = [(scores[(two_models[1], p, i)], scores[(two_models[0], p, i)]) for _, p, i in scores if _ == two_models[0]]
    assert other["win_rate"] == pytest.approx(sum(1 if a > b else 0.5 if a == b else 0 for a, b in pairs) / len(pairs))
    assert other["people_win_rate"] == pytest.approx(2.5 / 3) and other["people_games"] == 3
    assert "win_rate" in capsys.readouterr().out  # the table
    # same config, same bytes
    assert _eval(two_models, prompts, tmp_path / "b", f"db={db}") == 0
    assert (tmp_path / "b" / "samples.jsonl").read_bytes() == (tmp_path / "a" / "samples.jsonl").read_bytes()
    # a module:function judge on the same samples: no accuracy, scores in the gold's [0, 1]
    assert _eval(two_models, prompts, tmp_path / "c", "judge=rlhfkit.rewards.gold:joke") == 0
    gold = json.loads((tmp_path / "c" / "eval.json").read_text())[two_models[1]]
    assert "accuracy" not in gold and 0 <= gold["judge_mean"] <= 1 and "people_win_rate" not in gold


@pytest.mark.parametrize("extra, message", [
    (["baseline=nowhere"], "is not one of models"),
    (["judge=no_such_module:fn"], "cannot import"),
    (["judge=banana"], "expected one of"),
    (["samples_per_prompt=0"], "must be >= 1"),
])
def test_eval_refuses_bad_input_in_one_line(two_models, tmp_path, capsys, extra, message):
    assert _eval(two_models, _prompts(tmp_path), tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_eval_refuses_missing_model_and_math_without_answers(two_models, tmp_path, capsys):
    assert _eval([two_models[0], str(tmp_path / "gone")], _prompts(tmp_path), tmp_path / "out") == 2
    assert "gone not found" in capsys.readouterr().err
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "Tell me a joke."}) + "\n")
    assert _eval(two_models, plain, tmp_path / "out") == 2
    assert "has no 'answer' field" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_eval_takes_home_relative_model_paths(two_models, tmp_path, monkeypatch):
    # a recipe names the pulled model as ~/.cache/rlhfkit/models/...: no shell expands it
    monkeypatch.setenv("HOME", str(Path(two_models[0]).parent))
    models = ["~/m0", "~/m1"]
    assert _eval(models, _prompts(tmp_path), tmp_path / "out") == 0
    assert list(json.loads((tmp_path / "out" / "eval.json").read_text())) == models  # named as given
