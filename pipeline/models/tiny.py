"""A tiny CLIP checkpoint built offline, for tests and the demo.

    folder = build_tiny_clip(tmp / "tiny-clip")    # config, weights, tokenizer, image processor

It is a real `CLIPModel` (random weights, seeded, so every build is identical) with CLIP's real
preprocessing (224 pixels, CLIP mean and std) and a CLIP-style byte-level BPE tokenizer trained
here on a few sentences, all saved with `save_pretrained` so that every loader reads it through
`from_pretrained` exactly as it would read a downloaded checkpoint. Nothing touches the network.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

# Caption-like sentences to learn merges from; any text still tokenizes (byte-level BPE).
_CORPUS = """
a man is playing a guitar on a stage in front of a crowd
a woman is cooking pasta in a small kitchen and talking to the camera
two dogs run across a green field chasing a red ball
a cartoon character jumps over a river while birds fly above
people are dancing at a wedding party with colorful lights
a child rides a bicycle down a quiet street on a sunny day
someone is explaining how to fix a car engine step by step
a group of friends play basketball outside a school
the news anchor talks about the weather and traffic
a cat sleeps on a sofa next to a window while rain falls
a chef slices vegetables and puts them into a hot pan
a person is swimming in a blue pool and then climbs out
soldiers march in a parade as the band plays music
a video game character fights a monster in a dark cave
a girl sings a song and plays the piano in her room
"""
_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]
# Written last: a folder without it (a build cut short, an empty folder) is built again.
_MARKER = "tiny_clip_complete"
_WIDTH, _LAYERS, _HEADS, _PROJECTION = 32, 2, 2, 16


def _learn_merges(words: Counter, count: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned from word counts, CLIP style (the last symbol of a word carries
    `</w>`). Ties go to the smallest pair, so the result is the same on every run: the
    `tokenizers` trainer breaks ties by hash order, which differs between processes."""
    splits = {word: [*word[:-1], word[-1] + "</w>"] for word in words}
    merges = []
    for _ in range(count):
        pairs = Counter()
        for word, n in words.items():
            for pair in zip(splits[word], splits[word][1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for word, symbols in splits.items():
            i, merged = 0, []
            while i < len(symbols):
                if tuple(symbols[i : i + 2]) == best:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            splits[word] = merged
    return merges


def _train_tokenizer(merge_count: int = 300):
    """A `CLIPTokenizer` laid out like OpenAI's: the 256 byte symbols, the same with `</w>`,
    then the learned merges, then <|startoftext|> and <|endoftext|> as the last two ids."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    # Words as transformers' CLIPTokenizer will see them: its own normaliser (NFC, whitespace,
    # lowercase) and pre-tokeniser (CLIP's regex, then bytes as printable symbols).
    backend = CLIPTokenizer().backend_tokenizer
    words = Counter(
        piece
        for line in _CORPUS.strip().split("\n")
        for piece, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(line))
    )
    merges = _learn_merges(words, merge_count)
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab_list = symbols + [s + "</w>" for s in symbols] + [a + b for a, b in merges]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_list + _SPECIALS))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_once(folder: str | Path, marker: str, write: Callable[[Path], None]) -> str:
    """`write(folder)` saves a tiny model into `folder` (created if needed), then the `marker` file
    is written; a folder that already holds it (a complete build) is left as it is. Returns the
    folder as a string."""
    folder = Path(folder)
    if not (folder / marker).exists():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar for writing a 1 MB model is noise in the demo
        folder.mkdir(parents=True, exist_ok=True)
        write(folder)
        (folder / marker).write_text("a complete build\n")
    return str(folder)


def build_tiny_clip(folder: str | Path, seed: int = 0) -> str:
    """Build the tiny checkpoint into `folder` (created if needed) and return it as a string; a
    folder that already holds a complete build is returned as it is. `seed` draws the weights
    (another seed: another model, for tests of what a model change does)."""
    return build_once(folder, _MARKER, lambda f: _write_tiny_clip(f, seed))


def _write_tiny_clip(folder: Path, seed: int) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tokenizer = _train_tokenizer()
    tower = dict(hidden_size=_WIDTH, intermediate_size=2 * _WIDTH, num_hidden_layers=_LAYERS,
                 num_attention_heads=_HEADS, projection_dim=_PROJECTION)
    config = CLIPConfig(
        text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=77,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        # 224 pixels in 32-pixel patches: CLIP ViT-B/32's geometry, so the real preprocessing applies.
        vision_config=dict(tower, image_size=224, patch_size=32),
        projection_dim=_PROJECTION,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                          image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD).save_pretrained(folder)
