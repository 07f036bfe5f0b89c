"""Issue 11's regret study: does the guard ship the right checkpoint for people it was not tuned on?

    python benchmarks/regret.py --base /tmp/demo-run --work /tmp/rg     # runs what is missing, then the table
    python benchmarks/regret.py --base /tmp/demo-run --work /tmp/rg --table-only

For each hidden person (the joke gold and the three in benchmarks/golds.py) and each seed, it
re-runs the demo's RLHF steps (rankings by that person -> reward model -> PPO, guard = observe,
80 steps, eval every 5, 256 eval prompts) in WORK/NAME-sSEED, a copy of BASE's world/, tokenizer/ and sft/ (a
finished `rlhfkit demo` run: pre-training and SFT are not repeated), two runs at a time; a run
whose PPO step finished (WORK/NAME-sSEED/recipe-state.json) is not run again (the script
resumes; an interrupted run starts its unfinished step again). Then per run: the guard's stop
and shipped step, gold at start / best / shipped over the eval steps, regret = (best - shipped) /
(best - start), labels_used and labels_used / the rankings the reward model was trained on.
Then the same runs replayed (`guard.replay`, exact for an observe run) with only 2 of the 12 spot
checks per eval, and every 10 steps with 4 (rebuilt from the run's spot-check store: the labels
budget); and re-asked (`reask`: the real Guard over the recorded evals, asking the run's person
afresh) with rankings of 2 or 4, in --reps streams of the person's noise; see VIEWS.

Writes benchmarks/results/regret.json and benchmarks/results/regret.png (gold and proxy vs step
and vs KL for --plot-run, default punchy-s0: the run of this set where gold peaks, then falls
while the proxy stays high). The guard's rules are the defaults; nothing here tunes them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from importlib.resources import files
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDS = {"joke": "rlhfkit.rewards.gold:joke", "punchy": "golds:punchy", "animal": "golds:animal",
         "wordplay": "golds:wordplay"}
SEEDS = (0, 1)
# 80 steps: twice the demo's, so the person's score has time to turn; 256 of the 300 held-out
# prompts per eval, so a step's gold mean (the yardstick of regret, one sample per prompt at T=1)
# carries +-0.008 of noise instead of +-0.015 with the demo's 64
# 12 spot checks per eval (the demo asks 4): the views below replay the guard on fewer of them
SETS = ["ppo.guard=observe", "ppo.max_steps=80", "ppo.eval_every=5", "ppo.eval_max_prompts=256",
        "ppo.guard_spot_checks=12", "ppo.threads=1", "reward.threads=1"]
# the views of the same runs: (eval every, spot checks per eval or None = as run (12), responses per spot
# check or None = the run's own pairs, what it is). The budget views cap labels_used at 32 of the ~180
# rankings the demo's reward model trains on (18%), stop or no stop: 2 checks at each of 16 evals, or 4
# at each of 8. Views with a size re-ask the run's person (`reask`) in --reps fresh streams of its noise.
VIEWS = ((5, None, None, "as run: eval every 5, 12 spot checks per eval (pairs against the start)"),
         (5, 2, None, "replayed: eval every 5, the first 2 of each eval's pairs (the labels budget)"),
         (10, 4, None, "replayed: eval every 10, the first 4 of each eval's pairs (the labels budget)"),
         (5, 2, 2, "re-asked: eval every 5, 2 pairs against the start per eval (the labels budget)"),
         (5, 2, 4, "re-asked: eval every 5, 2 rankings of 4 per eval (the labels budget)"),
         (10, 4, 4, "re-asked: eval every 10, 4 rankings of 4 per eval (the labels budget)"),
         (5, 4, 4, "re-asked: eval every 5, 4 rankings of 4 per eval (twice the budget)"))
RLHF_STEPS = ("recipe", "feedback", "rank", "reward", "ppo")


def trimmed_recipe(work: Path) -> Path:
    """The packaged demo recipe's [recipe] and RLHF steps only (world..SFT are copied, not re-run)."""
    text = Path(str(files("rlhfkit") / "recipes" / "demo.toml")).read_text()
    out, keep = [], False
    for line in text.splitlines():
        if line.startswith("["):
            keep = line.split("]")[0].strip("[") in RLHF_STEPS
        if keep:
            out.append(line)
    path = work / "regret-recipe.toml"
    path.write_text("\n".join(out) + "\n")
    return path


