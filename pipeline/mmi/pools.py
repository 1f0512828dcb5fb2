"""MMI-TVR's instruction pools (Sec. 4.2.1): the questions a model answers about a caption or a video.

    pool = load_pool("mmi_text_questions")      # prompts/mmi_text_questions.txt
    pool.questions[0]                           # "What key concepts are mentioned in this text?"
    pool.lines[0]                               # its 1-based line in the file
    pool.sha256                                 # the pool's identity, for a stage's version

A pool is the plain-text file `NAME.txt` in a prompts folder (by default the repository's
`prompts/`, found as the prompt templates are, see `pipeline.engines.prompts.prompts_folder`).
The file format:
- a line whose first non-blank character is `#` is a comment; a blank line is ignored;
- every other line is one question, its surrounding whitespace stripped;
- the file is UTF-8 (a leading byte-order mark is allowed); lines end in "\\n" or "\\r\\n".

Loading promises, each failure a PoolError of one line naming the file and, where there is one,
the line:
- the questions come back in file order, with their file lines;
- a pool holds at least one question (any number works: the paper's pools hold 50);
- no two questions are the same once case (casefolded), runs of whitespace and trailing question
  marks are set aside ("What is it?", "what  is it" and "What is it??" are one question);
- no line is longer than MAX_LINE characters, and none holds a control character (any of Unicode's
  category Cc except a tab, or a line or paragraph separator): a pasted binary or a stray escape
  code is an error here, not a question a model is asked.

`sha256` is of the file's bytes, comments included: any edit is a new pool, and so a new version
of every stage that uses it.
"""

from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError
from pipeline.engines.prompts import prompts_folder

SUFFIX = ".txt"
MAX_LINE = 1000  # characters; a question is a sentence, so a longer line is a pasted document
_COMMENT = "#"
# A tab is whitespace an editor may leave; line and paragraph separators would make the file's
# lines differ between editors and this reader, which splits on "\n" only.
_ALLOWED_CONTROL = {"\t"}
_SEPARATORS = {"Zl", "Zp"}


class PoolError(ConfigError):
    """A question pool is missing, unreadable or malformed; the message names the file and line."""


@dataclass(frozen=True)
class QuestionPool:
    name: str
    path: str  # the file it was read from
    questions: tuple[str, ...]  # in file order, surrounding whitespace stripped
    lines: tuple[int, ...]  # 1-based file line of each question
    sha256: str  # of the file's bytes: the pool's identity


def list_pools(folder: str | Path | None = None) -> list[str]:
    """The names of the pools in the folder (each `NAME.txt`), sorted."""
    return sorted(p.name[: -len(SUFFIX)] for p in prompts_folder(folder).glob(f"*{SUFFIX}") if p.is_file())


def load_pool(name: str, folder: str | Path | None = None) -> QuestionPool:
    """The pool `name` (the file `NAME.txt`) from the folder (default: the repository's prompts/),
    checked as the module docstring promises. An unknown name lists the pools that are there; a
    missing folder is the PromptError of `prompts_folder`."""
    root = prompts_folder(folder)
    available = list_pools(root)
    if name not in available:
        raise PoolError(f"unknown question pool {name!r} in {root}; available: {', '.join(available) or 'none'}")
    path = root / f"{name}{SUFFIX}"
    data = path.read_bytes()
    questions, lines = _read_questions(_decode(data, path), path)
    return QuestionPool(name=name, path=str(path), questions=questions, lines=lines,
                        sha256=hashlib.sha256(data).hexdigest())


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PoolError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_questions(text: str, path: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    questions: list[str] = []
    lines: list[int] = []
    first_line_of: dict[str, int] = {}  # normalised question -> the line it first appeared on
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw  # a CRLF file reads like an LF one
        _check_line(line, path, number)
        question = line.strip()
        if not question or question.startswith(_COMMENT):
            continue
        key = _normalise(question)
        if key in first_line_of:
            raise PoolError(f"{path}:{number}: duplicate question, the same as line {first_line_of[key]}: {question}")
        first_line_of[key] = number
        questions.append(question)
        lines.append(number)
    if not questions:
        raise PoolError(f"{path}: no questions (every line is blank or a # comment)")
    return tuple(questions), tuple(lines)


def _check_line(line: str, path: Path, number: int) -> None:
    if len(line) > MAX_LINE:
        raise PoolError(f"{path}:{number}: line of {len(line)} characters; the most is {MAX_LINE}")
    for column, char in enumerate(line, start=1):
        category = unicodedata.category(char)
        if (category == "Cc" and char not in _ALLOWED_CONTROL) or category in _SEPARATORS:
            raise PoolError(f"{path}:{number}: control character U+{ord(char):04X} at column {column}")


def _normalise(question: str) -> str:
    """The form two questions are compared in: casefolded, whitespace runs collapsed to one space,
    trailing question marks (and the space before them) dropped."""
    return " ".join(question.casefold().split()).rstrip("?").rstrip()
