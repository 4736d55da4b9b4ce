"""`xtalign build-projection`: the sparse student→teacher projection W (X-Token), saved as safetensors.

Rows are student token ids, columns teacher token ids; each row keeps at most --top-k teacher ids and
sums to 1 (or is empty: unused slots and specials the teacher has no counterpart for). Exact byte
matches are one-hot; other tokens are decomposed by re-encoding (forward and reverse passes, piece i
weighted β·γ^i, normalised); specials map by role.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy/scipy load only when the verb runs, not on every `xtalign --help`
    from xtalign.projection import ProjectionConfig

EXAMPLE = """example:
  xtalign build-projection --student llama3 --teacher qwen3
      # -> out/projections/llama3__qwen3.safetensors
  xtalign build-projection --student gemma3 --teacher llama3 --top-k 8 --decay 0.9,0.1 --no-reverse --out w.safetensors
  xtalign build-projection --student llama3 --teacher qwen3 --from-nemo nemo_llama_qwen_topk.pt --out w.safetensors
      # import NeMo RL's top-k .pt map (torch.load weights_only) and stamp both fingerprints
  xtalign inspect out/projections/llama3__qwen3.safetensors --token " the" --token 201
"""


@dataclass(frozen=True, kw_only=True)
class BuildProjectionConfig:
    """The resolved `build-projection` command: tokenizers, output, and the projection's own config."""

    student: str
    teacher: str
    out: str
    projection: ProjectionConfig
    overwrite: bool = False
    from_nemo: str | None = None


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="build the sparse student→teacher projection W", description=__doc__,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, metavar="NAME", help="student tokenizer (zoo name, path or hub id)")
    p.add_argument("--teacher", required=True, metavar="NAME", help="teacher tokenizer (zoo name, path or hub id)")
    p.add_argument("--top-k", type=int, default=4, metavar="K", help="teacher entries kept per row (default: 4)")
    p.add_argument("--max-pieces", type=int, default=4, metavar="N",
                   help="pieces of a decomposition that get weight (default: 4)")
    p.add_argument("--decay", default="0.9,0.1", metavar="BETA,GAMMA",
                   help="piece i weighs BETA*GAMMA^i before normalising (default: 0.9,0.1)")
    p.add_argument("--no-reverse", action="store_true", help="skip the reverse pass over the teacher vocabulary")
    p.add_argument("--special-fuzzy-threshold", type=float, default=85.0, metavar="SCORE",
                   help="rapidfuzz ratio (0-100) to match specials that have no known role (default: 85)")
    p.add_argument("--from-nemo", type=Path, metavar="FILE.pt",
                   help="import NeMo RL's top-k projection (indices/likelihoods, -1 = empty) instead of building")
    p.add_argument("--out", type=Path, help="output file (default: out/projections/STUDENT__TEACHER.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run)


def _parse_decay(text: str) -> tuple[float, float]:
    from xtalign.cli.common import CLIError

    try:
        beta, gamma = (float(x) for x in text.split(","))
    except ValueError:
        raise CLIError(f"--decay {text!r} must be two numbers BETA,GAMMA, e.g. --decay 0.9,0.1") from None
    return beta, gamma


def _file_stem(name: str) -> str:
    """A filesystem-safe stem for a tokenizer argument: the zoo name, or a path's / hub id's last part."""
    import re

    from xtalign.zoo.registry import canonical_name

    canon = canonical_name(name)
    if canon is None:
        canon = Path(name.rstrip("/")).stem if Path(name).expanduser().exists() else name.rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", canon) or "tokenizer"


def resolve_config(args: argparse.Namespace) -> BuildProjectionConfig:
    """Command-line arguments -> the frozen command config (bad values become one-line CLIErrors)."""
    from xtalign.cli.common import CLIError
    from xtalign.projection import ProjectionConfig

    beta, gamma = _parse_decay(args.decay)
    try:
        proj = ProjectionConfig(top_k=args.top_k, max_pieces=args.max_pieces, beta=beta, gamma=gamma,
                                reverse=not args.no_reverse, special_fuzzy_threshold=args.special_fuzzy_threshold)
    except ValueError as exc:
        raise CLIError(f"{exc}; fix the flag (see --help)") from None
    out = args.out or Path("out/projections") / f"{_file_stem(args.student)}__{_file_stem(args.teacher)}.safetensors"
    if args.from_nemo is not None and not args.from_nemo.is_file():
        raise CLIError(f"--from-nemo {args.from_nemo} does not exist; give NeMo RL's top-k projection .pt file")
    return BuildProjectionConfig(student=args.student, teacher=args.teacher, out=str(out), overwrite=args.overwrite,
                                 projection=proj, from_nemo=str(args.from_nemo) if args.from_nemo else None)


def run(args: argparse.Namespace) -> int:
    import time

    from xtalign.cli.common import check_out_file
    from xtalign.config import to_json

    cfg = resolve_config(args)
    if args.dry_run:
        print(to_json(cfg))
        return 0
    out = check_out_file(Path(cfg.out), overwrite=cfg.overwrite)  # refused before any heavy work
    from xtalign.io import save_projection
    from xtalign.zoo import load_tokenizer

    t0 = time.perf_counter()
    student, teacher = load_tokenizer(cfg.student), load_tokenizer(cfg.teacher)
    if cfg.from_nemo:
        from xtalign.cli.common import CLIError
        from xtalign.io import ProjectionFormatError, import_nemo_pt

        try:
            proj = import_nemo_pt(cfg.from_nemo, student=student, teacher=teacher)
        except (ProjectionFormatError, RuntimeError, OSError) as exc:
            raise CLIError(f"cannot import {cfg.from_nemo}: {exc}") from None
        if proj.shape[0] < student.size:
            raise CLIError(f"{cfg.from_nemo} has {proj.shape[0]:,} rows but student {student.name} has "
                           f"{student.size:,} tokens; pass the student the NeMo map was built for")
    else:
        proj = cfg.projection.build(student, teacher)
    save_projection(proj, out)
    _print_summary(proj, out, time.perf_counter() - t0)
    return 0


def _print_summary(proj: Any, out: Path, seconds: float) -> None:
    s = proj.stats
    rows, cols = proj.shape
    print(f"projection {proj.student_name} -> {proj.teacher_name}: [{rows:,} x {cols:,}], top-k {proj.top_k}, "
          f"{s['entries']:,} entries")
    if "normal_rows" in s:
        print(f"  exact      {s['exact_rows']:,} of {s['normal_rows']:,} normal student tokens "
              f"({s['exact_share']:.2%})")
    else:
        print(f"  exact      {s['exact_rows']:,} of the student's normal tokens ({s['exact_share']:.2%})")
    by = [f"{k.replace('_', ' ')} {v:,}" for k, v in s["rows_by_source"].items() if v and k not in ("exact", "empty")]
    if by:
        print("  rows       " + ", ".join(by))
    reasons = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in s.get("empty_by_reason", {}).items() if v)
    print(f"  empty      {s['empty_rows']:,} rows" + (f" ({reasons})" if reasons else ""))
    print(f"  mean       {s['mean_entries_per_row']:.3f} entries per non-empty row")
    print(f"wrote {out} in {seconds:.1f} s")
