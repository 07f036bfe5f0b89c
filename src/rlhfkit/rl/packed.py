"""A micro-batch's real response tokens packed into one sequence after its distinct prompts,
which `rl.rollout.token_logits` (HF forward) and `generation.score` (the reference on the fast
path) run instead of the padded batch, and the attention that keeps each packed row to itself."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Packing:
    """Keys are laid out as [the U prompts' Q slots each | the M packed tokens]."""
    prompt_ids: torch.Tensor  # (U, Q) the distinct prompts, left-padded, without their last column
    prompt_mask: torch.Tensor  # (U, Q) bool
    prompt_pos: torch.Tensor  # (U, Q)
    ids: torch.Tensor  # (M,) row by row: the prompt's last token, then response tokens 0..L-2
    pos: torch.Tensor  # (M,)
    see: torch.Tensor  # (M, U * Q + M) bool: the keys each packed token attends to
    # per row: (first, end) of its packed tokens, the keys it attends to (its prompt's real slots,
    # then its own tokens) and the (L, K) mask over them (llama_fast.rows_attention)
    segments: list


def pack(inputs: dict) -> Packing | None:
    """Experience.inputs -> Packing; None where the inputs cannot be packed (responses that are
    not prefixes of their rows, or a prompt of under 2 tokens)."""
    ids, attn, pos, T, mask = (inputs[k] for k in ("input_ids", "attention_mask", "position_ids", "T", "mask"))
    n, P, dev = ids.shape[0], ids.shape[1] - T, ids.device
    lengths = mask.sum(1)
    if P < 2 or int(attn[:, :P].sum(1).min()) < 2 or not bool((mask == (torch.arange(T, device=dev) < lengths[:, None])).all()):
        return None
    Q = P - 1  # each prompt's last token opens its packed rows instead
    uniq, inverse = torch.unique(torch.cat([ids[:, :P], attn[:, :P].long()], 1), dim=0, return_inverse=True)
    U = len(uniq)
    first = torch.zeros(U, dtype=torch.long, device=dev)
    first[inverse] = torch.arange(n, device=dev)  # a row holding each distinct prompt
    prompt_mask = attn[first, :Q]
    # input column Q + t predicts response token t, so the mask selects each row's inputs
    row = torch.arange(n, device=dev).repeat_interleave(lengths)  # (M,) each token's row
    j = torch.arange(T, device=dev).expand(n, T)[mask]  # (M,) its place in the row
    see_prompt = (inverse[row][:, None] == torch.arange(U, device=dev).repeat_interleave(Q)[None]) \
        & prompt_mask.reshape(-1)[None]  # (M, U * Q)
    see_row = (row[:, None] == row[None]) & (j[None] <= j[:, None])  # (M, M) causal within the row
    real = [u * Q + torch.nonzero(prompt_mask[u])[:, 0] for u in range(U)]  # each prompt's real slots
    segments, start = [], 0
    for i, L in enumerate(lengths.tolist()):
        if L:
            keys = torch.cat([real[int(inverse[i])], U * Q + torch.arange(start, start + L, device=dev)])
            p = len(keys) - L
            segments.append((start, start + L, keys, torch.ones(L, p + L, dtype=torch.bool, device=dev).tril(p)))
            start += L
    return Packing(ids[first, :Q], prompt_mask, pos[first, :Q], ids[:, Q:Q + T][mask], pos[:, Q:Q + T][mask],
                   torch.cat([see_prompt, see_row], 1), segments)


_NOW = threading.local()  # .segments: the running forward's, per thread (a server may score on several)


def _hf_segment_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **_):
    """transformers' attention-function signature over this thread's segments (batch 1)."""
    from rlhfkit.generation.llama_fast import rows_attention

    out = rows_attention(query, key, value, _NOW.segments, scaling, dropout if module.training else 0.0)
    return out.transpose(1, 2).contiguous(), None


@contextmanager
def segment_attention(config, segments: list):
    """Within it, the model whose `config` this is attends through `rows_attention` on
    `segments` (registered with transformers as "rlhfkit_segments"); its own attention after.
    The segments are this thread's; the config is the model's, so two threads running the same
    model at once must not both enter (the training loops do not). A forward that recomputes
    later (activation checkpointing) runs its own attention then, on the block mask it was
    given: the same numbers."""
    from transformers import AttentionInterface

    AttentionInterface.register("rlhfkit_segments", _hf_segment_attention)
    before, outer = config._attn_implementation, getattr(_NOW, "segments", None)
    config._attn_implementation, _NOW.segments = "rlhfkit_segments", segments
    try:
        yield
    finally:
        config._attn_implementation, _NOW.segments = before, outer
