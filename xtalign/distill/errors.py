"""The engine's error types, importable without torch or Ray, so the CLI maps them to exit codes by type.

`BadInputError` (and `xtalign.config.ConfigError`): what the user gave cannot be used — exit 2 with one
line saying what and what to do. `WorkerDiedError`: a teacher or student worker died mid-run — exit 1
with one line naming it and how to resume.
"""

from __future__ import annotations

from xtalign.config import ConfigError
from xtalign.zoo.hf_export import TokenizerExportError

__all__ = ["BadInputError", "CacheError", "CacheMismatchError", "CheckpointError", "ConfigError", "DataError",
           "ExportError", "ModelError", "PlacementError", "WorkerDiedError"]


class BadInputError(ValueError):
    """Input the engine cannot use; the message is one line saying what and what to do."""


class DataError(BadInputError):
    """Training data that cannot be used."""


class ModelError(BadInputError):
    """A model could not be resolved or does not fit its tokenizer."""


class CacheError(BadInputError):
    """The directory is not a readable teacher cache (no manifest, garbled, missing shard, other format)."""


class CacheMismatchError(CacheError):
    """The cache was made for another teacher, tokenizer or data than this run's."""


class CheckpointError(BadInputError):
    """No usable checkpoint where one was asked for, or state that a checkpoint cannot hold."""


class ExportError(BadInputError, TokenizerExportError):
    """The export target or the exported folder is unusable."""


class PlacementError(ConfigError):
    """The Ray cluster cannot hold what the run asks for; the message says what is missing."""


class WorkerDiedError(RuntimeError):
    """A teacher actor or student rank died mid-run; the message names it and where to resume."""
