"""Artifact cache: sha256 checks, corrupt entries re-fetched, failures explained, nothing half-written."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from xtalign.zoo import artifacts
from xtalign.zoo.artifacts import Artifact, ArtifactError


def _fake_wheel(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("pkg/data.txt", "hello")
    return path.read_bytes()


@pytest.fixture()
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A cache in tmp_path and one fake artifact whose 'pip download' we control."""
    src = tmp_path / "src"
    src.mkdir()
    data = _fake_wheel(src / "fake-1.0-py3-none-any.whl")
    art = Artifact(key="fake", spec="fake==1.0", filename="fake-1.0-py3-none-any.whl",
                   sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setenv("XTALIGN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(artifacts.ARTIFACTS, "fake", art)
    calls = []

    def download(a: Artifact, dest: Path) -> Path:
        calls.append(a.key)
        (dest / a.filename).write_bytes((src / a.filename).read_bytes())
        return dest / a.filename

    monkeypatch.setattr(artifacts, "_pip_download", download)
    return art, src, calls


def test_fetch_once_then_cached(fake) -> None:
    art, _, calls = fake
    p = artifacts.member_path("fake", "pkg/data.txt")
    assert p.read_text() == "hello"
    artifacts.member_path("fake", "pkg/data.txt")
    assert calls == ["fake"]


def test_corrupt_cache_entry_is_fetched_again(fake) -> None:
    art, _, calls = fake
    path = artifacts.artifact_path("fake")
    path.write_bytes(b"garbage")
    assert artifacts.artifact_path("fake").read_bytes() != b"garbage"
    assert calls == ["fake", "fake"]


def test_corrupt_member_is_extracted_again(fake) -> None:
    p = artifacts.member_path("fake", "pkg/data.txt")
    p.write_text("tampered")
    assert artifacts.member_path("fake", "pkg/data.txt").read_text() == "hello"


def test_sha_mismatch_names_the_artifact_and_leaves_nothing(fake, monkeypatch: pytest.MonkeyPatch) -> None:
    art, _, _ = fake
    monkeypatch.setitem(artifacts.ARTIFACTS, "fake", Artifact(key="fake", spec=art.spec, filename=art.filename,
                                                              sha256="0" * 64))
    with pytest.raises(ArtifactError, match="fake==1.0.*sha256"):
        artifacts.artifact_path("fake")
    cache = artifacts.cache_dir() / "artifacts"
    assert not any(p.name.endswith(".whl") for p in cache.rglob("*"))


def test_failed_fetch_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XTALIGN_CACHE", str(tmp_path))
    monkeypatch.setitem(artifacts.ARTIFACTS, "nope", Artifact(key="nope", spec="xtalign-no-such-package-zz==0.0.1",
                                                              filename="x.whl", sha256="0" * 64))
    monkeypatch.setattr(artifacts, "_pip_download", lambda a, d: (_ for _ in ()).throw(
        ArtifactError(f"could not fetch {a.spec} ({a.filename}): pip said: no such version. Check that PyPI is "
                      "reachable")))
    with pytest.raises(ArtifactError, match="could not fetch xtalign-no-such-package-zz"):
        artifacts.artifact_path("nope")


def test_missing_member_is_a_clear_error(fake) -> None:
    with pytest.raises(ArtifactError, match="no member 'pkg/missing.txt'"):
        artifacts.member_path("fake", "pkg/missing.txt")
