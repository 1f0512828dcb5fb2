"""Reading the probability out of a model's answer to MMI-TVR's Eq. 9 prompt: a table of messy,
real-style answers (tests/data/mmi_probability_answers.json) and a property over arbitrary text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.mmi.probability import MAX_CHARS, parse_probability

ANSWERS = json.loads((Path(__file__).parent / "data" / "mmi_probability_answers.json").read_text("utf-8"))["cases"]


def test_the_table_is_large_and_covers_none_and_values():
    assert len(ANSWERS) >= 40
    assert len({case["answer"] for case in ANSWERS}) == len(ANSWERS)
    assert any(case["expected"] is None for case in ANSWERS)


@pytest.mark.parametrize("case", ANSWERS, ids=[case["why"] for case in ANSWERS])
def test_answer_table(case):
    got = parse_probability(case["answer"])
    if case["expected"] is None:
        assert got is None, case["why"]
    else:
        assert got == pytest.approx(case["expected"], abs=1e-9), case["why"]


@pytest.mark.parametrize("answer, expected", [
    ("0.4 and later 0.9", 0.4),  # without a naming word, the first one
    ("Maybe 0.2. Probability: 0.6. Confidence: 0.9", 0.6),  # the first named one
    ("0.3 is a guess; the likelihood is 0.8", 0.8),  # a named one wins over an earlier one
    ("between 0.2 and 0.4", 0.3),
    ("0.8 to 1", 0.9),
    ("[0.6, 0.8]", 0.7),
    ("from 0 to 1: 0.35", 0.35),  # the whole scale is not an answer
    ("0%-100%, so 45%", 0.45),
    ("0.9 - 2 objects", None),  # a range with an end that is not a probability states nothing
    ("1/0", None),
    ("3/2", None),
    ("0/5", 0.0),
    ("10/10", 1.0),
    ("0. They describe different scenes.", 0.0),  # one "0." is an answer, not a list
    (" 1) man\n 2) guitar\n 3) stage\n0.3", 0.3),  # a list's numbers are skipped
])
def test_rules(answer, expected):
    got = parse_probability(answer)
    assert got == (None if expected is None else pytest.approx(expected))


def test_text_past_the_limit_is_not_read():
    assert parse_probability("x" * MAX_CHARS + " 0.5") is None
    assert parse_probability("x" * (MAX_CHARS - 10) + " 0.5") == 0.5


# Text made of the pieces the parser looks at, so the property reaches its branches and not only
# letters: digits, separators, signs, percent, fractions, brackets, naming words and markup.
PIECES = ["0", "1", "7", "85", "100", "1,000", ".", ",", "-", "−", "–", "%", "/", " out of ", " in ", " to ",
          "between ", " and ", "[", "]", "(", ")", " ", "\n", "probability", " is ", ":", "=", "**", "$", "\\frac{",
          "}{", "}", "<think>", "</think>", "50/50", "Step ", "1. ", "½", "０", "e", "approx. "]
messy_text = st.lists(st.sampled_from(PIECES) | st.text(max_size=3), max_size=40).map("".join)


@settings(derandomize=True, deadline=None, max_examples=400)
@given(st.text() | messy_text)
def test_never_raises_and_is_none_or_a_probability(text):
    got = parse_probability(text)
    assert got is None or (isinstance(got, float) and math.isfinite(got) and 0.0 <= got <= 1.0)
