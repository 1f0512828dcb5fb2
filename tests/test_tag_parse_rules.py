"""pipeline.tags.parse, rule by rule: where each of parse_tags' rules starts and stops (the
label, chatter and refusal patterns, list markers, the word limits, the clause rule), each with
an answer a model could write."""

from __future__ import annotations

import pytest

from pipeline.tags import parse_tags

# ---- refusals: only an answer that opens by declining gives nothing -------------------------------------


@pytest.mark.parametrize(
    "opening",
    [
        "I apologize, but I cannot see the video.",
        "I apologise, the frames are blank.",
        "My apologies, the caption is empty.",
        "I can not determine the action.",
        "I can't tell what happens.",
        "I won't guess without the video.",
        "I am not able to view images.",
        "I am unable to view images.",
        "I'm unable to see the video.",
        "I’m not able to watch videos.",
        "Im unable to open the frames.",
        "**Sorry**, the video did not load.",
        "As an AI, I do not watch videos.",
    ],
)
def test_an_answer_that_opens_by_declining_gives_no_tags_even_with_a_list_after(opening):
    assert parse_tags(opening + "\n- sports\n- fun") == []


def test_an_apology_after_the_tags_is_not_a_refusal():
    text = "- sports\n- fun\nSorry, I could not find more than two tags."
    assert parse_tags(text) == ["sports", "fun"]


# ---- markdown: headings, rules, code, emphasis ---------------------------------------------------------


def test_a_heading_gives_no_tag_in_an_answer_without_list_markers():
    assert parse_tags("## Tags\nSports\nFun") == ["sports", "fun"]
    assert parse_tags("  ### General Tags\nSports\nFun") == ["sports", "fun"]  # indented heading


def test_a_horizontal_rule_does_not_turn_the_answer_into_a_list():
    # "* * *" would read as a bullet: the lines around it would then be taken for preambles.
    assert parse_tags("Sports, music, dance\n* * *\nFun") == ["sports", "music", "dance", "fun"]
    assert parse_tags("Sports, music\n- - -\nFun") == ["sports", "music", "fun"]


def test_underscore_bold_around_a_label_still_reads_as_the_label():
    assert parse_tags("__Tags:__ sports, fun") == ["sports", "fun"]


def test_code_fences_give_no_tag():
    assert parse_tags("```\nsports\nfun\n```") == ["sports", "fun"]
    # A fence's language name is not a tag.
    assert parse_tags("Here are the tags:\n```text\ncooking, baking\n```") == ["cooking", "baking"]
    assert parse_tags("```json\n- cooking\n- baking\n```") == ["cooking", "baking"]
    assert parse_tags("```# Tags```\nsports, fun") == ["sports", "fun"]  # a heading inside a one-line fence


def test_list_items_wrapped_in_inline_code_are_still_items():
    # As items, each gives the tag before its explanation; as plain lines the long explanations drop them.
    text = "`- Teamwork - working together as one team`\n`- Cooking - making food at home`"
    assert parse_tags(text) == ["teamwork", "cooking"]


def test_emphasis_inside_a_tag_is_punctuation():
    assert parse_tags("- *outdoor* fun\n- _team_ spirit\n- sports*") == ["outdoor fun", "team spirit", "sports"]


# ---- list markers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("marker", ["-", "*", "+", "•", "‣", "◦", "▪", "●", "·", "–", "—", "1.", "1)", "(1)", "12."])
def test_each_list_marker_makes_the_line_an_item(marker):
    # An item gives the tag before its explanation; a plain line with a long explanation gives nothing.
    text = f"Tags for the video\n{marker} Teamwork - the act of working together as one\n{marker} Joy"
    assert parse_tags(text) == ["teamwork", "joy"]


def test_a_bullet_glyph_needs_no_space_but_a_dash_does():
    assert parse_tags("•sports\n•fun") == ["sports", "fun"]
    # "-sports" is not an item, so the answer has no list and its first line is not taken for a preamble.
    assert parse_tags("Hiking trip, camping\n-sports") == ["hiking trip", "camping", "sports"]


def test_a_number_is_a_marker_only_before_a_space_or_a_letter_and_with_at_most_three_digits():
    assert parse_tags("1.sports\n2.fun") == ["sports", "fun"]
    # "2.5 hours" is a quantity, not item 2: the answer has no list, so the first line is a tag too.
    assert parse_tags("Cooking show\n2.5 hours") == ["cooking show", "2 5 hours"]
    # 1234. is not a list number: the lines are plain lines, and "Teamwork: ..." gives its label.
    assert parse_tags("Teamwork: working together\n1234. sports") == ["teamwork", "sports"]