def start_run(base: Path, work: Path, recipe: Path, name: str, seed: int, extra: list[str]) -> subprocess.Popen:
    run = work / f"{name}-s{seed}"
    run.mkdir(parents=True, exist_ok=True)
    for sub in ("world", "tokenizer", "sft"):
        if not (run / sub).exists():
            shutil.copytree(base / sub, run / sub)
    cmd = [sys.executable, "-m", "rlhfkit", "run", str(recipe), "--run", str(run), "--labeler", GOLDS[name],
           "--seed", str(seed)] + [x for s in SETS + extra for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    print(f"start {name}-s{seed}: {' '.join(cmd)}", flush=True)
    with open(run / "regret.log", "a") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)


def finished(run: Path) -> bool:
    """The recipe recorded the PPO step as finished (guard.json is rewritten at every eval, so it is no sign)."""
    state = run / "recipe-state.json"
    return state.is_file() and "ppo" in json.loads(state.read_text())


def rankings_trained_on(run: Path) -> int:
    """Rankings in the store minus the reward model's held-out ones (rm/eval.json)."""
    con = sqlite3.connect(f"file:{run / 'feedback' / 'feedback.db'}?mode=ro", uri=True)
    total = con.execute("select count(*) from rankings").fetchone()[0]
    held = json.loads((run / "rm" / "eval.json").read_text())["metrics"].get("rm/rankings", 0)
    return int(total - held)


