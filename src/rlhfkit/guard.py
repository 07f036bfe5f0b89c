"""The over-optimisation guard: watch an RLHF run against a learned reward, stop it, ship the right step.

    metrics, stop = guard.on_eval(step, records, samples, step_metrics)   # the RL loop, at every eval

A reward model is a neural net imitating rankings; RL against it eventually finds responses it
scores highly but people dislike (Gao et al. 2022: the person's score rises, then falls, while
the proxy keeps rising). At every eval (step 0 = the starting policy, every eval_every steps,
the last step) the guard measures on the held-out prompts, logged as guard/*:

- proxy reward, KL to the reference (policy/kl_ref of the step's rollout), length, distinct-n
  and the repetition rate (repeated word trigrams), each compared with the starting policy;
- ensemble disagreement: mean std of the reward-ensemble members on the policy's samples over
  its value on the starting policy's (Coste et al. 2023; members that share a base share
  errors, Eisenstein et al. 2023, so this is a partial signal); only for an ensemble;
- spot checks: `guard_spot_checks` fresh comparisons per eval of the policy's response against
  the starting policy's response to the same prompt, written as arena tasks into a feedback
  store and answered by whoever ranks in this run (`guard_labeler`: a simulated person that
  ranks through the store; empty: people on the ranking page, waited for up to
  `guard_wait_s`). From them the labeler's win rate of the policy over the start (with its
  standard error), the win curve fitted to all of them so far (`win_curve`, guard/win_fit) and
  the reward model's agreement with the labeler on those pairs. Without a
  `guard_labeler` and with `guard_wait_s = 0` (the default) no one is asked, and the guard
  runs on its label-free signals.

The guard never sees a gold score: it reads a sample's step, prompt, response and proxy reward
only, and the labels only as rankings in the store (`labels_used` counts them).

Stop rules (STOP_RULES, each -> a reason or None) fire on that evidence; `guard = "on"` ends the
run at the eval where one fires; `observe` runs on and records the step it would have stopped
at, with the checkpoint it would have shipped then. The checkpoint shipped follows
SHIPPED_CRITERION, using only evals up to the stop, and is written as OUT/best/ (an HF dir)
with OUT/guard.json. Later evidence can move the choice back to an earlier eval, so the
`guard_keep` most promising evals' checkpoints wait in OUT/candidates/.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from rlhfkit.config import key
from rlhfkit.files import UserError, atomic_write_text

MODES = ("on", "observe", "off")
SHIPPED_CRITERION = ("the eval step with the highest fitted win rate over the starting policy (win_curve: logit = "
                     "a x + b x^2 in x = step / the latest eval's step, fitted to all spot checks so far; step 0, "
                     "the start itself, is 0.5), among the eval steps up to the stop at which no stop rule fired "
                     "and whose checkpoint is kept (guard_keep); the earliest on a tie (the least drift for the "
                     "same evidence); with no spot-check labels at all, the last such eval step")


@dataclass
class GuardKeys:
    """The guard's config keys; RLConfig inherits them (ppo, grpo, rloo)."""
    guard: str = key("", "over-optimisation guard: on | observe | off (empty: on when the reward is rm:..., else off)")
    guard_kl_budget: float = key(25.0, "stop when the KL to the reference (nats per sequence) exceeds this "
                                       "(0: no budget)")
    guard_disagreement_rise: float = key(2.0, "stop when the ensemble's std on the policy's samples exceeds this "
                                              "multiple of its value on the starting policy's (0: off)")
    guard_spot_checks: int = key(16, "fresh comparisons of the policy vs the starting policy per eval (0: none)")
    # z = 2: a policy as good as its best so far trips the rule at ~2% of evals (one-sided)
    guard_win_drop: float = key(2.0, "stop when the fitted win rate at the latest eval falls below its best eval's by "
                                     "more than this many standard errors of the difference, at two labelled evals "
                                     "in a row (0: off)")
    guard_keep: int = key(3, "candidate checkpoints kept (OUT/candidates/step-N, the best by fitted win rate): "
                             "what the guard can still ship when later evidence moves its choice back")
    guard_agreement_drop: float = key(0.25, "stop when the reward model's agreement with the labeler on the latest "
                                            "16 or more spot checks falls this far below its value over the earlier "
                                            "ones (16 or more), and by more than 2.5 standard errors (0: off)")
    # the degeneration rules are off by default: length and repetition are logged (guard/length_ratio,
    # guard/repetition) for every run, but a tiny or terse model trips a fixed ratio without being gamed
    guard_length_ratio: float = key(0.0, "stop when the mean response length (words) leaves [start / r, start * r] "
                                         "(0: off; e.g. 2)")
    guard_repetition_rise: float = key(0.0, "stop when the share of repeated word trigrams rises this far above the "
                                            "start's (0: off; e.g. 0.25)")
    guard_labeler: str = key("", "who answers the spot checks: module:function, a simulated person (Plackett-Luce "
                                 "over its scores, through the store); empty: people (`rlhfkit label OUT`)")
    guard_labeler_temperature: float = key(0.15, "the simulated person's noise (0.15: two of them agree on ~71% of "
                                                 "pairs, as people do)")
    guard_wait_s: float = key(0.0, "with people (no guard_labeler): how long an eval waits for them to answer its spot "
                                   "checks, then goes on with what it has (0: no spot checks without a guard_labeler)")
    guard_db: str = key("", "feedback store for the spot checks: a URL, an SQLite file or a run dir "
                            "(empty: OUT/feedback.db)")


