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
- spot checks: `guard_spot_checks` fresh rankings per eval, each of `guard_spot_check_size`
  responses to one held-out prompt: the policy's, the starting policy's, and those of the kept
  candidates (the evals the guard would ship now) to the same prompt, written as ranking tasks
  (arena tasks for 2) into a feedback store and answered by whoever ranks in this run (`guard_labeler`: a simulated person that
  ranks through the store; empty: people on the ranking page, waited for up to
  `guard_wait_s`). From them the labeler's win rate of the policy over the start (with its
  standard error), the win curve fitted to all of them so far (`win_curve`: Plackett-Luce over
  the rankings, guard/win_fit) and the reward model's agreement with the labeler on the policy's
  place in them. A ranking of 4 costs one label, as each of the reward model's rankings of 4 did,
  and tells the curve about 3 pairs' worth. Without a
  `guard_labeler` and with `guard_wait_s = 0` (the default) no one is asked, and the guard
  runs on its label-free signals.

The guard never sees a gold score: it reads a sample's step, prompt, response and proxy reward
only, and the labels only as rankings in the store (`labels_used` counts them).

Stop rules (STOP_RULES, each -> a reason or None) fire on that evidence; `guard = "on"` ends the
run at the eval where one fires; `observe` runs on and records the step it would have stopped
at, with the checkpoint it would have shipped then. The checkpoint shipped follows
SHIPPED_CRITERION, using only evals up to the stop, and is written as OUT/best/ (an HF dir)
with OUT/guard.json. Later evidence can move the choice back to an earlier eval, so the
`guard_keep` most promising evals' checkpoints wait in OUT/candidates/. The decisions themselves
(signals, the win curve, the stop rules, the step to ship, replay) are pure functions of the eval
records, in `rlhfkit.guard_rules`; this module asks, stores and saves.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhfkit.config import key
from rlhfkit.files import UserError, atomic_write_text
from rlhfkit.guard_rules import (
    SHIPPED_CRITERION,
    STOP_RULES,
    Limits,
    agreement_outcomes,
    choose_shipped,
    distinct_n,
    fitted_logit,
    keep_after,
    mean,
    outcome,
    rate_with_noise,
    repetition_rate,
    rivals,
    sigmoid,
    win_curve,
    words,
)

MODES = ("on", "observe", "off")
@dataclass
class GuardKeys:
    """The guard's config keys; RLConfig inherits them (ppo, grpo, rloo)."""
    guard: str = key("", "over-optimisation guard: on | observe | off (empty: on when the reward is rm:..., else off)")
    guard_kl_budget: float = key(25.0, "stop when the KL to the reference (nats per sequence) exceeds this "
                                       "(0: no budget)")
    guard_disagreement_rise: float = key(2.0, "stop when the ensemble's std on the policy's samples exceeds this "
                                              "multiple of its value on the starting policy's (0: off)")
    guard_spot_checks: int = key(16, "fresh rankings per eval of the policy's response beside the starting "
                                     "policy's (0: none)")
    guard_spot_check_size: int = key(4, "responses a spot check ranks: the policy's, the start's and up to K - 2 "
                                        "kept candidates' for the same prompt (2: the policy against the start)")
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




# ----------------------------------------------------------------------------- the guard

