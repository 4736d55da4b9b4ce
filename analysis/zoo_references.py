"""Match rate of the zoo against llama.cpp's reference tokenizations (ggml-vocab-*.gguf.inp/.out).

    .venv/bin/python analysis/zoo_references.py        # prints a table, writes out/analysis/zoo_references.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xtalign.zoo.references import REFERENCE_VOCABS, check_reference

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    rows = []
    print(f"{'llama.cpp vocab':16s} {'xtalign tokenizer':18s} {'matched':>9s}  note")
    for vocab in REFERENCE_VOCABS:
        r = check_reference(vocab)
        note = r.error or ("; ".join(repr(m[0][:30]) for m in r.mismatches[:3]) if r.mismatches else "all match")
        print(f"{vocab:16s} {r.tokenizer:18s} {r.matched:>4d}/{r.cases:<4d}  {note}")
        rows.append({"vocab": vocab, "tokenizer": r.tokenizer, "cases": r.cases, "matched": r.matched,
                     "error": r.error})
    out = ROOT / "out" / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    (out / "zoo_references.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
