"""`xtalign eval`: held-out bits per byte of a model on a text, comparable across tokenizers.

Bits per byte = the summed negative log2-likelihood of the text divided by its UTF-8 bytes. Each token's
loss is spread evenly over its bytes to break it down by character class.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

EXAMPLE = """example:
  xtalign eval --model smollm2-135m --data notes.txt            # zoo model (its tokenizer comes with it)
  xtalign eval --model out/runs/tiny/export --data held.txt      # an exported student (Hugging Face folder)
  xtalign eval --model random --tokenizer gpt2 --data held.txt --json
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="bits per byte of a model on a text", description=__doc__, epilog=EXAMPLE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo model, .gguf, Hugging Face folder or hub id, or 'random'")
    p.add_argument("--tokenizer", help="tokenizer name or path (zoo and GGUF models bring their own)")
    p.add_argument("--data", required=True, help="text file, .jsonl (field 'text') or .parquet; or 'botchan'")
    p.add_argument("--field", default="text", help="JSONL key / parquet column holding the text (default: text)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per window (default: 512)")
    p.add_argument("--max-bytes", type=int, default=0, help="score only the first N bytes of documents (0 = all)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def _texts(args: argparse.Namespace) -> list[str]:
    from xtalign.distill.data.corpus import read_documents

    docs = read_documents(args.data, field=args.field)
    if args.max_bytes:
        out, used = [], 0
        for d in docs:
            if used >= args.max_bytes:
                break
            d = d.encode("utf-8")[: args.max_bytes - used].decode("utf-8", errors="ignore")
            out.append(d)
            used += len(d.encode("utf-8"))
        docs = out
    return docs


def run(args: argparse.Namespace) -> int:
    from xtalign.cli.common import usage_errors
    from xtalign.distill.config import ArchConfig
    from xtalign.distill.evaluate import model_bits_per_byte
    from xtalign.distill.models.load import load_model

    with usage_errors():
        texts = _texts(args)
        arch = ArchConfig() if args.model == "random" else None
        loaded = load_model(model=args.model, tokenizer=args.tokenizer, arch=arch, device=args.device)
        res = model_bits_per_byte(loaded.model, loaded.tokenizer, texts, seq_len=args.seq_len, device=args.device)
    if args.json:
        print(json.dumps({"model": args.model, "tokenizer": loaded.tokenizer.name, **res}))
        return 0
    print(f"{args.model} ({loaded.tokenizer.name}): {res['bits_per_byte']:.4f} bits per byte over {res['bytes']:,} "
          f"bytes, {res['tokens']:,} tokens")
    for name, c in res.get("by_class", {}).items():
        if c["bytes"]:
            print(f"  {name:<12} {c['bits_per_byte']:.4f}  ({c['bytes']:,} bytes)")
    return 0
