"""Alignment throughput: exact byte-boundary chunks (xtalign.align) vs a NeMo-style aligner.

    .venv/bin/python benchmarks/bench_align.py                  # llama3 x qwen3, 9 repeats, 4 more baseline pairs
    .venv/bin/python benchmarks/bench_align.py --student llama3 --teacher qwen3 --repeats 9
    .venv/bin/python benchmarks/bench_align.py --smoke --out /tmp/align.json --allow-dirty

Builds a few hundred KB of mixed text (the Botchan novel plus built-in code, long numbers, CJK, emoji
and mixed-script samples, varied by a seeded RNG), tokenizes it with both tokenizers (not timed) and
times only the alignment. Throughput counts the tokens of both sides; each timed figure is reported as its
spread over the repeats (median, quartiles, IQR, min, max, values); one thread (BLAS/OpenMP thread
variables are pinned to 1 before numpy loads; the aligner uses no BLAS). Target: >= 5 M tokens/s.
The NeMo-style baseline (benchmarks/nemo_style_aligner.py, a re-implementation for comparison) runs
on a slice and is normalised to tokens/s; its chunks are also checked against the exact bytes.
Results, with the provenance taken at the start, go to benchmarks/results/align.json. `--smoke`: 8 KB of
samples added to Botchan, 1 repeat, an 8 KB baseline slice, no extra pairs (not a result).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import begin, parser, spread, write_results  # noqa: E402
from benchmarks.nemo_style_aligner import nemo_style_align, score_chunks, token_strings  # noqa: E402
from xtalign.align import align_ends, align_ids, token_ends  # noqa: E402
from xtalign.zoo import load_tokenizer  # noqa: E402
from xtalign.zoo.artifacts import member_path  # noqa: E402

CODE = '''def merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge overlapping intervals; O(n log n)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out

for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product\n\tif (x != 0x7fffffff) return -1;
'''
CJK = ("吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。"
       "机器学习是人工智能的一个分支。한국어 문장도 섞어 봅니다.")
EMOJI = "Great job 👍🏽! Family: 👨‍👩‍👧‍👦, flags 🇯🇵🇫🇷 🏳️‍🌈, faces 😀😂🥲, keycaps 1️⃣2️⃣ and ✔︎ done."
TARGET_TOKENS_PER_S = 5e6
TARGET_CASE = "align_ids, ids as Python lists (includes list->array)"
MIXED = "Привет, мир! مرحبا بالعالم. Γειά σου κόσμε. שלום עולם. नमस्ते दुनिया. Ünïcödé café naïve façade."


def numbers(rng: random.Random) -> str:
    parts = [f"{rng.randrange(10**rng.randrange(1, 16))}" for _ in range(8)]
    return (f"Invoice {parts[0]}: total ${parts[1]}.{rng.randrange(100):02d}, ids {', '.join(parts[2:6])}; "
            f"pi≈3.{''.join(str(rng.randrange(10)) for _ in range(40))} in {rng.randrange(1900, 2100)}.")


def build_corpus(seed: int, extra_kb: int, row_chars: int) -> list[str]:
    """Mixed paragraphs (shuffled, seeded) packed into rows of about `row_chars` characters."""
    rng = random.Random(seed)
    botchan = member_path("sentencepiece-src", "sentencepiece-0.2.3/test/botchan.txt").read_text(encoding="utf-8")
    paras = [p for p in botchan.split("\n") if p.strip()]
    samples: list[Callable[[], str]] = [lambda: CODE, lambda: CJK, lambda: EMOJI, lambda: MIXED,
                                        lambda: numbers(rng)]
    size = 0
    while size < extra_kb * 1024:
        text = rng.choice(samples)()
        text = text.replace("  ", " " * rng.randrange(1, 6)) + "\n" * rng.randrange(1, 3)
        paras.append(text)
        size += len(text.encode())
    rng.shuffle(paras)
    rows, cur = [], ""
    for p in paras:
        cur += p + "\n"
        if len(cur) >= row_chars:
            rows.append(cur)
            cur = ""
    return rows + ([cur] if cur else [])


def timings(fn: Callable[[], Any], repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def baseline(rows_s: list, rows_t: list, s_tok: Any, t_tok: Any) -> dict[str, Any]:
    """NeMo-style aligner on the slice: time, and how its chunks compare with the exact ones."""
    exact = align_ends(token_ends(rows_s, s_tok), token_ends(rows_t, t_tok))  # no ids: chunks() lists positions
    totals = {"chunks": 0, "paired": 0, "paired_bytes_differ": 0, "unaligned_tokens": 0, "same_as_exact": 0}
    elapsed = 0.0
    for row, (s_ids, t_ids) in enumerate(zip(rows_s, rows_t, strict=True)):
        a = token_strings(s_ids, s_tok.vocab.token_bytes)
        b = token_strings(t_ids, t_tok.vocab.token_bytes)
        t0 = time.perf_counter()
        chunks = nemo_style_align(a, b)
        elapsed += time.perf_counter() - t0
        for k, v in score_chunks(chunks, a, b).items():
            totals[k] += v
        ref = {(tuple(c["student"]), tuple(c["teacher"])) for c in exact.chunks(row)}
        totals["same_as_exact"] += sum((tuple(ca), tuple(cb)) in ref for ca, cb in chunks)
    totals["exact_chunks"] = int(exact.n_chunks.sum())
    totals["seconds"] = elapsed
    return totals


def throughput(s_tok: Any, t_tok: Any, texts: list[str], repeats: int) -> dict[str, Any]:
    """Wall time of the aligner over the whole corpus (its spread over the repeats), three ways of handing it the
    tokens."""
    rows_s, rows_t = s_tok.encode_batch(texts), t_tok.encode_batch(texts)
    n_tok = sum(map(len, rows_s)) + sum(map(len, rows_t))
    arr_s = [np.asarray(r, dtype=np.int64) for r in rows_s]
    arr_t = [np.asarray(r, dtype=np.int64) for r in rows_t]
    ends_s, ends_t = token_ends(arr_s, s_tok), token_ends(arr_t, t_tok)
    cases = {
        TARGET_CASE: lambda: align_ids(rows_s, rows_t, student=s_tok,
                                                                                    teacher=t_tok),
        "align_ids, ids as int64 arrays": lambda: align_ids(arr_s, arr_t, student=s_tok, teacher=t_tok),
        "align_ends, byte ends given (core)": lambda: align_ends(ends_s, ends_t),
    }
    out: dict[str, Any] = {"tokens_both_sides": n_tok, "cases": {}}
    for name, fn in cases.items():
        times = timings(fn, repeats)
        out["cases"][name] = {"seconds": spread(times), "tokens_per_s": spread([n_tok / t for t in times])}
    got = out["cases"][TARGET_CASE]["tokens_per_s"]["median"]
    out["target"] = {"case": TARGET_CASE, "tokens_per_s": got, "target": TARGET_TOKENS_PER_S,
                     "met": got >= TARGET_TOKENS_PER_S}
    return out


def compare(s_tok: Any, t_tok: Any, texts: list[str], repeats: int) -> dict[str, Any]:
    """Baseline vs exact on the same rows: speed (tokens/s, both sides) and the baseline's correctness."""
    sl_s, sl_t = s_tok.encode_batch(texts), t_tok.encode_batch(texts)
    n_tok = sum(map(len, sl_s)) + sum(map(len, sl_t))
    base = baseline(sl_s, sl_t, s_tok, t_tok)
    times = timings(lambda: align_ids(sl_s, sl_t, student=s_tok, teacher=t_tok), repeats)
    exact = spread(times)
    return {"student": s_tok.name, "teacher": t_tok.name, "tokens_both_sides": n_tok, "exact_seconds": exact,
            "exact_tokens_per_s": spread([n_tok / t for t in times]), "baseline_tokens_per_s": n_tok / base["seconds"],
            "speedup": base["seconds"] / exact["median"], "baseline": base}


