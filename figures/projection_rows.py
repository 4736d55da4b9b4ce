"""Projection rows in the style of the X-Token guide's colour-matching figure, from a real W.

    .venv/bin/python figures/projection_rows.py                  # llama3 student → qwen3 teacher (W ≈ 4 s, cached)
    .venv/bin/python figures/projection_rows.py --from out/figures/projection_rows.json   # redraw only

Each row is one student token and where W sends its probability mass: ` the`, ` cat`, ` run` exist in
the teacher vocabulary (one entry, weight 1); `201` is one Llama-3 token but Qwen3 splits digits, so it
decomposes into `2`, `0`, `1` with weights β·γ^i normalised (0.9009 / 0.0901 / 0.0090); a Greek word that
Qwen3 spells letter by letter is cut after `max_pieces` (= the row's top-k, 4) pieces; the pieces past
the cut (grey) get no weight. The rows, their weights and the teacher's full re-encoding are written to
out/figures/projection_rows.json first, so the figure redraws without the tokenizers.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORDS = (" the", " cat", " run", "201", " περιοχή")
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
SOURCE_NAMES = {1: "exact", 2: "decomposed", 3: "byte", 4: "special (role)", 5: "special (fuzzy)"}


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="backslashreplace")


def row_of(word: str, student: Any, teacher: Any, projection: Any) -> dict[str, Any]:
    """One student token: its W row (teacher ids, texts, weights) and the teacher's full re-encoding of it."""
    ids = student.encode(word)
    if len(ids) != 1:
        raise SystemExit(f"error: {word!r} is {len(ids)} {student.name} tokens, not one; choose a single-token word")
    sid = int(ids[0])
    entries = [{"id": int(t), "text": _text(teacher.vocab.token_bytes[t]), "weight": round(float(w), 4)}
               for t, w in projection.row(sid)]
    pieces = [{"id": int(t), "text": _text(teacher.vocab.token_bytes[t])} for t in teacher.encode(word)]
    return {"word": word, "student_id": sid, "source": SOURCE_NAMES.get(int(projection.row_source[sid]), "other"),
            "entries": entries, "teacher_pieces": pieces}


def compute(student_name: str, teacher_name: str, words: Sequence[str]) -> dict[str, Any]:
    """The rows of a real projection (built with the engine's defaults, cached like the engine's)."""
    from xtalign.distill.config import ProjectionSpec
    from xtalign.distill.student.plans import resolve_projection
    from xtalign.zoo import load_tokenizer

    student, teacher = load_tokenizer(student_name), load_tokenizer(teacher_name)
    projection, where = resolve_projection(ProjectionSpec(), student, teacher)
    return {"student": student_name, "teacher": teacher_name, "projection": where,
            "top_k": projection.top_k, "max_pieces": int(projection.config.get("max_pieces", projection.top_k)),
            "rows": [row_of(w, student, teacher, projection) for w in words]}


def _cells(row: dict[str, Any], max_pieces: int) -> list[tuple[str, float | None]]:
    """What to draw right of a student token: (teacher text, weight or None = past the cut)."""
    if row["source"] != "decomposed":
        return [(e["text"], e["weight"]) for e in row["entries"]]
    weights = {e["id"]: e["weight"] for e in row["entries"]}
    cells: list[tuple[str, float | None]] = []
    for i, p in enumerate(row["teacher_pieces"]):
        kept = i < max_pieces and p["id"] in weights
        cells.append((p["text"], weights.pop(p["id"]) if kept else None))
    return cells


def _box(ax: Any, x: float, y: float, text: str, colour: str, alpha: float, hatch: str | None = None) -> None:
    from matplotlib.patches import FancyBboxPatch

    ax.add_patch(FancyBboxPatch((x - 0.42, y - 0.3), 0.84, 0.6, boxstyle="round,pad=0.02,rounding_size=0.08",
                                facecolor=colour, alpha=alpha, edgecolor="0.25", lw=0.8, hatch=hatch))
    ax.text(x, y, repr(text)[1:-1].replace(" ", "␣"), ha="center", va="center", fontsize=10)


def plot(data: dict[str, Any], path: Path) -> None:
    """One line per student token: its box, an arrow, then the teacher pieces coloured by weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["rows"]
    widest = max(len(_cells(r, data["max_pieces"])) for r in rows)
    fig, ax = plt.subplots(figsize=(2.2 + 0.95 * widest + 1.6, 0.85 * len(rows) + 1.0), dpi=100)
    for i, row in enumerate(rows):
        y, colour = len(rows) - 1 - i, COLOURS[i % len(COLOURS)]
        _box(ax, 0.0, y, row["word"], colour, 0.9)
        ax.annotate("", xy=(1.05, y), xytext=(0.5, y), arrowprops={"arrowstyle": "->", "color": "0.3"})
        cells = _cells(row, data["max_pieces"])
        for j, (text, weight) in enumerate(cells):
            x = 1.6 + 0.95 * j
            if weight is None:
                _box(ax, x, y, text, "0.85", 0.6, hatch="//")
            else:
                _box(ax, x, y, text, colour, 0.15 + 0.8 * weight ** 0.35)
                ax.text(x, y - 0.42, f"{weight:.4f}", ha="center", va="top", fontsize=7.5)
        if any(w is None for _, w in cells):
            cut = 1.6 + 0.95 * (data["max_pieces"] - 0.5)
            ax.plot([cut, cut], [y - 0.45, y + 0.45], color="#c44e52", ls="--", lw=1.4)
            ax.text(cut + 0.05, y + 0.38, f"top-k cut (k = {data['max_pieces']})", color="#c44e52", fontsize=7.5)
        ax.text(1.6 + 0.95 * widest, y, row["source"], ha="left", va="center", fontsize=8, color="0.35")
    ax.set_xlim(-0.6, 1.6 + 0.95 * widest + 1.3)
    ax.set_ylim(-0.8, len(rows) - 0.4)
    ax.axis("off")
    ax.set_title(f"Projection rows: {data['student']} student token → {data['teacher']} teacher tokens "
                 f"(W, top-k = {data['top_k']}; shade = weight)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="llama3")
    ap.add_argument("--teacher", default="qwen3")
    ap.add_argument("--words", nargs="+", default=list(WORDS), help="single student tokens (quote leading spaces)")
    ap.add_argument("--from", dest="src", type=Path, help="a projection_rows.json to redraw (else computed)")
    ap.add_argument("--json", type=Path, default=ROOT / "out" / "figures" / "projection_rows.json")
    ap.add_argument("--out", type=Path, default=HERE / "projection_rows.png")
    args = ap.parse_args(argv)
    if args.src:
        data = json.loads(args.src.read_text(encoding="utf-8"))
    else:
        data = compute(args.student, args.teacher, args.words)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    plot(data, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
