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
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from rlhfkit.files import UserError, atomic_write_text


def key(default: Any, help: str) -> Any:
    """A config key: its default and its meaning (shown by `rlhfkit STAGE --help`)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


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
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{path}: not valid TOML ({e})") from None
    return config_from_dict(cls, data, str(path), sets, stage)


def config_from_dict(cls: type, data: dict[str, Any], where: str = "config", sets: list[str] | None = None,
                     stage: str = "this stage") -> Any:
    """Build `cls` from a dict of flat keys (a TOML file's or a recipe table's) and --set items."""
    types_ = _field_types(cls)
    known = list(types_)
    values: dict[str, Any] = {}
    for name, value in data.items():
        if name not in types_:
            if isinstance(value, dict):
                raise UserError(f"{where}: [{name}] tables are not stage keys; stage configs are flat key = value")
            raise _unknown(name, known, where, stage)
        values[name] = _coerce(value, types_[name], f"{where}: key '{name}'")
    for item in sets or []:
        name, value = _parse_set(item)
        if name not in types_:
            raise _unknown(name, known, f"--set {item}", stage)
        values[name] = _coerce(value, types_[name], f"--set {name}")
    return cls(**values)


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
