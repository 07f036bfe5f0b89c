"""The over-optimisation guard: its signals by hand, each stop rule firing and not, the shipped
checkpoint, spot checks answered through a real feedback store (a simulated person, and a
person in another thread), observe mode, resume, and that a gold score in the samples is never read."""

from __future__ import annotations

import json
import math
import threading
import time

import pytest

from rlhfkit.feedback.store import FeedbackStore
from rlhfkit.files import UserError
from rlhfkit.guard import Guard, GuardKeys, guard_mode, make_guard, simulated_responder
from rlhfkit.guard_rules import (
    STOP_RULES,
    Limits,
    agreement_outcomes,
    choose_shipped,
    distinct_n,
    fitted_logit,
    keep_after,
    rate_with_noise,
    repetition_rate,
    replay,
    rivals,
    sigmoid,
    win_curve,
    win_drop,
)

QUALITY = "test_guard:quality"


def quality(prompt: str, response: str) -> float:
    """The test's person: responses read 'quality N ...'."""
    return float(response.split()[1])


def test_signals_by_hand():
    # words a b a b c: 3 distinct of 5 unigrams; bigrams ab ba (text 1) and bc (text 2): 3 of 3
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "b c"], 2) == 1.0
    assert distinct_n([""], 2) == 0.0
    # "the the the the": trigrams ttt ttt -> 1 repeat of 2; "a b c a b c": abc bca cab abc -> 1 of 4
    assert repetition_rate("the the the the") == 0.5
    assert repetition_rate("A b c a b c") == 0.25 and repetition_rate("why did the owl") == 0.0
    # outcomes 1 1 0 0.5: mean 0.625; p~ = 3.5 / 6, se = sqrt(p~ (1 - p~) / 6) = 0.20127
    p, se = rate_with_noise([1, 1, 0, 0.5])
    assert p == 0.625 and se == pytest.approx(math.sqrt(3.5 / 6 * 2.5 / 6 / 6))
    assert rate_with_noise([1.0] * 16)[1] == pytest.approx(math.sqrt(17 / 18 * 1 / 18 / 18))  # 0.054, not 0
    assert rate_with_noise([]) == (None, None)
    # the RM's margin agrees with the label / disagrees / ties on either side
    assert agreement_outcomes([1.0, -2.0, 0.0, 0.5], [1.0, 1.0, 0.0, 0.5]) == [1.0, 0.0, 0.5, 0.5]


def _h(step=0, **kw):
    base = {"step": step, "kl": 0.0, "length_ratio": 1.0, "repetition": 0.05, "ensemble_std_rel": None,
            "win_rate": 0.5, "win_se": 0.0, "agreement": None, "agreement_se": None, "labels": 0, "fired": []}
    return {**base, **kw}


