"""What the RL stages (ppo, grpo, rloo) share: config keys, rewards, rollouts, the update loop, eval.

One RL step, as every stage runs it:

    records  = prompts of step s               (batch_indices: a pure function of seed and s)
    rollout  = collect(...)                    each prompt x group_size, sampled in chunks whose
                                               generator is seeded by (seed, s, chunk); scored;
                                               old/ref logprobs (and values) by no-grad forwards;
                                               then all-gathered, so every rank holds the whole
                                               rollout and computes the same advantages
    advantages                                 the stage's own (GAE, group-normalised, RLOO, ...)
    update(...)                                ppo_epochs x num_minibatches optimizer steps; the
                                               minibatch order is a pure function of (seed, s,
                                               epoch) and every rank takes its slice of each

Nothing about a step depends on state other than the weights, AdamW's moments and the KL
coefficient, so checkpoints resume bitwise (CPU) and N processes compute what 1 does.

Shapes follow DESIGN.md: rows of the rollout are B = prompts_per_step * group_size, the G
samples of a prompt contiguous; (B, T) tensors are over response tokens (T = max_new_tokens).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlhfkit import distributed
from rlhfkit.config import key
from rlhfkit.files import UserError
from rlhfkit.losses import masked_mean, token_logprobs
from rlhfkit.rewards.spec import Reward, resolve_gold, resolve_reward  # noqa: F401 (re-exported for the stages)
from rlhfkit.rewards.verifiers import DEFAULT_FORMAT_REGEX




@dataclass
class RLConfig:
    """Keys common to ppo, grpo and rloo (each stage adds its own and may change defaults)."""
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
    learning_rate: float = key(1e-5, "learning rate (AdamW)")
    warmup_steps: int = key(0, "linear warmup steps")
    min_lr_ratio: float = key(1.0, "cosine decay to this fraction of the peak (1: constant)")
    weight_decay: float = key(0.0, "AdamW weight decay on matrices")
    grad_clip: float = key(1.0, "clip the global gradient norm (0: off)")
    ppo_epochs: int = key(1, "passes over each rollout")
    num_minibatches: int = key(1, "optimizer steps per pass")
    micro_batch_size: int = key(8, "rows per forward pass (gradient accumulation)")
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


def stream_seed(*parts) -> int:
    """A seed for one random stream, from its coordinates (seed, step, chunk ...); no collisions
    between nearby coordinates, unlike seed * K + step."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


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


# ----------------------------------------------------------------------------- setup


def load_prompts(path: str, tokenizer, reward: Reward, max_len: int, limit: int = 0) -> list[dict]:
    """Prompt records with `_ids`: the chat-templated prompt, cut to its last max_len tokens."""
    from rlhfkit.data import encode_prompt, read_prompts

    if not path:
        raise UserError("set `prompts` to a prompts JSONL file")
    records = read_prompts(path)[: limit or None]
    reward.check(records, path)
    for r in records:
        r["_ids"] = encode_prompt(tokenizer, r["messages"])[-max_len:]
    return records


