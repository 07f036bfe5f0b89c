"""RLOO and REINFORCE++: critic-free RL with the KL in the reward.

    rlhfkit rloo --set model=runs/demo/sft --set reward=rm:runs/demo/rm \\
                 --set prompts=runs/demo/world/prompts_jokes.jsonl
    rlhfkit rloo --set advantage=reinforce_pp ...

Each step samples `group_size` responses per prompt; the KL to the reference is folded into the
reward per token (kl_estimator, k1 by default, as Ziegler et al. 2019), and the advantage is
- `advantage = "rloo"` (Ahmadian et al. 2024): the sequence's return minus the mean of the
  other G-1 samples of its prompt;
- `advantage = "reinforce_pp"` (REINFORCE++, Hu 2025): the reward-to-go whitened over the
  whole batch;
then GRPO's clipped loss (stages/grpo.py) with no KL term. Writes what grpo writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch

from rlhfkit.advantages import ADVANTAGES, kl_penalized_rewards
from rlhfkit.config import key
from rlhfkit.files import UserError
from rlhfkit.rl import loop
from rlhfkit.rl.config import RLConfig
from rlhfkit.rl.rollout import Experience
from rlhfkit.stages.grpo import check, clipped_loss

BASELINES = ("rloo", "reinforce_pp")  # the names in advantages.ADVANTAGES


@dataclass
class Config(RLConfig):
    out: str = key("runs/demo/rloo", "output directory (an HF model dir; checkpoints, metrics.jsonl)")
    advantage: str = key("rloo", "rloo (leave-one-out baseline) | reinforce_pp (REINFORCE++: batch-whitened)")
    loss_reduction: str = key("token", "sequence | token | dr_grpo (as grpo)")


@torch.no_grad()
def rloo_advantages(exp: Experience, kl_coef: float, advantage: str, kl_estimator: str,
                    group_size: int) -> tuple[dict, dict]:
    rewards = kl_penalized_rewards(exp.scores, exp.old_logprobs, exp.ref_logprobs, exp.mask, kl_coef, kl_estimator)
    adv, _ = ADVANTAGES[advantage](rewards, exp.mask, group_size=group_size)
    return {"advantages": adv}, {"rloo/advantage_abs_mean": float(adv.abs().sum() / exp.mask.sum())}


def rloo_loss(model, mb: dict, kl_coef: float, **kw) -> tuple[torch.Tensor, dict]:
    return clipped_loss(model, mb, 0.0, **kw)  # the KL is in the reward already


def run(cfg: Config, make_guard=None) -> None:
    if cfg.advantage not in BASELINES:
        raise UserError(f"advantage '{cfg.advantage}': choose {' or '.join(BASELINES)}")
    check(cfg, "rloo", needs_group=cfg.advantage == "rloo")  # REINFORCE++ has no group baseline
    loop.run(cfg, make_guard=make_guard, algo=loop.Algorithm(
        name="rloo",
        advantages=partial(rloo_advantages, advantage=cfg.advantage, kl_estimator=cfg.kl_estimator,
                           group_size=cfg.group_size),
        loss=partial(rloo_loss, name="rloo", clip=cfg.clip, clip_high=cfg.clip_high, reduction=cfg.loss_reduction,
                     max_len=cfg.max_new_tokens, temperature=cfg.temperature)))
