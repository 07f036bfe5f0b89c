"""Batched sampling with a KV cache: the hot path of every RL step (70-90% of its time).

    rollout = generate(model, prompts, max_new_tokens=64, temperature=1.0, top_p=0.95,
                       eos_token_ids=[2], pad_token_id=0, generator=torch.Generator().manual_seed(0))

Backends (the `BACKENDS` table; a "vllm" entry plugs in the same way):
- "torch" (default): ours. One prefill over the left-padded batch, then one decode step per
  token with a preallocated cache. Llama-architecture models (LlamaForCausalLM; SmolLM2 is one)
  take a fast path that runs the layers itself from the model's own weights (LoRA deltas folded
  in), so that per token there is no HF module machinery, no mask building and no cache
  growth; every other causal LM runs through its own forward with a transformers DynamicCache.
- "hf": transformers `model.generate`, the reference, converted into the same `Rollout`.

A batch holding copies of a prompt (GRPO's groups) prefills each distinct prompt once and
copies its cache to the copies. Rows that finish are dropped from the runner's batch once a
quarter of it has (`COMPACT_AT`): a SmolLM2-135M decode step costs ~105 ms + 3.1 ms per row on
one thread, and moving the kept rows' cache (~50 ms for 48 rows x 100 slots) is paid back by
the next step; until then finished rows run on with pad fed back in, masked. The loop stops
as soon as every row is finished.

`logprobs` are log-probabilities of the sampled token under softmax(logits / temperature),
i.e. after temperature and *before* top-k/top-p truncation (what PPO/GRPO's ratio and the KL
to the reference need: a distribution that a full forward can reproduce). For greedy
decoding (temperature 0) they are under temperature 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class Rollout:
    prompt_ids: torch.LongTensor  # (B, P) left-padded with pad_token_id
    prompt_mask: torch.BoolTensor  # (B, P) True on real prompt tokens
    tokens: torch.LongTensor  # (B, T) generated; pad_token_id after a row finished
    logprobs: torch.Tensor  # (B, T) log p(token) under softmax(logits / T); 0 where mask is False
    mask: torch.BoolTensor  # (B, T) True up to and including the eos/stop token
    finished: torch.BoolTensor  # (B,) an eos/stop token was produced (False: hit max_new_tokens)

    def texts(self, tokenizer) -> list[str]:
        """Decoded responses, without the eos/stop token and the padding after it."""
        lengths = self.mask.sum(1) - self.finished.long()  # drop the final eos of finished rows
        return [tokenizer.decode(row[:n].tolist(), skip_special_tokens=True)
                for row, n in zip(self.tokens, lengths.tolist())]


def left_pad(prompts: list[list[int]], pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """-> ids (B, P) with pad on the left, mask (B, P) True on real tokens."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate: every prompt needs at least one token")
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = True
    return ids.to(device), mask.to(device)


# ---------------------------------------------------------------------------------------
# Sampling on the (B, V) logits of one step


