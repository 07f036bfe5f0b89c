"""Verifiable rewards, checked by hand."""

from decimal import Decimal

import pytest

from rlhfkit.rewards.verifiers import extract_answer, format_reward, is_correct, math_reward


@pytest.mark.parametrize("text,want", [
    ("Add the tens: 40 + 60 = 100. Then 100 + 10 = 110. The answer is 110.", "110"),  # the world's form
    ("She pays 3 + 15 = 18 dollars.\n#### 18", "18"),  # GSM8K
    (r"So $x = \boxed{-7}$, and we are done.", "-7"),  # MATH
    ("the final answer is: 1,250.5 apples", "1250.5"),  # thousands separator, decimals, a colon
    ("The answer is 5. Though one could say 6.", "5"),  # an explicit form beats a later bare number
    ("I think 4, no wait, 9", "9"),  # no explicit form: the last number
    ("10-3 leaves 7", "7"),
    ("10-3", "3"),  # a minus right after a digit is an operator, not a sign
    ("#### 2 and later The answer is 3", "3"),  # the last explicit form wins
])
def test_extract_answer(text, want):
    assert extract_answer(text) == Decimal(want)


def test_no_number_is_none():
    assert extract_answer("I do not know.") is None
    assert not is_correct("I do not know.", "3")
    assert not is_correct("The answer is 3.", "no reference number")


def test_math_reward_by_hand():
    completions = ["The answer is 42.", "#### 42.0", "The answer is 41.", "42 is close; the answer is 1,000", ""]
    answers = ["42", "42", "42", "1000", "0"]
    # exact decimal equality: 42.0 == 42; 41 != 42; "1,000" == 1000; empty -> no number -> 0
    assert math_reward(["q"] * 5, completions, answer=answers, topic=[None] * 5) == [1.0, 1.0, 0.0, 1.0, 0.0]
    # the reference goes through the same extraction: a full GSM8K solution is a valid answer
    assert math_reward(["q"], ["#### 18"], answer=["3 + 15 = 18\n#### 18"]) == [1.0]


def test_format_reward_by_hand():
    c = ["12 + 30 = 42. The answer is 42.", "The answer is 42. Bye.", "The answer is forty-two.", "The answer is -3\n"]
    # the default wants the completion to END with "The answer is N." (trailing space/newline ok)
    assert format_reward(["q"] * 4, c) == [1.0, 0.0, 0.0, 1.0]
    assert format_reward(["q"] * 2, ["<think>a\nb</think><answer>1</answer>", "<answer>1</answer>"],
                         regex=r"^<think>.*</think><answer>.*</answer>$") == [1.0, 0.0]  # . spans lines
