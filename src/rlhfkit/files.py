"""Small file helpers every stage shares: people-facing errors, atomic writes, JSONL.

`UserError` is the one exception the CLI turns into a single line on stderr and exit
code 2 (no traceback): raise it for anything a user can fix (a bad key, a malformed line,
a missing checkpoint), naming the file and line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


class UserError(Exception):
    """Bad input from a person: printed as one line, exit code 2."""


def umask_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under this process's umask: mkstemp and
    mkdtemp make private 0600/0700 entries, which would leave a run unreadable to others."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` so a reader sees the old file or the new one, never half."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)  # rename is atomic on POSIX within one file system
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, records: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `path` in one rename.

    Used for checkpoints and model directories: a SIGKILL mid-save leaves the previous
    directory intact and only a `.tmp-*` sibling behind (cleaned up on the next save).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        os.chmod(tmp, umask_mode(directory=True))
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


GZIP_MAGIC = b"\x1f\x8b"


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 text file, `.gz` or plain (told by its first bytes).

    Every way a file can fail to be text becomes one UserError naming the file and line:
    binary data (a NUL byte), bytes that are not UTF-8, a truncated or corrupt gzip stream,
    a directory or an unreadable file. A UTF-8 byte-order mark on the first line is dropped.
    """
    import gzip
    import zlib

    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file")
    lineno = 0
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC
        with (gzip.open(path, "rb") if gz else path.open("rb")) as f:
            for lineno, line in enumerate(f, 1):
                nul = line.find(b"\x00")
                if nul >= 0:
                    raise UserError(f"{path}:{lineno}: binary data (a NUL byte at column {nul + 1}), not a text file")
                try:
                    text = line.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at column "
                                    f"{e.start + 1}); convert it, e.g. iconv -t UTF-8") from None
                if lineno == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield lineno, text
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise UserError(f"{path}: truncated or corrupt gzip file after line {lineno} ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None


def read_text(path: str | Path) -> str:
    """The whole of a UTF-8 text file (`.gz` too), with iter_lines' one-line errors."""
    return "".join(line for _, line in iter_lines(path))


def json_error(e: json.JSONDecodeError) -> str:
    """`json`'s message with where it happened: e.msg alone ends mid-sentence for some
    errors ("Invalid control character at")."""
    return f"malformed JSON ({e.msg.removesuffix(' at')} at column {e.colno})"


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a JSONL file (`.gz` too); a line that is
    not a JSON object raises UserError naming file and line."""
    path = Path(path)
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{lineno}: {json_error(e)}") from None
        if not isinstance(rec, dict):
            raise UserError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        yield lineno, rec


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; a bad line raises UserError naming file and line."""
    records = [rec for _, rec in iter_jsonl(path)]
    if not records:
        raise UserError(f"{path}: no records")
    return records


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one line (metrics logs); a line is written with one write call."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- a stage's `out`

def out_owner(out: Path) -> str | None:
    """The stage that wrote `out`, from the header of its config.toml ("# rlhfkit sft")."""
    try:
        first = (out / "config.toml").read_text(encoding="utf-8", errors="replace").split("\n", 1)[0]
    except OSError:
        return None
    parts = first.split()
    return parts[2] if len(parts) >= 3 and parts[:2] == ["#", "rlhfkit"] else None


def check_out(out: str, stage: str, force: bool = False) -> None:
    """The rules for a stage's `out`, checked before the stage reads or writes anything:
    not empty, not a file, writable, and — unless `force` — a new or empty directory or this
    stage's own earlier output (which it resumes). Nothing is ever emptied to make room."""
    if not str(out).strip():
        raise UserError("out is empty: set `out` to a directory (e.g. --set out=runs/NAME/STAGE)")
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p}: exists and is not a directory (`out` must be a directory)")
    if p.is_dir():
        entries = sorted(e.name for e in p.iterdir())
        owner = out_owner(p)
        if entries and owner != stage and not force:
            what = (f"the output of `rlhfkit {owner}`" if owner else
                    f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {', '.join(entries[:3])}"
                    + (", ..." if len(entries) > 3 else ""))
            raise UserError(f"{p}: not empty and not an earlier `rlhfkit {stage}` output ({what}); pick a new "
                            "`out`, or pass --force to write into it (nothing there is deleted)")
    a = p
    while not a.exists() and a != a.parent:
        a = a.parent
    if not a.is_dir():
        raise UserError(f"{p}: cannot create it, {a} is not a directory")
    if not os.access(a, os.W_OK | os.X_OK):
        raise UserError(f"{p}: not writable (no write permission on {a})")


class OutGuard:
    """Around a stage's run: if it fails before producing anything (a bad line found after
    setup, a missing model), remove what this run created in `out` — an empty metrics.jsonl,
    samples.jsonl, the config.toml it saved, `out` itself if it was new — and restore the
    config.toml of an earlier run. Files that existed before are never touched, and once the
    run has written something of value (a checkpoint, a metrics line, a model) nothing is
    removed: that run resumes or can be read."""

    IGNORED = ("config.toml", "tensorboard")  # written at start, worth nothing on their own

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.before = {e.name for e in self.out.iterdir()} if self.out.is_dir() else None
        cfg = self.out / "config.toml"
        self.config = cfg.read_bytes() if cfg.is_file() else None
        top = self.out
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        self.top = top  # the highest directory this run would create
        self.start_ns = time.time_ns() - 2_000_000_000  # file systems with coarse mtimes

    def __enter__(self) -> "OutGuard":
        return self

    def _worth_keeping(self) -> bool:
        """Has this run written anything but its config? (a non-empty file made or changed since it started)"""
        for e in self.out.iterdir():
            if e.name in self.IGNORED:
                continue
            files = [e] if e.is_file() else [f for f in e.rglob("*") if f.is_file()] if e.is_dir() else []
            if any((st := f.stat()).st_size > 0 and st.st_mtime_ns >= self.start_ns for f in files):
                return True
        return False

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or not self.out.is_dir() or os.environ.get("RANK", "0") != "0":
            return  # under torchrun only rank 0 writes `out`, so only it tidies
        try:
            if self._worth_keeping():
                return
            new = [e for e in self.out.iterdir() if self.before is None or e.name not in self.before]
            for e in new:
                shutil.rmtree(e, ignore_errors=True) if e.is_dir() and not e.is_symlink() else e.unlink(missing_ok=True)
            if self.config is not None and (self.out / "config.toml").read_bytes() != self.config:
                atomic_write_bytes(self.out / "config.toml", self.config)
            if self.before is None:  # a directory this run made: remove it and the parents it made
                d = self.out
                while True:
                    d.rmdir()  # only if empty: OSError otherwise, and we stop
                    if d == self.top:
                        break
                    d = d.parent
        except OSError:
            pass  # tidying must never hide the error that stopped the run
