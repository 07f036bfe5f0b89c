"""Reward-model, KL, PPO and GRPO losses: hand-computed cases, loop-vs-vectorised, masking,
gradient signs, and TRL's RewardTrainer loss on the same tensors."""

import math
import tempfile
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.losses import (GRPO_REDUCTIONS, KL_ESTIMATORS, RM_LOSSES, grpo_policy_loss, kl_k1,
                            kl_k2, kl_k3, pairwise_loss, plackett_luce_loss, ppo_policy_loss, ppo_value_loss,
                            ranking_loss, token_logprobs)

LN = math.log


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# ----------------------------------------------------------------------------- reward models


def test_pairwise_loss_hand_computed():
    loss, m = pairwise_loss(t(2.0, 0.0), t(0.0, 0.0))
    # -logsigmoid(2) = log(1 + e^-2) = 0.126928; -logsigmoid(0) = log 2 = 0.693147; mean 0.410038
    assert loss.item() == pytest.approx(0.410038, abs=1e-6)
    assert m["rm/accuracy"] == 0.5  # the tie (0 vs 0) counts as wrong
    assert m["rm/margin_mean"] == pytest.approx(1.0)  # (2 + 0) / 2
    loss, _ = pairwise_loss(t(2.0, 0.0), t(0.0, 0.0), margin=1.0)
    # diff - margin = [1, -1]: log(1 + e^-1) = 0.313262, log(1 + e) = 1.313262; mean 0.813262
    assert loss.item() == pytest.approx(0.813262, abs=1e-6)
    loss, _ = pairwise_loss(t(2.0, 0.0), t(0.0, 0.0), center_coef=0.1)
    # + 0.1 * mean((2 + 0)^2, (0 + 0)^2) = 0.1 * 2 = 0.2 -> 0.610038
    assert loss.item() == pytest.approx(0.610038, abs=1e-6)


def test_pairwise_loss_is_stable_for_huge_differences():
    loss, _ = pairwise_loss(t(-200.0), t(200.0))
    assert loss.item() == pytest.approx(400.0)  # -logsigmoid(-400) = 400 + log(1 + e^-400); log(sigmoid) would be inf


def _rankings():
    # ranking 1 (K=3) scored in its order, ranking 2 (K=2) scored backwards
    return t(2.0, 1.0, 0.0, 0.0, 1.0), [3, 2]


def test_ranking_loss_hand_computed():
    scores, lengths = _rankings()
    loss, m = ranking_loss(scores, lengths)
    # ranking 1: pairs (2,1), (2,0), (1,0): diffs 1, 2, 1 -> (0.313262 + 0.126928 + 0.313262) / 3 = 0.251150
    # ranking 2: diff 0 - 1 = -1 -> 1.313262; each ranking weighs the same: (0.251150 + 1.313262) / 2 = 0.782206
    assert loss.item() == pytest.approx(0.782206, abs=1e-6)
    assert m["rm/accuracy"] == pytest.approx(0.5)  # ranking 1: 3/3 pairs right, ranking 2: 0/1
    assert m["rm/margin_mean"] == pytest.approx(1 / 6)  # ranking 1: (1 + 2 + 1) / 3 = 4/3, ranking 2: -1; (4/3 - 1) / 2
    assert m["rm/top1_accuracy"] == pytest.approx(0.5)


def test_plackett_luce_hand_computed():
    scores, lengths = _rankings()
    loss, _ = plackett_luce_loss(scores, lengths)
    # ranking 1: [logsumexp(2,1,0) - 2] + [logsumexp(1,0) - 1] = log(1 + e^-1 + e^-2) + log(1 + e^-1)
    #          = 0.407606 + 0.313262 = 0.720868;  ranking 2: log(1 + e^1) = 1.313262;  mean = 1.017065
    assert loss.item() == pytest.approx(1.017065, abs=1e-6)


def test_plackett_luce_with_k2_equals_pairwise():
    torch.manual_seed(0)
    s = torch.randn(16) * 3
    pl, _ = plackett_luce_loss(s, [2] * 8)
    pw, _ = pairwise_loss(s[0::2], s[1::2])
    rk, _ = ranking_loss(s, [2] * 8)
    assert pl.item() == pytest.approx(pw.item(), abs=1e-6)
    assert rk.item() == pytest.approx(pw.item(), abs=1e-6)


