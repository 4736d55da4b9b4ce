"""`xtalign overlap`: how much do these vocabularies overlap, on exact canonical bytes?"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

DEFAULT_SET = ("tekken", "qwen3", "llama3", "gemma3", "gpt-oss")
EXAMPLE = """example:
  xtalign overlap --out out/overlap            # the X-Token guide's set: tekken qwen3 llama3 gemma3 gpt-oss
  xtalign overlap --tokenizers llama3 qwen3 gemma3 --metric jaccard --corpus notes.txt --out out/ov3
"""


@dataclass(frozen=True, kw_only=True)
class OverlapConfig:
    tokenizers: tuple[str, ...] = DEFAULT_SET
    metric: Literal["min", "jaccard", "coverage"] = "min"
    include_special: bool = False
    corpus: str | None = None
    out: str = "out/overlap"
    overwrite: bool = False


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="vocabulary overlap matrix on canonical bytes", description=__doc__,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=list(DEFAULT_SET), metavar="NAME",
                   help="zoo names, local paths or hub ids (default: %(default)s)")
    p.add_argument("--metric", choices=["min", "jaccard", "coverage"], default="min",
                   help="min: |A∩B|/min(|A|,|B|) (the X-Token guide's); jaccard; coverage: |A∩B|/|A| per row")
    p.add_argument("--include-special", action="store_true", help="count special tokens (by name) too")
    p.add_argument("--corpus", type=Path, help="UTF-8 text file: also report corpus-weighted byte coverage")
    p.add_argument("--out", type=Path, default=Path("out/overlap"), help="output directory (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace files in an existing --out")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xtalign.cli.common import CLIError, prepare_out_dir
    from xtalign.config import to_json

    cfg = OverlapConfig(tokenizers=tuple(args.tokenizers), metric=args.metric, include_special=args.include_special,
                        corpus=str(args.corpus) if args.corpus else None, out=str(args.out), overwrite=args.overwrite)
    if args.dry_run:
        print(to_json(cfg))
        return 0
    if len(set(cfg.tokenizers)) < 2:
        raise CLIError("--tokenizers needs at least two different tokenizers")
    corpus_text = _read_corpus(args.corpus) if args.corpus else None
    out = prepare_out_dir(Path(cfg.out), overwrite=cfg.overwrite)  # checked before any heavy work
    result = _compute(cfg, corpus_text)
    _print_table(result)
    _write_outputs(result, cfg, out)
    print(f"wrote {out / 'overlap.csv'}, {out / 'overlap.json'}, {out / 'overlap.png'}")
    return 0


def _read_corpus(path: Path) -> str:
    from xtalign.cli.common import CLIError

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"cannot read --corpus {path}: {exc}; give a UTF-8 text file") from None
    if not text:
        raise CLIError(f"--corpus {path} is empty; give a file with text")
    return text


def _compute(cfg: OverlapConfig, corpus_text: str | None) -> Any:
    from xtalign.overlap import compute_overlap, token_byte_counts
    from xtalign.zoo import load_tokenizer

    toks = [load_tokenizer(n) for n in cfg.tokenizers]
    counts = None
    if corpus_text is not None:
        docs = [d for d in corpus_text.split("\n\n") if d]  # paragraphs keep batches small
        counts = [token_byte_counts(t.encode_batch(docs), t.vocab) for t in toks]
    return compute_overlap([t.vocab for t in toks], metric=cfg.metric, include_special=cfg.include_special,
                           corpus_counts=counts, corpus=cfg.corpus)


def _print_table(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    names = result.tokenizers
    title = {"min": "|A∩B| / min(|A|,|B|)", "jaccard": "Jaccard |A∩B| / |A∪B|",
             "coverage": "coverage |A∩B| / |A| (row A)"}[result.metric]
    table = Table(title=f"canonical-byte overlap, {title}")
    table.add_column("")
    for n in names:
        table.add_column(n, justify="right")
    for i, n in enumerate(names):
        table.add_row(f"{n} ({result.sizes[i]:,})", *[f"{v:.3f}" for v in result.matrix[i]])
    console = Console(width=160)
    console.print(table)
    if result.corpus_byte_coverage is not None:
        cov = Table(title=f"corpus byte coverage: share of {result.corpus} bytes, tokenized by row A, in B's vocab")
        cov.add_column("")
        for n in names:
            cov.add_column(n, justify="right")
        for i, n in enumerate(names):
            cov.add_row(n, *[f"{v:.3f}" for v in result.corpus_byte_coverage[i]])
        console.print(cov)


def _write_outputs(result: Any, cfg: OverlapConfig, out: Path) -> None:
    import io

    from xtalign.cli.common import dump_json, provenance, write_atomic
    from xtalign.config import to_dict
    from xtalign.plots import heatmap

    names = result.tokenizers
    buf = io.StringIO()
    buf.write("tokenizer,size," + ",".join(names) + "\n")
    for i, n in enumerate(names):
        buf.write(f"{n},{result.sizes[i]}," + ",".join(f"{v:.6f}" for v in result.matrix[i]) + "\n")
    write_atomic(out / "overlap.csv", buf.getvalue())
    dump_json(out / "overlap.json", {**result.to_json(), "provenance": provenance()})
    dump_json(out / "config.json", to_dict(cfg))
    labels = [f"{n}\n({s:,})" for n, s in zip(names, result.sizes, strict=True)]
    heatmap(result.matrix, labels, out / "overlap.png", title=f"Canonical-byte overlap ({result.metric})",
            cbar_label=result.metric, col_labels=names)
