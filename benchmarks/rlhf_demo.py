"""RLHF against a learned reward: PPO on the demo's joke reward model, with the gold score beside it.

    rlhfkit demo                                   # builds runs/demo/{sft,feedback,rm}
    python benchmarks/rlhf_demo.py --run runs/demo --work /tmp/rlhf_demo --steps 60

The reward model (runs/demo/rm) learned simulated rankings of the SFT model's jokes; the
simulated person ranked by the hidden gold preference `rlhfkit.rewards.gold:joke`. PPO trains
on the reward model only; the stage's `gold` key scores the very same samples with the gold
function for the plot (never for training). The plot shows the proxy reward, the gold score
and the KL to the SFT model over steps: where the proxy keeps rising while the gold flattens
or falls, the policy is over-optimising the reward model. Writes rlhf_demo.json and PNGs into
--work. A benchmark, not a test: numbers depend on the machine and on how long it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RUNNER = "import sys; from rlhfkit.cli import main; sys.exit(main(sys.argv[1:]))"
GOLD = "rlhfkit.rewards.gold:joke"


def sh(*args: str, log: Path) -> float:
    t = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-c", RUNNER, *args], stdout=f, stderr=subprocess.STDOUT,
                           env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if r.returncode:
        raise SystemExit(f"{args[0]} failed; see {log}")
    return time.perf_counter() - t


def smooth(xs: list[float], k: int = 5) -> list[float]:
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def plot(m: list[dict], work: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in m if "rollout/reward_mean" in r]
    x = [r["step"] for r in steps]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    proxy = [r["rollout/reward_mean"] for r in steps]
    ax.plot(x, proxy, alpha=0.3, color="C0")
    ax.plot(x, smooth(proxy), color="C0", label="reward model (proxy, trained on)")
    ax.set_ylabel("reward model score")
    ax2 = ax.twinx()
    gold = [r["rollout/gold_mean"] for r in steps]
    ax2.plot(x, gold, alpha=0.3, color="C3")
    ax2.plot(x, smooth(gold), color="C3", label="gold (the simulated person)")
    ev = [(r["step"], r["eval/gold_mean"]) for r in m if "eval/gold_mean" in r]
    ax2.plot([e[0] for e in ev], [e[1] for e in ev], "s--", color="C1", label="gold, held-out greedy")
    ax2.set_ylabel("gold score [0, 1]")
    ax.set_xlabel("PPO step")
    ax.set_title("proxy vs gold (rollout samples)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower right")
    axes[1].plot(x, [r["policy/kl_ref"] for r in steps], color="C2")
    axes[1].set_xlabel("PPO step")
    axes[1].set_ylabel("KL(policy || SFT) per sequence, nats")
    axes[1].set_title("KL to the reference")
    kl = [r["policy/kl_ref"] for r in steps]
    axes[2].scatter(kl, proxy, s=10, color="C0", label="proxy (standardised)")
    axes[2].set_xlabel("KL to SFT (nats)")
    axes[2].set_ylabel("reward model score", color="C0")
    a3 = axes[2].twinx()
    a3.scatter(kl, gold, s=10, color="C3", label="gold")
    a3.set_ylabel("gold score", color="C3")
    axes[2].set_title("score vs KL (Gao et al. 2022 style)")
    for a in axes:
        a.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = work / "rlhf_proxy_vs_gold.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default="runs/demo", help="demo run dir: sft/, rm/, world/")
    p.add_argument("--rm", default="", help="reward model dir (default: RUN/rm)")
    p.add_argument("--work", default="/tmp/rlhf_demo")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--algo", default="ppo", choices=["ppo", "grpo", "rloo"])
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--kl-coef", type=float, default=0.02)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--set", action="append", default=[], help="extra key=value for the stage")
    a = p.parse_args()
    run, work = Path(a.run), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rm = a.rm or str(run / "rm")
    out = work / a.algo
    shutil.rmtree(out, ignore_errors=True)
    per_algo = {"ppo": ["group_size=2", "prompts_per_step=16", f"value_init=rm:{rm}", "ppo_epochs=2",
                        "num_minibatches=2", "kl_controller=fixed"],
                "grpo": ["group_size=4", "prompts_per_step=8", "loss_reduction=token"],
                "rloo": ["group_size=4", "prompts_per_step=8"]}[a.algo]
    keys = [f"model={run}/sft", f"reward=rm:{rm}", f"gold={GOLD}", f"prompts={run}/world/prompts_jokes.jsonl",
            f"eval_prompts={run}/world/prompts_jokes_eval.jsonl", "eval_max_prompts=64",
            f"eval_every={a.eval_every}", f"out={out}", f"max_steps={a.steps}", f"learning_rate={a.lr}",
            f"kl_coef={a.kl_coef}", "max_new_tokens=48", "micro_batch_size=16", "missing_eos_penalty=1.0",
            "seed=0", *per_algo, *a.set]
    wall = sh(a.algo, *[x for k in keys for x in ("--set", k)], log=work / f"{a.algo}.log")
    m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line]
    steps = [r for r in m if "rollout/reward_mean" in r]
    evals = [(r["step"], r["eval/reward_mean"], r["eval/gold_mean"]) for r in m if "eval/gold_mean" in r]
    path = plot(m, work, f"{a.algo} on rm:{rm}, lr {a.lr}, kl_coef {a.kl_coef}, {a.steps} steps")
    summary = {"config": vars(a), "wall_s": wall, "s_per_step": sum(r["time/step_s"] for r in steps) / len(steps),
               "eval": evals,
               "rollout": [(r["step"], r["rollout/reward_mean"], r["rollout/gold_mean"], r["policy/kl_ref"])
                           for r in steps]}
    (work / "rlhf_demo.json").write_text(json.dumps(summary, indent=1))
    print(f"{a.algo}: {len(steps)} steps, {summary['s_per_step']:.2f} s/step, wall {wall:.0f} s; wrote {path}")
    print("| step | proxy (rollout) | gold (rollout) | KL |")
    print("|---|---|---|---|")
    for s, r, g, kl in summary["rollout"][:: max(1, len(steps) // 12)] + summary["rollout"][-1:]:
        print(f"| {s} | {r:.3f} | {g:.3f} | {kl:.2f} |")
    print("held-out (greedy): " + ", ".join(f"step {s}: proxy {r:.3f} gold {g:.3f}" for s, r, g in evals))


if __name__ == "__main__":
    main()
