"""Projection files (safetensors round trip, fingerprints, npz, NeMo .pt) and the build-projection CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xtalign.io import (
    FORMAT_NAME,
    ProjectionFormatError,
    ProjectionMismatchError,
    export_npz,
    import_nemo_pt,
    load_projection,
    read_metadata,
    save_projection,
)
from xtalign.projection import ProjectionConfig, RowSource, build_projection
from xtalign.vocab import TokenKind, make_vocab
from xtalign.zoo.tokenizer import GreedyTrieBackend, Tokenizer

N, S = TokenKind.NORMAL, TokenKind.SPECIAL


def tiny(name: str, tokens: list[bytes], *, model_rows: int | None = None) -> Tokenizer:
    tb = [b""] + tokens
    vocab = make_vocab(name, tb, [S] + [N] * len(tokens), ["</s>"] + [t.decode() for t in tokens], {"eos": 0})
    return Tokenizer(name=name, family="test", source="test", vocab=vocab,
                     backend_factory=lambda: GreedyTrieBackend(vocab.bytes_to_id), model_rows=model_rows)


@pytest.fixture(scope="module")
def pair() -> tuple[Tokenizer, Tokenizer]:
    student = tiny("s", [b"a", b"b", b"c", b"abc", b"ab"])
    teacher = tiny("t", [b"a", b"b", b"c", b"bc"], model_rows=8)
    return student, teacher


@pytest.fixture(scope="module")
def proj(pair):
    return build_projection(*pair, ProjectionConfig(top_k=3))


def test_round_trip(proj, pair, tmp_path) -> None:
    path = save_projection(proj, tmp_path / "sub" / "w.safetensors")
    back = load_projection(path, student=pair[0], teacher=pair[1])
    for key in ("indices", "weights", "row_source"):
        assert np.array_equal(getattr(back, key), getattr(proj, key))
        assert getattr(back, key).dtype == getattr(proj, key).dtype
    assert back.shape == proj.shape == (6, 8)  # teacher columns cover its 8 model rows
    assert back.config == proj.config and back.stats == proj.stats and back.is_exact.tolist() == proj.is_exact.tolist()
    assert (back.student_name, back.teacher_name, back.teacher_model_rows) == ("s", "t", 8)
    meta = read_metadata(path)
    assert meta["format"] == FORMAT_NAME and meta["format_version"] == "1" and meta["top_k"] == "3"
    assert meta["student_fingerprint"] == pair[0].vocab.fingerprint and meta["teacher_vocab_size"] == "5"
    assert meta["teacher_model_rows"] == "8" and "student_model_rows" not in meta
    assert json.loads(meta["config"])["top_k"] == 3 and "exact_share" in json.loads(meta["stats"])
    assert all(isinstance(v, str) for v in meta.values())
    assert not list(tmp_path.glob("sub/.*.tmp"))  # the atomic write left nothing behind


def test_fingerprint_mismatch_is_refused(proj, pair, tmp_path) -> None:
    path = save_projection(proj, tmp_path / "w.safetensors")
    other = tiny("s", [b"a", b"b", b"c", b"abc", b"abd"])
    with pytest.raises(ProjectionMismatchError, match=r"student vocabulary mismatch: the projection expects s"):
        load_projection(path, student=other, teacher=pair[1])
    with pytest.raises(ProjectionMismatchError, match="teacher"):
        load_projection(path, teacher=pair[0].vocab)  # a Vocab is accepted as well


def test_foreign_files_are_refused(proj, tmp_path) -> None:
    from safetensors.numpy import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(2, dtype=np.float32)}, str(plain), metadata={"format": "pt"})
    with pytest.raises(ProjectionFormatError, match="not 'xtalign-projection'"):
        load_projection(plain)
    future = tmp_path / "future.safetensors"
    save_file({"x": np.zeros(2, dtype=np.float32)}, str(future),
              metadata={"format": FORMAT_NAME, "format_version": "99"})
    with pytest.raises(ProjectionFormatError, match="version '99'"):
        load_projection(future)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ProjectionFormatError):
        read_metadata(junk)


def test_npz_export(proj, tmp_path) -> None:
    path = export_npz(proj, tmp_path / "w.npz")
    m = sp.load_npz(path)  # numpy's allow_pickle=False inside: no pickle in the file
    assert m.shape == proj.shape and m.dtype == np.float32
    assert (m != proj.to_scipy()).nnz == 0
    assert np.allclose(np.asarray(m.sum(axis=1)).ravel()[1:], 1.0)
    with np.load(path, allow_pickle=False) as z:
        assert set(z.files) >= {"data", "indices", "indptr", "shape"}


def test_nemo_pt_import(pair, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "nemo.pt"
    torch.save({"indices": torch.tensor([[-1, -1], [3, -1], [1, 2], [2, 0]]),
                "likelihoods": torch.tensor([[-1.0, -1.0], [1.0, -1.0], [0.3, 0.6], [0.5, 0.5]])}, path)
    proj = import_nemo_pt(path, student_name="nemo-s", teacher_vocab_size=5)
    assert proj.shape == (4, 5) and proj.student_name == "nemo-s"
    assert proj.row(0) == [] and proj.row(1) == [(3, 1.0)]
    assert [(t, round(w, 6)) for t, w in proj.row(2)] == [(2, 0.666667), (1, 0.333333)]  # renormalised, sorted
    assert proj.row(3) == [(0, 0.5), (2, 0.5)]  # ties: lower teacher id first
    assert proj.row_source.tolist() == [RowSource.EMPTY, RowSource.EXACT, RowSource.IMPORTED, RowSource.IMPORTED]
    assert proj.indices.min() >= 0  # no −1 sentinels survive
    out = save_projection(proj, tmp_path / "nemo.safetensors")
    assert load_projection(out).row(2) == proj.row(2)
    with_toks = import_nemo_pt(path, student=pair[0], teacher=pair[1])
    assert with_toks.teacher_cols == 8 and with_toks.teacher_fingerprint == pair[1].vocab.fingerprint
    torch.save({"weights": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(ProjectionFormatError, match="'indices' and 'likelihoods'"):
        import_nemo_pt(tmp_path / "bad.pt")


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_build_refuse_and_overwrite(tmp_path, capsys) -> None:
    from xtalign.cli.main import main

    out = tmp_path / "p.safetensors"
    args = ["build-projection", "--student", "phi3", "--teacher", "mistral-v1", "--top-k", "3", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "projection phi3 -> mistral-v1" in text and f"wrote {out}" in text
    proj = load_projection(out)
    assert proj.top_k == 3 and proj.config["top_k"] == 3 and proj.student_name == "phi3"
    mtime = out.stat().st_mtime_ns
    assert main(args) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == mtime
    assert main([*args, "--overwrite", "--no-reverse"]) == 0
    assert load_projection(out).config["reverse"] is False


def test_cli_dry_run_and_bad_flags(tmp_path, capsys, monkeypatch) -> None:
    from xtalign.cli.main import main

    monkeypatch.chdir(tmp_path)
    assert main(["build-projection", "--student", "llama-3", "--teacher", "qwen3", "--decay", "0.8,0.2",
                 "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["out"] == "out/projections/llama3__qwen3.safetensors"  # aliases resolve to zoo names
    assert cfg["projection"] == {"top_k": 4, "max_pieces": 4, "beta": 0.8, "gamma": 0.2, "reverse": True,
                                 "special_fuzzy_threshold": 85.0}
    assert not (tmp_path / "out").exists()
    assert main(["build-projection", "--student", "a", "--teacher", "b", "--decay", "0.9"]) == 2
    assert "--decay" in capsys.readouterr().err
    assert main(["build-projection", "--student", "a", "--teacher", "b", "--top-k", "0"]) == 2
    assert "top_k" in capsys.readouterr().err
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    assert main(["inspect", str(tmp_path / "x.safetensors")]) == 2
    assert main(["inspect", str(tmp_path / "missing.safetensors")]) == 2


def test_cli_nemo_import_and_npz_export(tmp_path, capsys) -> None:
    torch = pytest.importorskip("torch")
    from xtalign.cli.main import main
    from xtalign.zoo import load_tokenizer

    built = build_projection(load_tokenizer("phi3"), load_tokenizer("mistral-v1"), ProjectionConfig(top_k=2))
    idx = np.where(built.weights > 0, built.indices, -1)
    torch.save({"indices": torch.from_numpy(idx.astype(np.int64)), "likelihoods": torch.from_numpy(built.weights)},
               tmp_path / "nemo.pt")
    out = tmp_path / "imported.safetensors"
    assert main(["build-projection", "--student", "phi3", "--teacher", "mistral-v1", "--from-nemo",
                 str(tmp_path / "nemo.pt"), "--out", str(out)]) == 0
    capsys.readouterr()
    imported = load_projection(out, student=load_tokenizer("phi3"), teacher=load_tokenizer("mistral-v1"))
    assert np.array_equal(imported.indices, built.indices) and np.allclose(imported.weights, built.weights)
    npz = tmp_path / "w.npz"
    assert main(["inspect", str(out), "--export-npz", str(npz)]) == 0
    assert f"wrote {npz}" in capsys.readouterr().out
    assert sp.load_npz(npz).shape == imported.shape
    assert main(["inspect", str(out), "--export-npz", str(npz)]) == 2  # refuses to overwrite
    assert main(["build-projection", "--student", "phi3", "--teacher", "mistral-v1", "--from-nemo",
                 str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.safetensors")]) == 2


def test_cli_from_nemo_summary_counts_normal_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """gpt2 onto itself as NeMo writes it: 50,256 normal tokens exact (the special row is not one of them),
    and no empty 'rows' line when every row is exact."""
    import torch

    from xtalign.cli.main import main

    n = 50257
    torch.save({"indices": torch.arange(n)[:, None], "likelihoods": torch.ones(n, 1)}, tmp_path / "nemo.pt")
    out = tmp_path / "w.safetensors"
    assert main(["build-projection", "--student", "gpt2", "--teacher", "gpt2", "--from-nemo",
                 str(tmp_path / "nemo.pt"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "exact      50,256 of 50,256 normal student tokens (100.00%)" in text
    assert "  rows " not in text
