"""Top-k fidelity: what shipping the teacher's top-k logits instead of its full distribution costs.

    .venv/bin/python analysis/corpus.py              # the pinned corpus (held-out Botchan comes from it)
    .venv/bin/python analysis/topk_fidelity.py       # ≈ 5 min on 2 CPU cores, ≈ 6 GB peak
    .venv/bin/python analysis/topk_fidelity.py --plot-only     # redraw the figure and table from the JSON

Real Gemma-3-270M logits (the teacher, V_t = 262,144) and real SmolLM2-135M-Instruct logits (the student,
its own tokenization) over held-out Botchan text of the pinned corpus; W = `build_projection(smollm2,
gemma3)` (the engine's cached default). For each k, the teacher is reduced to `TeacherTopK.from_logits(z, k)`
and three losses are compared with the same loss computed from the full teacher distribution (k = V_t):

- P-KL as the engine ships it (`PKLConfig()`: nemo pooling, one column subset per batch capped at 8,192),
- P-KL with an uncapped subset (`subset_cap = V_t`): the cost of the top-k transport alone,
- H-KL (`GoldConfig(variant="hkl")`, ULD cap 8,192 as in the loss definition).

The reference is P-KL with every teacher column (`subset_cap = V_t`) and H-KL at k = V_t. Reported per k:
the teacher probability mass kept (mean over loss positions of Σ top-k probabilities), the relative error
of the loss, and the cosine between the gradients w.r.t. the student logits (all positions flattened).
A batch is all rows together, as the engine sees them; the full-vocabulary reference is computed row by
row (its chunk KLs do not depend on the other rows) and combined with chunk-count weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from xtalign.losses import GoldConfig, PKLConfig, SparseProjection, TeacherTopK
from xtalign.losses.chunks import ChunkLayout

log = logging.getLogger("topk_fidelity")

ROOT = Path(__file__).resolve().parents[1]
KS = (8, 32, 64, 256, 1024, 8192)
RESULT = ROOT / "out" / "analysis" / "topk_fidelity.json"
TABLE = ROOT / "analysis" / "topk_fidelity.md"
FIGURE = ROOT / "figures" / "topk_fidelity.png"
LOSSES = ("pkl", "pkl_uncapped", "hkl")
LOSS_LABELS = {"pkl": "P-KL (engine: subset cap 8192)", "pkl_uncapped": "P-KL (uncapped subset)", "hkl": "H-KL"}

LossFn = Callable[[Tensor, TeacherTopK, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Inputs:
    """Everything the comparison needs: full teacher and student logits and the prediction chunks."""

    teacher_logits: Tensor  # [B, Tt, V_t] fp32
    student_logits: Tensor  # [B, Ts, V_s] fp32
    student_chunk: Tensor  # [B, Ts] int64 (shifted; -1 = none)
    teacher_chunk: Tensor  # [B, Tt] int64
    projection: SparseProjection


def loss_fns(projection: SparseProjection, v_t: int, *, full: bool) -> dict[str, LossFn]:
    """The compared losses; ``full`` gives the reference versions (every teacher column in the P-KL subset)."""
    cap = v_t if full else PKLConfig().subset_cap
    return {"pkl": PKLConfig(subset_cap=cap).build(projection),
            "pkl_uncapped": PKLConfig(subset_cap=v_t).build(projection),
            "hkl": GoldConfig(variant="hkl").build(projection)}


def loss_and_grad(fn: LossFn, student_logits: Tensor, teacher: TeacherTopK, s_chunk: Tensor,
                  t_chunk: Tensor) -> tuple[float, Tensor]:
    """The loss and its gradient w.r.t. the student logits ``[B, Ts, V_s]``."""
    z = student_logits.detach().requires_grad_(True)
    loss = fn(z, teacher, s_chunk, t_chunk)
    (grad,) = torch.autograd.grad(loss, z)
    return float(loss.detach()), grad


def mass_kept(teacher: TeacherTopK, t_chunk: Tensor) -> tuple[float, float]:
    """Mean and 10th percentile over loss positions (``t_chunk >= 0``) of the teacher mass in the top-k."""
    mass = torch.exp(teacher.logprobs(torch.float64)).sum(-1)[t_chunk >= 0]  # [P]
    return float(mass.mean()), float(torch.quantile(mass, 0.1))


def union_columns(teacher: TeacherTopK, t_chunk: Tensor) -> int:
    """Distinct teacher ids in the top-k of the loss positions: P-KL's per-batch subset before its cap."""
    return int(torch.unique(teacher.ids[t_chunk >= 0]).numel())


