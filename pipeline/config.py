"""Typed configuration: dataclasses, filled from YAML, then from `--set key=value` overrides.

Defaults live on the dataclasses; YAML overrides them; the command line overrides YAML.
Every value is checked when the config is built, before any work: unknown keys, ill-typed values
and values out of range are rejected in one line that names the full dotted key and what was
expected, never ignored. Ranges are declared on the field, `field(default=12, metadata=bounds(min=1))`;
a check that spans fields stays in the class's `__post_init__`, whose ValueError becomes a
ConfigError naming the class's dotted key.

A field typed as a union of dataclasses (e.g. the keyframe sampling strategies) picks its member
by the member's first field, a `Literal` tag such as `strategy: "uniform"`. An override that
switches the tag to another member (`--set keyframes.sampling.strategy=fps` over a YAML uniform
strategy) drops every other field the YAML gave that union, even one the new member also has:
a value chosen for one strategy (12 uniform frames) is not silently reused by another (vlm).
Fields set on the command line are kept whatever their order, so a field the new member lacks
that the user typed is still an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


# ---- ranges declared on fields ---------------------------------------------------------------

_BOUNDS = "pipeline.config.bounds"  # the metadata key; namespaced so other metadata can sit beside it


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The range of a number: min/max are inclusive, above/below exclusive; None is unbounded."""

    min: float | None = None
    max: float | None = None
    above: float | None = None
    below: float | None = None

    def __post_init__(self):
        if self.min is not None and self.above is not None:
            raise TypeError("bounds(): give min or above, not both")
        if self.max is not None and self.below is not None:
            raise TypeError("bounds(): give max or below, not both")

    def contains(self, value: float) -> bool:
        # Written as "value satisfies each bound" so that NaN, which compares false, is outside.
        return (
            (self.min is None or value >= self.min)
            and (self.above is None or value > self.above)
            and (self.max is None or value <= self.max)
            and (self.below is None or value < self.below)
        )

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"between {self.min} and {self.max}"
        lower = f">= {self.min}" if self.min is not None else f"> {self.above}" if self.above is not None else ""
        upper = f"<= {self.max}" if self.max is not None else f"< {self.below}" if self.below is not None else ""
        return " and ".join(part for part in (lower, upper) if part)


def bounds(
    min: float | None = None,
    max: float | None = None,
    *,
    above: float | None = None,
    below: float | None = None,
) -> dict[str, Bounds]:
    """Field metadata declaring a number's range: `field(default=12, metadata=bounds(min=1))`.

    `build` enforces it on int and float fields (None, where the type allows it, is always fine);
    `check_bounds` enforces it when a class is constructed directly."""
    return {_BOUNDS: Bounds(min=min, max=max, above=above, below=below)}


