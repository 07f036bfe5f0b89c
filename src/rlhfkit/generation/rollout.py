"""What every generation backend returns (`Rollout`), and the inputs they all take: left-padded
prompts and the plain transformers model under DDP and peft wrappers."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    prompt_ids: torch.LongTensor  # (B, P) left-padded with pad_token_id
    prompt_mask: torch.BoolTensor  # (B, P) True on real prompt tokens
    tokens: torch.LongTensor  # (B, T) generated; pad_token_id after a row finished
    logprobs: torch.Tensor  # (B, T) log p(token) under softmax(logits / T); 0 where mask is False
    mask: torch.BoolTensor  # (B, T) True up to and including the eos/stop token
    finished: torch.BoolTensor  # (B,) an eos/stop token was produced (False: hit max_new_tokens)

    def texts(self, tokenizer) -> list[str]:
        """Decoded responses, without the eos/stop token and the padding after it."""
        lengths = self.mask.sum(1) - self.finished.long()  # drop the final eos of finished rows
        return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
                for row, n in zip(self.tokens, lengths.tolist())]


def left_pad(prompts: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, P) with pad on the left, mask (B, P) True on real tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = True
    return ids.to(device), mask.to(device)


def unwrap(model):
    """-> (the module to call, the plain transformers model under DDP and peft)."""
    if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module  # DistributedDataParallel: generation needs no gradient sync
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model, hf
