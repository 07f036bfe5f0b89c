"""Sampler speed: rlhfkit's torch backend vs transformers `generate`, tokens/s and roofline.

    python benchmarks/bench_sampler.py --out bench_sampler.json
    python benchmarks/bench_sampler.py --models demo-3m --batches 1 8 --new-tokens 32
    python benchmarks/bench_sampler.py --models smollm2-135m --batches 16 64 --group 8   # RL groups
    python benchmarks/bench_sampler.py --models smollm2-135m --batches 1 16 64 --threads 1 \
        --backends torch --matmuls before auto --repeat 3      # before vs after, alternating

Random-weight models of two shapes (no download): SmolLM2-135M's LlamaConfig and a ~3M
parameter demo-sized Llama. Prompts are ~32 random tokens, no eos (every row runs the full
`--new-tokens`), sampling at temperature 1. `--group N` repeats each prompt N times (batch / N
distinct prompts), as GRPO's groups do; the sampler then prefills each distinct prompt once.
tokens/s = batch x new tokens / wall time of one `generate` call (prefill included), best of
`--repeat` runs after a warm-up.
Roofline: a decoded token costs ~2 x params FLOPs, so the peak is the matmul peak / (2 params);
the peak is measured in every round (a 2048^2 fp32 matmul on the same threads, best of 3) unless
`--peak-gflops` gives it. On a shared machine wall time measures the neighbours too: tok/cpu-s
(tokens per CPU-second per thread) and cpu-roof (that against the peak measured by CPU time)
show what a quiet machine would. `--matmuls` compares the Llama fast path's product paths
(generation/matmul.py) in the same run, in turn; "ratio" is the median over rounds of the first
variant's CPU time over this one's.
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


def timed(fn) -> tuple[float, float]:
    """-> wall seconds, and this process's CPU seconds (on a shared machine CPU time / threads is
    what the wall time would be alone, if threads never wait)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def matmul_peak(n: int = 2048, repeat: int = 3) -> tuple[float, float]:
    """-> GFLOP/s of a fp32 n x n matmul on the current threads: (by wall time, by this process's
    CPU time per thread), best of `repeat`; measured beside the sampler so that a roofline under
    the same load (and thread count) goes with each figure."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    # best of: a single product is short enough to be descheduled rarely
    best_w, best_c = float("inf"), float("inf")
    for _ in range(repeat):
        w, c = timed(lambda: a @ b)
        best_w, best_c = min(best_w, w), min(best_c, c / torch.get_num_threads())
    return 2 * n**3 / best_w / 1e9, 2 * n**3 / best_c / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--repeat", type=int, default=1, help="rounds; each runs every variant once, in turn")
    p.add_argument("--group", type=int, default=1, help="copies of each prompt in a batch (RL groups)")
    p.add_argument("--backends", nargs="+", default=["torch", "hf"])
    p.add_argument("--matmuls", nargs="+", default=["auto"],
                   help="the torch backend's product paths to compare (generation/matmul.py MATMULS; "
                        "auto: its own choice; sdpa: auto with SDPA as the decode steps' attention; "
                        "before: that and MKL products, the prefill in one chunk)")
    p.add_argument("--peak-gflops", type=float, default=0.0,
                   help="fp32 peak for the roofline; 0: measure a 2048^2 matmul on the same threads in each round")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import os
    import statistics

    from transformers import LlamaForCausalLM

    from rlhfkit.generation import sampler
    from rlhfkit.generation.llama_fast import LlamaRunner

    # earlier choices of the torch backend, as the settings that bring them back, for comparisons
    # in the same process: "sdpa" decodes with SDPA's attention (the 2026-12-02 step), "before"
    # also with MKL products and the prefill in one chunk (the 2026-12-01 runner); both keep
    # today's sampler and prefill column trimming, which have no switch
    sdpa = {(LlamaRunner, "DECODE_ATTENTION"): "sdpa"}
    PAST = {"before": {**sdpa, (sampler, "MATMUL"): "mkl", (LlamaRunner, "PREFILL_TOKENS"): 1 << 30},
            "sdpa": sdpa}

    load = os.getloadavg()[0]  # other processes on the machine skew every wall-clock figure
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f}; "
          f"{args.new_tokens} new tokens, prompts ~{args.prompt_len} tokens, temperature 1"
          + (f", groups of {args.group} copies" if args.group > 1 else ""))
    variants = [(b, m) for b in args.backends for m in (args.matmuls if b == "torch" else ["-"])]
    base = variants[0]
    rows = []
    print(f"{'model':<14}{'params':>8}{'batch':>6}  {'variant':<20}{'tok/s':>8}{'tok/cpu-s':>10}{'ratio':>7}"
          f"{'roofline':>9}{'cpu-roof':>9}{'peak':>7}")
    for name in args.models:
        torch.manual_seed(0)
        cfg = SHAPES[name]()
        model = LlamaForCausalLM(cfg).eval()
        n_params = count_parameters(model)
        for B in args.batches:
            g = torch.Generator().manual_seed(B)
            # lengths vary a little around prompt_len, so left padding is exercised
            n_distinct = -(-B // args.group)  # the last group is short when group does not divide B
            lens = torch.randint(args.prompt_len - 4, args.prompt_len + 1, (n_distinct,), generator=g).tolist()
            distinct = [torch.randint(3, cfg.vocab_size, (n,), generator=g).tolist() for n in lens]
            prompts = [p for p in distinct for _ in range(args.group)][:B]

            def run(variant, n=args.new_tokens, model=model, prompts=prompts):
                backend, mm = variant
                settings = PAST[mm] if mm in PAST else {(sampler, "MATMUL"): None if mm in ("auto", "-") else mm}
                saved = {k: getattr(*k) for k in settings}
                for (obj, attr), value in settings.items():
                    setattr(obj, attr, value)
                try:
                    return generate(model, prompts, max_new_tokens=n, temperature=1.0, eos_token_ids=(),
                                    pad_token_id=0, generator=torch.Generator().manual_seed(0), backend=backend)
                finally:
                    for (obj, attr), value in saved.items():
                        setattr(obj, attr, value)

            for v in variants:
                run(v, 4)  # warm-up: allocator, thread pool, lazy imports
            times = {v: [] for v in variants}
            peaks = []
            # rounds alternate the variants (and a peak measurement), so a change of load on a
            # shared machine reaches all of them alike; ratios are of the same round's runs
            for _ in range(args.repeat):
                peaks.append(matmul_peak() if not args.peak_gflops else (args.peak_gflops,) * 2)
                for v in variants:
                    times[v].append(timed(lambda v=v: run(v)))
            peak_w, peak_c = max(p[0] for p in peaks), max(p[1] for p in peaks)
            for v in variants:
                wall, cpu = min(t[0] for t in times[v]), min(t[1] for t in times[v])
                ratio = statistics.median(b[1] / t[1] for b, t in zip(times[base], times[v]))
                tps, cpu_tps = B * args.new_tokens / wall, B * args.new_tokens / cpu * torch.get_num_threads()
                roof_w, roof_c = peak_w * 1e9 / (2 * n_params), peak_c * 1e9 / (2 * n_params)
                row = dict(model=name, params=n_params, batch=B, group=args.group, backend=v[0], matmul=v[1],
                           new_tokens=args.new_tokens, seconds=[t[0] for t in times[v]],
                           cpu_seconds=[t[1] for t in times[v]], tokens_per_s=tps, tokens_per_cpu_s=cpu_tps,
                           # CPU time per thread over the same figure for the first variant, median of rounds
                           speedup_vs_first=ratio, peak_gflops_wall=peak_w, peak_gflops_cpu=peak_c,
                           roofline_fraction=tps / roof_w,
                           # tokens per CPU-second (x threads) against the peak by CPU time: what a
                           # quiet machine would show
                           cpu_roofline_fraction=cpu_tps / roof_c,
                           # model FLOPs utilisation counting the prompt tokens' prefill too (each
                           # distinct prompt once: the copies of a group need no prefill of their own)
                           cpu_mfu=2 * n_params * (sum(map(len, distinct)) + B * args.new_tokens)
                           / (cpu / torch.get_num_threads()) / (peak_c * 1e9))
                rows.append(row)
                label = v[0] if v[0] != "torch" else f"torch/{v[1]}"
                print(f"{name:<14}{n_params / 1e6:>7.1f}M{B:>6}  {label:<20}{tps:>8.1f}{cpu_tps:>10.1f}{ratio:>6.2f}x"
                      f"{100 * tps / roof_w:>8.1f}%{100 * cpu_tps / roof_c:>8.1f}%{peak_c:>7.1f}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"threads": torch.get_num_threads(), "load_average_at_start": load, "rows": rows}, f, indent=1)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
