"""A step's rollout: sample G responses per prompt, score them, run the no-grad forwards
(old and reference logprobs, values), all-gather; and the response forward they share with
the update (`token_logits`: the prompt's KV computed once per distinct prompt, then only the
real response tokens, packed; a frozen reference through the fast path, generation/score.py)."""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import torch

from rlhfkit.losses import masked_mean, token_logprobs
from rlhfkit.models import kv_cache_kwargs, output_kv_cache
from rlhfkit.rewards.spec import Reward
from rlhfkit.rl.config import RolloutSpec
from rlhfkit.rl.packed import pack, segment_attention


def stream_seed(*parts) -> int:
    """A seed for one random stream, from its coordinates (seed, step, chunk ...); no collisions
    between nearby coordinates, unlike seed * K + step."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


@dataclass
class Experience:
    """The global rollout of one step (identical on every rank); (B, T) over response tokens."""
    prompt_ids: list[list[int]]
    tokens: torch.Tensor  # (B, T) long
    mask: torch.Tensor  # (B, T) bool, through the eos token
    finished: torch.Tensor | None = None  # (B,) bool
    rewards: torch.Tensor | None = None  # (B, K) one column per reward term
    scores: torch.Tensor | None = None  # (B,) the reward the policy is trained on (sum of terms - penalties)
    # (B, T) policy before this step's updates (training forward); None when collect was told
    # the update makes one optimizer step: the ratio is then exactly 1 and the loss uses the
    # training forward's own detached logprobs (TRL does the same for num_iterations = 1)
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None  # (B, T) reference
    values: torch.Tensor | None = None  # (B, T) critic at rollout time (PPO)
    sampler_logprobs: torch.Tensor | None = None  # (B, T) what the sampler reported

    def padded_len(self, rows) -> int:
        """Tokens per row of `inputs(rows)`: the longest prompt plus the longest response."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        return max(len(self.prompt_ids[i]) for i in rows.tolist()) + int(self.mask[rows].sum(1).max())

    def micro_batches(self, rows, micro_batch_size: int, token_budget: int) -> list[torch.Tensor]:
        """`rows` in order, cut into micro-batches (`training.micro_batch_sizes`: fixed rows, or
        from the token budget and these rows' padded length)."""
        from rlhfkit.training import micro_batch_sizes

        rows = torch.as_tensor(rows, dtype=torch.long)
        if len(rows) == 0:
            return []
        sizes = micro_batch_sizes(len(rows), self.padded_len(rows), micro_batch_size, token_budget)
        return list(torch.split(rows, sizes))

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
        return plain_response_logits(model, inputs, temperature)
    first = torch.zeros(len(uniq), dtype=torch.long)
    first[inverse] = torch.arange(len(ids))  # a row holding each distinct prompt
    # under DDP the prompt pass goes through the inner module: DDP expects one forward per
    # backward, and a parameter's gradient still reaches its hook once, summed over both uses
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    pre = inner(input_ids=ids[first, :P], attention_mask=attn[first, :P], position_ids=pos[first, :P],
                logits_to_keep=1, use_cache=True)
    cache = output_kv_cache(pre)
    if not hasattr(cache, "batch_select_indices"):  # a model without a re-indexable KV cache
        return plain_response_logits(model, inputs, temperature)
    cache.batch_select_indices(inverse)  # (U, heads, P, hd) -> (n, heads, P, hd), differentiable
    logits = [pre.logits[inverse]]  # (n, 1, V): the last prompt position predicts token 0
    if T > 1:  # response tokens 0..T-2 predict tokens 1..T-1
        out = model(input_ids=ids[:, P:-1], attention_mask=attn[:, :-1], position_ids=pos[:, P:-1],
                    use_cache=True, **kv_cache_kwargs(model, cache))
        logits.append(out.logits)
    return torch.cat(logits, 1).float() / temperature


