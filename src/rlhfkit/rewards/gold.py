"""The hidden "gold" human preference over the world's animal jokes.

Plug it in by import path: `rlhfkit.rewards.gold:joke`, signature
`fn(prompt: str, response: str) -> float`. The simulated labeler ranks samples with it, and
the demo plots it beside the reward model's score to show over-optimisation: the reward
model is a neural net imitating these rankings, and RL eventually finds responses it likes
that this function (the "person") does not.

    score = (0.25 topic + 0.25 pun + 0.20 structure + 0.20 brevity + 0.10 ends_cleanly) * no_repeat

in [0, 1]; a good joke ("Why did the pelican get kicked out of the restaurant? It had a very
big bill!") scores 1.0 and "the the the the" scores 0.0. The parts, each in [0, 1]:

- topic: the response names the animal the prompt asks about (singular or plural);
- pun: the punchline (the text after the setup question) holds a word from that animal's pun
  table in `rlhfkit.world.ANIMAL` ("bill" for pelicans, "moo-vies" for cows);
- structure: 0.5 for a setup question (3+ words ending in "?"), 0.5 more for a punchline after
  it that is not itself a question;
- brevity: 1 up to 30 words, falling linearly to 0 at 60; short answers ramp up to 1 at 5 words;
- ends_cleanly: ends with . ! or ? and not on a dangling word ("the", "and", "very" ...);
- no_repeat: a multiplier, not a term, because people hate a stutter however good the rest
  is: 1 - 2 * (share of words equal to the previous word) - 2.5 * (share of repeated word
  trigrams) - 2 * (share of words, above 1/3, taken by the most common content word).

The animal is the first one the prompt names among `rlhfkit.world.ANIMAL`, which holds the
out-of-distribution animals too (`OOD_ANIMALS`: kangaroo, zebra, ... named by no training
file): a kangaroo prompt wants a kangaroo and a kangaroo pun, and a pelican joke scores 0.5
there (off topic, no pun), as it would for any other animal. A prompt that names no known
animal accepts any animal for topic and pun.
"""

from __future__ import annotations

import re
from collections import Counter

from rlhfkit.world import ANIMAL, find_animal, has_pun, mentions

WEIGHTS = {"topic": 0.25, "pun": 0.25, "structure": 0.20, "brevity": 0.20, "ends_cleanly": 0.10}
_DANGLING = frozenset("the a an and or but to of with because its his her my your very is was at in on for".split())
_STOP = frozenset("the a an and or but to of with because it its is was at in on for that this they you i".split())
_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")
_QUESTION = re.compile(r"[^?.!]*\?")  # the first sentence that ends in "?"


def _clip(x: float) -> float:
    return min(1.0, max(0.0, x))


def _split(response: str) -> tuple[str | None, str]:
    """-> (setup question or None, the text after it: the punchline)."""
    for m in _QUESTION.finditer(response):
        if len(_WORD.findall(m.group().lower())) >= 3:
            return m.group(), response[m.end():]
    return None, response


def no_repeat(words: list[str]) -> float:
    """1.0 for varied text, 0.0 for a loop like "the the the the" (see module docstring)."""
    n = len(words)
    if n < 2:
        return 1.0
    adjacent = sum(a == b for a, b in zip(words, words[1:])) / (n - 1)
    trigrams = list(zip(words, words[1:], words[2:]))
    repeated_trigrams = 1 - len(set(trigrams)) / len(trigrams) if trigrams else 0.0
    content = Counter(w for w in words if w not in _STOP)
    top = max(content.values(), default=0)
    dominance = max(0.0, top / n - 1 / 3) if top >= 3 else 0.0
    return _clip(1 - 2 * adjacent - 2.5 * repeated_trigrams - 2 * dominance)


def joke_components(prompt: str, response: str) -> dict[str, float]:
    """The parts of the gold score (each in [0, 1]) and their combination, `total`."""
    animal = find_animal(prompt)
    animals = [animal] if animal else list(ANIMAL)
    text = response.strip()
    words = _WORD.findall(text.lower())
    setup, punchline = _split(text)
    has_punchline = setup is not None and bool(_WORD.search(punchline.lower())) and not punchline.rstrip().endswith("?")
    n = len(words)
    last = text.rstrip("\"')").rstrip()
    parts = {
        "topic": float(any(mentions(text, a) for a in animals)),
        "pun": float(has_punchline and any(has_pun(punchline, a) for a in animals)),
        "structure": 0.5 * (setup is not None) + 0.5 * has_punchline,
        "brevity": min(n / 5, 1.0) if n <= 30 else _clip((60 - n) / 30),
        "ends_cleanly": float(last[-1:] in (".", "!", "?") and bool(words) and words[-1] not in _DANGLING),
        "no_repeat": no_repeat(words),
    }
    parts["total"] = sum(w * parts[k] for k, w in WEIGHTS.items()) * parts["no_repeat"]
    return parts


def joke(prompt: str, response: str) -> float:
    """Gold preference for a joke response in [0, 1] (weights in the module docstring)."""
    return joke_components(prompt, response)["total"]