def _nucleus_draw(vals, idx, log_zr, top_p: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw from candidates vals/idx (descending logits; log_zr their normaliser), keeping the
    smallest prefix that reaches top_p mass. -> tokens, and the mass the candidates hold."""
    probs = (vals - log_zr).exp()
    cum = probs.cumsum(-1)
    if top_p < 1.0:
        probs = probs.masked_fill(cum - probs >= top_p, 0.0)  # drop a token once the mass before it does
    return idx.gather(-1, torch.multinomial(probs, 1, generator=generator))[:, 0], cum[:, -1]


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> tokens (B,), logprobs (B,) under softmax(logits / temperature).

    Truncation (top-k, then top-p on the renormalised top-k, as HF orders them) only
    changes which token is drawn, not the reported logprob. Top-p alone first tries each
    row's 256 most likely tokens (a topk is far cheaper than sorting 50k logits per row),
    then 4096, then the whole row, each only for the rows whose nucleus did not fit.
    """
    if temperature <= 0:
        tok = logits.argmax(-1)
        return tok, logits.gather(-1, tok[:, None])[:, 0] - logits.logsumexp(-1)
    z = logits / temperature if temperature != 1.0 else logits
    B, V = z.shape
    if top_k <= 0 and top_p >= 1.0:
        # inverse-CDF draw: one uniform per row (torch.multinomial draws V exponentials per row);
        # one exp(z - max) pass serves both the normaliser (logsumexp's own formula) and the CDF
        zmax = z.amax(-1, keepdim=True)
        cdf = (z - zmax).exp_()
        log_z = cdf.sum(-1).log_() + zmax[:, 0]  # (B,)
        cdf = cdf.cumsum_(-1)
        u = torch.rand(B, 1, generator=generator, device=z.device, dtype=cdf.dtype) * cdf[:, -1:]
        tok = torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=V - 1)
        return tok, z.gather(-1, tok[:, None])[:, 0] - log_z
    log_z = z.logsumexp(-1)  # (B,)
    if top_k > 0:
        vals, idx = z.topk(min(top_k, V), dim=-1)
        # top-p acts on the top-k renormalised
        tok, _ = _nucleus_draw(vals, idx, vals.logsumexp(-1, keepdim=True), top_p, generator)
    else:
        # SmolLM2-135M at temperature 1, top_p 0.95: 10% of rows need more than 256 tokens,
        # 0.1% more than 4096; sorting all 16 rows of a batch costs 65 ms, a decode step ~90
        tok = torch.empty(B, dtype=torch.long, device=z.device)
        rows = torch.arange(B, device=z.device)  # the rows not drawn yet
        for k in [k for k in (256, 4096) if k < V] + [V]:
            vals, idx = (z if len(rows) == B else z[rows]).topk(k, dim=-1)  # k = V: a full sort
            t, mass = _nucleus_draw(vals, idx, log_z[rows, None], top_p, generator)
            fits = mass >= top_p if k < V else torch.ones_like(rows, dtype=torch.bool)
            tok[rows[fits]] = t[fits]
            rows = rows[~fits]
            if len(rows) == 0:
                break
    return tok, z.gather(-1, tok[:, None])[:, 0] - log_z


# ---------------------------------------------------------------------------------------
# Runners: prefill(ids, mask, pos) -> (B, V) last logits; step(tok, pos) -> (B, V)


class _Unsupported(Exception):
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
            raise _Unsupported("DoRA / LoRA variant")
        if getattr(mod, "lora_bias", {}) and any(mod.lora_bias.get(a) for a in active):
            raise _Unsupported("LoRA bias")
        merged = set(getattr(mod, "merged_adapters", []))
        for a in active:
            if a not in merged:  # a merged adapter already lives in base.weight
                w = w + mod.get_delta_weight(a)
        return w, base.bias
    raise _Unsupported(f"{type(mod).__name__} is not a plain or LoRA Linear")


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # one fused op instead of LlamaRMSNorm's six; the same math (x / rms(x) * w), agreeing to ~1e-6
    return F.rms_norm(x, weight.shape, weight, eps)


