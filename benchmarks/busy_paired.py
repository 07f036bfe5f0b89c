"""Two versions of the sampler side by side on a busy machine: busy.py's sampler (16 rows x 96
new tokens a call, its 4 x 256 Llama) in one worker process per arm, the arms taking turns one
generate call each, quiet rounds and then rounds beside busy.py's busy process.

    python benchmarks/busy_paired.py --arm old=/path/to/old/src:0f --arm new=src:0f --arm pin1=src:1 --arm pin2=src:2

An arm is NAME=SRC:THREADS: SRC goes first on the worker's PYTHONPATH (a checkout's `src`),
THREADS is the sampler's `threads` (0: the start-up probe and the tuner; "0f": the same, but
started on 2 threads as the start-up probe picks on a quiet machine, which a shared machine's
probe may not; 1 or 2: pinned). Arms pinned to more than one thread skip the busy rounds (beside
the busy process each of their calls takes seconds). busy.py runs each arm alone, so whatever
else runs on the machine (other people's jobs) differs between its quiet and busy phases and
between arms; here every arm sees the same load within a round, and the order is reversed each
round. Reported: each arm's quiet and busy tokens/s (tokens over seconds, all calls of the phase),
busy / its own quiet, and busy / the best arm's quiet (the target's share); and each call's
decode thread count (start>end where the tuner switched inside the call).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).parent


def worker(model: str, threads: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit import distributed
    from rlhfkit.generation import generate, sampler

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    picked = distributed.set_threads(m, int(threads.rstrip("f")))
    if threads.endswith("f"):
        torch.set_num_threads(2)  # as if the start-up probe had seen a quiet machine
    decode = lambda: sampler._TUNED["state"].threads if "state" in sampler._TUNED else torch.get_num_threads()
    prompts = [[5 + i, 6, 7, 8] for i in range(16)]
    g = torch.Generator().manual_seed(0)
    print(json.dumps({"picked": picked}), flush=True)
    for _ in sys.stdin:
        a, t = decode(), time.perf_counter()
        r = generate(m, prompts, max_new_tokens=96, temperature=1.0, generator=g)
        dt, b = time.perf_counter() - t, decode()
        print(json.dumps({"tokens": float(r.mask.sum()), "s": dt, "threads": str(a) if a == b else f"{a}>{b}"}),
              flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arm", action="append", default=[], help="NAME=SRC:THREADS (repeat; two or more)")
    p.add_argument("--quiet-rounds", type=int, default=5)
    p.add_argument("--busy-rounds", type=int, default=10)
    p.add_argument("--work", default="")
    p.add_argument("--out", default="")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(*a.worker)
    if len(a.arm) < 2:
        p.error("give two or more --arm NAME=SRC:THREADS")
    import tempfile

    sys.path.insert(0, str(BENCH))
    import busy

    arms = {}
    for spec in a.arm:
        name, rest = spec.split("=", 1)
        src, threads = rest.rsplit(":", 1)
        arms[name] = (str(Path(src).resolve()), threads)
    base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    base["TOKENIZERS_PARALLELISM"] = "false"
    res: dict = {"quiet": {}, "busy": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = str(busy.setup(work)["model"])
        ws = {n: subprocess.Popen([sys.executable, __file__, "--worker", model, th],
                                  env={**base, "PYTHONPATH": os.pathsep.join([src, str(BENCH)])},
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
              for n, (src, th) in arms.items()}
        load, hog = os.getloadavg(), None
        try:
            for n, w in ws.items():
                print(f"{n}: start-up probe picked {json.loads(w.stdout.readline())['picked']}", flush=True)
            for phase, rounds in (("quiet", a.quiet_rounds), ("busy", a.busy_rounds)):
                if phase == "busy":
                    hog = subprocess.Popen([sys.executable, "-c", busy.BUSY], env=base)
                    time.sleep(0.5)
                for r in range(rounds):
                    for n in list(arms) if r % 2 == 0 else list(arms)[::-1]:
                        if phase == "busy" and arms[n][1].rstrip("f") not in ("0", "1"):
                            continue
                        ws[n].stdin.write("go\n")
                        ws[n].stdin.flush()
                        res[phase].setdefault(n, []).append(json.loads(ws[n].stdout.readline()))
                    print(phase, r, "  ".join(f"{n} {c[-1]['tokens'] / c[-1]['s']:.0f} ({c[-1]['threads']})"
                                              for n, c in res[phase].items()), flush=True)
        finally:
            busy.stop(hog, ws.values())
    sys.path.insert(0, str(BENCH))
    from _common import table

    speed = lambda cs: sum(c["tokens"] for c in cs) / sum(c["s"] for c in cs) if cs else float("nan")
    best = max(speed(cs) for cs in res["quiet"].values())
    rows = []
    for n in arms:
        q, b = speed(res["quiet"].get(n, [])), speed(res["busy"].get(n, []))
        rows.append([n, f"{arms[n][1]}", f"{q:.0f}", f"{b:.0f}", b / q, b / best,
                     " ".join(c["threads"] for c in res["busy"].get(n, []))])
    print(table(rows, ["arm", "threads", "quiet tokens/s", "busy tokens/s", "share", "share of best quiet",
                       "decode threads, busy calls"]))
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    if a.out:
        Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": load,
                                           "arms": arms, "results": res}))


if __name__ == "__main__":
    main()