def guard_mode(mode: str, reward: str) -> str:
    """The effective mode: an explicit one, else on for a learned reward (rm:) and off for a verifier."""
    if mode and mode not in MODES:
        raise UserError(f"guard = {mode!r}: expected one of {', '.join(MODES)}")
    if mode:
        return mode
    return "on" if any(p.strip().startswith("rm:") for p in reward.split("+")) else "off"


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
    def from_keys(cls, cfg: GuardKeys) -> "Limits":
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


def win_curve(history: list[dict], prior_sd: float = PRIOR_SD) -> tuple[tuple[float, float], list[list[float]]] | None:
    """All spot checks so far as one curve over the eval steps: logit P(the policy at step t beats
    the start) = a x + b x^2, x = t / the latest eval's step (x = 0, the start against itself: 0.5
    by definition, so no intercept); -> ((a, b), their 2 x 2 covariance) or None without labels.

    Why one curve: the few labels an eval can afford cannot tell evals apart (12 give a win rate
    +- 0.14), but together they pin a smooth rise and turn, the shape Gao et al. (2022) measure
    for a policy optimised against a reward model (the gold score rises, then falls, with the
    distance from the start; they fit it against sqrt(KL), we fit over steps, which every eval
    has exactly). A and b are the maximum a posteriori estimate of the outcomes' binomial
    likelihood (a tie counts half a win) under independent normal priors of sd `prior_sd`, so
    two labelled evals give a curve and 3 wins of 3 do not send it to infinity; Newton's method;
    the covariance is the inverse Hessian there (Laplace)."""
    pts = [(h["step"], h["win_rate"] * h["labels"], h["labels"]) for h in history[1:] if h.get("labels")]
    if not pts:
        return None
    last = history[-1]["step"] or 1
    lam, a, b = 1 / prior_sd ** 2, 0.0, 0.0
    for _ in range(100):
        ga, gb, haa, hab, hbb = -lam * a, -lam * b, lam, 0.0, lam  # gradient and -Hessian of the log posterior
        for t, wins, n in pts:
            x = t / last
            p = sigmoid(a * x + b * x * x)
            ga, gb = ga + (wins - n * p) * x, gb + (wins - n * p) * x * x
            w = n * p * (1 - p)
            haa, hab, hbb = haa + w * x * x, hab + w * x ** 3, hbb + w * x ** 4
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


# ----------------------------------------------------------------------------- the guard

