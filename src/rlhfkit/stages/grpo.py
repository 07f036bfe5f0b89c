"""GRPO: critic-free RL with group-normalised advantages and the KL in the loss (DeepSeekMath).

    rlhfkit grpo --set model=runs/demo/sft --set prompts=runs/demo/world/prompts_math.jsonl \\
                 --set eval_prompts=runs/demo/world/prompts_math_eval.jsonl --set reward=math+format
    torchrun --nproc-per-node 2 -m rlhfkit grpo --config f.toml

Each step samples `group_size` responses for each of `prompts_per_step` prompts, scores them
and improves the policy on them, with no value network (Shao et al. 2024): advantage = the
score normalised within its group (mean and std of the G samples of the prompt;
`scale_rewards = false` drops the std, Dr. GRPO), the KL to the reference as a k3 term in the
loss, PPO's clipped ratio; reduction `loss_reduction = "sequence"` (GRPO), "token" (DAPO) or
"dr_grpo" (sum / (B * max_new_tokens)). `rlhfkit rloo` (stages/rloo.py) is the same loss with
the KL moved into the reward and another baseline.
Writes an HF dir to `out`, metrics.jsonl, samples.jsonl (every eval's samples), checkpoints/
(SIGKILL-exact resume) and, with save_every, out/step-N/ HF dirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from rlhfkit.advantages import ADVANTAGES
from rlhfkit.config import key
from rlhfkit.files import UserError
from rlhfkit.losses import GRPO_REDUCTIONS, grpo_policy_loss
from rlhfkit.rl import loop
from rlhfkit.rl.config import RLConfig
from rlhfkit.rl.rollout import Experience
from rlhfkit.rl.update import own_logprobs, rollout_weights


@dataclass
class Config(RLConfig):
    out: str = key("runs/demo/grpo", "output directory (an HF model dir; checkpoints, metrics.jsonl)")
    group_size: int = key(8, "samples per prompt (the group)")
    kl_coef: float = key(0.04, "coefficient of the k3 KL-to-reference term in the loss (0: none, as DAPO)")
    loss_reduction: str = key("sequence", "sequence (GRPO) | token (DAPO) | dr_grpo (sum / (B * max_new_tokens))")
    scale_rewards: bool = key(True, "divide advantages by the group's std (false: Dr. GRPO)")


def check(cfg, name: str, needs_group: bool = True) -> None:
    """The checks GRPO and RLOO share (cfg: either's Config): a known reduction, and a group to
    take the baseline from."""
    if cfg.loss_reduction not in GRPO_REDUCTIONS:
        raise UserError(f"loss_reduction '{cfg.loss_reduction}': choose from {', '.join(GRPO_REDUCTIONS)}")
    if needs_group and cfg.group_size < 2:
        raise UserError(f"{name} needs group_size >= 2 (the baseline comes from the other samples)")


@torch.no_grad()
def grpo_advantages(exp: Experience, kl_coef: float, scale_rewards: bool, group_size: int) -> tuple[dict, dict]:
    """The score minus its group's mean (over its group's std with scale_rewards), on every token;
    the KL is a loss term, not part of the reward, so kl_coef is unused here."""
    adv, _ = ADVANTAGES["grpo" if scale_rewards else "dr_grpo"](exp.scores, exp.mask, group_size=group_size)
    return {"advantages": adv}, {"grpo/advantage_abs_mean": float(adv.abs().sum() / exp.mask.sum())}


def clipped_loss(model, mb: dict, kl_coef: float, name: str, clip: float, clip_high: float, reduction: str,
                 max_len: int, temperature: float) -> tuple[torch.Tensor, dict]:
    """grpo_policy_loss on a micro-batch (+ kl_coef x k3 KL to the reference), weighted by the
    micro-batch's share of the global minibatch; metrics under `name`/."""
    logprobs, old, extra = own_logprobs(model, mb, temperature)
    weights, is_met = rollout_weights(old, mb)  # the sampler/trainer mismatch (is_correction)
    loss, met = grpo_policy_loss(logprobs, old, mb["ref_logprobs"], mb["advantages"], mb["mask"], clip=clip,
                                 kl_coef=kl_coef, reduction=reduction, clip_high=clip_high or None, max_len=max_len,
                                 weights=weights)
    # the reduction is a mean over this micro-batch: weight it by the micro-batch's share of
    # the global minibatch (its rows, or its tokens for the token mean)
    share = (mb["mask"].sum() / mb["tokens_total"] if reduction == "token"
             else mb["mask"].shape[0] / mb["rows_total"])
    return loss * share, {**{f"{name}/{k.split('/', 1)[1]}": v * float(share) if k.endswith("loss") else v
                             for k, v in met.items()}, **extra, **is_met}


def run(cfg: Config, make_guard=None) -> None:
    check(cfg, "grpo")
    loop.run(cfg, make_guard=make_guard, algo=loop.Algorithm(
        name="grpo",
        advantages=partial(grpo_advantages, scale_rewards=cfg.scale_rewards, group_size=cfg.group_size),
        loss=partial(clipped_loss, name="grpo", clip=cfg.clip, clip_high=cfg.clip_high, reduction=cfg.loss_reduction,
                     max_len=cfg.max_new_tokens, temperature=cfg.temperature),
        # one optimizer step per rollout: the ratio is exactly 1 at that step, so the rollout
        # skips the policy's no-grad forward and the loss takes its own detached logprobs
        old_logprobs=not (cfg.ppo_epochs == 1 and cfg.num_minibatches == 1)))
