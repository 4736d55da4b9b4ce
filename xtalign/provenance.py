"""Where and when a result was produced, taken when a run STARTS: for results JSON that gets committed.

A script that writes committed results calls `start_provenance(allow_dirty=...)` before it measures
anything: a dirty working tree is refused unless the caller allows it, and then the sha256 of `git diff
HEAD` is recorded so the exact code can be told apart from the commit it sat on.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["DirtyTreeError", "cpu_model", "git_sha", "provenance", "start_provenance"]

_ROOT = Path(__file__).resolve().parents[1]


class DirtyTreeError(RuntimeError):
    """The working tree has uncommitted changes and the caller did not allow that."""


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=_ROOT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_sha() -> str:
    return (_git("rev-parse", "--short=12", "HEAD") or "unknown").strip() or "unknown"


def _dirty_files() -> list[str]:
    """Tracked files that differ from HEAD, and untracked files git does not ignore."""
    status = _git("status", "--porcelain", "--untracked-files=normal") or ""
    return [line[3:] for line in status.splitlines() if line.strip()]


def _diff_sha256() -> str:
    diff = _git("diff", "HEAD", "--binary") or ""
    untracked = _git("ls-files", "--others", "--exclude-standard") or ""
    h = hashlib.sha256(diff.encode("utf-8", errors="surrogateescape"))
    for name in sorted(untracked.split()):
        path = _ROOT / name
        if path.is_file():
            h.update(name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> str | None:
    """The first CUDA device's name, only when torch is already imported (never imported here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def provenance() -> dict[str, Any]:
    """Git state, date, software versions and hardware, as of now."""
    from xtalign import __version__

    dirty = _dirty_files()
    return {"xtalign": __version__, "git_sha": git_sha(), "git_dirty": bool(dirty),
            "git_diff_sha256": _diff_sha256() if dirty else None, "dirty_files": dirty[:50],
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "python": sys.version.split()[0],
            "torch": _version("torch"), "transformers": _version("transformers"), "ray": _version("ray"),
            "platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "gpu": _gpu()}


def start_provenance(*, allow_dirty: bool) -> dict[str, Any]:
    """Provenance at the start of a run; a dirty tree is refused unless `allow_dirty` (then its diff is hashed)."""
    record = provenance()
    if record["git_dirty"] and not allow_dirty:
        files = ", ".join(record["dirty_files"][:5])
        raise DirtyTreeError(f"the working tree has uncommitted changes ({files}); commit them so the results name "
                             "the code that made them, or pass --allow-dirty (the diff's sha256 is then recorded)")
    return record
