"""Tags from a model's answer, and the helpers that turn tags into MAC-VR's tag sentences.

`parse_tags` is the paper's only post-processing (MAC-VR Appx. C): "we remove punctuation;
stopwords; extracted tags that contain a noun and a verb to avoid the presence of complete
sentences as tags; and tags larger than 3 words". Before that it finds the tags in what an
instruction-tuned model actually writes: bullet and numbered lists, comma-separated lists,
preambles, explanations after a colon or a dash, markdown, trailing notes, refusals.

How the paper's rules are read, from its own example tags (Figs. 2, 7, 8): stopwords go wherever
they are ("hills and mountains" is "hills mountains", "sense of humor" is "sense humor");
hyphenated words are one word ("self-care", "problem-solving"); words are counted after the
stopwords are removed; and "contain a noun and a verb" means a clause (see `_is_clause`), since
the paper keeps "making wishes", "collect items" and "discover hidden objects".

Part-of-speech tagger: TextBlob's `PatternTagger` (the Brill-style tagger of the pattern library,
ported into TextBlob). Its lexicon and rules ship inside the `textblob` wheel, so it tags offline
with nothing to download: NLTK, which TextBlob imports, needs its data only for TextBlob's other
taggers. The alternatives cannot be installed from a package registry: NLTK's own tagger needs
`nltk.download`, spaCy's models are published outside PyPI (only unofficial copies are on it), and
flair and stanza fetch their models from model hubs. TextBlob is small (a 0.6 MB wheel, 2.5 MB with
NLTK), pure Python and maintained; tagging a tag takes about 20 microseconds. It is loaded on first
use, once per process.

Stopwords: NLTK's English stopword list (the `stopwords` corpus), copied here because the corpus
itself is a download. Its contraction entries ("don't") are left out: apostrophes split words, and
the fragments ("don", "t") are on the list.
"""

from __future__ import annotations

import functools
import json
import random
import re
import unicodedata

# The most of an answer that is read: ten short tags take a few hundred characters, so anything
# past this is a model that rambled or looped, and parsing it would only cost time.
MAX_CHARS = 8000
MAX_WORDS = 3  # "tags larger than 3 words" are removed (counted after stopwords are removed)
MAX_WORD_CHARS = 30  # a longer "word" is garbage (a URL, a run of letters), not a tag

