"""The guard's decisions as pure functions of its eval records: the signals, the win curve
fitted to the spot checks, the stop rules, and which eval to ship (rlhfkit.guard runs them).

    fired = {name: r for name, fn in STOP_RULES.items() if (r := fn(history, limits))}
    kept = keep_after(history, kept, keep); shipped = choose_shipped(history, kept)
    stop, reason, shipped = replay(guard_json["evals"], limits, keep)   # an observe run, re-decided

An eval record is a dict {"step", "kl", "proxy", "length_ratio", "repetition", "ensemble_std_rel",
"labels", "win_rate", "agreement", "fired", ...} (Guard.on_eval builds them; guard.json's `evals`);
history[0] is step 0, the starting policy. Nothing here reads a store, a model or a gold score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

SHIPPED_CRITERION = ("the eval step with the highest fitted win rate over the starting policy (win_curve: logit = "
                     "a x + b x^2 in x = step / the latest eval's step, fitted to all spot checks so far; step 0, "
                     "the start itself, is 0.5), among the eval steps up to the stop at which no stop rule fired "
                     "and whose checkpoint is kept (guard_keep); the earliest on a tie (the least drift for the "
                     "same evidence); with no spot-check labels at all, the last such eval step")


@dataclass(frozen=True)
class Limits:
    """The stop rules' thresholds (0 turns a rule off)."""
    kl_budget: float = 25.0
    disagreement_rise: float = 2.0
    win_drop: float = 2.0
    agreement_drop: float = 0.25
    length_ratio: float = 0.0
    repetition_rise: float = 0.0

    @classmethod
    def from_keys(cls, cfg) -> Limits:  # cfg: rlhfkit.guard.GuardKeys
        return cls(cfg.guard_kl_budget, cfg.guard_disagreement_rise, cfg.guard_win_drop, cfg.guard_agreement_drop,
                   cfg.guard_length_ratio, cfg.guard_repetition_rise)


# ----------------------------------------------------------------------------- signals (pure)

def words(text: str) -> list[str]:
    return text.lower().split()


def ngrams(tokens: list[str], n: int) -> list[tuple]:
    return list(zip(*(tokens[i:] for i in range(n))))


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (Li et al. 2016); 0 when there are none."""
    grams = [g for t in texts for g in ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(text: str, n: int = 3) -> float:
    """Share of a text's word n-grams that repeat an earlier one: 0 for varied text, -> 1 for a loop."""
    grams = ngrams(words(text), n)
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def rate_with_noise(outcomes: list[float]) -> tuple[float | None, float | None]:
    """Mean of 1 / 0.5 / 0 outcomes and its standard error, -> (None, None) without outcomes.

    The error uses the Agresti-Coull estimate p~ = (sum + 1) / (n + 2), se = sqrt(p~ (1 - p~) / (n + 2)),
    so 16 wins out of 16 still carry noise (se 0.054) instead of a false certainty of 0."""
    if not outcomes:
        return None, None
    n = len(outcomes)
    p_tilde = (sum(outcomes) + 1) / (n + 2)
    return sum(outcomes) / n, math.sqrt(p_tilde * (1 - p_tilde) / (n + 2))


def outcome(policy_first: bool, tie: bool) -> float:
    """A comparison's value to the policy: 1 won, 0.5 tie, 0 lost."""
    return 0.5 if tie else float(policy_first)


def agreement_outcomes(rm_margins: list[float], labels: list[float]) -> list[float]:
    """1 where the reward model's preference (margin = reward(policy) - reward(start)) matches the
    labeler's (1 policy, 0 start), 0 where not; ties on either side count 0.5."""
    return [0.5 if m == 0 or lab == 0.5 else float((m > 0) == (lab == 1.0)) for m, lab in zip(rm_margins, labels)]


def pooled_se(p1: float, n1: float, p2: float, n2: float) -> float:
    """Standard error of p1 - p2 if both rates were equal (the pooled two-proportion z-test);
    n1 = inf: p1 is exact (the starting policy's 0.5 against itself)."""
    if math.isinf(n1):
        return math.sqrt(p1 * (1 - p1) / n2)
    p = (p1 * n1 + p2 * n2) / (n1 + n2)
    return math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))