def load_models(cfg: RLConfig):
    """-> tokenizer, policy (LoRA-wrapped if asked), reference (None: the policy with its adapters off)."""
    from rlhfkit.models import add_lora, eos_token_ids, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    if not tokenizer.chat_template:
        raise UserError(f"{cfg.model}: the tokenizer has no chat template")
    torch.manual_seed(cfg.seed)
    policy = load_causal_lm(cfg.model)
    policy.generation_config.eos_token_id = eos_token_ids(policy, tokenizer)
    ref = None
    if not cfg.lora or (cfg.ref_model and cfg.ref_model != cfg.model):
        ref = load_causal_lm(cfg.ref_model or cfg.model).eval().requires_grad_(False)
    if cfg.lora:
        # the base weights stay frozen, so with adapters disabled the policy *is* the reference:
        # no second copy of the weights
        policy = add_lora(policy, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    policy.train()
    distributed.set_threads(policy, cfg.threads)
    return tokenizer, policy, ref


# ----------------------------------------------------------------------------- rollouts


@dataclass
class Experience:
    """The global rollout of one step (identical on every rank); (B, T) over response tokens."""
    prompt_ids: list[list[int]]
    tokens: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T) bool, through the eos token
    finished: torch.Tensor  # (B,) bool
    rewards: torch.Tensor  # (B, K) one column per reward term
    scores: torch.Tensor  # (B,) the reward the policy is trained on (sum of terms - penalties)
    # (B, T) policy before this step's updates (training forward); None when collect was told
    # the update makes one optimizer step: the ratio is then exactly 1 and the loss uses the
    # training forward's own detached logprobs (TRL does the same for num_iterations = 1)
    old_logprobs: torch.Tensor | None
    ref_logprobs: torch.Tensor  # (B, T) reference
    values: torch.Tensor | None  # (B, T) critic at rollout time (PPO)
    metrics: dict
    sampler_logprobs: torch.Tensor | None = None  # (B, T) what the sampler reported

    def inputs(self, rows) -> dict:
        """Model inputs for `rows`: [left-padded prompt | response], trimmed to these rows' lengths.

        position_ids count real tokens only, as the sampler's do, so the training forward
        reproduces the sampler's distribution whatever the padding.
        """
        rows = torch.as_tensor(rows, dtype=torch.long)
        prompts = [self.prompt_ids[i] for i in rows.tolist()]
        P = max(len(p) for p in prompts)
        mask = self.mask[rows]
        T = int(mask.sum(1).max())
        ids = torch.zeros(len(prompts), P + T, dtype=torch.long)
        attn = torch.zeros(len(prompts), P + T, dtype=torch.bool)
        for j, p in enumerate(prompts):
            ids[j, P - len(p):P] = torch.tensor(p)
            attn[j, P - len(p):P] = True
        ids[:, P:] = self.tokens[rows, :T]
        attn[:, P:] = mask[:, :T]
        pos = (attn.long().cumsum(1) - 1).clamp(min=0)
        return {"input_ids": ids, "attention_mask": attn, "position_ids": pos, "rows": rows, "T": T,
                "mask": mask[:, :T]}


def response_logits(model, inputs: dict, temperature: float) -> torch.Tensor:
    """(n, T, V) logits of the response tokens under softmax(. / temperature).

    Position P-1+t predicts response token t. The rows of an RL batch share prompts (G samples
    of each), so the prompt runs once per distinct prompt and its KV cache is indexed out to
    the rows that share it: for 2 prompts x 8 samples of 39 + 48 tokens that is 846 instead
    of 1,392 token-forwards, with identical math (the gradient through the shared K/V sums
    over the rows, as the duplicated forward's would). Models without a KV cache (and batches
    with nothing to share) run the plain forward, `logits_to_keep` skipping the LM head on
    the prompt.
    """
    ids, attn, pos, T = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], inputs["T"]
    P = ids.shape[1] - T
    # distinct (prompt ids, prompt mask) rows; `inverse` maps each row to its prompt's index
    uniq, inverse = torch.unique(torch.cat([ids[:, :P], attn[:, :P].long()], 1), dim=0, return_inverse=True)
    if len(uniq) == len(ids):
        return _plain_response_logits(model, inputs, temperature)
    first = torch.zeros(len(uniq), dtype=torch.long)
    first[inverse] = torch.arange(len(ids))  # a row holding each distinct prompt
    # under DDP the prompt pass goes through the inner module: DDP expects one forward per
    # backward, and a parameter's gradient still reaches its hook once, summed over both uses
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    pre = inner(input_ids=ids[first, :P], attention_mask=attn[first, :P], position_ids=pos[first, :P],
                logits_to_keep=1, use_cache=True)
    cache = pre.past_key_values
    if not hasattr(cache, "batch_select_indices"):  # a model without a re-indexable KV cache
        return _plain_response_logits(model, inputs, temperature)
    cache.batch_select_indices(inverse)  # (U, heads, P, hd) -> (n, heads, P, hd), differentiable
    logits = [pre.logits[inverse]]  # (n, 1, V): the last prompt position predicts token 0
    if T > 1:  # response tokens 0..T-2 predict tokens 1..T-1
        out = model(input_ids=ids[:, P:-1], attention_mask=attn[:, :-1], position_ids=pos[:, P:-1],
                    past_key_values=cache, use_cache=True)
        logits.append(out.logits)
    return torch.cat(logits, 1).float() / temperature


def _plain_response_logits(model, inputs: dict, temperature: float) -> torch.Tensor:
    ids, attn, pos, T = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], inputs["T"]
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
    return out.logits[:, :-1].float() / temperature


def response_logprobs(model, inputs: dict, temperature: float) -> torch.Tensor:
    """(n, T) log p(response token) (trimmed to the rows' longest response)."""
    T = inputs["T"]
    return token_logprobs(response_logits(model, inputs, temperature), inputs["input_ids"][:, -T:])


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """(n, T, V) -> (n, T): H = logsumexp(z) - sum softmax(z) z."""
    return torch.logsumexp(logits, -1) - (logits.softmax(-1) * logits).sum(-1)


