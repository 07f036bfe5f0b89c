"""Losses as pure functions on tensors: `fn(tensors..., scalars...) -> (loss, metrics)`.

Nothing here reads a config or touches a model: a stage computes logits, this file turns
them into a scalar. Shapes follow DESIGN.md: (B, T) over tokens, (B,) over sequences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets) under `logits`: (B, T, V), (B, T) -> (B, T).

    `logsumexp` instead of `log_softmax(...).gather` so the (B, T, V) log-softmax is never
    materialised a second time (V is the largest dimension by far).
    """
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
            normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token cross-entropy on the positions `mask` marks (pre-training and SFT).

    logits (B, T, V) from a forward over input_ids (B, T); mask (B, T) bool marks the tokens
    to *predict*, so position t's logits predict input_ids[:, t+1] and count when mask[:, t+1].
    Reduction: sum over marked tokens / `normalizer` (default: the number of marked tokens).
    Passing the token count of the whole global batch as `normalizer` makes gradient
    accumulation and data parallelism exact: every token weighs the same whichever
    micro-batch or rank it landed on (a mean of per-micro-batch means would not).
    """
    targets = input_ids[:, 1:]
    m = mask[:, 1:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), reduction="none").view_as(targets)
    n_tokens = m.sum()
    denom = normalizer if normalizer is not None else n_tokens.clamp(min=1)
    loss = (nll * m).sum() / denom
    return loss, {"train/tokens": float(n_tokens)}


# ---------------------------------------------------------------------------------------------
# Masked reductions. `mask` is bool; padding positions may hold anything, inf and nan included.


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    # `where`, not `x * mask`: a padded inf/nan times 0 is still nan
    x = torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Mean of x over the positions `mask` marks (over all of them, or along `dim`); 0 if none."""
    n = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / n.clamp(min=1)


# ---------------------------------------------------------------------------------------------
# Reward models (issue "Reward models from rankings").


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | float | None = None,
                  center_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Bradley-Terry loss on preference pairs (Ouyang et al. 2022 with K = 2; Llama 2's margin).

    chosen, rejected: (P,) reward-model scores of the preferred and the other response.
    margin: optional (P,) or scalar; the loss then asks for r_c - r_r >= margin (Llama 2, sec 3.2.2).
    Loss: -log sigmoid(r_c - r_r - margin), mean over pairs (`logsigmoid` is stable for large
    negative differences, unlike log(sigmoid(.))). TRL's RewardTrainer computes the same.
    center_coef > 0 adds center_coef * mean((r_c + r_r)^2) (Eisenstein et al. 2023; TRL's
    center_rewards_coefficient): BT only sees differences, so this pins the scores near mean 0.
    Metrics: rm/accuracy (fraction of pairs with r_c > r_r; ties count as wrong), rm/margin_mean.
    """
    diff = chosen.float() - rejected.float()
    target = diff if margin is None else diff - margin
    loss = -F.logsigmoid(target).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen.float() + rejected.float()) ** 2).mean()
    diff = diff.detach()
    return loss, {"rm/accuracy": float((diff > 0).float().mean()), "rm/margin_mean": float(diff.mean())}


def _pad_rankings(scores: torch.Tensor, lengths) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated rankings (N,) + their K's (R,) -> padded (R, Kmax) scores and (R, Kmax) valid mask."""
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=scores.device)
    if lengths.dim() != 1 or len(lengths) == 0:
        raise ValueError(f"lengths must be a non-empty 1-D list of K's, got shape {tuple(lengths.shape)}")
    if int(lengths.min()) < 2:
        raise ValueError(f"every ranking needs K >= 2 responses, got lengths {lengths.tolist()}")
    if scores.dim() != 1 or int(lengths.sum()) != scores.numel():
        raise ValueError(f"scores has {scores.numel()} entries but lengths sum to {int(lengths.sum())}")
    k_max = int(lengths.max())
    pos = torch.arange(k_max, device=scores.device)
    valid = pos[None, :] < lengths[:, None]
    start = torch.cumsum(lengths, 0) - lengths
    idx = torch.where(valid, start[:, None] + pos[None, :], torch.zeros_like(valid, dtype=torch.long))
    padded = torch.where(valid, scores.float()[idx], torch.zeros((), device=scores.device))
    return padded, valid


