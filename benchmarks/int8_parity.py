"""Learning parity of int8 rollouts: GRPO on verifiable arithmetic from one SFT model, with fp32
rollouts, int8 rollouts + TIS, and int8 rollouts without a correction (issue 14, target 2).

    python benchmarks/int8_parity.py --sft /tmp/rl_math/sft --world /tmp/rl_math/world --work /tmp/int8_parity \
        --steps 30 --eval-prompts 200 --set threads=1

Each arm runs `rlhfkit grpo` with rl_demo.py's GRPO settings (same seed, prompts and budget),
plus its own keys. Then every arm's final policy and the SFT model are evaluated greedy on the
same held-out prompts, and each arm's gain over SFT is printed with the paired standard error
(rl_demo.paired_report), and each int8 arm's difference from the fp32 arm the same way. Parity
means the int8 + TIS gain is within the paired SE of the fp32 gain. `--combine A.json B.json ...`
pools runs with other seeds (`--set seed=N`) into one paired report. The logged mismatch
(rollout/logprob_gap, rollout/is_capped_frac) and the step times are printed beside it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

ARMS = {
    "fp32": [],
    "int8_tis": ["rollout_quant=int8", "is_correction=tis", "is_cap=2.0"],
    "int8_none": ["rollout_quant=int8", "is_correction=none"],
}


def main() -> None:
    from rl_demo import ALGOS, paired_eval, paired_report, read_metrics, sh

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sft")
    p.add_argument("--world")
    p.add_argument("--work", default="/tmp/int8_parity")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--eval-prompts", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--set", action="append", default=[], help="extra key=value for every arm")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="only pool the per-prompt results of these "
                   "int8_parity.json files (runs with other seeds) into one paired report")
    a = p.parse_args()
    if a.combine:
        combine([Path(x) for x in a.combine])
        return
    if not (a.sft and a.world):
        p.error("--sft and --world are required (unless --combine)")
    work, world = Path(a.work), Path(a.world)
    work.mkdir(parents=True, exist_ok=True)
    summary = {}
    for arm in a.arms.split(","):
        out = work / arm
        shutil.rmtree(out, ignore_errors=True)
        keys = [f"model={a.sft}", f"prompts={world}/prompts_math.jsonl", f"out={out}", "reward=math",
                f"max_steps={a.steps}", f"learning_rate={a.lr}", f"max_new_tokens={a.max_new_tokens}",
                "micro_batch_size=16", "seed=0", *ALGOS["grpo"], *ARMS[arm], *a.set]
        wall = sh("grpo", *[x for k in keys for x in ("--set", k)], log=work / f"{arm}.log")
        steps = [r for r in read_metrics(out / "metrics.jsonl") if "time/step_s" in r]

        def mean(k, steps=steps):
            return sum(r.get(k, 0.0) for r in steps) / len(steps)

        summary[arm] = {"wall_s": wall, "step_s": mean("time/step_s"), "rollout_s": mean("time/rollout_s"),
                        "quantize_s": mean("time/quantize_s"), "logprob_gap": mean("rollout/logprob_gap"),
                        "is_capped_frac": mean("rollout/is_capped_frac"),
                        "reward_first5": sum(r["rollout/reward_mean"] for r in steps[:5]) / 5,
                        "reward_last5": sum(r["rollout/reward_mean"] for r in steps[-5:]) / 5}
        s = summary[arm]
        print(f"{arm:9s} {s['step_s']:.2f} s/step (rollout {s['rollout_s']:.2f}, quantize {s['quantize_s']:.3f}), "
              f"logprob_gap {s['logprob_gap']:.4f}, capped {s['is_capped_frac']:.4f}, train reward "
              f"{s['reward_first5']:.3f} -> {s['reward_last5']:.3f}", flush=True)
    models = {"sft": Path(a.sft), **{arm: work / arm for arm in summary}}
    correct = paired_eval(models, world / "prompts_math_eval.jsonl", a.eval_prompts)
    print("\nheld-out accuracy (greedy), gains over the SFT model:")
    paired_report(correct, "sft")
    if "fp32" in correct:
        print("\neach arm against fp32 rollouts (paired):")
        paired_report(correct, "fp32")
    (work / "int8_parity.json").write_text(json.dumps({"config": vars(a), "arms": summary,
                                                       "correct": correct}, indent=1) + "\n")


def combine(paths: list[Path]) -> None:
    """Pool several runs' per-prompt correctness (same arms, other seeds) into one paired report:
    each run's prompts are paired within that run, so the pooled lists stay aligned."""
    from rl_demo import paired_report as report

    runs = [json.loads(p.read_text())["correct"] for p in paths]
    arms = [k for k in runs[0] if all(k in r for r in runs)]
    pooled = {k: [x for r in runs for x in r[k]] for k in arms}
    print(f"{len(runs)} runs pooled, {len(pooled[arms[0]])} paired prompt-runs; gains over the SFT model:")
    report(pooled, "sft")
    if "fp32" in pooled:
        print("\neach arm against fp32 rollouts (paired):")
        report(pooled, "fp32")


if __name__ == "__main__":
    main()