def _pad_to(x: torch.Tensor, T: int, value=0) -> torch.Tensor:
    return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (each rank holds the same number)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x
    dtype = x.dtype
    x = x.to(torch.float64) if dtype == torch.bool else x  # gloo has no bool all_gather
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts).to(dtype)


@torch.no_grad()
def collect(policy, ref, critic, tokenizer, records: list[dict], reward: Reward, cfg: RLConfig,
            step: int, eos_ids: list[int], gold: Reward | None = None, old_logprobs: bool = True) -> Experience:
    """Sample group_size responses per record, score them and run the no-grad forwards.

    `ref` None means the policy with its LoRA adapters disabled; `critic(inputs) -> (n, T)`
    values or None; `gold` scores the same samples for the metrics only (rollout/gold_mean).
    `old_logprobs=False` skips the policy's own forward (a third of the no-grad work): for an
    update of one optimizer step, whose loss can use its forward's detached logprobs; the
    entropy and sampler-gap metrics then come from the update (`own_logprobs`).
    Each rank samples and scores its chunks; the results are all-gathered.
    """
    from rlhfkit.generation import generate

    rank, world = (distributed_rank_world())
    G, T = cfg.group_size, cfg.max_new_tokens
    rows = [r for r in records for _ in range(G)]
    B = len(rows)
    chunk = cfg.generation_batch_size or B // world
    n_chunks = B // chunk
    mine = range(rank * n_chunks // world, (rank + 1) * n_chunks // world)
    local_rows = [i for c in mine for i in range(c * chunk, (c + 1) * chunk)]
    tokens, mask, finished, samp_lp, texts = [], [], [], [], []
    for c in mine:
        g = torch.Generator().manual_seed(stream_seed(cfg.seed, "rollout", step, c))
        r = generate(policy, [rows[i]["_ids"] for i in range(c * chunk, (c + 1) * chunk)], max_new_tokens=T,
                     temperature=cfg.temperature, top_p=cfg.top_p, eos_token_ids=eos_ids,
                     pad_token_id=tokenizer.pad_token_id, generator=g, backend=cfg.backend)
        tokens.append(_pad_to(r.tokens, T, tokenizer.pad_token_id))
        mask.append(_pad_to(r.mask, T, False))
        finished.append(r.finished)
        samp_lp.append(_pad_to(r.logprobs, T))
        texts += r.texts(tokenizer)
    exp = Experience([rows[i]["_ids"] for i in local_rows], torch.cat(tokens), torch.cat(mask),
                     torch.cat(finished), None, None, None, None, None, {})
    rewards = reward([rows[i] for i in local_rows], texts)
    gold_scores = (gold([rows[i] for i in local_rows], texts).sum(1, keepdim=True) if gold is not None
                   else torch.zeros(len(local_rows), 1))

    # no-grad forwards over this rank's rows, in micro-batches
    n = len(local_rows)
    old_lp, ref_lp, values, ent = (torch.zeros(n, T) for _ in range(4))
    for i in range(0, n, cfg.micro_batch_size):
        inp = exp.inputs(range(i, min(n, i + cfg.micro_batch_size)))
        sl, t = slice(i, i + len(inp["rows"])), inp["T"]
        if old_logprobs:
            logits = response_logits(policy, inp, cfg.temperature)
            old_lp[sl, :t] = token_logprobs(logits, inp["input_ids"][:, -t:])
            ent[sl, :t] = entropy(logits)
            del logits
        if ref is None:
            with policy.disable_adapter():
                ref_lp[sl, :t] = response_logprobs(policy, inp, cfg.temperature)
        else:
            ref_lp[sl, :t] = response_logprobs(ref, inp, cfg.temperature)
        if critic is not None:
            values[sl, :t] = critic(inp)

    m, samp_lp = exp.mask, torch.cat(samp_lp)
    if not old_logprobs:
        old_lp = samp_lp  # for the KL metric only (sampler and trainer agree to ~1e-6)
    local = {"tokens": exp.tokens, "mask": m, "finished": exp.finished, "rewards": rewards,
             "old": torch.where(m, old_lp, 0.0), "ref": torch.where(m, ref_lp, 0.0),
             "values": torch.where(m, values, 0.0), "ent": torch.where(m, ent, 0.0),
             "gap": torch.where(m, (samp_lp - old_lp).abs(), 0.0), "samp": torch.where(m, samp_lp, 0.0),
             "gold": gold_scores}
    g = {k: gather_rows(v) for k, v in local.items()}
    mask, finished, rewards = g["mask"], g["finished"], g["rewards"]
    total = rewards.sum(1)
    # completions that never end get a penalty (TRL's missing_eos_penalty): without it, RL
    # against a length-blind reward drifts into rambling that the budget cuts off
    scores = total - cfg.missing_eos_penalty * (~finished).float()
    kl_seq = (torch.where(mask, g["old"] - g["ref"], 0.0)).sum(1)
    lengths = mask.sum(1).float()
    metrics = {
        "rollout/reward_mean": float(total.mean()), "rollout/reward_std": float(total.std()) if B > 1 else 0.0,
        "rollout/length_mean": float(lengths.mean()), "rollout/finished_frac": float(finished.float().mean()),
        "policy/kl_ref": float(kl_seq.mean()),
        **({"rollout/logprob_gap": float(masked_mean(g["gap"], mask)),
            "policy/entropy": float(masked_mean(g["ent"], mask))} if old_logprobs else {}),
        **{f"reward/{n}_mean": float(rewards[:, j].mean()) for j, n in enumerate(reward.names)},
        "_generated_tokens": float(lengths.sum()),
    }
    if gold is not None:
        metrics["rollout/gold_mean"] = float(g["gold"].mean())
    return Experience([r["_ids"] for r in rows], g["tokens"], mask, finished, rewards, scores,
                      g["old"] if old_logprobs else None, g["ref"], g["values"] if critic is not None else None,
                      metrics, g["samp"])


def own_logprobs(model, mb: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The training forward of a micro-batch: -> logprobs (n, T) with grad, the logprobs the
    ratio is taken against (the rollout's, or these detached when collect skipped them), and
    the metrics collect left out in that case (policy/entropy, rollout/logprob_gap)."""
    logits = response_logits(model, mb, temperature)
    logprobs = token_logprobs(logits, mb["input_ids"][:, -mb["T"]:])
    if mb.get("old_logprobs") is not None:
        return logprobs, mb["old_logprobs"], {}
    with torch.no_grad():
        lp, m = logprobs.detach(), mb["mask"]
        met = {"policy/entropy": float(masked_mean(entropy(logits), m)),
               "rollout/logprob_gap": float(masked_mean((mb["sampler_logprobs"] - lp).abs(), m))}
    return logprobs, lp, met


def distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


# ----------------------------------------------------------------------------- update


def update(train_model, params: list, optimizer, exp: Experience, per_row: dict[str, torch.Tensor],
           loss_fn: Callable, cfg: RLConfig, step: int) -> dict:
    """ppo_epochs x num_minibatches optimizer steps over the rollout; -> mean metrics.

    per_row: extra (B, T) tensors for the loss (advantages, returns ...), sliced per micro-batch
    into `mb` beside the model inputs and exp's old/ref logprobs and values.
    loss_fn(model, mb) -> (loss, metrics), the loss already scaled to this micro-batch's share of
    the *global* minibatch (mb["rows_total"], mb["tokens_total"]) so that accumulation over
    micro-batches and DDP's average over ranks give the minibatch's loss exactly.
    """
    from rlhfkit.training import backward_micro_batches, clip_grad_norm

    rank, world = distributed_rank_world()
    B = exp.tokens.shape[0]
    mb_rows = B // cfg.num_minibatches
    share = mb_rows // world
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for epoch in range(cfg.ppo_epochs):
        perm = torch.randperm(B, generator=torch.Generator().manual_seed(stream_seed(cfg.seed, "perm", step, epoch)))
        for k in range(cfg.num_minibatches):
            rows = perm[k * mb_rows:(k + 1) * mb_rows]
            totals = {"rows_total": mb_rows, "tokens_total": int(exp.mask[rows].sum())}
            mine = rows[rank * share:(rank + 1) * share]
            mbs = []
            for i in range(0, share, cfg.micro_batch_size):
                inp = exp.inputs(mine[i:i + cfg.micro_batch_size])
                r, t = inp["rows"], inp["T"]
                tensors = {"old_logprobs": exp.old_logprobs, "ref_logprobs": exp.ref_logprobs,
                           "values": exp.values, "sampler_logprobs": exp.sampler_logprobs, **per_row}
                tensors = {n: v for n, v in tensors.items() if v is not None}
                mbs.append({**inp, **totals, **{n: v[r, :t] for n, v in tensors.items()}})
            mb_metrics: list[dict] = []

            def fn(m, mb):
                loss, met = loss_fn(m, mb)
                mb_metrics.append(met)
                return loss
            loss = distributed.all_reduce_sum(backward_micro_batches(train_model, mbs, fn, world))
            grad_norm = clip_grad_norm(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for met in mb_metrics:
                for n, v in met.items():
                    # losses come scaled to their micro-batch's share: they add up; the rest average
                    sums[n] += v if n.endswith("loss") else v / len(mb_metrics)
            sums["train/loss"] += loss
            sums["train/grad_norm"] += grad_norm
            count += 1
    # train/* are global already; losses add over ranks; every rank ran the same number of
    # micro-batches, so the mean of the ranks' means is the global mean
    return {n: v / count if n.startswith("train/") else
            distributed.all_reduce_sum(v / count) / (1 if n.endswith("loss") else world)
            for n, v in sorted(sums.items())}


# ----------------------------------------------------------------------------- eval


@torch.no_grad()
def evaluate(policy, tokenizer, records: list[dict], reward: Reward, cfg: RLConfig, step: int,
             eos_ids: list[int], n_samples: int = 3, gold: Reward | None = None) -> tuple[dict, list[dict]]:
    """eval/* metrics on `records` (sharded over ranks), and a few samples (the first records').

    With `gold`, also eval/gold_mean (and each sample's gold score): for the plots, never trained on.
    """
    from rlhfkit.generation import generate

    rank, world = distributed_rank_world()
    # generate calls of a fixed size, dealt round-robin: with the same generation_batch_size
    # every call sees the same batch (padding included) on any number of processes
    chunk = max(1, cfg.generation_batch_size or (cfg.prompts_per_step * cfg.group_size) // world)
    starts = list(range(0, len(records), chunk))[rank::world]
    sums = torch.zeros(len(reward.names) + 3, dtype=torch.float64)  # terms, gold, length, count
    samples = []
    for i in starts:
        recs = records[i:i + chunk]
        g = torch.Generator().manual_seed(stream_seed(cfg.seed, "eval", step, i))
        r = generate(policy, [x["_ids"] for x in recs], max_new_tokens=cfg.max_new_tokens,
                     temperature=cfg.eval_temperature, top_p=cfg.top_p if cfg.eval_temperature > 0 else 1.0,
                     eos_token_ids=eos_ids, pad_token_id=tokenizer.pad_token_id, generator=g, backend=cfg.backend)
        texts = r.texts(tokenizer)
        rew = reward(recs, texts)
        gold_scores = gold(recs, texts).sum(1) if gold is not None else torch.full((len(recs),), float("nan"))
        sums[:-3] += rew.sum(0).double()
        sums[-3] += float(gold_scores.sum()) if gold is not None else 0.0
        sums[-2] += float(r.mask.sum())
        sums[-1] += len(recs)
        samples += [{"step": step, "prompt": x["prompt"], "response": t, "reward": float(v),
                     **({"gold": float(gv)} if gold is not None else {})}
                    for x, t, v, gv in zip(recs, texts, rew.sum(1), gold_scores)][: max(0, n_samples - len(samples))]
    sums = torch.tensor([distributed.all_reduce_sum(float(v)) for v in sums])
    n = max(1.0, float(sums[-1]))
    metrics = {"eval/reward_mean": float(sums[:-3].sum() / n), "eval/length_mean": float(sums[-2] / n)}
    if gold is not None:
        metrics["eval/gold_mean"] = float(sums[-3] / n)
    metrics.update({f"eval/{name}_mean": float(sums[j] / n) for j, name in enumerate(reward.names)})
    if "math" in reward.names:
        metrics["eval/accuracy"] = metrics["eval/math_mean"]
    return metrics, samples


class SamplesLog:
    """`samples.jsonl`: a few eval responses per evaluation (rank 0), truncated on resume like metrics."""

    def __init__(self, out: Path, resume_step: int):
        self.path = Path(out) / "samples.jsonl"
        if not distributed.is_main():
            return
        keep = []
        if resume_step and self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if ln and json.loads(ln)["step"] <= resume_step]
        self.path.write_text("".join(ln + "\n" for ln in keep))

    def log(self, samples: list[dict]) -> None:
        if distributed.is_main():
            with self.path.open("a") as f:
                f.writelines(json.dumps(s) + "\n" for s in samples)
