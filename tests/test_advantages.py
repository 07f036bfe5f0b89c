"""Advantage estimators, reward shaping and KL controllers: hand-computed cases, a GAE loop
reference, masking (padding must not change results), and the sign of one policy step."""

import math

import pytest
import torch

from rlhfkit.advantages import (ADVANTAGES, AdaptiveKLController, FixedKLController, KL_CONTROLLERS,
                                discounted_returns, gae, grpo_advantages, kl_penalized_rewards,
                                reinforce_pp_advantages, rloo_advantages, scores_to_token_rewards, whiten)
from rlhfkit.losses import grpo_policy_loss, token_logprobs

LN = math.log


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def m(*rows):
    return torch.tensor(rows, dtype=torch.bool)


# ----------------------------------------------------------------------------- GAE


def test_gae_hand_computed():
    rewards = t([0.0, 0.0, 1.0], [1.0, 2.0, 99.0])  # row 1: last position is padding
    values = t([0.5, 0.5, 0.5], [1.0, 1.0, -99.0])
    mask = m([1, 1, 1], [1, 1, 0])
    adv, ret = gae(rewards[:1], values[:1], mask[:1], gamma=1.0, lam=0.5)
    # deltas (V after the last token is 0): d2 = 1 - 0.5 = 0.5, d1 = 0 + 0.5 - 0.5 = 0, d0 = 0
    # A2 = 0.5, A1 = 0 + 0.5 * 0.5 = 0.25, A0 = 0 + 0.5 * 0.25 = 0.125; returns = A + V
    torch.testing.assert_close(adv, t([0.125, 0.25, 0.5]))
    torch.testing.assert_close(ret, t([0.625, 0.75, 1.0]))
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.95)
    # row 1 ends at t=1: d1 = 2 - 1 = 1, d0 = 1 + 0.9 * 1 - 1 = 0.9; A0 = 0.9 + 0.855 * 1 = 1.755
    torch.testing.assert_close(adv[1], t(1.755, 1.0, 0.0))
    torch.testing.assert_close(ret[1], t(2.755, 2.0, 0.0))