# NLTK's English stopwords, less the contractions (see the module docstring).
STOPWORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren as at be because been before being below
    between both but by can couldn d did didn do does doesn doing don down during each few for from further
    had hadn has hasn have haven having he her here hers herself him himself his how i if in into is isn it its
    itself just ll m ma me mightn more most mustn my myself needn no nor not now o of off on once only or other
    our ours ourselves out over own re s same shan she should shouldn so some such t than that the their theirs
    them themselves then there these they this those through to too under until up ve very was wasn we were
    weren what when where which while who whom why will with won wouldn y you your yours yourself yourselves
    """.split()
)

# A list item: a bullet (-, *, +, •, –, ...) or a number (1.  1)  (1)) at the start of a line.
_ITEM = re.compile(r"^\s*(?:[-*+–—]\s+|[•‣◦▪●·]\s*|\(?\d{1,3}[.)](?=\s|[^\W\d_])\s*)(?P<text>.*)$")
# A second number marker inside an item: "1) sports 2) outdoor" is two items on one line.
_INLINE_NUMBER = re.compile(r"\s+\(?\d{1,3}[.)]\s+")
# The answer opens by declining: whatever follows is not tags of this input.
_REFUSAL = re.compile(
    r"^\W*(?:i'?m sorry|i am sorry|sorry\b|i apologi[sz]e|my apologies|unfortunately\b|as an ai\b"
    r"|i(?: cannot| can ?not| can'?t| am unable|'?m unable| am not able|'?m not able| won'?t)\b)"
)
# A line or sentence of chatter around the tags ("Sure!", "I hope this helps.", "Note: ...").
_CHATTER = re.compile(
    r"^\W*(?:sure|certainly|of course|okay|ok|absolutely|great|here (?:are|is|you go|they are)|based on|i hope"
    r"|hope (?:this|these|that)|let me know|feel free|note|please|these (?:tags|are)|this (?:list|is)|i'?ve|i have"
    r"|i'?ll|i will|i can|in summary|overall)\b"
)
# What a label before a colon says when the tags follow it ("Tags: a, b", "Here are the tags: ...").
_LABEL = re.compile(r"\b(?:tags?|keywords?|answer|output|result|list|here|sure|certainly)\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_EXPLANATION_DASH = re.compile(r"\s[-–—]+\s|[–—]")
_BRACKETED = re.compile(r"\([^)]*\)?|\[[^\]]*\]?|\{[^}]*\}?")
_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")
_APOSTROPHES = re.compile(r"['’‘`´]")
_POSSESSIVE = re.compile(r"(?<=\w)'s\b")
_QUOTES = re.compile(r"[’‘´]")
_RULE = re.compile(r"^\s*(?:[-*_=]\s*){3,}$")
# A code fence on a line of its own, with or without a language ("```", "```text", "```json").
_FENCE = re.compile(r"^```[\w+.-]*\s*$")
# A whole line that is a JSON list ('["cooking", "baking"]'): its strings are the tags.
_JSON_LIST = re.compile(r"^\s*\[.*\]\s*,?\s*$")


def parse_tags(text: str) -> list[str]:
    """The tags in one model answer, in the order written, each lowercase, without punctuation
    or stopwords, one to three words, no clause ("man plays guitar"), each once.

    Reads the first MAX_CHARS characters. An answer that opens with a refusal, or has nothing
    that reads as a tag, gives []. Never raises for a str.
    """
    text = _QUOTES.sub("'", unicodedata.normalize("NFKC", text[:MAX_CHARS]).lower())
    lines = [_strip_markdown(line) for line in text.splitlines()]
    lines = [line for line in lines if line is not None and line.strip()]
    if not lines or _REFUSAL.match(lines[0]):
        return []
    items = [_ITEM.match(line) for line in lines]
    candidates = []
    for line, item in zip(lines, items):
        listed = _json_strings(line)
        if listed is not None:
            candidates += listed
        elif item:
            candidates += _item_candidates(item.group("text"))
        elif any(items):
            # A list is the answer: lines around it are preambles and notes, unless one is a labelled list.
            candidates += _labelled_candidates(line)
        else:
            candidates += _line_candidates(line)
    tags = (_clean(candidate) for candidate in candidates)
    return list(dict.fromkeys(tag for tag in tags if tag))


def _strip_markdown(line: str) -> str | None:
    """The line without bold, code and quote marks; None for a heading, a rule or a code fence
    (its language name is no tag)."""
    line = line.lstrip().removeprefix(">")
    if _FENCE.match(line.strip()):
        return None
    line = line.replace("**", "").replace("__", "").replace("```", "")
    if line.startswith("#") or _RULE.match(line):
        return None
    return line.replace("`", "")


def _json_strings(line: str) -> list[str] | None:
    """The strings of a line that is a JSON list of strings, else None (the line is read as text:
    a bracketed aside is no list of tags)."""
    if not _JSON_LIST.match(line):
        return None
    try:
        value = json.loads(line.strip().rstrip(","))
    except ValueError:
        return None
    # A line in brackets that parses is a list.
    return value if all(isinstance(v, str) for v in value) else None


def _item_candidates(item: str) -> list[str]:
    """An item's tag text: "**Teamwork**: working together" and "Competition - the act of..." are
    one tag each; an item that lists several ("sports, fun", "1) a 2) b") gives each."""
    pieces = []
    for part in _INLINE_NUMBER.split(item):
        part = _BRACKETED.sub(" ", part)
        if part.rstrip().endswith(":"):
            continue  # a group heading ("1. Objects:") over nested items
        part = part.split(":", 1)[0]
        part = _EXPLANATION_DASH.split(part, 1)[0]
        part = _SENTENCE_END.split(part.strip(), 1)[0]
        pieces += re.split(r"[,;]", part)
    return pieces


def _labelled_candidates(line: str) -> list[str]:
    """The tags of a line such as "Tags: a, b, c" or "Here are the tags: a, b"; [] otherwise."""
    label, colon, rest = line.partition(":")
    if not colon or not _LABEL.search(label):
        return []
    return _list_candidates(rest)


def _line_candidates(line: str) -> list[str]:
    """The tags of a line of an answer that has no list items: a comma-separated list, a labelled
    one, or one short tag per line ("Teamwork: working together" is "teamwork")."""
    label, colon, rest = line.partition(":")
    if colon:
        if _LABEL.search(label):
            return _list_candidates(rest)
        if not _CHATTER.match(label):
            return _list_candidates(label)  # "Teamwork: an explanation"
        return []
    return _list_candidates(line)


def _list_candidates(text: str) -> list[str]:
    """Tags from running text: each sentence that is a comma-separated list of short pieces, or is
    one short piece, gives them; chatter and questions or exclamations give nothing."""
    candidates = []
    for sentence in _SENTENCE_END.split(_BRACKETED.sub(" ", text).strip()):
        sentence = sentence.strip()
        if not sentence or sentence.endswith(("!", "?")) or _CHATTER.match(sentence):
            continue
        pieces = [p for p in re.split(r"[,;]", sentence.rstrip(".")) if p.strip()]
        longest = max((len(p.split()) for p in pieces), default=0)
        if (len(pieces) > 1 and longest <= MAX_WORDS + 2) or (len(pieces) == 1 and longest <= MAX_WORDS):
            candidates += pieces
    return candidates


def _clean(candidate: str) -> str | None:
    """The tag a candidate gives, or None: punctuation, stopwords, clauses and long tags removed."""
    candidate = candidate.replace("*", " ").replace("_", " ")
    candidate = _APOSTROPHES.sub(" ", _POSSESSIVE.sub("", candidate))  # "children's games": "children games"
    words = _WORD.findall(candidate)
    if not words or any(len(w) > MAX_WORD_CHARS for w in words) or _is_clause(words):
        return None
    kept = [w for w in words if w not in STOPWORDS]
    if not kept or len(kept) > MAX_WORDS or all(w.isdigit() for w in kept):
        return None
    return " ".join(kept)


# Penn Treebank tags: a subject (a noun or a pronoun) and a finite verb after it make a clause.
_SUBJECT = {"NN", "NNS", "NNP", "NNPS", "PRP", "EX"}
_FINITE = {"VBZ", "VBD", "VBP", "MD"}
# The tagger reads "she smiles" as a pronoun and a plural noun; a tag that opens with a subject
# pronoun is a sentence whatever follows.
_SUBJECT_PRONOUNS = {"i", "he", "she", "we", "they"}


def _is_clause(words: list[str]) -> bool:
    """True when the words read as a sentence: a noun or pronoun followed by a finite verb ("the
    man plays guitar", "people are dancing"), adverbs between them allowed.

    The paper drops "tags that contain a noun and a verb", yet its own example tags keep verb
    phrases ("making wishes", "collect items", "discover hidden objects") and noun phrases whose
    words can be verbs; what it means to drop is "complete sentences", so that is what is dropped.
    Ambiguous pairs are the tagger's call ("dog barks" is a clause, "crowd cheers" a noun phrase).
    """
    if len(words) < 2:
        return False
    if words[0] in _SUBJECT_PRONOUNS:
        return True
    pos = [tag for _, tag in _pos_tag(" ".join(words))]
    if len(pos) != len(words):
        return False  # the tagger split a word of ours: no reliable reading
    for i, tag in enumerate(pos[:-1]):
        if tag in _SUBJECT:
            j = i + 1
            while j < len(pos) and pos[j] in ("RB", "RBR", "RBS"):
                j += 1  # "man quickly runs"
            if j < len(pos) and pos[j] in _FINITE:
                return True
    return False


@functools.cache
def _tagger():
    from textblob.en.taggers import PatternTagger

    return PatternTagger()


def _pos_tag(text: str) -> list[tuple[str, str]]:
    """Penn Treebank tags of space-separated words (already tokenized: the tagger does not split)."""
    return _tagger().tag(text, tokenize=False)


# ---- training-time helpers (MAC-VR's released code, shared/REFERENCE.md) --------------------------


def tag_sentence(tags: list[str]) -> str:
    """The sentence the text encoder reads: "a video of " + the tags joined by ", "."""
    return "a video of " + ", ".join(tags)


def sample_tags(tags: list[str], n: int, seed: int) -> list[str]:
    """n of the tags drawn at random (all of them, shuffled, when there are fewer), in the order
    drawn: `random.sample(tags, min(n, len(tags)))` as in the released training code, seeded."""
    return random.Random(seed).sample(tags, min(n, len(tags)))


def first_tags(tags: list[str], m: int) -> list[str]:
    """The first m tags: what the released code uses at test time, for deterministic results."""
    return tags[:m]


def merge_votes(tag_lists: list[list[str]]) -> list[tuple[str, int]]:
    """One item's tags over several answers (e.g. one per temperature): each distinct tag with the
    number of lists that contain it, most votes first, ties in order of first appearance."""
    votes: dict[str, int] = {}  # insertion order is first appearance
    for tags in tag_lists:
        for tag in dict.fromkeys(tags):  # a list votes once for a tag it repeats
            votes[tag] = votes.get(tag, 0) + 1
    return sorted(votes.items(), key=lambda item: -item[1])  # sorted() is stable: ties keep their order
