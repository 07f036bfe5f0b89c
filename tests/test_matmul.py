"""The Llama fast path's product paths (generation/matmul.py): each against HF's forward and
HF generate, oneDNN's reordered + fused weights bitwise its plain products, and the pick."""

from __future__ import annotations

import pytest
import torch
from test_generation import PROMPTS, tiny_llama

from rlhfkit.generation import generate, left_pad, sampler
from rlhfkit.generation.llama_fast import LlamaRunner
from rlhfkit.generation.matmul import MATMULS, PACK_MIN_ROW_STEPS, pick

AVAILABLE = [m for m in MATMULS if not (m.startswith("onednn") and not torch.backends.mkldnn.is_available())
             and not (m == "mkl" and not torch.backends.mkl.is_available())]


def _prefill_and_step(runner, ids, mask, pos, nxt):
    return runner.prefill(ids, mask, pos), runner.step(nxt, pos[:, -1] + 1)


@pytest.mark.parametrize("matmul", AVAILABLE)
@pytest.mark.parametrize("rows", [4, 1])
def test_every_path_matches_hf_forward(matmul, rows):
    # biases on q/k/v/o and the MLP (attention_bias, mlp_bias) so the fused gate/up bias counts;
    # 1 row: the matrix-vector kernels
    model = tiny_llama(tie=False, attention_bias=True, mlp_bias=True)
    ids, mask = left_pad(PROMPTS[:rows], pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([3, 4, 5, 6][:rows])
    with torch.no_grad():
        runner = LlamaRunner(model, batch=rows, max_len=ids.shape[1] + 2, matmul=matmul)
        assert runner.matmul == matmul
        first, second = _prefill_and_step(runner, ids, mask, pos, nxt)
        ref = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits[:, -1]
        ids2 = torch.cat([ids, nxt[:, None]], 1)
        mask2 = torch.cat([mask, torch.ones(rows, 1, dtype=torch.bool)], 1)
        ref2 = model(input_ids=ids2, attention_mask=mask2.long(),
                     position_ids=(mask2.long().cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    # fp32 sums in another order: ~1e-6 of logits of size ~10
    assert (first - ref).abs().max() < 1e-4 and (second - ref2).abs().max() < 1e-4


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN (x86 CPU torch)")
def test_onednn_reordered_and_fused_weights_are_bitwise_the_plain_products():
    # "onednn" reorders every weight and fuses gate/up into one (2I, D) product; "onednn-plain"
    # runs the same kernel on the model's own weights, gate and up apart: the same bits, so the
    # pick between them (a speed choice) never changes a sample
    model = tiny_llama(attention_bias=True, mlp_bias=True)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([3, 4, 5, 6])
    with torch.no_grad():
        packed = LlamaRunner(model, 4, ids.shape[1] + 2, matmul="onednn")
        plain = LlamaRunner(model, 4, ids.shape[1] + 2, matmul="onednn-plain")
        assert packed.layers[0][8] == (None, None) and plain.layers[0][8][0] is not None  # up fused into gate
        for a, b in zip(_prefill_and_step(packed, ids, mask, pos, nxt), _prefill_and_step(plain, ids, mask, pos, nxt)):
            assert torch.equal(a, b)


@pytest.mark.parametrize("matmul", AVAILABLE)
def test_greedy_matches_hf_generate_on_every_path(matmul, monkeypatch):
    model = tiny_llama()
    kw = {"max_new_tokens": 12, "temperature": 0.0, "pad_token_id": 0, "eos_token_ids": [7]}
    ref = generate(model, PROMPTS, **kw, backend="hf")
    monkeypatch.setattr(sampler, "MATMUL", matmul)
    ours = generate(model, PROMPTS, **kw)
    assert ours.tokens.tolist() == ref.tokens.tolist() and ours.mask.tolist() == ref.mask.tolist()
    assert torch.allclose(ours.logprobs, ref.logprobs, atol=1e-4)


def test_pick():
    cpu, f32 = torch.device("cpu"), torch.float32
    assert PACK_MIN_ROW_STEPS == 256  # the cases below sit on either side of it
    short = "mkl" if torch.backends.mkl.is_available() else "torch"
    if torch.backends.mkldnn.is_available():
        assert pick(cpu, f32, 64, 80) == "onednn"  # 5120 row-steps: the reorder pays back
        assert pick(cpu, f32, 2, 128) == "onednn"  # exactly 256
    assert pick(cpu, f32, 2, 127) == short  # 254: too short a call to reorder for
    assert pick(cpu, f32, 1, 10_000) == short  # one row: a gemv, where MKL is as fast or faster
    assert pick(cpu, torch.bfloat16, 64, 80) == "torch"
    assert pick(torch.device("meta"), f32, 64, 80) == "torch"
