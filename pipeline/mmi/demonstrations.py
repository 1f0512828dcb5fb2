"""MMI-TVR's demonstration sampling (Sec. 4.2.2, Eq. 7): from a cluster's candidate demonstrations,
the one minimising (len(question), len(answer), count(answer terms, answer)), in that order.

    best = select_demonstration([{"question": q, "answer": a, "finish_reason": "stop"}, ...])

Lengths are in whitespace-separated words. The paper's answer terms (its nabla) are "a
predefined set" it never lists; `DEFAULT_ANSWER_TERMS` is our choice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Our choice of the paper's answer terms: hedges and refusals. Counting them makes Eq. 7 prefer a
# confident, direct answer, the kind a demonstration should teach; the paper never gives its set.
# No term contains another as a whole word, so no phrase is counted twice.
DEFAULT_ANSWER_TERMS: tuple[str, ...] = (
    "sorry", "apologize", "cannot", "can not", "can't", "unable", "unclear", "not clear", "not sure",
    "unsure", "uncertain", "maybe", "perhaps", "possibly", "probably", "might", "may be", "seems",
    "appears to", "i think", "i believe", "i guess", "difficult to", "hard to tell", "not possible",
    "impossible", "don't know", "do not know", "no information", "not enough information",
)

# Finish reasons of a generated answer: an error has no usable answer; a length cut is a fallback.
_ERROR, _CUT = "error", "length"


def words(text: str) -> int:
    """The number of whitespace-separated words in `text` (Eq. 7's len)."""
    return len(text.split())


def count_answer_terms(answer: str, terms: Iterable[str] = DEFAULT_ANSWER_TERMS) -> int:
    """Occurrences of the terms in `answer`, summed: case-insensitive, each a whole word or phrase
    (so "might" does not count in "mighty"); a phrase matches across any whitespace, and a curly
    apostrophe counts as a straight one."""
    text = answer.replace("\u2019", "'")
    return sum(len(_term_pattern(term).findall(text)) for term in terms)


def select_demonstration(candidates: list[dict], answer_terms: Iterable[str] = DEFAULT_ANSWER_TERMS) -> int:
    """The index of the candidate Eq. 7 picks: candidates (dicts with at least `question` and
    `answer`) come in order of preference, nearest the cluster's centre first, and the minimum of
    (words(question), words(answer), count_answer_terms(answer)) wins, the earliest on a tie.

    A candidate whose `finish_reason` is "error" is never chosen; one cut at the length limit
    ("length") only when no complete candidate exists; an empty answer (no words: Eq. 7's shortest,
    and nothing to teach) only when every other answer is empty too. ValueError when no candidate
    is eligible."""
    if not candidates:
        raise ValueError("no candidate demonstrations to choose from")
    terms = tuple(answer_terms)
    reasons = [candidate.get("finish_reason") for candidate in candidates]
    criteria = {i: _criteria(c, i, terms) for i, c in enumerate(candidates) if reasons[i] != _ERROR}
    tiers = ([i for i in criteria if reasons[i] != _CUT and criteria[i][1] > 0],
             [i for i in criteria if reasons[i] == _CUT and criteria[i][1] > 0],
             list(criteria))
    eligible = next((tier for tier in tiers if tier), [])
    if not eligible:
        raise ValueError(f"none of the {len(candidates)} candidate demonstrations has an answer (all failed)")
    return min(eligible, key=lambda i: (*criteria[i], i))


def _criteria(candidate: dict, index: int, terms: tuple[str, ...]) -> tuple[int, int, int]:
    """Eq. 7's three criteria for one candidate."""
    question, answer = candidate.get("question"), candidate.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str):
        raise ValueError(f"candidate demonstration {index} needs a text question and answer, "
                         f"got question={question!r}, answer={answer!r}")
    return words(question), words(answer), count_answer_terms(answer, terms)


def _term_pattern(term: str) -> re.Pattern:
    """A whole-word, case-insensitive pattern for a term; its words may be split by any whitespace."""
    parts = [re.escape(part) for part in term.split()]
    if not parts:
        raise ValueError("an answer term is empty")
    return re.compile(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", re.IGNORECASE)
