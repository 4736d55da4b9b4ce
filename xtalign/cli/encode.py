"""`xtalign encode`: token ids (and their exact bytes) of a text under one tokenizer."""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLE = """example:
  xtalign encode --tokenizer gpt2 "This is a test"
  [1212, 318, 257, 1332]
  xtalign encode --tokenizer qwen3 --json "2025 tokens"
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="encode a text with a tokenizer", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", "-t", required=True, help="zoo name, local path or hub id")
    p.add_argument("text", help="the text to encode")
    p.add_argument("--json", action="store_true", help="print ids with each token's exact bytes as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xtalign.zoo import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    ids = tok.encode(args.text)
    if not args.json:
        print(json.dumps(ids))
        return 0
    pieces = [tok.vocab.token_bytes[i].decode("utf-8", errors="backslashreplace") for i in ids]
    print(json.dumps({"tokenizer": tok.name, "ids": ids, "tokens": pieces, "n_tokens": len(ids),
                      "n_bytes": len(args.text.encode("utf-8"))}, ensure_ascii=False))
    return 0
