"""The Llama fast path of the "torch" sampler: a LlamaForCausalLM (SmolLM2 is one) run from its
own weights, with a preallocated KV cache, by a runner the sampler drives. Its matrix products
go through one of generation/matmul.py's paths (by default the fastest exact one for the call).

The runner reads the model's weights (peft LoRA deltas folded in, so adapters apply without
peft's module machinery) and runs the layers itself, so that per token there is no HF module
dispatch, no mask building and no cache growth. A model it cannot run exactly (wrapped
embeddings, DoRA, dynamic RoPE, ...) raises `Unsupported`, and the sampler falls back to
`hf.HFRunner`. The runner protocol, shared with HFRunner:
prefill(ids, mask, pos, rows) -> (B, V) last logits; step(tok, pos) -> (R, V); keep(rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.generation.matmul import MATMULS, pick


class Unsupported(Exception):
    """The fast path cannot run this model exactly; the generic runner takes it."""


def _linear(mod) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of an nn.Linear, or of a peft LoRA Linear with its active deltas added."""
    from torch import nn

    if type(mod) is nn.Linear:
        return mod.weight, mod.bias
    base = getattr(mod, "base_layer", None)
    if type(base) is nn.Linear and hasattr(mod, "get_delta_weight") and hasattr(mod, "lora_A"):
        w = base.weight
        if getattr(mod, "disable_adapters", False):
            return w, base.bias
        active = [a for a in mod.active_adapters if a in mod.lora_A]
        variants = getattr(mod, "lora_variants", {}) or {}
        if any(a in variants or getattr(mod, "use_dora", {}).get(a) for a in active):
            raise Unsupported("DoRA / LoRA variant")
        if getattr(mod, "lora_bias", {}) and any(mod.lora_bias.get(a) for a in active):
            raise Unsupported("LoRA bias")
        merged = set(getattr(mod, "merged_adapters", []))
        for a in active:
            if a not in merged:  # a merged adapter already lives in base.weight
                w = w + mod.get_delta_weight(a)
        return w, base.bias
    raise Unsupported(f"{type(mod).__name__} is not a plain or LoRA Linear")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # one fused op instead of LlamaRMSNorm's six; the same math (x / rms(x) * w), agreeing to ~1e-6
    return F.rms_norm(x, weight.shape, weight, eps)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's x * cos + rotate_half(x) * sin with `sin` given as signed_sin(sin): rotate_half(x)
    = cat(-x2, x1) and cat(-x2, x1) * sin = roll(x, half) * cat(-sin1, sin2), bitwise (a sign
    flip is exact), in 4 kernels instead of 6."""
    return (x * cos).add_(x.roll(x.shape[-1] // 2, -1).mul_(sin))


def signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """(..., hd) sin -> its first half negated, the factor _rope multiplies the rolled x by."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def grouped_decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """One query per row against its cache, GQA without expanding K/V: q (B, H, D) with the
    H = Hkv x g query heads kv-major (head h reads kv head h // g, as HF's repeat_kv), k, v
    (B, Hkv, L, D) (views into the cache), bias (B * Hkv, g, L) additive (0 / -inf) -> (B, H * D).

    The g query heads of a kv head become the rows of one (g, D) x (D, L) product, so K and V
    are read once per kv head. Why not SDPA: its CPU flash kernel spends ~1.5 ms a layer here
    (SmolLM2-135M, 64 rows, one thread: 9 heads x ~40 keys of work that is ~0.1 ms of
    arithmetic); softmax(q k^T / sqrt(D) + bias) v is its math, agreeing to ~1e-6. k and v
    may have any strides whose (B, Hkv) dims merge into one: a cache view, plain or with the
    keys stored transposed as LlamaRunner.allocate keeps them (q k^T then reads K^T's rows)."""
    B, Hkv, L, D = k.shape
    g = q.shape[1] // Hkv
    s = torch.baddbmm(bias, q.reshape(B * Hkv, g, D), k.reshape(B * Hkv, L, D).transpose(1, 2), alpha=D ** -0.5)
    return torch.bmm(s.softmax(-1), v.reshape(B * Hkv, L, D)).view(B, Hkv * g * D)


def rows_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: list,
                   scale: float | None = None, dropout: float = 0.0) -> torch.Tensor:
    """Attention of a packed sequence, one segment at a time: query (1, H, Sq, hd), key and value
    (1, Hkv, Sk, hd), segments [(q0, q1, keys (K,) long, mask (q1 - q0, K) bool)] covering the
    queries in order -> (1, H, Sq, hd). The same softmax as one SDPA call over the whole
    sequence with the block mask the segments make, without the products of every query with
    every other row's keys (16 rows of ~30 tokens: ~1/16 of them)."""
    gqa = query.shape[1] != key.shape[1]
    return torch.cat([F.scaled_dot_product_attention(query[:, :, q0:q1], key[:, :, keys], value[:, :, keys],
                                                     attn_mask=mask, dropout_p=dropout, scale=scale, enable_gqa=gqa)
                      for q0, q1, keys, mask in segments], 2)


def layer_weights(hf) -> list[tuple]:
    """Each decoder layer's weights as the runner reads them: (norm1 w, eps, Wqkv, bqkv, (Wo, bo),
    norm2 w, eps, (Wg, bg), (Wu, bu), (Wd, bd), act). generation/quant.py packs the same tuples."""
    cfg, layers = hf.config, []
    for layer in hf.model.layers[: cfg.num_hidden_layers]:
        at, mlp = layer.self_attn, layer.mlp
        (wq, bq), (wk, bk), (wv, bv) = _linear(at.q_proj), _linear(at.k_proj), _linear(at.v_proj)
        # q, k, v as one matmul (and one RoPE over the q and k heads): fewer ops per token,
        # which is most of the time of a small model; costs one copy of these weights per call.
        # Not gate and up here: MKL runs SmolLM2's (B, 576) x (576, 3072) slower than two
        # x (576, 1536) at batch 16-64 (measured 91 vs 78 ms for 30 layers at batch 64); the
        # oneDNN path fuses them when it reorders the weights (matmul.py), where one is faster
        bqkv = None if bq is None else torch.cat([bq, bk, bv])
        layers.append((
            layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
            torch.cat([wq, wk, wv]), bqkv, _linear(at.o_proj),
            layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
            _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj), mlp.act_fn,
        ))
    return layers


