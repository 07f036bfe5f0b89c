"""Train a byte-level BPE tokenizer with chat special tokens and a chat template.

    rlhfkit tokenizer --set files=runs/demo/world/corpus.txt,runs/demo/world/sft.jsonl \
                      --set out=runs/demo/tokenizer --set vocab_size=2048

Byte-level BPE (GPT-2 / Llama 3 / SmolLM2 style) never meets an unknown character: every
string round-trips exactly. The result is a plain HF tokenizer dir (`tokenizer.json`,
`tokenizer_config.json`, `chat_template.jinja`) that `AutoTokenizer.from_pretrained` loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import key, save_config
from rlhfkit.files import UserError

# ChatML, the template SmolLM2 and Qwen use: <|im_start|>role\ncontent<|im_end|>\n
BOS, EOS, DOC_SEP, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"
SPECIAL_TOKENS = [DOC_SEP, BOS, EOS, PAD]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass
class Config:
    out: str = key("runs/demo/tokenizer", "output directory (an HF tokenizer dir)")
    files: list[str] = key([], "text files: .txt (raw) or .jsonl ({'text'} or {'messages'} records)")
    vocab_size: int = key(2048, "vocabulary size, special tokens included")
    min_frequency: int = key(2, "a merge must occur at least this often")
    max_chars: int = key(20_000_000, "read at most this many characters (training BPE is O(corpus))")


def iter_texts(files: list[str], max_chars: int):
    """Yield raw strings from .txt files and .jsonl records (text or conversation contents)."""
    seen = 0
    for name in files:
        path = Path(name)
        if not path.is_file():
            raise UserError(f"{path}: file not found")
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if path.suffix == ".jsonl":
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise UserError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
                    texts = [rec["text"]] if "text" in rec else [m.get("content", "") for m in rec.get("messages", [])]
                    texts += [rec[k] for k in ("prompt",) if isinstance(rec.get(k), str)]
                else:
                    texts = [line]
                for t in texts:
                    seen += len(t)
                    yield t
                if seen >= max_chars:
                    return


def train_tokenizer(texts, vocab_size: int, min_frequency: int = 2):
    """-> a transformers PreTrainedTokenizerFast with ChatML specials and template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is ever unknown
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=[DOC_SEP], clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def run(cfg: Config) -> None:
    if not cfg.files:
        raise UserError("tokenizer: set `files` to one or more text files")
    if cfg.vocab_size < 256 + len(SPECIAL_TOKENS):
        raise UserError(f"tokenizer: vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + specials)")
    tok = train_tokenizer(iter_texts(cfg.files, cfg.max_chars), cfg.vocab_size, cfg.min_frequency)
    from rlhfkit.files import atomic_dir

    out = Path(cfg.out)
    with atomic_dir(out) as tmp:
        tok.save_pretrained(tmp)
        save_config(cfg, tmp / "config.toml", "tokenizer")
    print(f"tokenizer: {len(tok)} tokens -> {out}")