def main() -> int:
    ap = parser("align", __doc__)
    ap.add_argument("--student", default="llama3")
    ap.add_argument("--teacher", default="qwen3")
    ap.add_argument("--extra-kb", type=int, default=160, help="KB of built-in mixed samples added to Botchan")
    ap.add_argument("--row-chars", type=int, default=8000, help="characters per row (about 2k tokens)")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--baseline-kb", type=int, default=48, help="size of the slice the baseline runs on")
    ap.add_argument("--compare-pairs", default="llama3:gemma3,mistral-v1:llama3,gpt2:phi3,tekken:qwen3",
                    help="more student:teacher pairs for the baseline comparison ('' for none)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.smoke:
        args.extra_kb, args.repeats, args.baseline_kb, args.compare_pairs = 8, 1, 8, ""
    prov = begin(args, "bench_align.py")

    texts = build_corpus(args.seed, args.extra_kb, args.row_chars)
    n_rows, size = 0, 0  # the baseline's slice: whole rows from the start of the (shuffled) corpus
    while n_rows < len(texts) and size < args.baseline_kb * 1024:
        size += len(texts[n_rows].encode())
        n_rows += 1
    pairs = [(args.student, args.teacher)] + [tuple(p.split(":")) for p in args.compare_pairs.split(",") if p]
    toks = {n: load_tokenizer(n) for pair in pairs for n in pair}
    main_pair = throughput(toks[args.student], toks[args.teacher], texts, args.repeats)
    comparisons = [compare(toks[s], toks[t], texts[:n_rows], args.repeats) for s, t in pairs]
    report = {
        "numpy": np.__version__,
        "threads_env": {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "student": args.student, "teacher": args.teacher, "rows": len(texts),
        "corpus_bytes": sum(len(t.encode()) for t in texts), "repeats": args.repeats, **main_pair,
        "slice": {"rows": n_rows, "bytes": size}, "comparisons": comparisons,
    }
    _print(report, prov)
    write_results(args, "align", prov, report)
    return 0


def _print(r: dict[str, Any], prov: dict[str, Any]) -> None:
    print(f"{r['student']} x {r['teacher']}: {r['rows']} rows, {r['corpus_bytes'] / 1024:.0f} KB, "
          f"{r['tokens_both_sides']:,} tokens (both sides); {prov['cpu']}, 1 thread, "
          f"load {prov['load_average_1min_start']:.1f}")
    print(f"{'case (median of ' + str(r['repeats']) + ')':56s} {'ms':>8s} {'M tok/s':>8s} {'best':>8s} {'IQR':>8s}")
    for name, v in r["cases"].items():
        t = v["tokens_per_s"]
        print(f"{name:56s} {v['seconds']['median'] * 1e3:8.2f} {t['median'] / 1e6:8.2f} {t['max'] / 1e6:8.2f} "
              f"{t['iqr'] / 1e6:8.2f}")
    g = r["target"]
    print(f"target >= {g['target'] / 1e6:.0f} M tokens/s ({g['case']}): {g['tokens_per_s'] / 1e6:.2f} M, "
          f"{'met' if g['met'] else 'NOT met'}")
    print(f"\nbaseline comparison on a slice of {r['slice']['rows']} rows ({r['slice']['bytes'] / 1024:.0f} KB); "
          "tokens/s count both sides")
    print(f"{'pair':20s} {'tokens':>7s} {'exact M/s':>9s} {'NeMo-style k/s':>14s} {'ratio':>6s} "
          f"{'bytes differ':>13s} {'unpaired tok':>12s} {'exact chunks kept':>17s}")
    for c in r["comparisons"]:
        b = c["baseline"]
        pair = f"{c['student']} x {c['teacher']}"
        print(f"{pair:20s} {c['tokens_both_sides']:7d} {c['exact_tokens_per_s']['median'] / 1e6:9.2f} "
              f"{c['baseline_tokens_per_s'] / 1e3:14.1f} {c['speedup']:5.0f}x "
              f"{100 * b['paired_bytes_differ'] / max(b['paired'], 1):12.2f}% "
              f"{100 * b['unaligned_tokens'] / c['tokens_both_sides']:11.2f}% "
              f"{100 * b['same_as_exact'] / max(b['exact_chunks'], 1):16.2f}%")
    print("bytes differ: baseline chunks pairing tokens whose bytes differ between sides (of paired chunks);\n"
          "unpaired tok: tokens the baseline leaves in one-sided (gap) chunks; exact chunks kept: exact chunks the\n"
          "baseline reproduces token for token.")


if __name__ == "__main__":
    raise SystemExit(main())