def _pair_mask(valid: torch.Tensor) -> torch.Tensor:
    """(R, K, K) bool: (i, j) is a pair of ranking r with i ranked above j (i < j, both real)."""
    k = valid.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool, device=valid.device).triu(1)
    return upper[None] & valid[:, :, None] & valid[:, None, :]


def _ranking_metrics(padded: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Pair accuracy and margin (each ranking weighs the same), and top-1 accuracy."""
    pairs = _pair_mask(valid)
    diff = padded[:, :, None] - padded[:, None, :]  # diff[r, i, j] = s_i - s_j
    n_pairs = pairs.sum((1, 2))
    acc = (masked_sum((diff > 0).float(), pairs, dim=(1, 2)) / n_pairs).mean()
    margin = (masked_sum(diff, pairs, dim=(1, 2)) / n_pairs).mean()
    # top-1: the response people put first gets the strictly highest score of its ranking
    others = torch.where(valid[:, 1:], padded[:, 1:], torch.full((), float("-inf"), device=padded.device))
    top1 = (padded[:, 0] > others.max(1).values).float().mean()
    return {"rm/accuracy": float(acc), "rm/margin_mean": float(margin), "rm/top1_accuracy": float(top1)}


def ranking_loss(scores: torch.Tensor, lengths) -> tuple[torch.Tensor, dict[str, float]]:
    """InstructGPT's reward-model loss: all C(K, 2) pairs of each ranking (Ouyang et al. 2022, eq. 1).

    scores: (N,) the responses of each ranking concatenated, BEST FIRST within a ranking.
    lengths: (R,) each ranking's K (K >= 2, may differ between rankings); sum(lengths) == N.
    Loss: -1/C(K,2) * sum_{i<j} log sigmoid(s_i - s_j) per ranking, then mean over rankings, so
    every ranking weighs the same whatever its K (InstructGPT: treating the C(K,2) pairs as
    independent examples overfits, because they share a prompt and responses).
    Vectorised: rankings padded to Kmax, an (R, Kmax, Kmax) pair mask; cost O(R * Kmax^2).
    Metrics: rm/accuracy, rm/margin_mean (over pairs, each ranking weighs the same), rm/top1_accuracy.
    """
    padded, valid = _pad_rankings(scores, lengths)
    pairs = _pair_mask(valid)
    nll = -F.logsigmoid(padded[:, :, None] - padded[:, None, :])
    per_ranking = masked_sum(nll, pairs, dim=(1, 2)) / pairs.sum((1, 2))
    return per_ranking.mean(), _ranking_metrics(padded.detach(), valid)


def plackett_luce_loss(scores: torch.Tensor, lengths) -> tuple[torch.Tensor, dict[str, float]]:
    """Listwise NLL of the whole order under Plackett-Luce (Plackett 1975; Luce 1959; as in Zhu et al. 2023).

    scores, lengths: as in `ranking_loss` (best first, concatenated; K per ranking).
    P(order) = prod_i exp(s_i) / sum_{j >= i} exp(s_j): pick the best of all, then the best of
    the rest, ... so the NLL of one ranking is sum_{i < K-1} [logsumexp(s_i..s_{K-1}) - s_i].
    Reduction: NLL of each whole order (a sum over its K-1 choices), mean over rankings.
    With K = 2 this is -log sigmoid(s_0 - s_1), the pairwise loss.
    Metrics: as `ranking_loss`.
    """
    padded, valid = _pad_rankings(scores, lengths)
    k = valid.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=valid.device)
    # stage i chooses among j >= i that are real; a padded row i keeps only j == i so that its
    # logsumexp stays finite (its term is masked out below) and no -inf reaches the backward pass
    choices = (eye.logical_not().triu(1)[None] & valid[:, None, :]) | eye[None]
    logits = padded[:, None, :].expand(-1, k, -1).masked_fill(~choices, float("-inf"))
    terms = torch.logsumexp(logits, dim=-1) - padded  # (R, K); the last real stage is 0
    nll = masked_sum(terms, valid, dim=1)
    return nll.mean(), _ranking_metrics(padded.detach(), valid)


def _pairwise_from_rankings(scores: torch.Tensor, lengths) -> tuple[torch.Tensor, dict[str, float]]:
    """`pairwise_loss` over every pair of every ranking, each PAIR weighing the same (the common
    'expand rankings into comparisons' practice); equals `ranking_loss` when every K is 2."""
    padded, valid = _pad_rankings(scores, lengths)
    r, i, j = _pair_mask(valid).nonzero(as_tuple=True)
    return pairwise_loss(padded[r, i], padded[r, j])


# Uniform form for the reward stage: RM_LOSSES[name](scores, lengths) -> (loss, metrics),
# scores (N,) best first within each ranking, lengths (R,). Margins: call pairwise_loss directly.
RM_LOSSES = {"pairwise": _pairwise_from_rankings, "ranking": ranking_loss, "plackett_luce": plackett_luce_loss}


# ---------------------------------------------------------------------------------------------
# KL estimators (Schulman, "Approximating KL divergence", 2020). Tokens are sampled from the
# policy, so with r = log(ref / policy) = ref_logprobs - logprobs, E[-r] = KL(policy || ref):
#   k1 = -r               unbiased, high variance, can be negative per token
#   k2 = r^2 / 2          biased, low variance, >= 0
#   k3 = exp(r) - r - 1   unbiased (E[exp(r)] = 1), low variance, >= 0
# Each maps (B, T), (B, T) -> (B, T) elementwise; the caller masks and reduces.


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    r = ref_logprobs - logprobs
    return torch.expm1(r) - r  # expm1 keeps precision when r is near 0, as it is early on


KL_ESTIMATORS = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


# ---------------------------------------------------------------------------------------------
# Policy and value losses (issue "Reinforcement learning").


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # before exp(): exp(garbage) = inf at a padding position gives 0 * inf = nan in the backward
    # pass even when `where` drops the value afterwards
    return torch.where(mask, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip, clip_high):
    """Per-token PPO objective as a loss, (B, T); plus log ratio and where the clip was active."""
    log_ratio = _zero_padding(logprobs - old_logprobs, mask)
    ratio = torch.exp(log_ratio)
    hi = clip if clip_high is None else clip_high
    # loss = -min(r A, clip(r) A) = max(-r A, -clip(r) A): the pessimistic bound, so the policy
    # gains nothing by moving the ratio outside [1 - clip, 1 + clip_high] in the advantage's direction
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + hi)
    return torch.maximum(unclipped, clipped), log_ratio, clipped > unclipped


# Rollout corrections: the sampler's numerics differ from the trainer's (int8 rollouts,
# generation/quant.py; a vLLM sampler later), so the tokens come from pi_sample, not from the
# pi_old the trainer computes. Each variant turns the two into per-token weights on the policy
# loss (IS_CORRECTIONS[name](old_logprobs, sampler_logprobs, mask, cap) -> (weights | None,
# metrics)); the weights are constants (no gradient), 0 on padding.


def _sampler_ratio(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """pi_old / pi_sample per token (B, T), 1 on padding."""
    return torch.exp(_zero_padding(old_logprobs.detach() - sampler_logprobs.detach(), mask))


def no_correction(old_logprobs, sampler_logprobs, mask, cap) -> tuple[None, dict[str, float]]:
    """No weights: the loss treats the samples as the trainer's own (exact when they are)."""
    return None, {}


@torch.no_grad()
def tis_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                cap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"): w = min(pi_old / pi_sample, cap) per token.

    old_logprobs (B, T) the trainer's logprobs of the sampled tokens under the rollout's policy;
    sampler_logprobs (B, T) what the sampler reported for them; mask (B, T) bool; cap > 0.
    The ratio is the importance weight from the sampler's distribution to the trainer's; the
    cap bounds its variance (a token the sampler found far likelier than the trainer does, or
    the reverse, cannot dominate the step) at the price of a bias toward pi_sample.
    -> weights (B, T) (0 on padding), and metrics rollout/is_capped_frac (share of marked
    tokens whose ratio exceeds the cap), rollout/is_weight_mean (mean weight over them).
    """
    ratio = _sampler_ratio(old_logprobs, sampler_logprobs, mask)
    w = torch.where(mask, ratio.clamp(max=cap), 0.0)
    return w, {"rollout/is_capped_frac": float(masked_mean((ratio > cap).float(), mask)),
               "rollout/is_weight_mean": float(masked_mean(w, mask))}


@torch.no_grad()
def mis_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor,
                cap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Masked importance sampling (Liu et al. 2025, "When speed kills stability"): w = ratio
    where ratio = pi_old / pi_sample <= cap, and 0 where it is above: a token the trainer finds
    far likelier than the sampler did is dropped from the loss instead of capped (no bias
    toward pi_sample from the capped tokens; fewer tokens learn).

    Shapes and metrics as `tis_weights` (rollout/is_capped_frac: the share masked).
    """
    ratio = _sampler_ratio(old_logprobs, sampler_logprobs, mask)
    over = ratio > cap
    w = torch.where(mask & ~over, ratio, 0.0)
    return w, {"rollout/is_capped_frac": float(masked_mean(over.float(), mask)),
               "rollout/is_weight_mean": float(masked_mean(w, mask))}


IS_CORRECTIONS = {"none": no_correction, "tis": tis_weights, "mis": mis_weights}


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                    mask: torch.Tensor, clip: float = 0.2, clip_high: float | None = None,
                    normalizer: float | None = None,
                    weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), as a loss to minimise.

    logprobs (B, T) under the current policy (with grad); old_logprobs (B, T) under the policy
    that sampled the tokens; advantages (B, T) (or (B,), broadcast over tokens); mask (B, T) bool.
    clip: eps, ratio clipped to [1 - clip, 1 + clip_high] (clip_high defaults to clip; DAPO's
    clip-higher sets it larger). Reduction: token mean over the mask, i.e. sum / number of
    marked tokens, or sum / `normalizer` (the global batch's token count, for exact gradient
    accumulation, as in `lm_loss`). The KL to the reference is not here: PPO-RLHF puts it in the
    reward (advantages.kl_penalized_rewards).
    Metrics: ppo/clipfrac (fraction of tokens where the clipped term was taken), ppo/approx_kl
    (k3 estimate of KL(old || new) = mean of (ratio - 1) - log ratio, as CleanRL; >= 0),
    ppo/ratio_mean, ppo/pg_loss.
    weights (B, T), optional: per-token constants on the surrogate (a rollout correction,
    IS_CORRECTIONS), the reduction unchanged.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    per_token, log_ratio, was_clipped = _clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip, clip_high)
    if weights is not None:
        per_token = per_token * weights
    denom = normalizer if normalizer is not None else mask.sum().clamp(min=1)
    loss = masked_sum(per_token, mask) / denom
    with torch.no_grad():
        metrics = {
            "ppo/pg_loss": float(loss.detach()),
            "ppo/clipfrac": float(masked_mean(was_clipped.float(), mask)),
            "ppo/approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask)),
            "ppo/ratio_mean": float(masked_mean(torch.exp(log_ratio), mask)),
        }
    return loss, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   mask: torch.Tensor, clip: float = 0.2,
                   normalizer: float | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped value loss (PPO2 baselines; Ziegler et al. 2019's lm-human-preferences).

    values (B, T) from the value head now (with grad); old_values (B, T) at rollout time;
    returns (B, T) targets (advantages + old values, from `gae`); mask (B, T) bool.
    Loss per token: 0.5 * max((V - R)^2, (V_clip - R)^2) with V_clip = V_old + clamp(V - V_old,
    -clip, clip): like the policy clip, a step may not profit from moving V far from V_old.
    Reduction: token mean over the mask (or sum / `normalizer`).
    Metrics: ppo/vf_loss, ppo/vf_clipfrac, ppo/value_mean, ppo/explained_var
    (1 - Var[R - V] / Var[R] over marked tokens: 1 is a perfect critic, <= 0 a useless one).
    """
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    err = (values - returns) ** 2
    err_clipped = (v_clipped - returns) ** 2
    denom = normalizer if normalizer is not None else mask.sum().clamp(min=1)
    loss = 0.5 * masked_sum(torch.maximum(err, err_clipped), mask) / denom
    with torch.no_grad():
        ret_mean = masked_mean(returns, mask)
        var_ret = masked_mean((returns - ret_mean) ** 2, mask)
        resid = returns - values
        var_resid = masked_mean((resid - masked_mean(resid, mask)) ** 2, mask)
        metrics = {
            "ppo/vf_loss": float(loss.detach()),
            "ppo/vf_clipfrac": float(masked_mean((err_clipped > err).float(), mask)),
            "ppo/value_mean": float(masked_mean(values, mask)),
            "ppo/explained_var": float(1 - var_resid / var_ret) if float(var_ret) > 0 else 0.0,
        }
    return loss, metrics


# GRPO-family reductions of a per-token loss (B, T) with mask (B, T) to a scalar. `max_len` is
# the constant Dr. GRPO divides by (the generation budget); the others ignore it.


def reduce_sequence_mean(x: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """GRPO (Shao et al. 2024, eq. 3): mean over each sequence's tokens, then over sequences.
    A token of a short answer weighs more than one of a long answer (the length bias Dr. GRPO names)."""
    return masked_mean(x, mask, dim=1).mean()


def reduce_token_mean(x: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """DAPO (Yu et al. 2025, eq. 8): mean over every marked token of the batch."""
    return masked_mean(x, mask)


def reduce_constant(x: torch.Tensor, mask: torch.Tensor, max_len: int) -> torch.Tensor:
    """Dr. GRPO (Liu et al. 2025): sum over tokens / (B * max_len), a constant independent of
    the answers' lengths, so neither long nor short answers are favoured."""
    return masked_sum(x, mask) / (x.shape[0] * max_len)


GRPO_REDUCTIONS = {"sequence": reduce_sequence_mean, "token": reduce_token_mean, "dr_grpo": reduce_constant}


def grpo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None,
                     advantages: torch.Tensor, mask: torch.Tensor, clip: float = 0.2, kl_coef: float = 0.04,
                     reduction: str = "sequence", clip_high: float | None = None,
                     max_len: int | None = None,
                     weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO objective as a loss (Shao et al. 2024, DeepSeekMath eq. 3), with DAPO/Dr. GRPO variants.

    logprobs, old_logprobs, ref_logprobs (B, T); advantages (B, T) or (B,) (one per sequence,
    broadcast over its tokens); mask (B, T) bool.
    Per token: PPO's clipped surrogate (clip range [1 - clip, 1 + clip_high]; DAPO's clip-higher
    uses clip_high > clip) + kl_coef * k3(policy || ref) — GRPO puts the KL in the loss, not in
    the reward; ref_logprobs may be None when kl_coef == 0 (DAPO, Dr. GRPO drop it).
    Reduction: GRPO_REDUCTIONS[reduction] — "sequence" (GRPO), "token" (DAPO), "dr_grpo"
    (sum / (B * max_len), max_len defaulting to T).
    weights (B, T), optional: per-token constants on the clipped surrogate (a rollout
    correction, IS_CORRECTIONS; the KL term is not weighted), the reduction unchanged.
    Metrics: grpo/pg_loss, grpo/kl (k3 token mean), grpo/clipfrac, grpo/approx_kl (k3 of
    KL(old || new), as ppo/approx_kl), grpo/ratio_mean.
    """
    if reduction not in GRPO_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose from {sorted(GRPO_REDUCTIONS)}")
    reduce = GRPO_REDUCTIONS[reduction]
    max_len = mask.shape[1] if max_len is None else max_len
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    per_token, log_ratio, was_clipped = _clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip, clip_high)
    if weights is not None:
        per_token = per_token * weights
    pg_loss = reduce(per_token, mask, max_len)
    loss = pg_loss
    kl = None
    if kl_coef != 0.0:
        if ref_logprobs is None:
            raise ValueError("grpo_policy_loss: kl_coef != 0 needs ref_logprobs")
        kl = kl_k3(_zero_padding(logprobs, mask), _zero_padding(ref_logprobs, mask))
        loss = loss + kl_coef * reduce(kl, mask, max_len)
    with torch.no_grad():
        if kl is None and ref_logprobs is not None:
            kl = kl_k3(_zero_padding(logprobs, mask), _zero_padding(ref_logprobs, mask))
        metrics = {
            "grpo/pg_loss": float(pg_loss.detach()),
            "grpo/kl": float(masked_mean(kl, mask)) if kl is not None else 0.0,
            "grpo/clipfrac": float(masked_mean(was_clipped.float(), mask)),
            "grpo/approx_kl": float(masked_mean(torch.expm1(log_ratio) - log_ratio, mask)),
            "grpo/ratio_mean": float(masked_mean(torch.exp(log_ratio), mask)),
        }
    return loss, metrics


def _dpo_metrics(loss: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> dict[str, float]:
    """TRL's reward metrics under our names: rewards are beta * the *summed* logratios for every
    loss (IPO's length normalisation changes the loss only), accuracy counts strict wins."""
    c, r = beta * chosen.detach().float(), beta * rejected.detach().float()
    return {"dpo/loss": float(loss.detach()), "dpo/reward_accuracy": float((c > r).float().mean()),
            "dpo/margin": float((c - r).mean()), "dpo/chosen_reward": float(c.mean()),
            "dpo/rejected_reward": float(r.mean())}


def dpo_sigmoid_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
                     chosen_lengths: torch.Tensor | None = None,
                     rejected_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigmoid(beta * (logratio_c - logratio_r)), mean over pairs.

    chosen_logratios, rejected_logratios: (B,) summed over response tokens. The Bradley-Terry
    likelihood of the pair under the implicit reward beta * logratio; `logsigmoid` stays finite
    for large negative margins. The lengths are not used (DPO's reward is the sum over tokens);
    they are accepted so that every DPO_LOSSES entry is called the same way. Equals TRL's
    DPOTrainer loss_type="sigmoid" (label_smoothing 0).
    """
    delta = chosen_logratios.float() - rejected_logratios.float()
    loss = -F.logsigmoid(beta * delta).mean()
    return loss, _dpo_metrics(loss, chosen_logratios, rejected_logratios, beta)


def dpo_ipo_loss(chosen_logratios: torch.Tensor, rejected_logratios: torch.Tensor, beta: float,
                 chosen_lengths: torch.Tensor | None = None,
                 rejected_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """IPO (Azar et al. 2023, eq. 17, tau = beta): (h - 1 / (2 beta))^2, mean over pairs.

    h = logratio_c - logratio_r regresses onto a fixed margin instead of being pushed to
    infinity, so IPO does not overfit deterministic preferences the way DPO can. With
    `chosen_lengths` / `rejected_lengths` ((B,) response token counts) each logratio is first
    averaged over its tokens, h = logratio_c / n_c - logratio_r / n_r: summed logratios grow
    with the response, so the squared loss and a fixed 1/(2 beta) target would depend on length.
    That per-token form is what TRL's loss_type="ipo" computes (they report it is the form the
    IPO authors used for the paper's results), and what `rlhfkit dpo` passes; without lengths
    this is eq. 17 on sums.
    """
    c, r = chosen_logratios.float(), rejected_logratios.float()
    if chosen_lengths is not None and rejected_lengths is not None:
        c = c / chosen_lengths.float().clamp(min=1.0)
        r = r / rejected_lengths.float().clamp(min=1.0)
    loss = ((c - r - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, _dpo_metrics(loss, chosen_logratios, rejected_logratios, beta)


# DPO_LOSSES[name](chosen_logratios, rejected_logratios, beta, chosen_lengths=None, rejected_lengths=None)
# -> (loss, metrics with dpo/loss, dpo/reward_accuracy, dpo/margin, dpo/chosen_reward, dpo/rejected_reward)
DPO_LOSSES = {"sigmoid": dpo_sigmoid_loss, "ipo": dpo_ipo_loss}
