"""Frozen keyword-only configs: strict loading from mappings/YAML, dotted overrides, JSON dumps.

Every error names the key it is about with its full dotted path (`teachers.0.temperature`): a
validator inside a config raises `FieldError` with `{p}` where the path prefix goes, and `from_mapping`
fills in the prefix of the place it is building.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is invalid; the message names the fix."""


class FieldError(ConfigError):
    """A validator's error; `{p}` in the template stands for the dotted path of the config being checked."""

    def __init__(self, template: str, prefix: str = "") -> None:
        self.template, self.prefix, self.placed = template, prefix, False
        super().__init__(template)

    def at(self, prefix: str) -> FieldError:
        """This error with its path prefix filled in (once: inner configs place their own errors)."""
        if not self.placed:
            self.prefix, self.placed = prefix, True
        return self

    def __str__(self) -> str:
        return self.template.replace("{p}", self.prefix)


def require(ok: bool, template: str) -> None:
    """Raise a `FieldError` with `template` (use `{p}` before every key name) unless `ok`."""
    if not ok:
        raise FieldError(template)


def _closest(key: str, valid: list[str]) -> str:
    hit = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f"; did you mean {hit[0]!r}?" if hit else ""


def _number(value: Any, kind: type, key: str) -> Any:
    """`value` as an int or float, or a ConfigError naming `key` (bools and nulls are not numbers)."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}; got {json.dumps(value)}")
    try:
        out = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is int and isinstance(value, float) and value != out:
        raise ConfigError(f"{key}={value!r} is not an integer")
    if kind is float and not math.isfinite(out):
        raise ConfigError(f"{key}={value!r} must be finite")
    return out


def _boolean(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ConfigError(f"{key} must be true or false; got {json.dumps(value)}")


def _optional(hint: Any) -> tuple[bool, list[Any]]:
    args = list(typing.get_args(hint))
    return type(None) in args, [a for a in args if a is not type(None)]


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its keys; got {json.dumps(value, default=str)}")
        return from_mapping(hint, value, prefix=f"{key}.")
    if origin is typing.Literal:
        if isinstance(value, bool) and ("on" if value else "off") in typing.get_args(hint):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on / off as a boolean
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}={value!r} is not one of {list(typing.get_args(hint))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list; got {json.dumps(value, default=str)}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}.{i}") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ConfigError(f"{key} must hold {len(args)} values; got {len(value)}")
        kinds = args or (Any,) * len(value)
        return tuple(_coerce(v, a, f"{key}.{i}") for i, (v, a) in enumerate(zip(value, kinds, strict=True)))
    if origin in (types.UnionType, typing.Union):
        nullable, args = _optional(hint)
        if value is None:
            if nullable:
                return None
            raise ConfigError(f"{key} must be set; got null")
        return _coerce(value, args[0], key) if len(args) == 1 else value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping; got {json.dumps(value, default=str)}")
        _, inner = typing.get_args(hint) or (str, Any)
        return {str(k): _coerce(v, inner, f"{key}.{k}") for k, v in value.items()}
    if hint is float or hint is int:
        return _number(value, hint, key)
    if hint is bool:
        return _boolean(value, key)
    if hint is str and not isinstance(value, str):
        if value is None or isinstance(value, dict | list):
            raise ConfigError(f"{key} must be a string; got {json.dumps(value, default=str)}")
        return str(value)
    return value


def from_mapping(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build `cls` from a mapping; an unknown key is an error naming the closest valid key, a missing
    required key or a bad value an error naming the key's full path."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_closest(key, list(fields))}")
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required key '{prefix}{missing[0]}'")
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise exc.at(prefix) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` overrides onto a nested dict; values parse as JSON when they can. A numeric path part
    (`teachers.0.model`) addresses an element of a list."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node: Any = out
        *parents, last = dotted.split(".")
        for i, p in enumerate(parents):
            node = _child(node, p, ".".join(parents[: i + 1]))
        _assign(node, last, value, dotted)
    return out


def _child(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        index = _index(node, part, path)
        if node[index] is None:
            node[index] = {}
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"override {path}: {path.rsplit('.', 1)[0]} is not a mapping")
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _assign(node: Any, last: str, value: Any, dotted: str) -> None:
    if isinstance(node, list):
        node[_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {dotted}: its parent is not a mapping")


def _index(node: list[Any], part: str, path: str) -> int:
    if not part.isdigit():
        raise ConfigError(f"override {path}: {part!r} must be a list index (0..{len(node) - 1})")
    index = int(part)
    if index > len(node):
        raise ConfigError(f"override {path}: index {index} is past the end of the list ({len(node)} entries)")
    if index == len(node):
        node.append({})
    return index


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
