"""Batched sampling with a KV cache: the hot path of every RL step (70-90% of its time).

    rollout = generate(model, prompts, max_new_tokens=64, temperature=1.0, top_p=0.95,
                       eos_token_ids=[2], pad_token_id=0, generator=torch.Generator().manual_seed(0))

Backends (`sampler.BACKENDS`; a "vllm" entry plugs in the same way):
- "torch" (default): ours (`sampler.py`). One prefill over the left-padded batch, then one
  decode step per token with a preallocated cache. Llama-architecture models (LlamaForCausalLM;
  SmolLM2 is one) take the fast path of `llama_fast.py`, which runs the layers itself from the
  model's own weights through the products of `matmul.py` (oneDNN with weights reordered once
  per call on x86 CPUs); every other causal LM runs through its own forward with a transformers
  DynamicCache (`hf.HFRunner`).
- "hf": transformers `model.generate` (`hf.py`), the reference, converted into the same `Rollout`.

`logprobs` are log-probabilities of the sampled token under softmax(logits / temperature),
i.e. after temperature and *before* top-k/top-p truncation (what PPO/GRPO's ratio and the KL
to the reference need: a distribution that a full forward can reproduce). For greedy
decoding (temperature 0) they are under temperature 1.

Importing this package costs torch only; transformers loads when a backend needs it.
"""

from rlhfkit.generation.rollout import Rollout, left_pad
from rlhfkit.generation.sampler import BACKENDS, generate, sample_next

__all__ = ["BACKENDS", "Rollout", "generate", "left_pad", "sample_next"]
