"""What the feedback says: counts, throughput, inter-annotator agreement, checkpoint ratings.

Agreement is measured on tasks ranked by two or more annotators (overlap >= 2). A ranking is
seen as its pairwise preferences: for items x, y, sign(x over y) is +1, -1, or 0 for a tie.
For two rankings a, b of the same n items (all n(n-1)/2 pairs):

    pairwise agreement = #pairs with equal signs / #pairs
    Kendall's tau-a    = sum(sign_a * sign_b) / #pairs = (concordant - discordant) / #pairs

(for full rankings without ties, agreement = (tau + 1) / 2). Both are averaged over every
(task, annotator pair).

Arena votes rate checkpoints with a Bradley-Terry model, P(i beats j) = p_i / (p_i + p_j),
fitted by Hunter's MM algorithm (Hunter 2004, "MM algorithms for generalized Bradley-Terry
models"): p_i <- W_i / sum_j n_ij / (p_i + p_j), where W_i counts i's wins (a tie is half a win
each) and n_ij the games between i and j. Ratings are on the Elo scale, 400 log10(p_i) + 1000
with the geometric mean of p at 1; bootstrap over votes gives 95% intervals.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from itertools import combinations
from typing import Callable


def _signs(order: list, tie: bool = False) -> dict[tuple, int]:
    """{(x, y): +1 if x is ranked above y, -1 if below, 0 for a tie} with x < y by sort order."""
    pos = {item: i for i, item in enumerate(order)}
    return {(x, y): 0 if tie else (1 if pos[x] < pos[y] else -1)
            for x, y in combinations(sorted(order, key=repr), 2)}


def kendall_tau(a: list, b: list, tie_a: bool = False, tie_b: bool = False) -> float:
    """Kendall's tau-a between two best-first orders of the same items: in [-1, 1]."""
    if sorted(a, key=repr) != sorted(b, key=repr):
        raise ValueError(f"the orders rank different items: {a} vs {b}")
    sa, sb = _signs(a, tie_a), _signs(b, tie_b)
    return sum(sa[p] * sb[p] for p in sa) / len(sa)


def pairwise_agreement(a: list, b: list, tie_a: bool = False, tie_b: bool = False) -> float:
    """Fraction of item pairs two best-first orders put the same way round (ties must match ties)."""
    if sorted(a, key=repr) != sorted(b, key=repr):
        raise ValueError(f"the orders rank different items: {a} vs {b}")
    sa, sb = _signs(a, tie_a), _signs(b, tie_b)
    return sum(sa[p] == sb[p] for p in sa) / len(sa)


def agreement(rankings: list[dict]) -> dict:
    """Mean pairwise agreement and Kendall's tau over tasks with >= 2 rankings, overall and per annotator pair."""
    by_task: dict[int, list[dict]] = defaultdict(list)
    for r in rankings:
        by_task[r["task_id"]].append(r)
    agree, taus = [], []
    per_pair: dict[str, list[float]] = defaultdict(list)
    n_tasks = 0
    for rs in by_task.values():
        if len(rs) < 2:
            continue
        n_tasks += 1
        for a, b in combinations(sorted(rs, key=lambda r: r["annotator"]), 2):
            ids_a, ids_b = a["response_ids"], b["response_ids"]
            agree.append(pairwise_agreement(ids_a, ids_b, a["tie"], b["tie"]))
            taus.append(kendall_tau(ids_a, ids_b, a["tie"], b["tie"]))
            per_pair[f"{a['annotator']}~{b['annotator']}"].append(taus[-1])
    return {
        "tasks": n_tasks, "comparisons": len(taus),
        "pairwise_agreement": statistics.fmean(agree) if agree else None,
        "kendall_tau": statistics.fmean(taus) if taus else None,
        "kendall_tau_per_pair": {k: statistics.fmean(v) for k, v in sorted(per_pair.items())},
    }


def gold_agreement(rankings: list[dict], gold: Callable[[str, str], float]) -> dict[str, float]:
    """Mean Kendall's tau between each annotator's rankings and the gold order (known only in simulation)."""
    per: dict[str, list[float]] = defaultdict(list)
    for r in rankings:
        if r["tie"]:
            continue
        scores = {i: float(gold(r["prompt"], t)) for i, t in zip(r["response_ids"], r["responses"])}
        ids = r["response_ids"]
        # gold signs directly from scores, so equal gold scores count as gold ties (0)
        s_gold = {(x, y): (scores[x] > scores[y]) - (scores[x] < scores[y])
                  for x, y in combinations(sorted(ids, key=repr), 2)}
        s_ann = _signs(ids)
        per[r["annotator"]].append(sum(s_gold[p] * s_ann[p] for p in s_ann) / len(s_ann))
    return {a: statistics.fmean(v) for a, v in sorted(per.items())}


def throughput(rankings: list[dict]) -> dict[str, dict]:
    """Per annotator: rankings, all-bad flags, ties, median seconds per ranking, rankings per hour of labelling."""
    per: dict[str, list[dict]] = defaultdict(list)
    for r in rankings:
        per[r["annotator"]].append(r)
    out = {}
    for name, rs in sorted(per.items()):
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        out[name] = {
            "rankings": len(rs), "all_bad": sum(r["all_bad"] for r in rs), "ties": sum(r["tie"] for r in rs),
            "sources": sorted({r["source"] for r in rs}),
            "median_seconds": statistics.median(secs) if secs else None,
            "per_hour": 3600 * len(secs) / sum(secs) if secs and sum(secs) > 0 else None,
        }
    return out


# ------------------------------------------------------------------------------ Bradley-Terry

