"""The Llama fast path's decode-step kernels (generation/llama_fast.py) against the plain
computation: the grouped GQA attention against SDPA on expanded K/V, and a whole runner's
steps with each decode attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_generation import PROMPTS, tiny_llama

from rlhfkit.generation import left_pad
from rlhfkit.generation.llama_fast import LlamaRunner, grouped_decode_attention


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4), (3, 1)])
def test_grouped_decode_attention_is_sdpa_on_expanded_kv(heads, kv_heads):
    g = torch.Generator().manual_seed(0)
    B, L, D = 3, 7, 8
    q = torch.randn(B, heads, D, generator=g)
    k, v = torch.randn(B, kv_heads, L, D, generator=g), torch.randn(B, kv_heads, L, D, generator=g)
    keep = torch.ones(B, L, dtype=torch.bool)
    keep[0, :3] = False  # left pads of row 0
    keep[2, 5] = False
    # the plain computation: each query head h reads kv head h // (heads / kv_heads), as HF's repeat_kv
    rep = heads // kv_heads
    ref = F.scaled_dot_product_attention(q[:, :, None], k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                         attn_mask=keep[:, None, None, :])[:, :, 0].reshape(B, heads * D)
    bias = torch.zeros(B, kv_heads, rep, L).masked_fill_(~keep[:, None, None, :], float("-inf"))
    ours = grouped_decode_attention(q, k, v, bias.view(B * kv_heads, rep, L))
    assert ours.shape == (B, heads * D)
    assert (ours - ref).abs().max() < 1e-6  # the same softmax-weighted sums of values of size ~1
    # a masked key gets weight 0: moving its value changes nothing
    v2 = v.clone()
    v2[0, :, 0] += 100.0
    assert torch.equal(grouped_decode_attention(q, k, v2, bias.view(B * kv_heads, rep, L)), ours)


def test_runner_steps_agree_with_each_decode_attention():
    model = tiny_llama()  # 4 query heads over 2 kv heads
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    outs = {}
    with torch.no_grad():
        for attention in ("sdpa", "grouped"):
            r = LlamaRunner(model, 4, ids.shape[1] + 3, matmul="torch", attention=attention)
            r.prefill(ids, mask, pos)
            p, steps = mask.long().sum(-1), []
            for tok in ([3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]):
                steps.append(r.step(torch.tensor(tok), p))
                p = p + 1
            outs[attention] = torch.stack(steps)
    assert (outs["grouped"] - outs["sdpa"]).abs().max() < 1e-5  # logits ~1-10, fp32 sums reordered


@pytest.mark.parametrize("chunk", [8, 256])
def test_prefill_in_trimmed_chunks_matches_hf_forward(chunk, monkeypatch):
    # prompts of 7, 2, 4 and 5 tokens (left-padded to 7): with chunks of 8 tokens the rows run
    # longest first as [7 cols] [5 cols] [4 cols: the 4- and 2-token rows], each chunk from its
    # first real column; the cache starts as NaN, so a pad slot left stale would poison the step
    monkeypatch.setattr(LlamaRunner, "PREFILL_TOKENS", chunk)
    model = tiny_llama(tie=False, attention_bias=True)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    nxt = torch.tensor([3, 4, 5, 6])
    with torch.no_grad():
        r = LlamaRunner(model, 4, ids.shape[1] + 1, matmul="torch")
        for kc, vc in zip(r.k_cache, r.v_cache):
            kc.fill_(float("nan")), vc.fill_(float("nan"))
        first = r.prefill(ids, mask, pos)
        second = r.step(nxt, mask.long().sum(-1))
        ref = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits[:, -1]
        ids2, mask2 = torch.cat([ids, nxt[:, None]], 1), torch.cat([mask, torch.ones(4, 1, dtype=torch.bool)], 1)
        ref2 = model(input_ids=ids2, attention_mask=mask2.long(),
                     position_ids=(mask2.long().cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    assert (first - ref).abs().max() < 1e-4 and (second - ref2).abs().max() < 1e-4  # logits ~10, fp32


def _one_level_draw(z, generator):
    # the plain inverse-CDF draw on one running sum over the whole row (the sampler before
    # its two-level CDF), on the same uniform per row
    cdf = (z - z.amax(-1, keepdim=True)).exp().cumsum(-1)
    u = torch.rand(z.shape[0], 1, generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp(max=z.shape[1] - 1)


def test_two_level_cdf_draw_is_the_one_level_draw():
    from rlhfkit.generation.sampler import CDF_BLOCK, sample_next

    V = 2 * CDF_BLOCK + 300  # three blocks, the last partial
    z = torch.randn(500, V, generator=torch.Generator().manual_seed(0)) * 3
    tok, lp = sample_next(z, 1.0, 1.0, 0, torch.Generator().manual_seed(1))
    # the same uniforms pick the same tokens (a difference needs u within ~1e-7 of an edge)
    assert torch.equal(tok, _one_level_draw(z, torch.Generator().manual_seed(1)))
    assert torch.allclose(lp, z.log_softmax(-1).gather(-1, tok[:, None])[:, 0], atol=1e-5)


def test_two_level_cdf_draw_frequencies_and_impossible_tokens():
    from rlhfkit.generation.sampler import CDF_BLOCK, sample_next

    # mass 0.4 on the last token of block 0, 0.1 on the first of block 1, 0.5 on the last of
    # the (partial) last block; every other token impossible (-inf): never drawn
    V = 2 * CDF_BLOCK + 5
    row = torch.full((V,), float("-inf"))
    row[CDF_BLOCK - 1], row[CDF_BLOCK], row[V - 1] = torch.tensor([0.4, 0.1, 0.5]).log()
    tok, lp = sample_next(row.expand(20000, V).contiguous(), 1.0, 1.0, 0, torch.Generator().manual_seed(0))
    counts = {t: int((tok == t).sum()) for t in (CDF_BLOCK - 1, CDF_BLOCK, V - 1)}
    assert sum(counts.values()) == 20000
    # binomial sd at n = 20000: <= 0.0035; 0.015 is over 4 sd
    for t, p in zip(counts, (0.4, 0.1, 0.5)):
        assert abs(counts[t] / 20000 - p) < 0.015
    assert torch.allclose(lp, row[tok])  # log 0.4, log 0.1 or log 0.5


def test_rope_is_hf_rotary_bitwise():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from rlhfkit.generation.llama_fast import _rope, signed_sin

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 3, 8, generator=g), torch.randn(2, 5, 1, 8, generator=g)  # (B, S, heads, hd)
    cos, sin = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=2)
    assert torch.equal(_rope(q, cos[:, :, None], signed_sin(sin)[:, :, None]), ref_q)
    assert torch.equal(_rope(k, cos[:, :, None], signed_sin(sin)[:, :, None]), ref_k)


def test_sample_next_with_a_stale_workspace_is_the_same_draw():
    from rlhfkit.generation.sampler import cdf_workspace, sample_next

    z = torch.randn(6, 3000, generator=torch.Generator().manual_seed(0))
    work = cdf_workspace(8, 3000, z).fill_(float("nan"))  # more rows than drawn, stale contents
    a = sample_next(z, 1.0, 1.0, 0, torch.Generator().manual_seed(2))
    b = sample_next(z, 1.0, 1.0, 0, torch.Generator().manual_seed(2), work)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("matmul", ["torch", "onednn"])
def test_greedy_with_grouped_decode_attention_matches_hf_generate(matmul, monkeypatch):
    from rlhfkit.generation import generate, sampler

    if matmul == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("needs oneDNN")
    monkeypatch.setattr(sampler, "MATMUL", matmul)
    monkeypatch.setattr(sampler, "COMPACT_AT", 0.95)  # row 2 ends at its 4th token (eos 7): 3 rows step on
    model = tiny_llama()
    kw = {"max_new_tokens": 12, "temperature": 0.0, "pad_token_id": 0, "eos_token_ids": [7]}
    ref = generate(model, PROMPTS, **kw, backend="hf")
    ours = generate(model, PROMPTS, **kw)
    assert ref.finished.tolist() == [False, False, True, False]
    assert ours.tokens.tolist() == ref.tokens.tolist() and ours.mask.tolist() == ref.mask.tolist()
    assert torch.allclose(ours.logprobs, ref.logprobs, atol=1e-4)


def test_transposed_key_cache_steps_match_the_plain_cache(monkeypatch):
    # the grouped attention's runner stores each layer's keys transposed ((B, Hkv, hd, L) memory,
    # indexed as (B, Hkv, L, hd)); the steps, through the shared-prompt prefill's cache copies
    # and a compaction (keep), must match a plain-layout runner's (SDPA's) and HF's forward
    model = tiny_llama()  # 4 query heads over 2 kv heads
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    rows = torch.tensor([0, 1, 1, 2, 3, 3])  # rows 1 and 3 twice: the prefill copies their cache
    outs = {}
    with torch.no_grad():
        for attention in ("sdpa", "grouped"):
            monkeypatch.setattr(LlamaRunner, "DECODE_ATTENTION", attention)
            r = LlamaRunner(model, 6, ids.shape[1] + 4, matmul="torch")
            k = r.k_cache[0]
            assert k.shape == (6, 2, ids.shape[1] + 4, r.hd)
            assert (k.stride(-1) == 1) == (attention == "sdpa")  # transposed storage for grouped
            logits = [r.prefill(ids, mask, pos, rows)]
            p = mask.long().sum(-1)[rows]
            toks = [torch.tensor([3, 4, 5, 6, 7, 8]), torch.tensor([9, 10, 11, 12, 13, 14])]
            for tok in toks:
                logits.append(r.step(tok, p))
                p = p + 1
            r.keep(torch.tensor([1, 2, 5]))  # three rows on
            logits.append(r.step(torch.tensor([15, 16, 17]), p[[1, 2, 5]]))
            outs[attention] = logits
        ref_ids = torch.cat([ids[rows], torch.stack(toks, 1)], 1)
        ref_mask = torch.cat([mask[rows], torch.ones(6, 2, dtype=torch.bool)], 1)
        ref_ids = torch.cat([ref_ids[[1, 2, 5]], torch.tensor([[15], [16], [17]])], 1)
        ref_mask = torch.cat([ref_mask[[1, 2, 5]], torch.ones(3, 1, dtype=torch.bool)], 1)
        ref = model(input_ids=ref_ids, attention_mask=ref_mask.long(),
                    position_ids=(ref_mask.long().cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
    for a, b in zip(outs["grouped"], outs["sdpa"]):
        assert (a - b).abs().max() < 3e-5  # logits up to ~10: ~1e-6 relative, fp32 sums reordered
    assert (outs["grouped"][-1] - ref).abs().max() < 1e-4
