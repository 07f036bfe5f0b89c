"""Teacher-forced logits of a frozen Llama (the RL reference) through the sampler's fast path.

    scorer = FrozenScorer(ref)                  # reorders the weights once (~0.5 s for 135M)
    logits = scorer.logits(rl.rollout.pack(inputs))   # (M, V), the real response tokens only

The reference never trains, so its weights are laid out for oneDNN once per run
(`matmul.py`'s "onednn": reordered weights, gate and up fused) and every step's reference
forward runs through `llama_fast.LlamaRunner`'s layers instead of the HF modules: one forward
over the distinct prompts and the packed responses together (one sequence; its attention
segment by segment, `llama_fast.rows_attention`: each prompt causal on its own real tokens,
each response on its prompt and its own earlier tokens), the LM head on the response
positions only. Same math as the HF forward to fp32
rounding (~1e-6 relative; tests/test_rl.py checks it against the padded HF forward). It holds
a second, reordered copy of the weights (~0.54 GB for SmolLM2-135M) for the run.
"""

from __future__ import annotations

import torch

from rlhfkit.generation.llama_fast import LlamaRunner

ROWS = 512  # the products' rows the weights are laid out for (16 rows x ~30 tokens + the prompts)


class FrozenScorer:
    def __init__(self, model):
        self.key = self.version(model)
        # it never decodes: its caches (allocate) keep the plain key layout that SDPA over the
        # segments reads, not the grouped decode attention's transposed keys
        self.runner = LlamaRunner(model, 1, 2, matmul="onednn", pack_rows=ROWS, attention="sdpa")

    @staticmethod
    def fits(model) -> bool:
        """A plain LlamaForCausalLM in fp32 on an x86 CPU with oneDNN, none of it trainable."""
        if type(model).__name__ != "LlamaForCausalLM" or not torch.backends.mkldnn.is_available():
            return False
        w = model.lm_head.weight
        return w.device.type == "cpu" and w.dtype == torch.float32 and not any(
            p.requires_grad for p in model.parameters())

    @staticmethod
    def version(model) -> tuple:
        # a frozen tensor changes only through an in-place write (load_state_dict), which bumps it
        return tuple((p.data_ptr(), p._version) for p in model.parameters())

    def current(self, model) -> bool:
        """Whether the reordered copy still matches `model`'s weights."""
        return self.version(model) == self.key

    @torch.no_grad()
    def logits(self, packing) -> torch.Tensor:
        """rl.rollout.Packing -> (M, V) fp32 logits of its packed tokens' next tokens."""
        r = self.runner
        U, Q = packing.prompt_ids.shape
        M = len(packing.ids)
        ids = torch.cat([packing.prompt_ids.reshape(-1), packing.ids])
        pos = torch.cat([packing.prompt_pos.reshape(-1), packing.pos])
        S = len(ids)
        need = max(S, int(pos.max()) + 1)
        if r.k_cache[0].shape[2] < need:
            r.allocate(1, need)
        # each prompt causal on its own real tokens (a pad query sees itself: no empty softmax row),
        # then the packed rows as `Packing.segments` say (their queries after the prompts')
        c = torch.arange(Q)
        segments = [(u * Q, (u + 1) * Q, u * Q + c,
                     (c[None, :] <= c[:, None]) & (packing.prompt_mask[u][None] | torch.eye(Q, dtype=torch.bool)))
                    for u in range(U)]
        segments += [(U * Q + q0, U * Q + q1, keys, mask) for q0, q1, keys, mask in packing.segments]
        r.n = 0
        h = r._forward(ids[None], pos[None], segments, last=False)[0]  # (S, D)
        return r._head(h[U * Q:])
