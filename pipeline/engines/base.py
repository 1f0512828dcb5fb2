"""The one request and response type every generation backend shares.

A request is chat messages (rendered with the model's chat template) or a raw prompt (sent as
is), optional frames (RGB uint8 HWC arrays, for video/image-text models), and sampling
settings. Every backend honours `seed`, so the same request gives the same text on a rerun with
the same model and backend. A backend returns exactly one `GenerationResult` per request, in
order; a request that fails (an error, a timeout) gets a result with `error` set and no text,
never an exception that takes the other requests down.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class GenerationRequest:
    id: str  # the caller's key, echoed in the result (e.g. "video123@t=0.8")
    messages: list[dict[str, Any]] | None = None  # chat: [{"role": "user", "content": "..."}]
    prompt: str | None = None  # raw text, no chat template applied
    frames: list[np.ndarray] = field(default_factory=list)  # RGB uint8 [H, W, 3], in time order
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int = 0

    def __post_init__(self):
        if (self.messages is None) == (self.prompt is None):
            raise ValueError(f"request {self.id}: give exactly one of messages or prompt")


@dataclass(frozen=True)
class GenerationResult:
    id: str
    text: str  # "" when the request failed
    # "stop" (the model ended), "length" (max_tokens reached: the text is cut), "error"
    finish_reason: str
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None  # why the request failed, for the failure row


class Engine(Protocol):
    """A loaded backend. `generate` takes any number of requests and returns one result per
    request in the same order; it batches internally as suits the backend."""

    name: str  # "transformers", "openai", "vllm", or the plugin's
    model: str
    revision: str | None

    def generate(self, requests: list[GenerationRequest]) -> list[GenerationResult]: ...

    def close(self) -> None: ...
