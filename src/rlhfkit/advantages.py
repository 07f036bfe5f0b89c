"""Advantage estimators and reward shaping for RL on language models, as pure functions.

Shapes follow DESIGN.md: token-level tensors are (B, T) over response tokens with a bool
mask (B, T); `scores` are (B,), one per sequence (a reward model's or a verifier's verdict).
Group methods (GRPO, RLOO) expect the G responses of each prompt to be contiguous:
rows [i*G, (i+1)*G) share prompt i. Nothing here needs gradients: the stages call these on
rollout tensors, and every function runs under no_grad.

ADVANTAGES maps a name to a uniform form for the stages:
    advantages, returns = ADVANTAGES[name](rewards, mask, values=None, group_size=None,
                                           gamma=1.0, lam=0.95)
where `rewards` is (B,) scores or (B, T) per-token rewards; both outputs are (B, T), zero on
padding; `returns` is the value target (GAE) or the reward-to-go (critic-free methods).
"""

from __future__ import annotations

import torch

from rlhfkit.losses import KL_ESTIMATORS, masked_mean


def _last_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last True, (B,); works for right and left padding."""
    pos = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, pos, -1).max(dim=1).values.clamp(min=0)


def scores_to_token_rewards(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Put each sequence's score on its last real token: (B,), (B, T) -> (B, T)."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    out[torch.arange(mask.shape[0], device=mask.device), _last_index(mask)] = scores.float()
    return _zero_padding(out, mask)


def _zero_padding(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # `where`, not `x * mask`: an inf in padding times 0 would be nan
    return torch.where(mask, x.float(), torch.zeros((), device=x.device))


def _token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores or (B, T) per-token rewards -> (B, T) per-token rewards, padding 0."""
    return scores_to_token_rewards(rewards, mask) if rewards.dim() == 1 else _zero_padding(rewards, mask)


def _sequence_scores(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) scores or (B, T) per-token rewards -> (B,): a sequence's rewards add up to its
    return (the score minus its KL penalty)."""
    return rewards.float() if rewards.dim() == 1 else _zero_padding(rewards, mask).sum(1)


@torch.no_grad()
def kl_penalized_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                         mask: torch.Tensor, kl_coef: float, estimator: str = "k1") -> torch.Tensor:
    """Per-token rewards r_t = -kl_coef * kl_t, plus the score on the last real token, (B, T).

    Ziegler et al. 2019 (eq. 2) / InstructGPT: R(x, y) = r(x, y) - beta * log(pi(y|x) / ref(y|x)),
    spread over tokens so that GAE credits each token's own KL. kl_t from KL_ESTIMATORS
    ("k1" = logprob - ref_logprob, the papers' choice; "k3" is never negative). Padding is 0.
    """
    kl = KL_ESTIMATORS[estimator](logprobs.float(), ref_logprobs.float())
    return _zero_padding(-kl_coef * kl, mask) + scores_to_token_rewards(scores, mask)


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor,
        gamma: float = 1.0, lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16): (advantages, returns), (B, T).

    rewards (B, T) per token (e.g. kl_penalized_rewards); values (B, T) from the critic at
    rollout time; mask (B, T) bool, one contiguous run of real tokens per row (right or left
    padding). delta_t = r_t + gamma * V_{t+1} - V_t, A_t = delta_t + gamma * lam * A_{t+1}; the
    episode ends at the last real token, so V and A after it count as 0 (bootstrapping from a
    padding position would leak garbage). returns = A + V, the critic's target. Padding is 0.
    A loop over T on (B,) columns: T is a few hundred, and the recursion is inherently sequential.
    """
    m = mask.float()
    rewards, values = _zero_padding(rewards, mask), _zero_padding(values, mask)
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros(B, device=rewards.device)
    next_value = torch.zeros(B, device=rewards.device)
    for t in reversed(range(T)):
        # V and A at padding are 0, so after a row's last real token the episode is over:
        # delta_last = r - V, with no bootstrap from whatever a padding position held
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = next_adv
        next_value = values[:, t]
    return adv, (adv + values) * m


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Reward-to-go G_t = sum_{s >= t} gamma^(s-t) r_s over real tokens, (B, T). Equals GAE with
    V = 0 and lam = 1."""
    return gae(rewards, torch.zeros_like(rewards, dtype=torch.float32), mask, gamma, 1.0)[0]


@torch.no_grad()
def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over every marked element of the batch, (B, T) -> (B, T); padding is 0.

    Mean and unbiased (Bessel) variance over the marked elements, as TRL's masked_whiten.
    shift_mean=False adds the mean back (only rescales): used on rewards, whose sign matters.
    """
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask) * (n / (n - 1).clamp(min=1))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask, out, torch.zeros((), dtype=out.dtype, device=out.device))


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    if scores.dim() != 1 or group_size < 1 or scores.numel() % group_size:
        raise ValueError(f"scores of shape {tuple(scores.shape)} do not split into groups of {group_size}")
    return scores.float().view(-1, group_size)