def spot_subsample(run: Path, evals: list[dict], k: int) -> list[dict]:
    """The evals as if the guard had asked only k spot checks per eval: the first k it asked (by eval
    index) of each eval's comparisons, rebuilt from the run's spot-check store (ppo/feedback.db)
    with the labeler's own answers; win rate and RM agreement recomputed as the guard does."""
    from rlhfkit.guard_rules import agreement_outcomes, outcome, rate_with_noise

    reward: dict[tuple[int, int], float] = {}
    index: dict[int, int] = defaultdict(int)
    for line in (run / "ppo" / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        reward[s["step"], index[s["step"]]] = s["reward"]
        index[s["step"]] += 1
    con = sqlite3.connect(f"file:{run / 'ppo' / 'feedback.db'}?mode=ro", uri=True)
    asked: dict[int, list[tuple[int, float, float]]] = defaultdict(list)  # step -> (eval index, outcome, margin)
    for meta, ranked, tie, policy_model in con.execute(
            "select p.meta, k.ranked_ids, k.tie, r.model from rankings k join tasks t on t.id = k.task_id "
            "join prompts p on p.id = t.prompt_id join responses r on r.id = json_extract(k.ranked_ids, '$[0]')"):
        g = json.loads(meta)["guard"]
        first_is_policy = policy_model == f"step-{g['step']}"
        asked[g["step"]].append((g["eval_index"], outcome(first_is_policy, bool(tie)),
                                 reward[g["step"], g["eval_index"]] - reward[0, g["eval_index"]]))
    out = [evals[0]]
    for e in evals[1:]:
        chosen = sorted(asked[e["step"]])[:k]
        labels, margins = [c[1] for c in chosen], [c[2] for c in chosen]
        win, win_se = rate_with_noise(labels)
        agree, agree_se = rate_with_noise(agreement_outcomes(margins, labels))
        out.append({**e, "labels": len(labels), "win_rate": win, "win_se": win_se, "agreement": agree,
                    "agreement_se": agree_se})
    return out


def reask(run: Path, every: int, checks: int, size: int, rep: int = 0) -> list[dict]:
    """The guard run afresh over the run's recorded evals (samples.jsonl: every eval prompt's sample at
    every eval step; the rollout's KL from guard.json), asking `checks` new spot checks of `size`
    responses per eval of the run's own person (the same labeler and noise, a fresh stream per `rep`)
    through a scratch store: what an observe run with those keys would have seen, since the guard's
    questions do not change the policy. The ensemble's disagreement is not recomputed (None).
    -> the guard's eval records."""
    import tempfile

    from rlhfkit.guard import Guard, GuardKeys, simulated_responder
    from rlhfkit.guard_rules import Limits

    gj = json.loads((run / "ppo" / "guard.json").read_text())
    kl = {e["step"]: e["kl"] for e in gj["evals"]}
    by_step: dict[int, list[dict]] = defaultdict(list)
    for line in (run / "ppo" / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        by_step[s["step"]].append(s)
    name, seed = run.name.rsplit("-s", 1)
    stream = int(seed) * 1000 + rep  # rep 0 of seed 1 -> 1000: other draws than the run's own (seed 1)
    records = [{"prompt": s["prompt"]} for s in by_step[0]]
    with tempfile.TemporaryDirectory() as d:
        g = Guard("observe", d, Limits(**gj["rules"]), checks, seed=stream, keep=gj.get("keep", 3), spot_size=size,
                  respond=simulated_responder(GOLDS[name], GuardKeys().guard_labeler_temperature, stream))
        for step in sorted(k for k in by_step if k % every == 0):
            g.on_eval(step, records, by_step[step], {"policy/kl_ref": kl[step]})
        return g.history


def per_eval_decisions(evals: list[dict], limits, z: float = 2.0) -> tuple[int | None, int]:
    """The guard's win-rate rule and shipping criterion before 2026-12-02, for comparison on the same
    evidence: stop when an eval's own win rate fell below the best eval's by more than z pooled
    standard errors (step 0's 0.5 exact); ship the eval with the highest own win rate (the earliest
    on a tie) among those up to the stop; the other stop rules as the run's. -> (stop, shipped)."""
    from dataclasses import replace

    from rlhfkit.guard_rules import STOP_RULES, pooled_se

    seen: list[dict] = []
    for e in evals:
        seen.append(e)
        labelled = [h for h in seen[1:] if h["labels"]]
        fired = any(STOP_RULES[r](seen, replace(limits, win_drop=0)) for r in STOP_RULES if r != "win_rate")
        if labelled and labelled[-1] is e:
            best = max([seen[0]] + labelled[:-1], key=lambda h: h["win_rate"])
            n_best = math.inf if best is seen[0] else best["labels"]
            fired |= best["win_rate"] - e["win_rate"] > z * pooled_se(best["win_rate"], n_best, e["win_rate"], e["labels"])
        if fired:
            break
    scored = [seen[0]] + [h for h in (seen[1:-1] if fired else seen[1:]) if h["labels"]]
    return (seen[-1]["step"] if fired else None), max(scored, key=lambda h: (h["win_rate"], -h["step"]))["step"]


def summarise(run: Path, every: int = 5, spot_checks: int | None = None, size: int | None = None, rep: int = 0) -> dict:
    """One run's row; every > 5 or spot_checks < 12: the guard's decisions replayed on that evidence;
    size: on fresh spot checks of that many responses (`reask`)."""
    from rlhfkit.guard_rules import Limits, replay

    gj = json.loads((run / "ppo" / "guard.json").read_text())
    golds: dict[int, list[float]] = defaultdict(list)
    for line in (run / "ppo" / "samples.jsonl").read_text().splitlines():
        s = json.loads(line)
        golds[s["step"]].append(s["gold"])
    gold = {k: statistics.fmean(v) for k, v in golds.items() if k % every == 0}
    evals = [e for e in gj["evals"] if e["step"] % every == 0]
    if size is not None:
        evals = reask(run, every, spot_checks, size, rep)
    elif spot_checks is not None:
        evals = spot_subsample(run, evals, spot_checks)
    # replay() re-decides exactly what an observe run decided when given its own evals and the same
    # rules (the evidence does not depend on them); a run made under older rules is re-decided by these
    stop, reason, shipped = replay(evals, Limits(**gj["rules"]), gj.get("keep", 3))
    if every == 5 and spot_checks is None and size is None and (stop, shipped) != (gj["stop_step"], gj["shipped_step"]):
        print(f"{run.name}: replayed with the current rules: stop {stop}, ship {shipped} (the run itself, under "
              f"the rules it started with: stop {gj['stop_step']}, ship {gj['shipped_step']})")
    old_stop, old_shipped = per_eval_decisions(evals, Limits(**gj["rules"]))
    last = stop if stop is not None else evals[-1]["step"]
    used = sum(e["labels"] for e in evals if e["step"] <= last)
    start, best = gold[0], max(gold.values())
    trained = rankings_trained_on(run)
    return {"run": run.name, "eval_every": every, "spot_checks": spot_checks or gj["spot_checks_per_eval"],
            "spot_check_size": size or 2, "labeler_stream": rep if size is not None else None,
            "stop_step": stop, "reason": reason, "shipped_step": shipped,
            "gold_start": start, "gold_best": best, "gold_best_step": max(gold, key=gold.get),
            "gold_shipped": gold[shipped], "regret": (best - gold[shipped]) / (best - start) if best > start else None,
            "labels_used": used, "rm_rankings": trained, "labels_frac": used / trained,
            "per_eval_stop_step": old_stop, "per_eval_shipped_step": old_shipped,
            "per_eval_regret": (best - gold[old_shipped]) / (best - start) if best > start else None,
            "rm_heldout_accuracy": json.loads((run / "rm" / "eval.json").read_text())["metrics"]["rm/accuracy"],
            "gold_by_step": gold, "proxy_by_step": {e["step"]: e["proxy"] for e in evals},
            "kl_by_step": {e["step"]: e["kl"] for e in evals},
            "win_by_step": {e["step"]: e["win_rate"] for e in evals}}


def table(rows: list[dict]) -> str:
    def f(x, fmt="{:.3f}"):
        return "-" if x is None else fmt.format(x)
    out = [(f"{'run':<12} {'stop':>4} {'ship':>4} {'g_start':>7} {'g_best':>6}@{'st':<2} {'g_ship':>6} "
            f"{'regret':>6} {'labels':>6} {'RM rk':>5} {'frac':>5} {'RMacc':>5}  per-eval rule: stop ship regret")]
    for r in rows:
        out.append(f"{r['run']:<12} {f(r['stop_step'], '{}'):>4} {r['shipped_step']:>4} {r['gold_start']:7.3f} "
                   f"{r['gold_best']:6.3f}@{r['gold_best_step']:<2} {r['gold_shipped']:6.3f} "
                   f"{f(r['regret'], '{:.2f}'):>6} {r['labels_used']:>6} {r['rm_rankings']:>5} "
                   f"{r['labels_frac']:5.2f} {r['rm_heldout_accuracy']:5.2f}  {f(r['per_eval_stop_step'], '{}'):>19} "
                   f"{r['per_eval_shipped_step']:>4} {f(r['per_eval_regret'], '{:.2f}'):>6}")
    regs = [r["regret"] for r in rows if r["regret"] is not None]
    olds = [r["per_eval_regret"] for r in rows if r["per_eval_regret"] is not None]
    if regs:
        out.append(f"mean regret {statistics.fmean(regs):.3f}, worst {max(regs):.3f} ({len(regs)} runs; the per-eval "
                   f"rule: {statistics.fmean(olds):.3f}, {max(olds):.3f}); "
                   f"labels/RM rankings mean {statistics.fmean(r['labels_frac'] for r in rows):.3f}, "
                   f"max {max(r['labels_frac'] for r in rows):.3f}")
    return "\n".join(out)


def plot(run: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summarise(run)
    steps = sorted(s["gold_by_step"])
    gold = [s["gold_by_step"][k] for k in steps]
    proxy = [s["proxy_by_step"][k] for k in steps]
    kl = [s["kl_by_step"][k] for k in steps]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    for ax, x, label in ((axes[0], steps, "PPO step"), (axes[1], kl, "KL to the SFT model (that step's rollout)")):
        ax.plot(x, gold, "o-", color="C0", label="gold (the person)")
        ax.set_xlabel(label)
        ax.set_ylabel("gold mean", color="C0")
        ax2 = ax.twinx()
        ax2.plot(x, proxy, "s--", color="C3", label="proxy (reward model)")
        ax2.set_ylabel("proxy mean", color="C3")
        for axis in (ax, ax2):
            xs = s["shipped_step"] if ax is axes[0] else s["kl_by_step"][s["shipped_step"]]
            axis.axvline(xs, color="C2", lw=1, ls=":")
        if s["stop_step"] is not None:
            ax.axvline(s["stop_step"] if ax is axes[0] else s["kl_by_step"][s["stop_step"]], color="k", lw=1, ls=":")
    axes[0].set_title(f"{run.name}: guard (observe) stop {s['stop_step']} (black), ship {s['shipped_step']} (green)",
                      fontsize=8)
    axes[1].set_title("gold and proxy vs KL", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def spread(base: Path, work: Path) -> dict:
    """Each gold over the SFT samples of BASE's feedback store (else the joke-s0 run's: the same
    SFT model, 4 samples per prompt): do rankings carry signal?"""
    from rlhfkit.feedback.labelers import load_gold

    db = next((d for d in (base / "feedback" / "feedback.db", work / "joke-s0" / "feedback" / "feedback.db")
               if d.is_file()), None)
    if db is None:
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = list(con.execute("select p.text, r.text, r.prompt_id from responses r join prompts p on p.id = r.prompt_id"))
    out = {}
    for name, spec in GOLDS.items():
        fn = load_gold(spec)
        by: dict[int, list[float]] = defaultdict(list)
        for prompt, response, pid in rows:
            by[pid].append(fn(prompt, response))
        flat = [x for v in by.values() for x in v]
        out[name] = {"mean": statistics.fmean(flat), "std": statistics.pstdev(flat),
                     "within_prompt_std": statistics.fmean(statistics.pstdev(v) for v in by.values()),
                     "all_tied_prompts": sum(len(set(v)) == 1 for v in by.values()) / len(by)}
        print(f"spread {name:<9} " + " ".join(f"{k} {v:.3f}" for k, v in out[name].items()))
    return out


def combine(paths: list[Path]) -> None:
    """One table over several results files (e.g. the standard, hot and ensemble sets): per view, the
    mean regret over every run and stream, each stream's worst run (the figure a study of all those
    runs would report), and how often regret passed 0.25."""
    results = [json.loads(p.read_text()) for p in paths]
    print(f"{'view':<92} {'mean':>5} {'worst/stream: mean':>18} {'max':>5} {'>0.25':>7}")
    for key, view in results[0].items():
        if not isinstance(view, dict) or "rows" not in view:
            continue
        views = [r[key] for r in results if key in r]
        if "streams" in view:
            per_stream = list(zip(*(v["streams"]["regret"] for v in views)))  # stream -> runs of each file
            regs = [[x for runs in stream for x in runs if x is not None] for stream in per_stream]
        else:
            regs = [[r["regret"] for v in views for r in v["rows"] if r["regret"] is not None]]
        flat = [x for rs in regs for x in rs]
        worst = [max(rs) for rs in regs]
        print(f"{view['what']:<92} {statistics.fmean(flat):5.3f} {statistics.fmean(worst):18.2f} {max(worst):5.2f} "
              f"{sum(x > 0.25 for x in flat):>3}/{len(flat):<3}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", type=Path, default=Path("runs/demo"), help="a finished `rlhfkit demo` run (its sft/)")
    p.add_argument("--work", type=Path, default=Path("runs/regret"), help="where the runs go")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--only", nargs="*", help="run names (e.g. joke-s0) to run; default all")
    p.add_argument("--table-only", action="store_true", help="no runs: the table from what exists")
    p.add_argument("--set", action="append", default=[], metavar="STEP.KEY=V",
                   help="more recipe keys for every run (e.g. ppo.learning_rate=6e-5 for a hotter PPO)")
    p.add_argument("--plot-run", default="punchy-s0")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--name", default="", help="results as regretNAME.json / .png (e.g. _hot)")
    p.add_argument("--reps", type=int, default=8, help="streams of the person's noise for the re-asked views")
    p.add_argument("--combine", nargs="+", type=Path, metavar="JSON",
                   help="no runs: one table over these results files")
    a = p.parse_args()
    if a.combine:
        combine(a.combine)
        return
    a.work = a.work.resolve()
    a.work.mkdir(parents=True, exist_ok=True)
    todo = [(n, s) for s in SEEDS for n in GOLDS if (a.only is None or f"{n}-s{s}" in a.only)]
    todo = [(n, s) for n, s in todo if not finished(a.work / f"{n}-s{s}")]
    if not a.table_only and todo:
        recipe = trimmed_recipe(a.work)
        running: list[tuple[str, float, subprocess.Popen]] = []
        walls = {}
        while todo or running:
            while todo and len(running) < a.jobs:
                n, s = todo.pop(0)
                running.append((f"{n}-s{s}", time.time(), start_run(a.base.resolve(), a.work, recipe, n, s, a.set)))
            time.sleep(5)
            for item in list(running):
                if item[2].poll() is not None:
                    running.remove(item)
                    walls[item[0]] = time.time() - item[1]
                    print(f"done {item[0]}: rc {item[2].returncode}, {walls[item[0]]:.0f} s", flush=True)
                    old = json.loads((a.work / "walls.json").read_text()) if (a.work / "walls.json").is_file() else {}
                    (a.work / "walls.json").write_text(json.dumps({**old, **walls}, indent=1))
    done = [(n, s) for s in SEEDS for n in GOLDS if finished(a.work / f"{n}-s{s}")]
    sys.path.insert(0, str(HERE))
    result = {"settings": SETS + a.set, "golds": GOLDS, "spot_checks_per_eval": 12, "spread_over_sft_samples": spread(a.base, a.work),
              "date": time.strftime("%Y-%m-%d")}
    walls_path = a.work / "walls.json"
    result["wall_s"] = json.loads(walls_path.read_text()) if walls_path.is_file() else {}
    for every, k, size, what in VIEWS:
        reps = a.reps if size is not None else 1
        by_rep = [[summarise(a.work / f"{n}-s{s}", every, k, size, rep) for n, s in done] for rep in range(reps)]
        print(f"\n== {what}" + (f" (stream 0 of {reps}; all streams below)" if reps > 1 else ""))
        print(table(by_rep[0]))
        view = {"what": what, "rows": by_rep[0]}
        if reps > 1:
            regs = [[r["regret"] for r in rows if r["regret"] is not None] for rows in by_rep]
            flat = [x for rs in regs for x in rs]
            view["streams"] = {"regret": [[r["regret"] for r in rows] for rows in by_rep],
                               "stop_step": [[r["stop_step"] for r in rows] for rows in by_rep],
                               "shipped_step": [[r["shipped_step"] for r in rows] for rows in by_rep],
                               "mean_regret": statistics.fmean(flat), "worst_per_stream": [max(rs) for rs in regs],
                               "share_above_0.25": sum(x > 0.25 for x in flat) / len(flat)}
            print(f"over {reps} streams x {len(done)} runs: mean regret {statistics.fmean(flat):.3f}, worst per stream "
                  f"{' '.join(f'{max(rs):.2f}' for rs in regs)} (mean {statistics.fmean(max(rs) for rs in regs):.2f}), "
                  f"regret > 0.25 in {sum(x > 0.25 for x in flat)} of {len(flat)}")
        result[f"every{every}_checks{k or 12}" + (f"_size{size}" if size else "")] = view
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"regret{a.name}.json").write_text(json.dumps(result, indent=1))
    if finished(a.work / a.plot_run):
        plot(a.work / a.plot_run, a.out / f"regret{a.name}.png")
        print(f"plot: {a.out / f'regret{a.name}.png'}")


if __name__ == "__main__":
    main()
