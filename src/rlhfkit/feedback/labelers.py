"""Labelers: whoever ranks K responses to a prompt — a person or a stand-in, one interface.

    judgement = labeler.rank(prompt, ["joke a", "joke b", ...])
    judgement.order       # indices into the responses, best first
    judgement.all_bad     # "none of these is acceptable"

`SimulatedLabeler` stands in for a person: a hidden gold score per response, and noise like
people's. The order is drawn from a Plackett-Luce model (Plackett 1975, Luce 1959): pick the
best with probability softmax(gold / temperature) over all responses, then the next best the
same way over the rest, and so on. Temperature 0 is a perfect labeler; large temperatures
approach random orders. Gold functions are plain `fn(prompt: str, response: str) -> float`,
named by import path (`rlhfkit.rewards.gold:joke`), so a test or a user can plug in their own.

`simulate(store, gold, ...)` answers a store's queued tasks as annotators "sim-1", "sim-2", ...,
each with its own seeded noise stream, respecting every task's overlap. `answer(store, task_ids,
labeler, annotator)` answers just the named tasks (the guard's spot checks).

How noisy people are: two human annotators agree on about 65-80% of comparison pairs
(Ziegler et al. 2019; Stiennon et al. 2020: ~72-77% between labelers; AlpacaFarm, Dubois et al.
2023: 66%). `PEOPLE_TEMPERATURE` is the temperature at which two simulated annotators agree that
often on the embedded world's jokes (K = 4 SFT-style jokes per task, the demo's ranking task):
measured pairwise agreement 0.714 at 0.15 (0.784 at 0.10, 0.641 at 0.25; the sweep is
`benchmarks/labeler_agreement.py`, the fixed-seed check is in tests/test_feedback_labelers.py).
"""

from __future__ import annotations

import importlib
import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Protocol, TextIO

from rlhfkit.files import UserError

Gold = Callable[[str, str], float]
PEOPLE_TEMPERATURE = 0.15  # two simulated annotators agree on ~71% of pairs: people's 65-80%


@dataclass
class Judgement:
    order: list[int]  # indices into the responses, best first
    all_bad: bool = False
    tie: bool = False  # 2-way comparisons only: "about the same"
    seconds: float | None = None


class Labeler(Protocol):
    name: str

    def rank(self, prompt: str, responses: list[str]) -> Judgement: ...