def bradley_terry(games: list[tuple[str, str, bool]], prior: float = 0.1, iters: int = 10000,
                  tol: float = 1e-10) -> dict[str, float]:
    """Bradley-Terry strengths from (winner, loser, tie) games, on the Elo scale (mean 1000).

    `prior` adds that many pseudo-ties between every pair of players: it keeps a player who
    never won (or never lost) at a finite rating and links players who never met. prior=0
    is the plain maximum-likelihood fit."""
    players = sorted({p for g in games for p in g[:2]})
    if len(players) < 2:
        return {p: 1000.0 for p in players}
    idx = {p: i for i, p in enumerate(players)}
    n = len(players)
    wins = [[prior / 2 if i != j else 0.0 for j in range(n)] for i in range(n)]  # wins[i][j]: i over j
    for winner, loser, tie in games:
        i, j = idx[winner], idx[loser]
        if tie:
            wins[i][j] += 0.5
            wins[j][i] += 0.5
        else:
            wins[i][j] += 1.0
    w = [sum(row) for row in wins]
    games_between = [[wins[i][j] + wins[j][i] for j in range(n)] for i in range(n)]
    p = [1.0] * n
    for _ in range(iters):
        new = []
        for i in range(n):
            denom = sum(games_between[i][j] / (p[i] + p[j]) for j in range(n) if j != i and games_between[i][j])
            new.append(w[i] / denom if denom > 0 else p[i])
        # only ratios are identified: fix the geometric mean at 1 (mean rating 1000)
        g = math.exp(statistics.fmean(math.log(max(x, 1e-300)) for x in new))
        new = [x / g for x in new]
        done = max(abs(a - b) for a, b in zip(new, p)) < tol
        p = new
        if done:
            break
    return {pl: 1000.0 + 400.0 * math.log10(max(p[idx[pl]], 1e-300)) for pl in players}


def arena_ratings(rankings: list[dict], bootstrap: int = 200, seed: int = 0, prior: float = 0.1) -> dict:
    """Checkpoint ratings from arena votes, with 95% bootstrap intervals: {model: {rating, low, high, games}}."""
    games = []
    for r in rankings:
        if r["kind"] != "arena" or len(r.get("models", [])) != 2 or r["models"][0] == r["models"][1]:
            continue
        games.append((r["models"][0], r["models"][1], bool(r["tie"])))
    if not games:
        return {}
    fit = bradley_terry(games, prior)
    count: dict[str, int] = defaultdict(int)
    for a, b, _ in games:
        count[a] += 1
        count[b] += 1
    rng = random.Random(seed)
    samples: dict[str, list[float]] = defaultdict(list)
    for _ in range(bootstrap):
        resampled = [games[rng.randrange(len(games))] for _ in games]
        for pl, rating in bradley_terry(resampled, prior, iters=2000, tol=1e-8).items():
            samples[pl].append(rating)
    out = {}
    for pl, rating in sorted(fit.items(), key=lambda kv: -kv[1]):
        s = sorted(samples[pl])  # a player can be missing from a resample: it has fewer samples
        lo, hi = (s[int(0.025 * (len(s) - 1))], s[int(math.ceil(0.975 * (len(s) - 1)))]) if s else (None, None)
        out[pl] = {"rating": rating, "low": lo, "high": hi, "games": count[pl]}
    return out


# ------------------------------------------------------------------------------ all of it

def feedback_stats(store, gold: Callable[[str, str], float] | None = None, bootstrap: int = 200) -> dict:
    rankings = store.rankings()
    out = {"counts": store.counts(), "annotators": throughput(rankings), "agreement": agreement(rankings),
           "arena": arena_ratings(rankings, bootstrap=bootstrap)}
    if gold is not None:
        out["gold_kendall_tau"] = gold_agreement(rankings, gold)
    return out


def _f(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def format_stats(s: dict) -> str:
    c = s["counts"]
    lines = [
        f"prompts {c['prompts']}  responses {c['responses']}  tasks {c['tasks']} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(c['tasks_by_kind'].items())) or 'none'}; "
        f"{c['tasks_complete']} complete)  skips {c['skips']}",
        f"rankings {c['rankings']} "
        f"({', '.join(f'{k} {v}' for k, v in sorted(c['rankings_by_source'].items())) or 'none'})"
        f"  all-bad {c['all_bad']}",
        "",
        f"{'annotator':<20} {'rankings':>8} {'all_bad':>7} {'median_s':>8} {'per_hour':>8}"
        + ("  gold_tau" if "gold_kendall_tau" in s else ""),
    ]
    for name, a in s["annotators"].items():
        gold = f"  {_f(s['gold_kendall_tau'].get(name)):>8}" if "gold_kendall_tau" in s else ""
        lines.append(f"{name[:20]:<20} {a['rankings']:>8} {a['all_bad']:>7} {_f(a['median_seconds'], '{:.1f}'):>8} "
                     f"{_f(a['per_hour'], '{:.0f}'):>8}{gold}")
    ag = s["agreement"]
    lines += ["", f"agreement on {ag['tasks']} overlapping tasks ({ag['comparisons']} task x annotator-pair "
                  f"comparisons): pairwise {_f(ag['pairwise_agreement'])}  Kendall tau {_f(ag['kendall_tau'])}"]
    for pair, tau in ag["kendall_tau_per_pair"].items():
        lines.append(f"  {pair}: tau {tau:.3f}")
    if s["arena"]:
        lines += ["", f"{'checkpoint':<40} {'rating':>7} {'95% CI':>15} {'games':>6}"]
        for model, r in s["arena"].items():
            ci = f"{_f(r['low'], '{:.0f}')}..{_f(r['high'], '{:.0f}')}"
            lines.append(f"{model[-40:]:<40} {r['rating']:>7.0f} {ci:>15} {r['games']:>6}")
    return "\n".join(lines)