PRIOR_SD = 5.0  # logits: a weak prior on the win curve's coefficients (real win rates stay within logits +-2)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def observations(history: list[dict]) -> list[tuple[list[int], float]]:
    """Every spot check so far as (eval steps ranked best first, weight). A record's `rankings`
    ({"order": [steps], "tie": bool}, one per ranking of a spot check) count one each, a tie as
    both orders at half weight; a record without them (guard.json before K-way spot checks) holds
    only the policy's win rate over the start: win_rate x labels wins of [step, 0] and the rest of
    [0, step], which is the same likelihood."""
    obs: list[tuple[list[int], float]] = []
    for h in history[1:]:
        if "rankings" in h:
            for r in h["rankings"]:
                obs += ([(r["order"], 0.5), (r["order"][::-1], 0.5)] if r.get("tie") else [(r["order"], 1.0)])
        elif h.get("labels"):
            wins = h["win_rate"] * h["labels"]
            obs += [([h["step"], 0], wins), ([0, h["step"]], h["labels"] - wins)]
    return [(o, w) for o, w in obs if w > 0]


def win_curve(history: list[dict], prior_sd: float = PRIOR_SD) -> tuple[tuple[float, float], list[list[float]]] | None:
    """All spot checks so far as one curve over the eval steps: u(t) = a x + b x^2, x = t / the
    latest eval's step, the logit of P(the policy at step t beats the start) (u(0) = 0: the start
    against itself is 0.5); -> ((a, b), their 2 x 2 covariance) or None without labels.

    Why one curve: the few labels an eval can afford cannot tell evals apart (12 give a win rate
    +- 0.14), but together they pin a smooth rise and turn, the shape Gao et al. (2022) measure
    for a policy optimised against a reward model (the gold score rises, then falls, with the
    distance from the start; they fit it against sqrt(KL), we fit over steps, which every eval
    has exactly). A spot check ranks K responses to one prompt from different eval steps (the
    policy's, the start's, the kept candidates'), and the rankings are Plackett-Luce in u: P(order
    s_1 > ... > s_K) = prod_j exp u(s_j) / sum_{k >= j} exp u(s_k); for K = 2 against the start
    that is the logistic P(win) = sigmoid(u(t)). A and b are the maximum a posteriori estimate
    under independent normal priors of sd `prior_sd`, so two labelled evals give a curve and 3
    wins of 3 do not send it to infinity; Newton's method (the log posterior is concave); the
    covariance is the inverse Hessian there (Laplace)."""
    obs = observations(history)
    if not obs:
        return None
    last = history[-1]["step"] or 1
    feats = [([(s / last, (s / last) ** 2) for s in order], w) for order, w in obs]  # phi(s) = (x, x^2)
    lam, a, b = 1 / prior_sd ** 2, 0.0, 0.0
    for _ in range(100):
        ga, gb, haa, hab, hbb = -lam * a, -lam * b, lam, 0.0, lam  # gradient and -Hessian of the log posterior
        for phi, w in feats:
            u = [a * x1 + b * x2 for x1, x2 in phi]
            for j in range(len(phi) - 1):  # the j-th pick among the items not yet picked
                top = max(u[j:])
                e = [math.exp(v - top) for v in u[j:]]
                z = sum(e)
                m1 = sum(ei * f[0] for ei, f in zip(e, phi[j:])) / z
                m2 = sum(ei * f[1] for ei, f in zip(e, phi[j:])) / z
                s11 = sum(ei * f[0] * f[0] for ei, f in zip(e, phi[j:])) / z - m1 * m1
                s12 = sum(ei * f[0] * f[1] for ei, f in zip(e, phi[j:])) / z - m1 * m2
                s22 = sum(ei * f[1] * f[1] for ei, f in zip(e, phi[j:])) / z - m2 * m2
                ga, gb = ga + w * (phi[j][0] - m1), gb + w * (phi[j][1] - m2)
                haa, hab, hbb = haa + w * s11, hab + w * s12, hbb + w * s22
        det = haa * hbb - hab * hab
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a + da, b + db
        if abs(da) + abs(db) < 1e-12:
            break
    return (a, b), [[hbb / det, -hab / det], [-hab / det, haa / det]]


