"""Data-pipeline throughput: tokenize both sides + truncate by text + align + collate, on real text.

Usage:  .venv/bin/python benchmarks/bench_data.py [--student llama3 --teacher qwen3 --seq-len 2048
        --pack-chars 10240 --batch-size 8 --mb 2 --repeats 3 --workers 1 2]

The corpus is Botchan (the chapters of the embedded default corpus) repeated to at least `--mb` MB, each
repetition starting at a different seeded character offset, so no packed sample repeats and the
builder's tokenization cache never hits. Each run builds one epoch through a fresh `BatchBuilder` and
`DataPipeline` (threads); samples/s and kept student tokens/s are medians over `--repeats` runs.
Writes out/bench/data.json with provenance (and the 1-minute load average: other work on the same
cores lowers the figures).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from xtalign.cli.common import dump_json, provenance
from xtalign.distill.corpus import data_hash, pack_documents, read_documents
from xtalign.distill.data import BatchBuilder, Corpus, DataPipeline
from xtalign.zoo import load_tokenizer
from xtalign.zoo.tokenizer import Tokenizer


def build_corpus(mb: float, pack_chars: int, seed: int) -> Corpus:
    """Botchan repeated to >= `mb` MB; repetition r drops a seeded number of leading characters."""
    chapters = read_documents("botchan")
    rng = random.Random(seed)
    docs: list[str] = []
    while sum(map(len, docs)) < mb * 1e6:
        skip = rng.randrange(1, pack_chars)
        docs.extend([chapters[0][skip:], *chapters[1:]])
    train = tuple(pack_documents(docs, pack_chars))
    return Corpus(train=train, heldout=(), data_hash=data_hash(train, (), pack_chars),
                  description=f"botchan x{len(docs) // len(chapters)}, {len(train)} samples")


def run_once(corpus: Corpus, student: Tokenizer, teacher: Tokenizer, args: argparse.Namespace,
             workers: int) -> dict[str, float]:
    """One epoch through a fresh builder (empty cache): seconds, samples, student tokens, full-length rows."""
    builder = BatchBuilder(student, [teacher], seq_len=args.seq_len, add_bos=True)
    n_batches = len(corpus.train) // args.batch_size
    samples = tokens = full = 0
    t0, c0 = time.perf_counter(), time.process_time()
    with DataPipeline(corpus, builder, batch_size=args.batch_size, seed=0, workers=workers,
                      prefetch=max(4, 2 * workers)) as pipe:
        for _, batch in zip(range(n_batches), pipe, strict=False):
            samples += batch.size
            tokens += batch.student_tokens
            full += int((batch.student_lengths >= args.seq_len - 16).sum())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"seconds": seconds, "cpu_seconds": cpu, "samples": samples, "student_tokens": tokens,
            "near_full_rows": full}


def measure(corpus: Corpus, student: Tokenizer, teacher: Tokenizer, args: argparse.Namespace,
            workers: int) -> dict[str, Any]:
    load = os.getloadavg()[0]
    runs = [run_once(corpus, student, teacher, args, workers) for _ in range(args.repeats)]
    sps = [r["samples"] / r["seconds"] for r in runs]
    tps = [r["student_tokens"] / r["seconds"] for r in runs]
    per_cpu = [r["student_tokens"] / r["cpu_seconds"] for r in runs]
    return {"workers": workers, "samples_per_s": statistics.median(sps), "student_tokens_per_s": statistics.median(tps),
            "student_tokens_per_cpu_s": statistics.median(per_cpu),
            "load_avg_1min_before": load, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="llama3")
    ap.add_argument("--teacher", default="qwen3")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--pack-chars", type=int, default=10240)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--mb", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("out/bench/data.json"))
    args = ap.parse_args()
    student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
    corpus = build_corpus(args.mb, args.pack_chars, seed=0)
    run_once(corpus, student, teacher, args, 1)  # warm-up: encoders built, pages touched
    results = [measure(corpus, student, teacher, args, w) for w in args.workers]
    chars = np.array([len(s) for s in corpus.train])
    for r in results:
        full = r["runs"][0]["near_full_rows"] / r["runs"][0]["samples"]
        print(f"{args.student} x {args.teacher}, seq_len {args.seq_len}, pack_chars {args.pack_chars}, "
              f"workers {r['workers']}: {r['samples_per_s']:.1f} samples/s, "
              f"{r['student_tokens_per_s'] / 1e6:.2f} M student tokens/s "
              f"({r['student_tokens_per_cpu_s'] / 1e6:.2f} M per CPU-second; {full:.0%} rows within 16 of seq_len; "
              f"load average {r['load_avg_1min_before']:.1f} before)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dump_json(args.out, {"benchmark": "data", "student": args.student, "teacher": args.teacher,
                         "seq_len": args.seq_len, "pack_chars": args.pack_chars, "batch_size": args.batch_size,
                         "corpus": corpus.description, "corpus_mb": float(chars.sum() / 1e6),
                         "results": results, "provenance": provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