@pytest.mark.parametrize("rule,history,limits,fires", [
    ("kl_budget", [_h(kl=30.0)], Limits(kl_budget=25), True),
    ("kl_budget", [_h(kl=20.0)], Limits(kl_budget=25), False),
    ("kl_budget", [_h(kl=30.0)], Limits(kl_budget=0), False),  # 0: no budget
    ("disagreement", [_h(ensemble_std_rel=2.5)], Limits(disagreement_rise=2), True),
    ("disagreement", [_h(ensemble_std_rel=1.5)], Limits(disagreement_rise=2), False),
    ("disagreement", [_h()], Limits(disagreement_rise=2), False),  # one reward model: no signal
    # the win-rate rule: win_drop (test_win_drop) at this eval and at the labelled eval before it.
    # 0.8, 0.5, 0.4 (20 labels each): at 20 the curve fell 0.93 logits (se 0.59), at 30 1.08 (se 0.57):
    # both > 1 se, fires at z = 1, not at z = 2; 0.8, 0.7, 0.2: at 30 a fall of 2.20 logits (se 0.63),
    # but at 20 none (0.752 -> 0.717 is no fall): one bad eval does not stop the run, at any z
    ("win_rate", [_h(0), _h(10, win_rate=0.8, labels=20), _h(20, win_rate=0.5, labels=20),
                  _h(30, win_rate=0.4, labels=20)], Limits(win_drop=1), True),
    ("win_rate", [_h(0), _h(10, win_rate=0.8, labels=20), _h(20, win_rate=0.5, labels=20),
                  _h(30, win_rate=0.4, labels=20)], Limits(win_drop=2), False),
    ("win_rate", [_h(0), _h(10, win_rate=0.8, labels=20), _h(20, win_rate=0.7, labels=20),
                  _h(30, win_rate=0.2, labels=20)], Limits(win_drop=1), False),
    # against the start (0.5 by definition): 0.25 of 12 twice: fitted 0.252 then 0.235 (1.18 logits, se 0.66)
    ("win_rate", [_h(0), _h(5, win_rate=0.25, labels=12), _h(10, win_rate=0.25, labels=12)], Limits(win_drop=1), True),
    ("win_rate", [_h(0), _h(5, win_rate=0.25, labels=12), _h(10, win_rate=0.25, labels=12)], Limits(win_drop=2), False),
    ("win_rate", [_h(0), _h(5, win_rate=0.25, labels=12)], Limits(win_drop=1), False),  # no eval before it
    ("win_rate", [_h(0), _h(5, win_rate=0.25, labels=12), _h(10, win_rate=0.25, labels=12)], Limits(win_drop=0), False),
    ("win_rate", [_h(0), _h(5, win_rate=0.1, labels=20), _h(10)], Limits(win_drop=1), False),  # no labels of its own
    # agreement 0.9, 0.9 then 0.4, 0.4 (20 labels each): the latest 16+ checks are step 40's 20 (0.4), the
    # earlier 60 pooled 0.733: pooled p 0.65, se sqrt(0.65 x 0.35 x (1/60 + 1/20)) = 0.123, limit
    # max(2.5 x 0.123, 0.25) = 0.308 < 0.333 fires; 0.9, 0.9, 0.5, 0.5 (0.767 -> 0.5: 0.267 < 2.5 x 0.118) and
    # 0.9, 0.9, 0.7, 0.7 do not
    ("agreement", [_h(0)] + [_h(10 * i, agreement=a, labels=20) for i, a in enumerate([0.9, 0.9, 0.4, 0.4], 1)],
     Limits(agreement_drop=0.25), True),
    ("agreement", [_h(0)] + [_h(10 * i, agreement=a, labels=20) for i, a in enumerate([0.9, 0.9, 0.5, 0.5], 1)],
     Limits(agreement_drop=0.25), False),
    ("agreement", [_h(0)] + [_h(10 * i, agreement=a, labels=20) for i, a in enumerate([0.9, 0.9, 0.7, 0.7], 1)],
     Limits(agreement_drop=0.25), False),
    # 8 checks an eval: the latest two (16) pooled against the earlier: 1.0 of 16 -> 0.5 of 16 fires
    # (pooled p 0.75, se 0.153, limit max(2.5 x 0.153, 0.25) = 0.383 < 0.5); 2 evals only: no earlier pool of 16
    ("agreement", [_h(0)] + [_h(10 * i, agreement=a, labels=8) for i, a in enumerate([1.0, 1.0, 0.5, 0.5], 1)],
     Limits(agreement_drop=0.25), True),
    ("agreement", [_h(0)] + [_h(10 * i, agreement=a, labels=8) for i, a in enumerate([1.0, 0.0], 1)],
     Limits(agreement_drop=0.25), False),
    ("length", [_h(length_ratio=0.4)], Limits(length_ratio=2), True),
    ("length", [_h(length_ratio=2.5)], Limits(length_ratio=2), True),
    ("length", [_h(length_ratio=1.5)], Limits(length_ratio=2), False),
    ("repetition", [_h(0), _h(10, repetition=0.35)], Limits(repetition_rise=0.25), True),  # rise 0.30
    ("repetition", [_h(0), _h(10, repetition=0.25)], Limits(repetition_rise=0.25), False),  # rise 0.20
])
def test_stop_rules(rule, history, limits, fires):
    reason = STOP_RULES[rule](history, limits)
    assert (reason is not None) == fires, reason
    if fires:
        assert isinstance(reason, str) and reason


