"""PPO with a learned critic, as in InstructGPT (Ouyang et al. 2022) and Ziegler et al. 2019.

    rlhfkit ppo --set model=runs/demo/sft --set reward=rm:runs/demo/rm \\
                --set prompts=runs/demo/world/prompts_jokes.jsonl --set value_init=rm:runs/demo/rm
    rlhfkit ppo --set reward=math --set prompts=runs/demo/world/prompts_math.jsonl ...
    torchrun --nproc-per-node 2 -m rlhfkit ppo --config f.toml

Each step samples `group_size` responses per prompt and then, in order:
1. per-token rewards r_t = -beta * KL_t(policy || ref) (kl_estimator: k1 as the papers, or k3),
   plus the sequence's score on its last token (`missing_eos_penalty` off the score of a
   completion that never ends); optionally whitened (`whiten_rewards`, scale only);
2. advantages by GAE(gamma, lam) against the critic's values at rollout time, whitened;
3. `ppo_epochs` passes over `num_minibatches` minibatches: clipped surrogate + vf_coef x the
   clipped value loss, one AdamW over the policy and the critic;
4. beta follows the adaptive controller (`kl_controller = "adaptive"`: towards kl_target nats
   per sequence over kl_horizon samples) or stays fixed.
The critic is a separate model: a copy of the policy's transformer with a zero-initialised
scalar head (`value_init = "policy"`), or the reward model's transformer and head
(`value_init = "rm:PATH"`; for an ensemble dir, its first member). The reference is a frozen
copy of `ref_model` (or, with `lora = true`, the policy with its adapters disabled).
Writes what grpo writes; the checkpoint holds the critic too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn

from rlhfkit.advantages import ADVANTAGES, kl_penalized_rewards, whiten
from rlhfkit.config import key
from rlhfkit.files import UserError
from rlhfkit.losses import ppo_policy_loss, ppo_value_loss
from rlhfkit.rl import loop
from rlhfkit.rl.config import RLConfig
from rlhfkit.rl.rollout import Experience, response_logprobs
from rlhfkit.rl.update import rollout_weights


@dataclass
class Config(RLConfig):
    out: str = key("runs/demo/ppo", "output directory (an HF model dir; checkpoints, metrics.jsonl)")
    group_size: int = key(1, "samples per prompt")
    ppo_epochs: int = key(4, "passes over each rollout")
    kl_coef: float = key(0.05, "initial beta of the per-token KL penalty in the reward")
    kl_controller: str = key("adaptive", "fixed | adaptive (Ziegler et al. 2019)")
    value_init: str = key("policy", "critic init: policy (its transformer + a new head) | rm:PATH (the reward model)")
    vf_coef: float = key(0.1, "weight of the value loss")
    value_clip: float = key(0.2, "clip of the value loss (V may move this far from V_old per rollout)")
    gamma: float = key(1.0, "discount")
    lam: float = key(0.95, "GAE lambda")
    whiten_rewards: bool = key(False, "rescale the per-token rewards to unit std before GAE (TRL's whiten_rewards)")


class ValueModel(nn.Module):
    """A transformer body and a scalar head: V(state) at every position, (n, L)."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state
        return self.head(h).squeeze(-1).float()


def load_critic(value_init: str, policy_spec: str, vocab_size: int) -> ValueModel:
    from transformers import AutoModelForSequenceClassification

    from rlhfkit.models import _from_pretrained, load_causal_lm

    if value_init == "policy":
        lm = load_causal_lm(policy_spec)
        body = getattr(lm, lm.base_model_prefix)
        # zero head: V = 0 everywhere at first, a neutral baseline rather than noise
        head = nn.Linear(lm.config.hidden_size, 1)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        return ValueModel(body, head)
    if not value_init.startswith("rm:"):
        raise UserError(f"value_init '{value_init}': expected policy or rm:PATH")
    path = Path(value_init[3:])
    if path.is_dir() and not (path / "config.json").is_file():  # an ensemble: its members are subdirs
        members = sorted(p for p in path.iterdir() if (p / "config.json").is_file())
        if not members:
            raise UserError(f"{path}: neither a reward model dir nor an ensemble of them")
        path = members[0]
    rm = _from_pretrained(AutoModelForSequenceClassification, str(path), num_labels=1)
    if rm.config.vocab_size != vocab_size:
        raise UserError(f"{path}: reward model vocabulary ({rm.config.vocab_size}) differs from the policy's ({vocab_size})")
    return ValueModel(getattr(rm, rm.base_model_prefix), rm.score)