def _few_rows_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear for a few rows (decode at batch 2-4), computed as (w @ x.T).T: MKL streams w
    through its few-columns kernel faster than through its few-rows sgemm (a SmolLM2-135M
    decode step, one thread: 59 vs 78 ms at 2 rows, 62 vs 81 at 4). Same numbers to ~1e-6."""
    # both copies are a few rows: x (M, K) row-major so x.T is the column-major operand that
    # kernel wants, and y row-major again (a column-major y reaching the next product here as
    # x would send MKL down its slow path: 1.2 vs 0.34 ms for SmolLM2's down_proj at 2 rows)
    y = torch.mm(w, x.reshape(-1, x.shape[-1]).contiguous().t()).t().contiguous()
    y = y.view(*x.shape[:-1], w.shape[0])
    return y if b is None else y + b


FEW_ROWS = 4  # decode steps with at most this many rows use _few_rows_linear


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class _LlamaRunner:
    """Runs a LlamaForCausalLM from its own weights with a preallocated KV cache.

    Cache slots are aligned across rows: slot j holds prompt column j (pads included, masked
    by `key_mask`) for j < P and generated token j - P after. Position ids count real tokens
    only (0 for the first real prompt token), as HF generate does for left padding.
    """

    HEAD_BLOCK = 2048  # vocabulary rows per lm_head product (2048 x 576 fp32: 4.7 MB)

    def __init__(self, hf, batch: int, max_len: int):
        from torch import nn

        cfg, m = hf.config, hf.model
        if type(m.embed_tokens) is not nn.Embedding:
            raise _Unsupported("embedding is wrapped")
        if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
            raise _Unsupported("pretraining_tp")
        if "dynamic" in str(getattr(m.rotary_emb, "rope_type", "")):
            raise _Unsupported("dynamic RoPE rescales with the sequence length HF has seen")
        self.H, self.Hkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.embed = m.embed_tokens.weight
        self.layers = []
        for layer in m.layers[: cfg.num_hidden_layers]:
            at, mlp = layer.self_attn, layer.mlp
            (wq, bq), (wk, bk), (wv, bv) = _linear(at.q_proj), _linear(at.k_proj), _linear(at.v_proj)
            # q, k, v as one matmul (and one RoPE over the q and k heads): fewer ops per token,
            # which is most of the time of a small model; costs one copy of these weights per call.
            # Not gate and up: MKL runs SmolLM2's (B, 576) x (576, 3072) slower than two
            # x (576, 1536) at batch 16-64 (measured 91 vs 78 ms for 30 layers at batch 64)
            bqkv = None if bq is None else torch.cat([bq, bk, bv])
            self.layers.append((
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([wq, wk, wv]), bqkv, _linear(at.o_proj),
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                _linear(mlp.gate_proj), _linear(mlp.up_proj), _linear(mlp.down_proj), mlp.act_fn,
            ))
        self.norm = (m.norm.weight, m.norm.variance_epsilon)
        self.lm_head = _linear(hf.lm_head)
        # cos/sin of every position from the model's own rotary module (its rope_type,
        # theta and scaling); per step they are gathered by position id
        dev, dt = self.embed.device, self.embed.dtype
        # the matmul layouts chosen below were measured with MKL (x86 CPU builds of torch)
        self.mkl = dev.type == "cpu" and torch.backends.mkl.is_available()
        cos, sin = m.rotary_emb(self.embed[:1][None], torch.arange(max_len, device=dev)[None])
        self.cos, self.sin = cos[0].to(dt), sin[0].to(dt)  # (max_len, hd)
        shape = (batch, self.Hkv, max_len, self.hd)
        self.k_cache = [torch.empty(shape, device=dev, dtype=dt) for _ in self.layers]
        self.v_cache = [torch.empty(shape, device=dev, dtype=dt) for _ in self.layers]
        self.key_mask = torch.zeros(batch, max_len, dtype=torch.bool, device=dev)
        self.n = 0  # filled cache slots

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """ids, pos (B, S) -> last position's final hidden state (B, D); writes cache rows :B,
        slots n..n+S-1."""
        B, S = ids.shape
        H, Hkv, hd, start = self.H, self.Hkv, self.hd, self.n
        end = start + S
        x = F.embedding(ids, self.embed)
        cos, sin = self.cos[pos][:, :, None], self.sin[pos][:, :, None]  # (B, S, 1, hd)
        # one row: both are a gemv; the few-rows trick is MKL's (CPU) only
        linear = _few_rows_linear if self.mkl and 1 < B * S <= FEW_ROWS else F.linear
        for (n1, e1, wqkv, bqkv, (wo, bo), n2, e2, (wg, bg), (wu, bu), (wd, bd), act), kc, vc \
                in zip(self.layers, self.k_cache, self.v_cache):
            kc, vc = kc[:B], vc[:B]  # a prefill of the distinct prompts fills the first rows only
            qkv = linear(_rms_norm(x, n1, e1), wqkv, bqkv).view(B, S, H + 2 * Hkv, hd)
            qk = _rope(qkv[:, :, : H + Hkv], cos, sin)  # (B, S, heads, hd): RoPE acts per head
            kc[:, :, start:end] = qk[:, :, H:].transpose(1, 2)
            vc[:, :, start:end] = qkv[:, :, H + Hkv:].transpose(1, 2)
            a = F.scaled_dot_product_attention(qk[:, :, :H].transpose(1, 2), kc[:, :, :end], vc[:, :, :end],
                                               attn_mask=attn_mask, enable_gqa=H != Hkv)
            x = x + linear(a.transpose(1, 2).reshape(B, S, H * hd), wo, bo)
            h = _rms_norm(x, n2, e2)
            x = x + linear(act(linear(h, wg, bg)) * linear(h, wu, bu), wd, bd)
        self.n = end
        return _rms_norm(x[:, -1], *self.norm)

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, V) logits, as W @ h.T in blocks of vocabulary rows: MKL runs one
        (B, 576) x (576, 49152) product well below the speed of cache-sized blocks (SmolLM2,
        batch 16, 2 threads: 22 vs 13 ms with the transposing copy; at batch 64 that copy
        takes most of the gain). The numbers agree with F.linear to ~1e-6."""
        w, b = self.lm_head
        if not self.mkl:
            return F.linear(h, w, b)
        out = torch.empty(w.shape[0], h.shape[0], device=h.device, dtype=h.dtype)  # (V, B)
        for wb, ob in zip(w.split(self.HEAD_BLOCK), out.split(self.HEAD_BLOCK)):
            torch.mm(wb, h.t(), out=ob)
        logits = out.t().contiguous()  # sampling reduces over the vocabulary: make it the inner dim
        return logits if b is None else logits + b

    def prefill(self, ids, mask, pos, rows=None):
        """ids, mask, pos (U, P) -> (B, V). rows (B,): which of the U prompt rows each batch row
        is (None: U = B, row i is row i); its cache slots and last hidden state are copied there."""
        U, P = ids.shape
        causal = torch.ones(P, P, dtype=torch.bool, device=ids.device).tril()
        # pad queries may see themselves so no softmax row is empty (NaN would reach the cache)
        attn = (causal & mask[:, None, :]) | torch.eye(P, dtype=torch.bool, device=ids.device)
        h = self._forward(ids, pos, attn[:, None])
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
        h = self._forward(tok[:, None], pos[:, None], self.key_mask[:R, None, None, : self.n + 1])
        return self._head(h)

    def keep(self, rows):
        """Move rows `rows` (ascending) to the front and step only those from now on."""
        R, n = len(rows), self.n
        for kc, vc in zip(self.k_cache, self.v_cache):
            kc[:R, :, :n] = kc[rows, :, :n]  # the gather copies before the write
            vc[:R, :, :n] = vc[rows, :, :n]
        self.key_mask[:R, :n] = self.key_mask[rows, :n]


