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
from pipeline.engines.base import GenerationResult
from pipeline.stage import Failure

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
    """`seed` is the request's own (`request_seed`)."""
    """The row for one request, or a Failure when the engine could not answer it."""
    from pipeline.tags import parse_tags

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


def asker(config, words: Callable[..., dict]):
    """The batch function of a tag stage's model step: loads the prompt and the engine once (per
    worker), then per batch makes each item's request (`words(prompt, item)` gives its `messages` or
    `prompt`, and any `frames`), generates, and turns each result into a row or a Failure. `config` is
    the stage's (engine, prompt, prompts_folder, sampling, run)."""
    from pipeline.engines import load_engine
    from pipeline.engines.base import GenerationRequest
    from pipeline.prompts import load_prompt

    prompt = load_prompt(config.prompt, config.prompts_folder)
    engine = load_engine(config.engine, device=config.run.device, dtype=config.run.dtype)
    sampling = config.sampling

    def ask(items: list[dict]) -> list:
        seeds = [request_seed(sampling.seed, item["request_id"]) for item in items]
        requests = [GenerationRequest(id=item["request_id"], temperature=item["temperature"], top_p=sampling.top_p,
                                      max_tokens=sampling.max_tokens, seed=seed, **words(prompt, item))
                    for item, seed in zip(items, seeds)]
        return [result_row(item, result, model=config.engine.model, revision=config.engine.revision,
                           prompt_name=prompt.name, prompt_sha256=prompt.sha256, seed=seed)
                for item, result, seed in zip(items, engine.generate(requests), seeds)]

    return ask


def tag_stage_identity(config) -> dict:
    """What a tag stage's version takes beyond its config: the prompt's sha256 and the engine's model."""
    from pipeline.engines import engine_identity
    from pipeline.prompts import load_prompt

    return {"prompt_sha256": load_prompt(config.prompt, config.prompts_folder).sha256, **engine_identity(config.engine)}
