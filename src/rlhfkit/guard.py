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
  standard error) and the reward model's agreement with the labeler on those pairs. Without a
  `guard_labeler` and with `guard_wait_s = 0` (the default) no one is asked, and the guard
  runs on its label-free signals.

The guard never sees a gold score: it reads a sample's step, prompt, response and proxy reward
only, and the labels only as rankings in the store (`labels_used` counts them).

Stop rules (STOP_RULES, each -> a reason or None) fire on that evidence; `guard = "on"` ends the
run at the eval where one fires; `observe` runs on and records the step it would have stopped
at, with the checkpoint it would have shipped then. The checkpoint shipped follows
SHIPPED_CRITERION, using only evals up to the stop, and is written as OUT/best/ (an HF dir)
with OUT/guard.json.
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
SHIPPED_CRITERION = ("the eval step with the highest spot-check win rate over the starting policy (step 0, the "
                     "start itself, counts as 0.5), among the eval steps up to the stop at which no stop rule fired; "
                     "the earliest on a tie (the least drift for the same evidence); with no spot-check labels at "
                     "all, the last eval step before the stop")


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
    guard_win_drop: float = key(2.0, "stop when the spot-check win rate falls from its best by more than this many "
                                     "pooled standard errors of the difference (0: off)")
    guard_agreement_drop: float = key(0.25, "stop when the reward model's agreement with the labeler on spot checks "
                                            "falls this far below its best, and by more than 2 standard errors "
                                            "(0: off)")
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


def fell_from_best(history: list[dict], key_: str, z: float, min_drop: float = 0.0) -> str | None:
    """The latest rate `key_` fell below its best so far by more than z pooled standard errors
    (a one-sided two-proportion test: z = 2 is ~2% false alarms per eval for an unchanged rate)
    and by more than min_drop; -> a reason or None. A rate counts from its `labels` comparisons;
    step 0's win rate (the start against itself) is exact."""
    def n(h):
        return math.inf if h is history[0] and key_ == "win_rate" else h["labels"]
    seen = [h for h in history if h.get(key_) is not None and n(h)]
    if len(seen) < 2 or seen[-1] is not history[-1]:
        return None
    now = seen[-1]
    best = max(seen[:-1], key=lambda h: h[key_])
    drop, limit = best[key_] - now[key_], max(z * pooled_se(best[key_], n(best), now[key_], n(now)), min_drop)
    if drop > limit:
        return (f"{key_} fell from {best[key_]:.3f} (step {best['step']}) to {now[key_]:.3f}: "
                f"a drop of {drop:.3f} > {limit:.3f}")
    return None


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


def rule_win_rate(h: list[dict], lim: Limits) -> str | None:
    if not lim.win_drop:
        return None
    return fell_from_best(h, "win_rate", lim.win_drop)


def rule_agreement(h: list[dict], lim: Limits) -> str | None:
    if not lim.agreement_drop:
        return None
    return fell_from_best(h, "agreement", 2.0, lim.agreement_drop)


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


def choose_shipped(history: list[dict]) -> int:
    """SHIPPED_CRITERION over eval records {"step", "win_rate", "labels", "fired"}; history[0] is step 0."""
    ok = [h for h in history if not h["fired"]] or history[:1]
    if not any(h["labels"] for h in history):
        return ok[-1]["step"]
    scored = [h for h in ok if h is history[0] or h["labels"]]
    return max(scored, key=lambda h: (h["win_rate"], -h["step"]))["step"]


def replay(evals: list[dict], limits: Limits) -> tuple[int | None, str, int]:
    """The decisions the guard would have made with other limits, from guard.json's `evals` of an
    observe run (its evidence at every eval does not depend on the rules): -> (stop step or None,
    reason, shipped step). Exact, because each decision reads only the evals up to it."""
    seen: list[dict] = []
    for e in evals:
        seen.append({**e, "fired": []})
        fired = {name: r for name, fn in STOP_RULES.items() if (r := fn(seen, limits))}
        seen[-1]["fired"] = sorted(fired)
        if fired:
            return e["step"], "; ".join(f"{k}: {v}" for k, v in fired.items()), choose_shipped(seen)
    return None, "no stop rule fired", choose_shipped(seen)


# ----------------------------------------------------------------------------- the guard

class Guard:
    """Guard state across evals. `respond(store, task_ids)` answers spot-check tasks through the
    store (a simulated person) or is None (people; the guard waits up to wait_s for them).
    `save_best(dir)` writes the current policy as an HF dir; `member_scores(records, texts)`
    -> (M, n) ensemble scores or None."""

    def __init__(self, mode: str, out: str | Path, limits: Limits, spot_checks: int, store_spec: str = "",
                 respond: Callable | None = None, wait_s: float = 0.0, seed: int = 0,
                 save_best: Callable[[Path], None] | None = None, member_scores: Callable | None = None,
                 is_main: bool = True, poll_s: float = 2.0):
        if mode not in ("on", "observe"):
            raise UserError(f"guard mode {mode!r}: a Guard runs on or observe")
        self.mode, self.out, self.limits, self.spot_checks = mode, Path(out), limits, spot_checks
        self.store_spec, self.respond, self.wait_s, self.seed, self.poll_s = store_spec, respond, wait_s, seed, poll_s
        self.save_best, self.member_scores, self.is_main = save_best, member_scores, is_main
        self._store = None
        self.start: dict | None = None  # the starting policy: responses and rewards per eval prompt, signals
        self.history: list[dict] = []
        self.tasks: list[dict] = []  # spot checks asked: step, task and response ids, RM margin, texts
        self.stop_step: int | None = None
        self.reason = ""
        self.shipped_step: int | None = None
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
        fired = {name: r for name, fn in STOP_RULES.items() if (r := fn(self.history, self.limits))}
        rec["fired"] = sorted(fired)
        self.labels_total += len(labels)
        stop_now = False
        if self.stop_step is None:
            self.labels_used += len(labels)
            if fired:
                self.stop_step, self.reason, stop_now = step, "; ".join(f"{k}: {v}" for k, v in fired.items()), True
            shipped = choose_shipped(self.history)
            if shipped == step and self.save_best is not None and self.is_main:
                self.save_best(self.out / "best")  # the policy at this eval is the one to ship
            self.shipped_step = shipped
        self.write()
        metrics = {f"guard/{k}": float(v) for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}
        metrics.update({"guard/labels_used": float(self.labels_used), "guard/shipped_step": float(self.shipped_step),
                        "guard/stop": float(stop_now)})
        return metrics, stop_now and self.mode == "on"

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
                "labels_total": self.labels_total, "criterion": SHIPPED_CRITERION,
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
                "reason": self.reason, "shipped_step": self.shipped_step, "labels_used": self.labels_used,
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
                 seed, save_best, ensemble_scorer(reward), is_main)