def test_numbered_items_on_one_line_are_split_at_each_number():
    assert parse_tags("1. sports 2. fun 3. music") == ["sports", "fun", "music"]
    assert parse_tags("- Objects: 1) cake 2) candles\n- Actions: 1) making wishes 2) blowing candles") == [
        "cake", "candles", "making wishes", "blowing candles",
    ]


# ---- inside an item ---------------------------------------------------------------------------------------


def test_an_item_that_lists_several_tags_gives_each():
    assert parse_tags("- sports, fun\n- music; dance") == ["sports", "fun", "music", "dance"]


def test_a_group_heading_item_gives_no_tag_even_with_trailing_spaces():
    text = "* **Objects:** \n  * Cake\n  * Candles\n* **Actions:**\t\n  * Making wishes"
    assert parse_tags(text) == ["cake", "candles", "making wishes"]


def test_only_the_text_before_the_first_colon_dash_or_sentence_end_of_an_item_is_its_tag():
    text = """1. Teamwork: working together. Example: a relay race
2. Joy — an emotion – of happiness — and fun
3. Music - rhythm - melody
4. Dance. Movement. Rhythm.
5. Cooking (making food) - at home"""
    assert parse_tags(text) == ["teamwork", "joy", "music", "dance", "cooking"]


def test_an_unclosed_bracket_hides_the_rest_of_the_item():
    assert parse_tags("- sports (outdoor, fun\n- music [genre") == ["sports", "music"]


# ---- lines around a list: preambles, notes and labelled lists ---------------------------------------------


@pytest.mark.parametrize("label", ["Tags", "Tag", "Keywords", "Keyword", "Answer", "Output", "Result", "List",
                                   "Here are more", "Sure, some more", "Certainly, also"])
def test_a_labelled_line_beside_a_list_gives_its_tags(label):
    assert parse_tags(f"- sports\n- fun\n{label}: cooking, baking") == ["sports", "fun", "cooking", "baking"]


def test_other_lines_beside_a_list_give_nothing():
    text = """Visual description of the video
- sports
- fun
Category: outdoor recreation
Note: some extra tags: joy, music
Enjoy the video"""
    # "Category" is not a label; a note stays a note even when a later colon follows the word "tags".
    assert parse_tags(text) == ["sports", "fun"]


# ---- answers without a list: one line, one tag or one comma-separated list --------------------------------


def test_each_plain_line_gives_the_tag_before_its_explanation():
    text = "Teamwork: working together: the key to success\nCompetition: playing to win"
    assert parse_tags(text) == ["teamwork", "competition"]


_CHATTER = ["Sure", "Certainly", "Of course", "Okay", "OK", "Absolutely", "Great", "Here are the results",
            "Here is a summary", "Here you go", "Here they are", "Based on the caption", "I hope so", "Hope this works",
            "Let me know", "Feel free", "Note", "Please see", "These tags fit", "These are good", "This list fits",
            "This is it", "I've listed them", "I have more", "I'll add more", "I will add", "I can add", "In summary",
            "Overall"]


@pytest.mark.parametrize("chatter", _CHATTER)
def test_a_sentence_of_chatter_gives_no_tag(chatter):
    assert parse_tags(f"Cooking, baking\n{chatter}.") == ["cooking", "baking"]


@pytest.mark.parametrize("chatter", [c for c in _CHATTER if not any(w in c for w in ("Sure", "Certainly", "Here",
                                                                                      "tags", "list"))])
def test_chatter_before_a_colon_gives_no_tag(chatter):
    # Unlike "Teamwork: working together", whose label is the tag.
    assert parse_tags(f"Cooking, baking\n{chatter}: kitchen") == ["cooking", "baking"]


def test_chatter_words_that_are_also_labels_read_as_labels():
    assert parse_tags("Sure: cooking, baking\nHere you go: kitchen\nThese tags fit: food") == [
        "cooking", "baking", "kitchen", "food",
    ]


def test_a_labelled_line_gives_the_tags_after_its_label():
    assert parse_tags("Cooking video\nHere are the tags: cooking, baking") == [
        "cooking video", "cooking", "baking",
    ]


