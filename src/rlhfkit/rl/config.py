"""The keys every RL stage shares (RLConfig), the checks on their sizes, and the small frozen
specs the library functions take instead of a stage's whole config."""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import key
from rlhfkit.files import UserError
from rlhfkit.guard import GuardKeys
from rlhfkit.rewards.verifiers import DEFAULT_FORMAT_REGEX

ROLLOUT_QUANTS = ("none", "int8")  # generation/quant.py
IS_CORRECTIONS = ("none", "tis", "mis")  # the names in rlhfkit.losses.IS_CORRECTIONS (kept cheap to import)


@dataclass
class _RLKeys:
    out: str = key("runs/demo/rl", "output directory (an HF model dir; checkpoints, metrics.jsonl)")
    model: str = key("runs/demo/sft", "policy init: model dir, .gguf file or hub id")
    ref_model: str = key("", "reference for the KL (default: `model`; with lora, the base with adapters off)")
    prompts: str = key("", "prompts JSONL: {'prompt': str} or {'messages': [...]} per line; other fields reach the reward")
    eval_prompts: str = key("", "held-out prompts JSONL for eval/* metrics (empty: no eval)")
    reward: str = key("math", "verifiers joined by + (math, format), rm:PATH, or module:function")
    gold: str = key("", "a score logged beside the reward, never trained on (rollout/gold_mean, eval/gold_mean): "
                        "e.g. rlhfkit.rewards.gold:joke, to watch the proxy reward over-optimise")
    format_regex: str = key(DEFAULT_FORMAT_REGEX, "the `format` verifier's regex (re.search)")
    rm_uncertainty_k: float = key(0.0, "rm:PATH reward = ensemble mean - k * std")
    missing_eos_penalty: float = key(0.0, "subtracted from the reward of completions that never end")
    seed: int = key(0, "seed for prompt order, sampling and minibatch order")
    max_steps: int = key(100, "RL steps (one rollout and its updates each)")
    prompts_per_step: int = key(16, "prompts per step, summed over all processes")
    group_size: int = key(4, "samples per prompt")
    max_prompt_len: int = key(256, "prompts keep their last N tokens")
    max_new_tokens: int = key(64, "response budget (stop: the model's eos tokens)")
    temperature: float = key(1.0, "sampling temperature (the loss uses the same tempered distribution)")
    top_p: float = key(1.0, "nucleus sampling")
    generation_batch_size: int = key(0, "rows per generate call; samples are a pure function of (seed, step, call), "
                                        "so one value gives the same samples on any number of processes "
                                        "(0: each process's share in one call)")
    backend: str = key("torch", "generation backend: torch (ours), hf")
    rollout_quant: str = key("none", "none | int8: sample from int8 copies of the policy's linear layers (Llama "
                                     "models, torch backend), re-quantised after each optimizer step",
                             check=lambda v: None if v in ROLLOUT_QUANTS else f"must be one of {', '.join(ROLLOUT_QUANTS)}")
    is_correction: str = key("none", "none | tis | mis: correct the policy loss for the sampler/trainer mismatch "
                                     "(tis: weight min(pi_train / pi_sample, is_cap) per token; mis: mask tokens above it)",
                             check=lambda v: None if v in IS_CORRECTIONS else f"must be one of {', '.join(IS_CORRECTIONS)}")
    is_cap: float = key(2.0, "the ratio pi_train / pi_sample above which tis caps and mis masks a token",
                        check=lambda v: None if v > 0 else "must be > 0")
    learning_rate: float = key(1e-5, "learning rate (AdamW)")
    warmup_steps: int = key(0, "linear warmup steps")
    min_lr_ratio: float = key(1.0, "cosine decay to this fraction of the peak (1: constant)")
    weight_decay: float = key(0.0, "AdamW weight decay on matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off)")
    ppo_epochs: int = key(1, "passes over each rollout")
    num_minibatches: int = key(1, "optimizer steps per pass")
    micro_batch_size: int = key(0, "rows per forward pass (gradient accumulation); 0: from micro_batch_tokens")
    micro_batch_tokens: int = key(2048, "with micro_batch_size = 0, padded [prompt | response] tokens per forward pass: "
                                        "rows = tokens // the batch's padded length, so memory follows the length")
    clip: float = key(0.2, "ratio clip eps")
    clip_high: float = key(0.0, "upper ratio clip (DAPO clip-higher; 0: same as clip)")
    kl_coef: float = key(0.05, "KL-to-reference coefficient (initial value with kl_controller = adaptive)")
    kl_estimator: str = key("k1", "per-token KL estimator where the KL goes into the reward: k1, k2, k3")
    kl_controller: str = key("fixed", "fixed | adaptive (Ziegler et al. 2019)")
    kl_target: float = key(6.0, "adaptive: target KL per sequence (nats)")
    kl_horizon: float = key(10000.0, "adaptive: horizon in samples")
    eval_every: int = key(10, "evaluate every N steps (and before the first; 0: only at the ends)")
    eval_temperature: float = key(0.0, "eval sampling temperature (0: greedy)")
    eval_max_prompts: int = key(0, "evaluate on the first N eval prompts (0: all)")
    save_every: int = key(0, "checkpoint every N steps, plus an HF dir out/step-N (0: only at the end)")
    keep_checkpoints: int = key(2, "checkpoints kept on disk")
    lora: bool = key(False, "train LoRA adapters only (merged into the saved model)")
    lora_r: int = key(16, "LoRA rank")
    lora_alpha: int = key(32, "LoRA alpha")
    lora_dropout: float = key(0.0, "LoRA dropout (non-zero breaks exact resume)")
    threads: int = key(0, "CPU threads per process (0: 1 or all cores, whichever a start-up probe finds faster)")


