"""Dependency direction: the core imports neither torch nor ray; the CLI loads heavy modules lazily."""

from __future__ import annotations

import subprocess
import sys

CORE = ["xtalign.vocab", "xtalign.zoo", "xtalign.overlap", "xtalign.projection", "xtalign.io", "xtalign.audit",
        "xtalign.align", "xtalign.config", "xtalign.cli.main"]


def _loaded_after(imports: list[str]) -> set[str]:
    code = f"import sys; import {', '.join(imports)}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_imports_neither_torch_nor_ray() -> None:
    loaded = _loaded_after(CORE)
    assert "torch" not in loaded and "ray" not in loaded


def test_losses_import_torch_but_not_ray() -> None:
    loaded = _loaded_after(["xtalign.losses"])
    assert "torch" in loaded and "ray" not in loaded
