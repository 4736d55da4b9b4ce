"""`xtalign inspect`: what a projection file holds, and where given tokens go.

Prints the header (tokenizers, sizes, fingerprints, build config) and summary statistics. For each
--token TEXT the student tokenizer encodes the text; each student id is shown with its bytes, how its
row was filled, and its teacher entries (id, bytes, weight). Tokenizers are loaded by the names stored
in the file (or --student/--teacher) and must match the file's vocabulary fingerprints.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  xtalign inspect out/projections/llama3__qwen3.safetensors --token " the" --token 201
  xtalign inspect out/projections/llama3__qwen3.safetensors --id 128009 --json
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="show a projection file's header, stats and token rows", description=__doc__,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", type=Path, help="projection file written by `xtalign build-projection`")
    p.add_argument("--token", action="append", default=[], metavar="TEXT",
                   help="text to encode with the student tokenizer and show the rows of (repeatable)")
    p.add_argument("--id", action="append", default=[], type=int, metavar="ID", help="student id to show (repeatable)")
    p.add_argument("--student", metavar="NAME", help="student tokenizer to use instead of the name stored in the file")
    p.add_argument("--teacher", metavar="NAME", help="teacher tokenizer to use instead of the name stored in the file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--export-npz", type=Path, metavar="PATH", help="also write W as a scipy CSR .npz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --export-npz file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from xtalign.cli.common import check_out_file

    npz = check_out_file(args.export_npz, overwrite=args.overwrite) if args.export_npz else None
    proj, meta, student, teacher = _load(args)
    report: dict[str, Any] = {"file": str(args.file), "header": _header(proj, meta), "stats": proj.stats, "tokens": []}
    for text in args.token:
        ids = _encode(student, text)
        report["tokens"].append({"text": text, "student_ids": ids, "rows": [_row(proj, student, teacher, i)
                                                                            for i in ids]})
    for sid in args.id:
        if not 0 <= sid < proj.shape[0]:
            from xtalign.cli.common import CLIError

            raise CLIError(f"--id {sid} is outside the student rows [0, {proj.shape[0]}); give a student token id")
        report["tokens"].append({"text": None, "student_ids": [sid], "rows": [_row(proj, student, teacher, sid)]})
    print(json.dumps(report, indent=2, ensure_ascii=False) if args.json else _format(report))
    if npz is not None:
        from xtalign.io import export_npz

        export_npz(proj, npz)
        if not args.json:
            print(f"wrote {npz}")
    return 0


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, str], Any, Any]:
    """The projection, its metadata and, when rows are asked for, the fingerprint-checked tokenizers."""
    from xtalign.cli.common import CLIError
    from xtalign.io import ProjectionFormatError, ProjectionMismatchError, load_projection, read_metadata

    if not args.file.is_file():
        raise CLIError(f"{args.file} does not exist; give a file written by `xtalign build-projection`")
    try:
        meta = read_metadata(args.file)
        student = teacher = None
        if args.token or args.id:
            from xtalign.zoo import load_tokenizer

            student = load_tokenizer(args.student or meta["student_name"])
            teacher = load_tokenizer(args.teacher or meta["teacher_name"])
        proj = load_projection(args.file, student=student, teacher=teacher)
    except (ProjectionFormatError, ProjectionMismatchError) as exc:
        raise CLIError(str(exc)) from None
    return proj, meta, student, teacher


def _header(proj: Any, meta: dict[str, str]) -> dict[str, Any]:
    side = {s: {"name": getattr(proj, f"{s}_name"), "vocab_size": getattr(proj, f"{s}_vocab_size"),
                "model_rows": getattr(proj, f"{s}_model_rows"), "fingerprint": getattr(proj, f"{s}_fingerprint")}
            for s in ("student", "teacher")}
    return {"format": f"{meta['format']} v{meta['format_version']}", "xtalign_version": meta.get("xtalign_version"),
            "shape": list(proj.shape), "top_k": proj.top_k, **side, "config": proj.config}


def _encode(student: Any, text: str) -> list[int]:
    from xtalign.projection import encode_exact

    return encode_exact(student, [text.encode("utf-8")])[0][0]


def _token(tok: Any, tid: int) -> dict[str, Any]:
    """One token for display: id, its bytes (as text with escapes, and hex), or its name if it has no bytes."""
    from xtalign.vocab import TokenKind

    v = tok.vocab
    if tid >= v.size:
        return {"id": tid, "kind": "model_padding", "bytes": None, "hex": ""}
    data = v.token_bytes[tid]
    kind = TokenKind(int(v.kinds[tid])).name.lower()
    if kind in ("normal", "byte"):
        return {"id": tid, "kind": kind, "bytes": data.decode("utf-8", errors="backslashreplace"), "hex": data.hex()}
    return {"id": tid, "kind": kind, "bytes": None, "name": v.names[tid], "hex": ""}


def _row(proj: Any, student: Any, teacher: Any, sid: int) -> dict[str, Any]:
    from xtalign.projection import RowSource

    return {**_token(student, sid), "source": RowSource(int(proj.row_source[sid])).name.lower(),
            "entries": [{**_token(teacher, tid), "weight": round(w, 6)} for tid, w in proj.row(sid)]}


def _show(tok: dict[str, Any]) -> str:
    if tok["bytes"] is None:
        return tok.get("name") or f"<{tok['kind']}>"
    return repr(tok["bytes"])


def _format(report: dict[str, Any]) -> str:
    h, s = report["header"], report["stats"]
    lines = [f"file      {report['file']}  ({h['format']}, written by xtalign {h['xtalign_version']})",
             f"shape     {h['shape'][0]:,} student rows x {h['shape'][1]:,} teacher columns, top-k {h['top_k']}"]
    for side in ("student", "teacher"):
        d = h[side]
        rows = f"  model rows {d['model_rows']:,}" if d["model_rows"] else ""
        lines.append(f"{side}   {d['name']}  vocab {d['vocab_size']:,}{rows}  sha256 {d['fingerprint']}")
    lines.append("config    " + " ".join(f"{k}={v}" for k, v in sorted(h["config"].items())))
    if "exact_rows" in s:
        lines.append(f"stats     exact {s['exact_share']:.2%} ({s['exact_rows']:,} rows), "
                     f"{s['mean_entries_per_row']:.3f} entries per non-empty row, {s['empty_rows']:,} empty rows")
    reasons = s.get("empty_by_reason", {})
    if any(reasons.values()):
        lines.append("empty     " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in reasons.items() if v))
    if s.get("rows_by_source"):
        lines.append("rows      " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in s["rows_by_source"].items()))
    for tok in report["tokens"]:
        ids = " ".join(map(str, tok["student_ids"])) or "(no tokens)"
        lines.append(f"\ntoken {tok['text']!r} -> student {ids}" if tok["text"] is not None else f"\nstudent id {ids}")
        for row in tok["rows"]:
            lines.append(f"  {row['id']:>7} {_show(row)}  [{row['source']}]")
            lines.extend(f"      {e['weight']:.4f}  {e['id']:>7} {_show(e)}" for e in row["entries"])
            if not row["entries"]:
                lines.append("      (empty row)")
    return "\n".join(lines)