class _HFRunner:
    """Any causal LM through its own forward (peft LoRA applied) and a DynamicCache."""

    def __init__(self, model, hf, batch: int, max_len: int):
        import inspect

        from transformers import DynamicCache

        self.model = model
        try:
            self.cache = DynamicCache(config=hf.config)
        except TypeError:  # older transformers
            self.cache = DynamicCache()
        self.extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(hf.forward).parameters else {}
        self.attn = torch.zeros(batch, max_len, dtype=torch.long, device=hf.device)
        self.n = 0

    def _forward(self, ids, pos):
        B, S = ids.shape
        self.n += S
        out = self.model(input_ids=ids, attention_mask=self.attn[:B, : self.n], position_ids=pos,
                         past_key_values=self.cache, use_cache=True, **self.extra)
        return out.logits[:, -1].float()

    def prefill(self, ids, mask, pos, rows=None):
        """As _LlamaRunner.prefill: (U, P) distinct prompt rows -> (B, V) logits."""
        U, P = ids.shape
        self.attn[:U, :P] = mask
        logits = self._forward(ids, pos)
        if rows is None:
            return logits
        self.cache.reorder_cache(rows)  # beam search's gather: row i <- row rows[i], every layer
        self.attn[:, :P] = mask[rows]
        return logits[rows]

    def step(self, tok, pos):
        self.attn[: tok.shape[0], self.n] = 1
        return self._forward(tok[:, None], pos[:, None])

    def keep(self, rows):
        self.cache.reorder_cache(rows)
        self.attn[: len(rows)] = self.attn[rows]


