"""An int8 refresh without fbgemm's prepack: `patcher()` -> the op that re-quantises a weight into
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
fails, fbgemm is not torch's int8 engine, or a self-test on a small weight does not reproduce
torch's rounding and a fresh prepack bit for bit, `patcher()` returns None, says why once
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


def _self_test(op) -> None:
    """Re-quantise a small packed weight (an odd shape, a bias, two row blocks as q/k/v are) and
    compare it with torch's rounding and a fresh prepack of it: raises AssertionError unless the
    int8 values, scales, bias and a product agree bitwise."""
    from rlhfkit.generation.quant import _round_into, fbgemm_pack

    g = torch.Generator().manual_seed(0)
    n, k = 37, 50
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    w[3, :4] = torch.tensor([127.0, 2.5, -3.5, 0.5])  # scale 1: ties, to even
    q, scale, scratch = torch.empty(n, k, dtype=torch.int8), torch.empty(n), torch.empty(n * k)
    _round_into(w, q, scale, scratch)
    packed = fbgemm_pack(q, scale, b.clone())
    w2 = w + 0.05 * torch.randn(n, k, generator=g)
    w2[3] = w[3]
    r = torch.empty_like(q), torch.empty(n)
    _round_into(w2, *r, scratch)
    changed = op(packed, w2[:20].contiguous(), 0, q[:20], scale[:20], None)
    changed += op(packed, w2[20:].contiguous(), 20, q[20:], scale[20:], b + 1)
    assert torch.equal(q, r[0]) and torch.equal(scale, r[1]) and 0 < changed < n * k
    fresh = fbgemm_pack(r[0], r[1], b + 1)
    x = torch.randn(5, k, generator=g)
    (u1, b1), (u2, b2) = torch.ops.quantized.linear_unpack(packed), torch.ops.quantized.linear_unpack(fresh)
    assert torch.equal(u1.int_repr(), u2.int_repr()) and torch.equal(u1.q_per_channel_scales(), u2.q_per_channel_scales())
    assert torch.equal(b1, b2)
    assert torch.equal(torch.ops.quantized.linear_dynamic(x, packed, False),
                       torch.ops.quantized.linear_dynamic(x, fresh, False))


def patcher():
    """The op, `op(packed, w, row0, q, scale, bias) -> int` (int8 values changed), or None
    where it cannot be built or trusted here (`reason()` says why). Cached per process;
    RLHFKIT_INT8_PATCH=0 turns it off."""
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
                torch.ops.load_library(str(_build()))
            op = torch.ops.rlhfkit_int8.requantize
            _self_test(op)
        except (RuntimeError, OSError, AssertionError, subprocess.TimeoutExpired) as e:
            op, reason = None, f"{type(e).__name__}: {e}"
    if op is None:
        print(f"rlhfkit: int8 refreshes repack every weight (the in-place patch is off: {reason})", file=sys.stderr)
    _state["op"], _state["reason"] = op, reason
    return op


def reason() -> str:
    """Why `patcher()` returned None ('' when it did not)."""
    patcher()
    return _state["reason"]
