"""Evaluate a reward model (or an ensemble) on held-out rankings.

    rlhfkit eval-reward runs/demo/rm --data runs/demo            # a run's feedback store
    rlhfkit eval-reward runs/demo/rm --data hh-test.jsonl.gz     # any file the importers read

Prints the pairwise accuracy and writes into `--out` (default MODEL-eval-<data name>/ beside the
model, never inside it: a model dir holds only the model):
`eval.json` (every metric, the calibration bins, a score histogram), `metrics.jsonl` (one
line of `rm/...` keys) and `calibration.png` (reliability diagram + score distributions).

Metrics, over the pairs every ranking implies (best-first ranking of K: K(K-1)/2 pairs,
each pair weighs the same; ties and rankings with fewer than 2 responses carry no pairs):
- rm/accuracy: share of pairs where the preferred response scores strictly higher;
- rm/accuracy_pos_i: adjacent positions only, i-th vs (i+1)-th (pos_1 = best vs second);
- rm/top1_accuracy: the best response scores strictly above all the others of its ranking;
- rm/ece: expected calibration error of P(a > b) = sigmoid(r_a - r_b), the Bradley-Terry
  probability the model was trained to output. Each pair counts in both orders, (p, 1) and
  (1 - p, 0), so the outcomes are not all 1; 10 equal-width bins (Guo et al. 2017);
- rm/score_*: mean, std, quantiles of all scores; rm/best_mean, rm/worst_mean;
- rm/ensemble_std_mean: mean disagreement of the members (ensembles only).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhfkit.files import UserError, atomic_write_text


def pair_diffs(scores: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per ranking scores (best first) -> (diffs (P,) = s_i - s_j for every i < j, pos_i (P,), pos_j (P,))."""
    diffs, pi, pj = [], [], []
    for s in scores:
        i, j = torch.triu_indices(len(s), len(s), 1)
        diffs.append(s[i] - s[j])
        pi.append(i)
        pj.append(j)
    return torch.cat(diffs), torch.cat(pi), torch.cat(pj)


def calibration(diffs: torch.Tensor, n_bins: int = 10) -> tuple[float, list[dict]]:
    """ECE of p = sigmoid(diff) for pairs whose first member is the preferred one.

    diffs: (P,) r_preferred - r_other. Both orders count: (p, outcome 1) and (1 - p, outcome 0).
    -> (ece = sum_b n_b / N * |mean p_b - mean outcome_b|, bins [{lo, hi, n, p_mean, frac}]).
    """
    p = torch.sigmoid(diffs.double())
    probs = torch.cat([p, 1 - p])
    outcome = torch.cat([torch.ones_like(p), torch.zeros_like(p)])
    b = torch.clamp((probs * n_bins).long(), max=n_bins - 1)
    ece, bins = 0.0, []
    for k in range(n_bins):
        sel = b == k
        n = int(sel.sum())
        if n:
            pm, fr = float(probs[sel].mean()), float(outcome[sel].mean())
            ece += n / len(probs) * abs(pm - fr)
            bins.append({"lo": k / n_bins, "hi": (k + 1) / n_bins, "n": n, "p_mean": pm, "frac": fr})
    return ece, bins


def ranking_metrics(scores: list[torch.Tensor], stds: list[torch.Tensor] | None = None,
                    logits: list[torch.Tensor] | None = None) -> tuple[dict, dict]:
    """Scores per ranking (each (K,), best first) -> (rm/ metrics, details for eval.json).
    `logits`: the same on the trained scale, for calibration (default: the scores)."""
    if not scores or min(len(s) for s in scores) < 2:
        raise UserError("every ranking to evaluate needs 2 or more responses")
    scores = [s.float() for s in scores]
    diffs, pi, pj = pair_diffs(scores)
    m = {"rm/accuracy": float((diffs > 0).float().mean()), "rm/pairs": len(diffs), "rm/rankings": len(scores)}
    for k in range(int(max(len(s) for s in scores)) - 1):
        sel = (pi == k) & (pj == k + 1)
        m[f"rm/accuracy_pos_{k + 1}"] = float((diffs[sel] > 0).float().mean())
    m["rm/top1_accuracy"] = sum(float(s[0] > s[1:].max()) for s in scores) / len(scores)
    ece, bins = calibration(pair_diffs(logits)[0] if logits is not None else diffs)
    m["rm/ece"] = ece
    m["rm/margin_mean"] = float(diffs.mean())
    flat = torch.cat(scores)
    q = torch.quantile(flat, torch.tensor([0.05, 0.5, 0.95]))
    m.update({"rm/score_mean": float(flat.mean()), "rm/score_std": float(flat.std(correction=0)),
              "rm/score_p05": float(q[0]), "rm/score_p50": float(q[1]), "rm/score_p95": float(q[2]),
              "rm/best_mean": float(torch.stack([s[0] for s in scores]).mean()),
              "rm/worst_mean": float(torch.stack([s[-1] for s in scores]).mean())})
    if stds is not None:
        m["rm/ensemble_std_mean"] = float(torch.cat(stds).mean())
    hist_lo, hist_hi = float(flat.min()), float(flat.max()) + 1e-6
    counts = torch.histc(flat, bins=20, min=hist_lo, max=hist_hi)
    details = {"calibration_bins": bins, "histogram": {"lo": hist_lo, "hi": hist_hi, "counts": counts.int().tolist()}}
    return m, details