def fitted_logit(coef: tuple[float, float], step: int, last: int) -> float:
    x = step / (last or 1)
    return coef[0] * x + coef[1] * x * x


# ----------------------------------------------------------------------------- stop rules

def rule_kl_budget(h: list[dict], lim: Limits) -> str | None:
    kl = h[-1]["kl"]
    if not lim.kl_budget or kl <= lim.kl_budget:
        return None
    return f"KL to the reference {kl:.2f} > budget {lim.kl_budget:g} nats"


def rule_disagreement(h: list[dict], lim: Limits) -> str | None:
    rel = h[-1].get("ensemble_std_rel")
    if not lim.disagreement_rise or rel is None or rel <= lim.disagreement_rise:
        return None
    return f"ensemble disagreement {rel:.2f}x the start's > {lim.disagreement_rise:g}x"


def win_drop(h: list[dict], z: float) -> str | None:
    """The fitted win rate (win_curve) at the latest eval is below its value at the best earlier
    eval by more than z standard errors of that difference (the delta method over the curve's
    covariance); only at an eval with labels of its own. -> a reason or None."""
    if len(h) < 2 or not h[-1].get("labels"):
        return None
    fit = win_curve(h)
    if fit is None:
        return None
    coef, cov = fit
    last = h[-1]["step"]
    best = max(h[:-1], key=lambda e: fitted_logit(coef, e["step"], last))
    drop = fitted_logit(coef, best["step"], last) - fitted_logit(coef, last, last)
    xb, xl = best["step"] / last, 1.0
    g = (xb - xl, xb * xb - xl * xl)
    se = math.sqrt(max(0.0, g[0] * g[0] * cov[0][0] + 2 * g[0] * g[1] * cov[0][1] + g[1] * g[1] * cov[1][1]))
    if drop <= z * se:
        return None
    return (f"fitted win rate fell from {sigmoid(fitted_logit(coef, best['step'], last)):.3f} (step {best['step']}) "
            f"to {sigmoid(fitted_logit(coef, last, last)):.3f}: {drop:.2f} logits > {z:g} x se {se:.2f}")


def rule_win_rate(h: list[dict], lim: Limits) -> str | None:
    """`win_drop` at this eval and at the labelled eval before it: the latest point of a fitted
    curve has the most leverage on it, so one unlucky eval bends it down (with 12 checks an eval
    that fired at ~1 in 8 runs that never turned: the 2026-12-02 regret runs); a real turn holds
    at the next eval, and costs one eval's delay."""
    if not lim.win_drop:
        return None
    now = win_drop(h, lim.win_drop)
    labelled = [i for i in range(1, len(h) - 1) if h[i].get("labels")]
    if now is None or not labelled or win_drop(h[:labelled[-1] + 1], lim.win_drop) is None:
        return None
    return now + f" (and at step {h[labelled[-1]]['step']})"


AGREEMENT_LABELS = 16  # the agreement rule's two pools each hold at least this many spot checks
# the rule is tested at every eval, so 2 standard errors fired on noise in 2 of 24 regret runs
# (benchmarks/regret.py, 2026-12-02, 12 checks an eval); 2.5 fired only in the one whose person's
# score collapsed (hot animal-s0, stopped at 55, best at 30)
AGREEMENT_Z = 2.5


def rule_agreement(h: list[dict], lim: Limits, min_labels: int = AGREEMENT_LABELS, z: float = AGREEMENT_Z
                   ) -> str | None:
    """The reward model's agreement with the labeler, pooled over the latest labelled evals that
    hold at least `min_labels` spot checks, fell below its pooled value over all earlier labelled
    evals (again at least `min_labels`) by more than z pooled standard errors and by more than
    agreement_drop. Pooled, not the best single eval: with 4-12 checks an eval, the best of ten
    evals sits well above the truth, and a rule against it fired on noise (joke-s0 at step 30 and
    punchy-s0 at 65 in the 2026-12-02 regret runs, both still improving)."""
    lab = [e for e in h[1:] if e.get("agreement") is not None and e["labels"]]
    if not lim.agreement_drop or not lab or lab[-1] is not h[-1]:
        return None
    k, n2 = len(lab), 0
    while k > 0 and n2 < min_labels:  # the latest evals, back to min_labels checks
        k -= 1
        n2 += lab[k]["labels"]
    before, now = lab[:k], lab[k:]
    n1 = sum(e["labels"] for e in before)
    if n2 < min_labels or n1 < min_labels:
        return None
    p1 = sum(e["agreement"] * e["labels"] for e in before) / n1
    p2 = sum(e["agreement"] * e["labels"] for e in now) / n2
    drop, limit = p1 - p2, max(z * pooled_se(p1, n1, p2, n2), lim.agreement_drop)
    if drop <= limit:
        return None
    return (f"agreement fell from {p1:.3f} (steps {before[0]['step']}-{before[-1]['step']}) to {p2:.3f} "
            f"(steps {now[0]['step']}-{now[-1]['step']}): a drop of {drop:.3f} > {limit:.3f}")


