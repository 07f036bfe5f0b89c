"""Int8 rollouts (generation/quant.py): the int8 linear against its dequantise-then-fp32
reference and against exact integer arithmetic, its two kernels (torch._int_mm, fbgemm) against
each other, the runner's int8 decode against the same runner with the reference product, the
re-quantisation after a weight change, and the fp32 path untouched."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_generation import PROMPTS, full_logprobs, tiny_gpt2, tiny_llama

from rlhfkit.generation import generate, left_pad
from rlhfkit.generation.llama_fast import LlamaRunner, Unsupported
from rlhfkit.generation.quant import (
    KERNELS,
    Int8Matrix,
    Int8Weights,
    _round_into,
    dequantized,
    int8_linear,
    linear,
    quantize,
    quantize_activation,
)


@pytest.mark.parametrize("kernel", KERNELS)
def test_per_channel_weight_rounding_by_hand(kernel):
    # row 0: scale 1/127, -0.25 * 127 = -31.75 -> -32 -> -32/127 = -0.251969
    # row 1: scale 0.2/127, -0.05 / scale = -31.75 -> -32 -> -32 * 0.2/127 = -0.050394
    w = torch.tensor([[1.0, -0.25], [0.2, -0.05]])
    packed = quantize(w, None, kernel)
    dq, b = dequantized(packed)
    assert b is None
    assert torch.allclose(dq, torch.tensor([[1.0, -32 / 127], [0.2, -32 * 0.2 / 127]]), atol=1e-6)
    if kernel == "int_mm":
        assert packed.q.tolist() == [[127, -32], [127, -32]] and packed.colsum.tolist() == [95, 95]


def test_rounding_into_reused_buffers_is_round_of_w_over_scale():
    # the refresh's rounding (into the same int8 buffer each time, via a shared fp32 scratch) is
    # exactly the documented q = round(w / (max|w_row| / 127)), ties to even, for rows of a
    # slice as for a whole matrix
    g = torch.Generator().manual_seed(3)
    w = torch.randn(70, 33, generator=g)
    w[5, 7] = 0.0
    w[6] = 0.0  # an all-zero row: scale clamps to 1e-12 / 127, q = 0
    q, scale, scratch = torch.empty(80, 33, dtype=torch.int8), torch.empty(80), torch.empty(70 * 33 + 5)
    for _ in range(2):  # reuse: same values in the same storage
        _round_into(w, q[10:], scale[10:], scratch)
    ref_scale = w.abs().amax(1).clamp(min=1e-12) / 127.0
    assert torch.equal(scale[10:], ref_scale)
    assert torch.equal(q[10:], torch.round(w / ref_scale[:, None]).to(torch.int8))
    assert int(q[10:].abs().max()) == 127 and q[16].abs().sum() == 0


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [1, 5, 64])
def test_int8_linear_equals_dequantise_then_fp32(rows, kernel):
    # the product is exactly fp32(dequant(x_q) @ dequant(w_q).T) up to fp32 rounding of the
    # int32 -> float rescale: tolerance 1e-5 of the output's scale. All the int8 error is in
    # the rounding of x and w, which the reference shares.
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(48, 40, generator=g) * 0.1, torch.randn(48, generator=g)
    x = torch.randn(rows, 40, generator=g)
    x[:, 3] *= 20  # an outlier channel, as LLM activations have
    packed = quantize(w, b, kernel)
    ours = linear(x, packed)
    dw, db = dequantized(packed)
    ref = F.linear(quantize_activation(x), dw, db)
    scale = ref.abs().max()
    assert (ours - ref).abs().max() <= 1e-5 * scale
    # and it is an approximation of the fp32 product, not it: 8-bit rounding leaves ~1% of scale
    err = (ours - F.linear(x, w, b)).abs().max() / scale
    assert 1e-4 < err < 0.05, float(err)
    # (B, S, K) inputs keep their leading dims
    assert linear(x.view(rows, 1, 40), packed).shape == (rows, 1, 48)


@pytest.mark.parametrize("rows,k", [(1, 40), (16, 576), (64, 67)])
def test_int_mm_path_is_exact_integer_arithmetic(rows, k):
    # the _int_mm path against the same quantisation done by hand in int64 / float64: x's
    # uint8 codes from ATen's own per-tensor quantiser (the qparams fbgemm chooses), sum (xq -
    # zp) q in int64, then x_scale * w_scale in fp32 (as fbgemm multiplies) times that sum: the
    # only difference left is the final fp32 rounding (2^-24 relative)
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(96, k, generator=g) * 0.05, torch.randn(96, generator=g)
    x = torch.randn(rows, k, generator=g) + 0.3
    x[:, 1] *= 30
    m = quantize(w, b, "int_mm")
    s, zp = torch._choose_qparams_per_tensor(x, False)
    xq = torch.quantize_per_tensor(x, s, zp, torch.quint8).int_repr().long()
    raw = (xq - zp) @ m.q.long().t()  # exact
    ref = raw.double() * (m.scale * s).double() + b.double()
    ours = int8_linear(x, m)
    assert ours.dtype == torch.float32
    assert (ours.double() - ref).abs().max() <= 2e-7 * ref.abs().max()
    # and the column sums the zero-point shift uses are the weight's
    assert torch.equal(m.colsum.long(), m.q.long().sum(1))


@pytest.mark.parametrize("rows", [1, 16, 64])
def test_the_two_kernels_agree(rows):
    # the same int8 weights, the same activation quantisation: fbgemm's u8 x s8 product and
    # _int_mm's s8 x s8 with the shift put back agree to fp32 rounding
    g = torch.Generator().manual_seed(7)
    w = torch.randn(1536, 576, generator=g) * 0.03
    x = torch.randn(rows, 576, generator=g)
    a, f = quantize(w, None, "int_mm"), quantize(w, None, "fbgemm")
    assert torch.equal(dequantized(a)[0], dequantized(f)[0])
    ya, yf = linear(x, a), linear(x, f)
    assert (ya - yf).abs().max() <= 1e-6 * yf.abs().max()


@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_gate_up_equals_two_products(kernel):
    # gate and up as one (2I, K) int8 product: one quantisation of their shared input, as each
    # of two products did, and per-row weight scales: bitwise the two separate products
    g = torch.Generator().manual_seed(1)
    wg, wu = torch.randn(96, 64, generator=g), torch.randn(96, 64, generator=g) * 0.1
    h = torch.randn(16, 64, generator=g)
    fused = linear(h, quantize(torch.cat([wg, wu]), None, kernel))
    sep = torch.cat([linear(h, quantize(wg, None, kernel)), linear(h, quantize(wu, None, kernel))], -1)
    assert torch.equal(fused, sep)


def _reference_linear(x, packed, bias=None):
    return F.linear(quantize_activation(x), *dequantized(packed))


class _Reference(Int8Weights):
    """The same copies, multiplied by the reference (dequantise, then fp32)."""
    linear = staticmethod(_reference_linear)

    def _head(self, slot, mods):
        head = super()._head(slot, mods)
        if self.head_mode != "int8":
            return head
        packed = quantize(self.hf.lm_head.weight, None, self.kernel)
        return lambda h: _reference_linear(h, packed)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("head", ["fp32", "int8"])
def test_runner_int8_decode_equals_the_reference_product(head, kernel):
    # the whole runner: prefill fp32 (bitwise the fp32 runner's), decode steps through the int8
    # copies (== the reference product within 1e-4 of the logits' scale), the head as asked
    model = tiny_llama(attention_bias=True)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    q = Int8Weights(model, head=head, kernel=kernel)
    ref_q = _Reference(model, head=head, kernel=kernel)
    nxt = torch.tensor([3, 4, 5, 6])
    with torch.no_grad():
        fp32 = LlamaRunner(model, 4, ids.shape[1] + 2)
        ours, ref = LlamaRunner(model, 4, ids.shape[1] + 2, quantized=q), LlamaRunner(model, 4, ids.shape[1] + 2,
                                                                                       quantized=ref_q)
        p32, p8, pref = fp32.prefill(ids, mask, pos), ours.prefill(ids, mask, pos), ref.prefill(ids, mask, pos)
        assert torch.equal(p8, p32) and torch.equal(pref, p32)
        s32, s8, sref = (r.step(nxt, pos[:, -1] + 1) for r in (fp32, ours, ref))
    scale = s32.abs().max()
    assert (s8 - sref).abs().max() <= 1e-4 * scale
    assert 0 < (s8 - s32).abs().max() < 0.1 * scale  # int8 is close to fp32, and not it


def test_bf16_head_is_the_bf16_product():
    # the default head of the decode steps: bf16 weights and activations, fp32 accumulation,
    # bf16 out; against an fp32 product of the bf16-rounded operands: within bf16's output
    # rounding (2^-8 relative)
    model = tiny_llama()
    q = Int8Weights(model)
    h = torch.randn(5, 64)
    w = model.lm_head.weight.detach()
    ref = h.bfloat16().float() @ w.bfloat16().float().t()
    assert (q.head(h) - ref).abs().max() <= 2 ** -8 * ref.abs().max()
    # on oneDNN's reordered bf16 weights where it has them: bitwise the plain bf16 product
    assert torch.equal(q.head(h), F.linear(h.bfloat16(), w.bfloat16()).float())


@pytest.mark.parametrize("kernel", KERNELS)
def test_refresh_after_an_optimizer_step_sees_the_new_weights(kernel):
    # torch's fused AdamW (the one training.make_optimizer builds) does not bump the parameters'
    # version counters: trainable weights must be re-packed at every refresh anyway
    from rlhfkit.training import make_optimizer

    model = tiny_llama().train()
    q = Int8Weights(model, kernel=kernel)
    old, _ = dequantized(q.layers[0][9][0])
    opt = make_optimizer(model, 0.05, 0.0)
    model(input_ids=torch.tensor([PROMPTS[0]])).logits.sum().backward()
    opt.step()
    q.refresh()
    new, _ = dequantized(q.layers[0][9][0])
    w = model.model.layers[0].mlp.down_proj.weight.detach()
    assert not torch.equal(new, old)
    assert (new - w).abs().max() <= w.abs().amax(1).max() / 127 / 2 + 1e-6  # half a step of the row's scale


@pytest.mark.parametrize("kernel", KERNELS)
def test_refresh_repacks_only_what_changed_among_frozen_weights(kernel):
    model = tiny_llama().requires_grad_(False)  # frozen, as LoRA's base weights
    q = Int8Weights(model, kernel=kernel)
    before = [list(layer) for layer in q.layers]
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(2.0)  # an in-place write bumps the version
    assert q.refresh() >= 0
    assert q.remade == [4 * 1 + 3]  # layer 1's down_proj, and nothing else
    # slot order in a layer tuple: 2 qkv, 4 (o, None), 7 (gate and up fused, None), 8 (None, None), 9 down
    if q._patch is None:  # re-packed: a new copy (patched: the same one, rewritten in place)
        assert q.layers[1][9][0] is not before[1][9][0]
    dq, _ = dequantized(q.layers[1][9][0])
    w = model.model.layers[1].mlp.down_proj.weight
    assert (dq - w).abs().max() <= w.abs().amax(1).max() / 127 / 2 + 1e-6
    for i, layer in enumerate(q.layers):
        assert layer[2] is before[i][2]  # not re-packed
        assert layer[8] == (None, None)
        for j in (4, 7, 9):
            if (i, j) != (1, 9):
                assert layer[j][0] is before[i][j][0], (i, j)


def test_packing_on_two_threads_equals_one():
    # refresh packs fbgemm's copies on torch.get_num_threads() Python threads: the same copies,
    # in the same slots, as packed one after another
    model = tiny_llama()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = Int8Weights(model, head="int8", kernel="fbgemm")
        torch.set_num_threads(2)
        two = Int8Weights(model, head="int8", kernel="fbgemm")
    finally:
        torch.set_num_threads(threads)
    h = torch.randn(3, 64)
    for a, b in zip(one.layers, two.layers):
        for j in (2, 4, 7, 9):
            wa, wb = (a[j] if j == 2 else a[j][0]), (b[j] if j == 2 else b[j][0])
            assert torch.equal(dequantized(wa)[0], dequantized(wb)[0]), j
    assert torch.equal(one.head(h), two.head(h))


def test_refresh_after_a_checkpoint_load_repacks():
    # a resume loads the weights after the copies were made: load_state_dict's in-place copy
    # bumps the versions, so the next refresh sees new weights
    model, other = tiny_llama(seed=0).requires_grad_(False), tiny_llama(seed=1)
    q = Int8Weights(model)
    model.load_state_dict(other.state_dict())
    q.refresh()
    dq, _ = dequantized(q.layers[0][9][0])
    w = other.model.layers[0].mlp.down_proj.weight
    assert (dq - w).abs().max() <= w.abs().amax(1).max() / 127 / 2 + 1e-6


def test_generate_with_int8_is_reproducible_and_close_to_fp32():
    model = tiny_llama()
    q = Int8Weights(model)
    kw = {"max_new_tokens": 6, "temperature": 1.0, "eos_token_ids": (), "pad_token_id": 0}
    a = generate(model, PROMPTS, generator=torch.Generator().manual_seed(1), quantized=q, **kw)
    b = generate(model, PROMPTS, generator=torch.Generator().manual_seed(1), quantized=q, **kw)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
    # the sampler's logprobs vs the fp32 model's on the same tokens: near, not equal. The first
    # token comes from the fp32 prefill: exact there
    gaps = []
    for i, p in enumerate(PROMPTS):
        ref = full_logprobs(model, p, a.tokens[i].tolist(), 1.0)
        assert abs(float(ref[0] - a.logprobs[i, 0])) < 1e-4
        gaps.append((ref[1:] - a.logprobs[i, 1:]).abs())
    gap = torch.cat(gaps).mean()
    assert 0 < gap < 0.1, float(gap)


def test_int8_needs_the_llama_fast_path():
    with pytest.raises(Unsupported):
        Int8Weights(tiny_gpt2())
    with pytest.raises(ValueError, match="torch backend"):
        generate(tiny_llama(), PROMPTS, max_new_tokens=2, quantized=Int8Weights(tiny_llama()), backend="hf")


@pytest.mark.parametrize("kernel", KERNELS)
def test_lora_copies_are_base_plus_delta_and_follow_the_adapters(kernel):
    # LoRA: each copy is of base + the active deltas (gate and up fused: both halves), and a
    # change of the adapter weights (trainable) is seen by the next refresh
    from rlhfkit.generation.llama_fast import _linear
    from rlhfkit.models import add_lora

    model = add_lora(tiny_llama(), 4, 8)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)  # peft starts B at 0: make the deltas real
    q = Int8Weights(model, kernel=kernel)

    def check():
        mlp = q.hf.model.layers[1].mlp
        w = torch.cat([_linear(mlp.gate_proj)[0], _linear(mlp.up_proj)[0]]).detach()
        dq, _ = dequantized(q.layers[1][7][0])
        assert dq.shape == w.shape
        assert (dq - w).abs().max() <= w.abs().amax(1).max() / 127 / 2 + 1e-6
        return w

    w0 = check()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.mul_(-1.0)
    q.refresh()
    w1 = check()
    assert not torch.allclose(w0, w1)


def _patcher_or_skip():
    import shutil

    from rlhfkit.generation.int8_patch import reason
    from rlhfkit.generation.quant import patcher

    if not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: int8 refreshes repack (the in-place patch needs one to build)")
    assert patcher() is not None, reason()  # with a compiler it must build and pass its self-test
    return patcher()


@pytest.mark.parametrize("avx2", [True, False])
def test_requantize_op_is_torchs_rounding_and_a_fresh_prepack_of_it(avx2):
    from rlhfkit.generation.quant import fbgemm_pack

    op = _patcher_or_skip()
    g = torch.Generator().manual_seed(3)
    for n, k, bias in ((64, 40, False), (96, 67, True), (16, 5, False)):  # K not a multiple of 8 or of fbgemm's blocks
        w = torch.randn(n, k, generator=g)
        b = torch.randn(n, generator=g) if bias else None
        q, s, want_q, want_s = (torch.empty(n, k, dtype=torch.int8), torch.empty(n),
                                torch.empty(n, k, dtype=torch.int8), torch.empty(n))
        scratch = torch.empty(n * k)
        _round_into(w, q, s, scratch)
        packed = fbgemm_pack(q, s, None if b is None else b.clone())
        w2 = w.clone()
        w2[::7, ::3] += 0.2  # some values move, most rows' scales too
        w2[1, :3] = torch.tensor([-127.0, 0.5, 1.5])  # scale 1: ties go to even (0, 2)
        before = q.clone()
        _round_into(w2, want_q, want_s, scratch)
        b2 = None if b is None else b - 1
        changed = op(packed, w2[:10].contiguous(), 0, q[:10], s[:10], None, avx2)  # two row blocks, as q/k/v
        changed += op(packed, w2[10:].contiguous(), 10, q[10:], s[10:], b2, avx2)
        assert torch.equal(q, want_q) and torch.equal(s, want_s)
        assert q[1, 1] == 0 and q[1, 2] == 2
        assert changed == int((want_q != before).sum()) > 0
        fresh = fbgemm_pack(want_q, want_s, b2)
        x = torch.randn(9, k, generator=g)
        assert torch.equal(linear(x, packed), linear(x, fresh))
        (u, ub), (f, fb) = torch.ops.quantized.linear_unpack(packed), torch.ops.quantized.linear_unpack(fresh)
        assert torch.equal(u.int_repr(), want_q) and torch.equal(u.q_per_channel_scales(), f.q_per_channel_scales())
        assert (ub is None) == (b is None) and (ub is None or torch.equal(ub, fb))
    with pytest.raises(RuntimeError, match="not inside the packed weight"):
        op(packed, w2[:10].contiguous(), n - 5, q[:10], s[:10], None)


def test_patched_refreshes_equal_repacked_ones_over_optimizer_steps():
    # two sets of copies of one model, one patched in place and one repacked at each refresh:
    # after every AdamW step every product (the int8 head's too) gives the same bits, and a patch
    # writes only the int8 values that changed
    from rlhfkit.training import make_optimizer

    _patcher_or_skip()
    model = tiny_llama().train()
    patched = Int8Weights(model, head="int8", kernel="fbgemm", patch=True)
    packed = Int8Weights(model, head="int8", kernel="fbgemm", patch=False)
    assert patched._patch is not None and packed._patch is None
    opt = make_optimizer(model, 0.01, 0.0)
    h = torch.randn(5, 64)
    for step in range(3):
        model(input_ids=torch.tensor([PROMPTS[0]])).logits.sum().backward()
        opt.step()
        opt.zero_grad()
        before = [dequantized(layer[9][0])[0] for layer in patched.layers]
        patched.refresh()
        packed.refresh()
        assert sorted(patched.remade) == sorted(packed.remade) and len(patched.remade) == 9  # 2 layers x 4 + head
        after = [dequantized(layer[9][0])[0] for layer in patched.layers]
        assert 0 < patched.patched_values < sum(p.numel() for p in model.parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before)), step
        for a, b in zip(patched.layers, packed.layers):
            for j in (2, 4, 7, 9):
                wa, wb = (a[j] if j == 2 else a[j][0]), (b[j] if j == 2 else b[j][0])
                x = torch.randn(3, dequantized(wa)[0].shape[1])
                assert torch.equal(linear(x, wa), linear(x, wb)), (step, j)
        assert torch.equal(patched.head(h), packed.head(h))


def test_patch_is_off_on_request_and_int_mm_never_patches():
    model = tiny_llama()
    assert Int8Weights(model, kernel="fbgemm", patch=False)._patch is None
    assert Int8Weights(model, kernel="int_mm")._patch is None


def test_without_the_patch_refreshes_repack_and_a_failed_build_says_why(monkeypatch, tmp_path, capsys):
    from rlhfkit.generation import int8_patch

    monkeypatch.setenv("RLHFKIT_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "false")  # a "compiler" that fails
    with pytest.raises(RuntimeError, match="compiling csrc/int8_patch.cpp failed"):
        int8_patch._build()
    assert not list(tmp_path.glob("ext/*"))  # no half-written library left behind
    bad = tmp_path / "not-a-library.so"
    bad.write_text("junk")
    with pytest.raises(RuntimeError, match="self-test of not-a-library.so failed in a child process"):
        int8_patch._vet(bad)  # a library that fails (or crashes) in the child is never loaded here
    assert not bad.with_suffix(".ok").exists()
    monkeypatch.setattr(int8_patch, "_state", {})
    monkeypatch.setenv("RLHFKIT_INT8_PATCH", "0")
    from rlhfkit.generation.quant import patcher

    assert patcher() is None and int8_patch.reason() == "RLHFKIT_INT8_PATCH=0"
    assert "the in-place patch is off" in capsys.readouterr().err
    model = tiny_llama().train()
    q = Int8Weights(model, kernel="fbgemm")
    assert q._patch is None
    with pytest.raises(Unsupported, match="in-place patch is unavailable"):
        Int8Weights(model, kernel="fbgemm", patch=True)
