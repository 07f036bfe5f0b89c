"""The reward stage's fast paths against the plain computation: the shared-prefix forward (a
ranking's common tokens once, a KV cache shared by its K rows) gives the plain forward's scores,
loss and gradients, with and without LoRA; micro-batches grouped by length cover each ranking once
within the token budget."""

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
def test_shared_prefix_forward_equals_the_plain_forward(tiny_lm, loss, lora):
    from rlhfkit.models import add_lora
    from rlhfkit.rewards.rm import collate_right

    pad = 3
    torch.manual_seed(0)
    model = reward.build_model(str(tiny_lm), pad)
    if lora:
        model = add_lora(model, 4, 8, 0.0, task_type="SEQ_CLS", modules_to_save=["score"])
    model.train()
    scorer = reward.RankingScorer(model)
    assert scorer.shared
    rankings = _rankings(model.config.vocab_size, pad)
    lens = reward.shared_prefix_lengths(rankings)
    assert min(lens) > 0 and lens[-1] == len(rankings[1][0]) - 1  # the prefix response keeps its last token
    fast = reward.ranking_inputs(scorer, rankings, pad)
    assert "prefix_ids" in fast
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


def test_a_ranking_sharing_nothing_takes_the_plain_forward(tiny_lm):
    """Left truncation can leave a ranking's rows with different first tokens: then the whole
    micro-batch runs as plain padded rows (rows in ranking order)."""
    model = reward.build_model(str(tiny_lm), 3)
    scorer = reward.RankingScorer(model)
    inputs = reward.ranking_inputs(scorer, [[[5, 6, 7], [5, 6]], [[7, 1], [8, 1, 2]]], 3)
    assert inputs["input_ids"].tolist() == [[5, 6, 7], [5, 6, 3], [7, 1, 3], [8, 1, 2]]


def test_collate_shared_by_hand():
    got = reward.collate_shared([[[1, 2, 3], [1, 2, 4, 5]], [[6, 7], [6, 8], [6, 9]]], [2, 1], pad_id=0)
    assert got["prefix_ids"].tolist() == [[1, 2], [0, 6]]  # left-padded, so every prefix ends at the cache's end
    assert got["prefix_mask"].tolist() == [[True, True], [False, True]]
    assert got["prefix_index"].tolist() == [0, 0, 1, 1, 1]
    assert got["suffix_ids"].tolist() == [[3, 0], [4, 5], [7, 0], [8, 0], [9, 0]]
    assert got["suffix_mask"].sum(1).tolist() == [1, 2, 1, 1, 1]


def test_micro_batches_group_by_length_within_the_budget():
    """Two short pairs (prefix 10, answers 5) and two long ones (prefix 100, answers 5), a pass
    costing 64 tokens of overhead: all four in one pass cost 4 x 100 + 8 x 5 + 64 = 504 padded
    tokens, each alone 4 x 64 + 2 x (10 + 10) + 2 x (100 + 10) = 516, short and long apart
    (2 x 10 + 4 x 5 + 64) + (2 x 100 + 4 x 5 + 64) = 388: the plan."""
    def pair(p, first):
        return [[first] * p + [1, 2, 3, 4, 5], [first] * p + [6, 7, 8, 9, 10]]

    rankings = [pair(100, 11), pair(10, 12), pair(100, 13), pair(10, 14)]
    assert reward.plan_micro_batches(rankings, 10**6, overhead=64) == [[1, 3], [0, 2]]
    # a budget of 100 padded tokens: the short pair fits (40), the long ones (220) run alone
    assert reward.plan_micro_batches(rankings, 100, overhead=64) == [[1, 3], [0], [2]]
    # no overhead: no padding is worth computing: 2 x (10 + 2 x 5) + 2 x (100 + 2 x 5) = 260 real tokens
    assert sum(_padded(rankings, g) for g in reward.plan_micro_batches(rankings, 10**6, overhead=0)) == 260
    r = random.Random(1)
    many = [[[9] * r.randint(1, 60) + [r.randint(0, 8)] * r.randint(1, 20) for _ in range(r.choice([2, 3]))]
            for _ in range(40)]
    plan = reward.plan_micro_batches(many, 300)
    assert sorted(i for g in plan for i in g) == list(range(40))  # every ranking once
    assert all(len(g) == 1 or _padded(many, g) <= 300 for g in plan)
    assert 1 < len(plan) < 40


def _padded(rankings, group) -> int:
    """A pass's padded tokens: n x its longest shared prefix + rows x its longest own part."""
    lens = reward.shared_prefix_lengths([rankings[i] for i in group])
    suffix = max(max(len(x) for x in rankings[i]) - p for i, p in zip(group, lens))
    return len(group) * max(lens) + sum(len(rankings[i]) for i in group) * suffix


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
