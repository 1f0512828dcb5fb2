"""Generation engines: one request/response type (`base`), real backends behind it.

`load_engine(config, device, dtype)` returns a loaded `Engine` for a backend config (`config`);
each backend module is imported only when chosen, so vLLM (the `[gpu]` extra) and the HTTP
client are never needed by a run that does not use them.
"""

from __future__ import annotations

import importlib.util

from pipeline.config import ConfigError, to_dict
from pipeline.engines.base import Engine, GenerationRequest, GenerationResult
from pipeline.engines.config import (
    EngineConfig,
    OpenAIEngineConfig,
    PluginEngineConfig,
    TransformersEngineConfig,
    VllmEngineConfig,
)
from pipeline.models.identity import check_model, checkpoint_identity

__all__ = ["Engine", "EngineConfig", "GenerationRequest", "GenerationResult", "load_engine", "engine_identity",
           "check_engine"]


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


def check_engine(key: str, config: EngineConfig, *, ray_data: bool = False) -> None:
    """On the driver, before any worker starts: what can be known about the engine section at
    config key `key` without loading a model. The model's form (a local checkpoint folder or a hub
    id) for the backends that load weights themselves; vLLM installed and its config usable (through
    Ray Data LLM: `ray_data`), for `vllm`; for `plugin`, everything short of building it
    (`plugin_class`). One-line `ConfigError`s naming the key."""
    if isinstance(config, PluginEngineConfig):
        from pipeline.engines.plugin import plugin_class

        plugin_class(config, key)
    if not config.model:
        raise ConfigError(f"{key}.model is empty: the {config.backend} engine needs a model (a Hugging Face id, "
                          "a local folder, or the name the server knows)")
    if isinstance(config, (TransformersEngineConfig, VllmEngineConfig)):
        check_model(f"{key}.model", config.model)
    if isinstance(config, VllmEngineConfig):
        from pipeline.engines.vllm_engine import MISSING, check_config

        # vLLM itself is imported only by Ray's engine actors: found here, it fails before any write.
        if importlib.util.find_spec("vllm") is None:
            raise ConfigError(f"config value {key}.backend='vllm': {MISSING}")
        try:
            check_config(config, ray_data=ray_data)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def engine_identity(config: EngineConfig) -> dict:
    """What a stage's version takes from its engine: the backend config (model, revision, ...),
    and for a local model folder or a hub id, what `checkpoint_identity` says about it."""
    identity = {"engine": to_dict(config)}
    if isinstance(config, (TransformersEngineConfig, VllmEngineConfig)):  # weights we load ourselves
        identity["checkpoint"] = checkpoint_identity(config.model, config.revision)
    return identity
