"""Verifiable rewards: programs that check an answer instead of a model that guesses.

Each verifier has the `module:function` reward signature the RL stages call,

    fn(prompts: list[str], completions: list[str], **record_fields) -> list[float]

where every extra field of the prompt records arrives as a list (one value per completion),
so `rlhfkit.rewards.verifiers:math_reward` works as a reward spec as well as `math`.

- `math`: 1.0 when the final number of the completion equals the record's `answer`, else 0.0.
  The final number is the last one given in an explicit answer form — "#### 42" (GSM8K),
  "\\boxed{42}" (MATH), "The answer is 42" / "the final answer is: 42" — and, when the text
  has none of those, simply its last number. Numbers compare as exact decimals, so "1,000",
  "1000" and "1000.0" are the same answer; the reference goes through the same extraction,
  so a full GSM8K solution ending in "#### 18" is a valid `answer`.
- `format`: 1.0 when `re.search(regex, completion)` matches (anchor it with ^ and $ to ask
  for a whole shape). The default asks that the completion end with "The answer is N.".
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# a number: thousands groups ("1,234,567") or plain digits, optional decimals; a minus only
# where it cannot be an operator ("10-3" is 10 and 3, not 10 and -3)
_NUMBER = r"(?<![\d.,])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_ANSWER_FORMS = re.compile(
    r"####\s*(?P<a>NUM)"
    r"|\\boxed\{\s*(?P<b>NUM)\s*\}"
    r"|answer\s+is\s*:?\s*\$?\s*(?P<c>NUM)".replace("NUM", _NUMBER),
    re.IGNORECASE,
)
_ANY_NUMBER = re.compile(_NUMBER)

DEFAULT_FORMAT_REGEX = r"The answer is -?[\d,]+(?:\.\d+)?\.?\s*$"


def extract_answer(text: str) -> Decimal | None:
    """The final answer of `text` as a Decimal, or None when it holds no number."""
    forms = list(_ANSWER_FORMS.finditer(text))
    if forms:
        m = forms[-1]
        raw = m.group("a") or m.group("b") or m.group("c")
    else:
        numbers = _ANY_NUMBER.findall(text)
        if not numbers:
            return None
        raw = numbers[-1]
    try:
        return Decimal(raw.replace(",", ""))
    except InvalidOperation:  # the regex only lets numbers through; belt and braces
        return None


def is_correct(completion: str, reference: str | int | float) -> bool:
    """Does the completion's final answer equal the reference's (exactly, as decimals)?"""
    want = extract_answer(str(reference))
    got = extract_answer(completion)
    return want is not None and got is not None and got == want


def math_reward(prompts: list[str], completions: list[str], answer: list, **_) -> list[float]:
    """1.0 per completion whose final number equals its record's `answer`, else 0.0."""
    return [float(is_correct(c, a)) for c, a in zip(completions, answer)]


def format_reward(prompts: list[str], completions: list[str], regex: str = DEFAULT_FORMAT_REGEX,
                  **_) -> list[float]:
    """1.0 per completion in which `regex` is found (re.search; DOTALL so . spans lines)."""
    pattern = re.compile(regex, re.DOTALL)
    return [float(pattern.search(c) is not None) for c in completions]


# name -> (function, the record fields it needs)
VERIFIERS = {"math": (math_reward, ("answer",)), "format": (format_reward, ())}