def test_win_curve():
    assert win_curve([_h(0), _h(10)]) is None  # no labels, no curve
    # one labelled eval (x = 1): a and b enter only as a + b = c, so the symmetric prior splits it,
    # a = b = c / 2, where the posterior's slope is 0: 6 - 8 sigmoid(c) = c / (2 x 5^2); bisection:
    lo, hi = 0.0, 5.0
    for _ in range(60):
        c = (lo + hi) / 2
        lo, hi = (c, hi) if 6 - 8 * sigmoid(c) - c / 50 > 0 else (lo, c)
    (a, b), cov = win_curve([_h(0), _h(10, win_rate=0.75, labels=8)])
    assert a == pytest.approx(c / 2, abs=1e-9) and b == pytest.approx(c / 2, abs=1e-9)
    assert sigmoid(a + b) == pytest.approx(0.747, abs=1e-3)  # a little below 6 / 8: the prior
    # the covariance: the inverse of [[w + 1/25, w], [w, w + 1/25]], w = 8 p (1 - p) at p = sigmoid(c)
    w = 8 * sigmoid(c) * (1 - sigmoid(c))
    det = (w + 1 / 25) ** 2 - w * w
    assert cov[0][0] == pytest.approx((w + 1 / 25) / det) and cov[0][1] == pytest.approx(-w / det)
    # a rise and a turn: 1.0 at step 10, 0.0 at step 20 (20 labels each): concave, the top before 20
    (a, b), _ = win_curve([_h(0), _h(10, win_rate=1.0, labels=20), _h(20, win_rate=0.0, labels=20)])
    assert a > 0 > b and sigmoid(fitted_logit((a, b), 10, 20)) == pytest.approx(0.833, abs=1e-3)
    assert sigmoid(fitted_logit((a, b), 20, 20)) == pytest.approx(0.065, abs=1e-3)


def _log_posterior(rankings, a, b, last, prior_sd=5.0):
    """Plackett-Luce over u(s) = a x + b x^2, x = s / last, written out: sum over rankings and picks of
    u(picked) - log sum exp u(still unpicked), minus the normal prior."""
    u = lambda s: a * s / last + b * (s / last) ** 2  # noqa: E731
    lp = -(a * a + b * b) / (2 * prior_sd ** 2)
    for order, w in rankings:
        for j in range(len(order) - 1):
            lp += w * (u(order[j]) - math.log(sum(math.exp(u(s)) for s in order[j:])))
    return lp


def test_win_curve_plackett_luce_over_rankings_of_k():
    # rankings of 3 and 4 responses from steps 0 (the start), 5 and 10: the fit is where the written-out
    # log posterior is flat, and its covariance the inverse of minus its Hessian (finite differences)
    orders = [[10, 5, 0], [5, 10, 0], [10, 0, 5], [5, 0, 10], [10, 5, 0], [0, 10, 5], [10, 5, 0]]
    h = [_h(0), _h(5, labels=2, rankings=[{"order": [5, 0], "tie": False}, {"order": [0, 5], "tie": True}]),
         _h(10, labels=len(orders), rankings=[{"order": o, "tie": False} for o in orders])]
    (a, b), cov = win_curve(h)
    obs = [([5, 0], 1.0), ([0, 5], 0.5), ([5, 0], 0.5)] + [(o, 1.0) for o in orders]  # a tie: both orders, half each
    e = 1e-4
    f = lambda da, db: _log_posterior(obs, a + da, b + db, 10)  # noqa: E731
    assert (f(e, 0) - f(-e, 0)) / (2 * e) == pytest.approx(0, abs=1e-6)
    assert (f(0, e) - f(0, -e)) / (2 * e) == pytest.approx(0, abs=1e-6)
    haa = -(f(e, 0) - 2 * f(0, 0) + f(-e, 0)) / e ** 2
    hbb = -(f(0, e) - 2 * f(0, 0) + f(0, -e)) / e ** 2
    hab = -(f(e, e) - f(e, -e) - f(-e, e) + f(-e, -e)) / (4 * e * e)
    det = haa * hbb - hab * hab
    assert cov[0][0] == pytest.approx(hbb / det, rel=1e-3) and cov[0][1] == pytest.approx(-hab / det, rel=1e-3)
    # step 10 comes first in 4 of 7 rankings and last in 1: above the start and above step 5
    assert fitted_logit((a, b), 10, 10) > fitted_logit((a, b), 5, 10) > 0
    # rankings of 2 against the start are the binomial fit of the win rate: 6 of 8 as rankings or as a rate
    pairs = [{"order": [10, 0], "tie": False}] * 6 + [{"order": [0, 10], "tie": False}] * 2
    (a2, b2), cov2 = win_curve([_h(0), _h(10, labels=8, rankings=pairs)])
    (a1, b1), cov1 = win_curve([_h(0), _h(10, win_rate=0.75, labels=8)])
    assert (a2, b2, *cov2[0]) == pytest.approx((a1, b1, *cov1[0]), abs=1e-12)