class LlamaRunner:
    """Runs a LlamaForCausalLM from its own weights with a preallocated KV cache.

    Cache slots are aligned across rows: slot j holds prompt column j (pads included, masked
    by `key_mask`) for j < P and generated token j - P after. Position ids count real tokens
    only (0 for the first real prompt token), as HF generate does for left padding.
    """

    PREFILL_TOKENS = 256  # prompt tokens per chunk of the prefill (see prefill)
    # a decode step's attention (the default of __init__'s `attention`): grouped_decode_attention
    # on a key cache kept transposed (see allocate), or "sdpa" on a plain one. Grouped is the
    # faster at every row count: SmolLM2-135M's decode attention, 30 layers' caches at 70 keys,
    # one thread (2026-12-02, session 21): 1 row 0.026-0.039 ms a layer vs SDPA's 0.046-0.050,
    # 16 rows 0.28-0.36 vs 0.38-0.44, 64 rows 1.16-1.18 vs 1.38-1.59. (On a plain key cache,
    # 2026-12-02: 64 rows 0.96-0.98x SDPA's step time, 16 rows 1.00x, one row 1.04x; SDPA ran
    # below 32 rows then.)
    DECODE_ATTENTION = "grouped"

    def __init__(self, hf, batch: int, max_len: int, quantized=None, matmul: str | None = None,
                 pack_rows: int | None = None, attention: str | None = None):
        """pack_rows: the rows of the products the packed weights are laid out for (default: batch);
        attention: the decode steps' attention and so the key cache's layout (default:
        DECODE_ATTENTION; "sdpa" for a runner that only prefills, as score.FrozenScorer)."""
        from torch import nn

        cfg, m = hf.config, hf.model
        if type(m.embed_tokens) is not nn.Embedding:
            raise Unsupported("embedding is wrapped")
        if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
            raise Unsupported("pretraining_tp")
        if "dynamic" in str(getattr(m.rotary_emb, "rope_type", "")):
            raise Unsupported("dynamic RoPE rescales with the sequence length HF has seen")
        self.H, self.Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.embed = m.embed_tokens.weight
        # quantized: int8 copies of the linear layers (generation/quant.py), kept by the caller
        # across calls and re-quantised after each optimizer step, for the decode steps; the
        # prefill stays fp32 (exact prompt KV; one scale over a whole prompt's activations, its
        # first token's outliers included, would round the rest away); None: fp32 throughout
        self.quant = quantized
        dev, dt = self.embed.device, self.embed.dtype
        # the products' kernel and weight layout (generation/matmul.py): by default the fastest
        # exact one for this many rows and steps; with int8 copies the fp32 weights serve the
        # prefill alone, which a reorder would not pay back (the same numbers either way)
        if matmul is None:
            matmul = pick(dev, dt, batch, max_len)
            matmul = "onednn-plain" if quantized is not None and matmul == "onednn" else matmul
        if matmul not in MATMULS:
            raise ValueError(f"unknown matmul path '{matmul}' (have: {', '.join(MATMULS)})")
        self.matmul, self.mm = matmul, MATMULS[matmul]
        rows = pack_rows or batch
        self.layers = [self._prepare(layer, rows) for layer in layer_weights(hf)]
        self.norm = (m.norm.weight, m.norm.variance_epsilon)
        w, b = _linear(hf.lm_head)
        self.lm_head = (w if self.mm.pack is None else self.mm.pack(w, rows), b)
        self._rotary = m.rotary_emb
        self.attention = attention or self.DECODE_ATTENTION
        self.allocate(batch, max_len)

    def allocate(self, batch: int, max_len: int) -> None:
        """(Re)make the KV cache for `batch` rows of `max_len` slots, and cos/sin for as many positions."""
        dev, dt = self.embed.device, self.embed.dtype
        # cos/sin of every position from the model's own rotary module (its rope_type,
        # theta and scaling); per step they are gathered by position id
        cos, sin = self._rotary(self.embed[:1][None], torch.arange(max_len, device=dev)[None])
        self.cos, self.sin = cos[0].to(dt), signed_sin(sin[0].to(dt))  # (max_len, hd)
        shape = (batch, self.Hkv, max_len, self.hd)
        # each layer's keys as (batch, Hkv, max_len, hd), indexed as such everywhere; for the
        # grouped decode attention they are stored transposed ((batch, Hkv, hd, max_len) memory),
        # so its q k^T is a plain (g, hd) x (hd, L) product over contiguous rows of K^T instead
        # of MKL's transposed-operand path for a 3-row product (one layer's scores at 16 rows,
        # cache-resident: 0.031 vs 0.091 ms). SDPA reads such keys ~5x slower (its kernel wants
        # hd innermost), so "sdpa" keeps the plain layout. Same numbers either way (a layout).
        kt = self.attention == "grouped"
        kshape = (batch, self.Hkv, self.hd, max_len) if kt else shape
        self.k_cache = [torch.empty(kshape, device=dev, dtype=dt) for _ in self.layers]
        if kt:
            self.k_cache = [k.transpose(2, 3) for k in self.k_cache]
        self.v_cache = [torch.empty(shape, device=dev, dtype=dt) for _ in self.layers]
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=dev)
        self.n = 0  # filled cache slots

    def _prepare(self, layer: tuple, rows: int) -> tuple:
        """A layer_weights tuple in the layout self.mm reads: gate and up as one (2I, D) weight
        in the gate slot (None in the up slot) when it fuses them, each weight packed when it packs."""
        n1, e1, wqkv, bqkv, o, n2, e2, g, u, d, act = layer
        if self.mm.fuse_gate_up:
            bgu = None if g[1] is None else torch.cat([g[1], u[1]])
            g, u = (torch.cat([g[0], u[0]]), bgu), (None, None)
        if self.mm.pack is not None:
            pack = self.mm.pack
            wqkv, o, g, d = pack(wqkv, rows), (pack(o[0], rows), o[1]), (pack(g[0], rows), g[1]), (pack(d[0], rows), d[1])
            u = u if u[0] is None else (pack(u[0], rows), u[1])
        return n1, e1, wqkv, bqkv, o, n2, e2, g, u, d, act

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | list | None,
                 quant: bool = False, rows: torch.Tensor | None = None, start: int = 0,
                 bias: torch.Tensor | None = None, last: bool = True) -> torch.Tensor:
        """ids, pos (B, S) -> last position's final hidden state (B, D) (last=False: every
        position's, (B, S, D)).

        A decode step (rows None): the first B cache rows get slots n..n+S-1, and the attention
        reads the cache, with `bias` (grouped_decode_attention's additive mask, S = 1), or
        attn_mask (B, 1, S, n + S) bool for SDPA, or a list of segments (rows_attention: packed
        rows in one sequence, generation/score.py); the caller then moves self.n on.
        A prefill chunk (rows: which cache rows, of an empty cache): its keys and values fill
        slots start..start+S-1 of those rows, and its attention (attn_mask (B, 1, S, S)) reads
        them as computed. quant: through the int8 copies (self.quant)."""
        B, S = ids.shape
        H, Hkv, hd = self.H, self.Hkv, self.hd
        if rows is None:
            start = self.n
        end = start + S
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (B, S, 1, hd)
        linear, layers = self.mm.linear, self.layers
        if quant:
            linear, layers = self.quant.linear, self.quant.layers
        final = len(layers) - 1
        for i, ((n1, e1, wqkv, bqkv, (wo, bo), n2, e2, (wg, bg), (wu, bu), (wd, bd), act), kc, vc) \
                in enumerate(zip(layers, self.k_cache, self.v_cache)):
            qkv = linear(_rms_norm(x, n1, e1), wqkv, bqkv).view(B, S, H + 2 * Hkv, hd)
            qk = _rope(qkv[:, :, : H + Hkv], cos, sin)  # (B, S, heads, hd): RoPE acts per head
            k, v = qk[:, :, H:].transpose(1, 2), qkv[:, :, H + Hkv:].transpose(1, 2)
            if rows is None:
                kc, vc = kc[:B], vc[:B]
                kc[:, :, start:end], vc[:, :, start:end] = k, v
                k, v = kc[:, :, :end], vc[:, :, :end]
            else:
                kc[rows, :, start:end], vc[rows, :, start:end] = k, v
            if bias is not None:  # one query per row (a decode step)
                a = grouped_decode_attention(qk[:, 0, :H], k, v, bias)[:, None]
            elif isinstance(attn_mask, list):  # segments (rows_attention)
                a = rows_attention(qk[:, :, :H].transpose(1, 2), k, v, attn_mask).transpose(1, 2).reshape(B, S, H * hd)
            else:
                a = F.scaled_dot_product_attention(qk[:, :, :H].transpose(1, 2), k, v,
                                                   attn_mask=attn_mask, enable_gqa=H != Hkv)
                a = a.transpose(1, 2).reshape(B, S, H * hd)
            if i == final and S > 1 and last:
                # past the last layer's keys and values only the last position is read: its
                # o_proj and MLP rows alone (~3% of a prefill; rows do not mix in a product)
                a, x = a[:, -1:], x[:, -1:]
            x = x + linear(a, wo, bo)
            h = _rms_norm(x, n2, e2)
            g = linear(h, wg, bg)
            if wu is None:  # gate and up as one product (Matmul.fuse_gate_up): its two halves
                g, u = g.chunk(2, dim=-1)
            else:
                u = linear(h, wu, bu)
            x = x + linear(act(g).mul_(u), wd, bd)  # act(g) is a fresh tensor: scaled in place
        return _rms_norm(x[:, -1] if last else x, *self.norm)

    def _head(self, h: torch.Tensor, quant: bool = False) -> torch.Tensor:
        """(B, D) -> (B, V) logits."""
        if quant and self.quant.head is not None:
            return self.quant.head(h)
        return self.mm.head(h, *self.lm_head)

    def prefill(self, ids, mask, pos, rows=None):
        """ids, mask, pos (U, P) -> (B, V). rows (B,): which of the U prompt rows each batch row
        is (None: U = B, row i is row i); its cache slots and last hidden state are copied there."""
        U, P = ids.shape
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        # pad queries may see themselves so no softmax row is empty (NaN would reach the cache)
        attn = (causal & mask[:, None, :]) | torch.eye(P, dtype=torch.bool, device=ids.device)
        # in chunks of ~PREFILL_TOKENS tokens: each chunk's activations (256 x 1536 fp32: 1.5 MB)
        # stay in cache and in memory the allocator reuses, where a whole 64 x 32 batch's are
        # 12.6 MB each, written to fresh pages (~7 ms of page faults per such tensor here). The
        # rows go longest prompt first, and a chunk runs only the columns from its first real
        # token on (the columns before are pads of all its rows): prompts of mixed lengths
        # cost their own tokens, not the longest one's. Its rows' slots before that column are
        # never attended to (masked) but are read, as 0 x value: zeros, never stale memory.
        # A row's numbers do not depend on the other rows of a product (matmul.py)
        first = torch.where(mask.any(-1), mask.long().argmax(-1), P - 1)  # each row's first real column
        order = first.argsort(stable=True)
        first = first[order].tolist()
        h = torch.empty(U, self.embed.shape[1], device=ids.device, dtype=self.embed.dtype)
        r = 0
        while r < U:
            c0 = first[r]  # the chunk's earliest first column: its longest row
            take = order[r:r + max(1, self.PREFILL_TOKENS // (P - c0))]
            for kc, vc in zip(self.k_cache, self.v_cache):
                kc[take, :, :c0], vc[take, :, :c0] = 0.0, 0.0
            h[take] = self._forward(ids[take, c0:], pos[take, c0:], attn[take, None, c0:, c0:], rows=take, start=c0)
            r += len(take)
        self.n = P
        if rows is None:
            self.key_mask[:U, :P] = mask
            return self._head(h)
        for kc, vc in zip(self.k_cache, self.v_cache):
            # index_select makes a copy first, so overwriting rows :U that it reads is safe
            kc[:, :, :P] = kc[:U, :, :P].index_select(0, rows)
            vc[:, :, :P] = vc[:U, :, :P].index_select(0, rows)
        self.key_mask[:, :P] = mask[rows]
        # the head over all B rows, as without sharing: MKL may round a product of U rows
        # differently (SmolLM2: logits 5e-5 apart at 4 vs 16 rows), which could flip a sample
        return self._head(h[rows])

    def step(self, tok, pos):
        """tok, pos (R,) for the first R rows (R < batch after keep) -> (R, V)."""
        R = tok.shape[0]
        self.key_mask[:R, self.n] = True
        quant = self.quant is not None
        mask, bias, L = self.key_mask[:R, None, None, : self.n + 1], None, self.n + 1
        if self.attention == "grouped":  # its additive bias, built once
            g = self.H // self.Hkv
            bias = torch.zeros(R, self.Hkv, g, L, device=tok.device, dtype=self.embed.dtype)
            bias = bias.masked_fill_(~mask, float("-inf")).view(R * self.Hkv, g, L)
        h = self._forward(tok[:, None], pos[:, None], mask, quant, bias=bias)
        self.n += 1
        return self._head(h, quant)

    def keep(self, rows):
        """Move rows `rows` (ascending) to the front and step only those from now on."""
        R, n = len(rows), self.n
        for kc, vc in zip(self.k_cache, self.v_cache):
            kc[:R, :, :n] = kc[rows, :, :n]  # the gather copies before the write
            vc[:R, :, :n] = vc[rows, :, :n]
        self.key_mask[:R, :n] = self.key_mask[rows, :n]
