"""MMI-TVR's question pools: the shipped pools (50 questions each, the paper's examples first) and
the loader's promises: file order and lines, identity by sha256, and one-line errors that name the
file and line."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pipeline.engines.prompts import PromptError
from pipeline.mmi.pools import MAX_LINE, PoolError, QuestionPool, list_pools, load_pool

REPO_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
# MMI-TVR Sec. 4.2.1, word for word (the paper's "involved??" read as a typo for one mark).
PAPER_EXAMPLES = {
    "mmi_text_questions": ["What key concepts are mentioned in this text?",
                           "Which events are occurring, and which entities are involved?"],
    "mmi_visual_questions": ["What are the important entities in this video?",
                             "What are the relationships of these entities in this video?"],
}


def write_pool(folder: Path, text: str | bytes, name: str = "pool") -> Path:
    path = folder / f"{name}.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def pool_error(folder: Path, text: str | bytes) -> str:
    write_pool(folder, text)
    with pytest.raises(PoolError) as caught:
        load_pool("pool", folder)
    message = str(caught.value)
    assert "\n" not in message
    return message


# ---- the shipped pools --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PAPER_EXAMPLES))
def test_shipped_pool_has_50_distinct_questions_starting_with_the_papers_examples(name):
    pool = load_pool(name)
    assert len(pool.questions) == 50  # Sec. 5.3: "The text and visual instruction pool have 50 questions respectively"
    assert list(pool.questions[:2]) == PAPER_EXAMPLES[name]
    assert len({" ".join(q.casefold().split()).rstrip("?") for q in pool.questions}) == 50
    assert all(q.endswith("?") and q == q.strip() for q in pool.questions)
    assert pool.path == str(REPO_PROMPTS / f"{name}.txt")
    assert pool.sha256 == hashlib.sha256((REPO_PROMPTS / f"{name}.txt").read_bytes()).hexdigest()


def test_shipped_pools_are_listed_and_the_paper_typo_is_noted():
    assert {"mmi_text_questions", "mmi_visual_questions"} <= set(list_pools())
    header = (REPO_PROMPTS / "mmi_text_questions.txt").read_text("utf-8")
    assert "involved??" in header and "typo" in header


def test_text_and_visual_pools_ask_about_their_own_modality():
    text, visual = load_pool("mmi_text_questions"), load_pool("mmi_visual_questions")
    assert not any("this video" in q.casefold() for q in text.questions)  # a caption, not frames
    assert not any("this text" in q.casefold() for q in visual.questions)
    assert sum("this text" in q.casefold() for q in text.questions) >= 5
    assert sum("this video" in q.casefold() for q in visual.questions) >= 10


# ---- the format ---------------------------------------------------------------------------------


def test_questions_come_in_file_order_with_their_lines(tmp_path):
    write_pool(tmp_path, "# a header\n\n  What is shown?  \n   # an indented comment\nWho is there?\r\n\n")
    pool = load_pool("pool", tmp_path)
    assert pool == QuestionPool(name="pool", path=str(tmp_path / "pool.txt"),
                                questions=("What is shown?", "Who is there?"), lines=(3, 5), sha256=pool.sha256)


def test_a_one_question_pool_loads(tmp_path):
    write_pool(tmp_path, "What is happening?")  # no final newline either
    assert load_pool("pool", tmp_path).questions == ("What is happening?",)


def test_a_byte_order_mark_is_allowed(tmp_path):
    write_pool(tmp_path, "\ufeffWhat is happening?\n")
    assert load_pool("pool", tmp_path).questions == ("What is happening?",)


def test_sha256_changes_with_any_edit_even_a_comment(tmp_path):
    base = "# pool\nWhat is shown?\n"
    write_pool(tmp_path, base)
    first = load_pool("pool", tmp_path)
    assert first.sha256 == hashlib.sha256(base.encode()).hexdigest()
    seen = {first.sha256}
    for edited in ["# pool!\nWhat is shown?\n", "# pool\nWhat is shown?\n\n", "# pool\nWhat is shown ?\n",
                   "# pool\nwhat is shown?\n"]:
        write_pool(tmp_path, edited)
        seen.add(load_pool("pool", tmp_path).sha256)
    assert len(seen) == 5
    write_pool(tmp_path, base)
    assert load_pool("pool", tmp_path).sha256 == first.sha256


# ---- errors: one line naming the file and the line ----------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n  \n", "# only\n  # comments\n\n"])
def test_an_empty_pool(tmp_path, text):
    assert pool_error(tmp_path, text) == f"{tmp_path / 'pool.txt'}: no questions (every line is blank or a # comment)"


@pytest.mark.parametrize("second", ["What is shown?", "what is shown?", "WHAT  IS\tSHOWN?", "  What is shown",
                                    "What is shown??", "What is shown ?"])
def test_a_duplicate_question(tmp_path, second):
    message = pool_error(tmp_path, f"# header\nWhat is shown?\nWho is there?\n{second}\n")
    assert message == f"{tmp_path / 'pool.txt'}:4: duplicate question, the same as line 2: {second.strip()}"


def test_questions_that_differ_are_not_duplicates(tmp_path):
    write_pool(tmp_path, "What is shown?\nWhat is shown here?\nWhat is shown?!\n")
    assert len(load_pool("pool", tmp_path).questions) == 3


def test_a_long_line(tmp_path):
    write_pool(tmp_path, "Q?\n" + "x" * (MAX_LINE - 1) + "?\n")
    assert len(load_pool("pool", tmp_path).questions) == 2  # exactly MAX_LINE characters is allowed
    message = pool_error(tmp_path, "Q?\n# fine\n" + "x" * MAX_LINE + "?\n")
    assert message.startswith(f"{tmp_path / 'pool.txt'}:3: line of {MAX_LINE + 1} characters")


@pytest.mark.parametrize("char", ["\x00", "\x1b", "\x7f", "\r", "\x85", "\u2028"])
def test_a_control_character(tmp_path, char):
    message = pool_error(tmp_path, f"What is shown?\n\nWho{char} is there?\n")
    assert message == f"{tmp_path / 'pool.txt'}:3: control character U+{ord(char):04X} at column 4"


def test_a_control_character_in_a_comment_is_an_error_too(tmp_path):
    message = pool_error(tmp_path, "# bad\x07 comment\nWhat?\n")
    assert message.startswith(f"{tmp_path / 'pool.txt'}:1: control character")


def test_a_tab_is_whitespace(tmp_path):
    write_pool(tmp_path, "\tWhat\tis shown?\t\n")
    assert load_pool("pool", tmp_path).questions == ("What\tis shown?",)


def test_not_utf8(tmp_path):
    message = pool_error(tmp_path, b"What is shown?\n# caf\xe9\nWho?\n")
    assert message.startswith(f"{tmp_path / 'pool.txt'}:2: not UTF-8 text (")


def test_an_unknown_pool_lists_the_pools_there(tmp_path):
    write_pool(tmp_path, "What?\n", name="b_pool")
    write_pool(tmp_path, "What?\n", name="a_pool")
    (tmp_path / "template.j2").write_text("not a pool")
    with pytest.raises(PoolError, match=r"^unknown question pool 'nope' in .*; available: a_pool, b_pool$"):
        load_pool("nope", tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(PoolError, match="available: none$"):  # a name is a pool of the folder, never a path
        load_pool("../a_pool", tmp_path / "sub")


def test_a_missing_folder(tmp_path):
    with pytest.raises(PromptError, match="does not exist"):
        load_pool("pool", tmp_path / "absent")
