"""The "torch" backend and the `generate` entry: a batched KV-cache sampler over a runner
(`llama_fast.LlamaRunner` for Llama models, `hf.HFRunner` for any other causal LM).

A batch holding copies of a prompt (GRPO's groups) prefills each distinct prompt once and
copies its cache to the copies. Rows that finish are dropped from the runner's batch once a
quarter of it has (`COMPACT_AT`): a SmolLM2-135M decode step costs ~105 ms + 3.1 ms per row on
one thread, and moving the kept rows' cache (~50 ms for 48 rows x 100 slots) is paid back by
the next step; until then finished rows run on with pad fed back in, masked. The loop stops
as soon as every row is finished. Logprobs: see the package docstring (rlhfkit.generation).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlhfkit.generation.hf import HFRunner, generate_hf
from rlhfkit.generation.llama_fast import LlamaRunner, Unsupported
from rlhfkit.generation.rollout import Rollout, left_pad, unwrap

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


CDF_BLOCK = 1024  # vocabulary entries per block of _inverse_cdf_draw's two-level CDF


def cdf_workspace(rows: int, vocab: int, like: torch.Tensor) -> torch.Tensor:
    """Scratch memory for sample_next's untruncated draw of up to `rows` rows, kept across a
    call's steps: a fresh (64, 49152) fp32 buffer each step is 12.6 MB of new pages (the
    allocator hands such sizes back to the system), ~5 ms of page faults a step here."""
    return torch.empty(rows, -(-vocab // CDF_BLOCK) * CDF_BLOCK, device=like.device, dtype=like.dtype)


def _inverse_cdf_draw(z: torch.Tensor, generator, work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> a token per row drawn from softmax(z), and log Z (B,): one uniform u
    per row (torch.multinomial draws V exponentials per row), the token the first whose
    cumulative mass passes u x Z. One exp(z - max) pass serves the normaliser (logsumexp's own
    formula) and the CDF, which is two-level: the blocks' masses (a vectorised sum) and their
    running total find u's block, and only that block's 1024 entries get a running sum. A full
    cumsum over 49152 entries is a serial pass that cost more than the exp (SmolLM2, 64 rows,
    one thread: 5.2 vs 8.4 ms for the draw); the same u picks the same token unless it falls
    within rounding (~1e-7 of Z) of a token's edge, and both are exact draws."""
    B, V = z.shape
    nb = -(-V // CDF_BLOCK)
    zmax = z.amax(-1, keepdim=True)
    e = (cdf_workspace(B, V, z) if work is None else work)[:B]
    e[:, V:] = 0.0  # the last block's tail: no mass
    blocks = e.view(B, nb, CDF_BLOCK)
    torch.sub(z, zmax, out=e[:, :V]).exp_()
    mass = blocks.sum(-1)  # (B, nb)
    cum = mass.cumsum(-1)
    log_z = cum[:, -1].log() + zmax[:, 0]
    u = torch.rand(B, 1, generator=generator, device=z.device, dtype=z.dtype) * cum[:, -1:]
    # u's block: the first whose running total passes u (u < Z but may round to it: the last
    # block with mass then); a block with no mass never passes
    last = torch.where(mass > 0, torch.arange(nb, device=z.device), 0).amax(-1, keepdim=True)
    j = torch.minimum(torch.searchsorted(cum, u, right=True), last)  # (B, 1)
    before = torch.where(j > 0, cum.gather(-1, (j - 1).clamp_(min=0)), 0.0)
    block = blocks.gather(1, j[:, :, None].expand(B, 1, CDF_BLOCK))[:, 0]  # (B, CDF_BLOCK)
    # within it, u - before against the block's own running sum; a u past its last entry (the
    # two sums' rounding apart) takes the block's last token with mass
    end = torch.where(block > 0, torch.arange(CDF_BLOCK, device=z.device), 0).amax(-1, keepdim=True)
    i = torch.minimum(torch.searchsorted(block.cumsum(-1), u - before, right=True), end)
    return (j * CDF_BLOCK + i)[:, 0], log_z


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: int,
                generator: torch.Generator | None, work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, V) logits -> tokens (B,), logprobs (B,) under softmax(logits / temperature).
    `work`: a cdf_workspace of at least B rows for the untruncated draw to reuse (None: its own).

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
        tok, log_z = _inverse_cdf_draw(z, generator, work)
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


# model class name -> fast runner; anything else (or a model a fast runner refuses) is generic
FAST_RUNNERS: dict[str, Callable] = {"LlamaForCausalLM": LlamaRunner}


MATMUL: str | None = None  # the Llama fast path's products (generation/matmul.py; None: its pick)