def test_rivals_are_the_best_kept_candidates():
    # fitted 0.80 at 10, 0.53 at 20 (as in test_choose_shipped_by_hand): 10 before 20, never the start
    h = [_h(0), _h(10, win_rate=0.9, labels=10), _h(20, win_rate=0.5, labels=10)]
    assert rivals(h, [0, 10, 20], 2) == [10, 20] and rivals(h, [0, 10, 20], 1) == [10]
    assert rivals(h, [0, 10, 20], 0) == [] and rivals(h, [0], 2) == []


def test_win_drop():
    # 1.0 at step 10 then 0.0 at 20 (20 labels each) fits 0.833 -> 0.065: 4.27 logits down, se 0.90
    h = [_h(0), _h(10, win_rate=1.0, labels=20), _h(20, win_rate=0.0, labels=20)]
    assert win_drop(h, 3.0).startswith("fitted win rate fell from 0.833 (step 10) to 0.065: 4.27 logits > 3 x se 0.90")
    # 0.8 -> 0.5 fits 0.736 -> 0.524: 0.93 logits, se 0.59: beyond 1 se, not 2
    h = [_h(0), _h(10, win_rate=0.8, labels=20), _h(20, win_rate=0.5, labels=20)]
    assert win_drop(h, 1.0) is not None and win_drop(h, 2.0) is None
    # against the start: 0.25 of 12 fits 0.252, 1.09 logits below 0.5, se 0.66
    assert win_drop([_h(0), _h(5, win_rate=0.25, labels=12)], 1.0) is not None
    assert win_drop([_h(0), _h(5, win_rate=0.25, labels=12)], 2.0) is None


def test_choose_shipped_by_hand():
    # win rates 0.7, (0.9 but a stop rule fired), 0.7 at 10, 20, 30 (8 labels each): the curve
    # rises and bends; 20 cannot be shipped; of 10 and 30 the fitted curve is higher at 30
    h = [_h(0), _h(10, win_rate=0.7, labels=8), _h(20, win_rate=0.9, labels=8, fired=["kl_budget"]),
         _h(30, win_rate=0.7, labels=8)]
    (a, b), _ = win_curve(h)
    assert fitted_logit((a, b), 30, 30) > fitted_logit((a, b), 10, 30)
    assert choose_shipped(h) == 30
    assert choose_shipped(h, kept=[0, 10]) == 10  # 30's checkpoint is gone: the best of those kept
    assert choose_shipped([_h(0), _h(10, win_rate=0.2, labels=8)]) == 0  # the start beats a losing policy
    assert choose_shipped([_h(0), _h(10), _h(20, fired=["length"])]) == 10  # no labels: the last step before
    # the curve falls back: 0.9 at 10, 0.5 at 20 -> 10 is shipped, and stays kept
    h = [_h(0), _h(10, win_rate=0.9, labels=10), _h(20, win_rate=0.5, labels=10)]
    assert choose_shipped(h) == 10
    assert keep_after(h, [0, 10], keep=2) == [10, 20]  # 10 (fitted 0.80) and 20 (0.53) over the start (0.5)
    assert keep_after(h, [0, 10], keep=1) == [10]
    assert keep_after([_h(0), _h(10, fired=["kl_budget"])], [0], keep=3) == [0]  # a fired eval is never kept


