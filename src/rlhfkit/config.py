"""Stage configs: a dataclass per stage, filled from a TOML file and `--set key=value`.

Each stage declares its keys once, with a default and a one-line meaning:

    @dataclass
    class Config:
        out: str = key("runs/demo/base", "output directory")
        max_steps: int = key(1000, "optimizer steps")

`load_config(Config, "f.toml", ["max_steps=10"])` reads the file (flat keys), applies the
overrides (`--set` wins), checks every key and type, and raises `UserError` naming the file
and key for anything wrong. `save_config` writes the resolved config back as TOML so a run
directory always says how it was made.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from rlhfkit.files import UserError, atomic_write_text, read_text


def key(default: Any, help: str, check: Any = None) -> Any:
    """A config key: its default and its meaning (shown by `rlhfkit STAGE --help`).

    `check(value) -> str | None` is the odd key's own rule, beside the table by name below:
    it returns what is wrong ("must be a power of two") or None.
    """
    meta = {"help": help, "check": check}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- value rules
# One table for every stage, by key name: a key means the same thing wherever it appears.
# A zero that the key's help gives a meaning to ("0: use epochs", "0: off") is allowed.

def _at_least(lo):
    return lambda v: None if v >= lo else f"must be >= {lo}"


def _positive(v):
    return None if v > 0 else "must be > 0"


def _in(lo, hi, lo_open=False, hi_open=False):
    def check(v):
        ok = (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return None if ok else f"must be in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return check


POSITIVE_INTS = {  # counts and sizes: 0 or less is nonsense (unless the help gives 0 a meaning)
    "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "block_size", "max_steps", "batch_size",
    "micro_batch_size", "micro_batch_tokens", "max_seq_len", "lora_r", "lora_alpha", "group_size", "prompts_per_step",
    "max_new_tokens", "max_prompt_len", "ppo_epochs", "num_minibatches", "eval_batches", "eval_batch_size",
    "keep_checkpoints", "log_every", "eval_every", "save_every", "threads", "generation_batch_size",
    "eval_max_prompts", "max_prompts", "max_chars", "min_frequency", "k", "overlap", "ensemble",
}
NON_NEGATIVE_INTS = {"warmup_steps"}
FLOAT_RULES = {
    "learning_rate": _positive,
    "epochs": _positive,
    "min_lr_ratio": _in(0, 1),
    "weight_decay": _at_least(0),
    "grad_clip": _at_least(0),
    "eval_fraction": _in(0, 1, hi_open=True),  # 1 would hold out everything: nothing to train on
    "lora_dropout": _in(0, 1, hi_open=True),
    "dropout": _in(0, 1, hi_open=True),
    "top_p": _in(0, 1, lo_open=True),
    "temperature": _at_least(0),
    "eval_temperature": _at_least(0),
    "clip": _positive,
    "clip_high": _at_least(0),
    "kl_coef": _at_least(0),
    "kl_target": _positive,
    "kl_horizon": _positive,
    "vf_coef": _at_least(0),
    "value_clip": _positive,
    "gamma": _in(0, 1),
    "lam": _in(0, 1),
    "rm_uncertainty_k": _at_least(0),
    "missing_eos_penalty": _at_least(0),
}
NON_EMPTY_STRINGS = {"out"}


def _zero_has_meaning(help_text: str) -> bool:
    return bool(re.search(r"\(0[:,]|0: |\b0 (means|is)\b", help_text))


def _relations(cfg: Any) -> list[tuple[str, str]]:
    """Rules between keys: [(key to name, what is wrong)]."""
    get = lambda k: getattr(cfg, k, None)  # noqa: E731
    bad = []
    d, h, kv = get("d_model"), get("n_heads"), get("n_kv_heads")
    if isinstance(d, int) and isinstance(h, int) and h > 0 and d % h:
        bad.append(("n_heads", f"n_heads={h} must divide d_model={d}"))
    elif isinstance(d, int) and isinstance(h, int) and h > 0 and (d // h) % 2:
        # rotary embeddings turn each head's dimensions in pairs
        bad.append(("n_heads", f"d_model / n_heads = {d // h} must be even (rotary embeddings rotate pairs)"))
    if isinstance(h, int) and isinstance(kv, int) and kv > 0 and h % kv:
        bad.append(("n_kv_heads", f"n_kv_heads={kv} must divide n_heads={h}"))
    return bad


def validate(cfg: Any, origins: dict[str, str] | None = None) -> Any:
    """Check every value of a stage config; -> cfg, or a one-line UserError naming the key and
    where its value came from (`origins`: key -> "--set k=v" or "FILE: key 'k'")."""
    origins = origins or {}
    for f in dataclasses.fields(cfg):
        v, name = getattr(cfg, f.name), f.name
        problem = None
        if isinstance(v, float) and not math.isfinite(v):
            problem = f"must be a finite number, got {v}"
        elif isinstance(v, int) and not isinstance(v, bool) and name in POSITIVE_INTS:
            lo = 0 if _zero_has_meaning(f.metadata.get("help", "")) else 1
            problem = None if v >= lo else f"must be >= {lo}, got {v}"
        elif isinstance(v, int) and not isinstance(v, bool) and name in NON_NEGATIVE_INTS:
            problem = None if v >= 0 else f"must be >= 0, got {v}"
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and name in FLOAT_RULES:
            msg = FLOAT_RULES[name](v)
            problem = f"{msg}, got {v}" if msg else None
        elif isinstance(v, str) and name in NON_EMPTY_STRINGS and not v.strip():
            problem = "must not be empty"
        if problem is None and v is not None and f.metadata.get("check"):
            problem = f.metadata["check"](v)
        if problem:
            raise UserError(f"{origins.get(name, 'config')}: {name} {problem}")
    for name, problem in _relations(cfg):
        raise UserError(f"{origins.get(name, 'config')}: {problem}")
    return cfg


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, typ: Any, where: str) -> Any:
    """Convert a TOML value (or a --set string) to the declared type, or say why not."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "")):
            return None
        return _coerce(value, args[0], where)
    if origin is list:
        (item,) = typing.get_args(typ) or (str,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item, where) for v in value]
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"{where}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise UserError(f"{where}: expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: expected a number, got {value!r}")
    if typ is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return str(value) if not isinstance(value, bool) else str(value).lower()
    return value