def check_bounds(obj: Any) -> None:
    """Raise ValueError if a field of dataclass instance `obj` is outside its declared bounds
    (for `__post_init__`, so that directly constructed objects are checked too)."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        problem = _range_problem(field, value, f"{type(obj).__name__}.{field.name}")
        if problem:
            raise ValueError(f"{type(obj).__name__}.{field.name}={value!r} is out of range: {problem}")


def _range_problem(field: dataclasses.Field, value: Any, where: str) -> str | None:
    """What is wrong with `value` for the bounds of `field`, or None."""
    declared = field.metadata.get(_BOUNDS)
    if declared is None or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where}: bounds() apply to int and float fields, not {value!r}")  # a bug in a config class
    return None if declared.contains(value) else f"must be {declared.describe()}"


# ---- building dataclasses from plain data --------------------------------------------------


def build(cls: type[T], data: Mapping[str, Any] | None, where: str = "") -> T:
    """Build dataclass `cls` from a mapping, type-checking every value."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping of keys to values, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [key for key in data if key not in fields]
    if unknown:
        key = unknown[0]
        hint = difflib.get_close_matches(str(key), fields, n=1)
        suggestion = f"; did you mean '{_join(where, hint[0])}'?" if hint else ""
        raise ConfigError(
            f"unknown config key '{_join(where, str(key))}'{suggestion} "
            f"(valid keys here: {', '.join(fields)})"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, field in fields.items():
        key = _join(where, name)
        if name in data:
            values[name] = _coerce(data[name], hints[name], key, _default_of(field))
            problem = _range_problem(field, values[name], key)
            if problem:
                raise ConfigError(f"config value {key}={values[name]!r} is out of range: {problem}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{key}' is required")
    try:
        return cls(**values)
    except ConfigError:
        raise
    except ValueError as exc:  # the class's own checks, e.g. across fields in __post_init__
        message = " ".join(str(exc).split())  # one line, whatever the class wrote
        raise ConfigError(f"config value {where or 'at the top level'} is invalid: {message}") from exc


def to_dict(obj: Any) -> Any:
    """Plain, JSON-ready data for a config object (the inverse of `build`)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str, default: Any = None) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, args, where, default)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config value {where}={value!r} is not {_describe(tp)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(default, tp) and isinstance(value, Mapping):
            # A section's default may differ from its class's (keyframes' run settings): keys the
            # YAML leaves out keep the section's default, not the class's.
            value = {**to_dict(default), **value}
        return build(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config value {where}={value!r} is not a list")
        item_type = args[0] if args else Any
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config value {where}={value!r} is not a mapping")
        value_type = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config value {where}={value!r} is not a boolean (true/false)")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config value {where}={value!r} is not an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config value {where}={value!r} is not a number")
        if not math.isfinite(value):  # YAML's .nan and .inf parse as floats but break any arithmetic
            raise ConfigError(f"config value {where}={value!r} is not a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config value {where}={value!r} is not a string")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"config value {where}={value!r} is not a path")
        return Path(value)
    raise ConfigError(f"{where}: unsupported config type {tp!r}")  # a bug in a config class


def _coerce_union(value: Any, members: tuple, where: str, default: Any) -> Any:
    if value is None and type(None) in members:
        return None
    members = tuple(m for m in members if m is not type(None))
    tagged = _tagged_members(members)
    if tagged:
        return _coerce_tagged(value, tagged, where, default)
    if len(members) == 1:
        return _coerce(value, members[0], where)
    errors = []
    for member in members:
        try:
            return _coerce(value, member, where)
        except ConfigError as exc:
            errors.append(str(exc))
    raise ConfigError(f"config value {where}={value!r} fits none of its types: " + "; ".join(errors))


def _tagged_members(members: tuple) -> dict[str, type] | None:
    """{tag: member} when every member (None aside) is a dataclass, else None."""
    members = tuple(m for m in members if m is not type(None))
    if not members or not all(dataclasses.is_dataclass(m) for m in members):
        return None
    tagged = {_tag_of(m): m for m in members}
    return tagged if len(tagged) == len(members) else None  # a repeated tag cannot pick a member


def _tag_field(tagged: dict[str, type]) -> str:
    return dataclasses.fields(next(iter(tagged.values())))[0].name


def _tag_of(cls: type) -> str:
    first = dataclasses.fields(cls)[0]
    if first.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}: the first field of a tagged config class needs a default")
    return first.default


def _coerce_tagged(value: Any, tagged: dict[str, type], where: str, default: Any) -> Any:
    if any(isinstance(value, cls) for cls in tagged.values()):
        return value
    tag_field = _tag_field(tagged)
    if isinstance(value, str):  # `sampling: vlm` means the vlm strategy with its defaults
        value = {tag_field: value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"config value {where}={value!r} is not a mapping")
    tag = value.get(tag_field)
    if tag is None and default is not None:
        # Overriding one field keeps the strategy of the default (e.g. only num_frames changed).
        tag = getattr(default, tag_field)
        value = {**{tag_field: tag}, **value}
    if tag not in tagged:
        raise ConfigError(
            f"config value {_join(where, tag_field)}={tag!r} is not one of: {', '.join(tagged)}"
        )
    return build(tagged[tag], value, where)


# ---- YAML and overrides ----------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=12` -> (["a", "b"], 12). Values are parsed as YAML: 12 is an int, true a bool."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. keyframes.short_side=256)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({exc})") from exc
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type | None = None) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` set in order, creating intermediate mappings.

    Given the config class `cls`, an override that switches a tagged union to another member
    drops the fields that did not come from an override (see the module docstring)."""
    result = _deep_copy(data)
    typed: list[tuple[str, ...]] = []  # the paths set by overrides so far
    for text in overrides:
        path, value = parse_override(text)
        node, tp, default = result, cls, None
        for i, part in enumerate(path[:-1]):
            tp, default = _child_schema(tp, default, node, part)
            tagged = _union_members(tp)
            if tagged and isinstance(node.get(part), str):  # `sampling: vlm` is {strategy: vlm}
                node[part] = {_tag_field(tagged): node[part]}
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: '{'.'.join(path[: i + 1])}' is set to {child!r}, not a "
                    "mapping; write it as a mapping first (e.g. sampling.strategy=vlm)"
                )
            node = child
        if _switches_member(tp, default, node, path[-1], value):
            _drop_untyped(node, tuple(path[:-1]), typed, keep=path[-1])
        node[path[-1]] = value
        typed.append(tuple(path))
    return result


def _child_schema(tp: Any, default: Any, node: dict, key: str) -> tuple[Any, Any]:
    """The type and default of `node[key]`, where `node` holds a `tp` whose default is `default`;
    (None, None) where the type is not known (no class given, a free-form dict, an unknown key)."""
    tagged = _union_members(tp)
    if tagged:  # the member named by the mapping's tag, else by the default's
        tag = node.get(_tag_field(tagged), getattr(default, _tag_field(tagged), None))
        tp = tagged.get(tag) if isinstance(tag, Hashable) else None  # build reports a bad tag
    if not dataclasses.is_dataclass(tp):
        return None, None
    field = next((f for f in dataclasses.fields(tp) if f.init and f.name == key), None)
    if field is None:
        return None, None
    return typing.get_type_hints(tp)[key], _default_of(field)


def _union_members(tp: Any) -> dict[str, type] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return _tagged_members(typing.get_args(tp))
    return None


def _switches_member(tp: Any, default: Any, node: dict, key: str, value: Any) -> bool:
    """Whether setting `node[key] = value` changes which member of tagged union `tp` node is."""
    tagged = _union_members(tp)
    if not tagged or key != _tag_field(tagged):
        return False
    current = node.get(key, getattr(default, key, None))
    # With no tag before, the mapping's fields were meant for whichever member the override names.
    return current is not None and current != value


def _drop_untyped(node: dict, where: tuple[str, ...], typed: list[tuple[str, ...]], keep: str) -> None:
    """Remove from `node` (at path `where`) every key but `keep` that no override has set."""
    for key in list(node):
        path = (*where, key)
        # An override set this key, something under it, or the whole mapping it sits in.
        set_by_user = any(p[: len(path)] == path or path[: len(p)] == p for p in typed)
        if key != keep and not set_by_user:
            del node[key]


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """defaults <- YAML file <- overrides, as a checked `cls`."""
    data = read_yaml(path) if path is not None else {}
    return build(cls, apply_overrides(data, overrides or [], cls))
