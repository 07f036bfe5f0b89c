"""Speed on a busy machine: each stage's speed after another busy process arrives mid-run, as
a share of its quiet speed, with the old fixed threads beside threads = 0 (re-probing).

    python benchmarks/busy.py --out busy.json
    python benchmarks/busy.py --parts pretrain,sampler --quiet-s 8 --busy-s 12

Parts (small models, built here; no downloads): pretrain at nanoGPT's CPU shape (4 layers,
128 wide, block 64, batch 12), sft / reward / a grpo step on a 4-layer 256-wide Llama, and the
sampler (16 rows x 96 new tokens per generate call, that model). Each part runs twice in its
own process: `fixed` (threads = all cores for the whole run: what a stage that starts alone
kept before) and `auto` (threads = 0: the start-up probe, then `rlhfkit.threads.Tuner`). The
run goes quiet for --quiet-s seconds of steps, then a busy process (a 2-thread matmul loop)
starts and the run goes on for --busy-s seconds. Quiet speed: the steps before the arrival
(the first, warm-up, left out); busy speed: every step after the one in flight at the arrival,
probe steps included. `share` = busy / quiet of the same run; `share of best` = busy / the
better quiet speed of the two runs (a run whose start-up probe already picked 1 thread is not
flattered by its own slow quiet speed). Target: share of best >= 0.4 with auto. The sampler's
thread column is its decode's count (its tuner's, carried between calls; `2>1`: switched inside
the call), not torch's count between calls, which `generate` restores to the caller's.

The machine's other load is not controlled: quote the ratios, and `uptime` beside them.
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
from _common import table

BUSY = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(768, 768)\n"
        "while True:\n    a = (a @ a).clamp_(-1, 1)\n")
MODEL = {"d_model": 256, "n_layers": 4, "n_heads": 4}


# --------------------------------------------------------------------------- setup (once)


def setup(work: Path) -> dict:
    """A small world, a tokenizer, a random 4 x 256 Llama, rankings and prompts."""
    import random

    from transformers import AutoTokenizer, LlamaForCausalLM

    from rlhfkit.cli import main as cli
    from rlhfkit.models import tiny_llama_config
    from rlhfkit.world import write_world

    files = write_world(work / "world", scale=0.05)
    tok_dir, model_dir = work / "tokenizer", work / "model"
    if cli(["tokenizer", "--set", f"files={files['corpus.txt']},{files['sft.jsonl']}", "--set", f"out={tok_dir}",
            "--set", "vocab_size=2048"]):
        raise SystemExit("tokenizer failed")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    import torch

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(tok), max_seq_len=512, **MODEL)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    r = random.Random(0)
    with (work / "rankings.jsonl").open("w") as f:
        for i in range(400):
            a, k = r.choice(["cat", "owl", "pelican"]), r.randint(0, 99)
            f.write(json.dumps({"prompt": f"Tell me about the {a}, number {k}.",
                                "responses": [f"The {a} sat by the river and was happy.", f"The {a} sat.",
                                              f"{k} plus {k} is {k} {k} {k} {k}"]}) + "\n")
    return {"corpus": files["corpus.txt"], "sft": files["sft.jsonl"], "prompts": files["prompts_math.jsonl"],
            "tokenizer": tok_dir, "model": model_dir, "rankings": work / "rankings.jsonl"}


def stage_argv(part: str, d: dict, out: Path, threads: int) -> list[str]:
    common = [f"out={out}", f"threads={threads}", "eval_every=0", "save_every=0", "max_steps=100000"]
    common += [] if part == "grpo" else ["log_every=1"]  # the RL loop logs every step anyway
    sets = {
        "pretrain": [f"data={d['corpus']}", f"tokenizer={d['tokenizer']}", "d_model=128", "n_layers=4",
                     "n_heads=4", "block_size=64", "batch_size=12", "micro_batch_size=12", "warmup_steps=1"],
        "sft": [f"model={d['model']}", f"data={d['sft']}", "batch_size=8", "max_seq_len=128", "eval_fraction=0.01"],
        "reward": [f"model={d['model']}", f"data={d['rankings']}", "batch_size=8", "max_seq_len=64"],
        "grpo": [f"model={d['model']}", f"prompts={d['prompts']}", "prompts_per_step=4", "group_size=4",
                 "max_new_tokens=32", "reward=math"],
    }[part]
    argv = [sys.executable, "-m", "rlhfkit", part]
    for s in common + sets:
        argv += ["--set", s]
    return argv


# --------------------------------------------------------------------------- the sampler's worker


def sampler_worker(model: str, progress: str, threads: int) -> None:
    """generate() again and again, one metrics line per call (as a stage's metrics.jsonl)."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhfkit import distributed
    from rlhfkit.generation import generate, sampler

    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    distributed.set_threads(m, threads)
    prompts = [[5 + i, 6, 7, 8] for i in range(16)]
    g = torch.Generator().manual_seed(0)

    def decode_threads() -> int:
        # the count the sampler's decode runs on: its tuner's (threads = 0), carried between calls;
        # torch's own count is the caller's again after every call (generate restores it)
        s = sampler._TUNED.get("state")
        return torch.get_num_threads() if s is None else s.threads

    with open(progress, "a") as f:
        while True:
            before, t = decode_threads(), time.perf_counter()
            r = generate(m, prompts, max_new_tokens=96, temperature=1.0, generator=g)
            dt = time.perf_counter() - t
            f.write(json.dumps({"time/step_s": dt, "time/tokens_per_s": float(r.mask.sum()) / dt,
                                "time/threads": before, "time/threads_end": decode_threads()}) + "\n")
            f.flush()


# --------------------------------------------------------------------------- one run


def _lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for ln in path.read_text().splitlines():
        try:
            r = json.loads(ln)
        except ValueError:
            break  # a line being written
        if "time/step_s" in r:
            rows.append(r)
    return rows


def _units(r: dict) -> float:
    rate = r.get("time/tokens_per_s", r.get("time/responses_per_s"))
    return rate * r["time/step_s"]


def one_run(part: str, mode: str, d: dict, work: Path, quiet_s: float, busy_s: float, limit_s: float) -> dict:
    threads = os.cpu_count() if mode == "fixed" else 0
    out = work / f"{part}-{mode}"
    if part == "sampler":
        progress = out / "metrics.jsonl"
        out.mkdir(parents=True, exist_ok=True)
        progress.unlink(missing_ok=True)
        argv = [sys.executable, __file__, "--sampler-worker", str(d["model"]), str(progress), str(threads)]
    else:
        progress = out / "metrics.jsonl"
        argv = stage_argv(part, d, out, threads)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("OMP_NUM_THREADS", None)  # the stage picks its own threads
    err = work / f"{part}-{mode}.stderr"  # a file, not a pipe nobody reads while the run goes on
    with err.open("w") as f:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=f)
    busy, arrived_at, arrival_t, t0 = None, None, 0.0, time.time()
    try:
        while time.time() - t0 < 2 * limit_s:  # a run whose steps never come: no figures
            time.sleep(0.1)
            if proc.poll() is not None:
                raise SystemExit(f"{part} ({mode}) exited with {proc.returncode}: {err.read_text()[-2000:]}")
            rows = _lines(progress)
            spent = sum(r["time/step_s"] for r in rows[1:])
            if busy is None and ((spent >= quiet_s and len(rows) >= 3)
                                 or (time.time() - t0 > limit_s / 2 and len(rows) >= 2)):
                busy = subprocess.Popen([sys.executable, "-c", BUSY], env=env)
                arrived_at, arrival_t = len(rows), time.time()  # rows[arrived_at]: the step in flight, neither phase
            if busy is not None:
                after = rows[arrived_at + 1:]
                if (sum(r["time/step_s"] for r in after) >= busy_s and len(after) >= 2) \
                        or time.time() - arrival_t > limit_s / 2:
                    break
    finally:
        proc.kill()
        proc.wait()
        if busy is not None:
            busy.kill()
            busy.wait()
    rows = _lines(progress)
    if arrived_at is None:
        raise SystemExit(f"{part} ({mode}): fewer than 2 steps in {2 * limit_s:.0f} s")
    quiet, after = rows[1:arrived_at], rows[arrived_at + 1:]
    # no step finished after the arrival (the old 2-thread step under load can take minutes): 0
    speed = lambda rs: sum(_units(r) for r in rs) / sum(r["time/step_s"] for r in rs) if rs else 0.0
    return {"quiet": speed(quiet), "busy": speed(after), "quiet_steps": len(quiet), "busy_steps": len(after),
            "busy_wall_s": time.time() - arrival_t,
            "threads_quiet": sorted({_threads(r) for r in quiet}, key=str),
            "threads_busy": [_threads(r) for r in after]}