def _gae_reference(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over each row's real tokens, written as a plain sum."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = mask[b].nonzero().flatten().tolist()
        r, v = [rewards[b, i].item() for i in idx], [values[b, i].item() for i in idx]
        n = len(idx)
        delta = [r[s] + gamma * (v[s + 1] if s + 1 < n else 0.0) - v[s] for s in range(n)]
        for k in range(n):
            adv[b, idx[k]] = sum((gamma * lam) ** l * delta[k + l] for l in range(n - k))
    return adv


@pytest.mark.parametrize("left_pad", [False, True])
def test_gae_matches_plain_sum_on_ragged_batches(left_pad):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 9
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    pos = torch.arange(T)
    mask = (pos >= T - lengths[:, None]) if left_pad else (pos < lengths[:, None])
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    adv, ret = gae(rewards, values, mask, gamma=0.97, lam=0.9)
    expected = _gae_reference(rewards, values, mask, 0.97, 0.9)
    torch.testing.assert_close(adv, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ret, (expected + values) * mask, rtol=1e-5, atol=1e-6)
    # padding contents do not matter
    adv2, _ = gae(torch.where(mask, rewards, 1e6), torch.where(mask, values, -1e6), mask, 0.97, 0.9)
    torch.testing.assert_close(adv2, adv)


def test_discounted_returns_hand_computed():
    # G2 = 2, G1 = 0 + 0.5 * 2 = 1, G0 = 1 + 0.5 * 1 = 1.5
    torch.testing.assert_close(discounted_returns(t([1.0, 0.0, 2.0]), m([1, 1, 1]), gamma=0.5), t([1.5, 1.0, 2.0]))


# ----------------------------------------------------------------------------- whitening


def test_whiten_hand_computed():
    x, mask = t([1.0, 2.0, 3.0, 100.0]), m([1, 1, 1, 0])
    # mean 2, unbiased var ((-1)^2 + 0 + 1^2) / (3 - 1) = 1 -> [-1, 0, 1], padding 0
    torch.testing.assert_close(whiten(x, mask), t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    # shift_mean=False only rescales: [-1, 0, 1] + 2
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), t([1.0, 2.0, 3.0, 0.0]), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- group baselines


def test_grpo_and_dr_grpo_advantages_hand_computed():
    scores = t(1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0)
    adv = grpo_advantages(scores, group_size=4)
    # group 1: mean 0.25, unbiased std sqrt((0.5625 + 3 * 0.0625) / 3) = 0.5
    #   -> 0.75 / (0.5 + 1e-4) = 1.499700, -0.25 / 0.5001 = -0.499900; group 2: all equal -> 0
    torch.testing.assert_close(adv, t(1.499700, -0.499900, -0.499900, -0.499900, 0, 0, 0, 0), atol=1e-6, rtol=0)
    dr = grpo_advantages(scores, group_size=4, normalize_std=False)
    torch.testing.assert_close(dr, t(0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0))  # no std division


def test_rloo_advantages_hand_computed_and_loop():
    adv = rloo_advantages(t(1.0, 0.0, 0.0, 0.0), group_size=4)
    # A0 = 1 - (0 + 0 + 0) / 3 = 1;  A1 = 0 - (1 + 0 + 0) / 3 = -0.333333
    torch.testing.assert_close(adv, t(1.0, -1 / 3, -1 / 3, -1 / 3))
    scores = torch.randn(12, generator=torch.Generator().manual_seed(0))
    loop = [scores[i] - (sum(scores[(i // 3) * 3:(i // 3) * 3 + 3]) - scores[i]) / 2 for i in range(12)]
    torch.testing.assert_close(rloo_advantages(scores, 3), torch.stack(loop))


def test_group_shapes_are_checked():
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(7), group_size=4)
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(4), group_size=1)


# ----------------------------------------------------------------------------- reward shaping, REINFORCE++


def test_kl_penalized_rewards_hand_computed():
    lp = t([LN(0.5), LN(0.5), LN(0.5)], [LN(0.5), LN(0.5), 7.0])
    ref = t([LN(0.25), LN(0.5), LN(1.0)], [LN(0.25), LN(1.0), 7.0])
    mask = m([1, 1, 1], [1, 1, 0])
    r = kl_penalized_rewards(t(1.0, 2.0), lp, ref, mask, kl_coef=0.1)
    # k1 = logprob - ref: row 0 [ln2, 0, -ln2] -> -0.1 * k1 = [-0.069315, 0, 0.069315], + score 1 on t=2
    # row 1 [ln2, -ln2] -> [-0.069315, 0.069315 + 2] (its last real token is t=1), padding 0
    torch.testing.assert_close(r, t([-0.069315, 0.0, 1.069315], [-0.069315, 2.069315, 0.0]), atol=1e-6, rtol=0)
    r3 = kl_penalized_rewards(t(0.0, 0.0), lp, ref, mask, kl_coef=1.0, estimator="k3")
    assert (r3 <= 0).all()  # k3 >= 0: a pure penalty, never a bonus


def test_scores_land_on_last_real_token_with_left_padding():
    out = scores_to_token_rewards(t(3.0, 4.0), m([0, 1, 1], [1, 0, 0]))
    torch.testing.assert_close(out, t([0.0, 0.0, 3.0], [4.0, 0.0, 0.0]))


def test_reinforce_pp_hand_computed():
    mask = m([1, 1], [1, 0])
    adv, ret = reinforce_pp_advantages(t(1.0, 0.0), mask)
    # scores on last tokens -> returns [[1, 1], [0]]; mean 2/3, unbiased var (2/9 + 4/9) / 2 = 1/3
    # -> (1/3) / 0.577350 = 0.577350, (-2/3) / 0.577350 = -1.154701
    torch.testing.assert_close(ret, t([1.0, 1.0], [0.0, 0.0]))
    torch.testing.assert_close(adv, t([0.577350, 0.577350], [-1.154701, 0.0]), atol=1e-5, rtol=0)
    # "-baseline" variant: group means first (group of 2: [0.5, -0.5]), then the same normalisation
    adv_b, ret_b = reinforce_pp_advantages(t(1.0, 0.0), mask, group_size=2)
    torch.testing.assert_close(ret_b, t([0.5, 0.5], [-0.5, 0.0]))


# ----------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_advantages_registry_uniform_form_and_padding(name):
    g = torch.Generator().manual_seed(0)
    mask = m([1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0])
    scores, values = torch.randn(4, generator=g), torch.randn(4, 4, generator=g)
    adv, ret = ADVANTAGES[name](scores, mask, values=values, group_size=2, gamma=1.0, lam=0.95)
    assert adv.shape == ret.shape == (4, 4) and (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    # per-token rewards with the score on the last token give the same answer as (B,) scores,
    # and garbage in padded rewards/values changes nothing
    tok = torch.where(mask, scores_to_token_rewards(scores, mask), 1e3)
    adv2, ret2 = ADVANTAGES[name](tok, mask, values=torch.where(mask, values, -1e3), group_size=2, lam=0.95)
    torch.testing.assert_close(adv2, adv)
    torch.testing.assert_close(ret2, ret)


def test_registry_grpo_broadcasts_sequence_advantages():
    mask = m([1, 1, 0], [1, 1, 1])
    adv, ret = ADVANTAGES["grpo"](t(1.0, 0.0), mask, group_size=2)
    # group [1, 0]: mean 0.5, unbiased std 0.707107 -> +-0.5 / (0.707107 + 1e-4) = +-0.707007 on every real token
    torch.testing.assert_close(adv, t([0.707007, 0.707007, 0.0], [-0.707007, -0.707007, -0.707007]),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, t([1.0, 1.0, 0.0], [0.0, 0.0, 0.0]))  # reward-to-go of the score
    with pytest.raises(ValueError, match="group_size"):
        ADVANTAGES["rloo"](t(1.0, 0.0), mask)
    with pytest.raises(ValueError, match="values"):
        ADVANTAGES["gae"](t(1.0, 0.0), mask)


def test_one_grpo_step_favours_the_better_sample():
    # two samples of one prompt; the first scored higher -> its log-prob rises, the other's falls
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(2, 3, 6))
    tokens, mask = torch.tensor([[1, 2, 3], [4, 5, 0]]), m([1, 1, 1], [1, 1, 0])
    adv = grpo_advantages(t(1.0, 0.0), group_size=2)
    before = token_logprobs(logits, tokens).detach()
    loss, _ = grpo_policy_loss(token_logprobs(logits, tokens), before, before, adv, mask, kl_coef=0.04)
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad
        change = ((token_logprobs(logits, tokens) - before) * mask).sum(1)
    assert change[0] > 0 > change[1]


# ----------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_hand_computed():
    c = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    c.update(current_kl=9.0, n_steps=256)
    # error = 9/6 - 1 = 0.5, clipped to 0.2 -> 0.2 * (1 + 0.2 * 256 / 10000) = 0.2 * 1.00512 = 0.201024
    assert c.value == pytest.approx(0.201024)
    c.update(current_kl=3.0, n_steps=256)
    # error = -0.5 -> -0.2: 0.201024 * 0.99488 = 0.199995
    assert c.value == pytest.approx(0.19999476, abs=1e-8)
    c = AdaptiveKLController(0.2, 6.0, 10000)
    c.update(6.6, 1000)  # error 0.1 (inside the clip): 0.2 * (1 + 0.1 * 0.1) = 0.202
    assert c.value == pytest.approx(0.202)


def test_fixed_kl_controller_and_registry():
    c = KL_CONTROLLERS["fixed"](0.05)
    c.update(100.0, 1000)
    assert c.value == 0.05 and isinstance(c, FixedKLController)
    with pytest.raises(ValueError):
        KL_CONTROLLERS["adaptive"](0.1, target=0.0, horizon=1)
