"""What the guard decided in an RL run, beside what the hidden person thought: one row per eval.

    python benchmarks/guard_table.py runs/demo/ppo          # after a run with `gold` set
    python benchmarks/guard_table.py runs/demo/ppo --set win_drop=1 --set agreement_drop=0
                                     # what other limits would have decided (an observe run: exact)

Reads OUT/guard.json (the guard's evidence and decisions), OUT/samples.jsonl (each eval's
samples; their `gold` field, which the guard never reads) and OUT/metrics.jsonl. Prints per
eval step: KL, proxy reward, the person's mean gold score, the spot-check win rate over the
start, the RM-labeler agreement and the rules that fired; then the stop, the shipped step and
its regret = (gold_best - gold_shipped) / (gold_best - gold_start) over the eval steps (issue 11's
measure: 0 ships the best step seen, 1 ships no better than the start).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from rlhfkit.guard_rules import Limits, replay


def regret(gold_by_step: dict[int, float], shipped: int) -> float | None:
    """(best - shipped) / (best - start); None when no step beat the start."""
    start, best = gold_by_step[min(gold_by_step)], max(gold_by_step.values())
    return (best - gold_by_step[shipped]) / (best - start) if best > start else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="the RL stage's output directory")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--set", action="append", default=[], metavar="LIMIT=V",
                   help="replay the run's evals with another limit (kl_budget, win_drop, agreement_drop, ...)")
    a = p.parse_args()
    gj = json.loads((a.out / "guard.json").read_text())
    if a.set:
        limits = replace(Limits(**gj["rules"]), **{k: float(v) for k, v in (x.split("=", 1) for x in a.set)})
        gj["stop_step"], gj["reason"], gj["shipped_step"] = replay(gj["evals"], limits)
        stop = gj["stop_step"] if gj["stop_step"] is not None else gj["evals"][-1]["step"]
        gj["labels_used"] = sum(e["labels"] for e in gj["evals"] if e["step"] <= stop)
        print(f"replayed with {limits}")
    golds: dict[int, list[float]] = defaultdict(list)
    for line in (a.out / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        if "gold" in s:
            golds[s["step"]].append(s["gold"])
    gold = {k: statistics.fmean(v) for k, v in golds.items()}
    rows = [{**e, "gold": gold.get(e["step"])} for e in gj["evals"]]
    summary = {"stop_step": gj["stop_step"], "shipped_step": gj["shipped_step"], "reason": gj["reason"],
               "labels_used": gj["labels_used"], "labels_total": gj.get("labels_total"),
               "gold_best_step": max(gold, key=gold.get) if gold else None,
               "regret": regret(gold, gj["shipped_step"]) if gold else None}
    if a.json:
        print(json.dumps({"rows": rows, **summary}, indent=1))
        return

    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)
    print(f"{'step':>5} {'KL':>7} {'proxy':>7} {'gold':>6} {'win':>6} {'+-':>5} {'agree':>6} {'rep':>5} "
          f"{'len':>5}  fired")
    for r in rows:
        print(f"{r['step']:>5} {f(r['kl'], '{:.2f}'):>7} {f(r['proxy']):>7} {f(r['gold']):>6} {f(r['win_rate']):>6} "
              f"{f(r['win_se'], '{:.2f}'):>5} {f(r['agreement']):>6} {f(r['repetition'], '{:.2f}'):>5} "
              f"{f(r['length'], '{:.1f}'):>5}  {','.join(r['fired'])}")
    print(f"\nstop step {summary['stop_step']} ({summary['reason']}); shipped step {summary['shipped_step']}; "
          f"labels used {summary['labels_used']} (of {summary['labels_total']} asked)")
    if gold:
        print(f"gold: start {gold[min(gold)]:.3f}, best {max(gold.values()):.3f} at step {summary['gold_best_step']}, "
              f"shipped {gold[gj['shipped_step']]:.3f}; regret {f(summary['regret'], '{:.2f}')}")


if __name__ == "__main__":
    main()