def _loop_ranking(scores, lengths):
    out, start = [], 0
    for k in lengths:
        s = scores[start:start + k]
        start += k
        pairs = [-F.logsigmoid(s[i] - s[j]) for i in range(k) for j in range(i + 1, k)]
        out.append(torch.stack(pairs).sum() / (k * (k - 1) / 2))
    return torch.stack(out).mean()


def _loop_plackett_luce(scores, lengths):
    out, start = [], 0
    for k in lengths:
        s = scores[start:start + k]
        start += k
        out.append(sum(torch.logsumexp(s[i:], 0) - s[i] for i in range(k - 1)))
    return torch.stack(out).mean()


@pytest.mark.parametrize("fn,loop", [(ranking_loss, _loop_ranking), (plackett_luce_loss, _loop_plackett_luce)])
def test_ranking_losses_match_a_loop_on_ragged_rankings(fn, loop):
    g = torch.Generator().manual_seed(1)
    for trial in range(5):
        lengths = torch.randint(2, 7, (6,), generator=g).tolist()
        base = torch.randn(sum(lengths), generator=g) * 2
        a = base.clone().requires_grad_(True)
        b = base.clone().requires_grad_(True)
        va, _ = fn(a, torch.tensor(lengths))
        vb = loop(b, lengths)
        va.backward()
        vb.backward()
        assert va.item() == pytest.approx(vb.item(), rel=1e-5), lengths
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_rm_losses_share_one_calling_form():
    scores, lengths = _rankings()
    for name, fn in RM_LOSSES.items():
        loss, m = fn(scores, lengths)
        assert loss.dim() == 0 and "rm/accuracy" in m, name
    # "pairwise" expands rankings into pairs that each weigh the same:
    # (0.313262 + 0.126928 + 0.313262 + 1.313262) / 4 = 0.516678
    assert RM_LOSSES["pairwise"](scores, lengths)[0].item() == pytest.approx(0.516678, abs=1e-6)


@pytest.mark.parametrize("name", sorted(RM_LOSSES))
def test_rm_loss_gradient_ranks_best_first(name):
    scores = torch.zeros(4, requires_grad=True)  # one ranking of 4, all tied
    loss, _ = RM_LOSSES[name](scores, [4])
    loss.backward()
    with torch.no_grad():
        stepped = scores - 1.0 * scores.grad
    assert stepped[0] > stepped[1] > stepped[2] > stepped[3]  # one SGD step orders the scores as people did


@pytest.mark.parametrize("lengths", [[3, 1], [2, 2, 2], [6], []])
def test_bad_rankings_raise(lengths):
    with pytest.raises(ValueError):
        ranking_loss(torch.zeros(5), lengths)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecation inside RewardConfig
def test_pairwise_loss_matches_trl_reward_trainer():
    """TRL's RewardTrainer.compute_loss on a stand-in reward model that returns given scores.

    compute_loss only touches self.model/.args/.accelerator and its metric buffers, so it is
    called unbound on a namespace holding a real RewardConfig and a real Accelerator (building
    a whole RewardTrainer needs a tokenizer and a dataset that play no part in the loss).
    """
    trl = pytest.importorskip("trl")
    from accelerate import Accelerator
    from collections import defaultdict
    from transformers.modeling_outputs import SequenceClassifierOutput

    class TableRewardModel(torch.nn.Module):
        """Reward = a learnable entry per sequence, looked up by the sequence's first token id."""

        def __init__(self, rewards):
            super().__init__()
            self.table = torch.nn.Parameter(rewards.clone())

        def forward(self, input_ids, attention_mask=None, use_cache=None, **_):
            return SequenceClassifierOutput(logits=self.table[input_ids[:, 0]].unsqueeze(-1))

    torch.manual_seed(0)
    P = 6
    rewards = torch.randn(2 * P)  # TRL's batch: P chosen rows, then P rejected rows
    margin = torch.rand(P)
    for center in (None, 0.01):
        for use_margin in (False, True):
            model = TableRewardModel(rewards)
            args = trl.RewardConfig(output_dir=tempfile.mkdtemp(), center_rewards_coefficient=center,
                                    report_to=[], use_cpu=True, bf16=False)
            fake_self = SimpleNamespace(model=model, args=args, accelerator=Accelerator(cpu=True),
                                        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                                        _total_train_tokens=0, _tp_size=1)
            inputs = {"input_ids": torch.arange(2 * P)[:, None].repeat(1, 3),
                      "attention_mask": torch.ones(2 * P, 3, dtype=torch.long)}
            if use_margin:
                inputs["margin"] = margin
            theirs = trl.RewardTrainer.compute_loss(fake_self, model, inputs)
            theirs.backward()

            ours_rewards = rewards.clone().requires_grad_(True)
            ours, m = pairwise_loss(ours_rewards[:P], ours_rewards[P:], margin=margin if use_margin else None,
                                    center_coef=center or 0.0)
            ours.backward()
            assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)
            torch.testing.assert_close(ours_rewards.grad, model.table.grad)
            assert m["rm/accuracy"] == pytest.approx(fake_self._metrics["train"]["accuracy"][-1])
            assert m["rm/margin_mean"] == pytest.approx(fake_self._metrics["train"]["margin"][-1], abs=1e-6)


