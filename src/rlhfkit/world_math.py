"""Arithmetic for the embedded synthetic world (`rlhfkit.world`): written-out sums for the corpus and SFT.

Two-digit operand pairs (`held_out_pairs`) are reserved for prompts_math_eval.jsonl: no corpus
document, SFT answer or training prompt uses them. Only the standard library is imported.
"""

from __future__ import annotations

import random

from rlhfkit.world_data import BOYS, GIRLS, MATH_QUESTIONS, OPS, cap, number_words


# ---------------------------------------------------------------------------------------
# Arithmetic: written out, with two-digit operand pairs held out for evaluation

def _eligible(n: int) -> bool:
    # only these can be held out: worked steps use round tens and single digits, never these
    return 11 <= n <= 99 and n % 10 != 0


def held_out_pairs(seed: int) -> set[tuple[int, int]]:
    """Unordered operand pairs (lo, hi) reserved for prompts_math_eval (~1/8 of eligible)."""
    pairs = [(x, y) for x in range(11, 100) for y in range(x, 100) if _eligible(x) and _eligible(y)]
    random.Random(f"{seed}:held-out").shuffle(pairs)
    return set(pairs[: len(pairs) // 8])


def _operands(rng: random.Random, held: set, op: str, size: str) -> tuple[int, int]:
    while True:
        if op == "×":
            x, y = rng.randint(2, 12), rng.randint(2, 12)
        elif size == "small":
            x, y = rng.randint(0, 20), rng.randint(0, 20)
        else:
            x, y = rng.randint(10, 99), rng.randint(10, 99)
        if op == "-" and y > x:
            x, y = y, x
        if (min(x, y), max(x, y)) not in held:
            return x, y


def worked(x: int, op: str, y: int) -> str:
    """The steps for a two-digit sum or difference; every step pair is un-holdable."""
    if op == "+":
        t, u = x // 10 * 10 + y // 10 * 10, x % 10 + y % 10
        return f"Add the tens: {x // 10 * 10} + {y // 10 * 10} = {t}. Add the ones: {x % 10} + {y % 10} = {u}. Then {t} + {u} = {t + u}."
    mid = x - y // 10 * 10
    steps = f"Take away the tens: {x} - {y // 10 * 10} = {mid}."
    return steps + (f" Take away the ones: {mid} - {y % 10} = {mid - y % 10}." if y % 10 else "")


def math_qa(rng: random.Random, held: set) -> tuple[str, str]:
    op = rng.choice(["+", "+", "-", "-", "×"])
    # mostly two-digit sums, always worked in steps: each step is a fact the model can look up
    # (tens + tens, ones + ones, tens + a small number), which is what lets a 2M model add
    # operand pairs it has never seen
    size = "two" if op != "×" and rng.random() < 0.85 else "small"
    x, y = _operands(rng, held, op, size)
    word, fn = OPS[op]
    z = fn(x, y)
    q = rng.choice(MATH_QUESTIONS[op]).format(x=x, y=y)
    style = rng.random()
    if size == "two":
        body = worked(x, op, y)
    elif style < 0.5:
        body = f"{cap(number_words(x))} {word} {number_words(y)} is {number_words(z)}. {x} {op} {y} = {z}."
    else:
        body = f"{x} {op} {y} = {z}."
    return q, f"{body} The answer is {z}."


def arithmetic_doc(rng: random.Random, held: set) -> str:
    lines = []
    for _ in range(rng.randint(3, 7)):
        op = rng.choice(["+", "+", "-", "-", "×"])
        x, y = _operands(rng, held, op, rng.choice(["small", "two", "two", "two"]))
        word, fn = OPS[op]
        z = fn(x, y)
        r = rng.random()
        if r < 0.25 and op != "×" and x < 21 and y < 21:
            who, thing = rng.choice(GIRLS + BOYS), rng.choice(["apples", "shells", "stickers", "marbles", "cookies", "stones"])
            act = f"found {y} more" if op == "+" else f"gave {y} away"
            lines.append(f"{who} had {x} {thing}. Then {who} {act}. Now {who} has {z} {thing}. {x} {op} {y} = {z}.")
        elif op != "×" and x > 9 and y > 9:  # the SFT answer's shape, so pre-training rehearses it
            q = rng.choice(MATH_QUESTIONS[op]).format(x=x, y=y)
            lines.append(f"{q} {worked(x, op, y)} The answer is {z}.")
        else:
            lines.append(f"{cap(number_words(x))} {word} {number_words(y)} is {number_words(z)}. {x} {op} {y} = {z}.")
    return "\n".join(lines)



# three-digit operands for prompts_math_ood: the world's other numbers stop at 198 (99 + 99; a
# worked step's tens add to at most 180), so an operand of 200 or more is one the model never saw
OOD_OPERANDS = range(200, 1000)


def ood_pair(rng: random.Random, op: str) -> tuple[int, int]:
    """An operand pair for prompts_math_ood: both three-digit, never seen in training."""
    return rng.choice(OOD_OPERANDS), rng.choice(OOD_OPERANDS)