def _unknown(name: str, known: list[str], where: str, stage: str) -> UserError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(sorted(known))})"
    return UserError(f"{where}: unknown key '{name}' for {stage}{hint}")


def _parse_set(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise UserError(f"--set {item}: expected key=value")
    name, raw = item.split("=", 1)
    name = name.strip()
    try:  # a TOML literal (numbers, true/false, [lists], "quoted")
        return name, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return name, raw  # a bare string such as runs/x or rm:runs/rm


def load_config(cls: type, path: str | Path | None = None, sets: list[str] | None = None,
                stage: str = "this stage") -> Any:
    """Build `cls` from defaults <- TOML file <- --set overrides, checking every key."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = tomllib.loads(read_text(path))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    return config_from_dict(cls, data, str(path), sets, stage)


def config_from_dict(cls: type, data: dict[str, Any], where: str = "config", sets: list[str] | None = None,
                     stage: str = "this stage") -> Any:
    """Build `cls` from a dict of flat keys (a TOML file's or a recipe table's) and --set items."""
    types_ = _field_types(cls)
    known = list(types_)
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, value in data.items():
        if name not in types_:
            if isinstance(value, dict):
                raise UserError(f"{where}: [{name}] tables are not stage keys; stage configs are flat key = value")
            raise _unknown(name, known, where, stage)
        values[name] = _coerce(value, types_[name], f"{where}: key '{name}'")
        origins[name] = f"{where}: key '{name}'"
    for item in sets or []:
        name, value = _parse_set(item)
        if name not in types_:
            raise _unknown(name, known, f"--set {item}", stage)
        values[name] = _coerce(value, types_[name], f"--set {name}")
        origins[name] = f"--set {item}"
    # relations name the key a person set: n_heads=3 against the default d_model names n_heads
    for a, b in (("n_heads", "d_model"), ("n_kv_heads", "n_heads")):
        origins.setdefault(a, origins.get(b, "config"))
    return validate(cls(**values), origins)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    s = str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{s}"'


def config_to_toml(cfg: Any, header: str = "") -> str:
    lines = [f"# {header}"] if header else []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if v is None:
            lines.append(f"# {f.name} = (unset)")
        else:
            lines.append(f"{f.name} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"


def save_config(cfg: Any, path: str | Path, stage: str = "") -> None:
    """Write the resolved config as TOML (atomically); `rlhfkit STAGE --config` re-reads it."""
    atomic_write_text(path, config_to_toml(cfg, f"rlhfkit {stage}".strip()))


def describe(cls: type) -> str:
    """One line per key: name, type, default, meaning — for `rlhfkit STAGE --help`."""
    types_ = _field_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        t = types_[f.name]
        tname = getattr(t, "__name__", None) or str(t).replace("typing.", "")
        rows.append((f.name, tname, _toml_value(default) if default is not None else "(unset)", f.metadata.get("help", "")))
    w0 = max(len(r[0]) for r in rows)
    w2 = min(max(len(r[2]) for r in rows), 28)
    return "\n".join(f"  {n:<{w0}}  {d:<{w2}}  {h} [{t}]" for n, t, d, h in rows)