class Guard:
    """Guard state across evals. `respond(store, task_ids)` answers spot-check tasks through the
    store (a simulated person) or is None (people; the guard waits up to wait_s for them).
    `save_best(dir)` writes the current policy as an HF dir; `member_scores(records, texts)`
    -> (M, n) ensemble scores or None."""

    def __init__(self, mode: str, out: str | Path, limits: Limits, spot_checks: int, store_spec: str = "",
                 respond: Callable | None = None, wait_s: float = 0.0, seed: int = 0,
                 save_best: Callable[[Path], None] | None = None, member_scores: Callable | None = None,
                 is_main: bool = True, poll_s: float = 2.0, keep: int = 3):
        if mode not in ("on", "observe"):
            raise UserError(f"guard mode {mode!r}: a Guard runs on or observe")
        self.mode, self.out, self.limits, self.spot_checks = mode, Path(out), limits, spot_checks
        self.store_spec, self.respond, self.wait_s, self.seed, self.poll_s = store_spec, respond, wait_s, seed, poll_s
        self.save_best, self.member_scores, self.is_main, self.keep = save_best, member_scores, is_main, keep
        self._store = None
        self.start: dict | None = None  # the starting policy: responses and rewards per eval prompt, signals
        self.history: list[dict] = []
        self.tasks: list[dict] = []  # spot checks asked: step, task and response ids, RM margin, texts
        self.stop_step: int | None = None
        self.reason = ""
        self.shipped_step: int | None = None
        self.kept: list[int] = []  # eval steps whose checkpoint is in OUT/candidates/ (keep_after)
        self.best_step: int | None = None  # the step OUT/best/ holds
        self.labels_used = 0  # labels read up to the stop (what an `on` run spends)
        self.labels_total = 0
        self.exploits: list[dict] = []  # lost spot checks the reward model preferred: what RL found to game

    # ---- what the loop calls
    def on_eval(self, step: int, records: list[dict], samples: list[dict], step_metrics: dict) -> tuple[dict, bool]:
        # a sample's gold score (when the run logs one) is never read: only these fields
        seen = [{"prompt": s["prompt"], "response": s["response"], "reward": float(s["reward"])} for s in samples]
        if len(seen) != len(records):
            raise ValueError(f"guard: {len(seen)} samples for {len(records)} eval records")
        texts = [s["response"] for s in seen]
        ens = self._ensemble_std(records, texts)
        if self.start is None:
            self.start = {"responses": texts, "rewards": [s["reward"] for s in seen], "ensemble_std": ens,
                          "length": mean([len(words(t)) for t in texts]) or 1.0}
        labels, margins = self._spot_check(step, records, seen) if self.history else ([], [])
        win, win_se = rate_with_noise(labels) if self.history else (0.5, 0.0)
        agree, agree_se = rate_with_noise(agreement_outcomes(margins, labels))
        length = mean([len(words(t)) for t in texts])
        rec = {
            "step": step, "proxy": mean([s["reward"] for s in seen]),
            "kl": float(step_metrics.get("policy/kl_ref", 0.0)),
            "length": length, "length_ratio": length / self.start["length"],
            "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "repetition": mean([repetition_rate(t) for t in texts]),
            "ensemble_std_rel": (ens / self.start["ensemble_std"] if ens is not None and self.start["ensemble_std"]
                                 else None),
            "labels": len(labels), "win_rate": win, "win_se": win_se, "agreement": agree, "agreement_se": agree_se,
        }
        self.history.append(rec)
        fit = win_curve(self.history)
        rec["win_fit"] = sigmoid(fitted_logit(fit[0], step, step)) if fit is not None else None
        fired = {name: r for name, fn in STOP_RULES.items() if (r := fn(self.history, self.limits))}
        rec["fired"] = sorted(fired)
        self.labels_total += len(labels)
        stop_now = False
        if self.stop_step is None:
            self.labels_used += len(labels)
            if fired:
                self.stop_step, self.reason, stop_now = step, "; ".join(f"{k}: {v}" for k, v in fired.items()), True
            self.kept = keep_after(self.history, self.kept, self.keep)
            self.shipped_step = choose_shipped(self.history, self.kept)
            self._checkpoints(step)
        self.write()
        metrics = {f"guard/{k}": float(v) for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        metrics.update({"guard/labels_used": float(self.labels_used), "guard/shipped_step": float(self.shipped_step),
                        "guard/stop": float(stop_now)})
        return metrics, stop_now and self.mode == "on"

    def _checkpoints(self, step: int) -> None:
        """This eval's policy into OUT/candidates/step-N if it is kept, the candidates no longer kept
        removed, and OUT/best/ made a copy of the shipped one when that changed (a fresh copy, then
        renamed over the old one: best/ is never half-written)."""
        if self.save_best is None or not self.is_main:
            return
        import shutil

        cands = self.out / "candidates"
        if step in self.kept:
            self.save_best(cands / f"step-{step}")
        for d in cands.glob("step-*") if cands.is_dir() else []:
            if int(d.name.split("-")[1]) not in self.kept:
                shutil.rmtree(d)
        if self.shipped_step != self.best_step:
            tmp, best = self.out / "best.tmp", self.out / "best"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(cands / f"step-{self.shipped_step}", tmp)
            shutil.rmtree(best, ignore_errors=True)
            tmp.rename(best)
            self.best_step = self.shipped_step

    # ---- spot checks through the store
    def _spot_check(self, step: int, records: list[dict], seen: list[dict]) -> tuple[list[float], list[float]]:
        """Ask up to spot_checks fresh comparisons (policy vs start, same prompt), answered through the
        store; -> (outcomes for the policy, the reward model's margins) of those answered."""
        if not self.spot_checks or (self.respond is None and self.wait_s <= 0):
            return [], []  # no one to ask
        result = None
        if self.is_main:
            differ = [i for i, s in enumerate(seen) if s["response"] != self.start["responses"][i]]
            rng = random.Random(f"{self.seed}:guard:{step}")
            chosen = sorted(rng.sample(differ, min(self.spot_checks, len(differ))))
            asked = [self._ask(step, records[i], seen[i], i, rng) for i in chosen]
            if asked:
                self._wait([a["task_id"] for a in asked], step)
            result = self._read(asked)
        return _broadcast(result)

    def store(self):
        from rlhfkit.feedback.store import FeedbackStore

        if self._store is None:
            spec = self.store_spec
            self._store = (FeedbackStore(spec) if "://" in spec else
                           FeedbackStore.for_run(spec) if spec and Path(spec).is_dir() else
                           FeedbackStore.for_run(self.out, spec or None))
        return self._store

    def _ask(self, step: int, record: dict, sample: dict, i: int, rng: random.Random) -> dict:
        store = self.store()
        meta = {"guard": {"step": step, "eval_index": i}}
        if "messages" in record:
            meta["messages"] = record["messages"]
        pid = store.add_prompt(sample["prompt"], meta)
        policy_id = store.add_response(pid, sample["response"], model=f"step-{step}")
        start_id = store.add_response(pid, self.start["responses"][i], model="step-0")
        pair = [policy_id, start_id] if rng.random() < 0.5 else [start_id, policy_id]  # no side for position bias
        task_id = store.create_task(pid, pair, kind="arena")
        ask = {"step": step, "task_id": task_id, "policy_id": policy_id, "start_id": start_id,
               "margin": sample["reward"] - self.start["rewards"][i], "prompt": sample["prompt"],
               "response": sample["response"], "start_response": self.start["responses"][i]}
        self.tasks.append(ask)
        return ask

    def _wait(self, task_ids: list[int], step: int) -> None:
        if self.respond is not None:
            self.respond(self.store(), task_ids, step)
            return
        want, deadline = set(task_ids), time.monotonic() + self.wait_s
        print(f"guard: {len(want)} spot checks of step {step} wait for people on the ranking page "
              f"(rlhfkit label {self.out}), up to {self.wait_s:.0f} s", flush=True)
        while time.monotonic() < deadline:
            if want <= {r["task_id"] for r in self.store().rankings()}:
                return
            time.sleep(self.poll_s)

    def _read(self, asked: list[dict]) -> tuple[list[float], list[float]]:
        by_task = {a["task_id"]: a for a in asked}
        labels, margins = [], []
        for r in self.store().rankings():
            a = by_task.get(r["task_id"])
            if a is not None:  # every ranking of the task counts (several people may answer one)
                labels.append(outcome(r["response_ids"][0] == a["policy_id"], r["tie"]))
                margins.append(a["margin"])
                if labels[-1] == 0.0 and a["margin"] > 0:  # the RM preferred what the person did not
                    self.exploits.append({k: a[k] for k in ("step", "prompt", "response", "start_response", "margin")})
        return labels, margins

    def _ensemble_std(self, records: list[dict], texts: list[str]) -> float | None:
        if self.member_scores is None:
            return None
        s = self.member_scores(records, texts)  # (M, n)
        return None if s is None or s.shape[0] < 2 else float(s.std(0, correction=1).mean())

    # ---- outputs and resume
    def summary(self) -> dict:
        return {"mode": self.mode, "shipped_step": self.shipped_step, "stop_step": self.stop_step,
                "reason": self.reason or (f"no stop rule fired up to step {self.history[-1]['step']}"
                                            if self.history else "no eval yet"), "labels_used": self.labels_used,
                "labels_total": self.labels_total, "criterion": SHIPPED_CRITERION, "keep": self.keep,
                "kept": self.kept,
                "rules": {name: v for name, v in asdict(self.limits).items()},
                "spot_checks_per_eval": self.spot_checks, "evals": self.history,
                # the top exploits seen up to the stop: lost to the start, preferred by the reward model
                "exploits": sorted((e for e in self.exploits if self.stop_step is None or e["step"] <= self.stop_step),
                                   key=lambda e: -e["margin"])[:5]}

    def write(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "guard.json", json.dumps(self.summary(), indent=1) + "\n")

    def state_dict(self) -> dict:
        return {"start": self.start, "history": self.history, "tasks": self.tasks, "stop_step": self.stop_step,
                "reason": self.reason, "shipped_step": self.shipped_step, "kept": self.kept,
                "best_step": self.best_step, "labels_used": self.labels_used,
                "labels_total": self.labels_total, "exploits": self.exploits}

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


def _broadcast(obj):
    """Rank 0's value on every rank (the store is touched by rank 0 only)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def simulated_responder(spec: str, temperature: float, seed: int) -> Callable:
    """A simulated person for the spot checks: `module:function` scores, Plackett-Luce noise, a
    stream seeded per (seed, step) so a resumed run asks and answers the same; it ranks through
    the store, as annotator "guard-sim", like a person on the ranking page would."""
    from rlhfkit.feedback.labelers import SimulatedLabeler, answer, load_gold

    fn = load_gold(spec)

    def respond(store, task_ids: list[int], step: int) -> None:
        answer(store, task_ids, SimulatedLabeler(fn, temperature, seed=f"{seed}:{step}", name="guard-sim"), "guard-sim")
    return respond


def ensemble_scorer(reward: str) -> Callable | None:
    """(records, texts) -> (M, n) member scores of the reward's rm: ensemble, or None (one model, no rm:)."""
    parts = [p.strip()[3:] for p in reward.split("+") if p.strip().startswith("rm:")]
    if not parts or not (Path(parts[0]) / "ensemble.json").is_file():
        return None
    from rlhfkit.rewards.rm import RewardScorer

    scorer = RewardScorer.load(parts[0])
    return lambda records, texts: scorer.member_scores([r.get("messages") or r["prompt"] for r in records], texts)


def make_guard(cfg: GuardKeys, reward: str, out: str | Path, seed: int, policy=None, tokenizer=None,
               is_main: bool = True) -> Guard | None:
    """The stage's guard from its keys, or None when the guard is off."""
    mode = guard_mode(cfg.guard, reward)
    if mode == "off":
        return None
    save_best = None
    if policy is not None:
        from rlhfkit.models import save_model

        def save_best(path: Path) -> None:
            save_model(policy, tokenizer, path)
    respond = (simulated_responder(cfg.guard_labeler, cfg.guard_labeler_temperature, seed)
               if cfg.guard_labeler else None)
    return Guard(mode, out, Limits.from_keys(cfg), cfg.guard_spot_checks, cfg.guard_db, respond, cfg.guard_wait_s,
                 seed, save_best, ensemble_scorer(reward), is_main, keep=cfg.guard_keep)
