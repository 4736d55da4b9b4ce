"""Training text for `xtalign distill`: read documents, split off held-out documents, pack into samples.

Reading: plain text (documents = paragraphs split on blank lines, lines, or the whole file), JSONL (one
object per line, `field` names the text; one record = one document), parquet (`field` = column; one
row = one document), or `botchan`, the public-domain novel from a pinned artifact (it has no blank
lines, so in `paragraph` mode its documents are its chapters, with the front matter and the licence
as two more).

Every document has a source (JSONL/parquet: the `source_field` key or column, else the file's name;
plain text and `botchan`: the file's name), and packing never mixes sources, so bits per byte can be
reported per source.

Packing: the documents of a split, source by source (in order of first appearance) and in order within a
source, joined by a blank line ("\\n\\n"), are cut into samples of about `pack_chars` characters (at the
last whitespace in the final eighth of each window, else at the window's end), so a long document spans
several samples and short ones share a sample. The held-out split is by document (chosen from the seed)
and packed separately, so no held-out text is trained on. `data_hash` covers every packed sample, its
source and the packing settings: a teacher cache can refuse other data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xtalign.distill.config import DataConfig
from xtalign.distill.errors import DataError

__all__ = ["BOTCHAN", "Corpus", "DataError", "Document", "load_corpus", "pack_documents", "pack_sources",
           "read_documents", "read_sourced_documents", "split_documents"]

log = logging.getLogger(__name__)

BOTCHAN = "botchan"
_BOTCHAN_MEMBER = ("sentencepiece-src", "sentencepiece-0.2.3/test/botchan.txt")
_SUFFIXES = {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}
_HASH_FORMAT = "xtalign-data/2"


@dataclass(frozen=True)
class Document:
    """One document's text and the source it came from."""

    text: str
    source: str


@dataclass(frozen=True, eq=False)
class Corpus:
    """Packed samples. Train sample ``i`` has sample id ``i``; held-out sample ``j`` has id ``len(train) + j``.
    `train_sources` / `heldout_sources` name each sample's source."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    data_hash: str
    description: str
    train_sources: tuple[str, ...] = ()
    heldout_sources: tuple[str, ...] = ()

    def heldout_source(self, j: int) -> str:
        return self.heldout_sources[j] if self.heldout_sources else "data"


# --- reading ---------------------------------------------------------------------------------------


def _decode(path: Path, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 at byte offset {exc.start} ({exc.reason}); "
                        "convert the file to UTF-8") from None
    return text.removeprefix("\ufeff")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist (or is not a file); check data.train / data.heldout")
    return path.read_bytes()


def _split_text(text: str, documents: str) -> list[str]:
    """Plain text (CRLF read as LF) -> documents (blank ones dropped)."""
    text = text.replace("\r\n", "\n")
    if documents == "paragraph":
        parts = re.split(r"\n(?:[ \t\f\v]*\n)+", text)
    elif documents == "line":
        parts = text.split("\n")
    else:
        parts = [text]
    return [p.strip("\n") for p in parts if p.strip()]


def _botchan_documents(documents: str) -> list[str]:
    """The embedded corpus; `paragraph` mode splits it before each chapter heading and the end marker."""
    from xtalign.zoo.artifacts import member_path

    path = member_path(*_BOTCHAN_MEMBER)
    text = _decode(path, path.read_bytes()).replace("\r\n", "\n")
    if documents != "paragraph":
        return _split_text(text, documents)
    parts = re.split(r"\n(?=CHAPTER [IVX]+\.?\n|\*\*\* END OF THIS PROJECT GUTENBERG)", text)
    return [p.strip("\n") for p in parts if p.strip()]


def _jsonl_documents(path: Path, field: str, source_field: str) -> list[Document]:
    """One document per non-blank line: the string under `field` of the line's JSON object (its source:
    the string under `source_field`, else the file's name)."""
    docs = []
    for lineno, line in enumerate(_decode(path, _read_bytes(path)).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}); give one JSON object per line") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{lineno}: a JSON {type(record).__name__}, not an object; "
                            f"give one object per line with a {field!r} string")
        if field not in record:
            keys = ", ".join(map(repr, record)) or "none"
            raise DataError(f"{path}:{lineno}: no key {field!r} (keys: {keys}); set data.field to the text's key")
        value = record[field]
        if not isinstance(value, str):
            raise DataError(f"{path}:{lineno}: {field!r} is a {type(value).__name__}, not a string; "
                            "set data.field to a text key")
        if value.strip():
            docs.append(Document(value, str(record.get(source_field) or path.name)))
    return docs


