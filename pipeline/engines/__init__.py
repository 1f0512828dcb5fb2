"""Generation engines: one request/response type (`base`), real backends behind it.

`load_engine(config, device, dtype)` returns a loaded `Engine` for a backend config (`config`);
each backend module is imported only when chosen, so vLLM (the `[gpu]` extra) and the HTTP
client are never needed by a run that does not use them.
"""

from __future__ import annotations

from pipeline.config import to_dict
from pipeline.engines.base import Engine, GenerationRequest, GenerationResult
from pipeline.engines.config import (
    EngineConfig,
    OpenAIEngineConfig,
    PluginEngineConfig,
    TransformersEngineConfig,
    VllmEngineConfig,
)
from pipeline.models.identity import checkpoint_identity

__all__ = ["Engine", "EngineConfig", "GenerationRequest", "GenerationResult", "load_engine", "engine_identity"]


def load_engine(config: EngineConfig, device: str = "auto", dtype: str = "auto") -> Engine:
    if not config.model:
        raise ValueError(f"the {config.backend} engine needs a model (a Hugging Face id, a local folder, "
                         "or the name the server knows)")
    if isinstance(config, TransformersEngineConfig):
        from pipeline.engines.transformers_engine import TransformersEngine

        return TransformersEngine.load(config, device=device, dtype=dtype)
    if isinstance(config, OpenAIEngineConfig):
        from pipeline.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(config)
    if isinstance(config, VllmEngineConfig):
        from pipeline.engines.vllm_engine import VllmEngine

        return VllmEngine.load(config)
    if isinstance(config, PluginEngineConfig):
        from pipeline.engines.plugin import load_plugin

        return load_plugin(config)
    raise TypeError(f"unknown engine config {type(config).__name__}")


def engine_identity(config: EngineConfig) -> dict:
    """What a stage's version takes from its engine: the backend config (model, revision, ...),
    and for a local model folder or a hub id, what `checkpoint_identity` says about it."""
    identity = {"engine": to_dict(config)}
    if isinstance(config, (TransformersEngineConfig, VllmEngineConfig)):  # weights we load ourselves
        identity["checkpoint"] = checkpoint_identity(config.model, config.revision)
    return identity
