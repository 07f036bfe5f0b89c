"""What an RL run loads before its first step: the tokenizer, policy and reference, the prompts."""

from __future__ import annotations

import torch

from rlhfkit import distributed
from rlhfkit.files import UserError
from rlhfkit.rewards.spec import Reward


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


def load_models(model: str, ref_model: str, seed: int, lora: bool, lora_r: int, lora_alpha: int,
                lora_dropout: float, threads: int):
    """-> tokenizer, policy (LoRA-wrapped if asked, in train mode), reference (None: the policy
    with its adapters off)."""
    from rlhfkit.models import add_lora, eos_token_ids, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model)
    if not tokenizer.chat_template:
        raise UserError(f"{model}: the tokenizer has no chat template")
    torch.manual_seed(seed)
    policy = load_causal_lm(model)
    policy.generation_config.eos_token_id = eos_token_ids(policy, tokenizer)
    ref = None
    if not lora or (ref_model and ref_model != model):
        ref = load_causal_lm(ref_model or model).eval().requires_grad_(False)
    if lora:
        # the base weights stay frozen, so with adapters disabled the policy *is* the reference:
        # no second copy of the weights
        policy = add_lora(policy, lora_r, lora_alpha, lora_dropout)
    policy.train()
    distributed.set_threads(policy, threads)
    return tokenizer, policy, ref
