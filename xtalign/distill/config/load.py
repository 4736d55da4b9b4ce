"""Reading a run config: YAML + dotted overrides (`teachers.0.temperature=2`), strictly; and writing it
back as the JSON every run directory keeps (`ray.async` under its YAML name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xtalign.config import ConfigError, apply_overrides, from_mapping, load_yaml, to_dict
from xtalign.distill.config.run import DistillConfig

__all__ = ["config_from_dict", "config_to_dict", "load_config"]


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """`ray.async` is the YAML name of `ray.async_teachers` (`async` is a Python keyword)."""
    ray = raw.get("ray")
    if isinstance(ray, dict) and "async" in ray:
        if "async_teachers" in ray:
            raise ConfigError("ray.async and ray.async_teachers are the same setting; give one")
        ray["async_teachers"] = ray.pop("async")
    return raw


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> DistillConfig:
    """A validated `DistillConfig` from a mapping + overrides; ConfigError names the key on any problem."""
    return from_mapping(DistillConfig, _normalise(apply_overrides(data, overrides or [])))


def config_to_dict(cfg: DistillConfig) -> dict[str, Any]:
    """The resolved config as plain JSON, with the YAML names (`ray.async`)."""
    out = to_dict(cfg)
    out["ray"]["async"] = out["ray"].pop("async_teachers")
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """YAML file + `key.sub=value` overrides → a validated `DistillConfig` (ConfigError on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give a YAML file (see distill/configs/)")
    return config_from_dict(load_yaml(path), overrides)
