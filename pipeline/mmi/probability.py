"""The probability in a model's answer to MMI-TVR's skeleton-scoring prompt (Sec. 4.3, Eq. 9).

The prompt asks: "Given a probability value of [0,1], evaluate the probability that the Textual
Skeleton and Video Skeleton are describing a scene." Models answer in prose, markdown, LaTeX,
percentages and fractions; `parse_probability` reads one value in [0, 1] from that, or None.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# The most of an answer that is read. A score takes a sentence; past this a model rambled or
# looped, and reading on would only cost time (every rule below is linear in the text read).
MAX_CHARS = 20_000
# How far after a word that names a probability its number may be (within the same sentence).
NAMED_WINDOW = 200

# ---- numbers ------------------------------------------------------------------------------------

# A number written with ASCII digits: "1,000" (thousands), "0.85" or "0,85" (decimal point or
# comma), ".7", "1".
_NUM = r"(?:[1-9][0-9]{0,2}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:[.,][0-9]+)?|\.[0-9]+)"
_PCT = r"(?:%|percent\b|per\s+cent\b)"
# A number starts a token only where it is not glued to a word: "v2", "3.5.1", "mp4", "COVID-19"
# and "2024-05-01" hold no probability.
_START = r"(?<![\w.])(?<![\w.][-−])"
# ... and ends where no letter or further ".digit" follows: "3D", "2nd", "1.2.3".
_END = r"(?!\.?[0-9])(?![^\W\d_])"
_DASH = r"(?:-|−|–|—|\bto\b)"

_TOKEN = re.compile(rf"""
    {_START}(?:
      (?P<even>50\s*[/-]\s*50|fifty[-\s]fifty)
    | (?P<interval>[\[(]\s*(?P<ia>{_NUM})\s*[,;]\s*(?P<ib>{_NUM})\s*[\])])
    | (?P<between>between\s+(?P<ba>{_NUM})\s*(?P<bap>{_PCT})?\s*and\s+(?P<bb>{_NUM})\s*(?P<bbp>{_PCT})?)
    | (?P<frac>(?P<fa>{_NUM})\s*(?:/|\bout\s+of\b|\bin\b)\s*(?P<fb>{_NUM}))
    | (?P<range>(?P<ra>{_NUM})\s*(?P<rap>{_PCT})?\s*{_DASH}\s*(?P<rb>{_NUM})\s*(?P<rbp>{_PCT})?)
    | (?P<single>(?P<sign>[-−])?(?P<sn>{_NUM})(?:\s*(?P<sp>{_PCT}))?)
    ){_END}""", re.X | re.I)

# An integer that may number a list item: at the start of a line (after indentation or a quote or
# bullet mark), followed by "." or ")" and text ("1. The text ...", "2) ...").
_LIST_MARKER = re.compile(r"^[ \t>#+-]*([0-9]{1,3})[.)][ \t]+\S", re.M)
# An integer that labels a thing ("Step 1", "Skeleton 1", "frame #1", "No. 1").
_LOOK_BACK = 40  # characters read before a number for a label: enough, and linear time
_LABEL_BEFORE = re.compile(r"\b(?:step|skeleton|frame|image|video|text|caption|question|item|point|option|part|"
                           r"stage|example|scene|figure|no\.?|number)\s*#?\s*\Z|#\s*\Z", re.I)

# ---- words that name the probability ------------------------------------------------------------

_NAMING = re.compile(r"\b(?:probabilit(?:y|ies)|likelihood|chances?|odds|score|confidence|certainty|estimate|"
                     r"rating|answer|p)\b", re.I)
_CONNECT = re.compile(r"\b(?:is|are|was|of|at|be|as|equals?)\b|[:=≈~→]|->", re.I)
# What may stand between a connector (or the naming word itself) and its number.
_FILLER = re.compile(r"""(?:
      [\s:=~≈<>→,—–*(\[]|->|-(?=\s)
    | \b(?:about|approximately|approx|around|roughly|nearly|almost|close|near|maybe|perhaps|likely|probably|
           estimated|only|just|a|an|the|value|some|very|high|low|moderate|moderately|fairly|quite|relatively|
           reasonably|somewhere|i|i'd|i’d|would|say|to|be|at|least|most|best|assigned|calculated|rated|
           determined|evaluated|predicted|final|overall)\b\.?
    )*""", re.X | re.I)
# Where a sentence ends, for the window after a naming word: ".", "!", "?" or ";" before a space
# and a capital or at the end of the text (so "approx. 0.8" stays one sentence); "!", "?" or ";"
# before any space; a blank line.
_SENTENCE_END = re.compile(r"[.!?;](?=\s+[A-Z]|\s*\Z)|[!?;](?=\s)|\n\s*\n")

# ---- cleaning -----------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?(?:</think>|\Z)", re.S | re.I)
_LATEX_FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([0-9.,]+)\s*\}\s*\{\s*([0-9.,]+)\s*\}")
_LATEX = [("\\%", "%"), ("\\approx", "≈"), ("\\sim", "~")]
_DROPPED = str.maketrans({"*": None, "`": None, "_": " ", "⁄": "/", "$": " "})


@dataclass(frozen=True)
class _Token:
    start: int  # where the token begins (a bracket, "between", a sign or a digit)
    lead: int  # where its first number begins
    value: float | None  # the probability it states, or None when it states none


def parse_probability(text: str) -> float | None:
    """The probability that `text`, a model's answer to MMI's Eq. 9 prompt, states: a float in
    [0, 1], or None when it states none. It never raises on any string.

    What counts as a probability (a "token"):
    - a decimal in [0, 1]: "0.85", ".7", "1.0", "0", "1", "1."; a comma may be the decimal
      separator ("0,75" is 0.75) except in thousands ("1,000" is a thousand);
    - a percentage in [0, 100] with "%", "percent" or "per cent" ("85%", "85 %") -> 0.85;
    - a fraction "a/b", "a out of b" or "a in b" with 0 <= a <= b and b > 0 ("7/10", "7 out of
      10", "0.8/1", "a 1 in 2 chance") -> 0.7; "½" too; LaTeX "\\frac{7}{10}" too;
    - "50/50", "50-50" and "fifty-fifty" -> 0.5 (an even chance, not the fraction 1);
    - a range "a-b", "a–b", "a to b", "between a and b", "[a, b]" or "(a, b)", both ends
      probabilities (percentages when either end has "%": "60-70%") -> the midpoint, 0.65;
      except the whole scale, 0 to 1 or 0% to 100% ("a probability value of [0,1]", "on a scale
      from 0 to 1"): an echo of the prompt, not an answer, so it states nothing.

    What does not count (the token states nothing and the next is read):
    - a number outside [0, 1] that is not a percentage or fraction ("2 people", "8" in "on a
      scale of 1-10, 8"; "8/10" counts), a percentage above 100, a fraction above 1;
    - a negative number ("-0.5", "−0.5");
    - a range with an end that is not a probability ("1-10", "0.9 - 2"): the whole range;
    - a number glued to a word or a version ("3D", "v2", "2nd", "COVID-19", "1.2.3", dates
      "2024-05-01");
    - an integer that numbers a list item at the start of a line ("1. ...", "2) ...", when the
      text has the item before or after it too) or labels a thing ("Step 1", "Skeleton 1",
      "frame #1");
    - number words ("zero", "half", "high"): only digits are read; a refusal ("I cannot determine
      the probability.") states no number and gives None.

    Which token wins:
    1. the first token that states a probability right after a word that names one -
       probability, likelihood, chance(s), odds, score, confidence, certainty, estimate, rating,
       answer or P - either directly ("Probability 0.8", "**Confidence:** 0.9", "P(match) = 0.8")
       or after "is", "are", "was", "of", "at", "be", "as", "equals", ":", "=", "≈", "~" or "->"
       later in the same sentence, with hedges and markup between allowed ("the likelihood is
       approximately 0.85", "a probability of about 70%", "chance: between 0.6 and 0.7");
    2. otherwise the first token in the text that states a probability ("I'd estimate 0.8").
    So "Both skeletons show 1 man. Probability: 0.9" is 0.9, and repeated numbers give the first.

    Before reading: text after MAX_CHARS is ignored; a reasoning model's `<think>...</think>`
    block is dropped (an unclosed one to the end); Unicode is NFKC-normalised (full-width digits,
    "％"); markdown emphasis and code marks (`*`, `_`, backticks) and LaTeX `$`, `\\%`, `\\approx`
    are removed or read. Trailing punctuation ("0.8.", "0.8!") and surrounding brackets do not
    matter.
    """
    cleaned = _clean(text[:MAX_CHARS])
    tokens = [token for token in _tokens(cleaned, _list_items(cleaned)) if token.value is not None]
    if not tokens:
        return None
    named = _named_positions(cleaned)
    for token in tokens:
        if any(position in named for position in range(token.start, token.lead + 1)):
            return token.value
    return tokens[0].value


def _clean(text: str) -> str:
    text = _THINK.sub(" ", text)
    text = unicodedata.normalize("NFKC", text)[:MAX_CHARS]  # NFKC may lengthen a text ("ﷺ": 18 characters)
    for latex, plain in _LATEX:
        text = text.replace(latex, plain)
    text = _LATEX_FRAC.sub(r"\1/\2", text)
    return text.translate(_DROPPED)


def _list_items(text: str) -> set[int]:
    """Where the integers that number a list begin: a line-start marker counts when the text
    also has the marker before or after it (a list has two items), so that an answer "0. They
    differ." still reads 0."""
    markers = {match.start(1): int(match[1]) for match in _LIST_MARKER.finditer(text)}
    numbers = set(markers.values())
    return {start for start, number in markers.items() if number - 1 in numbers or number + 1 in numbers}


def _tokens(text: str, list_items: set[int]):
    for match in _TOKEN.finditer(text):
        kind = match.lastgroup  # the outer alternative: it closes after the groups inside it
        lead = next((match.start(g) for g in ("ia", "ba", "fa", "ra", "sn") if match.start(g) >= 0), match.start())
        yield _Token(match.start(), lead, _value(kind, match, text, list_items))


def _value(kind: str, match: re.Match, text: str, list_items: set[int]) -> float | None:
    if kind == "even":
        return 0.5
    if kind == "interval":
        return _range(match["ia"], False, match["ib"], False)
    if kind == "between":
        return _range(match["ba"], bool(match["bap"]), match["bb"], bool(match["bbp"]))
    if kind == "range":
        return _range(match["ra"], bool(match["rap"]), match["rb"], bool(match["rbp"]))
    if kind == "frac":
        over, under = _number(match["fa"]), _number(match["fb"])
        return _checked(over / under) if 0 < under and 0 <= over <= under else None
    if match["sign"]:
        return None
    if not match["sp"] and _is_ordinal(match, text, list_items):
        return None
    return _checked(_number(match["sn"]) / 100) if match["sp"] else _checked(_number(match["sn"]))


def _range(low_text: str, low_percent: bool, high_text: str, high_percent: bool) -> float | None:
    percent = low_percent or high_percent  # "60-70%": the sign on one end covers both
    scale = 100.0 if percent else 1.0
    low, high = _checked(_number(low_text) / scale), _checked(_number(high_text) / scale)
    if low is None or high is None or {low, high} == {0.0, 1.0}:
        return None  # not a probability at one end, or the whole scale
    return (low + high) / 2


def _is_ordinal(match: re.Match, text: str, list_items: set[int]) -> bool:
    """An integer that numbers a list item or labels a thing, rather than stating a value."""
    if not match["sn"].isdigit():
        return False
    start = match.start()
    return start in list_items or _LABEL_BEFORE.search(text[max(0, start - _LOOK_BACK): start]) is not None


def _number(digits: str) -> float:
    if re.fullmatch(r"[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]+)?", digits):
        return float(digits.replace(",", ""))  # thousands: "1,000"
    return float(digits.replace(",", "."))  # a decimal comma: "0,75"


def _checked(value: float) -> float | None:
    """The value when it is a probability; written so that NaN (inf/inf) falls outside."""
    return value if 0.0 <= value <= 1.0 else None


def _named_positions(text: str) -> set[int]:
    """Where a number would be named as the probability: just after a naming word, or after a
    connector in the rest of its sentence, past any hedges and markup."""
    positions: set[int] = set()
    for word in _NAMING.finditer(text):
        end = _sentence_end(text, word.end())
        positions.add(_FILLER.match(text, word.end(), end).end())
        for connector in _CONNECT.finditer(text, word.end(), end):
            positions.add(_FILLER.match(text, connector.end(), end).end())
    return positions


def _sentence_end(text: str, start: int) -> int:
    limit = min(len(text), start + NAMED_WINDOW)
    found = _SENTENCE_END.search(text, start, limit)
    return found.start() if found else limit