def _parquet_documents(path: Path, field: str, source_field: str) -> list[Document]:
    """One document per row of column `field` (a string column; nulls are refused)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        _read_bytes(path)
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    if field not in schema.names:
        raise DataError(f"{path}: no column {field!r} (columns: {', '.join(schema.names)}); set data.field")
    column = pq.read_table(path, columns=[field]).column(field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{path}: column {field!r} holds {column.type}, not strings; set data.field to a text column")
    values = column.to_pylist()
    for row, value in enumerate(values):
        if value is None:
            raise DataError(f"{path}: row {row} of column {field!r} is null; drop or fill the empty rows")
    sources = (pq.read_table(path, columns=[source_field]).column(source_field).to_pylist()
               if source_field in schema.names else [None] * len(values))
    return [Document(v, str(src or path.name)) for v, src in zip(values, sources, strict=True) if v.strip()]


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                        "set data.format to text, jsonl or parquet")
    return kind


def read_sourced_documents(source: str, *, fmt: str = "auto", field: str = "text", source_field: str = "source",
                           documents: str = "paragraph") -> list[Document]:
    """The non-blank documents of `botchan` or a path, in file order, each with its source name."""
    if source == BOTCHAN:
        docs = [Document(d, BOTCHAN) for d in _botchan_documents(documents)]
    else:
        path = Path(source).expanduser()
        kind = _format_of(path, fmt)
        if kind == "jsonl":
            docs = _jsonl_documents(path, field, source_field)
        elif kind == "parquet":
            docs = _parquet_documents(path, field, source_field)
        else:
            docs = [Document(d, path.name) for d in _split_text(_decode(path, _read_bytes(path)), documents)]
    if not docs:
        raise DataError(f"{source}: the corpus is empty (no non-blank document); give a file with text in it")
    return docs


def read_documents(source: str, *, fmt: str = "auto", field: str = "text", documents: str = "paragraph") -> list[str]:
    """The non-blank documents' texts of one source (`botchan` or a path), in file order."""
    return [d.text for d in read_sourced_documents(source, fmt=fmt, field=field, documents=documents)]


# --- split, packing, hash --------------------------------------------------------------------------


def split_documents(n_docs: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) document indices, each sorted: round(fraction·n) held out, at least 1 each side."""
    if n_docs < 2:
        raise DataError(f"the corpus has {n_docs} document, so none can be held out; give data.heldout "
                        "or split it finer (data.documents: line)")
    k = min(max(1, round(n_docs * fraction)), n_docs - 1)
    rng = np.random.default_rng([abs(int(seed)), 0x5EED])
    held = np.zeros(n_docs, dtype=bool)
    held[rng.permutation(n_docs)[:k]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def pack_documents(docs: Sequence[str], pack_chars: int) -> list[str]:
    """Documents joined by "\\n\\n", cut into samples of at most `pack_chars` characters (see module docstring).

    The samples concatenate back to the joined text, less a whitespace-only tail.
    """
    stream = "\n\n".join(docs)
    samples, pos, n = [], 0, len(stream)
    slack = pack_chars // 8
    while pos < n:
        end = pos + pack_chars
        if end < n:
            cut = max(stream.rfind(" ", end - slack, end), stream.rfind("\n", end - slack, end))
            end = cut + 1 if cut > pos else end
        sample = stream[pos:end]
        if sample.strip():
            samples.append(sample)
        pos = end
    return samples


def pack_sources(docs: Sequence[Document], pack_chars: int) -> tuple[list[str], list[str]]:
    """(samples, their sources): each source's documents packed on their own, sources in order of first use."""
    samples: list[str] = []
    sources: list[str] = []
    for name in dict.fromkeys(d.source for d in docs):
        packed = pack_documents([d.text for d in docs if d.source == name], pack_chars)
        samples += packed
        sources += [name] * len(packed)
    return samples, sources


def data_hash(train: Sequence[str], heldout: Sequence[str], pack_chars: int,
              sources: Sequence[str] | None = None) -> str:
    """sha256 over the packing settings, every packed sample (length-prefixed, train then held-out) and the
    samples' sources."""
    h = hashlib.sha256()
    head = {"format": _HASH_FORMAT, "pack_chars": pack_chars, "n_train": len(train), "n_heldout": len(heldout)}
    h.update(json.dumps(head, sort_keys=True).encode("utf-8"))
    for sample in (*train, *heldout):
        data = sample.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    h.update(json.dumps(list(sources or [])).encode("utf-8"))
    return h.hexdigest()


def _read(cfg: DataConfig, source: str) -> list[Document]:
    return read_sourced_documents(source, fmt=cfg.format, field=cfg.field, source_field=cfg.source_field,
                                  documents=cfg.documents)


def load_corpus(cfg: DataConfig, *, seed: int) -> Corpus:
    """Read, split (by document) and pack the configured training data; deterministic for a seed."""
    docs = _read(cfg, cfg.train)
    if cfg.heldout is not None:
        train_docs, held_docs = docs, _read(cfg, cfg.heldout)
        how = f"held-out file {cfg.heldout}"
    else:
        train_idx, held_idx = split_documents(len(docs), cfg.heldout_fraction, seed)
        train_docs, held_docs = [docs[i] for i in train_idx], [docs[i] for i in held_idx]
        how = f"{len(held_docs)} of {len(docs)} documents held out (seed {seed})"
    train, train_src = pack_sources(train_docs, cfg.pack_chars)
    heldout, held_src = pack_sources(held_docs, cfg.pack_chars)
    description = (f"{cfg.train}: {len(train_docs)} training documents -> {len(train)} samples of <= "
                   f"{cfg.pack_chars} characters; {how} -> {len(heldout)} held-out samples")
    log.info("data: %s", description)
    return Corpus(train=tuple(train), heldout=tuple(heldout), description=description,
                  data_hash=data_hash(train, heldout, cfg.pack_chars, train_src + held_src),
                  train_sources=tuple(train_src), heldout_sources=tuple(held_src))