def token_logits(model, inputs: dict, temperature: float) -> torch.Tensor:
    """(M, V) logits of the response tokens `inputs["mask"]` marks, in row-major order (row 0's
    tokens, then row 1's ...); `to_rows` puts per-token values back in (n, T).

    Only those tokens run: the rows' responses are packed into one sequence after the distinct
    prompts' KV cache (`pack`), a block mask keeping each token to its own prompt and its own
    row's earlier tokens. The pads after a short response cost nothing (`response_logits` pads
    every row to the longest: SmolLM2 GRPO, 16 rows of 8-48 tokens, 462 of 752 positions real),
    and the LM head runs on the M real positions only. Each packed row starts with its prompt's
    last token (run once more, in the row, instead of in the prefill), so the logits come out
    in mask order with no gather or concatenation of (M, V) tensors. Same math as the padded
    forward to fp32 rounding (~1e-6; tests/test_rl.py). Needs an HF model with a DynamicCache
    and sdpa or eager attention, and `pack`'s inputs; anything else takes `response_logits`
    and selects. A frozen Llama on the CPU (the reference) runs through the sampler's fast
    path instead (`generation.score`), its weights reordered once per run.
    """
    mask = inputs["mask"]
    impl = getattr(getattr(_inner(model), "config", None), "_attn_implementation", None)
    packing = pack(inputs) if impl in ("sdpa", "eager") else None
    if packing is None:
        return response_logits(model, inputs, temperature)[mask]
    scorer = frozen_scorer(model)
    if scorer is not None:
        logits = scorer.logits(packing)
        return logits if temperature == 1.0 else logits / temperature
    U, Q = packing.prompt_ids.shape
    # under DDP the prompt pass goes through the inner module: DDP expects one forward per
    # backward, and a parameter's gradient still reaches its hook once, summed over both uses
    pre = _inner(model)(input_ids=packing.prompt_ids, attention_mask=packing.prompt_mask,
                        position_ids=packing.prompt_pos, logits_to_keep=1, use_cache=True)
    cache = output_kv_cache(pre)
    layers = getattr(cache, "layers", None)
    if not layers or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return response_logits(model, inputs, temperature)[mask]
    for layer in layers:  # (U, heads, Q, hd) -> (1, heads, U * Q, hd): slot u * Q + c is prompt u's column c
        layer.keys, layer.values = (x.transpose(0, 1).reshape(1, x.shape[1], U * Q, x.shape[3])
                                    for x in (layer.keys, layer.values))
    block = packing.see[None, None]  # what a recomputing forward (activation checkpointing) attends with
    if impl == "eager":  # eager attention adds its mask
        block = torch.zeros(block.shape, dtype=pre.logits.dtype).masked_fill(~block, torch.finfo(pre.logits.dtype).min)
    with segment_attention(_inner(model).config, packing.segments):  # each row on its own keys only
        out = model(input_ids=packing.ids[None], attention_mask=block, position_ids=packing.pos[None],
                    use_cache=True, **kv_cache_kwargs(model, cache))
    logits = out.logits[0].float()
    return logits if temperature == 1.0 else logits / temperature


_SCORERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # frozen model -> its FrozenScorer


def frozen_scorer(model):
    """The fast-path scorer (generation/score.py) of a frozen Llama on the CPU, made once and
    kept while its weights stay the same; None for anything else (a model that trains, LoRA's
    adapters-off policy, DDP, another architecture, a GPU), which takes the HF forward."""
    from rlhfkit.generation.llama_fast import Unsupported
    from rlhfkit.generation.score import FrozenScorer

    if torch.is_grad_enabled() or not FrozenScorer.fits(model):
        return None
    scorer = _SCORERS.get(model)
    if scorer is False:  # the fast path cannot run it
        return None
    if scorer is None or not scorer.current(model):
        try:
            scorer = _SCORERS[model] = FrozenScorer(model)
        except Unsupported:
            _SCORERS[model] = False
            return None
    return scorer