def score_rankings(scorer, rankings: list[dict], batch_size: int = 32) -> dict[str, list[torch.Tensor]]:
    """Score every response of every ranking -> per ranking: "mean", "std" (members), "logits".

    "logits" are the scores on the scale the model was trained on (normalisation undone, the
    members' mean): sigmoid of their difference is the model's Bradley-Terry probability, which
    is what calibration measures (dividing by the normalisation std would change it)."""
    prompts = [r["messages"] for r in rankings for _ in r["responses"]]
    responses = [t for r in rankings for t in r["responses"]]
    s = scorer.member_scores(prompts, responses, batch_size)
    std = s.std(0, correction=1) if len(scorer) > 1 else torch.zeros(s.shape[1])
    sizes = [len(r["responses"]) for r in rankings]
    return {"mean": list(s.mean(0).split(sizes)), "std": list(std.split(sizes)),
            "logits": list(scorer.raw(s).mean(0).split(sizes))}


def plot(scores: list[torch.Tensor], bins: list[dict], path: Path, title: str = "") -> None:
    """Reliability diagram and the score distributions of best / other responses, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect")
    a.plot([x["p_mean"] for x in bins], [x["frac"] for x in bins], "o-", label="reward model")
    a.set(xlabel="predicted P(a preferred) = sigmoid(r_a - r_b)", ylabel="observed frequency",
          title="calibration", xlim=(0, 1), ylim=(0, 1))
    a.legend()
    best = torch.stack([s[0] for s in scores]).numpy()
    rest = torch.cat([s[1:] for s in scores]).numpy()
    b.hist([best, rest], bins=30, label=["best of ranking", "others"], alpha=0.7, histtype="stepfilled")
    b.set(xlabel="score", ylabel="responses", title="score distribution")
    b.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def evaluate_reward_model(scorer, rankings: list[dict], out: Path | None = None, batch_size: int = 32, title: str = "",
             extra: dict | None = None) -> dict:
    """Score, compute metrics; with `out`, write eval.json and calibration.png there. -> metrics."""
    s = score_rankings(scorer, rankings, batch_size)
    means = s["mean"]
    metrics, details = ranking_metrics(means, s["std"] if len(scorer) > 1 else None, s["logits"])
    if out is not None:
        out = Path(out)
        atomic_write_text(out / "eval.json", json.dumps({"metrics": metrics, **details, **(extra or {})}, indent=1))
        plot(means, details["calibration_bins"], out / "calibration.png", title)
    return metrics


def summary(m: dict) -> str:
    return (f"accuracy {m['rm/accuracy']:.3f} on {m['rm/pairs']} pairs ({m['rm/rankings']} rankings), "
            f"top-1 {m['rm/top1_accuracy']:.3f}, ECE {m['rm/ece']:.3f}")


def cli(name: str, argv: list[str]) -> int:
    import argparse

    from rlhfkit.rankings import load_rankings, usable
    from rlhfkit.rewards.rm import RewardScorer

    p = argparse.ArgumentParser(prog=f"rlhfkit {name}", description=__doc__.strip().split("\n")[0])
    p.add_argument("model", help="reward model dir or ensemble dir (written by `rlhfkit reward`)")
    p.add_argument("--data", required=True,
                   help="a run dir with feedback.db, or a preference file (rlhfkit/hh/trl/oasst)")
    p.add_argument("--db", default="", help="feedback store URL (instead of RUN/feedback.db)")
    p.add_argument("--format", default="auto", help="preference file format: auto, rlhfkit, hh, trl, oasst")
    p.add_argument("--source", default="", help="only store rankings from this source (human, simulated, ...)")
    p.add_argument("--limit", type=int, default=0, help="evaluate the first N rankings only (0: all)")
    p.add_argument("--out", default="", help="output dir (default MODEL-eval-<data name>, beside the model)")
    p.add_argument("--batch-size", type=int, default=32)
    a = p.parse_args(argv)
    model = Path(a.model.rstrip("/"))
    stem = Path(a.data.rstrip("/")).name.split(".")[0] or "data"
    out = Path(a.out) if a.out else model.parent / f"{model.name}-eval-{stem}"
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory (--out must be a directory)")
    rankings = usable(load_rankings(a.data, a.db, a.format, a.source or None), skip_all_bad=False)
    if a.limit:
        rankings = rankings[:a.limit]
    scorer = RewardScorer.load(a.model)
    metrics = evaluate_reward_model(scorer, rankings, out, a.batch_size, title=f"{a.model} on {a.data}",
                                    extra={"model": a.model, "data": a.data})
    atomic_write_text(out / "metrics.jsonl", json.dumps({"step": 0, **metrics}) + "\n")
    print(f"eval-reward: {summary(metrics)} -> {out}")
    return 0
