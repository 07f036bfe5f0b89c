"""Int8 rollouts (`rollout_quant = "int8"`): the policy's linear layers as int8 copies that the
Llama fast path (llama_fast.LlamaRunner) decodes with, re-quantised after each optimizer step.

    q = Int8Weights(policy)              # quantise once
    generate(policy, prompts, ..., quantized=q)
    ... optimizer.step() ...
    seconds = q.refresh()                # re-quantise what changed

The kernel is fbgemm's dynamic int8 linear (`torch.ops.quantized.linear_dynamic`, the one
torch.ao's dynamic quantisation uses): weights int8 per output channel (symmetric, scale
max|w_row| / 127), activations quantised on the fly to uint8 per tensor (asymmetric, the
call's min/max over all its rows), int32 accumulation, fp32 out. With reduce_range=False it
equals the dequantise-then-fp32 computation to ~1e-6 relative (AVX512-VNNI accumulates
u8 x s8 without saturating; tests/test_quant.py checks it), i.e. all of its error is the
rounding of w and x to 8 bits: 0.5-3% of a layer's largest output on SmolLM2-135M.
A sample is therefore drawn from a slightly different distribution than the trainer's
(SmolLM2-135M: mean |logprob difference| ~0.19 nats per sampled token, 1-2% of tokens with
pi_train / pi_sample > 2); rlhfkit.losses.IS_CORRECTIONS (`is_correction`) corrects the
loss for it, and the RL step logs the gap (rollout/logprob_gap).

Kept exact (fp32): the prefill (one activation scale over a whole prompt, its first token's
outliers included, would round the rest of the prompt away: the gap was 0.35 nats with an
int8 prefill), the embedding, norms, RoPE and attention over the KV cache. The LM head
(`head`) runs in bf16 by default (2.5x faster than fp32 on this CPU's AVX512-BF16, ~0.4%
error on the logits, as the fp32 head's gap shows: 0.192 vs 0.196 nats); "int8" is 4% of
the largest logit, "fp32" exact.

A refresh re-quantises every copy made from a trainable tensor (full fine-tuning: all of
them; LoRA: the adapted layers) and, of the frozen ones, those whose version counter moved
(load_state_dict; a write through `.data` does not count, so do not update frozen weights
that way). Its cost, counted in each RL step
(time/quantize_s), is ~80% fbgemm's prepack (its blocked layout, ~7 ms per 576 x 1536
layer): ~1 s for SmolLM2-135M's 150 products on a quiet core, 3.4 s on the loaded one.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from rlhfkit.generation.llama_fast import Unsupported, _linear, layer_weights


def _pack(w: torch.Tensor, b: torch.Tensor | None, buf: torch.Tensor | None):
    """fp32 (N, K) weight (and bias) -> (fbgemm packed int8 weight, the int8 buffer it was
    rounded into, to be reused next time). Symmetric per output channel: scale_n = max_k
    |w_nk| / 127, q = round(w / scale) in [-127, 127]."""
    w = w.detach()
    scale = w.abs().amax(1).clamp_(min=1e-12).div_(127.0)
    if buf is None or buf.shape != w.shape:
        buf = torch.empty(w.shape, dtype=torch.int8, device=w.device)
    buf.copy_(torch.div(w, scale[:, None]).round_())  # |w / scale| <= 127 by construction
    zeros = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
    qw = torch._make_per_channel_quantized_tensor(buf, scale.double(), zeros, 0)
    return torch.ops.quantized.linear_prepack(qw, None if b is None else b.detach().float()), buf


def int8_linear(x: torch.Tensor, packed, bias=None) -> torch.Tensor:
    """(..., K) fp32 -> (..., N): fbgemm's dynamic int8 linear (bias is inside `packed`; the
    argument keeps F.linear's signature for the runner)."""
    return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, False)


