"""The report's figures: each function takes metric rows or small dicts and returns PNG bytes (or None).

A row is one line of a stage's metrics.jsonl (`{"step": int, "train/loss": float, ...}`); a series
is the (step, value) pairs of the rows that hold a key. matplotlib loads inside the functions (Agg,
no display), so importing this module costs nothing; every axis has a label and every figure a title.
"""

from __future__ import annotations

import io
import math

# one colour per meaning, the same in every figure
C = {"train": "#1f77b4", "eval": "#ff7f0e", "proxy": "#1f77b4", "gold": "#2ca02c", "kl": "#9467bd",
     "entropy": "#8c564b", "length": "#7f7f7f", "ship": "#2ca02c", "stop": "#d62728", "peak": "#bcbd22",
     "fit": "#17becf"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    _plt().close(fig)
    return buf.getvalue()


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that log `key` as a finite number; a step logged twice keeps its last value."""
    by_step = {r["step"]: r[key] for r in rows if number(r.get(key)) and number(r.get("step"))}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _line(ax, rows, key, label, color, marker=None) -> bool:
    xs, ys = series(rows, key)
    if not xs:
        return False
    ax.plot(xs, ys, marker=marker or ("o" if len(xs) < 40 else None), ms=4, lw=1.5, label=label, color=color)
    return True


def _empty(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"{what}\nnot logged", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _marks(ax, marks: dict) -> None:
    """Vertical lines at the guard's stop and the shipped step: {"shipped": step, "stop": step, "peak": step}."""
    styles = {"shipped": ("shipped", C["ship"], "-"), "stop": ("guard stop", C["stop"], "--"),
              "peak": ("gold peak", C["peak"], ":")}
    for name, (label, color, ls) in styles.items():
        if number(marks.get(name)):
            ax.axvline(marks[name], color=color, ls=ls, lw=1.5, label=f"{label} (step {marks[name]:g})")


def loss_curves(rows: list[dict], title: str) -> bytes | None:
    """Training and held-out loss against the optimizer step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    got = [_line(ax, rows, "train/loss", "train", C["train"]), _line(ax, rows, "eval/loss", "held-out", C["eval"])]
    if not any(got):
        plt.close(fig)
        return None
    ax.set(xlabel="optimizer step", ylabel="loss (nats / token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def reward_model(rows: list[dict], bins: list[dict], title: str) -> bytes | None:
    """Left: training accuracy (pairs ordered right) and the held-out accuracy; right: the reliability diagram."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    ok_a = _line(a, rows, "train/accuracy", "train (batch)", C["train"])
    xs, ys = series(rows, "rm/accuracy")
    if xs:
        a.plot(xs, ys, "s", ms=8, color=C["eval"], label=f"held-out ({ys[-1]:.3f})")
    if ok_a or xs:
        a.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
        a.set(xlabel="optimizer step", ylabel="pairwise accuracy", title="reward model accuracy", ylim=(0, 1))
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    else:
        _empty(a, "accuracy")
    if bins:
        b.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
        b.plot([x["p_mean"] for x in bins], [x["frac"] for x in bins], "o-", color=C["train"], label="reward model")
        b.set(xlabel="predicted P(preferred) = sigmoid(r_a - r_b)", ylabel="observed frequency",
              title="calibration (held-out pairs)", xlim=(0, 1), ylim=(0, 1))
        b.grid(alpha=0.3)
        b.legend(fontsize=8)
    else:
        _empty(b, "calibration")
    if not (ok_a or xs or bins):
        plt.close(fig)
        return None
    fig.suptitle(title)
    return _png(fig)


RL_PANELS = [  # (title, y label, [(key, legend, colour)])
    ("proxy reward (reward model)", "reward", [("rollout/reward_mean", "rollout", C["proxy"]),
                                              ("eval/reward_mean", "held-out", C["eval"])]),
    ("the person's score (gold, never trained on)", "gold score", [("rollout/gold_mean", "rollout", C["gold"]),
                                                                    ("eval/gold_mean", "held-out", C["eval"])]),
    ("KL to the reference", "KL (nats / response)", [("policy/kl_ref", "policy/kl_ref", C["kl"])]),
    ("entropy", "nats / token", [("policy/entropy", "policy/entropy", C["entropy"])]),
    ("response length", "tokens", [("rollout/length_mean", "rollout", C["length"]),
                                   ("eval/length_mean", "held-out", C["eval"])]),
    ("guard signals", "rate / ratio", [("guard/win_rate", "spot-check win rate", C["gold"]),
                                       ("guard/win_fit", "win curve fitted to the checks so far", C["fit"]),
                                       ("guard/agreement", "RM-labeler agreement", C["proxy"]),
                                       ("guard/ensemble_std_rel", "ensemble disagreement (rel.)", C["stop"])]),
]


def rl_curves(rows: list[dict], marks: dict, title: str, verifier: bool = False) -> bytes | None:
    """The RL run in panels against the step, the guard's stop and the shipped step marked in each.

    With a learned reward every panel shows (an empty one says "not logged": gold needs `gold =`,
    the guard signals a guard); with a verifier only the logged ones, the reward titled as such."""
    panels = [(("reward (the verifier: share correct)" if verifier and i == 0 else name), ylabel, keys)
              for i, (name, ylabel, keys) in enumerate(RL_PANELS)]
    logged = [p for p in panels if any(series(rows, k)[0] for k, _, _ in p[2])]
    if not logged:
        return None
    if verifier:
        panels = logged
    plt = _plt()
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.7 * ncols, 3.5 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (name, ylabel, keys) in zip(axes.flat, panels):
        if not [_line(ax, rows, k, lab, col) for k, lab, col in keys if series(rows, k)[0]]:
            _empty(ax, name)
            ax.set_title(name)
            continue
        _marks(ax, marks)
        ax.set(xlabel="RL step", ylabel=ylabel, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _png(fig)


def gold_vs_kl(rows: list[dict], shipped: int | None, title: str) -> bytes | None:
    """Held-out gold and proxy against the KL to the reference at each eval (Gao et al. 2022's axes)."""
    evals = [r for r in rows if number(r.get("eval/gold_mean"))]
    if not evals:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.4))
    # the eval before the first update (step 0) logs no KL: the policy is the reference there
    kl = [r.get("policy/kl_ref") if number(r.get("policy/kl_ref")) else 0.0 for r in evals]
    ax.plot(kl, [r["eval/gold_mean"] for r in evals], "o-", color=C["gold"], label="gold (the person)")
    for x, r in zip(kl, evals):
        ax.annotate(f"{r['step']}", (x, r["eval/gold_mean"]), textcoords="offset points", xytext=(3, 4), fontsize=7)
        if r["step"] == shipped:
            ax.plot([x], [r["eval/gold_mean"]], "*", ms=16, color=C["ship"], label=f"shipped (step {shipped})")
    ax.set(xlabel="KL to the reference policy (nats / response)", ylabel="held-out gold score", title=title)
    ax.grid(alpha=0.3)
    proxy = [(x, r["eval/reward_mean"]) for x, r in zip(kl, evals) if number(r.get("eval/reward_mean"))]
    lines, labels = ax.get_legend_handles_labels()
    if proxy:
        ax2 = ax.twinx()
        ax2.plot(*zip(*proxy), "s--", color=C["proxy"], alpha=0.7, label="proxy (reward model)")
        ax2.set_ylabel("held-out proxy reward")
        l2, lab2 = ax2.get_legend_handles_labels()
        lines, labels = lines + l2, labels + lab2
    # below the axes: inside, it covers the peak the plot is about
    ax.legend(lines, labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    return _png(fig)


def accuracy(rows: list[dict], title: str) -> bytes | None:
    """Held-out verifiable accuracy and the training reward against the RL step."""
    xs, _ = series(rows, "eval/accuracy")
    if not xs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    _line(ax, rows, "eval/accuracy", "held-out accuracy", C["gold"])
    _line(ax, rows, "rollout/reward_mean", "rollout reward (share correct)", C["proxy"])
    ax.set(xlabel="RL step", ylabel="share of prompts answered correctly", title=title, ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def dpo_curves(rows: list[dict], title: str) -> bytes | None:
    """DPO loss and reward accuracy (implicit reward beta * logratio orders the pair right), train and held-out."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    got_a = [_line(a, rows, "dpo/loss", "train", C["train"]), _line(a, rows, "eval/loss", "held-out", C["eval"])]
    got_b = [_line(b, rows, "dpo/reward_accuracy", "train", C["train"]),
             _line(b, rows, "eval/reward_accuracy", "held-out", C["eval"])]
    if not any(got_a + got_b):
        plt.close(fig)
        return None
    a.set(xlabel="optimizer step", ylabel="DPO loss", title="loss")
    b.set(xlabel="optimizer step", ylabel="share of pairs ordered right", title="implicit reward accuracy",
          ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def win_rates(models: dict[str, dict], baseline: str, title: str) -> bytes | None:
    """Win rate over the baseline per model with its 95% bootstrap interval; 0.5 is a draw."""
    names = [m for m, v in models.items() if number(v.get("win_rate"))]
    if not names:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(names) + 1.6))
    ys = range(len(names))
    w = [models[m]["win_rate"] for m in names]
    ci = [models[m].get("win_rate_ci") or [v, v] for m, v in zip(names, w)]
    err = [[max(0.0, v - lo) for v, (lo, _) in zip(w, ci)], [max(0.0, hi - v) for v, (_, hi) in zip(w, ci)]]
    ax.barh(list(ys), w, xerr=err, capsize=4, color=[C["eval"] if m == baseline else C["train"] for m in names])
    ax.axvline(0.5, color="grey", ls="--", lw=1)
    ax.set_yticks(list(ys), [m + (" (baseline)" if m == baseline else "") for m in names])
    ax.set(xlabel=f"win rate over {baseline} (judge), 95% CI", xlim=(0, 1), title=title)
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


DIVERSITY = [("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"), ("self_bleu", "self-BLEU (lower: more diverse)")]


def diversity(models: dict[str, dict], title: str) -> bytes | None:
    """Distinct-1, distinct-2 and self-BLEU per model, grouped bars."""
    keys = [(k, lab) for k, lab in DIVERSITY if any(number(v.get(k)) for v in models.values())]
    if not keys:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    n = len(models)
    width = 0.8 / n
    for i, (m, v) in enumerate(models.items()):
        xs = [j + (i - (n - 1) / 2) * width for j in range(len(keys))]
        ax.bar(xs, [v.get(k) if number(v.get(k)) else 0.0 for k, _ in keys], width, label=m)
    ax.set_xticks(range(len(keys)), [lab for _, lab in keys])
    ax.set(ylabel="score (0..1)", title=title, ylim=(0, 1))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return _png(fig)


def arena(ratings: dict[str, dict]) -> bytes | None:
    """Bradley-Terry ratings of checkpoints from arena votes (Elo scale) with 95% bootstrap intervals."""
    if not ratings:
        return None
    plt = _plt()
    names = list(ratings)
    fig, ax = plt.subplots(figsize=(6.5, 0.6 * len(names) + 1.6))
    r = [ratings[m]["rating"] for m in names]
    lo = [max(0.0, v - (ratings[m].get("low") if number(ratings[m].get("low")) else v)) for m, v in zip(names, r)]
    hi = [max(0.0, (ratings[m].get("high") if number(ratings[m].get("high")) else v) - v) for m, v in zip(names, r)]
    ax.barh(range(len(names)), [v - 1000 for v in r], left=1000, xerr=[lo, hi], capsize=4, color=C["train"])
    ax.axvline(1000, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(names)), [f"{m} ({ratings[m].get('games', 0)} games)" for m in names])
    ax.set(xlabel="rating (Elo scale, mean 1000), 95% CI", title="arena: people's ratings of checkpoints")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)
