"""Train a byte-level BPE tokenizer with chat special tokens and a chat template.

    rlhfkit tokenizer --set files=runs/demo/world/corpus.txt,runs/demo/world/sft.jsonl \
                      --set out=runs/demo/tokenizer --set vocab_size=2048

Byte-level BPE (GPT-2 / Llama 3 / SmolLM2 style) never meets an unknown character: every
string round-trips exactly. The result is a plain HF tokenizer dir (`tokenizer.json`,
`tokenizer_config.json`, `chat_template.jinja`) that `AutoTokenizer.from_pretrained` loads.
"""

from __future__ import annotations

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
    """Yield raw strings from .txt files and .jsonl records (text or conversation contents); `.gz` too."""
    from rlhfkit.data import is_jsonl
    from rlhfkit.files import iter_jsonl, iter_lines

    seen = 0
    for name in files:
        path = Path(name)
        if is_jsonl(path):
            for lineno, rec in iter_jsonl(path):
                texts = [rec["text"]] if "text" in rec else [
                    m.get("content", "") for m in rec.get("messages", []) if isinstance(m, dict)]
                texts += [rec[k] for k in ("prompt",) if isinstance(rec.get(k), str)]
                if not all(isinstance(t, str) for t in texts):
                    raise UserError(f"{path}:{lineno}: 'text' and message 'content' must be strings")
                for t in texts:
                    seen += len(t)
                    yield t
                if seen >= max_chars:
                    return
        else:
            for _, line in iter_lines(path):
                seen += len(line)
                yield line
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
    for _ in iter_texts(cfg.files, cfg.max_chars):  # read what training will read once first:
        pass  # a bad line near the end should fail in a second, not after the training
    tok = train_tokenizer(iter_texts(cfg.files, cfg.max_chars), cfg.vocab_size, cfg.min_frequency)
    out = Path(cfg.out)
    _save(tok, cfg, out)
    print(f"tokenizer: {len(tok)} tokens -> {out}")


def _save(tok, cfg: Config, out: Path) -> None:
    """Write the tokenizer files into `out`, each moved in atomically, leaving any other file
    there alone (`out` may hold more than a tokenizer: never replace the whole directory)."""
    import os
    import shutil
    import tempfile

    from rlhfkit.files import umask_mode

    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.save-"))
    try:
        tok.save_pretrained(tmp)
        save_config(cfg, tmp / "config.toml", "tokenizer")
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "tokenizer.json"] + ["tokenizer.json"]:  # the marker last
            os.replace(tmp / name, out / name)
            os.chmod(out / name, umask_mode())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

