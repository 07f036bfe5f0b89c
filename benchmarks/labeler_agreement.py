"""How often two simulated annotators agree, by Plackett-Luce temperature, on the world's jokes.

    PYTHONPATH=src python benchmarks/labeler_agreement.py [--tasks 400] [--k 4]

People agree on 65-80% of pairs (Ziegler et al. 2019, Stiennon et al. 2020, AlpacaFarm); the
demo's labeler uses `rlhfkit.feedback.labelers.PEOPLE_TEMPERATURE`, picked from this sweep.
The tasks are K SFT-style jokes per prompt (rlhfkit.world_jokes.sft_joke: the mix the SFT model
learns to imitate), so the gold-score spread matches the demo's ranking tasks as far as the SFT
model imitates its data.
"""

from __future__ import annotations

import argparse
import random
import statistics

from rlhfkit.feedback.labelers import PEOPLE_TEMPERATURE, SimulatedLabeler
from rlhfkit.feedback.stats import pairwise_agreement
from rlhfkit.rewards.gold import joke
from rlhfkit.world import joke_ask
from rlhfkit.world_data import TRAIN_ANIMALS
from rlhfkit.world_jokes import sft_joke


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", type=int, default=400)
    p.add_argument("--k", type=int, default=4)
    a = p.parse_args()
    rng = random.Random(0)
    tasks = []
    for _ in range(a.tasks):
        animal = rng.choice(TRAIN_ANIMALS)
        tasks.append((joke_ask(rng, animal), [sft_joke(rng, animal)[0] for _ in range(a.k)]))
    golds = [joke(q, r) for q, rs in tasks for r in rs]
    print(f"{a.tasks} tasks x {a.k} jokes; gold mean {statistics.fmean(golds):.3f}, std {statistics.pstdev(golds):.3f}")
    print("temperature  pairwise agreement of two annotators")
    for t in (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30, 0.40):
        one, two = SimulatedLabeler(joke, t, 0, "sim-1"), SimulatedLabeler(joke, t, 0, "sim-2")
        ag = statistics.fmean(pairwise_agreement(one.rank(q, rs).order, two.rank(q, rs).order) for q, rs in tasks)
        mark = "  <- PEOPLE_TEMPERATURE" if t == PEOPLE_TEMPERATURE else ""
        print(f"  {t:9.2f}  {ag:.3f}{'  (people: 0.65-0.80)' if 0.65 <= ag <= 0.80 else ''}{mark}")


if __name__ == "__main__":
    main()
