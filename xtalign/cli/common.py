"""Helpers shared by CLI verbs: one-line errors (mapped from error TYPES to exit codes), output directories.
`write_atomic`, `dump_json` (xtalign.io) and `provenance` (xtalign.provenance) are re-exported for the verbs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xtalign.io import dump_json, write_atomic
from xtalign.provenance import cpu_model, git_sha, provenance

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CLIError", "check_out_file", "cpu_model", "dump_json",
           "exit_code", "git_sha", "prepare_out_dir", "provenance", "usage_errors", "write_atomic"]

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


def _usage_types() -> tuple[type[BaseException], ...]:
    """Error types that mean bad input (exit 2); the engine's and chat's only where they are importable."""
    from xtalign.config import ConfigError
    from xtalign.io import ProjectionFormatError, ProjectionMismatchError
    from xtalign.provenance import DirtyTreeError

    found: list[type[BaseException]] = [ConfigError, ProjectionMismatchError, ProjectionFormatError, DirtyTreeError]
    try:
        from xtalign.distill.errors import BadInputError

        found.append(BadInputError)
    except ImportError:
        pass
    try:
        from xtalign.chat import ChatError

        found.append(ChatError)
    except ImportError:
        pass
    return tuple(found)


def exit_code(exc: BaseException) -> int | None:
    """The exit code of a known error type (None: not one the CLI knows)."""
    try:
        from xtalign.distill.errors import WorkerDiedError

        if isinstance(exc, WorkerDiedError):
            return EXIT_FAILURE
    except ImportError:
        pass
    return EXIT_USAGE if isinstance(exc, _usage_types()) else None


class usage_errors:
    """Known errors raised inside a verb → `CLIError` with their exit code (see `exit_code`); anything else
    goes on to `xtalign.cli.main` (one line, exit 1)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        if exc is None or isinstance(exc, CLIError):
            return False
        code = exit_code(exc)
        if code is None:
            return False
        raise CLIError(str(exc), code) from None