class Guard:
    """Guard state across evals. `respond(store, task_ids)` answers spot-check tasks through the
    store (a simulated person) or is None (people; the guard waits up to wait_s for them).
    `save_best(dir)` writes the current policy as an HF dir; `member_scores(records, texts)`
    -> (M, n) ensemble scores or None."""

    def __init__(self, mode: str, out: str | Path, limits: Limits, spot_checks: int, store_spec: str = "",
                 respond: Callable | None = None, wait_s: float = 0.0, seed: int = 0,
                 save_best: Callable[[Path], None] | None = None, member_scores: Callable | None = None,
                 is_main: bool = True, poll_s: float = 2.0, keep: int = 3, spot_size: int = 4):
        if mode not in ("on", "observe"):
            raise UserError(f"guard mode {mode!r}: a Guard runs on or observe")
        if spot_size < 2:
            raise UserError(f"guard_spot_check_size = {spot_size}: a spot check ranks at least 2 responses")
        self.mode, self.out, self.limits, self.spot_checks = mode, Path(out), limits, spot_checks
        self.store_spec, self.respond, self.wait_s, self.seed, self.poll_s = store_spec, respond, wait_s, seed, poll_s
        self.save_best, self.member_scores, self.is_main, self.keep = save_best, member_scores, is_main, keep
        self.spot_size = spot_size
        self._store = None
        self.start: dict | None = None  # the starting policy: responses and rewards per eval prompt, signals
        self.history: list[dict] = []
        self.candidates: list[dict] = []  # the kept evals' {"step", "responses", "rewards"}: what spot checks rank
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
        labels, agreements, rankings = self._spot_check(step, records, seen) if self.history else ([], [], [])
        win, win_se = rate_with_noise(labels) if self.history else (0.5, 0.0)
        agree, agree_se = rate_with_noise(agreements)
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
            "rankings": rankings,
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
            self.candidates = [c for c in self.candidates if c["step"] in self.kept]
            if step in self.kept and step:
                self.candidates.append({"step": step, "responses": texts, "rewards": [s["reward"] for s in seen]})
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
    def _spot_check(self, step: int, records: list[dict], seen: list[dict]) -> tuple[list, list, list]:
        """Ask up to spot_checks fresh rankings (the policy, the start and the best kept candidates,
        same prompt), answered through the store; -> (the policy's outcome against the start, the
        reward model's agreement with the labeler on the policy's place, the ranking {"order":
        [eval steps, best first], "tie"}) per answered ranking."""
        if not self.spot_checks or (self.respond is None and self.wait_s <= 0):
            return [], [], []  # no one to ask
        result = None
        if self.is_main:
            differ = [i for i, s in enumerate(seen) if s["response"] != self.start["responses"][i]]
            rng = random.Random(f"{self.seed}:guard:{step}")
            chosen = sorted(rng.sample(differ, min(self.spot_checks, len(differ))))
            cands = {c["step"]: c for c in self.candidates}
            others = [cands[s] for s in rivals(self.history, self.kept, self.spot_size - 2) if s in cands]
            asked = []
            for i in chosen:
                items = [(step, seen[i]["response"], seen[i]["reward"]),
                         (0, self.start["responses"][i], self.start["rewards"][i])]
                for c in others:  # a rival whose response repeats one already in the task says nothing new
                    if c["responses"][i] not in {t for _, t, _ in items}:
                        items.append((c["step"], c["responses"][i], c["rewards"][i]))
                asked.append(self._ask(step, records[i], seen[i]["prompt"], items, i, rng))
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

    def _ask(self, step: int, record: dict, prompt: str, items: list[tuple[int, str, float]], i: int,
             rng: random.Random) -> dict:
        """One ranking task of `items` (eval step, response, proxy reward), the policy's first."""
        store = self.store()
        meta = {"guard": {"step": step, "eval_index": i}}
        if "messages" in record:
            meta["messages"] = record["messages"]
        pid = store.add_prompt(prompt, meta)
        ids = [store.add_response(pid, text, model=f"step-{s}") for s, text, _ in items]
        shown = rng.sample(range(len(items)), len(items))  # no place for position bias
        task_id = store.create_task(pid, [ids[j] for j in shown], kind="arena" if len(items) == 2 else "rank")
        ask = {"step": step, "task_id": task_id, "items": [[ids[j], s, r] for j, (s, _, r) in enumerate(items)],
               "prompt": prompt, "response": items[0][1], "start_response": items[1][1]}
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

    def _read(self, asked: list[dict]) -> tuple[list[float], list[float], list[dict]]:
        by_task = {a["task_id"]: a for a in asked}
        labels, agreements, rankings = [], [], []
        for r in self.store().rankings():
            a = by_task.get(r["task_id"])
            if a is None:
                continue  # every ranking of the task counts (several people may answer one)
            step_of = {rid: s for rid, s, _ in a["items"]}
            reward = {s: x for _, s, x in a["items"]}
            order = [step_of[rid] for rid in r["response_ids"]]  # eval steps, best first
            place = {s: j for j, s in enumerate(order)}
            me = a["step"]
            labels.append(outcome(place[me] < place[0], r["tie"]))
            # the reward model's preference (its margin) against the labeler's, for each response ranked
            # beside the policy's
            agreements.append(mean(agreement_outcomes([reward[me] - reward[s] for s in order if s != me],
                                                      [outcome(place[me] < place[s], r["tie"])
                                                       for s in order if s != me])))
            rankings.append({"order": order, "tie": bool(r["tie"])})
            margin = reward[me] - reward[0]
            if labels[-1] == 0.0 and margin > 0:  # the RM preferred what the person did not
                self.exploits.append({"step": me, "prompt": a["prompt"], "response": a["response"],
                                      "start_response": a["start_response"], "margin": margin})
        return labels, agreements, rankings

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
                "spot_checks_per_eval": self.spot_checks, "spot_check_size": self.spot_size, "evals": self.history,
                # the top exploits seen up to the stop: lost to the start, preferred by the reward model
                "exploits": sorted((e for e in self.exploits if self.stop_step is None or e["step"] <= self.stop_step),
                                   key=lambda e: -e["margin"])[:5]}

    def write(self) -> None:
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out / "guard.json", json.dumps(self.summary(), indent=1) + "\n")

    def state_dict(self) -> dict:
        return {"start": self.start, "history": self.history, "candidates": self.candidates, "tasks": self.tasks,
                "stop_step": self.stop_step,
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
                 seed, save_best, ensemble_scorer(reward), is_main, keep=cfg.guard_keep,
                 spot_size=cfg.guard_spot_check_size)
