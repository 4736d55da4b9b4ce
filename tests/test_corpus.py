"""analysis/corpus.py: normalisation, near-duplicate removal, the seeded split, licence checks, determinism,
and (slow) the real pinned corpus with its sha256."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PINNED_SHA256 = "b7e362ea81c5c0172806876eb5b60512fcaa2461731166b242cd94a99ba9a916"


corpus = load_script("analysis/corpus.py", "corpus_script")


def _tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _doc(doc_id: str, text: str, source: str = "s") -> object:
    return corpus.Document(doc_id, source, doc_id, text)


LONG = "The quick brown fox jumps over the lazy dog near the river bank."  # 64 chars > MIN_DEDUP_CHARS


def test_normalise_text() -> None:
    assert corpus.normalise_text("\ufeffa  \r\nb\r\n\r\n\r\n\r\nc \n\n") == "a\nb\n\nc"


def test_near_key_ignores_case_digits_punctuation_and_spacing() -> None:
    assert corpus.near_key("Release 8.3.1 -- FIXED,  the   bug!") == corpus.near_key("release 9.0.2: fixed the bug")
    assert corpus.near_key("Ａｂｃ") == "abc"  # NFKC
    assert corpus.near_key("a cat") != corpus.near_key("a cap")


def test_dedup_drops_exact_and_near_exact_paragraphs_keeps_short_ones() -> None:
    docs = [_doc("a", f"{LONG}\n\nShort.\n\nUnique one in a."),
            _doc("b", f"{LONG.upper()}\n\nShort.\n\nthe quick brown fox jumps over the lazy dog, near the river bank"),
            _doc("c", LONG)]
    kept, stats = corpus.dedup(docs)
    assert [d.doc_id for d in kept] == ["a", "b"]  # c became empty and is dropped
    assert kept[1].text == "Short."  # both near-duplicates of LONG gone, the short paragraph kept
    assert (stats.paragraphs, stats.dropped, stats.empty_documents) == (7, 3, ["c"])


def test_split_is_per_source_seeded_and_deterministic() -> None:
    docs = [_doc(f"x{i}", f"text {i}", "x") for i in range(40)] + [_doc(f"y{i}", f"y {i}", "y") for i in range(3)]
    train, held = corpus.split_heldout(docs, 0.05, seed=0)
    assert [d.source for d in held].count("x") == 2 and [d.source for d in held].count("y") == 1
    assert len(train) + len(held) == len(docs) and not {d.doc_id for d in train} & {d.doc_id for d in held}
    again = corpus.split_heldout(docs, 0.05, seed=0)[1]
    other = corpus.split_heldout(docs, 0.05, seed=1)[1]
    assert [d.doc_id for d in again] == [d.doc_id for d in held]
    assert [d.doc_id for d in other] != [d.doc_id for d in held]
    with pytest.raises(corpus.CorpusError, match="at least 2"):
        corpus.split_heldout([_doc("z", "t", "z")], 0.05, seed=0)


def test_botchan_documents_drop_gutenberg_header_and_licence() -> None:
    text = ("Project Gutenberg's Botchan\n*** START OF THIS PROJECT GUTENBERG EBOOK BOTCHAN ***\nProduced by X\n"
            "A NOTE BY THE TRANSLATOR\nNote.\nCHAPTER I\nOne.\nCHAPTER II.\nTwo.\n"
            "*** END OF THIS PROJECT GUTENBERG EBOOK BOTCHAN ***\nLicence text")
    got = corpus.botchan_documents(text)
    assert got == [("note", "A NOTE BY THE TRANSLATOR\nNote."), ("chapter-i", "CHAPTER I\nOne."),
                   ("chapter-ii", "CHAPTER II.\nTwo.")]


def _fake_sources(tmp_path: Path) -> tuple[tuple, dict[str, Path]]:
    files = {"p-1/LICENSE": "The MIT License (MIT)\n", "p-1/doc/skip.py": "x = 1\n"}
    files |= {f"p-1/doc/d{i}.rst": f"Doc {i}\n\nParagraph number {i} is about topic {chr(97 + i)} here.\n\n{LONG}"
              for i in range(6)}
    pd = {"q-1/COPYING": "all public domain\n", "q-1/docs/a.txt": "Alpha. This file is placed in the public domain.",
          "q-1/docs/b.txt": "Beta: no statement", "q-1/docs/c.txt": "Gamma.\n\nplaced in the\npublic domain"}
    archives = {"fake-a": _tar(tmp_path / "a.tar.gz", files), "fake-b": _tar(tmp_path / "b.tar.gz", pd)}
    sources = (corpus.Source(name="a", artifact="fake-a", licence="MIT", licence_file="p-1/LICENSE",
                             licence_phrase="MIT License", include=("p-1/doc/*.rst",)),
               corpus.Source(name="b", artifact="fake-b", licence="public domain", licence_file="q-1/COPYING",
                             licence_phrase="public domain", include=("q-1/docs/*",),
                             file_phrase="placed in the public domain"))
    return sources, archives


def test_build_is_deterministic_and_lists_every_file(tmp_path: Path) -> None:
    sources, archives = _fake_sources(tmp_path)
    train, held, manifest = corpus.build(sources, seed=0, fraction=0.2, archive_of=archives.__getitem__)
    assert (train, held) == corpus.build(sources, seed=0, fraction=0.2, archive_of=archives.__getitem__)[:2]
    rows = [json.loads(line) for line in (train + held).decode().splitlines()]
    assert sorted(r["id"] for r in rows) == [*(f"a:doc/d{i}.rst" for i in range(6)), "b:docs/a.txt", "b:docs/c.txt"]
    assert sum(LONG in r["text"] for r in rows) == 1  # the shared paragraph survives once
    assert manifest["heldout"]["documents"] == 2 and manifest["train"]["documents"] == 6
    used = {f["member"]: f["used"] for f in manifest["files"]}
    assert used == {**{f"p-1/doc/d{i}.rst": True for i in range(6)}, "q-1/docs/a.txt": True,
                    "q-1/docs/b.txt": False, "q-1/docs/c.txt": True}
    assert all(f["licence"] in ("MIT", "public domain") and f["bytes"] > 0 for f in manifest["files"])
    out = tmp_path / "out"
    corpus.write(out, train, held, manifest)
    from xtalign.distill.data.corpus import read_documents

    assert len(read_documents(str(out / "train.jsonl"))) == 6


def test_wrong_licence_stops_the_build(tmp_path: Path) -> None:
    sources, archives = _fake_sources(tmp_path)
    bad = (corpus.Source(**{**sources[0].__dict__, "licence_phrase": "Apache License"}),)
    with pytest.raises(corpus.CorpusError, match="Apache License"):
        corpus.build(bad, archive_of=archives.__getitem__)


@pytest.mark.slow
def test_real_corpus_is_pinned(tmp_path: Path) -> None:
    """Downloads three small sdists (≈ 12 MB, cached) the first time; the sha256 is pinned."""
    train, held, manifest = corpus.build()
    assert manifest["text_bytes"] >= 2_000_000
    assert {s["name"] for s in manifest["sources"]} == {"botchan", "docutils", "sphinx", "pytest"}
    assert all(s["heldout_documents"] >= 1 for s in manifest["sources"])
    assert manifest["heldout"]["ids"][0] == "botchan:chapter-ix"
    assert manifest["sha256"] == PINNED_SHA256
