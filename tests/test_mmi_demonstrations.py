"""Eq. 7 (MMI-TVR Sec. 4.2.2): the demonstration with the shortest question, then the shortest
answer, then the fewest answer terms, the earliest on a tie; failed answers never, cut ones last."""

import pytest

from pipeline.mmi.demonstrations import DEFAULT_ANSWER_TERMS, count_answer_terms, select_demonstration, words


def candidate(question, answer, finish_reason=None):
    found = {"question": question, "answer": answer}
    if finish_reason is not None:
        found["finish_reason"] = finish_reason
    return found


def test_words_counts_whitespace_separated_words():
    assert words("what  is\tthe man\ndoing?") == 5
    assert words("") == 0
    assert words("   ") == 0


def test_terms_count_whole_words_and_phrases_case_insensitively():
    assert count_answer_terms("He might run.", ["might"]) == 1
    assert count_answer_terms("A mighty river; almighty.", ["might"]) == 0
    assert count_answer_terms("I am unsure, not sure", ["sure"]) == 1
    assert count_answer_terms("MIGHT, might; Might!", ["might"]) == 3
    assert count_answer_terms("I am not sure, not\n sure at all", ["not sure"]) == 2
    assert count_answer_terms("it is notsure", ["not sure"]) == 0
    assert count_answer_terms("I can't tell and I can\u2019t say", ["can't"]) == 2
    # Occurrences of several terms add up.
    assert count_answer_terms("Maybe a dog, perhaps a cat, maybe both.", ["maybe", "perhaps"]) == 3


def test_default_terms_count_hedges_and_no_term_is_counted_inside_another():
    assert count_answer_terms("Sorry, I cannot tell; it seems unclear, maybe a dog.") == 5
    assert count_answer_terms("A man plays a red guitar on a stage.") == 0
    for term in DEFAULT_ANSWER_TERMS:
        assert count_answer_terms(term) == 1, term  # each phrase is one occurrence, of itself only


def test_the_shortest_question_wins_before_the_answer_and_the_terms():
    candidates = [
        candidate("what is the man doing now", "plays"),
        candidate("what is he doing", "maybe he is perhaps possibly playing something"),
        candidate("what is the man doing", "plays"),
    ]
    assert select_demonstration(candidates) == 1


def test_the_shortest_answer_wins_before_the_terms():
    candidates = [
        candidate("what is he doing", "he plays a red guitar"),
        candidate("what is he doing", "maybe perhaps guitar"),
        candidate("what is he doing", "he plays a guitar"),
    ]
    assert select_demonstration(candidates) == 1


def test_fewer_answer_terms_break_a_length_tie():
    candidates = [
        candidate("what is he doing", "maybe he plays guitar"),
        candidate("what is he doing", "he might play guitar"),
        candidate("what is he doing", "he plays the guitar"),
    ]
    assert select_demonstration(candidates) == 2
    # The terms given replace the defaults: with none, it is a full tie and the earliest wins.
    assert select_demonstration(candidates, answer_terms=[]) == 0
    assert select_demonstration(candidates, answer_terms=["guitar", "the"]) == 0


def test_a_full_tie_goes_to_the_earliest_candidate():
    candidates = [candidate("what is he doing", "he plays guitar")] * 3
    assert select_demonstration(candidates) == 0
    candidates = [candidate("a b c d", "x y z"), candidate("a b c", "x y z w"), candidate("c b a", "z y x w")]
    assert select_demonstration(candidates) == 1


def test_errors_are_never_chosen_and_cut_answers_only_without_a_complete_one():
    candidates = [
        candidate("q", "", "error"),
        candidate("what is he doing", "a", "length"),
        candidate("what is he doing now", "he plays a guitar", "stop"),
    ]
    assert select_demonstration(candidates) == 2
    assert select_demonstration(candidates[:2]) == 1
    candidates = [candidate("what is he doing", "a b c", "length"), candidate("what is he doing", "a b", "length")]
    assert select_demonstration(candidates) == 1
    # No finish_reason at all is a complete answer.
    assert select_demonstration([candidate("q r", "a", "length"), candidate("q r s", "a b")]) == 1


def test_no_eligible_candidate_is_an_error():
    with pytest.raises(ValueError, match="no candidate"):
        select_demonstration([])
    with pytest.raises(ValueError, match="all failed"):
        select_demonstration([candidate("q", "", "error"), candidate("q", None, "error")])
    with pytest.raises(ValueError, match="candidate demonstration 1"):
        select_demonstration([candidate("q", "a"), {"question": "q"}])


def test_an_empty_answer_is_chosen_only_when_every_answer_is_empty():
    candidates = [{"question": "What?", "answer": "", "finish_reason": "stop"},
                  {"question": "What is it?", "answer": "a dog", "finish_reason": "length"},
                  {"question": "Who is there and why?", "answer": "two people talk", "finish_reason": "stop"}]
    assert select_demonstration(candidates) == 2  # complete beats cut, and both beat empty
    assert select_demonstration(candidates[:2]) == 1  # a cut answer beats an empty one
    assert select_demonstration(candidates[:1]) == 0
    blank = [{"question": "Where is it?", "answer": "  \n", "finish_reason": "stop"},
             {"question": "What?", "answer": "", "finish_reason": "length"}]
    assert select_demonstration(blank) == 1  # all empty: Eq. 7 decides (the shorter question)
