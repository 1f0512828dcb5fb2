"""pipeline.tags: tags out of what instruction-tuned models write, the paper's cleaning rules, the
merged view over temperatures, and the tag sentences of MAC-VR's released training code."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest

from pipeline.tags import (
    MAX_CHARS,
    STOPWORDS,
    first_tags,
    merge_votes,
    parse_tags,
    sample_tags,
    tag_sentence,
)

# ---- list styles -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "- sports\n- physical activity\n- outdoors",
        "* sports\n* physical activity\n* outdoors",
        "• sports\n• physical activity\n• outdoors",
        "– sports\n– physical activity\n– outdoors",
        "1. sports\n2. physical activity\n3. outdoors",
        "1) sports\n2) physical activity\n3) outdoors",
        "(1) sports\n(2) physical activity\n(3) outdoors",
        "sports, physical activity, outdoors",
        "sports; physical activity; outdoors.",
        "Sports\nPhysical activity\nOutdoors\n",
        "1) sports 2) physical activity 3) outdoors",
        "- sports\n1. physical activity\n• outdoors",
    ],
)
def test_each_list_style_gives_one_tag_per_item(text):
    assert parse_tags(text) == ["sports", "physical activity", "outdoors"]


# ---- what instruction-tuned models write -------------------------------------------------------------

LLAMA_BOLD_NUMBERED = """Here are the top 10 general tags for the action:

1. **Competition**
2. **Teamwork**
3. **Physical Activity**
4. **Sports**
5. **Strategy**
6. **Athleticism**
7. **Coordination**
8. **Skill**
9. **Entertainment**
10. **Recreation**"""

EXPLANATIONS = """Sure! Here are the top 10 general tags:

1. **Teamwork**: working together towards a common goal.
2. Competition - the act of competing against others, often for a prize.
3. **Sense of Humor** – the ability to find things funny
4. Celebration (a joyful gathering)
5. Self-care: taking care of oneself.
6. Joy—an emotion of happiness

I hope this helps! Let me know if you need more."""

VLM_BULLETS = """• Cooking
• Food preparation
• Kitchen
• Culinary skills
• Home cooking
• Cutting vegetables"""

COMMA_SENTENCE = "Gaming, exploration, adventure, entertainment, gameplay interaction, virtual, and fantasy."

VICUNA_INLINE = "1) sports 2) outdoor activity 3) fun 4) playing guitar 5) teamwork"

TRAILING_NOTES = """Here are 5 general tags that capture the fundamental idea of this action:

- Dance
- Performance
- Stage
- Music
- Rhythm

Note: These tags are based on the caption only and may not reflect the video.
Let me know if you need more!"""

NESTED = """**Visual tags:**

* **Objects:**
  * Cake
  * Candles
* **Actions:**
  * Making wishes
  * Blowing candles
