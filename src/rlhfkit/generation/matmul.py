"""The matrix products of the Llama fast path (llama_fast.LlamaRunner), as name -> `Matmul`.

- "torch": F.linear everywhere, any device (the reference the others are tested against).
- "mkl": torch's own CPU sgemm (MKL) with the two layouts that helped it: (w @ x.T).T for 2-4
  rows and the LM head in blocks of vocabulary rows (the 2026-11 path; x86 CPU builds).
- "onednn": oneDNN's linear (`torch.ops.mkldnn._linear_pointwise`, the kernel inductor's CPU
  freezing calls) on weights reordered once per `generate` call into oneDNN's blocked layout
  (`mkldnn._reorder_linear_weight`), with gate and up fused into one product. Measured here
  (AMD EPYC, AVX512, one thread, 30 SmolLM2-135M layers with distinct weights): 64 rows 150 vs
  215 ms with MKL, 16 rows 62 vs 87, 4 rows 32 vs 58 (MKL without the few-rows layout); the
  LM head (49152 x 576) at 64 rows 38 vs 62 ms for MKL's blocked head, at 16 rows 13 vs 27;
  a 2048-row prefill 4.4 vs 5.7 s. The reorder costs ~0.5 s for SmolLM2-135M (one thread),
  so `pick` takes it only for calls long enough to pay it back. The reordered copies live as
  long as the runner (one `generate` call): the fp32 weights' memory twice over meanwhile.
- "onednn-plain": the same kernel on the weights as they are (no reorder, nothing fused):
  ~15% slower than the reordered weights at 64 rows, still ~20% faster than MKL; what an int8
  runner's fp32 prefill uses when the fp32 runner would reorder (the same bits, no reorder).

Numbers: every path agrees with F.linear to ~1e-6 relative (a different order of the same
fp32 sums). oneDNN's reordered and plain weights give bitwise the same outputs, and so do the
fused gate/up halves and the separate products (tests/test_generation.py checks both), so
"onednn" and "onednn-plain" sample the same tokens; a product's rows do not depend on the
other rows in it, except that one row runs a different (matrix-vector) kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Matmul:
    """How the runner multiplies: `linear(x (..., K), w, b) -> (..., N)` for the layers and
    `head(h (R, D), w, b) -> (R, V)` for the LM head, on weights `pack(w (N, K), rows)` made
    once per runner (None: the weights as they are). `fuse_gate_up`: the layers' gate and up
    weights are one (2I, D) matrix (built once per runner, by the copy the packing makes anyway)."""

    linear: Callable
    head: Callable
    pack: Callable | None = None
    fuse_gate_up: bool = False


def few_rows_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for a few rows (decode at batch 2-4), computed as (w @ x.T).T: MKL streams w
    through its few-columns kernel faster than through its few-rows sgemm (a SmolLM2-135M
    decode step, one thread: 59 vs 78 ms at 2 rows, 62 vs 81 at 4). Same numbers to ~1e-6."""
    # both copies are a few rows: x (M, K) row-major so x.T is the column-major operand that
    # kernel wants, and y row-major again (a column-major y reaching the next product here as
    # x would send MKL down its slow path: 1.2 vs 0.34 ms for SmolLM2's down_proj at 2 rows)
    y = torch.mm(w, x.reshape(-1, x.shape[-1]).contiguous().t()).t().contiguous()
    y = y.view(*x.shape[:-1], w.shape[0])
    return y if b is None else y + b


FEW_ROWS = 4  # products of 2..FEW_ROWS rows take few_rows_linear on the "mkl" path


def _mkl_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    # one row is a gemv either way; 2-4 rows: see few_rows_linear
    rows = x.numel() // x.shape[-1]
    return few_rows_linear(x, w, b) if 1 < rows <= FEW_ROWS else F.linear(x, w, b)


HEAD_BLOCK = 2048  # vocabulary rows per LM head product on the "mkl" path (2048 x 576 fp32: 4.7 MB)


def _mkl_head(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(R, D) -> (R, V) logits, as W @ h.T in blocks of vocabulary rows: MKL runs one
    (R, 576) x (576, 49152) product well below the speed of cache-sized blocks (SmolLM2,
    batch 16, 2 threads: 22 vs 13 ms with the transposing copy; at batch 64 that copy
    takes most of the gain). The numbers agree with F.linear to ~1e-6."""
    out = torch.empty(w.shape[0], h.shape[0], device=h.device, dtype=h.dtype)  # (V, R)
    for wb, ob in zip(w.split(HEAD_BLOCK), out.split(HEAD_BLOCK)):
        torch.mm(wb, h.t(), out=ob)
    logits = out.t().contiguous()  # sampling reduces over the vocabulary: make it the inner dim
    return logits if b is None else logits + b


def onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear through oneDNN; `w` a plain (N, K) fp32 weight or `onednn_pack`'s reordering
    of one (bitwise the same outputs)."""
    y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).contiguous(), w, b, "none", [], "")
    return y.view(*x.shape[:-1], y.shape[-1])


def onednn_pack(w: torch.Tensor, rows: int) -> torch.Tensor:
    """(N, K) fp32 weight -> oneDNN's blocked layout for products of about `rows` rows (an
    opaque tensor only onednn_linear reads)."""
    return torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), rows)


MATMULS: dict[str, Matmul] = {
    "torch": Matmul(F.linear, F.linear),
    "mkl": Matmul(_mkl_linear, _mkl_head),
    "onednn": Matmul(onednn_linear, onednn_linear, onednn_pack, fuse_gate_up=True),
    "onednn-plain": Matmul(onednn_linear, onednn_linear),
}

# The reorder ("onednn") pays for itself once a call decodes this many row-steps (rows x new
# tokens): ~0.5 s to reorder SmolLM2-135M against ~25 ms saved per 16-row step (measured one
# thread). One row gains nothing from oneDNN (a matrix-vector product reads the weights once
# either way) and its per-call overhead costs small models: the demo's 3M model decodes one row
# 0.75x as fast through "onednn-plain" as through "mkl"; short calls would not pay the reorder
PACK_MIN_ROW_STEPS = 256


def pick(device: torch.device, dtype: torch.dtype, rows: int, steps: int) -> str:
    """The fastest exact path for `rows` rows decoding `steps` tokens: reordered oneDNN weights
    on x86 CPUs with oneDNN (fp32) when the call is long enough; else MKL; else F.linear."""
    if device.type != "cpu" or dtype != torch.float32:
        return "torch"
    if torch.backends.mkldnn.is_available() and rows > 1 and rows * steps >= PACK_MIN_ROW_STEPS:
        return "onednn"
    return "mkl" if torch.backends.mkl.is_available() else "torch"
