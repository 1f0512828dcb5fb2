"""Typed config: defaults <- YAML <- --set, with errors that name the bad key or value."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from pipeline import config
from pipeline.config import ConfigError


@dataclass
class Linear:
    strategy: Literal["linear"] = "linear"
    steps: int = 3


@dataclass
class Random:
    strategy: Literal["random"] = "random"
    steps: int = 5
    seed: int = 0


@dataclass
class Inner:
    rate: float = 1.0
    name: str = "x"
    mode: Literal["a", "b"] = "a"
    limit: int | None = None


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    schedule: Linear | Random = field(default_factory=Linear)
    flags: list[str] = field(default_factory=list)
    enabled: bool = True


def test_defaults_then_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  rate: 2\n  name: from-yaml\nflags: [a, b]\n")
    cfg = config.load(Outer, path, ["inner.name=from-cli", "enabled=false", "inner.limit=7"])
    assert cfg.inner == Inner(rate=2.0, name="from-cli", mode="a", limit=7)
    assert isinstance(cfg.inner.rate, float)
    assert cfg.flags == ["a", "b"] and cfg.enabled is False
    assert cfg.schedule == Linear()


def test_tagged_union_picks_member_by_tag_and_keeps_default_tag():
    cfg = config.build(Outer, config.apply_overrides({}, ["schedule.strategy=random", "schedule.seed=4"]))
    assert cfg.schedule == Random(seed=4)
    # Only a field given: the default member (linear) is kept.
    assert config.build(Outer, {"schedule": {"steps": 9}}).schedule == Linear(steps=9)
    assert config.build(Outer, {"schedule": "random"}).schedule == Random()
    # A field of another member is unknown for this one.
    with pytest.raises(ConfigError, match=r"unknown config key 'schedule.seed'"):
        config.build(Outer, {"schedule": {"strategy": "linear", "seed": 1}})
    with pytest.raises(ConfigError, match=r"schedule.strategy='spiral' is not one of: linear, random"):
        config.build(Outer, {"schedule": {"strategy": "spiral"}})


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["inner.rat=3"], r"unknown config key 'inner.rat'; did you mean 'inner.rate'\?"),
        (["inner.rate=fast"], r"inner.rate='fast' is not a number"),
        (["inner.mode=c"], r"inner.mode='c' is not one of 'a', 'b'"),
        (["enabled=maybe"], r"enabled='maybe' is not a boolean"),
        (["inner.limit=1.5"], r"inner.limit=1.5 is not an integer"),
        (["flags=notalist"], r"flags='notalist' is not a list"),
        (["inner"], r"is not of the form key=value"),
        (["inner.name.deeper=1"], r"'inner.name' is set to 'x'|not a mapping"),
    ],
)
def test_errors_name_the_key_and_value(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config.build(Outer, config.apply_overrides({"inner": {"name": "x"}}, overrides))


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        config.load(Outer, bad)


def test_to_dict_round_trips():
    cfg = config.build(Outer, {"schedule": {"strategy": "random", "seed": 3}, "flags": ["z"]})
    assert config.build(Outer, config.to_dict(cfg)) == cfg


def test_shipped_job_configs_load():
    from pathlib import Path

    from pipeline.run import RunConfig

    configs = sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        cfg = config.load(RunConfig, path)
        assert cfg.dataset.format in path.stem
        assert cfg.keyframes.sampling.strategy == "uniform"
