"""`xtalign tokenizers`: list the offline zoo."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLE = """example:
  xtalign tokenizers
  xtalign tokenizers --load --json      # load each one (fetches artifacts once) and report real counts
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="list the tokenizer zoo", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", action="store_true", help="load every tokenizer and report its canonical counts")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xtalign.zoo import ZOO, load_tokenizer

    rows = []
    for e in ZOO.values():
        row: dict[str, Any] = {"name": e.name, "aliases": list(e.aliases), "family": e.family,
                               "vocab_size": e.vocab_size, "source": e.source}
        if args.load:
            tok = load_tokenizer(e.name)
            row.update(tok.vocab.counts(), lossless=tok.lossless, fingerprint=tok.vocab.fingerprint[:16])
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"xtalign tokenizer zoo ({len(rows)} names; also: a local path or a hub id)")
    cols = ["name", "family", "vocab_size", "source"] + (["normal", "lossless"] if args.load else [])
    for c in cols:
        table.add_column(c, justify="right" if c in ("vocab_size", "normal") else "left")
    for r in rows:
        name = r["name"] + (f" ({', '.join(r['aliases'])})" if r["aliases"] else "")
        table.add_row(name, *[f"{r[c]:,}" if isinstance(r[c], int) and not isinstance(r[c], bool) else str(r[c])
                              for c in cols[1:]])
    Console(width=160).print(table)
    return 0