def reference(inp: Inputs) -> dict[str, tuple[float, Tensor]]:
    """Full-vocabulary losses and gradients, one row at a time, combined with chunk-count weights."""
    v_t = inp.teacher_logits.shape[-1]
    fns = loss_fns(inp.projection, v_t, full=True)
    rows = range(inp.teacher_logits.shape[0])
    counts = [ChunkLayout.build(inp.student_chunk[r: r + 1], inp.teacher_chunk[r: r + 1]).n_groups for r in rows]
    total = sum(counts)
    out: dict[str, tuple[float, Tensor]] = {}
    for name in ("pkl", "hkl"):
        value, grads = 0.0, []
        for r in rows:
            teacher = TeacherTopK.from_logits(inp.teacher_logits[r: r + 1], v_t)  # k = V_t: everything
            loss, grad = loss_and_grad(fns[name], inp.student_logits[r: r + 1], teacher,
                                       inp.student_chunk[r: r + 1], inp.teacher_chunk[r: r + 1])
            value += loss * counts[r] / total
            grads.append(grad * (counts[r] / total))
            del teacher
        out[name] = (value, torch.cat(grads))  # [B, Ts, V_s]
        log.info("reference %s = %.6f", name, value)
    out["pkl_uncapped"] = out["pkl"]
    return out


def cosine(a: Tensor, b: Tensor) -> float:
    a64, b64 = a.reshape(-1).double(), b.reshape(-1).double()
    return float(a64 @ b64 / (a64.norm() * b64.norm()).clamp_min(1e-300))


def at_k(inp: Inputs, k: int, ref: dict[str, tuple[float, Tensor]]) -> dict[str, Any]:
    """One row of the study: mass kept and, per loss, value, relative error and gradient cosine."""
    v_t = inp.teacher_logits.shape[-1]
    teacher = TeacherTopK.from_logits(inp.teacher_logits, k)
    mean, p10 = mass_kept(teacher, inp.teacher_chunk)
    row: dict[str, Any] = {"k": k, "mass_kept": mean, "mass_kept_p10": p10,
                           "bytes_per_position": 6 * k + 4,  # bf16 value + int32 id per kept logit, fp32 lse
                           "union_columns": union_columns(teacher, inp.teacher_chunk)}
    for name, fn in loss_fns(inp.projection, v_t, full=False).items():
        t0 = time.perf_counter()
        value, grad = loss_and_grad(fn, inp.student_logits, teacher, inp.student_chunk, inp.teacher_chunk)
        ref_value, ref_grad = ref[name]
        row[name] = {"loss": value, "reference": ref_value, "rel_error": (value - ref_value) / abs(ref_value),
                     "grad_cosine": cosine(grad, ref_grad), "seconds": time.perf_counter() - t0}
    log.info("k=%d: mass %.4f, %s", k, mean, ", ".join(
        f"{n} err {row[n]['rel_error']:+.4f} cos {row[n]['grad_cosine']:.4f}" for n in LOSSES))
    return row


def study(inp: Inputs, ks: Sequence[int] = KS) -> list[dict[str, Any]]:
    """Every k of ``ks`` against the full-vocabulary reference."""
    ref = reference(inp)
    return [at_k(inp, k, ref) for k in ks]


# --- real models and text ----------------------------------------------------------------------------------


def heldout_text(path: Path, source: str) -> str:
    """The held-out documents of one source of the pinned corpus, joined by blank lines."""
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist; build the corpus first: .venv/bin/python analysis/corpus.py")
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [d["text"] for d in docs if d.get("source") == source]
    if not texts:
        raise SystemExit(f"error: {path} has no held-out document from source {source!r}; rebuild the corpus")
    return "\n\n".join(texts)