def _threads(r: dict):
    """A step's thread count; a sampler call whose tuner switched inside it: "2>1" (start>end)."""
    t, end = r.get("time/threads"), r.get("time/threads_end", r.get("time/threads"))
    return t if t == end else f"{t}>{end}"


# --------------------------------------------------------------------------- main


def stop(hog, workers) -> None:
    """Kill and reap the busy process (None: not started) and the worker processes."""
    for w in ([hog] if hog is not None else []) + list(workers):
        w.kill()
        w.wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", default="pretrain,sft,reward,grpo,sampler")
    p.add_argument("--modes", default="fixed,auto")
    p.add_argument("--quiet-s", type=float, default=8.0, help="seconds of quiet steps before the busy process")
    p.add_argument("--busy-s", type=float, default=15.0, help="seconds of steps after it arrives")
    p.add_argument("--limit-s", type=float, default=55.0,
                   help="wall time per run: the busy process arrives by half of it, the run ends a half after")
    p.add_argument("--work", default="", help="scratch dir (default: a temporary one)")
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--sampler-worker", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.sampler_worker:
        model, progress, threads = a.sampler_worker
        return sampler_worker(model, progress, int(threads))

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(a.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        d = setup(work)
        load = os.getloadavg()
        results: dict = {}
        for part in a.parts.split(","):
            for mode in a.modes.split(","):
                r = one_run(part, mode, d, work, a.quiet_s, a.busy_s, a.limit_s)
                results.setdefault(part, {})[mode] = r
                print(f"{part} {mode}: quiet {r['quiet']:.4g}/s ({r['quiet_steps']} steps), busy {r['busy']:.4g}/s "
                      f"({r['busy_steps']} steps), threads after arrival {r['threads_busy']}", flush=True)
    rows = []
    for part, by_mode in results.items():
        best = max(r["quiet"] for r in by_mode.values())
        for mode, r in by_mode.items():
            r["share"], r["share_of_best"] = r["busy"] / r["quiet"], r["busy"] / best
            unit = "responses/s" if part == "reward" else "tokens/s"
            rows.append([part, mode, f"{r['quiet']:.4g}", f"{r['busy']:.4g}", unit, r["share"], r["share_of_best"],
                         "/".join(map(str, r["threads_quiet"])), _runs(r["threads_busy"])])
    print()
    print(table(rows, ["part", "threads", "quiet", "busy", "unit", "share", "share of best", "threads quiet",
                       "threads after arrival"]))
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    if a.out:
        Path(a.out).write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "load_average": load,
                                           "cores": os.cpu_count(), "quiet_s": a.quiet_s, "busy_s": a.busy_s,
                                           "results": results}, indent=1))


def _runs(xs: list) -> str:
    """[2, 2, 1, 1, 1] -> '2x2 1x3': the thread count of the steps after the arrival, in runs."""
    out: list[list] = []
    for x in xs:
        if out and out[-1][0] == x:
            out[-1][1] += 1
        else:
            out.append([x, 1])
    return " ".join(f"{x}x{n}" for x, n in out)


if __name__ == "__main__":
    main()
