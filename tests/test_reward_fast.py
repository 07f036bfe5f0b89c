"""The reward stage's fast paths against the plain computation: the packed forward (a ranking's
common tokens once, its K rows' own tokens after them, the micro-batch's rankings in one unpadded
sequence) gives the plain forward's scores, loss and gradients, with and without LoRA; the
micro-batch plans cover each ranking once within the token budget."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from conftest import metrics, rlhfkit

from rlhfkit.losses import RM_LOSSES
from rlhfkit.stages import reward

pytestmark = pytest.mark.usefixtures("one_thread")


def _rankings(vocab: int, pad: int, seed: int = 0) -> list[list[list[int]]]:
    """Rankings of token ids: prompts of 3..20 tokens, K = 2 or 3 responses of 1..9 tokens; one
    ranking whose responses start alike, one where a response is a prefix of another."""
    r = random.Random(seed)
    tok = [t for t in range(vocab) if t != pad]
    out = []
    for i in range(6):
        prompt = r.choices(tok, k=r.randint(3, 20))
        out.append([prompt + r.choices(tok, k=r.randint(1, 9)) for _ in range(2 + i % 2)])
    out.append([out[0][0][:4] + [tok[5], tok[6]] + x for x in ([tok[7]], [tok[8], tok[9]])])  # common start
    out.append([out[1][0], out[1][0] + [tok[3]]])  # the first response is a prefix of the second
    return out


def _loss_and_grads(scorer, inputs: dict, lengths: list[int], loss: str):
    scorer.zero_grad(set_to_none=True)
    scores = scorer(**inputs)
    value, _ = RM_LOSSES[loss](scores, lengths)
    value.backward()
    grads = {n: p.grad.clone() for n, p in scorer.named_parameters() if p.grad is not None}
    return scores.detach(), value.detach(), grads


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("loss", ["pairwise", "plackett_luce"])
def test_packed_forward_equals_the_plain_forward(tiny_lm, loss, lora):
    from rlhfkit.models import add_lora
    from rlhfkit.rewards.rm import collate_right

    pad = 3
    torch.manual_seed(0)
    model = reward.build_model(str(tiny_lm), pad)
    if lora:
        model = add_lora(model, 4, 8, 0.0, task_type="SEQ_CLS", modules_to_save=["score"])
    model.train()
    scorer = reward.RankingScorer(model)
    assert scorer.packed
    rankings = _rankings(model.config.vocab_size, pad)
    rankings.append([[7, 1, 2], [8, 1, 2, 9]])  # truncated at its start: shares nothing, still packs
    lens = reward.shared_prefix_lengths(rankings)
    assert lens[-1] == 0 and lens[-2] == len(rankings[1][0]) - 1  # the prefix response keeps its last token
    fast = reward.ranking_inputs(scorer, rankings, pad)
    assert fast["packed_ids"].shape == (1, sum(reward.packed_tokens(r, p) for r, p in zip(rankings, lens)))
    ids, mask = collate_right([x for r in rankings for x in r], pad)
    lengths = [len(r) for r in rankings]
    s_fast, l_fast, g_fast = _loss_and_grads(scorer, fast, lengths, loss)
    s_plain, l_plain, g_plain = _loss_and_grads(scorer, {"input_ids": ids, "attention_mask": mask}, lengths, loss)
    torch.testing.assert_close(s_fast, s_plain, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(l_fast, l_plain, atol=1e-6, rtol=1e-6)
    assert set(g_fast) == set(g_plain) and len(g_plain) > 2  # every trained tensor gets a gradient on both paths
    assert any("lora" in n for n in g_plain) == lora and any("score" in n for n in g_plain)
    for n in g_plain:
        torch.testing.assert_close(g_fast[n], g_plain[n], atol=1e-6, rtol=1e-5, msg=n)
    assert max(float(g.abs().max()) for g in g_plain.values()) > 1e-3  # the comparison is not of zeros


def test_shared_prefix_lengths_by_hand():
    assert reward.shared_prefix_lengths([[[1, 2, 3, 4], [1, 2, 5]]]) == [2]
    assert reward.shared_prefix_lengths([[[1, 2], [1, 2, 3]]]) == [1]  # the shorter keeps one token
    assert reward.shared_prefix_lengths([[[1, 2, 3], [1, 2, 4], [1, 5, 6]]]) == [1]
    assert reward.shared_prefix_lengths([[[7, 1], [8, 1]]]) == [0]


def test_collate_packed_by_hand():
    """[[1, 2, 3], [1, 2, 4, 5]] share [1, 2]; [[6, 7], [6, 8]] share [6]: the sequence is
    1 2 | 3 | 4 5 | 6 | 7 | 8 at slots 0..7."""
    got = reward.collate_packed([[[1, 2, 3], [1, 2, 4, 5]], [[6, 7], [6, 8]]], [2, 1])
    assert got["packed_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    assert got["packed_pos"].tolist() == [[0, 1, 2, 2, 3, 0, 1, 1]]  # each row counts from its own start
    assert got["last"].tolist() == [2, 4, 6, 7]
    assert [(q0, q1, k.tolist()) for q0, q1, k, _ in got["segments"]] == [
        (0, 2, [0, 1]), (2, 3, [0, 1, 2]), (3, 5, [0, 1, 3, 4]), (5, 6, [5]), (6, 7, [5, 6]), (7, 8, [5, 7])]
    assert got["segments"][2][3].tolist() == [[True, True, True, False], [True, True, True, True]]
    see = got["see"].int().tolist()  # row q: the slots it attends to
    assert see[4] == [1, 1, 0, 1, 1, 0, 0, 0]  # token 5 sees the prefix 1 2 and its row's 4, not row 1's 3
    assert see[7] == [0, 0, 0, 0, 0, 1, 0, 1]
    assert see[1] == [1, 1, 0, 0, 0, 0, 0, 0]


def test_a_model_without_the_packed_forward_takes_plain_rows(tiny_lm):
    """An architecture outside PACKED runs the plain padded rows, in ranking order."""
    model = reward.build_model(str(tiny_lm), 3)
    scorer = reward.RankingScorer(model)
    scorer.packed = False
    inputs = reward.ranking_inputs(scorer, [[[5, 6, 7], [5, 6]], [[7, 1], [8, 1, 2]]], 3)
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [5, 6, 3], [7, 1, 3], [8, 1, 2]]


def test_packed_micro_batches_are_the_fewest_within_the_budget():
    """Packed costs: pair(p, n) is p + 2 x n tokens. Rankings of 110, 20, 110, 20 and 60 tokens
    in passes of at most 130: first-fit decreasing puts 110 + 20 twice and 60 alone (3 passes,
    the fewest: 320 tokens need at least 3)."""
    def pair(p, first, n=5):
        return [[first] * p + [1] * n, [first] * p + [2] * n]

    rankings = [pair(100, 11), pair(10, 12), pair(100, 13), pair(10, 14), pair(50, 15)]
    assert [reward.packed_tokens(r, p) for r, p in zip(rankings, reward.shared_prefix_lengths(rankings))] == \
        [110, 20, 110, 20, 60]
    assert reward.plan_micro_batches(rankings, 130) == [[0, 1], [2, 3], [4]]
    assert reward.plan_micro_batches(rankings, 10**6) == [[0, 1, 2, 3, 4]]
    assert reward.plan_micro_batches(rankings, 50) == [[0], [2], [4], [1, 3]]  # over the budget: alone


def test_plain_micro_batches_group_by_length_within_the_budget():
    """The plain forward pays rows x the longest row: two short pairs (15 tokens a row) and two
    long ones (105), a pass costing 64 tokens of overhead: all four in one pass cost 8 x 105 + 64
    = 904 padded tokens, each alone 4 x 64 + 2 x 2 x 15 + 2 x 2 x 105 = 736, short and long apart
    (4 x 15 + 64) + (4 x 105 + 64) = 608: the plan."""
    def pair(p, first):
        return [[first] * p + [1, 2, 3, 4, 5], [first] * p + [6, 7, 8, 9, 10]]

    rankings = [pair(100, 11), pair(10, 12), pair(100, 13), pair(10, 14)]
    assert reward.plan_micro_batches(rankings, 10**6, packed=False, overhead=64) == [[1, 3], [0, 2]]
    # a budget of 100 padded tokens: the short pairs fit (60), the long ones (210 each) run alone
    assert reward.plan_micro_batches(rankings, 100, packed=False, overhead=64) == [[1, 3], [0], [2]]
    r = random.Random(1)
    many = [[[9] * r.randint(1, 60) + [r.randint(0, 8)] * r.randint(1, 20) for _ in range(r.choice([2, 3]))]
            for _ in range(40)]
    for packed in (True, False):
        plan = reward.plan_micro_batches(many, 300, packed=packed)
        assert sorted(i for g in plan for i in g) == list(range(40))  # every ranking once
        assert all(len(g) == 1 or _cost(many, g, packed) <= 300 for g in plan)
        assert 1 < len(plan) < 40


def _cost(rankings, group, packed) -> int:
    """A pass's tokens: packed, the rankings' real tokens with prefixes once; plain, rows x the longest row."""
    part = [rankings[i] for i in group]
    if packed:
        return sum(reward.packed_tokens(r, p) for r, p in zip(part, reward.shared_prefix_lengths(part)))
    return sum(len(r) for r in part) * max(len(x) for r in part for x in r)


def test_two_processes_match_one_with_planned_micro_batches(tiny_lm, tmp_path):
    """torchrun x 2 with micro_batch_size = 0: each rank plans its own passes (their counts may
    differ; each rank still syncs once, on its last backward), and the run is the 1-process one."""
    r = random.Random(0)
    rows = [{"prompt": f"Tell me about the {a}, number {k}." + " Please." * r.randint(0, 6),
             "responses": [f"The {a} was happy.", f"The {a} sat.", f"{k} plus {k}"][:r.choice([2, 3])]}
            for a, k in ((r.choice(["cat", "owl", "frog"]), r.randint(0, 30)) for _ in range(16))]
    data = tmp_path / "rank.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in rows))
    args = lambda out: ["reward", *[x for s in [f"model={tiny_lm}", f"data={data}", f"out={out}", "batch_size=8",
                                                "micro_batch_size=0", "micro_batch_tokens=150", "max_steps=2",
                                                "learning_rate=3e-3", "warmup_steps=1", "log_every=1", "eval_every=0",
                                                "eval_fraction=0", "save_every=0", "loss=pairwise"]
                                    for x in ("--set", s)]]
    rlhfkit(*args(tmp_path / "one"))
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "rlhfkit", *args(tmp_path / "two")], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    one, two = metrics(tmp_path / "one" / "metrics.jsonl"), metrics(tmp_path / "two" / "metrics.jsonl")
    assert [m["step"] for m in two if "train/loss" in m] == [1, 2]
    for a, b in zip(one, two):
        for k in ("train/loss", "train/accuracy", "train/grad_norm"):
            assert abs(a[k] - b[k]) < 1e-5, (a["step"], k, a[k], b[k])


def test_two_threads_packed_scoring_at_once_each_get_their_own_scores(tiny_lm):
    """The segments a packed forward attends with are per thread: two reward models scoring
    packed rankings at the same time in two threads each get their own plain-forward scores."""
    import threading

    from rlhfkit.rewards.rm import collate_right

    pad, scorers, expected, got = 3, [], [], [None, None]
    for seed in (0, 1):
        torch.manual_seed(seed)
        scorers.append(reward.RankingScorer(reward.build_model(str(tiny_lm), pad).eval()))
    rankings = [_rankings(scorers[0].model.config.vocab_size, pad, seed) for seed in (0, 1)]
    with torch.no_grad():
        for scorer, rk in zip(scorers, rankings):
            ids, mask = collate_right([x for r in rk for x in r], pad)
            expected.append(scorer(input_ids=ids, attention_mask=mask))
    start = threading.Barrier(2)

    def run(i):
        inputs = reward.ranking_inputs(scorers[i], rankings[i], pad)
        start.wait()
        with torch.no_grad():
            got[i] = torch.stack([scorers[i](**inputs) for _ in range(20)])

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        torch.testing.assert_close(got[i], expected[i].expand_as(got[i]), atol=1e-6, rtol=1e-5)
