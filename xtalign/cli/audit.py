"""`xtalign audit`: which character classes of the student fall in the strict common set with a teacher
(student tokens that are one-hot exact matches in the projection), and whether to distil with P-KL or H-KL.

Numerals are counted as the student tokenizes them after a word (`42` in `is 42`), over the paper's
denominators 0-9, 00-99 and 000-999; the same at text start, and without leading zeros, are listed too.
"aligned" counts items the teacher splits into the same pieces, all of them exact matches.
The recommendation: P-KL when fewer than 50% of 2- or 3-digit numerals are aligned, or (with --corpus)
fewer than 90% of corpus tokens are exact matches; H-KL otherwise (without --corpus: 50% of the vocabulary).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  xtalign audit --student llama3 --teacher qwen3
  xtalign audit --student llama3 --teacher gpt-oss --corpus notes.txt --json
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="coverage audit of a student/teacher pair; recommends P-KL or H-KL",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, metavar="NAME", help="student tokenizer: zoo name, local path or hub id")
    p.add_argument("--teacher", required=True, metavar="NAME", help="teacher tokenizer: zoo name, local path or hub id")
    p.add_argument("--corpus", type=Path, metavar="FILE",
                   help="UTF-8 text file: also report the share of its student tokens (and bytes) that are common")
    p.add_argument("--json", action="store_true", help="print one JSON object with every count and the recommendation")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from xtalign.audit import audit_pair
    from xtalign.zoo import load_tokenizer

    corpus_text = _read_corpus(args.corpus) if args.corpus is not None else None  # before any heavy work
    student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
    report = audit_pair(student, teacher, corpus_text=corpus_text,
                        corpus_name=args.corpus.name if args.corpus is not None else None)
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        _print_report(report)
    return 0


def _read_corpus(path: Path) -> str:
    from xtalign.cli.common import CLIError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise CLIError(f"cannot read --corpus {path}: {reason}; give a UTF-8 text file") from None
    if not text:
        raise CLIError(f"--corpus {path} is empty; give a file with text")
    return text


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"coverage audit: student {report.student} -> teacher {report.teacher} "
                        "(strict common set: one-hot exact matches)")
    for col, justify in (("class", "left"), ("common", "right"), ("total", "right"), ("share", "right"),
                         ("aligned", "right"), ("not common, e.g.", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    groups = ("vocab", "corpus", "numerals", "punctuation", "whitespace", "cjk", "emoji", "special")
    prev = None
    for c in report.classes:
        group = next((g for g in groups if c.key.startswith(g)), "other")
        if prev is not None and group != prev:
            table.add_section()
        prev = group
        share = "–" if c.share is None else f"{100 * c.share:.1f}%"
        aligned = "" if c.aligned is None else f"{c.aligned:,}"
        table.add_row(escape(c.label), f"{c.common:,}", f"{c.total:,}", share, aligned,
                      escape(" ".join(f"'{m}'" for m in c.missing)))
    loss, reason = report.recommendation
    console = Console(width=160)
    console.print(table)
    console.print(f"numerals written as one exact-match token (paper denominators, after a word): "
                  f"{report.numerals_headline}")
    console.print("aligned: items the teacher splits into the same pieces, all of them exact matches")
    console.print(f"recommendation: [bold]{loss}[/bold] — {escape(reason)}")
