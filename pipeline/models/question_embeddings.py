"""Question vectors for MMI-TVR's knowledge clustering (Sec. 4.2.2, Eq. 5).

    vectors = mean_word_embeddings(questions, "llava-hf/llava-1.5-13b-hf")   # float32 [n, hidden]
    vectors = sentence_embeddings(questions, "sentence-transformers/all-MiniLM-L6-v2")

Eq. 5 measures a question by "the average embeddings of the words in the question", h(w) being
the embedding of word w in the paper's (vision-)language model. We read h as the model's *input*
embedding table: a word's vector is the mean of the rows of its tokens, a question's the mean of
its words' vectors. No forward pass runs, and the model is not loaded: only the rows the questions
use are read from the input-embedding tensor in the checkpoint's safetensors (from the hub, only
the shard holding that tensor is downloaded), so a 13B VLM costs megabytes of memory, not 26 GB.
`sentence_embeddings` is the alternative a config can choose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

# Where a checkpoint's weights live: one file, or shards listed by an index.
_SINGLE_FILE, _INDEX_FILE = "model.safetensors", "model.safetensors.index.json"
# The auto classes tried, in order, when a config names no architecture transformers knows.
_AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoModel")


def mean_word_embeddings(questions: list[str], model: str, revision: str | None = None) -> np.ndarray:
    """float32 [len(questions), hidden]: each question's mean word embedding in `model` (a local
    folder or a Hugging Face id at `revision`; a causal LM or an image-text-to-text model).

    Words are the whitespace-separated pieces of the question; a word's vector is the mean of the
    input-embedding rows of its tokens, the question's the mean over its words (so a long word
    weighs as much as a short one). Special tokens (BOS and the like) are never added, and tokens
    that are only whitespace belong to no word. A question with no tokens is a ValueError."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)
    words_of = [_word_token_ids(question, tokenizer) for question in questions]
    needed = sorted({i for words in words_of for ids in words for i in ids})
    rows = _input_embedding_rows(model, revision, needed)
    hidden = rows.shape[1]
    where = {token: position for position, token in enumerate(needed)}
    vectors = np.zeros((len(questions), hidden), dtype=np.float32)
    for q, words in enumerate(words_of):
        word_vectors = [rows[[where[i] for i in ids]].mean(axis=0) for ids in words]
        vectors[q] = np.mean(word_vectors, axis=0)
    return vectors


def sentence_embeddings(questions: list[str], model: str, revision: str | None = None,
                        device: str = "cpu") -> np.ndarray:
    """float32 [len(questions), dim]: the questions encoded by a sentence-transformers model (a local
    folder saved with `SentenceTransformer.save`, or a hub id at `revision`), as the model's own
    modules define (pooling, normalisation)."""
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(model, revision=revision, device=device)
    if not questions:
        # sentence-transformers 6 renamed the method; >= 3 is supported.
        dimension = getattr(encoder, "get_embedding_dimension", None) or encoder.get_sentence_embedding_dimension
        return np.zeros((0, dimension()), dtype=np.float32)
    return np.asarray(encoder.encode(list(questions), convert_to_numpy=True), dtype=np.float32)


# ---- words to token ids ------------------------------------------------------------------------


def _word_token_ids(question: str, tokenizer) -> list[list[int]]:
    """The token ids of each whitespace-separated word of `question` that has any; ValueError when
    none has."""
    spans = [match.span() for match in re.finditer(r"\S+", question)]
    if tokenizer.is_fast:
        words = _ids_by_offsets(question, spans, tokenizer)
    else:
        # A slow tokenizer has no offsets: each word alone, which is how it splits words anyway.
        words = [tokenizer(question[start:end], add_special_tokens=False)["input_ids"] for start, end in spans]
    words = [ids for ids in words if ids]
    if not words:
        raise ValueError(f"question {question!r} has no tokens in this tokenizer; it cannot be embedded")
    return words


def _ids_by_offsets(question: str, spans: list[tuple[int, int]], tokenizer) -> list[list[int]]:
    """Tokenize the whole question (tokens as in real use) and give each token to the word its
    character span overlaps most; a token over whitespace only (a lone space) overlaps none."""
    encoded = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    words: list[list[int]] = [[] for _ in spans]
    for token, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        overlaps = [min(end, word_end) - max(start, word_start) for word_start, word_end in spans]
        best = int(np.argmax(overlaps)) if overlaps else -1
        if best >= 0 and overlaps[best] > 0:
            words[best].append(token)
    return words


# ---- the input-embedding rows ------------------------------------------------------------------


def _input_embedding_rows(model: str, revision: str | None, token_ids: list[int]) -> np.ndarray:
    """float32 [len(token_ids), hidden]: those rows of the model's input-embedding table, read from
    the safetensors file that holds it; the whole model is loaded on CPU only when no such tensor
    is found (a .bin checkpoint, a name we cannot match)."""
    found = _find_embedding_tensor(model, revision)
    if found is None:
        return _rows_from_loaded_model(model, revision, token_ids)
    from safetensors import safe_open

    path, key, (vocab, hidden) = found
    _check_ids(token_ids, vocab, model)
    rows = np.zeros((len(token_ids), hidden), dtype=np.float32)
    with safe_open(path, framework="pt") as weights:
        table = weights.get_slice(key)
        for position, token in enumerate(token_ids):
            rows[position] = table[token : token + 1].float().numpy()[0]
    return rows


