"""Naming a model before loading it: its tokenizer, and a cheap identity of its weights (for cache keys)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xtalign.distill.models.zoo import zoo_entry
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["model_identity", "tokenizer_name"]


def tokenizer_name(model: str, tokenizer: str | None) -> str:
    """The tokenizer a model uses: the one given, a zoo model's own, else the model path/id itself."""
    if tokenizer:
        return tokenizer
    entry = zoo_entry(model)
    return entry.tokenizer if entry is not None else model


def model_identity(model: str, tokenizer: Tokenizer, arch: Any, seed: int) -> str:
    """A string naming a model's weights before loading it (for the teacher-cache key)."""
    if model == "random":
        spec = json.dumps({"arch": asdict(arch), "vocab": tokenizer.vocab.fingerprint, "seed": seed}, sort_keys=True)
        return "random:" + hashlib.sha256(spec.encode()).hexdigest()
    entry = zoo_entry(model)
    if entry is not None:
        from xtalign.zoo.artifacts import ARTIFACTS

        return f"zoo:{entry.name}:{entry.sha256 or ARTIFACTS[entry.artifacts[0]].sha256}"
    path = Path(model)
    if path.is_file():
        st = path.stat()
        return f"file:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    if path.is_dir():
        parts = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        return "dir:" + hashlib.sha256(json.dumps([str(path.resolve()), parts]).encode()).hexdigest()
    return f"hub:{model}"
