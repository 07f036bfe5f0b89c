"""Corpora, conversations and prompts: reading them (with errors that name file and line),
turning them into token ids and loss masks, and collating batches.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rlhfkit.files import UserError, iter_jsonl, read_text

ROLES = ("system", "user", "assistant")


# ----------------------------------------------------------------------------- pre-training

def is_jsonl(path: str | Path) -> bool:
    return Path(path).name.removesuffix(".gz").endswith(".jsonl")


def read_documents(files: list[str], render=None) -> list[str]:
    """Documents from .txt files (separated by a blank line) and .jsonl files ({'text'}, or
    {'messages'} conversations rendered by `render(messages) -> str`, e.g. the tokenizer's chat
    template, so pre-training learns the chat format too); `.gz` too."""
    docs: list[str] = []
    for name in files:
        path = Path(name)
        if is_jsonl(path):
            for lineno, rec in iter_jsonl(path):
                if render is not None and "messages" in rec:
                    docs.append(render(validate_messages(rec["messages"], f"{path}:{lineno}")))
                elif not isinstance(rec.get("text"), str):
                    raise UserError(f"{path}:{lineno}: expected an object with a string 'text' field"
                                    + (" or a 'messages' list" if render is not None else ""))
                else:
                    docs.append(rec["text"])
        else:
            docs += [d.strip("\n") for d in read_text(path).split("\n\n") if d.strip()]
    if not docs:
        raise UserError(f"no documents in {', '.join(files)}")
    return docs


def pack_documents(docs: list[str], tokenizer, block_size: int, sep_token: str = "<|endoftext|>") -> torch.Tensor:
    """Tokenise, join with a separator token and cut into (N, block_size) blocks.

    Packing wastes no compute on padding; the separator tells the model a new document
    starts (attention still crosses it, as in GPT-2/nanoGPT pre-training). The tail that
    does not fill a block is dropped.
    """
    sep = tokenizer.convert_tokens_to_ids(sep_token)
    if sep is None or sep == tokenizer.unk_token_id:
        sep = tokenizer.eos_token_id
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    flat = torch.tensor([t for doc in ids for t in ([sep] + doc)], dtype=torch.long)
    n = flat.numel() // block_size
    if n == 0:
        raise UserError(f"corpus has {flat.numel()} tokens, fewer than one block of {block_size}")
    return flat[: n * block_size].view(n, block_size)


# ----------------------------------------------------------------------------- conversations

def validate_messages(messages, where: str, need_assistant: bool = True) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise UserError(f"{where}: 'messages' must be a non-empty list")
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{where}: message {j} must be {{\"role\": one of {'/'.join(ROLES)}, \"content\": str}}")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{where}: conversation has no assistant turn (nothing to learn from)")
    first = next((m["role"] for m in messages if m["role"] != "system"), None)
    if first == "assistant":
        # chat templates render a turn as a reply to what came before; with no user turn
        # there is no prompt to condition on (and no prefix to find the turn's tokens by)
        raise UserError(f"{where}: conversation starts with an assistant turn; the first turn after "
                        "any system message must be the user's")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def read_conversations(path: str | Path) -> list[list[dict]]:
    """`{"messages": [{"role", "content"}, ...]}` per line; each must have an assistant turn."""
    path = Path(path)
    convs = []
    for lineno, rec in iter_jsonl(path):
        if "messages" not in rec:
            raise UserError(f"{path}:{lineno}: expected an object with a 'messages' list")
        convs.append(validate_messages(rec["messages"], f"{path}:{lineno}"))
    if not convs:
        raise UserError(f"{path}: no conversations")
    return convs


def encode_conversation(tokenizer, messages: list[dict], max_len: int) -> tuple[list[int], list[bool]]:
    """Token ids of the chat-templated conversation and a mask that is True on assistant tokens.

    Works for any chat template: assistant spans are found as character ranges by rendering
    prefixes — the text of messages[:i] with the generation prompt ends where assistant turn i
    starts, the text of messages[:i+1] ends where it ends (its end-of-turn token included, so
    the model learns to stop) — then mapped to tokens through the fast tokenizer's offsets.
    """
    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    text = render(messages, False)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, through = render(messages[:i], True), render(messages[: i + 1], False)
        if not (text.startswith(through) and through.startswith(before)):
            raise UserError("chat template is not prefix-stable; cannot locate assistant turns")
        spans.append((len(before), len(through)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = [any(s <= a and b <= e and b > a for s, e in spans) for a, b in offsets]
    return ids[:max_len], mask[:max_len]


def collate(seqs: list[tuple[list[int], list[bool]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence: input_ids (B, T), attention_mask (B, T), loss_mask (B, T)."""
    T = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), T), dtype=torch.bool)
    loss_mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, (ids, m) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = True
        loss_mask[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}


# ----------------------------------------------------------------------------- prompts

def read_prompts(path: str | Path) -> list[dict]:
    """Prompt records: `{"prompt": str, ...}` or `{"messages": [...], ...}` (other fields kept,
    e.g. `answer` for verifiers). Each gets `messages` ending in a user turn."""
    path = Path(path)
    out = []
    for lineno, rec in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if isinstance(rec.get("prompt"), str):
            rec = {**rec, "messages": [{"role": "user", "content": rec["prompt"]}]}
        elif "messages" in rec:
            rec = {**rec, "messages": validate_messages(rec["messages"], where, need_assistant=False)}
            rec.setdefault("prompt", rec["messages"][-1]["content"])
        else:
            raise UserError(f"{where}: expected a 'prompt' string or a 'messages' list")
        if rec["messages"][-1]["role"] != "user":
            raise UserError(f"{where}: a prompt's messages must end with a user turn (the model answers it)")
        out.append(rec)
    if not out:
        raise UserError(f"{path}: no prompts")
    return out


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Chat-templated prompt ids ending with the assistant header (generation starts there)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ----------------------------------------------------------------------------- rankings

def check_rankings(records: list[dict], where: str) -> None:
    """Rankings that cannot teach a reward model anything: a K-way ranking that lists the same
    response twice (it would be ranked above itself), or a file whose pairs all have
    chosen == rejected (every pair's loss is the constant ln 2, its gradient zero).
    Records are read_preferences' (meta holds file and line); a lone equal pair is allowed
    (real data sets such as HH hold a few), a file of nothing else is not."""
    degenerate = 0
    for r in records:
        responses = r["responses"]
        if len(set(responses)) == len(responses):
            continue
        meta = r.get("meta") or {}
        at = f"{meta['file']}:{meta['line']}" if "file" in meta and "line" in meta else where
        if len(responses) > 2:
            dup = next(x for i, x in enumerate(responses) if x in responses[:i])
            raise UserError(f"{at}: the ranking lists the same response twice ({dup[:40]!r}); "
                            "each response must appear once")
        degenerate += 1
    if records and degenerate == len(records):
        raise UserError(f"{where}: every pair has chosen == rejected: nothing to learn from")
