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

    from pipeline.flow import RunConfig

    configs = sorted((Path(__file__).parents[1] / "jobs" / "configs").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        cfg = config.load(RunConfig, path)
        assert cfg.dataset.format in path.stem
        assert cfg.keyframes.sampling.strategy == "uniform"


# ---- ranges ----------------------------------------------------------------------------------


@dataclass
class Ranged:
    count: int = field(default=1, metadata=config.bounds(min=1))
    percent: int = field(default=50, metadata=config.bounds(min=0, max=100))
    ratio: float = field(default=0.5, metadata=config.bounds(above=0, max=1))
    scale: float = field(default=1.0, metadata=config.bounds(min=0, below=2))
    cap: int | None = field(default=None, metadata=config.bounds(min=1))


@dataclass
class Holder:
    ranged: Ranged = field(default_factory=Ranged)


@pytest.mark.parametrize(
    "values",
    [
        {"count": 1, "percent": 0, "ratio": 1, "scale": 0, "cap": 1},
        {"percent": 100, "ratio": 1e-9, "scale": 1.999, "cap": None},
    ],
)
def test_bounds_accept_values_on_and_inside_the_edges(values):
    built = config.build(Holder, {"ranged": values}).ranged
    assert {name: getattr(built, name) for name in values} == values


@pytest.mark.parametrize(
    ("key", "value", "requirement"),
    [
        ("count", 0, "must be >= 1"),
        ("count", -3, "must be >= 1"),
        ("percent", 101, "must be between 0 and 100"),
        ("percent", -1, "must be between 0 and 100"),
        ("ratio", 0, "must be > 0 and <= 1"),
        ("ratio", 1.5, "must be > 0 and <= 1"),
        ("scale", 2, "must be >= 0 and < 2"),
        ("cap", 0, "must be >= 1"),  # None is allowed; a number must still be in range
    ],
)
def test_bounds_refuse_values_outside_naming_the_dotted_key(key, value, requirement):
    with pytest.raises(ConfigError) as caught:
        config.build(Holder, config.apply_overrides({}, [f"ranged.{key}={value}"], Holder))
    shown = float(value) if key in ("ratio", "scale") else value
    assert str(caught.value) == f"config value ranged.{key}={shown!r} is out of range: {requirement}"


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_float_values_must_be_finite(text):
    with pytest.raises(ConfigError, match=r"^config value inner.rate=.* is not a finite number$"):
        config.build(Outer, config.apply_overrides({}, [f"inner.rate={text}"]))


def test_bounds_are_for_numbers_and_take_one_lower_and_one_upper_bound():
    @dataclass
    class Misdeclared:
        name: str = field(default="x", metadata=config.bounds(min=1))

    with pytest.raises(TypeError, match="bounds"):
        config.build(Misdeclared, {"name": "y"})
    with pytest.raises(TypeError, match="min or above"):
        config.bounds(min=0, above=0)
    with pytest.raises(TypeError, match="max or below"):
        config.bounds(max=1, below=1)


@dataclass(frozen=True)
class Window:
    start: int = field(default=0, metadata=config.bounds(min=0))
    end: int = 10

    def __post_init__(self):
        config.check_bounds(self)
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start});\nwiden the window")


@dataclass
class Timeline:
    window: Window = field(default_factory=Window)


def test_check_bounds_covers_direct_construction():
    with pytest.raises(ValueError, match=r"^Window.start=-1 is out of range: must be >= 0$"):
        Window(start=-1)
    assert Window(start=0).start == 0


def test_a_class_check_becomes_one_line_naming_the_class_key():
    with pytest.raises(ConfigError) as caught:
        config.build(Timeline, {"window": {"start": 5, "end": 5}})
    assert str(caught.value) == (
        "config value window is invalid: end (5) must be after start (5); widen the window"
    )


# ---- switching a tagged union on the command line ----------------------------------------------


def _switched(data, overrides):
    return config.build(Outer, config.apply_overrides(data, overrides, Outer)).schedule


def test_switching_member_drops_the_old_members_fields_even_shared_ones():
    data = {"schedule": {"strategy": "random", "steps": 9, "seed": 4}}
    assert _switched(data, ["schedule.strategy=linear"]) == Linear()  # not steps=9
    assert _switched(data, ["schedule.strategy=linear", "schedule.steps=7"]) == Linear(steps=7)
    # The same member keeps its fields.
    assert _switched(data, ["schedule.strategy=random"]) == Random(steps=9, seed=4)
    assert data == {"schedule": {"strategy": "random", "steps": 9, "seed": 4}}  # the input is not changed


def test_switching_member_from_the_default_or_the_short_form():
    # No tag in the data: its fields belong to the default member (linear).
    assert _switched({"schedule": {"steps": 9}}, ["schedule.strategy=random"]) == Random()
    assert _switched({"schedule": "random"}, ["schedule.strategy=linear"]) == Linear()
    assert _switched({"schedule": "random"}, ["schedule.seed=2"]) == Random(seed=2)


def test_switching_member_keeps_fields_set_on_the_command_line():
    data = {"schedule": {"strategy": "random", "steps": 9, "seed": 4}}
    assert _switched(data, ["schedule.steps=7", "schedule.strategy=linear"]) == Linear(steps=7)
    with pytest.raises(ConfigError, match=r"^unknown config key 'schedule.seed'"):
        _switched(data, ["schedule.seed=1", "schedule.strategy=linear"])
    # A whole mapping typed on the command line is the user's too.
    with pytest.raises(ConfigError, match=r"^unknown config key 'schedule.seed'"):
        _switched({}, ["schedule={strategy: random, seed: 3}", "schedule.strategy=linear"])


def test_without_the_class_overrides_only_set_keys(tmp_path):
    data = {"schedule": {"strategy": "random", "seed": 4}}
    assert config.apply_overrides(data, ["schedule.strategy=linear"]) == {
        "schedule": {"strategy": "linear", "seed": 4}
    }
    # load knows the class, so it switches.
    path = tmp_path / "c.yaml"
    path.write_text("schedule: {strategy: random, seed: 4}\n")
    assert config.load(Outer, path, ["schedule.strategy=linear"]).schedule == Linear()