# ----------------------------------------------------------------------------- KL estimators


def test_kl_estimators_hand_computed():
    lp, ref = t(LN(0.5)), t(LN(0.25))  # r = ref - logprob = log(0.25 / 0.5) = -0.693147
    assert kl_k1(lp, ref).item() == pytest.approx(0.693147, abs=1e-6)  # -r
    assert kl_k2(lp, ref).item() == pytest.approx(0.240227, abs=1e-6)  # r^2 / 2 = 0.480453 / 2
    assert kl_k3(lp, ref).item() == pytest.approx(0.193147, abs=1e-6)  # e^r - r - 1 = 0.5 + 0.693147 - 1
    assert set(KL_ESTIMATORS) == {"k1", "k2", "k3"}


def test_kl_estimators_estimate_kl_policy_to_ref():
    # tokens sampled from the policy p; k1 and k3 are unbiased for KL(p || q), not KL(q || p)
    p, q = t(0.6, 0.3, 0.1), t(0.2, 0.3, 0.5)
    exact = (p * (p / q).log()).sum().item()  # 0.6 ln3 + 0.1 ln0.2 = 0.659167 - 0.160944 = 0.498223
    assert exact == pytest.approx(0.498223, abs=1e-6)
    x = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(0))
    lp, ref = p.log()[x], q.log()[x]
    assert kl_k1(lp, ref).mean().item() == pytest.approx(exact, abs=0.01)
    assert kl_k3(lp, ref).mean().item() == pytest.approx(exact, abs=0.01)
    assert (kl_k3(lp, ref) >= 0).all()


# ----------------------------------------------------------------------------- PPO


def _ppo_case():
    logprobs = torch.tensor([[LN(1.5), LN(0.5), LN(1.1), 100.0]], requires_grad=True)  # last: padding garbage
    old = torch.zeros(1, 4)
    adv = t([1.0, 1.0, -1.0, 1e6])
    mask = torch.tensor([[True, True, True, False]])
    return logprobs, old, adv, mask


def test_ppo_policy_loss_hand_computed():
    logprobs, old, adv, mask = _ppo_case()
    loss, m = ppo_policy_loss(logprobs, old, adv, mask, clip=0.2)
    # ratios 1.5, 0.5, 1.1 with A = 1, 1, -1:
    #   tok0 max(-1.5, -1.2) = -1.2 (clipped);  tok1 max(-0.5, -0.8) = -0.5;  tok2 max(1.1, 1.1) = 1.1
    # token mean: (-1.2 - 0.5 + 1.1) / 3 = -0.2
    assert loss.item() == pytest.approx(-0.2, abs=1e-6)
    assert m["ppo/clipfrac"] == pytest.approx(1 / 3)
    assert m["ppo/ratio_mean"] == pytest.approx(1.033333, abs=1e-6)  # (1.5 + 0.5 + 1.1) / 3
    # (r - 1 - ln r): 0.094535, 0.193147, 0.004690 -> mean 0.097457
    assert m["ppo/approx_kl"] == pytest.approx(0.097457, abs=1e-6)
    loss.backward()
    # d/dlogp of -A r is -A r; the clipped token has no gradient: [0, -0.5/3, 1.1/3, 0]
    torch.testing.assert_close(logprobs.grad, t([0.0, -0.5 / 3, 1.1 / 3, 0.0]))


