"""Plugin engines: a backend from an installed package, named in the config as `module:Class`.

    engine:
      backend: plugin
      plugin: my_videollama2_engine:VideoLLaMA2Engine   # importable where the stage runs
      model: DAMO-NLP-SG/VideoLLaMA2-7B
      revision: <a commit>
      options: {max_frames: 8}

The contract: `Class(model, revision=revision, **options)` builds a loaded engine, which is an
`Engine` (`pipeline.engines.base`):

- `name`, `model`, `revision` attributes;
- `generate(requests: list[GenerationRequest]) -> list[GenerationResult]`: one result per request,
  in order, honouring each request's `seed`, `temperature`, `top_p` and `max_tokens`; a request
  that fails gets a result with `finish_reason="error"` and `error` set, not an exception;
- `close()`: releases what the engine holds (GPU memory, processes).

`plugin_class` checks what it can without building anything: the spec's form, that the module
imports, that the class exists and accepts the options (checked against its signature, so a wrong
option costs no model load); the driver runs it before any worker starts (`check_engine`).
`load_plugin` does the same, builds, and checks that the object has `generate` and `close`. Each
failure is a one-line `ConfigError` naming the spec.
"""

from __future__ import annotations

import importlib
import inspect

from pipeline.config import ConfigError
from pipeline.engines.base import Engine
from pipeline.engines.config import PluginEngineConfig


def load_plugin(config: PluginEngineConfig) -> Engine:
    cls = plugin_class(config)
    engine = cls(config.model, revision=config.revision, **config.options)
    missing = [method for method in ("generate", "close") if not callable(getattr(engine, method, None))]
    if missing:
        raise ConfigError(f"{_where(config)}: {cls.__name__} objects have no {' or '.join(missing)} method; an "
                          "engine implements generate(requests) -> results and close()")
    return engine


def plugin_class(config: PluginEngineConfig, key: str | None = None):
    """The plugin's class, after every check that builds nothing: the spec's form, the import, the
    class, the options against its signature. The driver calls it (with the config `key` of the
    engine section, which the error then names) before any worker starts."""
    where = _where(config, key)
    module_name, class_name = _split(config.plugin, where)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"{where}: no module named {exc.name!r} (is its package installed where the "
                              "stage runs?)") from exc
        raise ConfigError(f"{where}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the module is there but broke while importing: say so in one line
        raise ConfigError(f"{where}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc

    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"{where}: module {module_name!r} has no {class_name!r}")
    if not callable(cls):
        raise ConfigError(f"{where}: {class_name!r} is a {type(cls).__name__}, not a class")
    _check_signature(where, cls, config)
    return cls


def _where(config: PluginEngineConfig, key: str | None = None) -> str:
    return f"config value {key}.plugin={config.plugin!r}" if key else f"engine plugin {config.plugin!r}"


def _split(spec: str, where: str) -> tuple[str, str]:
    module_name, sep, class_name = (spec or "").partition(":")
    if not sep or not module_name.strip() or not class_name.strip() or ":" in class_name:
        raise ConfigError(f"{where}: name it as 'package.module:ClassName'")
    return module_name.strip(), class_name.strip()


def _check_signature(where: str, cls, config: PluginEngineConfig) -> None:
    """A wrong option is a config error, found before the (perhaps slow) constructor runs."""
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):  # a builtin or C extension: let the call itself decide
        return
    try:
        signature.bind(config.model, revision=config.revision, **config.options)
    except TypeError as exc:
        raise ConfigError(f"{where}: cannot be built with model, revision and options "
                          f"{sorted(config.options)}: {exc} (its signature: {signature})") from exc