def load_gold(path: str) -> Gold:
    """`module:function` -> the function; a bad path is a one-line UserError."""
    module_name, sep, fn_name = path.partition(":")
    if not sep or not module_name or not fn_name:
        raise UserError(f"labeler {path!r}: expected an import path module:function (e.g. rlhfkit.rewards.gold:joke)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise UserError(f"labeler {path!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, fn_name, None)
    if fn is None:
        raise UserError(f"labeler {path!r}: module {module_name!r} has no attribute {fn_name!r}")
    if not callable(fn):
        raise UserError(f"labeler {path!r}: {fn_name!r} is not a function")
    return fn


def plackett_luce_order(scores: list[float], temperature: float, rng: random.Random) -> list[int]:
    """Sample a best-first order of indices: repeatedly draw the next best from
    softmax(score / temperature) over those left. temperature <= 0: sort by score (ties keep input order)."""
    if temperature <= 0:
        return sorted(range(len(scores)), key=lambda i: -scores[i])
    left = list(range(len(scores)))
    order = []
    while left:
        logits = [scores[i] / temperature for i in left]
        top = max(logits)  # subtract the max so exp never overflows
        weights = [math.exp(z - top) for z in logits]
        pick = rng.choices(range(len(left)), weights=weights)[0]
        order.append(left.pop(pick))
    return order


class SimulatedLabeler:
    """A noisy stand-in for a person: Plackett-Luce over gold scores, its own seeded stream.

    all_bad_below: flag "all bad" when even the best gold score is below this (None: never).
    tie_margin: for 2 responses, call a tie when the gold scores differ by at most this (None: never).
    """

    def __init__(self, gold: Gold, temperature: float = 0.5, seed: int | str = 0, name: str = "sim",
                 all_bad_below: float | None = None, tie_margin: float | None = None):
        self.gold, self.temperature, self.name = gold, float(temperature), name
        self.all_bad_below, self.tie_margin = all_bad_below, tie_margin
        # a string seed is hashed with sha512 by `random`, so "0:sim-2" is a stable, separate stream
        self.rng = random.Random(f"{seed}:{name}")

    def rank(self, prompt: str, responses: list[str]) -> Judgement:
        scores = [float(self.gold(prompt, r)) for r in responses]
        order = plackett_luce_order(scores, self.temperature, self.rng)
        all_bad = self.all_bad_below is not None and max(scores) < self.all_bad_below
        tie = self.tie_margin is not None and len(scores) == 2 and abs(scores[0] - scores[1]) <= self.tie_margin
        return Judgement(order=order, all_bad=all_bad, tie=tie)


class ConsoleLabeler:
    """A person at a terminal: shows the responses numbered 1..K and reads an order such as
    `3 1 2` (best first; `!` at the end marks all bad; `=` for a tie of two)."""

    def __init__(self, name: str, stdin: TextIO, stdout: TextIO):
        self.name, self.stdin, self.stdout = name, stdin, stdout

    def rank(self, prompt: str, responses: list[str]) -> Judgement:
        print(f"\nPROMPT: {prompt}", file=self.stdout)
        for i, r in enumerate(responses, 1):
            print(f"  [{i}] {r}", file=self.stdout)
        start = time.monotonic()
        while True:
            print(f"order, best first (e.g. {' '.join(map(str, range(1, len(responses) + 1)))}): ",
                  end="", file=self.stdout, flush=True)
            line = self.stdin.readline()
            if not line:
                raise UserError("input ended before the ranking was complete")
            text = line.strip()
            all_bad, tie = text.endswith("!"), text == "=" and len(responses) == 2
            if tie:
                return Judgement(order=[0, 1], tie=True, seconds=time.monotonic() - start)
            try:
                order = [int(t) - 1 for t in text.rstrip("!").replace(",", " ").split()]
            except ValueError:
                order = []
            if sorted(order) == list(range(len(responses))):
                return Judgement(order=order, all_bad=all_bad, seconds=time.monotonic() - start)
            print(f"  give each of 1..{len(responses)} once", file=self.stdout)


def label_task(store, task: dict, labeler: Labeler, annotator_id: int, source: str) -> int:
    """Ask the labeler about one task from the store and submit its answer; -> ranking id."""
    ids = [r["id"] for r in task["responses"]]
    j = labeler.rank(task["prompt"], [r["text"] for r in task["responses"]])
    ranking_id, _ = store.submit_ranking(task["task_id"], annotator_id, [ids[i] for i in j.order],
                                         all_bad=j.all_bad, seconds=j.seconds, source=source, tie=j.tie)
    return ranking_id


def answer(store, task_ids: list[int], labeler: Labeler, annotator: str, source: str = "simulated") -> int:
    """Rank the named tasks (those this annotator has not ranked yet) as `annotator`; -> rankings added."""
    who = store.annotator(annotator, role=source)
    todo = set(store.open_tasks(who["id"], "rank")) | set(store.open_tasks(who["id"], "arena"))
    added = 0
    for task_id in task_ids:
        if task_id in todo:
            label_task(store, store.task(task_id), labeler, who["id"], source)
            added += 1
    return added


def simulate(store, gold: Gold, annotators: int = 3, temperature: float = 0.5, seed: int = 0,
             kinds: tuple[str, ...] = ("rank", "arena"), all_bad_below: float | None = None,
             tie_margin: float | None = None) -> dict[str, int]:
    """Answer every open task as simulated annotators sim-1..sim-N; -> rankings added per annotator.

    Round robin: each annotator in turn takes its oldest open task, so with overlap 1 the
    tasks spread evenly, and with overlap N every annotator ranks every task."""
    if annotators < 1:
        raise UserError(f"--annotators must be >= 1, got {annotators}")
    sims = []
    for i in range(1, annotators + 1):
        who = store.annotator(f"sim-{i}", role="simulated")
        sims.append((who, SimulatedLabeler(gold, temperature, seed, who["name"], all_bad_below, tie_margin)))
    added = {who["name"]: 0 for who, _ in sims}
    for kind in kinds:
        busy = True
        while busy:
            busy = False
            for who, labeler in sims:
                task = store.next_task(who["id"], kind)
                if task is not None:
                    label_task(store, task, labeler, who["id"], "simulated")
                    added[who["name"]] += 1
                    busy = True
    return added