def test_questions_exclamations_and_chatter_sentences_give_nothing():
    assert parse_tags("Cooking, baking, kitchen. Delicious food! Any more ideas?") == ["cooking", "baking", "kitchen"]
    assert parse_tags("Sports, fun, music. Hope this helps.") == ["sports", "fun", "music"]


def test_a_sentence_of_chatter_before_the_tags_does_not_hide_them():
    assert parse_tags("Sure. Cooking, baking, kitchen.") == ["cooking", "baking", "kitchen"]


def test_every_sentence_of_tags_on_a_line_counts():
    assert parse_tags("Cooking, baking. Kitchen, food.") == ["cooking", "baking", "kitchen", "food"]


def test_a_lone_piece_is_a_tag_up_to_three_words_counted_before_stopwords_go():
    assert parse_tags("Birthday party celebration\nSense of humor") == ["birthday party celebration", "sense humor"]
    # Four words with no comma read as prose, even when stopwords would leave two.
    assert parse_tags("The joy of cooking.") == []
    assert parse_tags("It shows some cooking.") == []


def test_a_comma_list_is_read_when_no_piece_has_more_than_five_words():
    assert parse_tags("Sports, a sense of the outdoors") == ["sports", "sense outdoors"]
    # A six-word piece makes the sentence prose, so none of its pieces is taken.
    assert parse_tags("Cooking, baking, making a cake for the family") == []


def test_a_trailing_ellipsis_is_not_a_word():
    assert parse_tags("Sense of humor ...") == ["sense humor"]


# ---- the word rules: length, count, digits ----------------------------------------------------------------


def test_a_word_of_thirty_characters_is_kept_and_a_longer_one_is_garbage():
    thirty, thirty_one = "do-it-yourself-home-renovation", "do-it-yourself-home-renovations"
    assert (len(thirty), len(thirty_one)) == (30, 31)
    assert parse_tags(f"- {thirty}\n- {thirty_one} fun\n- fun") == [thirty, "fun"]


def test_a_tag_of_only_numbers_is_dropped_and_numbers_beside_words_are_kept():
    assert parse_tags("- 2024\n- 10 20\n- 3d animation\n- 90s music") == ["3d animation", "90s music"]


# ---- the clause rule: a subject and a finite verb after it -----------------------------------------------


def test_a_two_word_clause_is_dropped():
    assert parse_tags("- Dog barks\n- Team wins\n- Barking dog") == ["barking dog"]


def test_a_clause_after_an_article_is_dropped():
    assert parse_tags("- The dog barks\n- The happy dog") == ["happy dog"]


def test_a_modal_verb_makes_a_clause():
    assert parse_tags("- Dog cannot swim\n- Swimming dog") == ["swimming dog"]


def test_comparative_and_superlative_adverbs_between_subject_and_verb_still_make_a_clause():
    text = "- Crowd earlier cheered\n- Runner faster finishes\n- Audience most enjoyed\n- Cheering crowd"
    assert parse_tags(text) == ["cheering crowd"]


def test_a_noun_followed_only_by_adverbs_is_a_tag():
    assert parse_tags("- Family together\n- Friends forever\n- Friends together") == [
        "family together", "friends forever", "friends together",
    ]


def test_a_subject_pronoun_opening_a_tag_makes_it_a_sentence():
    assert parse_tags("- We dance\n- They smile happily\n- Dance party") == ["dance party"]


def test_an_answer_written_as_a_json_list_gives_its_strings():
    assert parse_tags('```json\n["cooking", "baking", "family time"]\n```') == ["cooking", "baking", "family time"]
    assert parse_tags('Tags:\n["Outdoor Sports", "Teamwork"]') == ["outdoor sports", "teamwork"]
    # One list per line, a trailing comma allowed, after tags written otherwise.
    assert parse_tags('sports, fun\n["cooking", "baking"],\n["music"]') == ["sports", "fun", "cooking", "baking",
                                                                           "music"]
    # Still cleaned like any tag: stopwords, clauses and long phrases go.
    assert parse_tags('["the beach", "a man plays guitar", "one two three four"]') == ["beach"]


def test_a_bracketed_aside_that_is_no_json_list_is_still_dropped():
    assert parse_tags("sports [as requested], fun") == ["sports", "fun"]
    assert parse_tags("[1, 2]\nsports") == ["sports"]  # a list, but of numbers: no tags