* Birthday celebration"""

MARKDOWN = """### General Tags
- *Teamwork*
- `Cooperation`
- __Leadership__
- ***Motivation***
---
> - Unity"""

LABELLED_LINE = """Sure, here they are: birthday celebration, family gathering, cake, candle, making wishes."""

MIXED = """Tags: birthday celebration, family gathering
- cake
- candle
Thank you."""


@pytest.mark.parametrize(
    "text, expected",
    [
        (LLAMA_BOLD_NUMBERED, ["competition", "teamwork", "physical activity", "sports", "strategy", "athleticism",
                               "coordination", "skill", "entertainment", "recreation"]),
        (EXPLANATIONS, ["teamwork", "competition", "sense humor", "celebration", "self-care", "joy"]),
        (VLM_BULLETS, ["cooking", "food preparation", "kitchen", "culinary skills", "home cooking",
                       "cutting vegetables"]),
        (COMMA_SENTENCE, ["gaming", "exploration", "adventure", "entertainment", "gameplay interaction", "virtual",
                          "fantasy"]),
        (VICUNA_INLINE, ["sports", "outdoor activity", "fun", "playing guitar", "teamwork"]),
        (TRAILING_NOTES, ["dance", "performance", "stage", "music", "rhythm"]),
        (NESTED, ["cake", "candles", "making wishes", "blowing candles", "birthday celebration"]),
        (MARKDOWN, ["teamwork", "cooperation", "leadership", "motivation", "unity"]),
        (LABELLED_LINE, ["birthday celebration", "family gathering", "cake", "candle", "making wishes"]),
        (MIXED, ["birthday celebration", "family gathering", "cake", "candle"]),
    ],
    ids=["llama-bold-numbered", "explanations", "vlm-bullets", "comma-sentence", "vicuna-inline",
         "trailing-notes", "nested", "markdown", "labelled-line", "mixed"],
)
def test_realistic_model_outputs(text, expected):
    assert parse_tags(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t \n",
        "I'm sorry, but I can't view videos. However, here are some tags:\n- sports\n- fun",
        "I’m sorry, I cannot help with that.",
        "Sorry, I am unable to determine the action from these frames.",
        "I cannot provide tags for this content.",
        "As an AI language model, I can't watch videos, but tags could include: sports, fun.",
        "Unfortunately, the video is too dark to see anything.",
        "The video shows a man who is standing in a kitchen and slowly cutting some vegetables on a board.",
        "Sure! Here are the tags.\nLet me know if you need anything else!",
        "- the\n- of the\n- and\n- 10",
    ],
)
def test_refusals_empty_and_prose_give_nothing(text):
    assert parse_tags(text) == []


# ---- the paper's cleaning rules ----------------------------------------------------------------------


def test_clauses_are_dropped_verb_and_noun_phrases_kept():
    text = """1. The man plays guitar