def test_replay_with_other_limits():
    # win rates 0.5 (the start) -> 0.25 -> 0.75 -> 0.25, 12 labels each after the start: the first dip
    # falls beyond 1 se (fitted 0.252: 1.09 logits below the start, se 0.66), but not twice in a row
    ev = [_h(0), _h(5, win_rate=0.25, labels=12), _h(10, win_rate=0.75, labels=12), _h(15, win_rate=0.25, labels=12)]
    assert replay(ev, Limits(win_drop=1))[0] is None
    assert replay(ev[:2] + [_h(10, win_rate=0.25, labels=12)], Limits(win_drop=1))[::2] == (10, 0)  # twice: stop
    # z = 2: nothing fires (the dip, rise and dip average out on the curve: fitted 0.513, 0.462, 0.353
    # at 5, 10, 15), so the curve's top among the evals is step 5, just above the start
    stop, reason, shipped = replay(ev, Limits(win_drop=2))
    assert (stop, shipped) == (None, 5) and reason == "no stop rule fired"
    assert replay(ev, Limits(win_drop=0)) == (None, "no stop rule fired", 5)
    # keep = 1: after step 10 (the curve then 0.351 at 5, 0.711 at 10) only 10 survived, so 5 cannot come back
    assert replay(ev, Limits(win_drop=0), keep=1)[2] == 10


def test_mode_defaults_on_for_a_learned_reward():
    assert guard_mode("", "rm:runs/x/rm") == "on" and guard_mode("", "format+rm:x") == "on"
    assert guard_mode("", "math") == "off" and guard_mode("observe", "math") == "observe"
    with pytest.raises(UserError, match="expected one of on, observe, off"):
        guard_mode("maybe", "math")
    assert make_guard(GuardKeys(), "math", "x", 0) is None


# ---------------------------------------------------------------- the Guard through a real store

PROMPTS = [f"Tell me a joke about animal {i}." for i in range(6)]
RECORDS = [{"prompt": p, "messages": [{"role": "user", "content": p}]} for p in PROMPTS]
# (step, quality of the policy's response, proxy reward): the person's score rises then falls,
# the proxy keeps rising: over-optimisation at step 30
RUN = [(0, 5, 0.0), (10, 7, 1.0), (20, 8, 2.0), (30, 2, 3.0), (40, 2, 4.0), (50, 9, 5.0)]


def _samples(step, q, reward, gold=None):
    return [{"step": step, "prompt": p, "response": f"quality {q} joke {i} about it",
             "reward": reward + 0.01 * i, **({"gold": gold} if gold is not None else {})}
            for i, p in enumerate(PROMPTS)]


def _guard(tmp_path, mode="on", respond=True, **kw):
    saved = []

    def save_best(path):
        path.mkdir(parents=True, exist_ok=True)
        (path / "step.txt").write_text(str(current[0]))
        saved.append(current[0])
    current = [0]
    kw.setdefault("spot_size", 2)
    g = Guard(mode, tmp_path / "out", Limits(length_ratio=2.0, repetition_rise=0.25), spot_checks=6,
              respond=simulated_responder(QUALITY, 0.0, seed=0) if respond else None, save_best=save_best, **kw)
    return g, current, saved


def _drive(g, current, run=RUN, gold=None):
    stops = []
    for step, q, reward in run:
        current[0] = step
        metrics, stop = g.on_eval(step, RECORDS, _samples(step, q, reward, gold), {"policy/kl_ref": step / 10})
        stops.append(stop)
        if stop:
            break
    return stops, metrics


