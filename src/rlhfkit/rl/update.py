"""A step's update: ppo_epochs x num_minibatches optimizer steps over the rollout, each over
micro-batches whose losses add up to the global minibatch's loss exactly (any number of ranks)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import torch

from rlhfkit import distributed
from rlhfkit.losses import IS_CORRECTIONS, masked_mean
from rlhfkit.rl.config import UpdateSpec
from rlhfkit.rl.rollout import Experience, entropy, rank_world, row_logprobs, stream_seed, token_logits


def own_logprobs(model, mb: dict, temperature: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """The training forward of a micro-batch: -> logprobs (n, T) with grad, the logprobs the
    ratio is taken against (the rollout's, or these detached when collect skipped them), and
    the metrics collect left out in that case (policy/entropy, rollout/logprob_gap)."""
    m = mb["mask"]
    logits = token_logits(model, mb, temperature)  # (M, V): the response tokens only
    logprobs = row_logprobs(logits, mb)
    if mb.get("old_logprobs") is not None:
        return logprobs, mb["old_logprobs"], {}
    with torch.no_grad():
        lp = logprobs.detach()
        met = {"policy/entropy": float(entropy(logits).mean()) if len(logits) else 0.0,
               "rollout/logprob_gap": float(masked_mean((mb["sampler_logprobs"] - lp).abs(), m))}
        if mb.get("sampler_quantized") and mb.get("ref_logprobs") is not None:
            # collect's policy/kl_ref came from the sampler's logprobs, which an int8 sampler
            # biases (SmolLM2: ~0.04 nats per token, 1.7 per sequence before any update): the
            # trainer's replace it, for the metric, the KL controller and the guard
            met["policy/kl_ref"] = float(torch.where(m, lp - mb["ref_logprobs"], 0.0).sum(1).mean())
    return logprobs, lp, met


def micro_batches(exp: Experience, rows: torch.Tensor, totals: dict, tensors: dict[str, torch.Tensor],
                  spec: UpdateSpec) -> list[dict]:
    """This rank's rows of a minibatch as loss_fn's micro-batches: model inputs, the global
    minibatch's totals, and each (B, T) tensor sliced to the micro-batch's rows and length."""
    mbs = []
    for part in exp.micro_batches(rows, spec.micro_batch_size, spec.micro_batch_tokens):
        inp = exp.inputs(part)
        r, t = inp["rows"], inp["T"]
        mbs.append({**inp, **totals, **{n: v[r, :t] for n, v in tensors.items()}})
    return mbs


def rollout_weights(old_logprobs: torch.Tensor, mb: dict) -> tuple[torch.Tensor | None, dict]:
    """The rollout correction's per-token weights for a micro-batch's policy loss (None: none), from
    the trainer's old_logprobs and the sampler's (mb["sampler_logprobs"]): the spec's
    is_correction / is_cap, which `update` puts in every micro-batch."""
    name = mb.get("is_correction", "none")
    if name == "none":
        return None, {}
    return IS_CORRECTIONS[name](old_logprobs, mb["sampler_logprobs"], mb["mask"], mb["is_cap"])


def update(train_model, params: list, optimizer, exp: Experience, per_row: dict[str, torch.Tensor],
           loss_fn: Callable, spec: UpdateSpec, step: int) -> dict:
    """spec.ppo_epochs x spec.num_minibatches optimizer steps over the rollout; -> mean metrics.

    per_row: extra (B, T) tensors for the loss (advantages, returns ...), sliced per micro-batch
    into `mb` beside the model inputs and exp's old/ref logprobs and values.
    loss_fn(model, mb) -> (loss, metrics), the loss already scaled to this micro-batch's share of
    the *global* minibatch (mb["rows_total"], mb["tokens_total"]) so that accumulation over
    micro-batches and DDP's average over ranks give the minibatch's loss exactly.
    """
    from rlhfkit.training import backward_micro_batches, clip_grad_norm

    rank, world = rank_world()
    B = exp.tokens.shape[0]
    mb_rows = B // spec.num_minibatches
    share = mb_rows // world
    tensors = {"old_logprobs": exp.old_logprobs, "ref_logprobs": exp.ref_logprobs, "values": exp.values,
               "sampler_logprobs": exp.sampler_logprobs, **per_row}
    tensors = {n: v for n, v in tensors.items() if v is not None}
    sums: dict[str, float] = defaultdict(float)
    count = 0
    for epoch in range(spec.ppo_epochs):
        perm = torch.randperm(B, generator=torch.Generator().manual_seed(stream_seed(spec.seed, "perm", step, epoch)))
        for k in range(spec.num_minibatches):
            rows = perm[k * mb_rows:(k + 1) * mb_rows]
            totals = {"rows_total": mb_rows, "tokens_total": int(exp.mask[rows].sum()),
                      "is_correction": spec.is_correction, "is_cap": spec.is_cap,
                      "sampler_quantized": spec.rollout_quant != "none"}
            mine = rows[rank * share:(rank + 1) * share]
            mbs = micro_batches(exp, mine, totals, tensors, spec)
            loss, metrics = backward_micro_batches(train_model, mbs, loss_fn, world)
            grad_norm = clip_grad_norm(params, spec.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for n, v in metrics.items():
                sums[n] += v
            sums["train/loss"] += distributed.all_reduce_sum(loss)
            sums["train/grad_norm"] += grad_norm
            count += 1
    # train/* are global already; losses add over ranks; every rank ran the same number of
    # micro-batches, so the mean of the ranks' means is the global mean
    return {n: v / count if n.startswith("train/") else
            distributed.all_reduce_sum(v / count) / (1 if n.endswith("loss") else world)
            for n, v in sorted(sums.items())}