def test_ppo_policy_loss_normalizer_and_broadcast():
    logprobs, old, adv, mask = _ppo_case()
    loss, _ = ppo_policy_loss(logprobs, old, adv, mask, clip=0.2, normalizer=6)
    assert loss.item() == pytest.approx(-0.1, abs=1e-6)  # sum -0.6 / 6
    per_seq, _ = ppo_policy_loss(logprobs, old, torch.tensor([2.0]), mask)
    per_tok, _ = ppo_policy_loss(logprobs, old, torch.full((1, 4), 2.0), mask)
    assert per_seq.item() == pytest.approx(per_tok.item())


def test_clip_high_is_asymmetric():
    lp, old, adv, mask = t([LN(1.25)]), t([0.0]), t([1.0]), torch.tensor([[True]])
    loss, m = ppo_policy_loss(lp, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-1.2) and m["ppo/clipfrac"] == 1.0  # ratio 1.25 clipped to 1.2
    loss, m = ppo_policy_loss(lp, old, adv, mask, clip=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(-1.25) and m["ppo/clipfrac"] == 0.0  # inside [0.8, 1.28]
    loss, _ = ppo_policy_loss(t([LN(0.75)]), old, t([-1.0]), mask, clip=0.2, clip_high=0.28)
    assert loss.item() == pytest.approx(0.8)  # the low side still clips at 1 - 0.2: max(0.75, 0.8)


def test_ppo_value_loss_hand_computed():
    values = torch.tensor([[1.5, 0.9, 7.0]], requires_grad=True)  # last: padding
    old, ret = t([1.0, 1.0, -3.0]), t([2.0, 0.0, 50.0])
    mask = torch.tensor([[True, True, False]])
    loss, m = ppo_value_loss(values, old, ret, mask, clip=0.2)
    # tok0: V_clip = 1 + 0.2 = 1.2; max((1.5-2)^2, (1.2-2)^2) = max(0.25, 0.64) = 0.64 (clipped)
    # tok1: V_clip = 0.9 (inside);   (0.9 - 0)^2 = 0.81
    # 0.5 * (0.64 + 0.81) / 2 = 0.3625
    assert loss.item() == pytest.approx(0.3625, abs=1e-6)
    assert m["ppo/vf_clipfrac"] == pytest.approx(0.5)
    assert m["ppo/value_mean"] == pytest.approx(1.2)  # (1.5 + 0.9) / 2
    # returns [2, 0]: var 1; residuals [0.5, -0.9]: var 0.49 -> 1 - 0.49 = 0.51
    assert m["ppo/explained_var"] == pytest.approx(0.51, abs=1e-6)
    loss.backward()
    # tok0's clipped branch has no gradient w.r.t. V; tok1: 0.5 * 2 * (0.9 - 0) / 2 = 0.45
    torch.testing.assert_close(values.grad, t([0.0, 0.45, 0.0]))


def _tiny_policy_step(loss_fn, advantage: float) -> float:
    """One SGD step on a table of logits; returns the change in the sampled tokens' log-prob."""
    torch.manual_seed(0)
    logits = torch.nn.Parameter(torch.randn(1, 4, 8))
    tokens = torch.tensor([[1, 5, 2, 7]])
    mask = torch.tensor([[True, True, True, False]])
    before = token_logprobs(logits, tokens).detach()
    loss, _ = loss_fn(token_logprobs(logits, tokens), before, torch.full((1, 4), advantage), mask)
    loss.backward()
    with torch.no_grad():
        logits -= 0.1 * logits.grad
    with torch.no_grad():
        return float(((token_logprobs(logits, tokens) - before) * mask).sum())


def _ppo(lp, old, ref, adv, mask, clip=0.2, kl_coef=0.0):
    return ppo_policy_loss(lp, old, adv, mask, clip=clip)  # the KL is in PPO's reward, not its loss


# the policy losses the RL stages use (ppo; grpo and rloo with each reduction), in one form
POLICY_LOSSES = {"ppo": _ppo, **{f"grpo_{r}": partial(grpo_policy_loss, reduction=r) for r in GRPO_REDUCTIONS}}


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_policy_gradient_sign(name):
    def fn(lp, old, adv, mask):
        return POLICY_LOSSES[name](lp, old, old, adv, mask, clip=0.2)
    assert _tiny_policy_step(fn, +1.0) > 0  # a good sample becomes more likely
    assert _tiny_policy_step(fn, -1.0) < 0  # a bad one less likely


# ----------------------------------------------------------------------------- GRPO


def _grpo_case():
    mask = torch.tensor([[True, True, True], [True, False, False]])
    lp = torch.zeros(2, 3)
    lp[1, 1:] = 55.0  # padding garbage
    ref = torch.full((2, 3), LN(0.5))  # k3 per token = e^-ln2 + ln2 - 1 = 0.193147
    return lp, ref, t(1.0, -1.0), mask


def test_grpo_reductions_hand_computed():
    lp, ref, adv, mask = _grpo_case()
    old = lp.clone()  # ratio 1: per-token loss = -A: row 0 [-1, -1, -1], row 1 [1]
    expect = {"sequence": 0.0,  # mean(-1, 1): each sequence weighs the same
              "token": -0.5,  # (-3 + 1) / 4 tokens
              "dr_grpo": -1 / 3}  # (-3 + 1) / (B=2 * T=3)
    for reduction, value in expect.items():
        loss, m = grpo_policy_loss(lp, old, ref, adv, mask, kl_coef=0.0, reduction=reduction)
        assert loss.item() == pytest.approx(value, abs=1e-6), reduction
        assert m["grpo/kl"] == pytest.approx(0.193147, abs=1e-6)  # reported even when not in the loss
    loss, _ = grpo_policy_loss(lp, old, ref, adv, mask, kl_coef=0.0, reduction="dr_grpo", max_len=4)
    assert loss.item() == pytest.approx(-0.25)  # -2 / (2 * 4)
    loss, _ = grpo_policy_loss(lp, old, ref, adv, mask, kl_coef=0.1, reduction="sequence")
    assert loss.item() == pytest.approx(0.0193147, abs=1e-6)  # 0 + 0.1 * 0.193147
    loss, _ = grpo_policy_loss(lp, old, ref, adv, mask, kl_coef=0.1, reduction="token")
    assert loss.item() == pytest.approx(-0.4806853, abs=1e-6)  # -0.5 + 0.1 * 0.193147
    assert set(GRPO_REDUCTIONS) == {"sequence", "token", "dr_grpo"}


def test_grpo_kl_gradient_pulls_toward_reference():
    lp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.full((1, 2), -1.0)
    loss, _ = grpo_policy_loss(lp, lp.detach(), ref, torch.zeros(1), torch.ones(1, 2, dtype=torch.bool), kl_coef=1.0)
    loss.backward()
    # d k3 / d logprob = 1 - e^(ref - logprob) = 1 - e^-1 = 0.632121 per token, / 2 tokens (sequence mean)
    torch.testing.assert_close(lp.grad, torch.full((1, 2), 0.316060), atol=1e-6, rtol=0)


def test_grpo_token_mean_without_kl_is_ppo():
    torch.manual_seed(0)
    lp, old, adv = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    mask = torch.rand(4, 6) > 0.3
    a, _ = grpo_policy_loss(lp, old, None, adv, mask, clip=0.2, kl_coef=0.0, reduction="token")
    b, _ = ppo_policy_loss(lp, old, adv, mask, clip=0.2)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


@pytest.mark.parametrize("name", sorted(POLICY_LOSSES))
def test_padding_does_not_change_policy_losses(name):
    torch.manual_seed(0)
    lp, old, ref, adv = (torch.randn(3, 5) for _ in range(4))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    kl_coef = 0.0 if name == "ppo" else 0.05
    results = []
    for pad in (0.0, 1e4, -1e4):  # +-1e4: exp() of it overflows; neither loss nor gradient may notice
        noisy = [torch.where(mask, x, torch.full_like(x, pad)) for x in (lp, old, ref, adv)]
        noisy[0].requires_grad_(True)
        loss, _ = POLICY_LOSSES[name](*noisy, mask, clip=0.2, kl_coef=kl_coef)
        loss.backward()
        results.append((loss.item(), noisy[0].grad))
    for loss, grad in results[1:]:
        assert loss == pytest.approx(results[0][0], abs=1e-6)
        torch.testing.assert_close(grad, results[0][1])
    assert (results[0][1][~mask] == 0).all()


def test_grpo_needs_ref_and_a_known_reduction():
    z, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_policy_loss(z, z, None, z, mask, kl_coef=0.1)
    with pytest.raises(ValueError, match="reduction"):
        grpo_policy_loss(z, z, z, z, mask, reduction="mean")


# ----------------------------------------------------------------------------- rollout corrections
# old (trainer) vs sampler probabilities of 4 tokens, the last padding:
#   row 0: 1/1 -> ratio 1;  3/1 -> ratio 3;   row 1: 0.5/1 -> ratio 0.5;  padding
OLD = t([LN(1.0), LN(3.0)], [LN(0.5), 7.0])
SAMPLER = t([LN(1.0), LN(1.0)], [LN(1.0), -9.0])
IS_MASK = torch.tensor([[True, True], [True, False]])


def test_tis_weights_hand_computed():
    from rlhfkit.losses import IS_CORRECTIONS

    w, m = IS_CORRECTIONS["tis"](OLD, SAMPLER, IS_MASK, 2.0)
    # min(ratio, 2): [1, 2, 0.5], 0 on padding; one of three tokens capped; mean weight 3.5/3
    assert torch.allclose(w, t([1.0, 2.0], [0.5, 0.0]), atol=1e-6)
    assert m["rollout/is_capped_frac"] == pytest.approx(1 / 3)
    assert m["rollout/is_weight_mean"] == pytest.approx(3.5 / 3, abs=1e-6)


def test_mis_weights_hand_computed():
    from rlhfkit.losses import IS_CORRECTIONS

    w, m = IS_CORRECTIONS["mis"](OLD, SAMPLER, IS_MASK, 2.0)
    # ratio where <= 2, else 0: [1, 0 (3 > 2: masked), 0.5], 0 on padding; mean weight 1.5/3
    assert torch.allclose(w, t([1.0, 0.0], [0.5, 0.0]), atol=1e-6)
    assert m["rollout/is_capped_frac"] == pytest.approx(1 / 3)
    assert m["rollout/is_weight_mean"] == pytest.approx(0.5, abs=1e-6)
    assert IS_CORRECTIONS["none"](OLD, SAMPLER, IS_MASK, 2.0) == (None, {})


def test_policy_losses_take_the_correction_weights():
    # ratio 1 (logprobs == old), advantage 1 everywhere: per-token loss -1, times the TIS weights
    # [1, 2, 0.5]; token mean over the 3 marked tokens: -(1 + 2 + 0.5) / 3 = -1.166667
    from rlhfkit.losses import IS_CORRECTIONS
    from rlhfkit.rl.config import IS_CORRECTIONS as NAMES

    assert tuple(IS_CORRECTIONS) == NAMES  # the config's cheap copy of the names
    lp = t([-1.0, -2.0], [-0.5, 0.0]).requires_grad_()
    adv = t(1.0, 1.0)
    w, _ = IS_CORRECTIONS["tis"](OLD, SAMPLER, IS_MASK, 2.0)
    g, _ = grpo_policy_loss(lp, lp.detach(), None, adv, IS_MASK, kl_coef=0.0, reduction="token", weights=w)
    p, _ = ppo_policy_loss(lp, lp.detach(), adv, IS_MASK, weights=w)
    assert g.item() == pytest.approx(-3.5 / 3, abs=1e-6) and p.item() == pytest.approx(-3.5 / 3, abs=1e-6)
    # the weights are constants: d loss / d logprob = -w / 3 per token (ratio' = ratio = 1)
    g.backward()
    assert torch.allclose(lp.grad, t([-1 / 3, -2 / 3], [-0.5 / 3, 0.0]), atol=1e-6)
    # no weights and weights of ones give the same numbers
    a, _ = grpo_policy_loss(lp, lp.detach() + 0.1, None, adv, IS_MASK, kl_coef=0.0)
    b, _ = grpo_policy_loss(lp, lp.detach() + 0.1, None, adv, IS_MASK, kl_coef=0.0, weights=torch.ones(2, 2))
    assert torch.equal(a, b)