def test_on_mode_stops_at_the_turn_and_ships_the_best_seen(tmp_path):
    g, current, saved = _guard(tmp_path)
    stops, metrics = _drive(g, current)
    assert stops == [False, False, False, False, True]  # stopped at step 40, step 50 never ran
    gj = json.loads((tmp_path / "out" / "guard.json").read_text())
    # a noiseless person prefers quality 7 and 8 over the start's 5 every time (win rate 1), and 2 never:
    # the win rate falls 1 -> 0 at 30 (the curve: 0.807, 0.725, 0.201 at 10, 20, 30; 2.81 logits down,
    # se 1.06) and stays there at 40 (0.698, 0.623, 0.268, 0.025): the second fall in a row stops the run;
    # the RM (always preferring the policy) falls from agreeing 1 -> 0
    assert [e["win_rate"] for e in gj["evals"]] == [0.5, 1.0, 1.0, 0.0, 0.0]
    assert [e["agreement"] for e in gj["evals"]] == [None, 1.0, 1.0, 0.0, 0.0]
    # (the agreement rule pools 16+ checks against 16+ earlier ones: 6 an eval, not yet at step 40)
    assert gj["stop_step"] == 40 and gj["reason"].startswith("win_rate:") and "agreement" not in gj["reason"]
    # at step 20 the curve still rose (0.943, 0.999): 20 was shipped; step 30 bent it (and was not kept:
    # 0.201 < the start's 0.5), and 10 is the top
    assert gj["shipped_step"] == 10 and saved == [0, 10, 20] and gj["kept"] == [0, 10, 20]
    assert (tmp_path / "out" / "best" / "step.txt").read_text() == "10"  # a copy of candidates/step-10
    assert sorted(d.name for d in (tmp_path / "out" / "candidates").iterdir()) == ["step-0", "step-10", "step-20"]
    assert not (tmp_path / "out" / "best.tmp").exists()
    assert gj["labels_used"] == 24 and metrics["guard/labels_used"] == 24.0  # 6 per eval after step 0
    assert metrics["guard/stop"] == 1.0 and metrics["guard/shipped_step"] == 10.0 and gj["criterion"]
    # the exploits: steps 30 and 40 lost every spot check while the RM preferred them (by 3.0 and 4.0)
    assert [(e["step"], round(e["margin"], 6)) for e in gj["exploits"]] == [(40, 4.0)] * 5  # the top 5 of 12
    assert gj["exploits"][0]["response"].startswith("quality 2") and gj["exploits"][0]["start_response"].startswith("quality 5")
    with FeedbackStore.for_run(tmp_path / "out") as store:
        rows = store.rankings()
    assert len(rows) == 24 and {r["annotator"] for r in rows} == {"guard-sim"} and {r["kind"] for r in rows} == {"arena"}
    assert {m for r in rows for m in r["models"]} == {"step-0", "step-10", "step-20", "step-30", "step-40"}


def test_observe_runs_on_and_keeps_what_it_would_have_shipped(tmp_path):
    g, current, saved = _guard(tmp_path, mode="observe")
    stops, _ = _drive(g, current)
    assert stops == [False] * 6  # ran to the end
    gj = json.loads((tmp_path / "out" / "guard.json").read_text())
    assert gj["stop_step"] == 40 and gj["shipped_step"] == 10 and gj["mode"] == "observe"
    # step 50 wins every spot check, but came after the would-be stop: best/ stays step 10's
    assert gj["evals"][-1]["win_rate"] == 1.0 and saved == [0, 10, 20]
    assert gj["labels_used"] == 24 and gj["labels_total"] == 30


def test_gold_in_the_samples_changes_nothing(tmp_path):
    outs = []
    for i, gold in enumerate([None, 0.1, 99.0]):
        g, current, _ = _guard(tmp_path / str(i))
        _drive(g, current, gold=gold)
        outs.append(json.loads((tmp_path / str(i) / "out" / "guard.json").read_text()))
    assert outs[0] == outs[1] == outs[2]


def test_resume_from_state_dict_continues_exactly(tmp_path):
    g, current, _ = _guard(tmp_path / "a", mode="observe")
    _drive(g, current)
    straight = json.loads((tmp_path / "a" / "out" / "guard.json").read_text())

    g, current, _ = _guard(tmp_path / "b", mode="observe")
    _drive(g, current, run=RUN[:2])
    state = json.loads(json.dumps(g.state_dict()))  # JSON-able, as the checkpoint stores it
    g2, current2, _ = _guard(tmp_path / "b", mode="observe")
    g2.load_state_dict(state)
    _drive(g2, current2, run=RUN[2:])
    assert json.loads((tmp_path / "b" / "out" / "guard.json").read_text()) == straight


