"""RL on verifiable arithmetic in the embedded world: GRPO, PPO and RLOO from one SFT model.

    python benchmarks/rl_demo.py --sft runs/demo/sft --world runs/demo/world --work /tmp/rl_demo
    python benchmarks/rl_demo.py --build --work /tmp/rl_demo      # build a math-only SFT model first
    python benchmarks/rl_demo.py --build --build-only --work /tmp/rl_math --pre-steps 500 --sft-steps 200
    python benchmarks/rl_demo.py --sft /tmp/rl_math/sft --world /tmp/rl_math/world --work /tmp/rl_math \
        --steps 100 --eval-every 20 --eval-prompts 300 --lr 3e-5 --set threads=0
    python benchmarks/rl_demo.py ... --paired-only    # per-prompt paired gain over the SFT model, with its SE

--build: the world (scale 1), 40k worked two-digit +/- conversations and 20k more as plain
text (none on a held-out pair), a 512-token BPE, 0.92M-parameter model (d_model 128, 4 layers);
on 2 shared cores 500 pre-training + 200 SFT steps take ~6 min and give ~79% greedy held-out.

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
    "grpo": ["group_size=8", "prompts_per_step=16", "kl_coef=0.02", "loss_reduction=token", "ppo_epochs=1"],
    "rloo": ["group_size=8", "prompts_per_step=16", "kl_coef=0.02", "advantage=rloo", "ppo_epochs=1"],
    "ppo": ["group_size=8", "prompts_per_step=16", "kl_coef=0.02", "kl_controller=fixed", "ppo_epochs=2",
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


def math_conversations(n: int, seed: int, held: set) -> list[dict]:
    """`n` single-turn two-digit + / - conversations in the world's worked style, none on a held-out pair.

    The world's own sft.jsonl has ~30% arithmetic, much of it one-line (`17 + 14 = 31.`) or in
    words; a small model learns the worked steps (tens, ones, combine) far better than a bare sum,
    and only the worked steps generalise to unseen operand pairs, so every answer here is worked.
    """
    import random

    from rlhfkit.world import MATH_QUESTIONS, OPS, _operands, worked

    rng, out = random.Random(f"{seed}:rl_demo-math"), []
    for _ in range(n):
        op = rng.choice(["+", "-"])
        x, y = _operands(rng, held, op, "two")
        q = rng.choice(MATH_QUESTIONS[op]).format(x=x, y=y)
        out.append({"messages": [{"role": "user", "content": q},
                                 {"role": "assistant", "content": f"{worked(x, op, y)} The answer is {OPS[op][1](x, y)}."}]})
    return out


def build(work: Path, d_model: int, n_layers: int, pre_steps: int, sft_steps: int) -> tuple[Path, Path]:
    """world -> math-only text and conversations -> tokenizer -> pretrain -> sft (math only)."""
    from rlhfkit.world import held_out_pairs

    w = work / "world"
    s = lambda *kv: [x for item in kv for x in ("--set", item)]
    sh("world", str(w), log=work / "world.log")  # scale 1: the standard 300 held-out eval prompts
    held = held_out_pairs(0)  # the world's seed-0 held-out pairs: excluded from everything we train on
    convs = math_conversations(40000, 0, held)
    (work / "sft_math.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    # pre-training text: the same kind of Q/A, other draws, documents split on blank lines
    text = math_conversations(20000, 1, held)
    (work / "math.txt").write_text("\n\n".join(f"{c['messages'][0]['content']} {c['messages'][1]['content']}"
                                               for c in text) + "\n")
    sh("tokenizer", *s(f"files={work}/math.txt,{work}/sft_math.jsonl", f"out={work}/tokenizer", "vocab_size=512"),
       log=work / "tokenizer.log")
    sh("pretrain", *s(f"data={work}/math.txt", f"tokenizer={work}/tokenizer", f"out={work}/base", f"d_model={d_model}",
                      f"n_layers={n_layers}", "n_heads=4", "block_size=128", "batch_size=32", "micro_batch_size=32",
                      f"max_steps={pre_steps}", "warmup_steps=20", "learning_rate=3e-3", "eval_every=0",
                      "save_every=0"), log=work / "pretrain.log")
    sh("sft", *s(f"model={work}/base", f"data={work}/sft_math.jsonl", f"out={work}/sft", f"max_steps={sft_steps}",
                 "batch_size=32", "micro_batch_size=32", "learning_rate=2e-3", "warmup_steps=10", "max_seq_len=96",
                 "eval_every=0", "save_every=0"), log=work / "sft.log")
    return work / "sft", w


def paired_eval(models: dict[str, Path], eval_path: Path, n: int) -> dict[str, list[float]]:
    """Greedy per-prompt correctness (0/1) of each model on the first `n` eval prompts, so that
    accuracy differences can be judged paired (same prompts) rather than as two independent means."""
    from rlhfkit.models import eos_token_ids, load_causal_lm, load_tokenizer
    from rlhfkit.rewards.spec import resolve_reward
    from rlhfkit.rl.config import RolloutSpec
    from rlhfkit.rl.evaluate import evaluate
    from rlhfkit.rl.setup import load_prompts

    out = {}
    spec = RolloutSpec(group_size=1, max_new_tokens=48, temperature=1.0, top_p=1.0, generation_batch_size=100,
                       micro_batch_size=8, seed=0, backend="torch", missing_eos_penalty=0.0)
    for name, path in models.items():
        tok, policy = load_tokenizer(str(path)), load_causal_lm(str(path)).eval()
        reward = resolve_reward("math")
        recs = load_prompts(str(eval_path), tok, reward, 256, n)
        _, samples = evaluate(policy, tok, recs, reward, spec, 0, eos_token_ids(policy, tok), temperature=0.0)
        out[name] = [x["reward"] for x in samples]
    return out


def paired_report(correct: dict[str, list[float]], base: str) -> None:
    """Accuracy +- binomial SE, and each model's gain over `base` with the paired SE
    sqrt(var(d) / n) of the per-prompt differences d in {-1, 0, 1}."""
    b = correct[base]
    n = len(b)
    for name, c in correct.items():
        p = sum(c) / n
        d = [x - y for x, y in zip(c, b)]
        md = sum(d) / n
        sd = (sum((x - md) ** 2 for x in d) / (n - 1) / n) ** 0.5
        print(f"{name:5s} {p:.3f} +- {(p * (1 - p) / n) ** 0.5:.3f}  gain over {base} {md:+.3f} +- {sd:.3f} (paired, "
              f"n={n}; fixed {sum(x > 0 for x in d)}, broken {sum(x < 0 for x in d)})")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def plot(results: dict, work: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for key, ylabel, name in (("eval/accuracy", "held-out exact-match accuracy (greedy)", "accuracy.png"),
                              ("rollout/reward_mean", "training reward (sampled, T=1)", "reward.png")):
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
    p.add_argument("--d-model", type=int, default=128, help="--build: model width")
    p.add_argument("--n-layers", type=int, default=4, help="--build: transformer blocks")
    p.add_argument("--pre-steps", type=int, default=300, help="--build: math-only pre-training steps")
    p.add_argument("--sft-steps", type=int, default=400, help="--build: SFT steps")
    p.add_argument("--build-only", action="store_true", help="stop after --build")
    p.add_argument("--paired-only", action="store_true", help="only the paired eval of the finished runs in --work")
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
    sft, world = (build(work, a.d_model, a.n_layers, a.pre_steps, a.sft_steps) if a.build else (Path(a.sft), Path(a.world)))
    if a.build_only:
        return
    if a.paired_only:
        models = {"sft": sft, **{x: work / x for x in a.algos.split(",") if (work / x / "config.json").exists()}}
        paired_report(paired_eval(models, world / "prompts_math_eval.jsonl", a.eval_prompts), "sft")
        return

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
    # binomial standard error of one evaluation (n prompts, accuracy p): sqrt(p (1 - p) / n)
    n = a.eval_prompts
    for algo, r in summary.items():
        p0, p1 = r["accuracy_before"], r["accuracy_after"]
        print(f"{algo}: {p0:.3f} +- {(p0 * (1 - p0) / n) ** 0.5:.3f} -> {p1:.3f} +- {(p1 * (1 - p1) / n) ** 0.5:.3f} "
              f"(n={n} held-out prompts, greedy)")


if __name__ == "__main__":
    main()