@torch.no_grad()
def grpo_advantages(scores: torch.Tensor, group_size: int, normalize_std: bool = True,
                    eps: float = 1e-4) -> torch.Tensor:
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath sec. 4.1.2): (B,) -> (B,).

    A_i = (s_i - mean(group)) / (std(group) + eps), std unbiased as in TRL's GRPOTrainer;
    a group whose scores are all equal gets 0 (nothing to learn from it).
    normalize_std=False is Dr. GRPO (Liu et al. 2025): dividing by std up-weights groups that
    are almost all right or all wrong, a difficulty bias.
    """
    g = _groups(scores, group_size)
    adv = g - g.mean(1, keepdim=True)
    if normalize_std:
        adv = adv / (g.std(1, keepdim=True) + eps)
    return adv.flatten()


@torch.no_grad()
def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): (B,) -> (B,).

    A_i = s_i - mean_{j != i} s_j = G/(G-1) * (s_i - mean(group)): the baseline of a sample
    excludes the sample itself, so it stays unbiased. Needs G >= 2.
    """
    if group_size < 2:
        raise ValueError("rloo_advantages needs group_size >= 2 (the baseline leaves one out)")
    g = _groups(scores, group_size)
    baseline = (g.sum(1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).flatten()


@torch.no_grad()
def reinforce_pp_advantages(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                            group_size: int | None = None, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """REINFORCE++ (Hu 2025): reward-to-go, normalised over the whole batch, (advantages, returns).

    rewards: (B, T) per-token rewards (typically kl_penalized_rewards with k1), or (B,) scores
    put on each sequence's last token. mask (B, T) bool.
    returns = discounted reward-to-go; advantages = whiten(returns) over all marked tokens of
    the batch (global normalisation instead of a critic or a per-prompt group).
    group_size: first subtract, on each sequence's last token, the mean total reward of its
    prompt's group (the paper's "REINFORCE++-baseline", for several samples per prompt).
    """
    rewards = _token_rewards(rewards, mask)
    if group_size is not None:
        totals = rewards.sum(1)
        baseline = totals - grpo_advantages(totals, group_size, normalize_std=False)
        rewards = rewards - scores_to_token_rewards(baseline, mask)
    returns = discounted_returns(rewards, mask, gamma)
    return whiten(returns, mask, eps=eps), returns


# ---------------------------------------------------------------------------------------------
# Uniform forms for ADVANTAGES (see the module docstring).


def _gae_uniform(rewards, mask, values=None, group_size=None, gamma=1.0, lam=0.95):
    if values is None:
        raise ValueError("advantage estimator 'gae' needs values from a critic")
    return gae(_token_rewards(rewards, mask), values, mask, gamma, lam)


def _group_uniform(fn):
    def uniform(rewards, mask, values=None, group_size=None, gamma=1.0, lam=0.95):
        if group_size is None:
            raise ValueError(f"advantage estimator {fn.__name__} needs group_size")
        adv = fn(_sequence_scores(rewards, mask), group_size)
        # a sequence-level advantage applies to every token of the sequence (gamma = 1)
        return adv[:, None] * mask, discounted_returns(_token_rewards(rewards, mask), mask, 1.0)
    uniform.__name__ = uniform.__qualname__ = f"{fn.__name__}_uniform"
    return uniform


def _dr_grpo_advantages(scores, group_size):
    return grpo_advantages(scores, group_size, normalize_std=False)


def _reinforce_pp_uniform(rewards, mask, values=None, group_size=None, gamma=1.0, lam=0.95):
    return reinforce_pp_advantages(rewards, mask, gamma, group_size)


ADVANTAGES = {
    "gae": _gae_uniform,
    "grpo": _group_uniform(grpo_advantages),
    "dr_grpo": _group_uniform(_dr_grpo_advantages),
    "rloo": _group_uniform(rloo_advantages),
    "reinforce_pp": _reinforce_pp_uniform,
}


# ---------------------------------------------------------------------------------------------
# KL coefficient controllers (they hold state, so small classes): built as
# KL_CONTROLLERS[name](kl_coef, target=, horizon=); update(current_kl, n_steps), .value


class FixedKLController:
    """A constant KL coefficient. target and horizon are the adaptive controller's; they are
    accepted (and unused) so that every controller is built the same way,
    KL_CONTROLLERS[name](kl_coef, target=, horizon=)."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: float | None = None):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019 (sec. 2.2): steer the observed KL towards `target`.

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon).
    current_kl: the policy's KL to the reference per sequence (sum over its tokens, mean over
    the batch); n_steps: samples (or steps) since the last update; horizon in the same unit.
    The clip bounds one update's change, so a single outlier batch cannot swing beta.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError("AdaptiveKLController: target and horizon must be > 0")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


KL_CONTROLLERS = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}
