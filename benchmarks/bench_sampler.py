"""Sampler speed: rlhfkit's torch backend vs transformers `generate`, tokens/s and roofline.

    python benchmarks/bench_sampler.py --out bench_sampler.json
    python benchmarks/bench_sampler.py --models demo-3m --batches 1 8 --new-tokens 32
    python benchmarks/bench_sampler.py --models smollm2-135m --batches 16 64 --group 8   # RL groups

Random-weight models of two shapes (no download): SmolLM2-135M's LlamaConfig and a ~3M
parameter demo-sized Llama. Prompts are ~32 random tokens, no eos (every row runs the full
`--new-tokens`), sampling at temperature 1. `--group N` repeats each prompt N times (batch / N
distinct prompts), as GRPO's groups do; the sampler then prefills each distinct prompt once.
tokens/s = batch x new tokens / wall time of one `generate` call (prefill included), best of
`--repeat` runs after a warm-up.
Roofline: a decoded token costs ~2 x params FLOPs, so the peak is `--peak-gflops` / (2 params).
On a shared machine wall time measures the neighbours too: tok/cpu-s (tokens per CPU-second
of this process) and cpu-roof (that, against one core's share of the peak) show what a quiet
machine would, when run with --threads 1.
Targets (performance issue): batch-1 >= 2x HF generate; >= 50% of roofline at batch 64 (135M).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from rlhfkit.generation import generate
from rlhfkit.models import count_parameters, tiny_llama_config


def smollm2_135m_shape():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                       rope_theta=100000.0, max_position_embeddings=2048, rms_norm_eps=1e-5)


SHAPES = {
    "smollm2-135m": smollm2_135m_shape,
    "demo-3m": lambda: tiny_llama_config(vocab_size=2048, d_model=192, n_layers=6, n_heads=6),
}


def timed(fn, repeat: int) -> tuple[float, float]:
    """-> best wall seconds, and this process's CPU seconds in that run (on a shared machine
    CPU time / threads is what the wall time would be alone, if threads never wait)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--group", type=int, default=1, help="copies of each prompt in a batch (RL groups)")
    p.add_argument("--backends", nargs="+", default=["torch", "hf"])
    p.add_argument("--peak-gflops", type=float, default=166.0, help="fp32 peak of this machine")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import LlamaForCausalLM

    rows = []
    import os

    n_cores = os.cpu_count() or 1  # the peak is for all of them
    load = os.getloadavg()[0]  # other processes on the machine skew every wall-clock figure
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}; "
          f"{args.new_tokens} new tokens, prompts ~{args.prompt_len} tokens, temperature 1"
          + (f", groups of {args.group} copies" if args.group > 1 else ""))
    print(f"{'model':<14}{'params':>8}{'batch':>6}  {'backend':<7}{'tok/s':>9}{'vs hf':>7}{'roofline':>10}{'mfu':>7}{'tok/cpu-s':>11}{'cpu-roof':>9}")
    for name in args.models:
        torch.manual_seed(0)
        cfg = SHAPES[name]()
        model = LlamaForCausalLM(cfg).eval()
        n_params = count_parameters(model)
        peak_tps = args.peak_gflops * 1e9 / (2 * n_params)
        for B in args.batches:
            g = torch.Generator().manual_seed(B)
            # lengths vary a little around prompt_len, so left padding is exercised
            n_distinct = -(-B // args.group)  # the last group is short when group does not divide B
            lens = torch.randint(args.prompt_len - 4, args.prompt_len + 1, (n_distinct,), generator=g).tolist()
            distinct = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
            prompts = [p for p in distinct for _ in range(args.group)][:B]
            tps, row_mfu, cpu_tps = {}, {}, {}
            for backend in args.backends:
                def run(n=args.new_tokens):
                    return generate(model, prompts, max_new_tokens=n, temperature=1.0, eos_token_ids=(),
                                    pad_token_id=0, generator=torch.Generator().manual_seed(0), backend=backend)

                run(4)  # warm-up: allocator, thread pool, lazy imports
                dt, cpu = timed(run, args.repeat)
                tps[backend] = B * args.new_tokens / dt
                cpu_tps[backend] = B * args.new_tokens / cpu
                row = dict(model=name, params=n_params, batch=B, group=args.group, backend=backend,
                           new_tokens=args.new_tokens,
                           seconds=dt, cpu_seconds=cpu, tokens_per_s=tps[backend],
                           tokens_per_cpu_s=cpu_tps[backend],
                           # per CPU-second against one core's share of the peak: the efficiency
                           # a quiet machine would show (meaningful with --threads 1)
                           cpu_roofline_fraction=cpu_tps[backend] / (peak_tps / n_cores), roofline_tokens_per_s=peak_tps,
                           roofline_fraction=tps[backend] / peak_tps,
                           # model FLOPs utilisation counting the prompt tokens' prefill too (each
                           # distinct prompt once: the copies of a group need no prefill of their own)
                           mfu=2 * n_params * (sum(map(len, distinct)) + B * args.new_tokens) / dt
                           / (args.peak_gflops * 1e9))
                rows.append(row)
                row_mfu[backend] = row["mfu"]
            for backend in args.backends:
                ratio = tps[backend] / tps["hf"] if "hf" in tps else float("nan")
                print(f"{name:<14}{n_params / 1e6:>7.1f}M{B:>6}  {backend:<7}{tps[backend]:>9.1f}"
                      f"{ratio:>6.2f}x{100 * tps[backend] / peak_tps:>9.1f}%{100 * row_mfu[backend]:>6.1f}%"
                      f"{cpu_tps[backend]:>11.1f}{100 * cpu_tps[backend] / (peak_tps / n_cores):>8.1f}%", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "load_average_at_start": load, "peak_gflops": args.peak_gflops, "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
