"""Data-path throughput (tokenize both sides + truncate by text + align + collate), per slice of real text.

    .venv/bin/python analysis/corpus.py                  # once: writes out/corpus/{train,heldout}.jsonl
    .venv/bin/python benchmarks/bench_data.py            # llama3 x qwen3, seq 2,048, 5 repeats, 1 and 2 workers
    .venv/bin/python benchmarks/bench_data.py --smoke --out /tmp/data.json --allow-dirty

Slices (each read offline from pinned files; where each comes from and its licence go into the JSON):

- `corpus`: the pinned corpus's training split, out/corpus/train.jsonl (analysis/corpus.py: Botchan,
  docutils, Sphinx and pytest documentation; its manifest's sha256 is recorded and train.jsonl is checked
  against it), packed per source like a run packs it.
- `code`: the Python source of Sphinx, every `sphinx-8.1.3/sphinx/**/*.py` of the pinned sphinx==8.1.3
  sdist (BSD-2-Clause), one document per file in archive order, exact duplicate files dropped.
- `cjk`: the Japanese, Korean, Simplified and Traditional Chinese translations of Sphinx's messages
  (`msgstr` of sphinx/locale/{ja,ko,zh_CN,zh_TW}/LC_MESSAGES/sphinx.po in the same sdist, BSD-2-Clause
  like Sphinx), one document per language, a message per line. Short UI strings with %s placeholders,
  not prose; 70 k characters (~40 k tokens) in all, so an epoch is only a few batches long.

Each slice has its own `pack_chars` (about `seq_len` student tokens per sample at that slice's characters
per token, so the cut at seq_len discards little; the kept share of bytes is reported). A run builds one
epoch, every sample once, through a fresh `BatchBuilder` (empty tokenization cache) and `DataPipeline`;
no packed sample repeats (checked: distinct texts = samples, distinct sample ids = samples seen).
Repeats alternate the worker counts and slices; reported per slice and worker count: median, IQR, min
and max of student tokens/s (kept tokens / wall seconds) over the repeats, and per CPU-second.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import begin, parser, spread, write_results  # noqa: E402
from xtalign.distill.data.builder import BatchBuilder  # noqa: E402
from xtalign.distill.data.corpus import Corpus, Document, data_hash, pack_sources, read_sourced_documents  # noqa: E402
from xtalign.distill.data.pipeline import DataPipeline  # noqa: E402
from xtalign.zoo import load_tokenizer  # noqa: E402
from xtalign.zoo.artifacts import ARTIFACTS, artifact_path  # noqa: E402
from xtalign.zoo.tokenizer import Tokenizer  # noqa: E402

SPHINX = "sphinx-8.1.3"
SPHINX_LICENCE = f"{SPHINX}/LICENSE.rst"
SPHINX_LICENCE_PHRASE = "licenced under the\ntwo clause BSD licence"
PO_LICENCE_PHRASE = "distributed under the same license as the Sphinx project"
CJK_LOCALES = ("ja", "ko", "zh_CN", "zh_TW")
PACK_CHARS = {"corpus": 10240, "code": 10240, "cjk": 3584}  # ~1.1 x seq_len x chars per llama3 token (4.5, 4.5, 1.75)
TARGET_TOKENS_PER_S = 1e6


class SliceError(RuntimeError):
    """A slice's text is missing or not what was pinned; the message says how to make it."""


@dataclass
class Slice:
    """One slice of text: its documents and where they come from."""

    name: str
    documents: list[Document]
    origin: dict[str, Any]
    pack_chars: int = 0
    corpus: Corpus | None = field(default=None, repr=False)


