"""Plugin engines: `module:Class` from the config, built with (model, revision=..., **options), and a
one-line config error for each way the name can be wrong."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from echo_plugin import EchoEngine

from pipeline.config import ConfigError, build
from pipeline.engines import load_engine
from pipeline.engines.base import GenerationRequest
from pipeline.engines.config import EngineConfig, PluginEngineConfig, TransformersEngineConfig
from pipeline.engines.plugin import load_plugin


def _config(plugin: str, **kwargs) -> PluginEngineConfig:
    return PluginEngineConfig(plugin=plugin, model=kwargs.pop("model", "some/model"), **kwargs)


def test_a_plugin_is_built_with_model_revision_and_options():
    engine = load_engine(_config("echo_plugin:EchoEngine", revision="abc", options={"prefix": "said"}))
    assert isinstance(engine, EchoEngine)
    assert (engine.name, engine.model, engine.revision, engine.prefix) == ("echo", "some/model", "abc", "said")
    frames = [np.zeros((4, 4, 3), np.uint8)] * 2
    results = engine.generate([GenerationRequest("a", messages=[{"role": "user", "content": "hi"}], frames=frames),
                               GenerationRequest("b", prompt="raw", seed=9)])
    assert [(r.id, r.text) for r in results] == [("a", "said: hi (2 frames, seed 0)"),
                                                 ("b", "said: raw (0 frames, seed 9)")]
    engine.close()
    assert engine.closed


def _error(plugin: str, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_plugin(_config(plugin, **kwargs))
    message = str(caught.value)
    assert "\n" not in message and repr(plugin) in message  # one line, naming the spec
    return message


@pytest.mark.parametrize("spec", ["", "echo_plugin", "echo_plugin:", ":EchoEngine", "a:b:c", "  :  "])
def test_a_malformed_spec(spec):
    assert "name it as 'package.module:ClassName'" in _error(spec)


def test_a_missing_module_or_package():
    assert "no module named 'no_such_plugin_xyz'" in _error("no_such_plugin_xyz:Engine")
    assert "no module named 'no_such_package_xyz'" in _error("no_such_package_xyz.engines:Engine")


def test_a_module_that_breaks_while_importing(tmp_path, monkeypatch):
    (tmp_path / "needs_videollama2_xyz.py").write_text("import videollama2_not_installed_xyz\n")
    (tmp_path / "raises_on_import_xyz.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    message = _error("needs_videollama2_xyz:Engine")
    assert "importing 'needs_videollama2_xyz' failed" in message and "videollama2_not_installed_xyz" in message
    assert "RuntimeError: no GPU here" in _error("raises_on_import_xyz:Engine")


def test_a_missing_class_or_not_a_class():
    assert "module 'echo_plugin' has no 'Nope'" in _error("echo_plugin:Nope")
    assert "'NOT_A_CLASS' is a str, not a class" in _error("echo_plugin:NOT_A_CLASS")


def test_an_object_without_generate():
    assert "NoGenerate objects have no generate method" in _error("echo_plugin:NoGenerate")


def test_unknown_options_are_refused_before_construction():
    built = EchoEngine.built
    message = _error("echo_plugin:EchoEngine", options={"prefix": "x", "colour": "red"})
    assert "cannot be built with model, revision and options ['colour', 'prefix']" in message
    assert "colour" in message and EchoEngine.built == built


# ---- docs/engines.md: its config examples are configs, its Python is Python ---------------------


def _blocks(language: str) -> list[str]:
    text = (Path(__file__).parent.parent / "docs" / "engines.md").read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@dataclass
class _Section:  # a stage's config, as far as its engine goes
    engine: EngineConfig = field(default_factory=TransformersEngineConfig)


def test_the_documented_engine_configs_build():
    built = [build(_Section, yaml.safe_load(block)["visual_tags"], "visual_tags").engine for block in _blocks("yaml")]
    assert [config.backend for config in built] == ["transformers", "openai", "vllm", "plugin"]
    assert built[3].plugin == "my_engines.videollama2:VideoLLaMA2Engine" and set(built[3].options) == {"python",
                                                                                                      "worker"}


def test_the_documented_python_compiles():
    blocks = _blocks("python")
    assert len(blocks) == 3
    for block in blocks:
        compile(block, "docs/engines.md", "exec")
