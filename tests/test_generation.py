"""The batched sampler against transformers: same greedy tokens, logprobs a full forward
reproduces, masks and finished flags, reproducible seeds, LoRA applied, DDP unwrapped."""

from __future__ import annotations

import pytest
import torch

from rlhfkit.generation import generate, left_pad, sample_next
from rlhfkit.generation.hf import HFRunner
from rlhfkit.generation.llama_fast import LlamaRunner
from rlhfkit.models import add_lora, tiny_llama_config

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18, 19, 20, 21, 22]]


def tiny_llama(tie: bool = True, seed: int = 0, **cfg_kwargs):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_llama_config(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, tie_embeddings=tie)
    cfg.initializer_range = 0.3  # far from uniform logits, so greedy does not just repeat a token
    for k, v in cfg_kwargs.items():
        setattr(cfg, k, v)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=97, n_embd=32, n_layer=2, n_head=2, n_positions=64, initializer_range=0.3,
                     bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


MODELS = {"llama": tiny_llama, "llama-untied": lambda: tiny_llama(tie=False), "gpt2": tiny_gpt2}


def full_logprobs(model, prompt: list[int], response: list[int], temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at each response token, from one fresh unpadded forward."""
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1: -1]
    return (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(response)[:, None])[:, 0]


@pytest.mark.parametrize("tie", [True, False])
def test_llama_fast_path_logits_match_hf_forward(tie):
    model = tiny_llama(tie=tie, attention_bias=True)
    ids, mask = left_pad(PROMPTS, pad_token_id=0)
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        runner = LlamaRunner(model, batch=len(PROMPTS), max_len=ids.shape[1] + 2)
        ours = runner.prefill(ids, mask, pos)
        ref = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits[:, -1]
        assert (ours - ref).abs().max() < 1e-4
        # one decode step through the cache vs a full forward over prompt + that token
        nxt = torch.tensor([3, 4, 5, 6])
        ours = runner.step(nxt, pos[:, -1] + 1)
        ids2 = torch.cat([ids, nxt[:, None]], 1)
        mask2 = torch.cat([mask, torch.ones(4, 1, dtype=torch.bool)], 1)
        pos2 = (mask2.long().cumsum(-1) - 1).clamp(min=0)
        ref = model(input_ids=ids2, attention_mask=mask2.long(), position_ids=pos2).logits[:, -1]
        assert (ours - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", list(MODELS))
def test_greedy_matches_hf_generate(name):
    model = MODELS[name]()
    kw = dict(max_new_tokens=12, temperature=0.0, pad_token_id=0)
    plain = generate(model, PROMPTS, **kw, eos_token_ids=())
    assert len(set(plain.tokens[0].tolist())) > 2  # a non-degenerate model
    eos = int(plain.tokens[0, 3])  # row 0 greedily emits it by step 3: some rows finish early
    ours = generate(model, PROMPTS, **kw, eos_token_ids=[eos])
    ref = generate(model, PROMPTS, **kw, eos_token_ids=[eos], backend="hf")
    assert ours.tokens.tolist() == ref.tokens.tolist()
    assert ours.mask.tolist() == ref.mask.tolist()
    assert ours.finished.tolist() == ref.finished.tolist()
    assert torch.allclose(ours.logprobs, ref.logprobs, atol=1e-4)
    assert bool(ours.finished[0])


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_masks_stop_after_eos(name):
    model = MODELS[name]()
    kw = dict(max_new_tokens=10, temperature=0.0, pad_token_id=0)
    plain = generate(model, PROMPTS, **kw)  # no eos: every row runs 10 steps
    assert plain.tokens.shape == (4, 10) and bool(plain.mask.all()) and not bool(plain.finished.any())
    eos = int(plain.tokens[0, 4])
    r = generate(model, PROMPTS, **kw, eos_token_ids=[eos, 96])
    for i, row in enumerate(plain.tokens.tolist()):
        stops = [t for t, tok in enumerate(row) if tok in (eos, 96)]
        n = stops[0] + 1 if stops else 10  # up to and including the first eos
        assert r.mask[i].tolist() == [True] * n + [False] * (r.tokens.shape[1] - n)
        assert r.tokens[i, :n].tolist() == row[:n]  # greedy: the same tokens before the stop
        assert set(r.tokens[i, n:].tolist()) <= {0}  # pad after it
        assert bool(r.finished[i]) == bool(stops)
        assert bool((r.logprobs[i, n:] == 0).all()) and bool((r.logprobs[i, :n] < 0).all())


@pytest.mark.parametrize("name,temperature,top_p,top_k", [
    ("llama", 0.7, 1.0, 0), ("llama", 1.3, 0.9, 0), ("llama", 1.0, 0.8, 20), ("gpt2", 1.3, 0.9, 0)])
def test_logprobs_equal_full_forward(name, temperature, top_p, top_k):
    model = MODELS[name]()
    r = generate(model, PROMPTS, max_new_tokens=8, temperature=temperature, top_p=top_p, top_k=top_k,
                 eos_token_ids=[2], pad_token_id=0, generator=torch.Generator().manual_seed(1))
    for i, prompt in enumerate(PROMPTS):
        resp = r.tokens[i][r.mask[i]].tolist()
        ref = full_logprobs(model, prompt, resp, temperature)
        assert (r.logprobs[i][r.mask[i]] - ref).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_shared_prompt_prefill_is_exact(name, monkeypatch):
    """G copies of each prompt (an RL group) prefill once: the same samples as prefilling every row."""
    from rlhfkit.generation import sampler

    model = MODELS[name]()
    # copies interleaved with distinct rows; [0, 12, 13] pads to the same ids as [12, 13] (pad 0)
    # but has one more real token, so it must not share [12, 13]'s prefill
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0], [0, 12, 13], PROMPTS[1], PROMPTS[0], PROMPTS[2]]
    kw = dict(max_new_tokens=8, temperature=1.0, eos_token_ids=[2], pad_token_id=0)
    shared = generate(model, prompts, **kw, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(sampler, "SHARED_PREFILL", False)
    every = generate(model, prompts, **kw, generator=torch.Generator().manual_seed(3))
    assert torch.equal(shared.tokens, every.tokens) and torch.equal(shared.mask, every.mask)
    assert (shared.logprobs - every.logprobs).abs().max() < 1e-5
    assert not torch.equal(shared.tokens[0], shared.tokens[2])  # copies share a prefix, not the samples
    for i, prompt in enumerate(prompts):
        resp = shared.tokens[i][shared.mask[i]].tolist()
        assert (shared.logprobs[i][shared.mask[i]] - full_logprobs(model, prompt, resp, 1.0)).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_finished_rows_stop_being_computed(name, monkeypatch):
    """Finished rows are dropped from the runner's batch: greedy samples, masks and logprobs as
    when every row runs to the end."""
    from rlhfkit.generation import sampler

    model = MODELS[name]()
    prompts = PROMPTS * 2 + [[5, 6, 7], [30, 31, 32, 33]]
    kw = dict(max_new_tokens=12, temperature=0.0, pad_token_id=0)
    plain = generate(model, prompts, **kw)
    eos = [int(plain.tokens[0, 3])]  # rows 0 and 4 end at step 3, others earlier, later or never
    kept = []
    runner = LlamaRunner if name == "llama" else HFRunner
    keep = runner.keep
    monkeypatch.setattr(runner, "keep", lambda self, rows: (kept.append(len(rows)), keep(self, rows)))
    monkeypatch.setattr(sampler, "COMPACT_AT", 0.95)  # drop rows as soon as one has finished
    ours = generate(model, prompts, **kw, eos_token_ids=eos)
    assert kept and kept[-1] < len(prompts)  # rows were dropped
    monkeypatch.setattr(sampler, "COMPACT_AT", 0.0)  # never drop a row
    every = generate(model, prompts, **kw, eos_token_ids=eos)
    assert 0 < int(every.finished.sum()) < len(prompts)
    assert torch.equal(ours.tokens, every.tokens) and torch.equal(ours.mask, every.mask)
    assert torch.equal(ours.finished, every.finished)
    assert (ours.logprobs - every.logprobs).abs().max() < 1e-5


def test_same_seed_same_samples(backend="torch"):
    model = tiny_llama()
    run = lambda seed: generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, pad_token_id=0,
                                generator=torch.Generator().manual_seed(seed), backend=backend).tokens
    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("top_p,top_k", [(1e-6, 0), (1.0, 1)])
def test_tiny_top_p_or_top_1_is_greedy(top_p, top_k):
    model = tiny_llama()
    greedy = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0)
    r = generate(model, PROMPTS, max_new_tokens=10, temperature=1.0, top_p=top_p, top_k=top_k,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(r.tokens, greedy.tokens)


def test_sample_next_top_p_truncates_but_logprob_is_untruncated():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log().expand(4000, 4).contiguous()
    tok, lp = sample_next(logits, temperature=1.0, top_p=0.7, top_k=0, generator=torch.Generator().manual_seed(0))
    # top_p=0.7 keeps {0, 1} (0.5 < 0.7 <= 0.8): renormalised 0.625 / 0.375
    assert set(tok.tolist()) == {0, 1}
    assert abs((tok == 0).float().mean().item() - 0.625) < 0.03
    assert torch.allclose(lp, probs[0].log()[tok])  # log 0.5 or log 0.3, before truncation
    tok, _ = sample_next(logits, 1.0, 1.0, 0, torch.Generator().manual_seed(0))
    freq = torch.bincount(tok, minlength=4).float() / 4000
    assert (freq - probs[0]).abs().max() < 0.03  # untruncated: all four at their rates


def test_top_p_nucleus_of_any_size():
    """Rows whose nucleus needs a few, hundreds or thousands of tokens (past the 256 and 4096
    the sampler tries first) draw from exactly the set a full sort keeps."""
    V, top_p = 6000, 0.9
    g = torch.Generator().manual_seed(0)
    rows = torch.stack([torch.randn(V, generator=g) * 6, torch.randn(V, generator=g) * 1.5,
                        torch.linspace(0.0, 0.5, V)])  # peaked, wide, nearly flat
    srt = rows.softmax(-1).sort(-1, descending=True)
    keep = srt.values.cumsum(-1) - srt.values < top_p  # HF's rule on the full sort
    nucleus = [set(srt.indices[i][keep[i]].tolist()) for i in range(3)]
    sizes = [len(n) for n in nucleus]
    assert sizes[0] < 256 < sizes[1] < 4096 < sizes[2]
    logits = rows.repeat_interleave(400, 0)
    tok, lp = sample_next(logits, 1.0, top_p, 0, torch.Generator().manual_seed(0))
    rank = srt.indices.argsort(-1)  # rank[i, token]: its place in row i's full sort
    for i in range(3):
        drawn = tok[400 * i: 400 * (i + 1)]
        assert set(drawn.tolist()) <= nucleus[i]
        ranks = rank[i][drawn]
        if sizes[i] > 256:  # spread over the whole nucleus, not the 256 (or 4096) tried first
            assert int((ranks >= 256).sum()) > 100
        if sizes[i] > 4096:
            assert int((ranks >= 4096).sum()) > 20
    assert torch.allclose(lp, logits.log_softmax(-1).gather(-1, tok[:, None])[:, 0])


def test_lora_weights_are_applied():
    base = tiny_llama()
    plain = generate(base, PROMPTS, max_new_tokens=10, temperature=0.0)
    model = add_lora(tiny_llama(), r=4, alpha=8)
    torch.manual_seed(1)
    for n, p in model.named_parameters():
        if "lora_B" in n:  # peft starts B at zero (a no-op adapter): make it count
            p.data.normal_(0, 0.5)
    ours = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0)
    ref = generate(model, PROMPTS, max_new_tokens=10, temperature=0.0, backend="hf")
    assert torch.equal(ours.tokens, ref.tokens) and torch.allclose(ours.logprobs, ref.logprobs, atol=1e-4)
    assert not torch.equal(ours.tokens, plain.tokens)
    for i, prompt in enumerate(PROMPTS):
        resp = ours.tokens[i].tolist()
        assert (ours.logprobs[i] - full_logprobs(model, prompt, resp, 1.0)).abs().max() < 1e-4
    with model.disable_adapter():  # adapters off: back to the base model's samples
        assert torch.equal(generate(model, PROMPTS, max_new_tokens=10, temperature=0.0).tokens, plain.tokens)


def test_ddp_wrapped_and_training_mode_restored(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = tiny_llama()
    ref = generate(model, PROMPTS, max_new_tokens=6, temperature=0.0)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        ddp.train()
        r = generate(ddp, PROMPTS, max_new_tokens=6, temperature=0.0)
        assert ddp.training and model.training
    finally:
        dist.destroy_process_group()
    assert torch.equal(r.tokens, ref.tokens)


def test_texts_drop_eos_and_padding():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rlhfkit.generation import Rollout

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "a dog ran"],
                            trainers.WordLevelTrainer(special_tokens=["<pad>", "<unk>", "<eos>"]))
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    w = hf_tok.convert_tokens_to_ids
    tokens = torch.tensor([[w("cat"), w("sat"), w("<eos>"), 0], [w("a"), w("dog"), w("ran"), w("on")]])
    mask = torch.tensor([[True, True, True, False], [True] * 4])
    r = Rollout(torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool), tokens,
                torch.zeros(2, 4), mask, torch.tensor([True, False]))
    assert r.texts(hf_tok) == ["cat sat", "a dog ran on"]  # eos and pad dropped; row 1 hit the limit