# --- the slices ------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_slice(corpus_dir: Path) -> Slice:
    """The pinned corpus's training split (checked against its manifest)."""
    train, manifest = corpus_dir / "train.jsonl", corpus_dir / "manifest.json"
    if not train.is_file() or not manifest.is_file():
        raise SliceError(f"{corpus_dir} has no train.jsonl + manifest.json; make the pinned corpus first with "
                         "`.venv/bin/python analysis/corpus.py` (or pass --corpus-dir, or leave the slice out with "
                         "--slices code cjk)")
    meta = json.loads(manifest.read_text())
    if _sha256(train) != meta["train"]["sha256"]:
        raise SliceError(f"{train} does not match its manifest's sha256; rebuild it with "
                         "`.venv/bin/python analysis/corpus.py --overwrite`")
    origin = {"what": "the pinned corpus's training split (analysis/corpus.py)", "file": str(_rel(train)),
              "corpus_sha256": meta["sha256"], "train_sha256": meta["train"]["sha256"],
              "sources": [{k: s[k] for k in ("name", "spec", "licence")} for s in meta["sources"]]}
    return Slice("corpus", read_sourced_documents(str(train)), origin)


def _rel(path: Path) -> Path:
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


def _sphinx_members(want: Any) -> list[tuple[str, bytes]]:
    """(name, bytes) of the pinned sphinx sdist's files that `want(name)` accepts, in archive order; the sdist's
    own licence file must state the licence the JSON names."""
    with tarfile.open(artifact_path("sphinx-src")) as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf  # type: ignore[union-attr]
                 if m.isfile() and (want(m.name) or m.name == SPHINX_LICENCE)}
    if SPHINX_LICENCE_PHRASE not in files.pop(SPHINX_LICENCE, b"").decode("utf-8"):
        raise SliceError(f"{SPHINX_LICENCE} no longer says {SPHINX_LICENCE_PHRASE!r}; check the slice's licence")
    return list(files.items())


def _sphinx_origin(what: str, members: str) -> dict[str, Any]:
    art = ARTIFACTS["sphinx-src"]
    return {"what": what, "artifact": art.spec, "file": art.filename, "sha256": art.sha256, "members": members,
            "licence": "BSD-2-Clause", "licence_file": SPHINX_LICENCE, "licence_phrase_checked": SPHINX_LICENCE_PHRASE}


def code_slice() -> Slice:
    """Sphinx's own Python source, one document per file, exact duplicates dropped."""
    files = _sphinx_members(lambda n: n.startswith(f"{SPHINX}/sphinx/") and n.endswith(".py"))
    seen: set[str] = set()
    docs = []
    for _, data in files:
        text = data.decode("utf-8")
        if text.strip() and text not in seen:
            seen.add(text)
            docs.append(Document(text, "sphinx-py"))
    origin = _sphinx_origin("Python source of Sphinx", f"{SPHINX}/sphinx/**/*.py")
    origin.update(files=len(files), duplicate_or_empty_files_dropped=len(files) - len(docs))
    return Slice("code", docs, origin)


def po_messages(text: str) -> list[str]:
    """The non-empty translations (`msgstr`, continuation lines joined) of a gettext .po file."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("msgstr "):
            current = [ast.literal_eval(line[len("msgstr "):])]
            out.append(current)
        elif line.startswith('"') and current is not None:
            current.append(ast.literal_eval(line))
        else:
            current = None
    return [m for m in ("".join(parts) for parts in out) if m.strip()]


def cjk_slice() -> Slice:
    """Sphinx's ja / ko / zh_CN / zh_TW message translations, one document per language."""
    paths = {f"{SPHINX}/sphinx/locale/{loc}/LC_MESSAGES/sphinx.po": loc for loc in CJK_LOCALES}
    files = dict(_sphinx_members(lambda n: n in paths))
    for p, data in files.items():
        if PO_LICENCE_PHRASE not in data.decode("utf-8")[:2000]:
            raise SliceError(f"{p} no longer says it is {PO_LICENCE_PHRASE!r}; check the slice's licence")
    docs = [Document("\n".join(po_messages(files[p].decode("utf-8"))), f"sphinx-{loc}") for p, loc in paths.items()]
    origin = _sphinx_origin("Sphinx's UI messages translated to Japanese, Korean and Chinese (msgstr of the .po)",
                            ", ".join(paths))
    origin["po_licence_phrase_checked"] = PO_LICENCE_PHRASE
    return Slice("cjk", docs, origin)