# model class name -> fast runner; anything else (or a model a fast runner refuses) is generic
FAST_RUNNERS: dict[str, Callable] = {"LlamaForCausalLM": _LlamaRunner}


def _unwrap(model):
    """-> (the module to call, the plain transformers model under DDP and peft)."""
    if hasattr(model, "module") and isinstance(getattr(model, "module"), torch.nn.Module):
        model = model.module  # DistributedDataParallel: generation needs no gradient sync
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    return model, hf


def _make_runner(model, hf, batch: int, max_len: int):
    fast = FAST_RUNNERS.get(type(hf).__name__)
    if fast is not None:
        try:
            return fast(hf, batch, max_len)
        except _Unsupported:
            pass
    return _HFRunner(model, hf, batch, max_len)


SHARED_PREFILL = True  # prefill each distinct prompt row once (False: every row, for comparisons)
COMPACT_AT = 0.75  # stop stepping finished rows once at most this fraction of the rows still runs
SINGLE_THREAD_FLOPS = 16e6  # decode steps under this many FLOPs (2 x params x batch) run on one thread


def _generate_torch(model, ids, mask, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
                    pad_token_id, generator) -> Rollout:
    model, hf = _unwrap(model)
    B, P = ids.shape
    threads = torch.get_num_threads()
    n_params = sum(p.numel() for p in hf.parameters())
    if ids.device.type == "cpu" and 2 * n_params * B < SINGLE_THREAD_FLOPS:
        # a decode step this small is all thread hand-offs: one thread is faster (up to 6x on
        # 2 shared cores, where a descheduled OpenMP worker stalls every matmul)
        torch.set_num_threads(1)
    try:
        return _decode(model, hf, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, top_k=top_k, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                       generator=generator)
    finally:
        torch.set_num_threads(threads)


