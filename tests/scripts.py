"""A repository script (under benchmarks/, analysis/ or figures/: scripts, not a package) loaded as a module, for
the tests that call its functions."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def load_script(rel: str, name: str) -> ModuleType:
    """`ROOT / rel` as module `name`, registered in sys.modules before it runs (dataclasses look their module up
    while the class is built)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
