"""How much vocabulary overlap a raw-token-string comparison misses, against exact canonical bytes.

Raw strings are each tokenizer's own spelling as its Hugging Face `tokenizer.json` would hold it:
GPT-2 byte-level unicode (`Ġthe`) for byte-level BPE families, SentencePiece pieces (`▁the`,
`<0x0A>`) for SentencePiece ones. tokenkit documents the gap for Gemma-2 vs Llama-3 (25,632 shared
by raw string, 85,699 by bytes); this script measures it for the X-Token overlap set.

    .venv/bin/python analysis/raw_vs_bytes.py      # prints a table, writes out/analysis/raw_vs_bytes.json
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from xtalign.vocab import BYTE_TO_UNICODE, TokenKind
from xtalign.zoo import Tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["tekken", "qwen3", "llama3", "gemma3", "gpt-oss"]


def raw_strings(tok: Tokenizer) -> set[str]:
    """Normal tokens as the tokenizer itself spells them (no canonicalisation)."""
    v = tok.vocab
    ids = [i for i in range(v.size) if v.kinds[i] == TokenKind.NORMAL]
    if tok.family == "sentencepiece":
        return {v.names[i] for i in ids}
    return {"".join(BYTE_TO_UNICODE[b] for b in v.token_bytes[i]) for i in ids}


def main(argv: list[str] | None = None) -> int:
    toks = {n: load_tokenizer(n) for n in NAMES}
    raw = {n: raw_strings(t) for n, t in toks.items()}
    rows = []
    print(f"{'pair':18s} {'raw-string ∩':>13s} {'byte ∩':>9s}  missed by raw strings")
    for a, b in itertools.combinations(NAMES, 2):
        r, e = len(raw[a] & raw[b]), len(toks[a].vocab.normal_set & toks[b].vocab.normal_set)
        rows.append({"a": a, "b": b, "raw_string_intersection": r, "byte_intersection": e})
        print(f"{a + ' × ' + b:18s} {r:>13,d} {e:>9,d}  {e - r:>8,d} ({(e - r) / e:.1%})")
    out = ROOT / "out" / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    (out / "raw_vs_bytes.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