def _make_runner(model, hf, batch: int, max_len: int, quantized=None):
    if quantized is not None:  # int8 copies (generation/quant.py) exist only for the Llama fast path
        return LlamaRunner(hf, batch, max_len, quantized=quantized, matmul=MATMUL)
    fast = FAST_RUNNERS.get(type(hf).__name__)
    if fast is not None:
        try:
            return fast(hf, batch, max_len, matmul=MATMUL)
        except Unsupported:
            pass
    return HFRunner(model, hf, batch, max_len)


SHARED_PREFILL = True  # prefill each distinct prompt row once (False: every row, for comparisons)
COMPACT_AT = 0.75  # stop stepping finished rows once at most this fraction of the rows still runs
SINGLE_THREAD_FLOPS = 16e6  # decode steps under this many FLOPs (2 x params x batch) run on one thread
_TUNED: dict = {}  # the thread tuner's state between generate calls (with threads = 0)
TUNE_MIN_S = 0.25  # the sampler's tuner pools decode steps into measurements of this many seconds


def _generate_torch(model, ids, mask, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
                    pad_token_id, generator, quantized=None) -> Rollout:
    model, hf = unwrap(model)
    B = ids.shape[0]
    threads = torch.get_num_threads()
    n_params = sum(p.numel() for p in hf.parameters())
    tiny = 2 * n_params * B < SINGLE_THREAD_FLOPS
    if ids.device.type == "cpu" and tiny:
        # a decode step this small is all thread hand-offs: one thread is faster (up to 6x on
        # 2 shared cores, where a descheduled OpenMP worker stalls every matmul)
        torch.set_num_threads(1)
    try:
        return _decode(model, hf, ids, mask, max_new_tokens=max_new_tokens, temperature=temperature,
                       top_p=top_p, top_k=top_k, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id,
                       generator=generator, tune=ids.device.type == "cpu" and not tiny, quantized=quantized)
    finally:
        torch.set_num_threads(threads)


def _decode(model, hf, ids, mask, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
            pad_token_id, generator, tune: bool = False, quantized=None) -> Rollout:
    from rlhfkit.threads import Tuner

    B, P = ids.shape
    # threads = 0 in the stage: a long decode re-probes 1 vs all threads when its step time
    # jumps (another busy process arrived), as the training loops do (rlhfkit.threads). The
    # next call starts where this one left off (a call that starts under load has no quiet
    # baseline to see a jump from), and the whole call runs on that count, the runner's weight
    # reorder and the prefill too: left at the caller's 2 threads beside a busy process they
    # took 37-545 ms a call against 31-48 ms on one (busy.py's 16 x 96 sampler, whose 1-thread
    # decode is ~1 s a call there; benchmarks/README.md, 2026-12-02). A carried state has had
    # its warm-up: the call's first measurement counts.
    carried = _TUNED.get("state")
    tuner = Tuner.auto(min_s=TUNE_MIN_S, state=carried, skip=0 if carried is not None else 1) if tune else None
    runner = _make_runner(model, hf, B, P + max_new_tokens, quantized)
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
    work = cdf_workspace(B, logits.shape[-1], logits) if top_k <= 0 and top_p >= 1.0 and temperature > 0 else None
    for t in range(max_new_tokens):
        tok, lp = sample_next(logits, temperature, top_p, top_k, generator, work)
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
            if tuner is not None:
                _TUNED["state"], tuner = tuner.state, None
        if tuner is not None:
            tuner.lap()
        logits = runner.step(tok, pos)
        pos += 1
    if tuner is not None:
        _TUNED["state"] = tuner.state
    return Rollout(ids, mask, tokens[:, :steps], logprobs[:, :steps], out_mask[:, :steps], finished)


BACKENDS: dict[str, Callable[..., Rollout]] = {"torch": _generate_torch, "hf": generate_hf}


def generate(model, prompts: list[list[int]], *, max_new_tokens: int, temperature: float = 1.0,
             top_p: float = 1.0, top_k: int = 0, eos_token_ids=(), pad_token_id: int = 0,
             generator: torch.Generator | None = None, backend: str = "torch", quantized=None) -> Rollout:
    """Sample up to `max_new_tokens` for each prompt (token id lists of any lengths).

    temperature 0 is greedy. The same `generator` seed gives the same tokens. `model` may be
    wrapped in DDP (`.module`) or peft (LoRA applied); its train/eval mode is restored after.
    `quantized`: a `quant.Int8Weights` of this model to sample from instead of its fp32
    weights (backend "torch", Llama models); logprobs are then the int8 model's.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend '{backend}' (have: {', '.join(BACKENDS)})")
    if quantized is not None and backend != "torch":
        raise ValueError("generate: int8 weights (quantized=) need the torch backend")
    extra = {"quantized": quantized} if quantized is not None else {}
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
                generator=generator, **extra)
    finally:
        model.train(was_training)