def dequantized(packed) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp32 (weight, bias) a packed int8 weight stands for (the tests' reference)."""
    qw, b = torch.ops.quantized.linear_unpack(packed)
    return qw.dequantize(), b


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """x rounded as linear_dynamic rounds it: uint8 per tensor, asymmetric over [min(x, 0),
    max(x, 0)] (the tests' reference; fbgemm's ChooseQuantizationParams)."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255 if hi > lo else 1.0
    zero = min(255, max(0, round(-lo / scale)))
    return (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale


HEADS = ("fp32", "bf16", "int8")  # how the LM head runs in the decode steps


class Int8Weights:
    """Int8 copies of a LlamaForCausalLM's decoder linear layers, in the layout
    `LlamaRunner(..., quantized=self)` reads: `layers` are llama_fast.layer_weights tuples with
    each weight replaced by its packed int8 copy (bias inside, None in the bias slot); `linear`
    the product the runner calls on them; `head` a callable h (R, D) -> logits (R, V) for the
    decode steps (head = "bf16" | "int8"), or None ("fp32": the runner's own). Raises
    Unsupported for a model the fast path cannot run."""

    linear = staticmethod(int8_linear)

    def __init__(self, model, head: str = "bf16"):
        from rlhfkit.generation.rollout import unwrap

        _, self.hf = unwrap(model)
        if type(self.hf).__name__ != "LlamaForCausalLM":
            raise Unsupported(f"int8 rollouts need the Llama fast path, not {type(self.hf).__name__}")
        if head not in HEADS:
            raise ValueError(f"Int8Weights: head must be one of {', '.join(HEADS)}")
        self.head_mode = head
        self._bufs: dict[int, torch.Tensor] = {}  # slot -> int8 buffer, reused by refresh
        self._packed: dict[int, object] = {}  # slot -> packed copy
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

    def _q(self, slot: int, w, b, mods):
        """Slot `slot`'s packed copy of (w, b), re-packed unless `_key(mods)` (the modules w comes
        from) is what it was at the last refresh."""
        key = self._key(mods)
        if key is None or self._keys.get(slot) != key:
            self._packed[slot], self._bufs[slot] = _pack(w, b, self._bufs.get(slot))
            self._keys[slot] = key
        return self._packed[slot], None

    @torch.no_grad()
    def refresh(self) -> float:
        """Re-quantise the copies whose weights changed; -> seconds it took."""
        t0 = time.perf_counter()
        layers, slot = [], 0
        for layer, (n1, e1, wqkv, bqkv, o, n2, e2, g, u, d, act) in zip(self.hf.model.layers,
                                                                          layer_weights(self.hf)):
            at, mlp = layer.self_attn, layer.mlp
            layers.append((n1, e1, self._q(slot, wqkv, bqkv, (at.q_proj, at.k_proj, at.v_proj))[0], None,
                           self._q(slot + 1, *o, (at.o_proj,)), n2, e2, self._q(slot + 2, *g, (mlp.gate_proj,)),
                           self._q(slot + 3, *u, (mlp.up_proj,)), self._q(slot + 4, *d, (mlp.down_proj,)), act))
            slot += 5
        self.layers = layers
        if self.head_mode != "fp32":
            self.head = self._head(slot, (self.hf.lm_head,))
        return time.perf_counter() - t0

    def _head(self, slot: int, mods):
        """The LM head as a callable h (R, D) -> logits (R, V) fp32, re-made when its weight changed."""
        key = self._key(mods)
        if key is not None and self._keys.get(slot) == key:
            return self.head
        self._keys[slot] = key
        w, b = _linear(self.hf.lm_head)
        if self.head_mode == "int8":
            packed, self._bufs[slot] = _pack(w, b, self._bufs.get(slot))
            return lambda h: int8_linear(h, packed)
        buf = self._bufs.get(slot)
        if buf is None or buf.shape != w.shape:
            buf = self._bufs[slot] = torch.empty(w.shape, dtype=torch.bfloat16, device=w.device)
        buf.copy_(w.detach())
        bias = None if b is None else b.detach().to(torch.bfloat16)
        # bf16 x bf16 products (AVX512-BF16 through oneDNN), fp32 accumulation, bf16 out
        return lambda h: F.linear(h.to(torch.bfloat16), buf, bias).float()
