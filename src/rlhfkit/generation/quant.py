"""Int8 rollouts (`rollout_quant = "int8"`): the policy's linear layers as int8 copies that the
Llama fast path (llama_fast.LlamaRunner) decodes with, re-quantised after each optimizer step.

    q = Int8Weights(policy)              # quantise once
    generate(policy, prompts, ..., quantized=q)
    ... optimizer.step() ...
    seconds = q.refresh()                # re-quantise what changed

The numbers: weights int8 per output channel (symmetric, scale max|w_row| / 127, q =
round(w / scale)), activations quantised on the fly to uint8 per tensor (asymmetric, the
call's min/max over all its rows: fbgemm's ChooseQuantizationParams, as torch.ao's dynamic
quantisation does it), exact int32 accumulation, fp32 out. This equals the
dequantise-then-fp32 computation to ~1e-6 relative (tests/test_quant.py checks it against an
int64 reference), i.e. all of its error is the rounding of w and x to 8 bits: 0.5-3% of a
layer's largest output on SmolLM2-135M. Two kernels compute it (`kernel`, agreeing to ~1e-7):

- "fbgemm" (default): fbgemm's dynamic int8 linear (`torch.ops.quantized.linear_dynamic`, the
  one torch.ao's dynamic quantisation uses) on its prepacked layout (`linear_prepack`, ~4 ns
  per weight, single-threaded; it releases the GIL, so a refresh that repacks runs the prepacks
  on as many Python threads as torch has; one that patches in place skips them: below). With
  reduce_range=False AVX512-VNNI accumulates u8 x s8 without saturating.
- "int_mm": `torch._int_mm` (oneDNN's s8 x s8 -> s32 gemm) on the rounded weights as they
  are: x goes in as xq - 128 (int8) and (128 - zp) x each weight row's sum is added back in
  int32, so the result is the u8 x s8 product exactly. Nothing is packed: a refresh of
  SmolLM2-135M is 0.11-0.19 s of CPU (one thread) against fbgemm's 0.51-0.75 s. But its
  products are slower, 1.8x in a decode step of 30 distinct layers (16 rows: 32 vs 17 ms of
  CPU; 64 rows: 61 vs 44: oneDNN runs it as its gemm API on the plain weights, where fbgemm
  reads the blocked layout its prepack made), so it pays only where a refresh is followed by
  fewer than ~30 decode steps of 16 rows (16 rows x 48 tokens: 1.38x fp32 with its refresh,
  fbgemm 1.49x, in CPU seconds; 2026-12-02, benchmarks/README.md) and fbgemm's refresh must
  repack; with fbgemm's copies patched in place (session 22) int_mm's 0.31 s refresh is the
  slower one too (fbgemm 0.17 s; 16 x 48 with the refresh: int_mm 1.72x fp32, fbgemm 2.09x).
  oneDNN's own int8 linear (torch.ops.onednn.qlinear_prepack / qlinear_pointwise, inductor's)
  does not help either: its prepack is as slow as fbgemm's (3.2 ms for 960 x 576), its 16-row
  products slower, and it crashes on an unpacked weight.

A sample is therefore drawn from a slightly different distribution than the trainer's
(SmolLM2-135M: mean |logprob difference| ~0.19 nats per sampled token, 1-2% of tokens with
pi_train / pi_sample > 2); rlhfkit.losses.IS_CORRECTIONS (`is_correction`) corrects the
loss for it, and the RL step logs the gap (rollout/logprob_gap).

Kept exact (fp32): the prefill (one activation scale over a whole prompt, its first token's
outliers included, would round the rest of the prompt away: the gap was 0.35 nats with an
int8 prefill), the embedding, norms, RoPE and attention over the KV cache. The LM head
(`head`) runs in bf16 by default, on oneDNN-reordered weights (AVX512-BF16; SmolLM2-135M at
16 rows 6.5 ms of CPU against 11.5 for the fp32 runner's reordered head; ~0.4% error on the
logits, as the fp32 head's gap shows: 0.192 vs 0.196 nats); "int8" is 4% of the largest
logit, "fp32" exact.

Gate and up are one (2I, D) product: they read the same input, so its one activation
quantisation is the one each of the two products made, and the outputs are bitwise the two
products' (tested); q, k and v were one already.

A refresh re-quantises every copy made from a trainable tensor (full fine-tuning: all of
them; LoRA: the adapted layers) and, of the frozen ones, those whose version counter moved
(load_state_dict; a write through `.data` does not count, so do not update frozen weights
that way). The first time, each product is rounded into an int8 buffer (`_round_into`) and
packed (fbgemm's prepack, ~4 ns a weight, single-threaded). After that, where the C++ op of
`int8_patch` builds here (it needs a C++ compiler once), a refresh re-rounds each fp32 row in
one pass straight into the packed copy, writing only the int8 values that changed (after one
AdamW step on SmolLM2-135M every row's scale moves, yet 0.03% of the int8 values change at lr
1e-6, 0.2% at 1e-5, 1% at 5e-5): 0.17 s of one thread against 0.79 s repacking (2026-12-02,
session 22), bitwise the same copies; elsewhere it repacks as before. Its cost is counted in
each RL step (time/quantize_s).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from rlhfkit.generation.llama_fast import Unsupported, _linear


def _round_into(w: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, scratch: torch.Tensor) -> None:
    """fp32 (n, K) w -> q (n, K) int8 and scale (n,) fp32, in place: symmetric per output channel,
    scale_n = max_k |w_nk| / 127, q = round(w / scale) in [-127, 127] (ties to even). `scratch`:
    a reused fp32 buffer of at least n * K elements (a fresh one would cost page faults)."""
    w = w.detach()
    # max |w_n.| as max(max w_n., -min w_n.): two vectorised passes and no |w| copy (linalg's
    # inf-norm and aminmax over dim 1 are ~20x slower here)
    torch.maximum(w.amax(1), w.amin(1).neg_(), out=scale)
    scale.clamp_(min=1e-12).div_(127.0)
    t = scratch[: w.numel()].view(w.shape)
    torch.div(w, scale[:, None], out=t)
    q.copy_(t.round_())  # |w / scale| <= 127 by construction: the cast is exact


class Int8Matrix:
    """An int8 weight as `int8_linear` reads it: q (N, K) int8, scale (N,) fp32 (w ~ q * scale),
    colsum (N,) int32 = sum_k q_nk, bias (N,) fp32 or None."""

    __slots__ = ("q", "scale", "colsum", "bias")

    def __init__(self, q, scale, bias):
        self.q, self.scale, self.bias = q, scale, bias
        self.colsum = q.sum(1, dtype=torch.int32)

    @property
    def shape(self):
        return self.q.shape


def int8_linear(x: torch.Tensor, w: Int8Matrix, bias=None) -> torch.Tensor:
    """(..., K) fp32 -> (..., N): x quantised per tensor to uint8 as fbgemm's dynamic linear does it
    (asymmetric over [min(x, 0), max(x, 0)], its ChooseQuantizationParams), times the int8 weight in
    exact int32 arithmetic, rescaled to fp32 (bias is inside `w`; the argument keeps F.linear's
    signature for the runner). torch._int_mm multiplies int8 by int8, so x goes in as xq - 128
    (quantize_per_tensor to qint8 with zero point zp - 128 gives exactly that) and the shift comes
    back through the weight's column sums: sum_k (xq_k - zp) q_nk = sum_k (xq_k - 128) q_nk +
    (128 - zp) colsum_n."""
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    s, zp = torch._choose_qparams_per_tensor(x2, False)
    xs = torch.quantize_per_tensor(x2, s, zp - 128, torch.qint8).int_repr()
    acc = torch._int_mm(xs, w.q.t())
    acc.add_(w.colsum, alpha=128 - zp)
    y = torch.mul(acc, w.scale * s)  # int32 x fp32 -> fp32
    if w.bias is not None:
        y.add_(w.bias)
    return y.view(*x.shape[:-1], y.shape[-1])


def fbgemm_pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None):
    """(q, scale, bias) -> fbgemm's packed int8 weight for torch.ops.quantized.linear_dynamic (its
    blocked layout; the prepack is ~4 ns per weight on this CPU, single-threaded)."""
    zeros = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    qw = torch._make_per_channel_quantized_tensor(q, scale.double(), zeros, 0)  # copies q
    return torch.ops.quantized.linear_prepack(qw, bias)


def patch_self_test(op) -> None:
    """int8_patch's op checked: re-quantise a small packed weight (an odd shape, a bias, two row
    blocks as q/k/v are) and compare it with torch's rounding and a fresh prepack of it: raises
    AssertionError unless the int8 values, scales, bias and a product agree bitwise."""
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
    """int8_patch's in-place re-quantisation op, built, self-tested and cached (None where it is
    unavailable here; int8_patch.reason() says why)."""
    from rlhfkit.generation import int8_patch

    return int8_patch.patcher(patch_self_test)


def linear(x: torch.Tensor, w, bias=None) -> torch.Tensor:
    """The runner's product on an int8 copy: `int8_linear` for an Int8Matrix, fbgemm's dynamic
    int8 linear for an fbgemm-packed weight (the same numbers: see the module docstring)."""
    if type(w) is Int8Matrix:
        return int8_linear(x, w)
    return torch.ops.quantized.linear_dynamic(x.contiguous(), w, False)


KERNELS = ("int_mm", "fbgemm")  # Int8Weights(kernel=...): how the int8 copies are kept and multiplied
KERNEL = "fbgemm"  # the default kernel (rollout_quant = "int8" builds Int8Weights(policy) with it)


def quantize(w: torch.Tensor, b: torch.Tensor | None = None, kernel: str | None = None):
    """One fp32 (N, K) weight (and bias) -> its int8 copy for `linear` (fresh buffers; kernel
    default KERNEL)."""
    kernel = KERNEL if kernel is None else kernel
    q = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    scale = torch.empty(w.shape[0], dtype=torch.float32, device=w.device)
    _round_into(w, q, scale, torch.empty(w.numel(), dtype=torch.float32, device=w.device))
    b = None if b is None else b.detach().float()
    return Int8Matrix(q, scale, b) if kernel == "int_mm" else fbgemm_pack(q, scale, b)


def dequantized(packed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp32 (weight, bias) an int8 copy stands for (the tests' reference)."""
    if type(packed) is Int8Matrix:
        return packed.q.float() * packed.scale[:, None], packed.bias
    qw, b = torch.ops.quantized.linear_unpack(packed)
    return qw.dequantize(), b


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """x rounded as the int8 products round it: uint8 per tensor, asymmetric over [min(x, 0),
    max(x, 0)] (the tests' reference; fbgemm's ChooseQuantizationParams up to its zero-point
    nudge, which matters only at a tie)."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255 if hi > lo else 1.0
    zero = min(255, max(0, round(-lo / scale)))
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


HEADS = ("fp32", "bf16", "int8")  # how the LM head runs in the decode steps
HEAD_PACK_ROWS = 16  # the rows the bf16 head's oneDNN layout is made for (any number of rows reads it)


def _onednn_bf16(w: torch.Tensor):
    """A bf16 (N, K) weight reordered for oneDNN's linear (matmul.onednn_pack's layout), or None
    where oneDNN cannot (not a CPU tensor, no oneDNN, no bf16 support)."""
    if w.device.type != "cpu" or not torch.backends.mkldnn.is_available() \
            or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    from rlhfkit.generation.matmul import onednn_pack

    try:
        return onednn_pack(w, HEAD_PACK_ROWS)
    except RuntimeError:
        return None


class Int8Weights:
    """Int8 copies of a LlamaForCausalLM's decoder linear layers, in the layout
    `LlamaRunner(..., quantized=self)` reads: llama_fast.layer_weights tuples with each product
    replaced by its int8 copy (bias inside, None in the bias slot), gate and up as one product
    in the gate slot ((None, None) in the up slot: they read the same input, so one activation
    quantisation serves both, as it did when they were two products); `linear` the product the
    runner calls on them; `head` a callable h (R, D) -> logits (R, V) for the decode steps
    (head = "bf16" | "int8"), or None ("fp32": the runner's own). kernel (default KERNEL):
    "fbgemm" (fbgemm's prepacked layout) or "int_mm" (torch._int_mm on the rounded weights as
    they are: the same numbers, 1.6-1.8x slower products). patch (fbgemm): refreshes re-quantise
    into the packed copies in place (int8_patch): None where it is available here, True requires
    it (Unsupported if not), False always repacks. Raises Unsupported for a model the fast path
    cannot run."""

    linear = staticmethod(linear)

    def __init__(self, model, head: str = "bf16", kernel: str | None = None, patch: bool | None = None):
        from rlhfkit.generation.rollout import unwrap

        _, self.hf = unwrap(model)
        if type(self.hf).__name__ != "LlamaForCausalLM":
            raise Unsupported(f"int8 rollouts need the Llama fast path, not {type(self.hf).__name__}")
        if head not in HEADS:
            raise ValueError(f"Int8Weights: head must be one of {', '.join(HEADS)}")
        kernel = KERNEL if kernel is None else kernel
        if kernel not in KERNELS:
            raise ValueError(f"Int8Weights: kernel must be one of {', '.join(KERNELS)}")
        self.head_mode, self.kernel = head, kernel
        # fbgemm: refreshes re-quantise into the packed copies in place, writing only the values
        # that changed (int8_patch; None: where it builds and passes its self-test here), else
        # they repack every weight
        self._patch = None
        if kernel == "fbgemm" and patch is not False:
            self._patch = patcher()
            if patch and self._patch is None:
                from rlhfkit.generation.int8_patch import reason

                raise Unsupported(f"Int8Weights(patch=True): the in-place patch is unavailable ({reason()})")
        self._bufs: dict[int, tuple] = {}  # slot -> (q int8, scale fp32) buffers, reused by refresh
        self._scratch = torch.empty(0)  # fp32 scratch of the rounding, reused
        self._packed: dict[int, object] = {}  # slot -> int8 copy
        self._keys: dict[int, tuple] = {}  # slot -> the versions of the tensors it was packed from
        self.layers: list[tuple] = []
        self.head = None
        self.built_s = self.refresh()  # seconds the first quantisation took

    @staticmethod
    def _key(mods) -> tuple | None:
        """What a slot's copy was made from, or None when it must be re-made: any trainable tensor
        among `mods`' parameters counts as changed at every refresh, since torch's fused AdamW
        updates parameters without bumping their version counters; a frozen one (LoRA's base
        weights, a reference) changes only through an in-place write such as load_state_dict's
        copy_, which does bump its version."""
        params = [p for m in mods for p in m.parameters()]
        if any(p.requires_grad for p in params):
            return None
        return tuple((p.data_ptr(), p._version) for p in params) + tuple(
            (getattr(m, "disable_adapters", None), tuple(getattr(m, "active_adapters", ()) or ()),
             tuple(getattr(m, "merged_adapters", ()) or ())) for m in mods)

    def _q(self, slot: int, mods) -> None:
        """Re-make slot `slot`'s int8 copy of the product of `mods` (nn.Linear or LoRA modules
        whose weights stack along the outputs, as q, k, v) unless `_key(mods)` is what it was at
        the last refresh: rounded here, and (kernel "fbgemm") queued for `_pack_jobs`, or, when
        the slot has a packed copy and the in-place op is here, re-quantised into it."""
        key = self._key(mods)
        if key is None or self._keys.get(slot) != key:
            parts = [_linear(m) for m in mods]
            n, k = sum(w.shape[0] for w, _ in parts), parts[0][0].shape[1]
            q, scale = self._bufs.get(slot, (None, None))
            w0 = parts[0][0]
            if q is None or q.shape != (n, k):
                q = torch.empty(n, k, dtype=torch.int8, device=w0.device)
                scale = torch.empty(n, dtype=torch.float32, device=w0.device)
                self._bufs[slot] = q, scale
                self._packed.pop(slot, None)
            bias = None
            if any(b is not None for _, b in parts):
                bias = torch.cat([(torch.zeros(w.shape[0], device=w.device) if b is None else b.detach()).float()
                                  for w, b in parts])
            if self._patch is not None and self._packed.get(slot) is not None:
                # in place: q holds what the packed copy holds; each part's rows re-rounded into both
                r = 0
                for i, (w, _) in enumerate(parts):
                    self.patched_values += self._patch(self._packed[slot], w.detach().contiguous(), r, q[r:r + w.shape[0]],
                                                 scale[r:r + w.shape[0]], bias if i == len(parts) - 1 else None)
                    r += w.shape[0]
            else:
                if self._scratch.numel() < max(w.numel() for w, _ in parts) or self._scratch.device != w0.device:
                    self._scratch = torch.empty(max(w.numel() for w, _ in parts), dtype=torch.float32, device=w0.device)
                r = 0
                for w, _ in parts:
                    _round_into(w, q[r:r + w.shape[0]], scale[r:r + w.shape[0]], self._scratch)
                    r += w.shape[0]
                if self.kernel == "int_mm":
                    self._packed[slot] = Int8Matrix(q, scale, bias)
                else:  # packed by refresh, once every product is rounded
                    self._packed[slot] = None
                    self._jobs.append((slot, q, scale, bias))
            self._keys[slot] = key
            self.remade.append(slot)

    def _pack_jobs(self) -> None:
        """fbgemm's prepack of the products rounded by this refresh, on as many Python threads as
        torch has (it is single-threaded and releases the GIL: two run side by side on two cores)."""
        jobs, self._jobs = sorted(self._jobs, key=lambda j: -j[1].numel()), []  # largest first
        workers = min(torch.get_num_threads(), len(jobs))
        if workers > 1:
            with ThreadPoolExecutor(workers) as ex:
                packed = list(ex.map(lambda j: fbgemm_pack(*j[1:]), jobs))
        else:
            packed = [fbgemm_pack(*j[1:]) for j in jobs]
        for (slot, *_), p in zip(jobs, packed):
            self._packed[slot] = p

    @torch.no_grad()
    def refresh(self) -> float:
        """Re-quantise the copies whose weights changed; -> seconds it took."""
        t0 = time.perf_counter()
        self._jobs: list[tuple] = []
        self.patched_values = 0  # int8 values this refresh changed in packed copies in place
        self.remade: list[int] = []  # the slots this refresh re-quantised (4i .. 4i + 3: layer i's qkv, o, gate/up, down)
        layers = self.hf.model.layers[: self.hf.config.num_hidden_layers]
        for i, layer in enumerate(layers):  # slots 4i .. 4i + 3: qkv, o, gate/up, down
            at, mlp = layer.self_attn, layer.mlp
            for j, mods in enumerate(((at.q_proj, at.k_proj, at.v_proj), (at.o_proj,), (mlp.gate_proj, mlp.up_proj),
                                      (mlp.down_proj,))):
                self._q(4 * i + j, mods)
        head_slot = 4 * len(layers)
        if self.head_mode == "int8":
            self._q(head_slot, (self.hf.lm_head,))
        self._pack_jobs()  # every slot now holds its copy
        p = self._packed
        self.layers = []
        for i, layer in enumerate(layers):
            n1, n2, s = layer.input_layernorm, layer.post_attention_layernorm, 4 * i
            self.layers.append((n1.weight, n1.variance_epsilon, p[s], None, (p[s + 1], None), n2.weight,
                                n2.variance_epsilon, (p[s + 2], None), (None, None), (p[s + 3], None), layer.mlp.act_fn))
        if self.head_mode != "fp32":
            self.head = self._head(head_slot, (self.hf.lm_head,))
        return time.perf_counter() - t0

    def _head(self, slot: int, mods):
        """The LM head as a callable h (R, D) -> logits (R, V) fp32, re-made when its weight changed."""
        if self.head_mode == "int8":  # rounded (and packed) by refresh with the layers
            packed = self._packed[slot]
            return lambda h: linear(h, packed)
        key = self._key(mods)
        if key is not None and self._keys.get(slot) == key:
            return self.head
        self._keys[slot] = key
        w, b = _linear(self.hf.lm_head)
        buf = self._bufs.get(slot)
        if buf is None or buf.shape != w.shape:
            buf = self._bufs[slot] = torch.empty(w.shape, dtype=torch.bfloat16, device=w.device)
        buf.copy_(w.detach())
        bias = None if b is None else b.detach().to(torch.bfloat16)
        # bf16 x bf16 products (AVX512-BF16 through oneDNN), fp32 accumulation, bf16 out; on
        # weights reordered into oneDNN's blocked layout where it can (the same numbers, bitwise
        # here: SmolLM2-135M's head at 16 rows 6.5 vs 11.1 ms of CPU, at 64 rows 19 vs 23, for a
        # 0.03 s reorder per refresh)
        packed = _onednn_bf16(buf)
        if packed is not None:
            from rlhfkit.generation.matmul import onednn_linear

            return lambda h: onednn_linear(h.to(torch.bfloat16), packed, bias).float()
        return lambda h: F.linear(h.to(torch.bfloat16), buf, bias).float()