def packed(sl: Slice, pack_chars: int, max_samples: int | None) -> Slice:
    """The slice packed into samples (per source, as a run packs them); every sample must be distinct."""
    samples, sources = pack_sources(sl.documents, pack_chars)
    if max_samples is not None:
        samples, sources = samples[:max_samples], sources[:max_samples]
    if len(set(samples)) != len(samples):
        raise SliceError(f"slice {sl.name}: {len(samples) - len(set(samples))} packed samples repeat")
    sl.pack_chars = pack_chars
    sl.corpus = Corpus(train=tuple(samples), heldout=(), data_hash=data_hash(samples, (), pack_chars, sources),
                       description=f"{sl.name}: {len(samples)} samples", train_sources=tuple(sources))
    return sl


# --- measuring -------------------------------------------------------------------------------------------


def run_once(corpus: Corpus, student: Tokenizer, teacher: Tokenizer, args: argparse.Namespace,
             workers: int) -> dict[str, Any]:
    """One epoch through a fresh builder (empty cache): seconds, CPU seconds, samples, tokens, kept bytes."""
    builder = BatchBuilder(student, [teacher], seq_len=args.seq_len, add_bos=True)
    n_batches = len(corpus.train) // args.batch_size
    ids: list[int] = []
    tokens = teacher_tokens = kept = full = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with DataPipeline(corpus, builder, batch_size=args.batch_size, seed=0, workers=workers,
                      prefetch=max(4, 2 * workers)) as pipe:
        for _, batch in zip(range(n_batches), pipe, strict=False):
            ids += batch.sample_ids.tolist()
            tokens += batch.student_tokens
            teacher_tokens += int(batch.teachers[0].lengths.sum())
            kept += int(batch.n_bytes.sum())
            full += int((batch.student_lengths >= args.seq_len - 16).sum())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if len(set(ids)) != len(ids) or len({corpus.train[i] for i in ids}) != len(ids):
        raise SliceError("a packed sample repeated within one epoch")
    total = sum(len(corpus.train[i].encode("utf-8")) for i in ids)
    return {"workers": workers, "seconds": seconds, "cpu_seconds": cpu, "samples": len(ids),
            "distinct_samples": len(set(ids)), "student_tokens": tokens, "teacher_tokens": teacher_tokens,
            "kept_byte_fraction": kept / total if total else 0.0, "near_full_rows": full}


def measure(slices: list[Slice], student: Tokenizer, teacher: Tokenizer, args: argparse.Namespace
            ) -> dict[str, dict[int, list[dict[str, Any]]]]:
    """Every (slice, workers) `args.repeats` times; each round alternates the order of the worker counts."""
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {s.name: {w: [] for w in args.workers} for s in slices}
    for sl in slices:  # warm-up: encoders built, pages touched
        assert sl.corpus is not None
        run_once(sl.corpus, student, teacher, args, 1)
    for r in range(args.repeats):
        order = args.workers if r % 2 == 0 else args.workers[::-1]
        for sl in slices:
            for w in order:
                res = run_once(sl.corpus, student, teacher, args, w)  # type: ignore[arg-type]
                res["round"] = r
                runs[sl.name][w].append(res)
                print(f"  round {r} {sl.name:<7} workers {w}: {res['student_tokens'] / res['seconds'] / 1e6:6.3f} M "
                      f"student tokens/s ({res['seconds']:.3f} s)", flush=True)
    return runs