2. People are dancing
3. Making wishes
4. Collect items
5. Playing guitar
6. Birthday celebration
7. She smiles
8. A dog runs quickly
9. Discover hidden objects
10. Wear gloves"""
    assert parse_tags(text) == [
        "making wishes", "collect items", "playing guitar", "birthday celebration", "discover hidden objects",
        "wear gloves",
    ]


def test_an_adverb_between_subject_and_verb_still_makes_a_clause():
    # Each is three words, so only the clause rule can drop it; "quickly running" has no subject.
    text = "1. Man quickly runs\n2. Dog slowly walks\n3. Woman loudly sings\n4. Quickly running\n5. Slow walk"
    assert parse_tags(text) == ["quickly running", "slow walk"]


def test_tags_longer_than_three_words_are_dropped_counting_after_stopwords():
    text = "- exploring the hidden caves of the mountain\n- a sense of adventure and fun\n- big red shiny car\n- car"
    # 4 words left in the first and third; "sense adventure fun" is 3 once "a", "of", "and" go.
    assert parse_tags(text) == ["sense adventure fun", "car"]


def test_stopwords_are_removed_everywhere_in_a_tag():
    # The paper's own tags show inner stopwords gone: "hills mountains", "fun nature" (Figs. 2, 7).
    text = "The joy of cooking, hills and mountains, fun in nature, the outdoors, don't stop"
    assert parse_tags(text) == ["joy cooking", "hills mountains", "fun nature", "outdoors", "stop"]


def test_stopword_list_is_nltk_english():
    assert {"the", "of", "and", "a", "is", "are", "don", "t", "s", "ll", "won", "very"} <= STOPWORDS
    assert not {"sports", "fun", "video", "man", "play"} & STOPWORDS
    assert all(w.isalpha() and w == w.lower() for w in STOPWORDS)


def test_punctuation_is_removed_and_inner_hyphens_kept():
    text = "Problem-solving!, gift-giving, rock & roll, fellowship/companionship, children's games, 3D animation, 'fun'"
    assert parse_tags(text) == [
        "problem-solving", "gift-giving", "rock roll", "fellowship companionship", "children games", "3d animation",
        "fun",
    ]


def test_tags_are_lowercase_and_deduplicated_in_first_appearance_order():
    text = "- Dance\n- Music\n- DANCE\n- the dance\n- Music!\n- stage\n- dance."
    assert parse_tags(text) == ["dance", "music", "stage"]


def test_only_the_first_max_chars_are_read():
    head = "- sports\n" + "x" * (MAX_CHARS - len("- sports\n") - 2) + "\n"
    assert parse_tags(head + "- fun\n") == ["sports"]
    assert parse_tags("- sports\n- fun\n" + "y" * 100_000) == ["sports", "fun"]


def test_garbage_words_give_no_tags():
    assert parse_tags("a" * 200) == []
    assert parse_tags("- " + "ab" * 40 + "\n- sports") == ["sports"]
    assert parse_tags("lorem ipsum dolor sit amet consectetur " * 300) == []


# ---- never an exception --------------------------------------------------------------------------------

_FUZZ_ALPHABET = (
    "abcdefgh XYZ 0123456789 {}{{}}[]()<>:;,.!?-–—•*_`#>|/\\'\"’\n\t\r "
    "éüßçñ日本語кириллицаالعربية🙂🎉\u200b\u0301\ufdfa\x00"
)


def _check_tags(tags):
    assert isinstance(tags, list) and len(tags) == len(set(tags))
    for tag in tags:
        words = tag.split(" ")
        assert isinstance(tag, str) and tag == tag.lower() and 1 <= len(words) <= 3, tag
        assert all(words) and not STOPWORDS & set(words), tag


def test_fuzz_never_raises():
    rng = random.Random(15)
    pieces = ["- ", "1. ", "1) ", "**", "{}", "{{caption}}", ", ", ": ", " - ", "\n", "I'm sorry", "Tags:", "the "]
    for _ in range(2000):
        n = rng.randrange(0, 300)
        text = "".join(rng.choice(_FUZZ_ALPHABET) if rng.random() < 0.8 else rng.choice(pieces) for _ in range(n))
        _check_tags(parse_tags(text))
    for text in ["\n" * 10_000, "-" * 20_000, "1. " * 5000, "{" * 9000 + "}", "\ufdfa" * 9000, "a, " * 5000]:
        _check_tags(parse_tags(text))


def test_parses_offline_without_nltk_data(tmp_path):
    # The tagger needs no download: no network, and an empty NLTK data path and home.
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network used')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from pipeline.tags import parse_tags\n"
        "print(parse_tags('- The man plays guitar\\n- making wishes'))\n"
    )
    env = {**os.environ, "NLTK_DATA": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['making wishes']"


# ---- merged view over temperatures ---------------------------------------------------------------------


def test_merge_votes_ranks_by_votes_then_first_appearance():
    lists = [["sports", "fun", "outdoor"], ["fun", "teamwork", "fun"], ["outdoor", "fun", "game"], []]
    assert merge_votes(lists) == [("fun", 3), ("outdoor", 2), ("sports", 1), ("teamwork", 1), ("game", 1)]


def test_merge_votes_ties_follow_list_order_then_tag_order():
    assert merge_votes([["b", "a"], ["c", "a", "b"]]) == [("b", 2), ("a", 2), ("c", 1)]
    assert merge_votes([["x"], ["y"], ["z"]]) == [("x", 1), ("y", 1), ("z", 1)]
    assert merge_votes([]) == []


# ---- training-time helpers -----------------------------------------------------------------------------


def test_tag_sentence_format():
    assert tag_sentence(["sports", "physical activity"]) == "a video of sports, physical activity"
    assert tag_sentence([]) == "a video of "


def test_sample_tags_is_seeded_and_draws_without_replacement():
    tags = [f"tag{i}" for i in range(20)]
    first = sample_tags(tags, 8, seed=3)
    assert first == sample_tags(tags, 8, seed=3)
    assert len(first) == 8 and len(set(first)) == 8 and set(first) <= set(tags)
    assert first == random.Random(3).sample(tags, 8)  # the released code's random.sample, seeded
    assert len({tuple(sample_tags(tags, 8, seed=s)) for s in range(10)}) > 1
    assert tags == [f"tag{i}" for i in range(20)]  # the input is not shuffled in place


def test_sample_tags_with_fewer_tags_than_asked_gives_all_of_them():
    tags = ["a", "b", "c"]
    drawn = sample_tags(tags, 10, seed=0)
    assert sorted(drawn) == tags and drawn == random.Random(0).sample(tags, 3)
    assert sample_tags([], 5, seed=0) == []


def test_first_tags():
    assert first_tags(["a", "b", "c"], 2) == ["a", "b"]
    assert first_tags(["a"], 5) == ["a"]
    assert first_tags(["a", "b"], 0) == []
