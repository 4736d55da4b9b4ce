"""Helpers shared by CLI verbs: one-line errors, output directories, provenance."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CLIError(Exception):
    """Raised inside a verb; main prints its message as one line and exits with `code`."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def prepare_out_dir(path: Path, *, overwrite: bool) -> Path:
    """Create `path`; refuse an existing non-empty directory unless `overwrite`."""
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {path} exists and is not a directory; choose another path")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise CLIError(f"--out {path} already holds files; pass --overwrite to replace them or choose another path")
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_out_file(path: Path, *, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise CLIError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    if path.exists() and path.is_dir():
        raise CLIError(f"{path} is a directory; give a file path")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temporary file and rename, so a failure never leaves a half-written output."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parents[2], timeout=5)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def git_sha() -> str:
    return _git("rev-parse", "--short", "HEAD") or "unknown"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance() -> dict[str, Any]:
    """Where and when a result was produced: for results JSON."""
    from xtalign import __version__

    return {"xtalign": __version__, "git_sha": git_sha(), "git_dirty": bool(_git("status", "--porcelain")),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "python": sys.version.split()[0],
            "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count()}


def dump_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
