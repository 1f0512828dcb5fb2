"""Typed configuration: dataclasses, filled from YAML, then from `--set key=value` overrides.

Defaults live on the dataclasses; YAML overrides them; the command line overrides YAML.
Unknown keys and ill-typed values are rejected with the full dotted key and what was expected,
never ignored. A field typed as a union of dataclasses (e.g. the keyframe sampling strategies)
picks its member by the member's first field, a `Literal` tag such as `strategy: "uniform"`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is wrong; the message names it."""


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
        if name in data:
            default = _default_of(field)
            values[name] = _coerce(data[name], hints[name], _join(where, name), default)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"config key '{_join(where, name)}' is required")
    return cls(**values)


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
    tagged = {_tag_of(m): m for m in members if dataclasses.is_dataclass(m)}
    if tagged and len(tagged) == len(members):
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


def _tag_of(cls: type) -> str:
    first = dataclasses.fields(cls)[0]
    if first.default is dataclasses.MISSING:
        raise TypeError(f"{cls.__name__}: the first field of a tagged config class needs a default")
    return first.default


def _coerce_tagged(value: Any, tagged: dict[str, type], where: str, default: Any) -> Any:
    if any(isinstance(value, cls) for cls in tagged.values()):
        return value
    tag_field = dataclasses.fields(next(iter(tagged.values())))[0].name
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


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `data` with each `key.path=value` set, creating intermediate mappings."""
    result = _deep_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = result
        for i, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(
                    f"override {text!r}: '{'.'.join(path[: i + 1])}' is set to {child!r}, not a "
                    "mapping; write it as a mapping first (e.g. sampling.strategy=vlm)"
                )
            node = child
        node[path[-1]] = value
    return result


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
    return build(cls, apply_overrides(data, overrides or []))