def test_spot_checks_rank_the_policy_beside_the_start_and_the_kept_candidates(tmp_path):
    # rankings of up to 4: the policy's, the start's and the two best kept candidates' responses to the
    # same prompt, ranked by the noiseless person (quality 5, 7, 8, 2, 2 at steps 0..40)
    g, current, _ = _guard(tmp_path, mode="observe", spot_size=4)
    _drive(g, current, run=RUN[:4])
    gj = json.loads((tmp_path / "out" / "guard.json").read_text())
    ev = {e["step"]: e for e in gj["evals"]}
    assert gj["spot_check_size"] == 4 and ev[0]["rankings"] == []
    # step 10: nothing kept yet but the start -> pairs; step 20: beside step 10 (kept); step 30: beside 20
    # and 10 (kept after 20, the best by the curve first), and ranked last by the person
    assert {tuple(r["order"]) for r in ev[10]["rankings"]} == {(10, 0)}
    assert {tuple(r["order"]) for r in ev[20]["rankings"]} == {(20, 10, 0)}
    assert {tuple(r["order"]) for r in ev[30]["rankings"]} == {(20, 10, 0, 30)}
    assert [len(ev[s]["rankings"]) for s in (10, 20, 30)] == [6, 6, 6] and gj["labels_used"] == 18  # a ranking: 1
    # the reward model (proxy 1, 2, 3 at steps 10, 20, 30) agrees on every pair with the policy's response
    # at 20 (it prefers 20 over 10 and the start, as the person does) and on none at 30
    assert [ev[s]["win_rate"] for s in (10, 20, 30)] == [1.0, 1.0, 0.0]
    assert [ev[s]["agreement"] for s in (10, 20, 30)] == [1.0, 1.0, 0.0]
    with FeedbackStore.for_run(tmp_path / "out") as store:
        rows = store.rankings()
    assert sorted({(r["kind"], len(r["response_ids"])) for r in rows}) == [("arena", 2), ("rank", 3), ("rank", 4)]
    assert [e["step"] for e in gj["exploits"]] == [30] * 5  # lost to the start, preferred by the RM
    with pytest.raises(UserError, match="at least 2 responses"):
        Guard("on", tmp_path / "x", Limits(), 4, spot_size=1)


def test_people_answer_on_the_page_or_the_run_goes_on(tmp_path):
    # no labeler and no wait: no one is asked, nothing is written to the store
    g, current, _ = _guard(tmp_path / "nobody", respond=False)
    _drive(g, current, run=RUN[:2])
    assert g.history[-1]["labels"] == 0 and not (tmp_path / "nobody" / "out" / "feedback.db").exists()

    # no one ranks: the eval waits wait_s, then goes on with no labels
    g, current, _ = _guard(tmp_path / "alone", respond=False, wait_s=0.3, poll_s=0.05)
    t = time.monotonic()
    _drive(g, current, run=RUN[:2])
    assert time.monotonic() - t >= 0.3 and g.history[-1]["labels"] == 0 and g.history[-1]["win_rate"] is None

    # a person (another thread, as the web app would) ranks the tasks as they appear
    out = tmp_path / "person" / "out"
    done = threading.Event()

    def person():
        with FeedbackStore.for_run(out) as store:
            me = store.annotator("alice")
            while not done.is_set():
                for task_id in store.open_tasks(me["id"], "arena"):
                    task = store.task(task_id)
                    order = sorted(task["responses"], key=lambda r: -quality("", r["text"]))
                    store.submit_ranking(task_id, me["id"], [r["id"] for r in order], source="human")
                time.sleep(0.02)
    FeedbackStore.for_run(out).close()  # create the schema before the person connects
    th = threading.Thread(target=person)
    th.start()
    try:
        g, current, _ = _guard(tmp_path / "person", respond=False, wait_s=20, poll_s=0.05)
        _drive(g, current, run=RUN[:2])
    finally:
        done.set()
        th.join()
    assert g.history[-1]["labels"] == 6 and g.history[-1]["win_rate"] == 1.0


# ---------------------------------------------------------------- end to end: PPO with the guard

def letters(prompt: str, response: str) -> float:
    """The e2e test's simulated person: a tiny model's text scores by its share of 'a's."""
    return response.count("a") / max(1, len(response))


def fewer_letters(prompt: str, response: str) -> float:
    return -letters(prompt, response)


