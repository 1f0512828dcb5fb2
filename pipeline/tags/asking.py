"""What the visual_tags and textual_tags stages share: the fan-out of items over temperatures,
the config fields of a tag stage, and turning a generation result into a row or a failure.

An item (a video, a caption) is asked once per temperature; each (item, temperature) pair is its
own request with its own key, `<item id>@t<temperature>`, so every request lands exactly once in
the rows or the failures, and a rerun recomputes only the requests that are missing.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.config import bounds
from pipeline.engines import engine_identity, load_engine
from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import VllmEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.run.stage import Failure
from pipeline.run.workers import answered, item_of
from pipeline.tags.parse import parse_tags

# MAC-VR Sec. 4.2: tags extracted at four temperatures.
PAPER_TEMPERATURES = [0.7, 0.8, 0.9, 1.0]


@dataclass
class SamplingSettings:
    temperatures: list[float] = field(default_factory=lambda: list(PAPER_TEMPERATURES))
    top_p: float = field(default=1.0, metadata=bounds(above=0, max=1))
    max_tokens: int = field(default=160, metadata=bounds(min=1))  # ten short tags fit with room to spare
    seed: int = 0  # with the request id, each request's seed (`request_seed`): a rerun gives the same text

    def __post_init__(self):
        if not self.temperatures:
            raise ValueError("temperatures must list at least one temperature")
        if any(t < 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be >= 0, got {self.temperatures}")
        if len(set(self.temperatures)) != len(self.temperatures):
            raise ValueError(f"temperatures repeat: {self.temperatures}")


def request_id(item_id: str, temperature: float) -> str:
    return f"{item_id}@t{temperature:g}"


def request_seed(seed: int, request: str) -> int:
    """Each request's own seed, from the config's seed and the request id: reruns draw the same
    samples, and different items (or temperatures) do not share one random stream."""
    return (seed * 1_000_003 + zlib.crc32(request.encode())) % 2**31


def fan_out(items: pa.Table, item_key: str, temperatures: list[float]) -> pa.Table:
    """One row per item and temperature, keyed by `request_id`, with `item_id` and `temperature`."""
    ids = items.column(item_key).to_pylist()
    n = len(ids)
    columns = {name: items.column(name) for name in items.column_names}
    parts = []
    for temperature in temperatures:
        part = pa.table({"request_id": [request_id(i, temperature) for i in ids], "item_id": ids,
                         "temperature": pa.array([temperature] * n, pa.float64()), **columns})
        parts.append(part)
    return pa.concat_tables(parts)


def result_row(item: dict, result: GenerationResult, *, model: str, revision: str | None, prompt_name: str,
               prompt_sha256: str, seed: int) -> dict | Failure:
    """The row for one request, or a Failure when the engine could not answer it. `seed` is the
    request's own (`request_seed`)."""

    if result.error is not None or result.finish_reason == "error":
        return Failure("generation_error", result.error or "the engine returned no text")
    text = result.text
    if result.finish_reason == "length":
        # The last line was cut mid-tag: parse only the lines before it (the row says "length").
        text = text.rsplit("\n", 1)[0] if "\n" in text else ""
    return {
        "request_id": item["request_id"], "item_id": item["item_id"], "video_id": item["video_id"],
        "temperature": item["temperature"], "seed": seed, "model": model, "revision": revision,
        "prompt": prompt_name, "prompt_sha256": prompt_sha256, "raw_output": result.text,
        "finish_reason": result.finish_reason, "prompt_tokens": result.prompt_tokens,
        "output_tokens": result.output_tokens, "tags": parse_tags(text),
    }


def tag_request(config, prompt, words: Callable[..., dict], item: dict) -> GenerationRequest:
    """The request for one item of a tag stage: `words(prompt, item)` gives its `messages` or
    `prompt` (and any `frames`); the sampling settings and the request's own seed do the rest."""
    sampling = config.sampling
    return GenerationRequest(id=item["request_id"], temperature=item["temperature"], top_p=sampling.top_p,
                             max_tokens=sampling.max_tokens, seed=request_seed(sampling.seed, item["request_id"]),
                             **words(prompt, item))


def tag_row(config, prompt, item: dict, result: GenerationResult) -> dict | Failure:
    return result_row(item, result, model=config.engine.model, revision=config.engine.revision,
                      prompt_name=prompt.name, prompt_sha256=prompt.sha256,
                      seed=request_seed(config.sampling.seed, item["request_id"]))


def asker(config, words: Callable[..., dict]):
    """The batch function of a tag stage's model step: loads the prompt and the engine once (per
    worker), then per batch asks the engine and turns each result into a row or a Failure.
    `config` is the stage's (engine, prompt, prompts_folder, sampling, run)."""
    prompt = load_prompt(config.prompt, config.prompts_folder)
    engine = load_engine(config.engine, device=config.run.device, dtype=config.run.dtype)

    def ask(items: list[dict]) -> list:
        results = engine.generate([tag_request(config, prompt, words, item) for item in items])
        return [tag_row(config, prompt, item, result) for item, result in zip(items, results)]

    return ask


def vllm_transform(config, words: Callable[..., dict], *, chat: bool, multimodal: bool):
    """For a tag stage whose engine is vLLM: the step as a Ray Data transform through Ray Data
    LLM's vLLM processor (`Step.dataset`), which runs its own GPU engines; None for other engines,
    which run in the step's workers."""
    if not isinstance(config.engine, VllmEngineConfig):
        return None

    def transform(dataset, keep: tuple[str, ...]):
        from pipeline.engines.vllm_engine import RESULT_COLUMNS, VllmEngine

        prompt = load_prompt(config.prompt, config.prompts_folder)
        processor = VllmEngine.processor(
            config.engine, lambda row: tag_request(config, prompt, words, item_of(row)), keep=keep, chat=chat,
            multimodal=multimodal, concurrency=config.run.workers or 1)

        def to_row(row: dict) -> dict:  # the processor's row: a result's fields and the `keep` columns
            result = GenerationResult(**{name: row[name] for name in RESULT_COLUMNS})
            return answered(row, tag_row(config, prompt, item_of(row), result))

        return processor(dataset).map(to_row)

    return transform


def tag_stage_identity(config) -> dict:
    """What a tag stage's version takes beyond its config: the prompt's sha256 and the engine's model."""
    return {"prompt_sha256": load_prompt(config.prompt, config.prompts_folder).sha256, **engine_identity(config.engine)}
