"""Coverage audit over every ordered pair of the overlap figure's tokenizers, Botchan as the corpus.

For each (student, teacher): the vocabulary's exact-match share, the share of Botchan's student tokens
that are exact matches, numeral coverage over the paper's denominators (0-9, 00-99, 000-999, numerals
after a word) and the loss `xtalign.audit.recommend` picks. Writes out/analysis/audit_pairs.{csv,md,json}
and copies the markdown to analysis/audit_pairs.md (shown in the README).

    .venv/bin/python analysis/audit_pairs.py
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xtalign.audit import CORPUS_THRESHOLD, NUMERAL_THRESHOLD, AuditReport, audit_pair, probe_tokenizer
from xtalign.cli.common import provenance, write_atomic
from xtalign.zoo import load_tokenizer
from xtalign.zoo.artifacts import member_path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZERS = ("tekken", "qwen3", "llama3", "gemma3", "gpt-oss")  # the overlap figure's set
CORPUS = ("sentencepiece-src", "sentencepiece-0.2.3/test/botchan.txt")
COLUMNS = ("student", "teacher", "vocab_exact_share", "corpus_token_share", "corpus_byte_share",
           "numerals_1digit", "numerals_2digit", "numerals_3digit", "aligned_2digit", "aligned_3digit", "loss",
           "reason")


def row(report: AuditReport) -> dict[str, Any]:
    """One table row: shares rounded to 4 places, numerals as "common/total" (paper denominators)."""
    loss, reason = report.recommendation
    return {"student": report.student, "teacher": report.teacher,
            "vocab_exact_share": round(report.get("vocab").share or 0.0, 4),
            "corpus_token_share": round(report.get("corpus.tokens").share or 0.0, 4),
            "corpus_byte_share": round(report.get("corpus.bytes").share or 0.0, 4),
            **{f"numerals_{d}digit": report.get(f"numerals.{d}").fraction.replace(",", "") for d in (1, 2, 3)},
            **{f"aligned_{d}digit": f"{report.get(f'numerals.{d}').aligned}/{10**d}" for d in (2, 3)},
            "loss": loss, "reason": reason}


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The committed table: no dates or versions in it, so regenerating it only changes real numbers."""
    lines = [
        "Coverage audit (`xtalign audit`) of every ordered pair of the overlap figure's tokenizers, on Botchan",
        "(sentencepiece 0.2.3 test text). *vocab*: student normal tokens whose exact bytes are a teacher token",
        "(one-hot projection rows). *Botchan*: share of the text's student tokens that are such rows.",
        "*0-9 / 00-99 / 000-999*: numerals (after a word) the student writes as one such token, over the",
        "paper's denominators. *aligned*: numerals both sides split into the same pieces, all exact matches.",
        f"Rule: P-KL if under {NUMERAL_THRESHOLD:.0%} of 2- or 3-digit numerals are aligned, or under",
        f"{CORPUS_THRESHOLD:.0%} of Botchan tokens are exact matches; else H-KL.",
        "Regenerate with `python analysis/audit_pairs.py`.",
        "",
        "| student | teacher | vocab | Botchan | 0-9 | 00-99 | 000-999 | aligned 00-99 | aligned 000-999 | loss |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(f"| {r['student']} | {r['teacher']} | {100 * r['vocab_exact_share']:.1f}% | "
                     f"{100 * r['corpus_token_share']:.1f}% | {r['numerals_1digit']} | {r['numerals_2digit']} | "
                     f"{r['numerals_3digit']} | {r['aligned_2digit']} | {r['aligned_3digit']} | {r['loss']} |")
    return "\n".join(lines) + "\n"


def run_audits(names: Sequence[str], corpus_text: str) -> list[AuditReport]:
    """Every ordered pair; each tokenizer is loaded, and each student probed, once."""
    toks = {n: load_tokenizer(n) for n in names}
    probes = {n: probe_tokenizer(toks[n], corpus_text=corpus_text, corpus_name="botchan") for n in names}
    return [audit_pair(toks[s], toks[t], probes=probes[s], teacher_probes=probes[t])
            for s in names for t in names if s != t]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizers", nargs="+", default=list(TOKENIZERS), help="zoo names (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "analysis", help="output folder (default: %(default)s)")
    ap.add_argument("--no-copy", action="store_true", help="do not copy the markdown to analysis/audit_pairs.md")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    corpus_text = member_path(*CORPUS).read_text(encoding="utf-8")
    reports = run_audits(args.tokenizers, corpus_text)
    rows = [row(r) for r in reports]
    args.out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(rows)
    write_atomic(args.out / "audit_pairs.csv", to_csv(rows))
    write_atomic(args.out / "audit_pairs.md", md)
    payload = {"corpus": "/".join(CORPUS), "tokenizers": list(args.tokenizers), "pairs": rows,
               "audits": [r.to_json() for r in reports], "seconds": round(time.perf_counter() - t0, 2),
               "provenance": provenance()}
    write_atomic(args.out / "audit_pairs.json", json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    wrote = [args.out / f"audit_pairs.{ext}" for ext in ("csv", "md", "json")]
    if not args.no_copy:
        shutil.copyfile(args.out / "audit_pairs.md", ROOT / "analysis" / "audit_pairs.md")
        wrote.append(ROOT / "analysis" / "audit_pairs.md")
    print(md, end="")
    print(f"{len(rows)} pairs in {time.perf_counter() - t0:.1f} s; wrote {', '.join(map(str, wrote))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