def windows(text: str, n_rows: int, seq: int, student: Any, teacher: Any) -> list[str]:
    """``n_rows`` consecutive pieces of ``text``, each cut at a common boundary to ≤ seq − 1 tokens per side."""
    from xtalign.align import truncate_text

    out, rest = [], text
    for _ in range(n_rows):
        cut = truncate_text(rest, student=student, teacher=teacher, max_student_tokens=seq - 1,
                            max_teacher_tokens=seq - 1)
        out.append(cut.text)
        rest = rest[len(cut.text):].lstrip()
    return out


@torch.no_grad()
def full_logits(model: Any, ids: Any, lengths: Any) -> Tensor:
    """Full-vocabulary logits ``[B, T, V]`` (fp32) of a right-padded batch (-1 = padding)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)  # [B, T]
    mask = torch.arange(ids_t.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]  # [B, T]
    out = model(input_ids=ids_t.clamp_min(0), attention_mask=mask.long(), use_cache=False)
    return out.logits.float()  # [B, T, V]


def real_inputs(corpus: Path, n_rows: int, seq: int) -> tuple[Inputs, dict[str, Any]]:
    """Gemma-3-270M and SmolLM2-135M logits over held-out Botchan, aligned, plus W."""
    from xtalign.align import align_texts
    from xtalign.distill.config import ProjectionSpec
    from xtalign.distill.losses import fit_projection
    from xtalign.distill.models import load_model
    from xtalign.distill.plan import resolve_projection
    from xtalign.zoo import load_tokenizer

    s_tok, t_tok = load_tokenizer("smollm2"), load_tokenizer("gemma3")
    texts = windows(heldout_text(corpus / "heldout.jsonl", "botchan"), n_rows, seq, s_tok, t_tok)
    al = align_texts(texts, student=s_tok, teacher=t_tok, add_bos=True)
    shifted = al.shifted()
    teacher = load_model(model="gemma3-270m")
    t_logits = full_logits(teacher.model, al.teacher_ids, al.teacher_len)  # [B, Tt, V_t]
    t_rows = teacher.rows
    del teacher
    student = load_model(model="smollm2-135m")
    s_logits = full_logits(student.model, al.student_ids, al.student_len)  # [B, Ts, V_s]
    proj, where = resolve_projection(ProjectionSpec(), s_tok, t_tok)
    indices, weights = fit_projection(proj, student_rows=student.rows, teacher_rows=t_rows)
    w = SparseProjection(indices=torch.as_tensor(indices), weights=torch.as_tensor(weights), teacher_vocab_size=t_rows)
    inp = Inputs(t_logits, s_logits, torch.as_tensor(shifted.student_chunk), torch.as_tensor(shifted.teacher_chunk), w)
    manifest = json.loads((corpus / "manifest.json").read_text())
    setup = {"teacher": "gemma3-270m (Gemma-3-270M base, GGUF Q4_K_M, dequantised to fp32)",
             "student": "smollm2-135m (SmolLM2-135M-Instruct, GGUF Q4_1, dequantised to fp32)",
             "projection": where, "corpus_sha256": manifest["sha256"], "text": "held-out Botchan (botchan:*)",
             "rows": n_rows, "text_bytes": sum(len(t.encode()) for t in texts),
             "student_tokens": int(al.student_len.sum()), "teacher_tokens": int(al.teacher_len.sum()),
             "chunks": int(al.n_chunks.sum()), "teacher_vocab": int(t_logits.shape[-1]),
             "student_vocab": int(s_logits.shape[-1])}
    return inp, setup


# --- outputs ---------------------------------------------------------------------------------------------


def to_markdown(result: dict[str, Any]) -> str:
    """The committed table (no dates in it, so regenerating only changes real numbers)."""
    s = result["setup"]
    lines = [
        f"Top-k fidelity: Gemma-3-270M teacher (V_t = {s['teacher_vocab']:,}) → SmolLM2-135M-Instruct student "
        f"logits, {s['rows']} rows of held-out Botchan ({s['teacher_tokens']:,} teacher / {s['student_tokens']:,} "
        f"student tokens, {s['chunks']:,} chunks), corpus sha256 `{s['corpus_sha256'][:16]}…`. Reference: the same "
        "loss from the full teacher distribution. Error = (loss_k − loss_full) / loss_full; cos = cosine of the "
        "gradients w.r.t. the student logits. Generated by `analysis/topk_fidelity.py`.",
        "",
        "| k | bytes/position | teacher mass kept | top-k union (columns) | P-KL, cap 8,192 (engine): error | cos "
        "| P-KL, no cap: error | cos | H-KL: error | cos |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        union = f"{r['union_columns']:,}" if "union_columns" in r else "–"
        cells = [f"{r['k']:,}", f"{r['bytes_per_position']:,}", f"{r['mass_kept']:.4f}", union]
        for name in LOSSES:
            cells += [f"{100 * r[name]['rel_error']:+.2f} %", f"{r[name]['grad_cosine']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ref = result["rows"][0]
    lines += ["", f"Full-vocabulary reference: P-KL = {ref['pkl']['reference']:.4f}, H-KL = "
              f"{ref['hkl']['reference']:.4f} (nats per chunk). Top-k union: distinct teacher ids in the top-k of "
              "the batch's loss positions, P-KL's column subset; above 8,192 the engine keeps the 8,192 with the "
              "highest log-prob, which is where its error grows. The engine's default k is 64."]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Three small panels against k (log x): teacher mass kept, |relative loss error|, gradient cosine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    ks = [r["k"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), constrained_layout=True)
    axes[0].plot(ks, [r["mass_kept"] for r in rows], "o-", color="black")
    axes[0].set(title="teacher mass kept", ylabel="mean Σ top-k p", ylim=(min(0.9, rows[0]["mass_kept"] - 0.02), 1.0))
    for name, marker in zip(LOSSES, "osd", strict=True):
        axes[1].plot(ks, [max(abs(r[name]["rel_error"]), 1e-6) for r in rows], marker + "-", label=LOSS_LABELS[name])
        axes[2].plot(ks, [r[name]["grad_cosine"] for r in rows], marker + "-", label=LOSS_LABELS[name])
    axes[1].set(title="|relative loss error|", yscale="log")
    axes[2].set(title="gradient cosine vs full", ylim=(None, 1.0))
    axes[2].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks], fontsize=7, rotation=30)
        ax.axvline(64, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("teacher top-k")
        ax.grid(alpha=0.3)
    s = result["setup"]
    fig.suptitle(f"Top-k teacher transport vs full {s['teacher_vocab']:,}-token distribution "
                 f"(Gemma-3-270M → SmolLM2 logits, held-out Botchan; dotted: default k = 64)", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_outputs(result: dict[str, Any], json_path: Path, table: Path, figure: Path) -> None:
    from xtalign.cli.common import dump_json, write_atomic

    json_path.parent.mkdir(parents=True, exist_ok=True)
    dump_json(json_path, result)
    table.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(table, to_markdown(result))
    plot(result, figure)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "out" / "corpus", help="analysis/corpus.py output")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256, help="max tokens per row on each side (bos included)")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--table", type=Path, default=TABLE)
    ap.add_argument("--figure", type=Path, default=FIGURE)
    ap.add_argument("--plot-only", action="store_true", help="redraw table and figure from --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.plot_only:
        result = json.loads(args.out.read_text())
    else:
        from xtalign.cli.common import provenance

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        inp, setup = real_inputs(args.corpus, args.rows, args.seq)
        rows = study(inp, args.ks)
        result = {"provenance": provenance(), "setup": {**setup, "threads": args.threads,
                                                        "seconds": round(time.perf_counter() - t0, 1)},
                  "rows": rows}
    write_outputs(result, args.out, args.table, args.figure)
    print(f"wrote {args.out}, {args.table} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
