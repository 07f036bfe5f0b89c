"""The one RL step loop that ppo, grpo and rloo share; a stage adds only its `Algorithm`.

    loop.run(cfg, Algorithm(name="grpo", advantages=..., loss=...), make_guard=None)

Each step: the prompts of step s (`batch_indices`: a pure function of seed and s) -> `collect`
(G samples each, scored, old/ref logprobs and values, all-gathered) -> the algorithm's
advantages -> `update` (ppo_epochs x num_minibatches optimizer steps with the algorithm's
loss) -> the KL controller -> eval (every eval_every steps, and the last) -> metrics.jsonl,
checkpoint. Nothing about a step depends on state other than the weights, AdamW's moments,
the KL coefficient (and the guard's state), so checkpoints resume bitwise (CPU) and N
processes compute what 1 does.

The guard is built once the policy exists, by the stage's factory (None: the one the config's
guard keys make, `rlhfkit.guard.make_guard`; on by default when the reward is rm:)
    guard = make_guard(policy=policy, tokenizer=tokenizer, is_main=rank == 0)   (None: no guard)
(so that it can save the policy it would ship), and called at every eval, step 0 (the
starting policy) included:
    metrics, stop = guard.on_eval(step, records, samples, step_metrics)
records: the eval prompt records; samples: one per record, aligned with them ({"step",
"prompt", "response", "reward"} + "gold" with a gold key), the lines samples.jsonl gets, the
same on every rank; step_metrics: this step's metrics so far (rollout/, policy/kl_ref,
eval/ ...). Its metrics (guard/ ...) are logged with the step; stop=True ends the run after
this step, which is saved as the last step would be. guard.state_dict() -> dict (JSON-able)
goes into each checkpoint and guard.load_state_dict(d) restores it on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.advantages import KL_CONTROLLERS
from rlhfkit.config import save_config
from rlhfkit.files import UserError
from rlhfkit.guard import make_guard as guard_from_keys
from rlhfkit.losses import KL_ESTIMATORS
from rlhfkit.rewards.spec import resolve_gold, resolve_reward
from rlhfkit.rl.config import RLConfig, RolloutSpec, UpdateSpec, check_sizes
from rlhfkit.rl.evaluate import SamplesLog, evaluate
from rlhfkit.rl.rollout import Experience, collect
from rlhfkit.rl.setup import load_models, load_prompts
from rlhfkit.rl.update import update
from rlhfkit.threads import Tuner
from rlhfkit.training import Checkpoints, MetricsLog, Timer, batch_indices, make_optimizer, progress, set_lr


@dataclass(frozen=True)
class Algorithm:
    """What one RL algorithm adds to the loop."""
    name: str  # the stage (config.toml, the progress bar) and the namespace of its metrics
    # (rollout, kl_coef) -> ({name: (B, T)} tensors the loss reads from its micro-batch, metrics)
    advantages: Callable[[Experience, float], tuple[dict[str, torch.Tensor], dict]]
    # (module, micro-batch, kl_coef) -> (loss scaled to the micro-batch's share of the global
    # minibatch, metrics); the micro-batch holds the model inputs, the rollout's old/ref
    # logprobs (and values), the advantages' tensors and rows_total / tokens_total
    loss: Callable[[torch.nn.Module, dict, float], tuple[torch.Tensor, dict]]
    # policy -> (the module the optimizer trains and the checkpoint holds, its critic
    # `values(inputs) -> (n, T)` or None); None: the policy alone
    model: Callable[[torch.nn.Module], tuple[torch.nn.Module, Callable | None]] | None = None
    # False: the update makes one optimizer step, so the rollout skips the policy's no-grad
    # forward and the loss takes its own detached logprobs (`update.own_logprobs`)
    old_logprobs: bool = True


def _rollout_quant(cfg: RLConfig, policy):
    """rollout_quant = "int8": the policy's int8 copies (generation/quant.py); "none": None."""
    if cfg.rollout_quant == "none":
        return None
    from rlhfkit.generation.llama_fast import Unsupported
    from rlhfkit.generation.quant import Int8Weights

    if cfg.backend != "torch":
        raise UserError(f"rollout_quant = {cfg.rollout_quant} needs backend = torch")
    try:
        return Int8Weights(policy)
    except Unsupported as e:
        raise UserError(f"rollout_quant = {cfg.rollout_quant}: {e}") from None


