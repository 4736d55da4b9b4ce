"""Strict config loading: unknown keys name the closest valid key, Literals are checked, overrides nest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from xtalign.config import ConfigError, apply_overrides, from_mapping, load_yaml, to_dict


@dataclass(frozen=True, kw_only=True)
class Inner:
    lr: float = 5e-5
    mode: Literal["sum", "dynamic", "select"] = "sum"


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = "run"
    steps: int = 10
    teachers: tuple[str, ...] = ()
    optim: Inner = field(default_factory=Inner)


def test_unknown_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'stepz'; did you mean 'steps'"):
        from_mapping(Outer, {"stepz": 3})
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'; did you mean 'lr'"):
        from_mapping(Outer, {"optim": {"lrr": 1}})


def test_literals_and_coercion() -> None:
    cfg = from_mapping(Outer, {"steps": "7", "teachers": ["a", "b"], "optim": {"lr": "1e-2", "mode": "select"}})
    assert cfg == Outer(steps=7, teachers=("a", "b"), optim=Inner(lr=0.01, mode="select"))
    with pytest.raises(ConfigError, match=r"optim.mode='avg' is not one of \['sum', 'dynamic', 'select'\]"):
        from_mapping(Outer, {"optim": {"mode": "avg"}})


def test_dotted_overrides_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("name: x\noptim:\n  lr: 0.001\n")
    data = apply_overrides(load_yaml(path), ["optim.mode=dynamic", "steps=3", "teachers=[\"q\"]"])
    cfg = from_mapping(Outer, data)
    assert (cfg.name, cfg.steps, cfg.teachers, cfg.optim.mode, cfg.optim.lr) == ("x", 3, ("q",), "dynamic", 0.001)
    assert to_dict(cfg)["optim"] == {"lr": 0.001, "mode": "dynamic"}
    with pytest.raises(ConfigError, match="must look like key.sub=value"):
        apply_overrides({}, ["steps"])


def test_bad_yaml_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("- a list\n- not a mapping\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(path)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_yaml(tmp_path / "missing.yaml")
