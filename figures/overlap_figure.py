"""Regenerate the X-Token guide's cross-tokenizer similarity figure and a larger zoo matrix.

    .venv/bin/python figures/overlap_figure.py                 # computes both, writes figures/*.png
    .venv/bin/python figures/overlap_figure.py --from out/overlap/overlap.json   # guide figure from a result

The guide's six tokenizers are Mistral-NeMo (tekken), Qwen3, Llama-3.2, Gemma-3, OLMo2-SuperBPE and
gpt-oss (o200k-harmony); OLMo2-SuperBPE cannot be had offline, so the figure shows the other five.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from xtalign.overlap import compute_overlap
from xtalign.plots import heatmap
from xtalign.zoo import load_tokenizer

GUIDE_SET = ["tekken", "qwen3", "llama3", "gemma3", "gpt-oss"]
ZOO_SET = ["gpt2", "cl100k", "o200k", "llama2", "llama3", "qwen3", "tekken", "mistral-v3", "gemma3", "phi3",
           "smollm2", "falcon", "starcoder2", "deepseek-llm", "gpt-neox", "command-r", "claude-v1", "rwkv-world"]
HERE = Path(__file__).resolve().parent


def _result(names: list[str]) -> dict:
    return compute_overlap([load_tokenizer(n).vocab for n in names], metric="min").to_json()


def _plot(res: dict, path: Path, title: str) -> None:
    labels = [f"{n} ({s // 1000}k)" for n, s in zip(res["tokenizers"], res["sizes"], strict=True)]
    heatmap(res["matrix"], labels, path, title=title, cbar_label="|A∩B| / min(|A|,|B|)",
            col_labels=res["tokenizers"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", type=Path, help="overlap.json of the guide set (else computed)")
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args(argv)
    guide = json.loads(args.src.read_text()) if args.src else _result(GUIDE_SET)
    _plot(guide, args.out_dir / "overlap_guide.png",
          "Cross-tokenizer similarity (exact canonical bytes)\nintersection / min vocabulary size")
    zoo = _result(ZOO_SET)
    _plot(zoo, args.out_dir / "overlap_zoo.png", f"Canonical-byte overlap across {len(ZOO_SET)} zoo tokenizers")
    (args.out_dir.parent / "out" / "figures").mkdir(parents=True, exist_ok=True)
    (args.out_dir.parent / "out" / "figures" / "overlap_zoo.json").write_text(json.dumps(zoo, indent=1))
    print(f"wrote {args.out_dir / 'overlap_guide.png'} and {args.out_dir / 'overlap_zoo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
