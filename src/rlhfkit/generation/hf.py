"""Generation through transformers' own code: `HFRunner` (any causal LM's forward with a
DynamicCache, the sampler's runner for models the Llama fast path does not take) and the "hf"
backend (`model.generate`, the reference the tests hold our sampler to)."""

from __future__ import annotations

import torch

from rlhfkit.generation.rollout import Rollout, unwrap
from rlhfkit.models import kv_cache_kwargs


class HFRunner:
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
        # the name the unwrapped model's forward takes the cache under (a peft wrapper passes it on)
        self.cache_arg = next(iter(kv_cache_kwargs(hf, None)))
        self.attn = torch.zeros(batch, max_len, dtype=torch.long, device=hf.device)
        self.n = 0

    def _forward(self, ids, pos):
        B, S = ids.shape
        self.n += S
        out = self.model(input_ids=ids, attention_mask=self.attn[:B, : self.n], position_ids=pos,
                         use_cache=True, **{self.cache_arg: self.cache}, **self.extra)
        return out.logits[:, -1].float()

    def prefill(self, ids, mask, pos, rows=None):
        """As LlamaRunner.prefill: (U, P) distinct prompt rows -> (B, V) logits."""
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


def generate_hf(model, ids, mask, *, max_new_tokens, temperature, top_p, top_k, eos_token_ids,
                 pad_token_id, generator) -> Rollout:
    """transformers `generate` as the reference; logprobs recomputed from its raw logits."""
    import copy

    model, hf = unwrap(model)
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
