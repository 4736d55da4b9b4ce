"""Frozen keyword-only configs: strict loading from mappings/YAML, dotted overrides, JSON dumps."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the fix."""


def _closest(key: str, valid: list[str]) -> str:
    hit = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {hit[0]!r}?" if hit else ""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_mapping(hint, value, prefix=f"{key}.")
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}={value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin in (tuple,) and isinstance(value, list | tuple):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, key) for v in value)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key) if len(args) == 1 else value
    if hint is float and isinstance(value, int | str) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, str):
        return int(value)
    if hint is bool and isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return value


def from_mapping(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build `cls` from a mapping; an unknown key is an error naming the closest valid key."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_closest(key, list(fields))}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` overrides onto a nested dict; values parse as JSON when they can."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return data


def to_dict(cfg: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)
