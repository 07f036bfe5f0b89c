"""RL on verifiable arithmetic in the embedded world: GRPO, PPO and RLOO from one SFT model.

    python benchmarks/rl_demo.py --sft runs/demo/sft --world runs/demo/world --work /tmp/rl_demo
    python benchmarks/rl_demo.py --build --work /tmp/rl_demo      # build a small SFT model first

For each algorithm it runs the stage's CLI (prompts_math.jsonl for training, reward `math`)
and evaluates exact-match accuracy on prompts_math_eval.jsonl (operand pairs that appear
nowhere in the world's training data) every `--eval-every` steps, greedy. Prints a table of
accuracy before -> after, wall time per step, and writes rl_demo.json and PNG curves into --work.
A benchmark, not a test: numbers depend on the machine and on how long it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# the real CLI entry point (UserError -> one line, exit 2)
RUNNER = "import sys; from rlhfkit.cli import main; sys.exit(main(sys.argv[1:]))"

# per-algorithm settings: the same prompts, budget and sampling; each its usual loss shape
ALGOS = {
    "grpo": ["group_size=8", "prompts_per_step=8", "kl_coef=0.02", "loss_reduction=token", "ppo_epochs=1"],
    "rloo": ["group_size=8", "prompts_per_step=8", "kl_coef=0.02", "advantage=rloo", "ppo_epochs=1"],
    "ppo": ["group_size=8", "prompts_per_step=8", "kl_coef=0.02", "kl_controller=fixed", "ppo_epochs=2",
            "num_minibatches=2", "vf_coef=0.5", "lam=0.95"],
}


def sh(*args: str, log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-c", RUNNER, *args], stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if r.returncode:
        raise SystemExit(f"{args[0]} failed; see {log}")
    return time.perf_counter() - t


def build(work: Path) -> tuple[Path, Path]:
    """world -> tokenizer -> pretrain -> sft, small sizes (~0.5M parameters)."""
    w = work / "world"
    s = lambda *kv: [x for item in kv for x in ("--set", item)]
    sh("world", str(w), "--scale", "0.5", log=work / "world.log")
    sh("tokenizer", *s(f"files={w}/corpus.txt,{w}/sft.jsonl", f"out={work}/tokenizer", "vocab_size=1024"),
       log=work / "tokenizer.log")
    sh("pretrain", *s(f"data={w}/corpus.txt", f"tokenizer={work}/tokenizer", f"out={work}/base", "d_model=96",
                      "n_layers=4", "n_heads=4", "block_size=128", "batch_size=16", "micro_batch_size=16",
                      "max_steps=150", "warmup_steps=15", "learning_rate=3e-3", "eval_every=0"), log=work / "pretrain.log")
    math_only = work / "sft_math.jsonl"
    with (w / "sft.jsonl").open() as f, math_only.open("w") as g:
        g.writelines(line for line in f if "The answer is" in line)
    sh("sft", *s(f"model={work}/base", f"data={math_only}", f"out={work}/sft", "max_steps=900", "batch_size=16",
                 "micro_batch_size=16", "learning_rate=2e-3", "warmup_steps=10", "max_seq_len=128", "eval_every=0"),
       log=work / "sft.log")
    return work / "sft", w


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot(results: dict, work: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("eval/accuracy", "held-out exact-match accuracy (greedy)", "rl_accuracy.png"),
                              ("rollout/reward_mean", "training reward (sampled, T=1)", "rl_reward.png")):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for algo, res in results.items():
            pts = [(m["step"], m[key]) for m in res["metrics"] if key in m]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if key.startswith("eval") else None,
                    label=algo)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(work / name, dpi=110)
        plt.close(fig)
        paths.append(work / name)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sft", default="runs/demo/sft", help="SFT model dir")
    p.add_argument("--world", default="runs/demo/world", help="dir written by `rlhfkit world`")
    p.add_argument("--build", action="store_true", help="build a small world + SFT model into --work first")
    p.add_argument("--work", default="/tmp/rl_demo")
    p.add_argument("--algos", default="grpo,ppo,rloo")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--eval-prompts", type=int, default=300, help="held-out prompts per evaluation")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--set", action="append", default=[], help="extra key=value for every stage")
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sft, world = (build(work) if a.build else (Path(a.sft), Path(a.world)))

    results = {}
    for algo in a.algos.split(","):
        out = work / algo
        keys = [f"model={sft}", f"prompts={world}/prompts_math.jsonl", f"eval_prompts={world}/prompts_math_eval.jsonl",
                f"out={out}", "reward=math", f"max_steps={a.steps}", f"eval_every={a.eval_every}",
                f"eval_max_prompts={a.eval_prompts}", f"learning_rate={a.lr}", f"max_new_tokens={a.max_new_tokens}",
                "micro_batch_size=16", "seed=0", *ALGOS[algo], *a.set]
        import shutil

        shutil.rmtree(out, ignore_errors=True)
        wall = sh(algo, *[x for k in keys for x in ("--set", k)], log=work / f"{algo}.log")
        m = read_metrics(out / "metrics.jsonl")
        evals = [(r["step"], r["eval/accuracy"]) for r in m if "eval/accuracy" in r]
        steps = [r for r in m if "time/step_s" in r]
        results[algo] = {
            "accuracy_before": evals[0][1], "accuracy_after": evals[-1][1], "accuracy_curve": evals,
            "reward_first5": sum(r["rollout/reward_mean"] for r in steps[:5]) / len(steps[:5]),
            "reward_last5": sum(r["rollout/reward_mean"] for r in steps[-5:]) / len(steps[-5:]),
            "kl_ref_last": steps[-1]["policy/kl_ref"], "step_s": sum(r["time/step_s"] for r in steps) / len(steps),
            "rollout_s": sum(r["time/rollout_s"] for r in steps) / len(steps),
            "train_s": sum(r["time/train_s"] for r in steps) / len(steps), "wall_s": wall, "metrics": m,
        }
        r = results[algo]
        print(f"{algo:5s} accuracy {r['accuracy_before']:.3f} -> {r['accuracy_after']:.3f}  "
              f"train reward {r['reward_first5']:.3f} -> {r['reward_last5']:.3f}  "
              f"{r['step_s']:.2f} s/step (rollout {r['rollout_s']:.2f}, train {r['train_s']:.2f}), wall {wall:.0f} s",
              flush=True)

    summary = {k: {kk: vv for kk, vv in v.items() if kk != "metrics"} for k, v in results.items()}
    (work / "rl_demo.json").write_text(json.dumps({"config": vars(a), "results": summary}, indent=1))
    for path in plot(results, work):
        print(f"wrote {path}")
    print("\n| algo | held-out accuracy before | after | train reward first 5 -> last 5 steps | s/step |")
    print("|---|---|---|---|---|")
    for algo, r in summary.items():
        print(f"| {algo} | {r['accuracy_before']:.3f} | {r['accuracy_after']:.3f} | "
              f"{r['reward_first5']:.3f} -> {r['reward_last5']:.3f} | {r['step_s']:.2f} |")
        print("  curve: " + ", ".join(f"{s}:{acc:.3f}" for s, acc in r["accuracy_curve"]))


if __name__ == "__main__":
    main()