def run(cfg: RLConfig, algo: Algorithm, make_guard: Callable | None = None) -> None:
    from rlhfkit.models import count_parameters, eos_token_ids, save_model

    rank, world = distributed.setup()
    if cfg.kl_controller not in KL_CONTROLLERS or cfg.kl_estimator not in KL_ESTIMATORS:
        raise UserError(f"kl_controller must be one of {', '.join(KL_CONTROLLERS)} and kl_estimator one of "
                        f"{', '.join(KL_ESTIMATORS)}")
    B = check_sizes(cfg, world)
    rollout_spec, update_spec = RolloutSpec.of(cfg, world), UpdateSpec.of(cfg)
    out = Path(cfg.out)

    # ---- models (the policy, and what trains with it), reference, reward, prompts
    tokenizer, policy, ref = load_models(cfg.model, cfg.ref_model, cfg.seed, cfg.lora, cfg.lora_r, cfg.lora_alpha,
                                         cfg.lora_dropout, cfg.threads)
    eos = eos_token_ids(policy, tokenizer)
    module, critic = algo.model(policy) if algo.model is not None else (policy, None)
    reward = resolve_reward(cfg.reward, cfg.format_regex, cfg.rm_uncertainty_k)
    gold = resolve_gold(cfg.gold)  # logged only: the proxy-vs-gold plot
    records = load_prompts(cfg.prompts, tokenizer, reward, cfg.max_prompt_len)
    eval_records = (load_prompts(cfg.eval_prompts, tokenizer, reward, cfg.max_prompt_len, cfg.eval_max_prompts)
                    if cfg.eval_prompts else [])
    if make_guard is None and (eval_records or cfg.guard):
        # the config's guard: on by default with a learned reward (rm:), off with a verifier; it
        # writes OUT/guard.json and OUT/best/ and asks its spot checks through a feedback store
        make_guard = partial(guard_from_keys, cfg, cfg.reward, out, cfg.seed)
    guard = make_guard(policy=policy, tokenizer=tokenizer, is_main=rank == 0) if make_guard is not None else None
    if guard is not None and not eval_records:
        raise UserError("the guard watches the evals: set `eval_prompts`")
    quant = _rollout_quant(cfg, policy)  # int8 copies to sample from, or None

    # ---- optimizer, KL controller, resume
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = make_optimizer(module, cfg.learning_rate, cfg.weight_decay)
    kl_ctl = KL_CONTROLLERS[cfg.kl_controller](cfg.kl_coef, target=cfg.kl_target, horizon=cfg.kl_horizon)
    ckpts = Checkpoints(out, cfg.keep_checkpoints, config=cfg)
    step, extra = ckpts.resume(module, optimizer)
    if step:
        kl_ctl.value = extra["kl_coef"]
        if guard is not None and "guard" in extra:
            guard.load_state_dict(extra["guard"])
    stopped = bool(extra.get("stopped"))  # the guard ended the run at this checkpoint
    ddp_module = distributed.wrap_ddp(module)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.toml", algo.name)
        print(f"{algo.name}: {count_parameters(module) / 1e6:.2f}M parameters "
              f"({sum(p.numel() for p in params) / 1e6:.2f}M trainable), {len(records)} prompts x "
              f"{cfg.group_size} samples, {B} rows/step, {cfg.max_steps} steps, reward {'+'.join(reward.names)}, "
              f"{world} process(es)" + (f", resuming at step {step}" if step else ""))
    log = MetricsLog(out, resume_step=step)
    samples_log = SamplesLog(out, step)

    def eval_and_guard(at: int, metrics: dict) -> bool:
        """Adds eval/ (and guard/) metrics to `metrics`; -> whether the guard stops the run."""
        ev, samples = evaluate(policy, tokenizer, eval_records, reward, rollout_spec, at, eos, cfg.eval_temperature,
                               gold)
        samples_log.log(samples)
        metrics.update(ev)
        if guard is None:
            return False
        guard_metrics, stop = guard.on_eval(at, eval_records, samples, dict(metrics))
        metrics.update(guard_metrics)
        return bool(stop)

    if step == 0 and eval_records:
        first: dict = {}
        stopped = eval_and_guard(0, first)  # stopped at 0: the starting policy is saved, no checkpoint
        log.log(0, first)

    bar = progress(cfg.max_steps, step, algo.name)
    tuner = Tuner.auto()  # threads = 0: re-probes 1 vs all threads when the step rate jumps
    first_step = True
    while step < cfg.max_steps and not stopped:
        timer, threads = Timer(), torch.get_num_threads()
        # re-quantise what the last optimizer step (or a resume's load) changed: part of the step's
        # time; the first step of a process also carries the copies' first quantisation
        quantize_s = (quant.refresh() + (quant.built_s if first_step else 0.0)) if quant is not None else 0.0
        first_step = False
        timer.lap()
        lr = set_lr(optimizer, step, cfg.learning_rate, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio)
        batch = [records[i] for i in batch_indices(step, cfg.prompts_per_step, len(records), cfg.seed)]
        module.eval()  # no dropout in the no-grad forwards
        exp, metrics = collect(policy, ref, critic, tokenizer, batch, reward, rollout_spec, step, eos, gold,
                               old_logprobs=algo.old_logprobs, quantized=quant)
        module.train()
        rollout_s = timer.lap()

        per_row, adv_metrics = algo.advantages(exp, kl_ctl.value)
        metrics.update(adv_metrics)
        loss_fn = partial(algo.loss, kl_coef=kl_ctl.value)
        metrics.update(update(ddp_module, params, optimizer, exp, per_row, loss_fn, update_spec, step))
        train_s = timer.lap()
        kl_ctl.update(metrics["policy/kl_ref"], B)
        step += 1

        step_s = quantize_s + rollout_s + train_s
        tuner.tick(step_s, float(exp.mask.sum()))
        metrics.update({"train/lr": lr, f"{algo.name}/kl_coef": kl_ctl.value, "time/step_s": step_s,
                        "time/rollout_s": rollout_s, "time/train_s": train_s,
                        **({"time/quantize_s": quantize_s} if quant is not None else {}),
                        "time/tokens_per_s": float(exp.mask.sum()) / step_s, "time/threads": threads})
        if eval_records and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.max_steps):
            stopped = eval_and_guard(step, metrics)
            metrics["time/eval_s"] = timer.lap()
        log.log(step, metrics)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}", kl=f"{metrics['policy/kl_ref']:.3f}",
                        refresh=False)
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.max_steps or stopped:
            if cfg.save_every and distributed.is_main():
                save_model(policy, tokenizer, out / f"step-{step}")
            extra = {"kl_coef": kl_ctl.value, **({"guard": guard.state_dict()} if guard is not None else {}),
                     **({"stopped": True} if stopped else {})}
            ckpts.save(step, module, optimizer, extra)
        distributed.barrier()
    bar.close()

    if distributed.is_main():
        save_model(policy, tokenizer, out)
        print(f"{algo.name}: done at step {step}" + (" (stopped by the guard)" if stopped else "") + f" -> {out}")
    distributed.barrier()
