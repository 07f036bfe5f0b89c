"""Three more hidden "people" for the regret study (benchmarks/regret.py), beside rlhfkit.rewards.gold:joke.

Each is `fn(prompt, response) -> float`, higher is better, pluggable as `--labeler golds:NAME`
(run from benchmarks/, or with benchmarks/ on PYTHONPATH). They were written to want different
things from the same SFT samples, so their rankings disagree with the joke gold and with each other:

- punchy:   short, punchy jokes: a best length of 6-14 words, an exclamation at the end, no
            rambling second question; length matters most to this person.
- animal:   wants the prompt's animal named (and no other animal: the SFT model often answers
            a goat prompt with a cat), and hates repetition (share of distinct words).
- wordplay: a question-and-answer shape, any animal's pun in an answer no longer than the
            question, and an answer that echoes a word from the question (a callback);
            indifferent to the topic, and to length up to 40 words.
"""

from __future__ import annotations

import re

from rlhfkit.rewards.gold import _STOP as _JOKE_STOP
from rlhfkit.rewards.gold import _split, no_repeat
from rlhfkit.world import ANIMAL, find_animal, has_pun, mentions

_WORD = re.compile(r"[a-z0-9']+(?:-[a-z0-9']+)*")
_STOP = _JOKE_STOP | {"do", "did", "what", "why", "how", "who"}  # words a callback does not count


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def punchy(prompt: str, response: str) -> float:
    """Short and punchy: length 6-14 words best, '!' ending, one question at most; in [0, 1]."""
    text = response.strip()
    n = len(_words(text))
    if n == 0:
        return 0.0
    length = min(1.0, n / 6) if n <= 14 else max(0.0, 1 - (n - 14) / 16)
    bang = 1.0 if text.endswith("!") else 0.4 if text[-1:] in ".?" else 0.0
    one_question = 1.0 if text.count("?") <= 1 else 0.3
    return (0.55 * length + 0.25 * bang + 0.20 * one_question) * no_repeat(_words(text))


def animal(prompt: str, response: str) -> float:
    """Names the prompt's animal, no other animal, and no repetition; in [0, 1]."""
    want = find_animal(prompt)
    text = response.strip()
    words = _words(text)
    if not words:
        return 0.0
    named = float(mentions(text, want)) if want else float(any(mentions(text, a) for a in ANIMAL))
    others = sum(mentions(text, a) for a in ANIMAL if a != want) if want else 0
    distinct = len(set(words)) / len(words)
    return max(0.0, 0.5 * named - 0.2 * min(others, 2) + 0.5 * distinct ** 2 * no_repeat(words))


def wordplay(prompt: str, response: str) -> float:
    """Question-and-answer shape, any pun in the answer, the answer echoing the question; in [0, 1]."""
    text = response.strip()
    words = _words(text)
    if not words or len(words) > 40:
        return 0.0
    setup, answer = _split(text)
    if setup is None:
        return 0.1 * no_repeat(words)
    a_words = _words(answer)
    has_answer = bool(a_words) and not answer.rstrip().endswith("?")
    pun = float(has_answer and any(has_pun(answer, a) for a in ANIMAL))  # any animal's pun: topic is not its care
    callback = float(has_answer and bool((set(_words(setup)) - _STOP) & (set(a_words) - _STOP)))
    short_answer = float(has_answer and len(a_words) <= len(_words(setup)))
    return (0.2 + 0.1 * has_answer + 0.2 * pun + 0.3 * callback + 0.2 * short_answer) * no_repeat(words)