def _find_embedding_tensor(model: str, revision: str | None) -> tuple[str, str, tuple[int, int]] | None:
    """(local file, key, shape) of the input-embedding tensor in the checkpoint's safetensors, or None.

    The parameter's name and shape come from the model built on the meta device (nothing
    allocated). Checkpoints name it differently from the class (LLaVA's `language_model.model.
    embed_tokens.weight` against `model.language_model.embed_tokens.weight`), so a key matches
    when its last two components and its shape agree; `lm_head.weight` has the same shape, which
    is why the shape alone never decides. Several matches: the longest common suffix wins, and a
    tie means we cannot tell (None). Only the files holding keys with the right name are fetched."""
    expected = _meta_embedding(model, revision)
    if expected is None:
        return None
    name, shape = expected
    tail = name.split(".")[-2:]
    named = [(key, _local_file(model, revision, file)) for key, file in _safetensors_keys(model, revision).items()
             if key.split(".")[-2:] == tail]
    matches = [(_common_suffix(key, name), key, path) for key, path in named if _tensor_shape(path, key) == shape]
    if not matches:
        return None
    matches.sort(reverse=True)
    if len(matches) > 1 and matches[0][0] == matches[1][0]:
        return None
    _, key, path = matches[0]
    return path, key, shape


def _meta_embedding(model: str, revision: str | None) -> tuple[str, tuple[int, int]] | None:
    """The input-embedding parameter's name and shape in the model's class, built on the meta
    device from the config alone; None when the class cannot be built or has no such table."""
    import torch

    config = _config(model, revision)
    try:
        with torch.device("meta"):
            built = _model_class(config)(config)
        embedding = built.get_input_embeddings()
    except (ValueError, TypeError, NotImplementedError, RuntimeError, AttributeError):
        return None
    weight = getattr(embedding, "weight", None)
    if weight is None or weight.dim() != 2:
        return None
    names = [name for name, module in built.named_modules() if module is embedding]
    return (f"{names[0]}.weight", tuple(weight.shape)) if names else None


def _safetensors_keys(model: str, revision: str | None) -> dict[str, str]:
    """Every tensor name in the checkpoint's safetensors, with the name of the file that holds it;
    empty when the checkpoint has none. A sharded hub checkpoint costs only its index here."""
    index = _local_file(model, revision, _INDEX_FILE, required=False)
    if index is not None:
        return dict(json.loads(Path(index).read_text())["weight_map"])
    single = _local_file(model, revision, _SINGLE_FILE, required=False)
    if single is None:
        return {}
    from safetensors import safe_open

    with safe_open(single, framework="pt") as weights:
        return {key: _SINGLE_FILE for key in weights.keys()}


def _local_file(model: str, revision: str | None, file: str, required: bool = True) -> str | None:
    """The local path of one file of the checkpoint (a local folder's own, or the hub cache's,
    downloading it if needed); None for a missing file that is not `required`."""
    from transformers.utils import cached_file

    return cached_file(model, file, revision=revision, _raise_exceptions_for_missing_entries=required)


def _tensor_shape(path: str, key: str) -> tuple[int, ...]:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as weights:
        return tuple(weights.get_slice(key).get_shape())


def _common_suffix(key: str, name: str) -> int:
    """How many trailing dotted components two tensor names share."""
    shared = 0
    for a, b in zip(reversed(key.split(".")), reversed(name.split("."))):
        if a != b:
            break
        shared += 1
    return shared


def _config(model: str, revision: str | None):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, revision=revision)


def _model_class(config):
    """The class the checkpoint was saved from (its config's `architectures`), else the first auto
    class that knows the config."""
    import transformers

    for architecture in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, architecture, None)
        if cls is not None:
            return cls
    for auto_name in _AUTO_CLASSES:
        auto = getattr(transformers, auto_name)
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise ValueError(f"no transformers model class knows the config {type(config).__name__}")


def _rows_from_loaded_model(model: str, revision: str | None, token_ids: list[int]) -> np.ndarray:
    """The fallback: load the whole model on CPU and take the rows from `get_input_embeddings()`."""
    import torch

    config = _config(model, revision)
    loaded = _model_class(config).from_pretrained(model, revision=revision, dtype=torch.float32)
    table = loaded.get_input_embeddings().weight
    _check_ids(token_ids, table.shape[0], model)
    with torch.no_grad():
        return table[torch.tensor(token_ids, dtype=torch.long)].float().numpy().reshape(len(token_ids), -1)


def _check_ids(token_ids: list[int], vocab: int, model: str) -> None:
    """A token id past the table means the tokenizer and the weights do not belong together."""
    if token_ids and max(token_ids) >= vocab:
        raise ValueError(f"model {model!r}: token id {max(token_ids)} is past its input-embedding table "
                         f"({vocab} rows); its tokenizer and weights do not match")