def summarise(slices: list[Slice], runs: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for sl in slices:
        assert sl.corpus is not None
        first = runs[sl.name][min(runs[sl.name])][0]
        chars = sum(len(s) for s in sl.corpus.train)
        per_w = {str(w): {"student_tokens_per_s": spread([r["student_tokens"] / r["seconds"] for r in rs]),
                          "samples_per_s": spread([r["samples"] / r["seconds"] for r in rs]),
                          "student_tokens_per_cpu_s": spread([r["student_tokens"] / r["cpu_seconds"] for r in rs])}
                 for w, rs in runs[sl.name].items()}
        out[sl.name] = {"origin": sl.origin, "documents": len(sl.documents), "samples": len(sl.corpus.train),
                        "pack_chars": sl.pack_chars, "characters": chars,
                        "utf8_bytes": sum(len(s.encode("utf-8")) for s in sl.corpus.train),
                        "samples_per_epoch": first["samples"], "student_tokens_per_epoch": first["student_tokens"],
                        "teacher_tokens_per_epoch": first["teacher_tokens"],
                        "kept_byte_fraction": first["kept_byte_fraction"],
                        "near_full_row_fraction": first["near_full_rows"] / max(1, first["samples"]),
                        "distinct_samples_equal_samples": True, "workers": per_w}
    if "corpus" in out and "1" in out["corpus"]["workers"]:
        got = out["corpus"]["workers"]["1"]["student_tokens_per_s"]["median"]
        out["target"] = {"corpus_1_worker_student_tokens_per_s": got, "target": TARGET_TOKENS_PER_S,
                         "met": got >= TARGET_TOKENS_PER_S}
    return out


def report(summary: dict[str, Any], slices: list[Slice], args: argparse.Namespace) -> None:
    print(f"{args.student} x {args.teacher}, seq_len {args.seq_len}, batch {args.batch_size}, {args.repeats} repeats")
    for sl in slices:
        s = summary[sl.name]
        print(f"{sl.name}: {s['samples']} samples of <= {s['pack_chars']} chars, {s['student_tokens_per_epoch']:,} "
              f"student tokens/epoch, {s['kept_byte_fraction']:.1%} of bytes kept, "
              f"{s['near_full_row_fraction']:.0%} rows within 16 of seq_len")
        for w, f in s["workers"].items():
            t = f["student_tokens_per_s"]
            print(f"  workers {w}: {t['median'] / 1e6:.3f} M student tokens/s (IQR {t['iqr'] / 1e6:.3f} M, min "
                  f"{t['min'] / 1e6:.3f}, max {t['max'] / 1e6:.3f}); "
                  f"{f['student_tokens_per_cpu_s']['median'] / 1e6:.3f} M per CPU-second")
    if "target" in summary:
        t = summary["target"]
        print(f"target >= {t['target'] / 1e6:.0f} M student tokens/s on one worker (corpus): "
              f"{t['corpus_1_worker_student_tokens_per_s'] / 1e6:.3f} M, {'met' if t['met'] else 'NOT met'}")


def _args() -> argparse.Namespace:
    p = parser("data", __doc__)
    p.add_argument("--student", default="llama3")
    p.add_argument("--teacher", default="qwen3")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--slices", nargs="+", choices=list(PACK_CHARS), default=list(PACK_CHARS))
    p.add_argument("--corpus-dir", type=Path, default=ROOT / "out" / "corpus")
    p.add_argument("--max-samples", type=int, default=None, help="first N packed samples of each slice")
    args = p.parse_args()
    if args.smoke:
        args.repeats, args.max_samples = 1, args.max_samples or 32
    return args


def load_slices(args: argparse.Namespace) -> list[Slice]:
    makers = {"corpus": lambda: corpus_slice(args.corpus_dir), "code": code_slice, "cjk": cjk_slice}
    return [packed(makers[name](), PACK_CHARS[name], args.max_samples) for name in args.slices]


def main() -> int:
    args = _args()
    prov = begin(args, "bench_data.py")
    try:
        slices = load_slices(args)
    except SliceError as exc:
        print(f"bench_data.py: {exc}", file=sys.stderr)
        return 2
    student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
    runs = measure(slices, student, teacher, args)
    summary = summarise(slices, runs)
    report(summary, slices, args)
    config = {"student": args.student, "teacher": args.teacher, "seq_len": args.seq_len,
              "batch_size": args.batch_size, "repeats": args.repeats, "workers": args.workers,
              "prefetch": "max(4, 2 x workers)", "pack_chars": {s.name: s.pack_chars for s in slices}}
    write_results(args, "data", prov, {"config": config, "slices": summary,
                                       "runs": {n: {str(w): rs for w, rs in r.items()} for n, r in runs.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
