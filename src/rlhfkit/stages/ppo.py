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

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from rlhfkit import distributed, rl
from rlhfkit.advantages import KL_CONTROLLERS, gae, kl_penalized_rewards, whiten
from rlhfkit.config import key, save_config
from rlhfkit.files import UserError
from rlhfkit.losses import KL_ESTIMATORS, ppo_policy_loss, ppo_value_loss
from rlhfkit.rewards.spec import resolve_gold, resolve_reward
from rlhfkit.training import Checkpoints, MetricsLog, Timer, batch_indices, lr_at, make_optimizer, progress


@dataclass
class Config(rl.RLConfig):
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
        return rl.response_logprobs(self.policy, inputs, self.temperature), self.values(inputs)


def run(cfg: Config) -> None:
    from rlhfkit.models import count_parameters, eos_token_ids, save_model

    rank, world = distributed.setup()
    if cfg.kl_controller not in KL_CONTROLLERS or cfg.kl_estimator not in KL_ESTIMATORS:
        raise UserError(f"kl_controller must be one of {', '.join(KL_CONTROLLERS)} and kl_estimator one of "
                        f"{', '.join(KL_ESTIMATORS)}")
    B = rl.check_sizes(cfg, world)
    out = Path(cfg.out)

    # ---- models (policy + critic, reference), reward, prompts
    tokenizer, policy, ref = rl.load_models(cfg)
    eos = eos_token_ids(policy, tokenizer)
    torch.manual_seed(cfg.seed)
    model = ActorCritic(policy, load_critic(cfg.value_init, cfg.model, policy.config.vocab_size), cfg.temperature)
    model.critic.train()
    reward = resolve_reward(cfg.reward, cfg.format_regex, cfg.rm_uncertainty_k)
    gold = resolve_gold(cfg.gold)  # logged only: the proxy-vs-gold plot
    records = rl.load_prompts(cfg.prompts, tokenizer, reward, cfg.max_prompt_len)
    eval_records = (rl.load_prompts(cfg.eval_prompts, tokenizer, reward, cfg.max_prompt_len, cfg.eval_max_prompts)
                    if cfg.eval_prompts else [])

    # ---- optimizer (policy and critic together), KL controller, resume
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    kl_ctl = (KL_CONTROLLERS["adaptive"](cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
              if cfg.kl_controller == "adaptive" else KL_CONTROLLERS["fixed"](cfg.kl_coef))
    ckpts = Checkpoints(out, cfg.keep_checkpoints, config=cfg)
    step = 0
    if (latest := ckpts.latest()) is not None:
        state = ckpts.load(latest, model, optimizer)
        step, kl_ctl.value = state["step"], state["extra"]["kl_coef"]
    ddp_model = distributed.wrap_ddp(model)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", "ppo")
        print(f"ppo: {count_parameters(policy) / 1e6:.2f}M policy + {count_parameters(model.critic) / 1e6:.2f}M "
              f"critic parameters, {len(records)} prompts, {B} rows/step, {cfg.max_steps} steps, reward "
              f"{'+'.join(reward.names)}, {world} process(es)" + (f", resuming at step {step}" if step else ""))
    log = MetricsLog(out, resume_step=step)
    samples_log = rl.SamplesLog(out, step)

    def do_eval(at: int) -> dict:
        metrics, samples = rl.evaluate(policy, tokenizer, eval_records, reward, cfg, at, eos, gold=gold)
        samples_log.log(samples)
        return metrics

    if step == 0 and eval_records:
        log.log(0, do_eval(0))

    def loss_fn(m, mb):
        logprobs, values = m(mb)
        # both losses are token sums over the global minibatch's token count: exact under
        # gradient accumulation and DDP (see training.backward_micro_batches)
        pg, pm = ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mb["mask"], clip=cfg.clip,
                                 clip_high=cfg.clip_high or None, normalizer=mb["tokens_total"])
        vf, vm = ppo_value_loss(values, mb["values"], mb["returns"], mb["mask"], clip=cfg.value_clip,
                                normalizer=mb["tokens_total"])
        return pg + cfg.vf_coef * vf, {**pm, **vm}

    bar = progress(cfg.max_steps, step, "ppo")
    while step < cfg.max_steps:
        timer = Timer()
        lr = lr_at(step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = [records[i] for i in batch_indices(step, cfg.prompts_per_step, len(records), cfg.seed)]
        model.eval()  # no dropout in the no-grad forwards
        exp = rl.collect(policy, ref, model.values, tokenizer, batch, reward, cfg, step, eos, gold)
        model.train()
        rollout_s = timer.lap()

        # rewards -> GAE advantages (whitened over the batch) and value targets
        rewards = kl_penalized_rewards(exp.scores, exp.old_logprobs, exp.ref_logprobs, exp.mask, kl_ctl.value,
                                       cfg.kl_estimator)
        if cfg.whiten_rewards:
            rewards = whiten(rewards, exp.mask, shift_mean=False)
        advantages, returns = gae(rewards, exp.values, exp.mask, cfg.gamma, cfg.lam)
        advantages = whiten(advantages, exp.mask)
        metrics = {**exp.metrics, "ppo/returns_mean": float((returns * exp.mask).sum() / exp.mask.sum())}
        metrics.update(rl.update(ddp_model, params, optimizer, exp, {"advantages": advantages, "returns": returns},
                                 loss_fn, cfg, step))
        train_s = timer.lap()
        kl_ctl.update(metrics["policy/kl_ref"], B)
        step += 1

        tokens = metrics.pop("_generated_tokens")
        step_s = rollout_s + train_s
        metrics.update({"train/lr": lr, "ppo/kl_coef": kl_ctl.value, "time/step_s": step_s,
                        "time/rollout_s": rollout_s, "time/train_s": train_s, "time/tokens_per_s": tokens / step_s})
        if eval_records and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
            metrics.update(do_eval(step))
            metrics["time/eval_s"] = timer.lap()
        log.log(step, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", kl=f"{metrics['policy/kl_ref']:.3f}",
                        refresh=False)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps:
            if cfg.save_every and distributed.is_main():
                save_model(policy, tokenizer, out / f"step-{step}")
            ckpts.save(step, model, optimizer, {"kl_coef": kl_ctl.value})
        distributed.barrier()
    bar.close()

    if distributed.is_main():
        save_model(policy, tokenizer, out)
        print(f"ppo: done at step {step} -> {out}")
    distributed.barrier()