@dataclass
class RLConfig(GuardKeys, _RLKeys):
    """Keys common to ppo, grpo and rloo (each stage adds its own and may change defaults), then the
    guard's (rlhfkit.guard.GuardKeys: guard, guard_kl_budget, ...)."""


def check_sizes(cfg: RLConfig, world: int) -> int:
    """-> rows per step B; every split the step makes must be even."""
    B = cfg.prompts_per_step * cfg.group_size
    gen = cfg.generation_batch_size or B // world
    if cfg.temperature <= 0:
        raise UserError("temperature must be > 0 for RL rollouts (eval_temperature may be 0)")
    if B % world or gen <= 0 or B % gen or (B // gen) % world:
        raise UserError(f"prompts_per_step x group_size = {B} rows must split into generate calls of "
                        f"{gen} rows, evenly over {world} process(es)")
    if B % (cfg.num_minibatches * world):
        raise UserError(f"{B} rows per step do not split into num_minibatches={cfg.num_minibatches} "
                        f"x {world} process(es)")
    return B


@dataclass(frozen=True)
class RolloutSpec:
    """How a step samples and scores its rollout (and how eval samples): built once by the loop."""
    group_size: int  # samples per prompt, contiguous in the rollout
    max_new_tokens: int
    temperature: float  # the loss uses the same tempered distribution
    top_p: float
    generation_batch_size: int  # rows per generate call (resolved: never 0)
    micro_batch_size: int  # rows per no-grad forward (0: from micro_batch_tokens)
    seed: int
    backend: str  # generation backend: torch | hf
    missing_eos_penalty: float  # subtracted from the score of a completion that never ends
    micro_batch_tokens: int = 2048  # padded tokens per forward when micro_batch_size is 0

    @classmethod
    def of(cls, cfg: RLConfig, world: int) -> RolloutSpec:
        B = cfg.prompts_per_step * cfg.group_size
        return cls(cfg.group_size, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
                   max(1, cfg.generation_batch_size or B // world), cfg.micro_batch_size, cfg.seed, cfg.backend,
                   cfg.missing_eos_penalty, cfg.micro_batch_tokens)


@dataclass(frozen=True)
class UpdateSpec:
    """How a step turns its rollout into optimizer steps."""
    ppo_epochs: int  # passes over the rollout
    num_minibatches: int  # optimizer steps per pass
    micro_batch_size: int  # rows per forward/backward (gradient accumulation; 0: from micro_batch_tokens)
    grad_clip: float  # global gradient norm (0: off)
    seed: int  # the minibatch order is a pure function of (seed, step, epoch)
    micro_batch_tokens: int = 2048  # padded tokens per forward/backward when micro_batch_size is 0
    is_correction: str = "none"  # rollout correction (losses.IS_CORRECTIONS), read by the losses via the micro-batch
    is_cap: float = 2.0
    rollout_quant: str = "none"  # the sampler's numerics: "none" means the trainer's own

    @classmethod
    def of(cls, cfg: RLConfig) -> UpdateSpec:
        return cls(cfg.ppo_epochs, cfg.num_minibatches, cfg.micro_batch_size, cfg.grad_clip, cfg.seed,
                   cfg.micro_batch_tokens, cfg.is_correction, cfg.is_cap, cfg.rollout_quant)