def _decode(model, hf, ids, mask, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
            pad_token_id, generator) -> Rollout:
    B, P = ids.shape
    runner = _make_runner(model, hf, B, P + max_new_tokens)
    dev = ids.device
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=dev)
    tokens = torch.full((B, max_new_tokens), pad_token_id, dtype=torch.long, device=dev)
    logprobs = torch.zeros(B, max_new_tokens, device=dev)
    out_mask = torch.zeros(B, max_new_tokens, dtype=torch.bool, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    # RL batches hold G copies of each prompt (GRPO's group): prefill each distinct prompt row
    # once, and the runner copies its cache slots and last hidden state to the copies (rows
    # never interact, so a copy holds what its own prefill would give: SmolLM2-135M's samples
    # and logprobs are bitwise those of prefilling every row, at 16 and 64 rows)
    uniq, rows = torch.unique(torch.cat([ids, mask.long()], 1), dim=0, return_inverse=True)
    shared = SHARED_PREFILL and len(uniq) < B
    p_ids, p_mask = (uniq[:, :P], uniq[:, P:].bool()) if shared else (ids, mask)
    # left padding: real tokens get positions 0..len-1 (pads get 0; they are masked anyway)
    pos = (p_mask.long().cumsum(-1) - 1).clamp_(min=0)
    logits = runner.prefill(p_ids, p_mask, pos, rows if shared else None)
    pos = mask.long().sum(-1)  # the next position of each row: its number of real tokens
    pad = torch.tensor(pad_token_id, device=dev)
    live = torch.arange(B, device=dev)  # the batch row of each row the runner still steps
    steps = 0
    for t in range(max_new_tokens):
        tok, lp = sample_next(logits, temperature, top_p, top_k, generator)
        done = finished[live]  # finished rows not dropped yet: pad fed back in, masked
        tok = torch.where(done, pad, tok)
        tokens[live, t] = tok
        logprobs[live, t] = lp.masked_fill(done, 0.0)
        out_mask[live, t] = ~done
        if eos.numel():
            finished[live] = done | torch.isin(tok, eos)
        steps = t + 1
        if steps == max_new_tokens or bool(finished.all()):
            break
        keep = (~finished[live]).nonzero()[:, 0]
        if len(keep) <= COMPACT_AT * len(live):
            # drop the finished rows once a quarter of them are (see the module docstring)
            runner.keep(keep)
            live, tok, pos = live[keep], tok[keep], pos[keep]
        if dev.type == "cpu" and len(live) == 1 and torch.get_num_threads() > 1:
            # one row's step is matrix-vector products bound by memory bandwidth, which a second
            # thread does not add to here (SmolLM2-135M: 45.0 vs 47.7 ms per token on a quiet
            # machine), while another busy process makes it ~3x slower on 2 threads than on one
            # (2-4 rows do gain: 37 vs 59 ms at 2 rows). The prefill keeps every thread;
            # _generate_torch restores the count.
            torch.set_num_threads(1)
        logits = runner.step(tok, pos)
        pos += 1
    return Rollout(ids, mask, tokens[:, :steps], logprobs[:, :steps], out_mask[:, :steps], finished)


def _generate_hf(model, ids, mask, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
                 pad_token_id, generator) -> Rollout:
    """transformers `generate` as the reference; logprobs recomputed from its raw logits."""
    import copy

    model, hf = _unwrap(model)
    gc = copy.deepcopy(hf.generation_config)
    sampling = temperature > 0
    gc.update(max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=sampling,
              temperature=temperature if sampling else None, top_p=top_p if sampling else None,
              top_k=top_k if sampling else None, eos_token_id=list(eos_token_ids) or None,
              pad_token_id=pad_token_id, num_beams=1, repetition_penalty=None,
              return_dict_in_generate=True, output_logits=True, output_scores=False)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else None
    with torch.random.fork_rng(devices=[]):  # HF samples from the global RNG: seed it from ours
        if seed is not None:
            torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask.long(), generation_config=gc)
    tokens = out.sequences[:, ids.shape[1]:]
    logits = torch.stack(out.logits, 1).float() / (temperature if sampling else 1.0)
    lp = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    eos = torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=ids.device)
    is_eos = torch.isin(tokens, eos)
    out_mask = (is_eos.long().cumsum(1) - is_eos.long()) == 0  # nothing ended before this token
    tokens = tokens.masked_fill(~out_mask, pad_token_id)
    return Rollout(ids, mask, tokens, lp.masked_fill(~out_mask, 0.0), out_mask, (is_eos & out_mask).any(1))


BACKENDS: dict[str, Callable[..., Rollout]] = {"torch": _generate_torch, "hf": _generate_hf}


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, eos_token_ids=(), pad_token_id: int = 0,
             generator: torch.Generator | None = None, backend: str = "torch") -> Rollout:
    """Sample up to `max_new_tokens` for each prompt (token id lists of any lengths).

    temperature 0 is greedy. The same `generator` seed gives the same tokens. `model` may be
    wrapped in DDP (`.module`) or peft (LoRA applied); its train/eval mode is restored after.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend '{backend}' (have: {', '.join(BACKENDS)})")
    if max_new_tokens < 1:
        raise ValueError("generate: max_new_tokens must be >= 1")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_token_id, device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return BACKENDS[backend](
                model, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                top_k=top_k, eos_token_ids=tuple(eos_token_ids), pad_token_id=pad_token_id,
                generator=generator)
    finally:
        model.train(was_training)
