"""Critic-free RL: GRPO (`rlhfkit grpo`) and RLOO / REINFORCE++ (`rlhfkit rloo`).

    rlhfkit grpo --set model=runs/demo/sft --set prompts=runs/demo/world/prompts_math.jsonl \\
                 --set eval_prompts=runs/demo/world/prompts_math_eval.jsonl --set reward=math+format
    rlhfkit rloo --set advantage=reinforce_pp --set reward=rm:runs/demo/rm ...
    torchrun --nproc-per-node 2 -m rlhfkit grpo --config f.toml

Each step samples `group_size` responses for each of `prompts_per_step` prompts, scores them
and improves the policy on them, with no value network:
- grpo (Shao et al. 2024, DeepSeekMath): advantage = the score normalised within its group
  (mean and std of the G samples of the prompt; `scale_rewards = false` drops the std, Dr.
  GRPO), the KL to the reference as a k3 term in the loss, PPO's clipped ratio; reduction
  `loss_reduction = "sequence"` (GRPO), "token" (DAPO) or "dr_grpo" (sum / (B * max_new_tokens)).
- rloo (Ahmadian et al. 2024): the KL folded into the reward per token (kl_estimator, k1 by
  default, as Ziegler et al.), advantage = the sequence's return minus the mean of the other
  G-1 samples of its prompt (`advantage = "rloo"`) or the reward-to-go whitened over the whole
  batch (`advantage = "reinforce_pp"`, REINFORCE++, Hu 2025); the same clipped loss.
Writes an HF dir to `out`, metrics.jsonl, samples.jsonl, checkpoints/ (SIGKILL-exact resume)
and, with save_every, out/step-N/ HF dirs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar


from rlhfkit import distributed, rl
from rlhfkit.advantages import ADVANTAGES, KL_CONTROLLERS, kl_penalized_rewards
from rlhfkit.config import key, save_config
from rlhfkit.files import UserError
from rlhfkit.losses import GRPO_REDUCTIONS, grpo_policy_loss
from rlhfkit.rewards.spec import resolve_gold, resolve_reward
from rlhfkit.training import Checkpoints, MetricsLog, Timer, batch_indices, lr_at, make_optimizer, progress


@dataclass
class Config(rl.RLConfig):
    algo: ClassVar[str] = "grpo"
    out: str = key("runs/demo/grpo", "output directory (an HF model dir; checkpoints, metrics.jsonl)")
    group_size: int = key(8, "samples per prompt (the group)")
    kl_coef: float = key(0.04, "coefficient of the k3 KL-to-reference term in the loss (0: none, as DAPO)")
    loss_reduction: str = key("sequence", "sequence (GRPO) | token (DAPO) | dr_grpo (sum / (B * max_new_tokens))")
    scale_rewards: bool = key(True, "divide advantages by the group's std (false: Dr. GRPO)")


@dataclass
class RLOOConfig(rl.RLConfig):
    algo: ClassVar[str] = "rloo"
    out: str = key("runs/demo/rloo", "output directory (an HF model dir; checkpoints, metrics.jsonl)")
    advantage: str = key("rloo", "rloo (leave-one-out baseline) | reinforce_pp (REINFORCE++: batch-whitened)")
    loss_reduction: str = key("token", "sequence | token | dr_grpo (as grpo)")


# how each algorithm turns a rollout into (advantages (B, T), the KL coefficient left for the loss)

def _grpo_advantages(exp: rl.Experience, cfg: Config, kl_coef: float):
    name = "grpo" if cfg.scale_rewards else "dr_grpo"
    adv, _ = ADVANTAGES[name](exp.scores, exp.mask, group_size=cfg.group_size)
    return adv, kl_coef  # GRPO: the KL is a loss term, not part of the reward


def _rloo_advantages(exp: rl.Experience, cfg: RLOOConfig, kl_coef: float):
    rewards = kl_penalized_rewards(exp.scores, exp.old_logprobs, exp.ref_logprobs, exp.mask, kl_coef,
                                   cfg.kl_estimator)
    adv, _ = ADVANTAGES[cfg.advantage](rewards, exp.mask, group_size=cfg.group_size)
    return adv, 0.0  # the KL is already in the reward


ALGOS = {"grpo": _grpo_advantages, "rloo": _rloo_advantages}


def _check(cfg) -> None:
    if cfg.loss_reduction not in GRPO_REDUCTIONS:
        raise UserError(f"loss_reduction '{cfg.loss_reduction}': choose from {', '.join(GRPO_REDUCTIONS)}")
    if cfg.kl_controller not in KL_CONTROLLERS:
        raise UserError(f"kl_controller '{cfg.kl_controller}': choose from {', '.join(KL_CONTROLLERS)}")
    if getattr(cfg, "advantage", "rloo") not in ("rloo", "reinforce_pp"):
        raise UserError(f"advantage '{cfg.advantage}': choose rloo or reinforce_pp")
    needs_group = cfg.algo == "grpo" or cfg.advantage == "rloo"
    if needs_group and cfg.group_size < 2:
        raise UserError(f"{cfg.algo} needs group_size >= 2 (the baseline comes from the other samples)")


def run(cfg: Config | RLOOConfig) -> None:
    from rlhfkit.models import count_parameters, eos_token_ids, save_model

    algo = cfg.algo
    rank, world = distributed.setup()
    _check(cfg)
    B = rl.check_sizes(cfg, world)
    out = Path(cfg.out)

    # ---- models, reward, prompts
    tokenizer, policy, ref = rl.load_models(cfg)
    eos = eos_token_ids(policy, tokenizer)
    reward = resolve_reward(cfg.reward, cfg.format_regex, cfg.rm_uncertainty_k)
    gold = resolve_gold(cfg.gold)  # logged only: the proxy-vs-gold plot
    records = rl.load_prompts(cfg.prompts, tokenizer, reward, cfg.max_prompt_len)
    eval_records = (rl.load_prompts(cfg.eval_prompts, tokenizer, reward, cfg.max_prompt_len, cfg.eval_max_prompts)
                    if cfg.eval_prompts else [])

    # ---- optimizer, KL controller, resume
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = make_optimizer(policy, cfg.learning_rate, cfg.weight_decay)
    kl_ctl = (KL_CONTROLLERS[cfg.kl_controller](cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
              if cfg.kl_controller == "adaptive" else KL_CONTROLLERS["fixed"](cfg.kl_coef))
    ckpts = Checkpoints(out, cfg.keep_checkpoints, config=cfg)
    step = 0
    if (latest := ckpts.latest()) is not None:
        state = ckpts.load(latest, policy, optimizer)
        step, kl_ctl.value = state["step"], state["extra"]["kl_coef"]
    ddp_policy = distributed.wrap_ddp(policy)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", algo)
        trainable = sum(p.numel() for p in params)
        print(f"{algo}: {count_parameters(policy) / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable), "
              f"{len(records)} prompts x {cfg.group_size} samples, {B} rows/step, {cfg.max_steps} steps, "
              f"reward {'+'.join(reward.names)}, {world} process(es)" + (f", resuming at step {step}" if step else ""))
    log = MetricsLog(out, resume_step=step)
    samples_log = rl.SamplesLog(out, step)

    def do_eval(at: int) -> dict:
        metrics, samples = rl.evaluate(policy, tokenizer, eval_records, reward, cfg, at, eos, gold=gold)
        samples_log.log(samples)
        return metrics

    if step == 0 and eval_records:
        log.log(0, do_eval(0))

    # one optimizer step per rollout: GRPO's ratio is then exactly 1 at that step, so the
    # rollout skips the policy's no-grad forward and the loss takes its own detached logprobs
    # (RLOO needs the rollout's logprobs earlier, for the KL in its reward)
    single_update = algo == "grpo" and cfg.ppo_epochs == 1 and cfg.num_minibatches == 1

    def loss_fn(m, mb):
        logprobs, old, extra = rl.own_logprobs(m, mb, cfg.temperature)
        loss, met = grpo_policy_loss(logprobs, old, mb["ref_logprobs"], mb["advantages"], mb["mask"],
                                     clip=cfg.clip, kl_coef=mb_kl_coef, reduction=cfg.loss_reduction,
                                     clip_high=cfg.clip_high or None, max_len=cfg.max_new_tokens)
        # the reduction is a mean over this micro-batch: weight it by the micro-batch's share
        # of the global minibatch (its rows, or its tokens for the token mean)
        share = (mb["mask"].sum() / mb["tokens_total"] if cfg.loss_reduction == "token"
                 else mb["mask"].shape[0] / mb["rows_total"])
        return loss * share, {**{f"{algo}/{k.split('/', 1)[1]}": v * float(share) if k.endswith("loss") else v
                                 for k, v in met.items()}, **extra}

    bar = progress(cfg.max_steps, step, algo)
    while step < cfg.max_steps:
        timer = Timer()
        lr = lr_at(step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        for g in optimizer.param_groups:
            g["lr"] = lr
        batch = [records[i] for i in batch_indices(step, cfg.prompts_per_step, len(records), cfg.seed)]
        exp = rl.collect(policy, ref, None, tokenizer, batch, reward, cfg, step, eos, gold,
                         old_logprobs=not single_update)
        rollout_s = timer.lap()

        advantages, mb_kl_coef = ALGOS[algo](exp, cfg, kl_ctl.value)
        metrics = {**exp.metrics, f"{algo}/advantage_abs_mean": float(advantages.abs().sum() / exp.mask.sum())}
        metrics.update(rl.update(ddp_policy, params, optimizer, exp, {"advantages": advantages}, loss_fn, cfg, step))
        train_s = timer.lap()
        kl_ctl.update(metrics["policy/kl_ref"], B)
        step += 1

        tokens = metrics.pop("_generated_tokens")
        step_s = rollout_s + train_s
        metrics.update({"train/lr": lr, f"{algo}/kl_coef": kl_ctl.value, "time/step_s": step_s,
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
            ckpts.save(step, policy, optimizer, {"kl_coef": kl_ctl.value})
        distributed.barrier()
    bar.close()

    if distributed.is_main():
        save_model(policy, tokenizer, out)
        print(f"{algo}: done at step {step} -> {out}")
    distributed.barrier()


# `rlhfkit grpo` and `rlhfkit rloo` both land here (COMMANDS maps both names to this module)
STAGES = {
    "grpo": SimpleNamespace(Config=Config, run=run, __doc__=__doc__),
    "rloo": SimpleNamespace(Config=RLOOConfig, run=run,
                            __doc__="RLOO / REINFORCE++: critic-free RL with the KL in the reward.\n\n" + __doc__),
}


def cli(name: str, argv: list[str]) -> int:
    from rlhfkit.cli import _config_stage

    return _config_stage(name, STAGES[name], argv)