class ActorCritic(nn.Module):
    """Policy and critic in one module: one optimizer, one checkpoint, one DDP wrapper."""

    def __init__(self, policy: nn.Module, critic: ValueModel, temperature: float):
        super().__init__()
        self.policy, self.critic, self.temperature = policy, critic, temperature

    def values(self, inputs: dict) -> torch.Tensor:
        """(n, T): V at the state before each response token (the positions whose logits sample it)."""
        T = inputs["T"]
        v = self.critic(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"])
        return v[:, -(T + 1):-1]

    def forward(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return response_logprobs(self.policy, inputs, self.temperature), self.values(inputs)


def actor_critic(policy: nn.Module, value_init: str, model_spec: str, seed: int,
                 temperature: float) -> tuple[ActorCritic, Callable]:
    """The module PPO trains (policy + critic) and the critic the rollout reads."""
    torch.manual_seed(seed)
    model = ActorCritic(policy, load_critic(value_init, model_spec, policy.config.vocab_size), temperature)
    model.critic.train()
    return model, model.values


@torch.no_grad()
def ppo_advantages(exp: Experience, kl_coef: float, kl_estimator: str, whiten_rewards: bool, gamma: float,
                   lam: float) -> tuple[dict, dict]:
    """Per-token rewards (the score on the last token, -kl_coef * KL_t on every token) -> GAE
    advantages, whitened over the batch, and the critic's targets (returns = A + V)."""
    rewards = kl_penalized_rewards(exp.scores, exp.old_logprobs, exp.ref_logprobs, exp.mask, kl_coef, kl_estimator)
    if whiten_rewards:
        rewards = whiten(rewards, exp.mask, shift_mean=False)
    advantages, returns = ADVANTAGES["gae"](rewards, exp.mask, values=exp.values, gamma=gamma, lam=lam)
    metrics = {"ppo/returns_mean": float((returns * exp.mask).sum() / exp.mask.sum())}
    return {"advantages": whiten(advantages, exp.mask), "returns": returns}, metrics


def ppo_loss(model: ActorCritic, mb: dict, kl_coef: float, clip: float, clip_high: float, value_clip: float,
             vf_coef: float) -> tuple[torch.Tensor, dict]:
    """Clipped surrogate + vf_coef x clipped value loss. Both are token sums over the global
    minibatch's token count: exact under gradient accumulation and DDP. kl_coef is unused: PPO's
    KL is in the reward (ppo_advantages)."""
    logprobs, values = model(mb)
    weights, is_met = rollout_weights(mb["old_logprobs"], mb)  # the sampler/trainer mismatch (is_correction)
    pg, pm = ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb["mask"], clip=clip,
                             clip_high=clip_high or None, normalizer=mb["tokens_total"], weights=weights)
    vf, vm = ppo_value_loss(values, mb["values"], mb["returns"], mb["mask"], clip=value_clip,
                            normalizer=mb["tokens_total"])
    return pg + vf_coef * vf, {**pm, **vm, **is_met}


def run(cfg: Config, make_guard=None) -> None:
    loop.run(cfg, make_guard=make_guard, algo=loop.Algorithm(
        name="ppo",
        model=partial(actor_critic, value_init=cfg.value_init, model_spec=cfg.model, seed=cfg.seed,
                      temperature=cfg.temperature),
        advantages=partial(ppo_advantages, kl_estimator=cfg.kl_estimator, whiten_rewards=cfg.whiten_rewards,
                           gamma=cfg.gamma, lam=cfg.lam),
        loss=partial(ppo_loss, clip=cfg.clip, clip_high=cfg.clip_high, value_clip=cfg.value_clip,
                     vf_coef=cfg.vf_coef)))
