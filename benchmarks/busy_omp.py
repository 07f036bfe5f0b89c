"""The OpenMP wait policy against busy.py's busy process: the sampler (busy.py's 16 rows x 96
new tokens a call, its 4 x 256 Llama) pinned to 1 and to 2 threads, under each policy, quiet
and then beside the busy process.

    python benchmarks/busy_omp.py --envs default,PASSIVE,spin10000 --rounds 4 --out f.json

libgomp reads OMP_WAIT_POLICY and GOMP_SPINCOUNT once, when it loads, so each policy runs in
its own worker process; the workers take turns, one generate call each (the order reversed
every round), so they see the same load from whatever else runs on the machine. Per policy and
thread count: the calls' median tokens/s, and the decode steps' fastest times (min, 1st and
10th percentile: on a shared machine the fastest steps are the ones nothing interrupted, which
is where a policy's own cost, e.g. waking a sleeping worker at every parallel region, shows).
The busy process keeps libgomp's default policy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ENVS = {"default": {}, "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "ACTIVE": {"OMP_WAIT_POLICY": "ACTIVE"},
        "spin1000": {"GOMP_SPINCOUNT": "1000"}, "spin10000": {"GOMP_SPINCOUNT": "10000"},
        "spin30000": {"GOMP_SPINCOUNT": "30000"}}
POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def worker(model: str) -> None:
    """Reads a thread count per line; runs one generate call on it; writes its figures."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit import distributed
    from rlhfkit.generation import generate, llama_fast

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    distributed.set_threads(m, 2)  # pinned: no tuner
    steps: list[float] = []
    step = llama_fast.LlamaRunner.step

    def timed(self, tok, pos):
        t = time.perf_counter()
        out = step(self, tok, pos)
        steps.append(time.perf_counter() - t)
        return out

    llama_fast.LlamaRunner.step = timed
    prompts = [[5 + i, 6, 7, 8] for i in range(16)]
    g = torch.Generator().manual_seed(0)

    def call() -> float:
        t = time.perf_counter()
        r = generate(m, prompts, max_new_tokens=96, temperature=1.0, generator=g)
        return float(r.mask.sum()) / (time.perf_counter() - t)

    for n in (2, 1):  # warm both counts
        torch.set_num_threads(n)
        call()
    print("ready", flush=True)
    for line in sys.stdin:
        torch.set_num_threads(int(line))
        steps.clear()
        print(json.dumps({"tokens_per_s": call(), "steps_s": steps}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", default="default,PASSIVE,spin10000", help=f"of {', '.join(ENVS)}")
    p.add_argument("--rounds", type=int, default=4, help="calls per policy and thread count, each phase")
    p.add_argument("--work", default="")
    p.add_argument("--out", default="")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.worker)
    import tempfile

    import busy

    names = a.envs.split(",")
    base = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    base["TOKENIZERS_PARALLELISM"] = "false"
    base.pop("OMP_NUM_THREADS", None)
    res: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = str(busy.setup(work)["model"])
        ws = {n: subprocess.Popen([sys.executable, __file__, "--worker", model], env={**base, **ENVS[n]},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
              for n in names}
        load, hog = os.getloadavg(), None
        try:
            for w in ws.values():
                if w.stdout.readline().strip() != "ready":
                    raise SystemExit("a worker failed to start")
            for phase in ("quiet", "busy"):
                if phase == "busy":
                    hog = subprocess.Popen([sys.executable, "-c", busy.BUSY], env=base)
                    time.sleep(1.0)
                for r in range(a.rounds):
                    for t in (2, 1):
                        for n in names if r % 2 == 0 else names[::-1]:
                            ws[n].stdin.write(f"{t}\n")
                            ws[n].stdin.flush()
                            res.setdefault(phase, {}).setdefault(n, {}).setdefault(str(t), []).append(
                                json.loads(ws[n].stdout.readline()))
        finally:
            busy.stop(hog, ws.values())
    from _common import table

    q = lambda xs, f: sorted(xs)[int(f * (len(xs) - 1))]
    rows = []
    for phase, by_env in res.items():
        for n, by_t in by_env.items():
            for t, calls in by_t.items():
                st = [s for c in calls for s in c["steps_s"]]
                rows.append([phase, n, t, f"{q([c['tokens_per_s'] for c in calls], 0.5):.0f}",
                             *(f"{1e3 * q(st, f):.2f}" for f in (0.0, 0.01, 0.1, 0.5))])
    print(table(rows, ["phase", "policy", "threads", "tokens/s (median call)", "step min ms", "p1", "p10", "p50"]))
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    if a.out:
        Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": load,
                                           "envs": {n: ENVS[n] for n in names}, "results": res}))


if __name__ == "__main__":
    main()