def to_rows(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(M,) per-token values in `token_logits`' order -> (n, T), 0 where `mask` is False."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def row_logprobs(logits: torch.Tensor, inputs: dict) -> torch.Tensor:
    """`token_logits`' (M, V) logits -> (n, T) log p(response token), 0 after a row's end."""
    targets = inputs["input_ids"][:, -inputs["T"]:][inputs["mask"]]  # (M,) in token_logits' order
    return to_rows(token_logprobs(logits, targets), inputs["mask"])


def _inner(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def plain_response_logits(model, inputs: dict, temperature: float) -> torch.Tensor:
    """`response_logits` by one forward over every row's whole [prompt | response]."""
    ids, attn, pos, T = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"], inputs["T"]
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=T + 1, use_cache=False)
    return out.logits[:, :-1].float() / temperature


def response_logprobs(model, inputs: dict, temperature: float) -> torch.Tensor:
    """(n, T) log p(response token) (trimmed to the rows' longest response; 0 after a row's end)."""
    return row_logprobs(token_logits(model, inputs, temperature), inputs)


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
def collect(policy, ref, critic, tokenizer, records: list[dict], reward: Reward, spec: RolloutSpec, step: int,
            eos_ids: list[int], gold: Reward | None = None, old_logprobs: bool = True,
            quantized=None) -> tuple[Experience, dict]:
    """Sample spec.group_size responses per record, score them and run the no-grad forwards;
    -> (the global rollout, its rollout/ policy/ reward/ metrics).

    `ref` None means the policy with its LoRA adapters disabled; `critic(inputs) -> (n, T)`
    values or None; `gold` scores the same samples for the metrics only (rollout/gold_mean).
    `old_logprobs=False` skips the policy's own forward (a third of the no-grad work): for an
    update of one optimizer step, whose loss can use its forward's detached logprobs; the
    entropy and sampler-gap metrics then come from the update (`own_logprobs`).
    `quantized`: the policy's int8 copies (generation/quant.py) to sample from (rollout_quant);
    the forwards stay fp32, so the sampler's logprobs differ from old_logprobs by the int8 error.
    Each rank samples and scores its generate calls (the call's generator is seeded by
    (seed, step, call)); the results are all-gathered.
    """
    from rlhfkit.generation import generate

    rank, world = rank_world()
    T = spec.max_new_tokens
    rows = [r for r in records for _ in range(spec.group_size)]
    B, chunk = len(rows), spec.generation_batch_size
    n_chunks = B // chunk
    mine = range(rank * n_chunks // world, (rank + 1) * n_chunks // world)
    local_rows = [i for c in mine for i in range(c * chunk, (c + 1) * chunk)]
    tokens, mask, finished, sampler_lp, texts = [], [], [], [], []
    for c in mine:
        g = torch.Generator().manual_seed(stream_seed(spec.seed, "rollout", step, c))
        r = generate(policy, [rows[i]["_ids"] for i in range(c * chunk, (c + 1) * chunk)], max_new_tokens=T,
                     temperature=spec.temperature, top_p=spec.top_p, eos_token_ids=eos_ids,
                     pad_token_id=tokenizer.pad_token_id, generator=g, backend=spec.backend, quantized=quantized)
        tokens.append(_pad_to(r.tokens, T, tokenizer.pad_token_id))
        mask.append(_pad_to(r.mask, T, False))
        finished.append(r.finished)
        sampler_lp.append(_pad_to(r.logprobs, T))
        texts += r.texts(tokenizer)
    local = Experience([rows[i]["_ids"] for i in local_rows], torch.cat(tokens), torch.cat(mask))
    local_records = [rows[i] for i in local_rows]
    rewards = reward(local_records, texts)
    gold_scores = (gold(local_records, texts).sum(1, keepdim=True) if gold is not None
                   else torch.zeros(len(local_rows), 1))

    # no-grad forwards over this rank's rows, in micro-batches
    n = len(local_rows)
    old_lp, ref_lp, values, ent = (torch.zeros(n, T) for _ in range(4))
    for part in local.micro_batches(range(n), spec.micro_batch_size, spec.micro_batch_tokens):
        inp = local.inputs(part)
        sl, t = slice(int(part[0]), int(part[-1]) + 1), inp["T"]
        if old_logprobs:
            logits = token_logits(policy, inp, spec.temperature)  # (M, V): the response tokens only
            old_lp[sl, :t] = row_logprobs(logits, inp)
            ent[sl, :t] = to_rows(entropy(logits), inp["mask"])
            del logits
        if ref is None:
            with policy.disable_adapter():
                ref_lp[sl, :t] = response_logprobs(policy, inp, spec.temperature)
        else:
            ref_lp[sl, :t] = response_logprobs(ref, inp, spec.temperature)
        if critic is not None:
            values[sl, :t] = critic(inp)

    m, sampler_lp = local.mask, torch.cat(sampler_lp)
    if not old_logprobs:
        # for the KL metric only (an fp32 sampler and the trainer agree to ~1e-6; an int8 one
        # to rollout/logprob_gap, which the update logs)
        old_lp = sampler_lp
    zero_pad = lambda x: torch.where(m, x, 0.0)
    g = {k: gather_rows(v) for k, v in {
        "tokens": local.tokens, "mask": m, "finished": torch.cat(finished), "rewards": rewards,
        "old_logprobs": zero_pad(old_lp), "ref_logprobs": zero_pad(ref_lp), "values": zero_pad(values),
        "entropy": zero_pad(ent), "logprob_gap": zero_pad((sampler_lp - old_lp).abs()),
        "sampler_logprobs": zero_pad(sampler_lp), "gold_scores": gold_scores}.items()}
    mask, finished, rewards = g["mask"], g["finished"], g["rewards"]
    total = rewards.sum(1)
    # completions that never end get a penalty (TRL's missing_eos_penalty): without it, RL
    # against a length-blind reward drifts into rambling that the budget cuts off
    scores = total - spec.missing_eos_penalty * (~finished).float()
    kl_seq = (torch.where(mask, g["old_logprobs"] - g["ref_logprobs"], 0.0)).sum(1)
    lengths = mask.sum(1).float()
    metrics = {
        "rollout/reward_mean": float(total.mean()), "rollout/reward_std": float(total.std()) if B > 1 else 0.0,
        "rollout/length_mean": float(lengths.mean()), "rollout/finished_frac": float(finished.float().mean()),
        "policy/kl_ref": float(kl_seq.mean()),
        **({"rollout/logprob_gap": float(masked_mean(g["logprob_gap"], mask)),
            "policy/entropy": float(masked_mean(g["entropy"], mask))} if old_logprobs else {}),
        **{f"reward/{name}_mean": float(rewards[:, j].mean()) for j, name in enumerate(reward.names)},
    }
    if gold is not None:
        metrics["rollout/gold_mean"] = float(g["gold_scores"].mean())
    exp = Experience([r["_ids"] for r in rows], g["tokens"], mask, finished, rewards, scores,
                     g["old_logprobs"] if old_logprobs else None, g["ref_logprobs"],
                     g["values"] if critic is not None else None, g["sampler_logprobs"])
    return exp, metrics
