"""The transformers engine on a tiny chat LM and a tiny LLaVA built offline."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from pipeline.engines import GenerationRequest, load_engine
from pipeline.engines.config import TransformersEngineConfig
from pipeline.engines.transformers_engine import TransformersEngine, _SeededSampler
from pipeline.models.tiny_lm import EOT, IMAGE, build_tiny_lm, build_tiny_vlm


@pytest.fixture(scope="module")
def lm(tiny_lm) -> str:
    return tiny_lm


@pytest.fixture(scope="module")
def vlm(tiny_vlm) -> str:
    return tiny_vlm


def _engine(model: str, batch_size: int = 4) -> TransformersEngine:
    return TransformersEngine.load(TransformersEngineConfig(model=model, batch_size=batch_size), device="cpu")


@pytest.fixture(scope="module")
def engine(lm) -> TransformersEngine:
    return _engine(lm)


@pytest.fixture(scope="module")
def vlm_engine(vlm) -> TransformersEngine:
    return _engine(vlm)


def _chat(id: str, text: str, **kw) -> GenerationRequest:
    return GenerationRequest(id=id, messages=[{"role": "system", "content": "Answer briefly."},
                                              {"role": "user", "content": text}], **kw)


def _mixed_requests() -> list[GenerationRequest]:
    """Different lengths, seeds, temperatures and limits, chat and raw, so batches need padding."""
    texts = ["a dog runs", "describe the video in one long and detailed sentence please", "hi",
             "what colour is the ball?", "list three objects", "ünïcödé ✓ text"]
    requests = [_chat(f"c{i}", t, seed=i, max_tokens=6 + i, temperature=0.5 + 0.2 * i, top_p=0.9)
                for i, t in enumerate(texts)]
    requests += [GenerationRequest(id=f"p{i}", prompt=t, seed=7, max_tokens=5) for i, t in enumerate(texts[:4])]
    requests.append(_chat("greedy", "a dog runs", temperature=0.0, max_tokens=8))
    return requests


@pytest.fixture(scope="module")
def reference_rows(engine):
    return engine.generate(_mixed_requests())


# ---- the tiny models --------------------------------------------------------------------------------


def test_tiny_lm_reloads_with_auto_classes(lm):
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm)
    text = "A dog — ünïcödé ✓ 狗 <b>"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    assert tokenizer(text)["input_ids"][0] == tokenizer.bos_token_id  # raw text gets BOS
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=False)
    assert rendered == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    model = transformers.AutoModelForCausalLM.from_pretrained(lm)
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert tokenizer.convert_tokens_to_ids(EOT) in model.generation_config.eos_token_id


def test_tiny_builds_are_fast_identical_and_idempotent(tmp_path, lm):
    start = time.perf_counter()
    again = build_tiny_lm(tmp_path / "lm")
    build_tiny_vlm(tmp_path / "vlm")
    assert time.perf_counter() - start < 10
    assert (tmp_path / "lm" / "model.safetensors").read_bytes() == (Path(lm) / "model.safetensors").read_bytes()
    stamp = (tmp_path / "lm" / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_lm(again) == again  # complete: left as it is
    assert (tmp_path / "lm" / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_vlm_reloads_with_auto_classes(vlm):
    processor = transformers.AutoProcessor.from_pretrained(vlm)
    model = transformers.AutoModelForImageTextToText.from_pretrained(vlm)
    assert isinstance(model, transformers.LlavaForConditionalGeneration)
    assert isinstance(processor, transformers.LlavaProcessor)
    frames = [np.zeros((48, 64, 3), np.uint8)] * 2
    conversation = [{"role": "user", "content": [*({"type": "image", "image": f} for f in frames),
                                                 {"type": "text", "text": "what?"}]}]
    inputs = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    assert inputs["pixel_values"].shape == (2, 3, 32, 32)
    assert (inputs["input_ids"] == model.config.image_token_id).sum() == 2 * 16
    model(**inputs)  # the image features fit the image tokens


# ---- text generation --------------------------------------------------------------------------------


def test_generates_one_row_per_request_in_order(engine, reference_rows):
    requests = _mixed_requests()
    assert [r.id for r in reference_rows] == [r.id for r in requests]
    for request, row in zip(requests, reference_rows):
        assert row.error is None and row.finish_reason in ("stop", "length")
        assert 1 <= row.output_tokens <= request.max_tokens
        assert row.finish_reason == "stop" or row.output_tokens == request.max_tokens
        assert isinstance(row.text, str)


def test_token_counts(engine, lm, reference_rows):
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm)
    by_id = {row.id: row for row in reference_rows}
    for request in _mixed_requests():
        if request.prompt is not None:  # as is, plus the BOS the tokenizer adds
            expected = len(tokenizer(request.prompt)["input_ids"])
        else:  # the template (which writes BOS) and nothing added
            expected = len(tokenizer(tokenizer.apply_chat_template(request.messages, add_generation_prompt=True,
                                                                   tokenize=False), add_special_tokens=False)
                           ["input_ids"])
        assert by_id[request.id].prompt_tokens == expected


def test_rerun_gives_identical_rows(engine, reference_rows):
    assert engine.generate(_mixed_requests()) == reference_rows


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_rows_do_not_depend_on_batch_size(lm, reference_rows, batch_size):
    # What the CPU gives with these models (see the module docstring: not promised on GPU).
    assert _engine(lm, batch_size).generate(_mixed_requests()) == reference_rows


def test_rows_do_not_depend_on_order_or_neighbours(engine, reference_rows):
    by_id = {row.id: row for row in reference_rows}
    requests = _mixed_requests()[::-1][:5]
    assert engine.generate(requests) == [by_id[r.id] for r in requests]


def test_seed_decides_the_sample(engine):
    rows = engine.generate([_chat(f"s{s}", "a dog runs", seed=s, max_tokens=8) for s in range(4)])
    assert len({row.text for row in rows}) > 1
    rows = engine.generate([_chat(f"g{s}", "a dog runs", seed=s, max_tokens=8, temperature=0) for s in range(3)])
    assert len({row.text for row in rows}) == 1  # greedy: the seed does not matter


def test_greedy_matches_transformers_generate(engine, lm):
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm)
    model = transformers.AutoModelForCausalLM.from_pretrained(lm).eval()
    ids = tokenizer("the news anchor talks", return_tensors="pt")["input_ids"]
    out = model.generate(ids, do_sample=False, max_new_tokens=12)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    (row,) = engine.generate([GenerationRequest(id="g", prompt="the news anchor talks", temperature=0,
                                                max_tokens=12)])
    assert row.text == expected


def test_length_and_stop(engine, lm, monkeypatch):
    (row,) = engine.generate([_chat("short", "tell me a story", max_tokens=2)])
    assert (row.finish_reason, row.output_tokens) == ("length", 2)

    eot = transformers.AutoTokenizer.from_pretrained(lm).convert_tokens_to_ids(EOT)
    forward = engine.network.forward

    def ends_at_once(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits[..., eot] = 1e4  # the model wants to end its turn
        return out

    monkeypatch.setattr(engine.network, "forward", ends_at_once)
    (row,) = engine.generate([_chat("stop", "tell me a story", max_tokens=5)])
    assert (row.finish_reason, row.output_tokens, row.text) == ("stop", 1, "")


def test_a_failing_request_fails_alone(engine, lm, reference_rows, monkeypatch):
    poison = transformers.AutoTokenizer.from_pretrained(lm).convert_tokens_to_ids("~")
    forward = engine.network.forward

    def fragile(*args, input_ids=None, **kwargs):
        if input_ids is not None and (input_ids == poison).any():
            raise RuntimeError("this input breaks the model")
        return forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(engine.network, "forward", fragile)
    requests = _mixed_requests()
    requests.insert(3, GenerationRequest(id="bad", prompt="a ~ b"))
    rows = engine.generate(requests)
    bad = rows.pop(3)
    assert (bad.id, bad.finish_reason, bad.text) == ("bad", "error", "")
    assert "this input breaks the model" in bad.error
    assert rows == reference_rows


def test_bad_settings_fail_only_their_request(engine):
    rows = engine.generate([_chat("ok", "hi", max_tokens=2), _chat("bad", "hi", top_p=0.0),
                            GenerationRequest(id="frames", prompt="hi", frames=[np.zeros((8, 8, 3), np.uint8)]),
                            GenerationRequest(id="long", prompt="hi", max_tokens=1022)])  # 3 + 1022 > 1024
    assert [row.finish_reason for row in rows] == ["length", "error", "error", "error"]
    assert "top_p" in rows[1].error and "text-only" in rows[2].error
    assert "3 prompt tokens + max_tokens 1022 exceed the model's context of 1024" in rows[3].error


def test_out_of_memory_halves_the_batch(lm, reference_rows, monkeypatch):
    engine = _engine(lm, batch_size=8)
    forward = engine.network.forward

    def small_memory(*args, input_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return forward(*args, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(engine.network, "forward", small_memory)
    assert engine.generate(_mixed_requests()) == reference_rows
    assert engine.batch_size == 3  # 8 -> 7 chat requests failed -> 3


def test_control_tokens_in_messages_are_text(engine, lm):
    tokenizer = transformers.AutoTokenizer.from_pretrained(lm)
    (row,) = engine.generate([GenerationRequest(id="x", messages=[{"role": "user", "content": EOT}], max_tokens=1)])
    # BOS, header (3 specials + "user" + "\n\n"), the 9 bytes of "<|eot_id|>", EOT, the assistant header.
    header = len(tokenizer("user\n\n", add_special_tokens=False)["input_ids"]) + 2
    assistant = len(tokenizer("assistant\n\n", add_special_tokens=False)["input_ids"]) + 2
    assert row.prompt_tokens == 1 + header + len(EOT.encode()) + 1 + assistant


def test_close_frees_the_model(lm):
    engine = load_engine(TransformersEngineConfig(model=lm), device="cpu")
    assert isinstance(engine, TransformersEngine) and engine.name == "transformers"
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.generate([GenerationRequest(id="a", prompt="hi")])


def test_trust_remote_code_needs_a_revision(lm):
    with pytest.raises(ValueError, match="pin a revision"):
        TransformersEngineConfig(model=lm, trust_remote_code=True)


# ---- the sampler alone -------------------------------------------------------------------------------


def test_sampler_draws_from_the_distribution_and_honours_top_p():
    probs = torch.tensor([0.5, 0.3, 0.2])
    n = 2000
    counts = {}
    for top_p in (1.0, 0.75, 0.4):  # n rows, one seed each: the draws across seeds follow the distribution
        sampler = _SeededSampler([GenerationRequest(id="", prompt="", seed=s, top_p=top_p) for s in range(n)], "cpu")
        chosen = sampler(None, probs.log().repeat(n, 1)).argmax(dim=1)
        counts[top_p] = Counter(chosen.tolist())
    assert all(abs(counts[1.0][t] / n - p) < 0.04 for t, p in enumerate(probs.tolist()))
    assert set(counts[0.75]) == {0, 1} and abs(counts[0.75][0] / n - 0.5 / 0.8) < 0.04  # the 0.2 token is cut
    assert set(counts[0.4]) == {0}


def test_sampler_streams_are_per_request():
    scores = torch.zeros(2, 50)  # uniform over 50 tokens
    requests = [GenerationRequest(id="a", prompt="", seed=1), GenerationRequest(id="b", prompt="", seed=2)]
    pair = _SeededSampler(requests, "cpu")
    alone = _SeededSampler(requests[1:], "cpu")
    steps = [(pair(None, scores).argmax(dim=1), alone(None, scores[:1]).argmax(dim=1)) for _ in range(20)]
    assert all(both[1] == single[0] for both, single in steps)  # b draws the same with or without a
    assert len({int(single[0]) for _, single in steps}) > 5  # and its draws move on each step


# ---- image-text ---------------------------------------------------------------------------------------


def _frames(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (36, 48, 3), dtype=np.uint8) for _ in range(n)]


def _video_requests() -> list[GenerationRequest]:
    return [
        _chat("v8", "Describe the video.", frames=_frames(8, 0), max_tokens=6),
        _chat("v8b", "What happens?", frames=_frames(8, 1), max_tokens=6, seed=3),
        _chat("v3", "Describe.", frames=_frames(3, 2), max_tokens=4),
        _chat("text", "No video here <image>", max_tokens=4),  # the tag is text, not an image
        _chat("text2", "No video here [image]", max_tokens=4),  # as many bytes
        GenerationRequest(id="raw", prompt=f"{IMAGE}{IMAGE} two frames:", frames=_frames(2, 3), max_tokens=4),
    ]


def test_vlm_generates_from_frames(vlm_engine, vlm):
    rows = vlm_engine.generate(_video_requests())
    assert [row.id for row in rows] == [r.id for r in _video_requests()]
    assert all(row.error is None and row.finish_reason in ("stop", "length") for row in rows), rows
    processor = transformers.AutoProcessor.from_pretrained(vlm)
    conversation = [{"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
                    {"role": "user", "content": [*({"type": "image", "image": f} for f in _frames(8, 0)),
                                                 {"type": "text", "text": "Describe the video."}]}]
    expected = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    expected = expected[0] if isinstance(expected[0], list) else expected  # a batch of one, from processors
    assert rows[0].prompt_tokens == len(expected) > 8 * 16  # 16 tokens a frame
    assert rows[3].prompt_tokens == rows[4].prompt_tokens  # "<image>" in a message: 7 bytes of text
    assert rows[5].prompt_tokens == 1 + 2 * 16 + len(" two frames:".encode())  # BOS, 2 images, the text


def test_vlm_rerun_and_batch_size(vlm_engine, vlm):
    rows = vlm_engine.generate(_video_requests())
    assert vlm_engine.generate(_video_requests()) == rows
    assert _engine(vlm, batch_size=1).generate(_video_requests()) == rows