def rule_length(h: list[dict], lim: Limits) -> str | None:
    r = h[-1]["length_ratio"]
    if not lim.length_ratio or 1 / lim.length_ratio <= r <= lim.length_ratio:
        return None
    return f"length {'collapse' if r < 1 else 'blow-up'}: {r:.2f}x the start's mean length"


def rule_repetition(h: list[dict], lim: Limits) -> str | None:
    rise = h[-1]["repetition"] - h[0]["repetition"]
    if not lim.repetition_rise or rise <= lim.repetition_rise:
        return None
    return f"repeated trigrams rose by {rise:.2f} over the start's {h[0]['repetition']:.2f}"


STOP_RULES: dict[str, Callable[[list[dict], Limits], str | None]] = {
    "kl_budget": rule_kl_budget, "disagreement": rule_disagreement, "win_rate": rule_win_rate,
    "agreement": rule_agreement, "length": rule_length, "repetition": rule_repetition,
}


def _rank_key(history: list[dict]) -> Callable[[int], tuple]:
    """Eval steps' order of preference (highest first): by fitted win rate, the earlier on a tie;
    without labels, the later (no evidence against drift yet)."""
    fit, last = win_curve(history), history[-1]["step"]
    if fit is None:
        return lambda step: (step,)
    return lambda step: (fitted_logit(fit[0], step, last), -step)


def keep_after(history: list[dict], kept: list[int], keep: int) -> list[int]:
    """The candidate checkpoints after the latest eval: it joins the kept ones (unless a stop rule
    fired on it) and the `keep` most preferred stay (at least 1: best/ must exist)."""
    cands = kept + ([history[-1]["step"]] if not history[-1]["fired"] else [])
    return sorted(sorted(cands, key=_rank_key(history), reverse=True)[:max(1, keep)])


def rivals(history: list[dict], kept: list[int], n: int) -> list[int]:
    """The kept candidates (not the start) a spot check ranks beside the policy and the start, the
    `n` most preferred: each such ranking measures the policy against the steps the guard would
    ship now, the difference its stop and ship decisions turn on."""
    if n <= 0 or not history:
        return []
    return sorted((s for s in kept if s != 0), key=_rank_key(history), reverse=True)[:n]


def choose_shipped(history: list[dict], kept: list[int] | None = None) -> int:
    """SHIPPED_CRITERION over eval records {"step", "win_rate", "labels", "fired"}; history[0] is
    step 0; `kept`: the steps whose checkpoint still exists (None: all)."""
    ok = [h["step"] for h in history if not h["fired"] and (kept is None or h["step"] in kept)] or [0]
    return max(ok, key=_rank_key(history))


def replay(evals: list[dict], limits: Limits, keep: int = 3) -> tuple[int | None, str, int]:
    """The decisions the guard would have made with other limits, from guard.json's `evals` of an
    observe run (its evidence at every eval does not depend on the rules): -> (stop step or None,
    reason, shipped step). Exact, because each decision reads only the evals up to it."""
    seen: list[dict] = []
    kept: list[int] = []
    for e in evals:
        seen.append({**e, "fired": []})
        fired = {name: r for name, fn in STOP_RULES.items() if (r := fn(seen, limits))}
        seen[-1]["fired"] = sorted(fired)
        kept = keep_after(seen, kept, keep)
        if fired:
            return e["step"], "; ".join(f"{k}: {v}" for k, v in fired.items()), choose_shipped(seen, kept)
    return None, "no stop rule fired", choose_shipped(seen, kept)
