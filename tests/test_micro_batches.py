"""Micro-batches from a token budget (micro_batch_size = 0): the sizes, and that the split
gives the loss and gradients of one forward over the whole minibatch."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.training import backward_micro_batches, micro_batch_sizes


def test_sizes_by_hand():
    # 16 rows of 87 tokens: 2048 // 87 = 23 rows fit -> one forward; 1024 // 87 = 11 -> 2 of 8
    assert micro_batch_sizes(16, 87, 0, 2048) == [16]
    assert micro_batch_sizes(16, 87, 0, 1024) == [8, 8]  # balanced, not [11, 5]
    assert micro_batch_sizes(7, 100, 0, 250) == [2, 2, 2, 1]  # 2 fit; ceil(7 / 2) = 4 forwards
    assert micro_batch_sizes(3, 10_000, 0, 2048) == [1, 1, 1]  # a row longer than the budget runs alone
    # a fixed micro_batch_size keeps the old cut: that many rows, the rest in the last
    assert micro_batch_sizes(10, 87, 4, 2048) == [4, 4, 2]
    assert micro_batch_sizes(0, 87, 0, 2048) == []


def _tiny_experience():
    from rlhfkit.rl.rollout import Experience

    g = torch.Generator().manual_seed(0)
    # 2 prompts x 3 samples (shared-prompt KV path), prompts of 5 and 3 tokens, responses of 1..6
    prompts = [[5, 6, 7, 8, 9]] * 3 + [[10, 11, 12]] * 3
    T = 6
    tokens = torch.randint(13, 60, (6, T), generator=g)
    lengths = torch.tensor([6, 2, 4, 1, 5, 3])
    mask = torch.arange(T)[None] < lengths[:, None]
    ref = torch.where(mask, -torch.rand(6, T, generator=g) * 3, 0.0)
    sampler = torch.where(mask, -torch.rand(6, T, generator=g) * 3, 0.0)
    return Experience(prompts, tokens, mask, ref_logprobs=ref, sampler_logprobs=sampler), torch.randn(6, T, generator=g)


@pytest.mark.parametrize("reduction", ["sequence", "token"])
def test_token_budget_split_matches_one_forward(reduction):
    from transformers import LlamaForCausalLM

    from rlhfkit.models import tiny_llama_config
    from rlhfkit.rl.config import UpdateSpec
    from rlhfkit.rl.update import micro_batches
    from rlhfkit.stages.grpo import clipped_loss

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(64, d_model=32, n_layers=2, n_heads=2, max_seq_len=64))
    exp, adv = _tiny_experience()
    rows = torch.tensor([4, 0, 5, 2, 1, 3])  # a shuffled minibatch, as update's permutation gives
    totals = {"rows_total": 6, "tokens_total": int(exp.mask.sum())}
    tensors = {"ref_logprobs": exp.ref_logprobs, "sampler_logprobs": exp.sampler_logprobs, "advantages": adv}
    assert exp.padded_len(rows) == 5 + 6  # the longest prompt + the longest response

    def grads(budget):
        model.zero_grad(set_to_none=True)
        spec = UpdateSpec(ppo_epochs=1, num_minibatches=1, micro_batch_size=0, grad_clip=0.0, seed=0,
                          micro_batch_tokens=budget)
        mbs = micro_batches(exp, rows, totals, tensors, spec)
        loss_fn = lambda m, mb: clipped_loss(m, mb, kl_coef=0.1, name="grpo", clip=0.2, clip_high=0.0,
                                             reduction=reduction, max_len=6, temperature=1.0)
        loss, _ = backward_micro_batches(model, mbs, loss_fn, world=1)
        return len(mbs), loss, [p.grad.clone() for p in model.parameters()]

    n_one, loss_one, g_one = grads(10_000)
    # 22 tokens: 2 rows of the minibatch's padded length (11) per forward -> 3 forwards, each
    # trimmed to its own rows' lengths (so padding, shared prompts and positions all differ)
    n_split, loss_split, g_split = grads(22)
    assert (n_one, n_split) == (1, 3)
    assert abs(loss_one - loss_split) <= 1e-6 * max(1.0, abs(loss_one))
    assert any(float(g.abs().max()) > 1e-4 for g in g_one)  # the comparison is not of zeros
    assert max(float((a - b).abs().max()) for a, b in zip(g_one, g_split)) <= 1e-6
