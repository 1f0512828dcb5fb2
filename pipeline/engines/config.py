"""Engine configs: one dataclass per backend, chosen in YAML by `backend:` (a tagged union, as the
keyframe sampling strategies are). Everything here that decides the generated text is part of the
stage's version (see `engine_identity`); how it runs (device, dtype, workers) is in the stage's
run settings instead."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from pipeline.config import bounds


@dataclass
class TransformersEngineConfig:
    """transformers in-process, CPU or GPU, batched `generate`: causal LMs and image/video-text
    models (AutoModelForImageTextToText: the LLaVA family, Qwen2.5-VL), with their chat template
    and processor."""

    backend: Literal["transformers"] = "transformers"
    model: str = ""  # Hugging Face id or local folder
    revision: str | None = None
    # Only with a pinned `revision`: runs the repository's own Python code.
    trust_remote_code: bool = False
    batch_size: int = field(default=16, metadata=bounds(min=1))  # requests per generate call

    def __post_init__(self):
        _check_remote_code(self)


@dataclass
class OpenAIEngineConfig:
    """Any OpenAI-compatible server (`vllm serve`, SGLang, `transformers serve`)."""

    backend: Literal["openai"] = "openai"
    model: str = ""  # the model name the server knows
    revision: str | None = None  # recorded only: the server decides what it runs
    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"  # the variable holding the key (never the key itself)
    max_concurrency: int = field(default=8, metadata=bounds(min=1))
    timeout_seconds: float = field(default=120.0, metadata=bounds(above=0))  # per request
    retries: int = field(default=3, metadata=bounds(min=0))  # with exponential backoff


@dataclass
class VllmEngineConfig:
    """vLLM on GPU clusters through Ray Data LLM (`ray.data.llm`); the `[gpu]` extra."""

    backend: Literal["vllm"] = "vllm"
    model: str = ""
    revision: str | None = None
    trust_remote_code: bool = False
    # Passed to vLLM's engine as is (max_model_len, gpu_memory_utilization, tensor_parallel_size...).
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    batch_size: int = field(default=64, metadata=bounds(min=1))

    def __post_init__(self):
        _check_remote_code(self)


@dataclass
class PluginEngineConfig:
    """A backend from an installed package, named `module:Class` (e.g. VideoLLaMA2's own code)."""

    backend: Literal["plugin"] = "plugin"
    plugin: str = ""  # "package.module:ClassName"
    model: str = ""
    revision: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # passed to the class


EngineConfig = Union[TransformersEngineConfig, OpenAIEngineConfig, VllmEngineConfig, PluginEngineConfig]


def _check_remote_code(config) -> None:
    if config.trust_remote_code and not config.revision:
        raise ValueError(f"trust_remote_code runs {config.model!r}'s own code: pin a revision (a commit) with it")
