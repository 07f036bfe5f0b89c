"""An int8 refresh without fbgemm's prepack: `patcher(self_test)` -> the op that re-quantises a weight into
its fbgemm-packed copy in place (csrc/int8_patch.cpp), or None where it is unavailable.

fbgemm's prepack is ~4 ns a weight and single-threaded: ~80% of re-quantising SmolLM2-135M
after an optimizer step, although only 0.03-0.2% of the rounded values change in one. The op,
`op(packed, w, row0, q, scale, bias) -> int`, rounds the fp32 rows w (n, K) exactly as
quant._round_into does, in one pass, into q (n, K) int8, which holds the rounding the packed copy
holds for rows row0 .. row0 + n, and writes only the values that changed into the packed buffer;
it sets the rows' scales (into `scale` too) and column offsets, and the bias when one is given.
The packed weight is then bitwise a fresh prepack of the new rounding (tests/test_quant.py).
It returns how many int8 values changed.

The C++ is compiled on first use with the system's C++ compiler (`$CXX`, else `c++`) against
torch's own headers, ~10 s, and kept under $RLHFKIT_HOME/ext keyed by the source, the torch
version and the compiler, so later runs load it at once. Where there is no compiler, the build
fails, fbgemm is not torch's int8 engine, or a self-test on a small weight (first in a child
process, once per build, so that a torch whose packed-weight layout differs from the one the C++
declares crashes the child and not the run) does not reproduce torch's rounding and a fresh
prepack bit for bit, `patcher(self_test)` returns None, says why once
(`reason()`), and the int8 copies are repacked as before: slower refreshes, the same numbers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "int8_patch.cpp"
_state: dict = {}  # "op": the loaded op or None; "reason": why None


def _build() -> Path:
    """Compile SOURCE into a shared library under $RLHFKIT_HOME/ext (once per source, torch and
    compiler); -> its path. Raises RuntimeError with the compiler's last lines on failure."""
    from rlhfkit.models import home

    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not cxx:
        raise RuntimeError("no C++ compiler (c++, g++ or $CXX)")
    flags = ["-O2", "-std=c++20", "-shared", "-fPIC", "-DUSE_FBGEMM",
             f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    key = hashlib.sha256(SOURCE.read_bytes() + torch.__version__.encode() + cxx.encode()
                         + " ".join(flags).encode()).hexdigest()[:16]
    out = home() / "ext" / f"int8_patch-{key}.so"
    if out.exists():
        return out
    from torch.utils.cpp_extension import include_paths, library_paths  # ~0.6 s to import: only to build

    out.parent.mkdir(parents=True, exist_ok=True)
    libs = library_paths()
    cmd = [cxx, *flags, *(f"-I{p}" for p in include_paths()), str(SOURCE), *(f"-L{p}" for p in libs),
           "-lc10", "-ltorch_cpu", *(f"-Wl,-rpath,{p}" for p in libs)]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)  # then renamed: two builders never mix
    os.close(fd)
    try:
        r = subprocess.run([*cmd, "-o", tmp], capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError("compiling csrc/int8_patch.cpp failed: " + " | ".join(r.stderr.strip().splitlines()[-3:]))
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _vet(lib: Path) -> None:
    """Run the self-test on `lib` in a child process once (a `.ok` file beside it records the pass),
    so that a torch whose PackedLinearWeight differs from the declaration in the C++ crashes a
    child, not the caller. Raises RuntimeError when the child fails."""
    ok = lib.with_suffix(".ok")
    if ok.exists():
        return
    code = ("import sys, torch; torch.ops.load_library(sys.argv[1]); "
            "from rlhfkit.generation.quant import patch_self_test; patch_self_test(torch.ops.rlhfkit_int8.requantize)")
    src = str(Path(__file__).resolve().parents[2])  # the directory rlhfkit imports from, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    r = subprocess.run([sys.executable, "-c", code, str(lib)], capture_output=True, text=True, timeout=300, env=env)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise RuntimeError(f"the self-test of {lib.name} failed in a child process: {last}")
    ok.write_text("self-test passed\n")


def patcher(self_test):
    """The op, `op(packed, w, row0, q, scale, bias) -> int` (int8 values changed), or None
    where it cannot be built or trusted here (`reason()` says why); `self_test(op)` raises
    AssertionError unless the op is right (quant.patch_self_test: quant.patcher() passes it).
    Cached per process; RLHFKIT_INT8_PATCH=0 turns it off."""
    if "op" in _state:
        return _state["op"]
    op, reason = None, ""
    if os.environ.get("RLHFKIT_INT8_PATCH", "1") == "0":
        reason = "RLHFKIT_INT8_PATCH=0"
    elif "fbgemm" not in torch.backends.quantized.supported_engines:
        reason = "torch has no fbgemm"
    else:
        try:
            if not hasattr(torch.ops.rlhfkit_int8, "requantize"):
                lib = _build()
                _vet(lib)
                torch.ops.load_library(str(lib))
            op = torch.ops.rlhfkit_int8.requantize
            self_test(op)
        except (RuntimeError, OSError, AssertionError, subprocess.TimeoutExpired) as e:
            op, reason = None, f"{type(e).__name__}: {e}"
    if op is None:
        print(f"rlhfkit: int8 refreshes repack every weight (the in-place patch is off: {reason})", file=sys.stderr)
    _state["op"], _state["reason"] = op, reason
    return op


def reason() -> str:
    """Why `patcher()` returned None ('' when it did not, or before it ran)."""
    return _state.get("reason", "")