@pytest.fixture(scope="module")
def guard_data(tmp_path_factory, tiny_base):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    d = tmp_path_factory.mktemp("guard")
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"What is {i} + {i + 3}?"}) + "\n" for i in range(16)))
    (d / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"Tell me about {i} cats."}) + "\n" for i in range(8)))
    # a reward model: the tiny base with a random scalar head, as in tests/test_rl.py
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_base)
    rm.config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rm.save_pretrained(d / "rm")
    tok.save_pretrained(d / "rm")
    return d


def _ppo(tiny_base, d, out, *extra):
    from rlhfkit.config import load_config
    from rlhfkit.stages import ppo

    # eval samples at temperature 1 (their stream is seeded per step), so the policy's responses
    # differ from the start's and the spot checks have pairs to ask about
    keys = [f"model={tiny_base}", f"prompts={d / 'prompts.jsonl'}", f"eval_prompts={d / 'eval.jsonl'}",
            f"out={out}", "max_steps=2", "eval_every=1", "eval_temperature=1.0", "prompts_per_step=4",
            "group_size=2", "max_new_tokens=8", "micro_batch_size=4", "ppo_epochs=1", "learning_rate=3e-3",
            f"reward=rm:{d / 'rm'}", "guard=observe", "guard_spot_checks=4", "guard_labeler=test_guard:letters",
            *extra]
    ppo.run(load_config(ppo.Config, sets=keys))
    return json.loads((out / "guard.json").read_text())


def test_ppo_with_the_guard_writes_guard_json_and_best_and_ignores_gold(tiny_base, guard_data, tmp_path):
    from conftest import metrics

    with_gold = _ppo(tiny_base, guard_data, tmp_path / "a", "gold=test_guard:letters")
    samples = [json.loads(x) for x in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    steps = sorted({s["step"] for s in samples})
    assert steps == [0, 1, 2] and all("gold" in s for s in samples)
    assert with_gold["shipped_step"] in steps and with_gold["mode"] == "observe"
    assert (tmp_path / "a" / "best" / "config.json").is_file() and (tmp_path / "a" / "best" / "model.safetensors").is_file()
    assert [e["step"] for e in with_gold["evals"]] == steps and with_gold["labels_used"] > 0
    with FeedbackStore.for_run(tmp_path / "a") as store:
        rows = store.rankings()
    assert len(rows) == with_gold["labels_total"] and {r["annotator"] for r in rows} == {"guard-sim"}
    m = metrics(tmp_path / "a" / "metrics.jsonl")
    assert {"guard/win_rate", "guard/kl", "guard/distinct_2", "guard/labels_used"} <= set(m[-1])

    # the gold key removed, or another gold: every guard decision and guard.json the same
    assert _ppo(tiny_base, guard_data, tmp_path / "b") == with_gold
    assert _ppo(tiny_base, guard_data, tmp_path / "c", "gold=test_guard:fewer_letters") == with_gold
    guard_metrics = [{k: v for k, v in r.items() if k.startswith("guard/")} for r in metrics(tmp_path / "a" / "metrics.jsonl")]
    assert guard_metrics == [{k: v for k, v in r.items() if k.startswith("guard/")}
                             for r in metrics(tmp_path / "b" / "metrics.jsonl")]


def test_guard_on_stops_the_run(tiny_base, guard_data, tmp_path):
    # a KL budget no policy can keep: the first eval whose rollout KL is above 0 (step 1's rollout
    # still comes from the starting policy) stops the run there, and the steps after it never run
    from conftest import metrics

    gj = _ppo(tiny_base, guard_data, tmp_path / "on", "guard=on", "guard_kl_budget=1e-9", "max_steps=6",
              "guard_win_drop=0", "guard_agreement_drop=0")  # only the KL rule
    m = metrics(tmp_path / "on" / "metrics.jsonl")
    first_over = next(r["step"] for r in m if r.get("policy/kl_ref", 0.0) > 1e-9)
    assert gj["stop_step"] == first_over < 6 and "kl_budget" in gj["reason"]
    assert [r["step"] for r in m] == list(range(first_over + 1))
    assert gj["shipped_step"] < first_over and (tmp_path / "on" / "best" / "config.json").is_file()
