"""The vLLM engine without vLLM: the pure mappings (requests -> vLLM and Ray Data LLM rows, their
outputs -> results), `generate` over a stand-in `vllm.LLM`, and the Ray Data LLM processor's wiring
over a stand-in `ray.data.llm` that passes rows the way Ray's stages do. vLLM needs a GPU and the
`[gpu]` extra; neither is here, and that must give a clear error."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.engines import load_engine, vllm_engine
from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import VllmEngineConfig
from pipeline.engines.vllm_engine import (
    ID_COLUMN,
    MAX_TOKENS_COLUMN,
    VllmEngine,
    llm_kwargs,
    output_row,
    processor_config_kwargs,
    request_row,
    result_from_output,
    result_from_row,
    sampling_kwargs,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def _frames():
    return [np.full((6, 8, 3), c, dtype=np.uint8) for c in COLOURS]


def _chat(request_id="v1", text="describe", **kwargs):
    return GenerationRequest(request_id, messages=[{"role": "system", "content": "brief"},
                                                   {"role": "user", "content": text}], **kwargs)


# ---- pure mappings ------------------------------------------------------------------------------


def test_llm_kwargs_take_the_configs_model_revision_and_remote_code():
    config = VllmEngineConfig(model="org/vlm", revision="abc123", trust_remote_code=True,
                              engine_kwargs={"max_model_len": 8192, "limit_mm_per_prompt": {"image": 8}})
    assert llm_kwargs(config) == {"model": "org/vlm", "revision": "abc123", "tokenizer_revision": "abc123",
                                  "trust_remote_code": True, "max_model_len": 8192,
                                  "limit_mm_per_prompt": {"image": 8}}
    assert llm_kwargs(VllmEngineConfig(model="m")) == {"model": "m", "trust_remote_code": False}
    with pytest.raises(ValueError, match="engine_kwargs may not set revision"):
        llm_kwargs(VllmEngineConfig(model="m", engine_kwargs={"revision": "main"}))


def test_sampling_kwargs_pass_every_setting():
    request = _chat(temperature=0.4, top_p=0.9, max_tokens=33, seed=7)
    assert sampling_kwargs(request) == {"temperature": 0.4, "top_p": 0.9, "max_tokens": 33, "seed": 7}
    assert sampling_kwargs(request, detokenize=False)["detokenize"] is False


def test_a_chat_row_carries_frames_as_pil_images_in_order():
    from PIL import Image

    request = _chat(frames=_frames(), max_tokens=12, seed=5)
    row = request_row(request, chat=True, multimodal=True)
    assert row[ID_COLUMN] == "v1" and row[MAX_TOKENS_COLUMN] == 12
    # Ray's detokenize stage decodes, so vLLM is told not to.
    assert row["sampling_params"] == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 12, "seed": 5,
                                      "detokenize": False}
    system, user = row["messages"]
    assert system == {"role": "system", "content": "brief"}
    assert [part["type"] for part in user["content"]] == ["image_pil"] * 3 + ["text"]
    for part, colour in zip(user["content"], COLOURS):
        assert isinstance(part["image_pil"], Image.Image)
        assert np.asarray(part["image_pil"])[0, 0].tolist() == list(colour)  # lossless: no re-encode
    assert "prompt" not in row and "model" not in row  # `model` would make Ray ask for a LoRA


def test_a_raw_prompt_row_and_the_wrong_kinds():
    row = request_row(GenerationRequest("p", prompt="Once upon", max_tokens=3), chat=False)
    assert row["prompt"] == "Once upon" and "messages" not in row
    with pytest.raises(ValueError, match="takes chat requests"):
        request_row(GenerationRequest("p", prompt="x"), chat=True)
    with pytest.raises(ValueError, match="takes raw prompts"):
        request_row(_chat(), chat=False)
    with pytest.raises(ValueError, match="multimodal=True"):
        request_row(_chat(frames=_frames()), chat=True, multimodal=False)


def test_results_from_ray_rows():
    done = {ID_COLUMN: "a", MAX_TOKENS_COLUMN: 8, "generated_text": "dog, ball", "num_input_tokens": np.int64(40),
            "num_generated_tokens": np.int64(5), "__inference_error__": ""}
    assert result_from_row(done) == GenerationResult("a", "dog, ball", "stop", 40, 5)
    cut = {**done, "num_generated_tokens": 8}
    assert result_from_row(cut).finish_reason == "length"
    failed = {ID_COLUMN: "b", MAX_TOKENS_COLUMN: 8, "generated_text": "", "num_input_tokens": 0,
              "__inference_error__": "ValueError: prompt too long"}
    assert result_from_row(failed) == GenerationResult("b", "", "error", error="ValueError: prompt too long")
    assert output_row(done, keep=["num_input_tokens"]) == {
        "id": "a", "text": "dog, ball", "finish_reason": "stop", "prompt_tokens": 40, "output_tokens": 5,
        "error": None, "num_input_tokens": 40}


def _output(text, reason, prompt_len=4, output_len=2):
    completion = SimpleNamespace(text=text, finish_reason=reason, token_ids=list(range(output_len)))
    return SimpleNamespace(prompt_token_ids=list(range(prompt_len)), outputs=[completion])


def test_results_from_vllm_outputs():
    request = _chat()
    assert result_from_output(request, _output("hi", "stop")) == GenerationResult("v1", "hi", "stop", 4, 2)
    assert result_from_output(request, _output("hi", "length")).finish_reason == "length"
    aborted = result_from_output(request, _output("h", "abort"))
    assert (aborted.text, aborted.finish_reason, aborted.error) == ("", "error", "vLLM finished with 'abort'")


def test_processor_config_kwargs(tmp_path):
    config = VllmEngineConfig(model="org/vlm", batch_size=16, engine_kwargs={"max_model_len": 4096})
    kwargs = processor_config_kwargs(config, multimodal=True, concurrency=(1, 4), accelerator_type="H100")
    assert kwargs == {
        "model_source": "org/vlm", "engine_kwargs": {"max_model_len": 4096, "trust_remote_code": False},
        "batch_size": 16, "should_continue_on_error": True, "chat_template_stage": True, "tokenize_stage": True,
        "detokenize_stage": True, "prepare_multimodal_stage": True, "concurrency": (1, 4),
        "accelerator_type": "H100"}
    assert processor_config_kwargs(VllmEngineConfig(model="m"), chat=False)["chat_template_stage"] is False
    # Ray's CPU stages load the tokenizer with no revision: a pinned hub model must be a local copy.
    with pytest.raises(ValueError, match="--local-dir"):
        processor_config_kwargs(VllmEngineConfig(model="org/vlm", revision="abc123"))
    local = processor_config_kwargs(VllmEngineConfig(model=str(tmp_path), revision="abc123"))
    assert local["model_source"] == str(tmp_path)


# ---- generate over a stand-in vllm.LLM ----------------------------------------------------------


class FakeLLM:
    """Answers like vLLM would, and breaks on any batch holding "boom" (as a bad input breaks a
    whole `LLM.chat` call)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls = []

    def chat(self, conversations, params, use_tqdm=True):
        self.calls.append(("chat", len(conversations)))
        texts = []
        for conversation in conversations:
            content = conversation[-1]["content"]
            images = sum(part["type"] == "image_pil" for part in content) if isinstance(content, list) else 0
            text = content[-1]["text"] if isinstance(content, list) else content
            texts.append(f"{text}/{images}")
        return self._answer(texts, params)

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append(("generate", len(prompts)))
        return self._answer(list(prompts), params)

    @staticmethod
    def _answer(texts, params):
        if any("boom" in text for text in texts):
            raise ValueError("boom is not a prompt")
        return [_output(f"re {text} seed={p['seed']}", "length" if p["max_tokens"] <= 2 else "stop",
                        output_len=min(p["max_tokens"], 3)) for text, p in zip(texts, params)]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = lambda **kwargs: dict(kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_generate_keeps_order_across_chat_and_raw_prompts(fake_vllm):
    engine = VllmEngine.load(VllmEngineConfig(model="org/vlm", revision="r1", engine_kwargs={"seed": 0}))
    assert engine._llm.kwargs == {"model": "org/vlm", "revision": "r1", "tokenizer_revision": "r1",
                                  "trust_remote_code": False, "seed": 0}
    requests = [_chat("a", "one", frames=_frames(), seed=1), GenerationRequest("b", prompt="two", seed=2),
                _chat("c", "three", max_tokens=2, seed=3)]
    results = engine.generate(requests)
    assert [r.id for r in results] == ["a", "b", "c"]
    assert [r.text for r in results] == ["re one/3 seed=1", "re two seed=2", "re three/0 seed=3"]
    assert [r.finish_reason for r in results] == ["stop", "stop", "length"]
    assert engine._llm.calls == [("chat", 2), ("generate", 1)]  # one call per kind
    engine.close()


def test_a_request_that_breaks_its_batch_fails_alone(fake_vllm):
    engine = VllmEngine.load(VllmEngineConfig(model="m"))
    results = engine.generate([_chat("a", "fine"), _chat("b", "boom"), _chat("c", "also fine"),
                               GenerationRequest("d", prompt="raw", frames=_frames())])
    assert [r.finish_reason for r in results] == ["stop", "error", "stop", "error"]
    assert results[1].error == "ValueError: boom is not a prompt" and results[1].text == ""
    assert results[2].text == "re also fine/0 seed=0"
    assert "frames need a chat request" in results[3].error


def test_without_vllm_the_error_names_the_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed, whatever this machine has
    with pytest.raises(ImportError, match=r"install the \[gpu\] extra"):
        load_engine(VllmEngineConfig(model="org/vlm"))
    with pytest.raises(ImportError, match=r"install the \[gpu\] extra"):
        VllmEngine.processor(VllmEngineConfig(model="org/vlm"), to_request=lambda row: _chat())


# ---- the Ray Data LLM processor over a stand-in ray.data.llm ------------------------------------


class FakeDataset:
    def __init__(self, rows):
        self.rows = rows

    def map(self, fn, fn_kwargs=None):
        return FakeDataset([fn(row, **(fn_kwargs or {})) for row in self.rows])


def _fake_ray_llm(built: dict):
    """`ray.data.llm` as far as the processor uses it, passing rows as Ray 2.60's stages do: the
    preprocess output is merged into the input row, the engine stage pops `sampling_params` and
    `prompt`/`messages` are consumed, a failed row gets `__inference_error__` and skips postprocess,
    a good one gets `generated_text`, token counts and an empty `__inference_error__`."""
    module = types.ModuleType("ray.data.llm")
    module.vLLMEngineProcessorConfig = lambda **kwargs: SimpleNamespace(**kwargs)

    def build_processor(config, preprocess=None, postprocess=None):
        built["config"] = config
        assert postprocess is None

        def run(dataset):
            rows = []
            for row in dataset.rows:
                data = {**row, **preprocess(row)}
                built.setdefault("carried", []).append(dict(data))
                params = data.pop("sampling_params")
                text = data["messages"][-1]["content"][-1]["text"]
                if "boom" in text:
                    rows.append({**data, "generated_text": "", "num_input_tokens": 0, "request_id": -1,
                                 "__inference_error__": "ValueError: boom"})
                    continue
                rows.append({**data, "generated_text": f"re {text}", "num_input_tokens": 50, "request_id": 7,
                             "num_generated_tokens": min(params["max_tokens"], 4), "__inference_error__": ""})
            return FakeDataset(rows)

        return run

    module.build_processor = build_processor
    return module


def test_the_processor_maps_rows_to_results(monkeypatch):
    built = {}
    monkeypatch.setattr(vllm_engine, "_import_ray_llm", lambda: _fake_ray_llm(built))

    def to_request(row):
        return GenerationRequest(f"{row['video_id']}@{row['t']}", frames=[np.zeros((4, 4, 3), np.uint8)] * 2,
                                 messages=[{"role": "user", "content": row["caption"]}], max_tokens=row["max"])

    config = VllmEngineConfig(model="org/vlm", batch_size=8)
    run = VllmEngine.processor(config, to_request=to_request, keep=["video_id", "t"], multimodal=True, concurrency=2)
    dataset = FakeDataset([{"video_id": "v1", "t": 0.2, "caption": "a dog", "max": 10},
                           {"video_id": "v2", "t": 0.2, "caption": "boom", "max": 10},
                           {"video_id": "v3", "t": 0.8, "caption": "a cat", "max": 4}])
    rows = run(dataset).rows
    assert rows == [
        {"id": "v1@0.2", "text": "re a dog", "finish_reason": "stop", "prompt_tokens": 50, "output_tokens": 4,
         "error": None, "video_id": "v1", "t": 0.2},
        {"id": "v2@0.2", "text": "", "finish_reason": "error", "prompt_tokens": 0, "output_tokens": 0,
         "error": "ValueError: boom", "video_id": "v2", "t": 0.2},
        {"id": "v3@0.8", "text": "re a cat", "finish_reason": "length", "prompt_tokens": 50, "output_tokens": 4,
         "error": None, "video_id": "v3", "t": 0.8},
    ]
    assert vars(built["config"]) == processor_config_kwargs(config, multimodal=True, concurrency=2)
    # What Ray carries through its stages: the kept columns; the others emptied.
    assert [(c["video_id"], c["caption"], c["max"]) for c in built["carried"]] == [("v1", None, None),
                                                                                   ("v2", None, None),
                                                                                   ("v3", None, None)]
    with pytest.raises(ValueError, match="overwrite"):
        VllmEngine.processor(config, to_request=to_request, keep=["text"])
