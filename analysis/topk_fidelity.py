"""Top-k fidelity: what the engine's top-k teacher transport costs against the full teacher distribution.

    .venv/bin/python analysis/corpus.py                                   # the pinned corpus (out/corpus/)
    nice -n 5 .venv/bin/python analysis/topk_fidelity.py --allow-dirty   # the study (≈ 40 min on 2 CPU cores)
    .venv/bin/python analysis/topk_fidelity.py --plot-only                # redraw the table and figure from the JSON
    .venv/bin/python analysis/topk_fidelity.py --smoke --allow-dirty --out /tmp/t.json --table /tmp/t.md \\
        --figure /tmp/t.png                                               # tiny random-init models (the test, ≈ 30 s)

Drop ``--allow-dirty`` on a clean tree (the provenance then names the commit alone). Writes
``benchmarks/results/topk_fidelity.json`` (every number), ``analysis/topk_fidelity.md`` and
``figures/topk_fidelity.png``.

What is measured. The teacher side is the engine's own: ``TeacherWorker.forward`` of the real Gemma-3-270M
(V_t = 262,144) over the batch the engine's ``BatchBuilder`` makes (seq_len 2,048, bos added), i.e. bf16 top-k
logits, int32 ids, the fp32 logsumexp over the full vocabulary and the fp32 target log-prob, 6k + 8 bytes per
position (``wire.answer_nbytes``). It runs ONCE per text at k_max = 256 over 8 rows; every smaller k is its
truncation (exact: ids and logits truncate, the logsumexp does not depend on k), and the 4 × 2,048 geometry is its
first 4 rows (rows are independent in the forward pass). The student is the real SmolLM2-135M-Instruct; W is the
engine's cached default (``resolve_projection`` + ``fit_projection``). The losses are the engine's modules built
from ``plans.loss_config`` of a default ``TeacherConfig`` (P-KL with ``subset: per_batch``, cap 8,192, and
``per_chunk``; H-KL; GOLD; ULD), prepared on the whole batch as the engine prepares them.

The reference is the same loss from the teacher's full fp32 distribution: the worker's own fp32 logits of each
LM-head slice are kept (``CapturingWorker``) only at the teacher positions of the evaluated chunks, and the loss
at k = V_t is computed from them (``pkl_reference``, ``gold_reference``: the engine's formulas with every teacher
id exact, checked against the engine's modules at k = V_t in tests/test_topk_fidelity.py). Both sides are
evaluated on the same windows of whole chunks (``--windows-per-row`` × ≈ ``--window`` student positions per row,
spread along each row); every chunk's value and its student-logit gradient depend only on its own positions, so
a window's numbers are exactly the batch's numbers there. Per (text, geometry, loss, k): the gradient cosine
(student-logit gradient of the top-k loss vs the reference, over all evaluated positions), the relative loss
error (Σ top-k − Σ reference) / Σ reference over the evaluated chunks, the teacher mass kept and, for P-KL
``per_batch``, the batch's top-k union and whether the 8,192 cap binds (and how much kept mass it drops).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xtalign.distill.teacher.worker import TeacherWorker
from xtalign.losses import ChunkLayout, SparseProjection, TeacherTopK
from xtalign.losses.chunks import group_mean
from xtalign.losses.stages import PreparedLoss, Window
from xtalign.losses.types import LOG_FLOOR

log = logging.getLogger("topk_fidelity")

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "topk_fidelity.json"
TABLE = ROOT / "analysis" / "topk_fidelity.md"
FIGURE = ROOT / "figures" / "topk_fidelity.png"
KS = (8, 16, 32, 64, 128, 256)
SOURCES = ("botchan", "docutils", "sphinx", "pytest")
SEQ_LEN = 2048
GEOMETRIES = (4, 8)  # rows per micro-batch: smollm2-from-gemma3 (8) and llama-1b-from-qwen3-4b / CPU recipes (4)
DEFAULT_K = 64
LOSSES = ("pkl_per_batch", "pkl_per_chunk", "pkl_nocap", "hkl", "gold", "uld")
LABELS = {"pkl_per_batch": "P-KL, per_batch (cap 8,192)", "pkl_per_chunk": "P-KL, per_chunk",
          "pkl_nocap": "P-KL, per_batch, no cap", "hkl": "H-KL", "gold": "GOLD", "uld": "ULD"}
REFERENCE_OF = {"pkl_per_batch": "pkl", "pkl_per_chunk": "pkl", "pkl_nocap": "pkl", "hkl": "hkl", "gold": "gold",
                "uld": "uld"}
BATCH_DEPENDENT = ("pkl_per_batch", "pkl_nocap")  # the others' chunk values depend on the chunk's own positions


# --- the engine's teacher output, and the fp32 rows behind it ---------------------------------------------------


class CapturingWorker(TeacherWorker):
    """The engine's ``TeacherWorker``, also keeping its fp32 logits rows at chosen flat positions.

    ``forward`` runs the LM head over consecutive slices of the flattened ``[B·T]`` positions, one
    ``_logits`` call per slice in order; each call's rows that are wanted are copied out. Nothing else
    changes: the returned ``TeacherTopK`` is the engine's.
    """

    def capture(self, positions: Tensor) -> None:
        """Keep the fp32 logits of the flat teacher positions ``positions`` (sorted, distinct) on the next forward."""
        self._want = positions.long()
        self._rows = torch.empty(positions.shape[0], self.loaded.rows, dtype=torch.float32)  # [n, V_t]
        self._offset = 0

    def forward(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> TeacherTopK:
        self._offset = 0
        return super().forward(ids, lengths, targets)

    def _logits(self, h: Tensor) -> Tensor:
        z = super()._logits(h)  # [S, V]
        want = getattr(self, "_want", None)
        if want is not None:
            a, b = self._offset, self._offset + h.shape[0]
            lo, hi = int(torch.searchsorted(want, a)), int(torch.searchsorted(want, b))
            if hi > lo:
                self._rows[lo:hi] = z[want[lo:hi] - a].cpu()
            self._offset = b
        return z

    def captured(self) -> tuple[Tensor, Tensor]:
        """``(positions [n], fp32 logits [n, V_t])`` of the last forward."""
        return self._want, self._rows


def truncate(teacher: TeacherTopK, k: int, rows: int | None = None) -> TeacherTopK:
    """The worker's answer at top-``k`` (≤ its k) on its first ``rows`` rows: a pure slice, nothing recomputed."""
    b = slice(None) if rows is None else slice(0, rows)
    tl = None if teacher.target_logprob is None else teacher.target_logprob[b]
    return TeacherTopK(logits=teacher.logits[b, :, :k], ids=teacher.ids[b, :, :k], logsumexp=teacher.logsumexp[b],
                       vocab_size=teacher.vocab_size, temperature=teacher.temperature, target_logprob=tl)


def bytes_per_position(k: int) -> int:
    """The engine's price of one teacher position at top-k: bf16 logit + int32 id per kept id, fp32 lse + target."""
    from xtalign.distill.teacher.wire import answer_nbytes

    return answer_nbytes(1, k)


# --- teacher-side statistics of a batch --------------------------------------------------------------------------


def mass_kept(teacher: TeacherTopK, positions: Tensor) -> tuple[float, float]:
    """Mean and 10th percentile over flat teacher ``positions`` of the teacher mass on its kept ids."""
    lp = teacher.logprobs(torch.float64).reshape(-1, teacher.k)[positions]  # [P, K]
    mass = lp.exp().sum(-1)  # [P]
    return float(mass.mean()), float(torch.quantile(mass, 0.1))


def union_size(teacher: TeacherTopK, positions: Tensor) -> int:
    """Distinct teacher ids in the top-k of ``positions``: P-KL's per-batch subset before its cap."""
    return int(torch.unique(teacher.ids.reshape(-1, teacher.k)[positions]).numel())


def subset_stats(prepared: Any) -> dict[str, Any]:
    """What the engine's per-batch subset kept: its columns and the share of the kept teacher mass it dropped.

    ``prepared.columns.t_slot [P_t, K]`` is −1 where a kept teacher id is outside the (capped) subset.
    """
    cols = prepared.columns
    mass = prepared.lp_t.double().exp()  # [P_t, K]
    lost = float(mass[cols.t_slot < 0].sum() / mass.sum())
    return {"subset_columns": int(cols.n_cols), "mass_lost_to_cap": lost}


def bf16_error(teacher: TeacherTopK, positions: Tensor, rows: Tensor) -> dict[str, float]:
    """How far the shipped bf16 logits and fp32 logsumexp are from the fp32 logits ``rows [n, V_t]`` there."""
    k = teacher.k
    ids = teacher.ids.reshape(-1, k)[positions].long()  # [n, K]
    exact = rows.gather(1, ids)  # [n, K]
    diff = (teacher.logits.reshape(-1, k)[positions].float() - exact).abs()
    lse = torch.logsumexp(rows, dim=-1)  # [n]
    return {"max_abs_logit": float(diff.max()), "mean_abs_logit": float(diff.mean()),
            "max_abs_logsumexp": float((teacher.logsumexp.reshape(-1)[positions] - lse).abs().max())}


# --- evaluation windows -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalWindow:
    """Flat student rows ``[lo, hi)`` of batch row ``row``: whole chunks only."""

    row: int
    lo: int
    hi: int


def allowed_cuts(layout: ChunkLayout, n_flat: int) -> Tensor:
    """``[n_flat + 1]`` True where a cut before that flat student position splits no chunk."""
    first, last = layout.group_spans()
    inside = torch.zeros(n_flat + 2, dtype=torch.long)
    inside.index_add_(0, first + 1, torch.ones_like(first)).index_add_(0, last + 1, -torch.ones_like(last))
    return torch.cumsum(inside, 0)[: n_flat + 1] == 0


def plan_windows(layout: ChunkLayout, lengths: Sequence[int], seq: int, per_row: int, size: int) -> list[EvalWindow]:
    """``per_row`` windows of ≈ ``size`` student positions per row, spread along it (a row-dependent phase).

    Each window starts at the first allowed cut at or after its target and ends at the first allowed cut at
    or after start + size, so it holds whole chunks; windows without a chunk are dropped.
    """
    ok = allowed_cuts(layout, len(lengths) * seq)
    cuts = torch.nonzero(ok).squeeze(1)
    first = layout.group_spans()[0]
    out = []
    for r, n in enumerate(lengths):
        span = max(0, int(n) - size)
        phase = (r * 0.6180339887) % 1.0
        for j in range(per_row):
            start = r * seq + int(span * (j + phase) / per_row)
            lo = int(cuts[torch.searchsorted(cuts, start)])
            hi = int(cuts[torch.searchsorted(cuts, min(lo + size, r * seq + int(n)))])
            if hi > lo and bool(((first >= lo) & (first < hi)).any()):
                out.append(EvalWindow(r, lo, hi))
    return sorted(set(out), key=lambda w: w.lo)


def window_of(prepared: PreparedLoss, w: EvalWindow) -> Window:
    """The engine's ``Window`` of ``prepared`` for flat student rows ``[w.lo, w.hi)`` (the slice's logits rows)."""
    pos, first = prepared.positions, prepared.group_first
    pa, pb = int(torch.searchsorted(pos, w.lo)), int(torch.searchsorted(pos, w.hi))
    ga, gb = int(torch.searchsorted(first, w.lo)), int(torch.searchsorted(first, w.hi))
    return Window(pos[pa:pb] - w.lo, (pa, pb), (ga, gb))


def layout_window(layout: ChunkLayout, w: EvalWindow) -> ChunkLayout:
    """The chunks of window ``w`` of an ordered layout, student positions local to the slice."""
    first = layout.group_spans()[0]
    pos = layout.student_pos
    pa, pb = int(torch.searchsorted(pos, w.lo)), int(torch.searchsorted(pos, w.hi))
    ga, gb = int(torch.searchsorted(first, w.lo)), int(torch.searchsorted(first, w.hi))
    bounds = layout.teacher_bounds()
    return layout.window(pos[pa:pb] - w.lo, (pa, pb), (ga, gb), (bounds[ga], bounds[gb]))


# --- references: the engine's losses with every teacher id exact (k = V_t) ----------------------------------------


@dataclass(frozen=True)
class ReachIndex:
    """W's non-zero entries: student row, column among the teacher ids W reaches (R), weight; ``reached [V_t]``."""

    entry_row: Tensor
    entry_col: Tensor
    entry_w: Tensor
    reached: Tensor

    @classmethod
    def of(cls, w: SparseProjection) -> ReachIndex:
        live = w.weights > 0  # [V_s, k]
        rows = torch.arange(w.indices.shape[0])[:, None].expand_as(w.indices)[live]  # [E]
        uniq, inv = torch.unique(w.indices.long()[live], return_inverse=True)  # [R], [E]
        reached = torch.zeros(w.teacher_vocab_size, dtype=torch.bool)
        reached[uniq] = True
        return cls(rows, inv, w.weights[live].float(), reached)

    @property
    def n_cols(self) -> int:
        return int(self.reached.sum())


def teacher_logprobs(logits: Tensor) -> Tensor:
    """Floored fp32 log-probs ``[P, V_t]`` of full teacher logits, as ``TeacherTopK.logprobs`` + ``teacher_rows``."""
    return (logits - torch.logsumexp(logits, dim=-1, keepdim=True)).clamp_min(LOG_FLOOR)


def pkl_reference(z: Tensor, layout: ChunkLayout, teacher_lp: Tensor, reach: ReachIndex, eps: float) -> Tensor:
    """``[g]`` forward nemo P-KL per chunk with every teacher column in the subset (``PKLLoss`` at k = V_t, T = 1).

    ``z [S, V_s]``: the slice's student logits (``layout.student_pos`` are its rows); ``teacher_lp [P_t, V_t]``:
    floored log-probs of the layout's teacher entries. Columns W never reaches get q = 0, so their part is
    summed in closed form: Σ_{v∉R} p (L − log eps) + log Z · Σ_v p with Z = Σ_R q̄ + V_t·eps.
    """
    v_t = teacher_lp.shape[1]
    lt = group_mean(torch.log_softmax(teacher_lp, dim=-1), layout.teacher_group, layout.teacher_count)  # [g, V_t]
    pt = lt.exp()
    mass = pt.sum(-1)  # [g]
    lt_r, pt_r = lt[:, reach.reached], pt[:, reach.reached]  # [g, R]
    off_a = (pt * lt).sum(-1) - (pt_r * lt_r).sum(-1)
    off_b = mass - pt_r.sum(-1)
    p = torch.softmax(z[layout.student_pos], dim=-1)  # [P_s, V_s]
    q = p.new_zeros(p.shape[0], reach.n_cols).index_add(1, reach.entry_col, p[:, reach.entry_row] * reach.entry_w)
    qm = group_mean(q, layout.student_group, layout.student_count)  # [g, R]
    log_z = torch.log(qm.sum(-1) + v_t * eps)  # [g]
    on_r = (pt_r * (lt_r - torch.log(qm + eps))).sum(-1)
    return on_r + off_a - math.log(eps) * off_b + log_z * mass


def gold_reference(ls: Tensor, lt: Tensor, common: tuple[Tensor, Tensor] | None, cap: int,
                   weights: tuple[float, float] = (1.0, 1.0)) -> Tensor:
    """``[g]`` GOLD / H-KL (``common`` = one-to-one (student ids, teacher ids)) or ULD (None) per chunk, forward.

    ``ls [g, V_s]``: pooled student log-probs; ``lt [g, V_t]``: pooled floored teacher log-probs, every id exact
    (``GoldLoss`` / ``ULDLoss`` at k = V_t). Common term Σ_pairs p_t (ℓ_t − ℓ_s); ULD term: L1 between the
    sorted probabilities of the non-common ids of both sides, n = min(cap, max(|V_s∖C|, |V_t∖C|)) ranks,
    the shorter side padded with zeros.
    """
    v_s, v_t = ls.shape[1], lt.shape[1]
    n_c = 0 if common is None else int(common[0].numel())
    out = ls.new_zeros(ls.shape[0])
    if common is not None and n_c and weights[0] > 0:
        ltc = lt[:, common[1]]  # [g, n_c]
        out = out + weights[0] * (ltc.exp() * (ltc - ls[:, common[0]])).sum(-1)
    if weights[1] > 0:
        n_s, n_t = v_s - n_c, v_t - n_c
        n = min(cap, max(n_s, n_t))
        ls_u = ls if common is None else ls.index_fill(1, common[0], float("-inf"))
        lt_u = lt if common is None else lt.index_fill(1, common[1], float("-inf"))
        us = torch.topk(ls_u, min(n, n_s), dim=-1).values.exp()
        ut = torch.topk(lt_u, min(n, n_t), dim=-1).values.exp()
        out = out + weights[1] * (F.pad(us, (0, n - us.shape[1])) - F.pad(ut, (0, n - ut.shape[1]))).abs().sum(-1)
    return out


def pooled_student(z: Tensor, layout: ChunkLayout) -> Tensor:
    """``[g, V_s]`` chunk means of ``log_softmax(z)`` at the layout's rows of ``z`` (T = 1), as GOLD / ULD pool."""
    return group_mean(F.log_softmax(z[layout.student_pos], dim=-1), layout.student_group, layout.student_count)


def pooled_grad(z: Tensor, layout: ChunkLayout, g_ls: Tensor) -> Tensor:
    """``dL/dz [S, V_s]`` from ``dL/dℓ [g, V_s]`` where ``ℓ_c = mean_{i∈c} log_softmax(z_i)``.

    ``dL/dz_i = (G_c − softmax(z_i) Σ_v G_c,v) / m_c`` for position i of chunk c (m_c positions).
    """
    grp = layout.student_group
    p = torch.softmax(z[layout.student_pos], dim=-1)  # [P, V_s]
    gi = (g_ls[grp] - p * g_ls.sum(-1)[grp][:, None]) / layout.student_count[grp].to(z.dtype)[:, None]
    out = torch.zeros_like(z)
    out[layout.student_pos] = gi
    return out


def value_and_grad(fn: Any, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(x) [g] detached, d Σ fn(x) / dx)``."""
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        values = fn(leaf)
        (grad,) = torch.autograd.grad(values.sum(), leaf)
    return values.detach(), grad


# --- the losses ---------------------------------------------------------------------------------------------------


def engine_losses(projection: SparseProjection) -> dict[str, torch.nn.Module]:
    """The engine's loss modules, from ``plans.loss_config`` of a default ``TeacherConfig``: P-KL ``per_batch``
    (cap 8,192), ``per_chunk`` and ``per_batch`` with the cap at V_t (a diagnostic: what the cap costs)."""
    from xtalign.distill.config import TeacherConfig
    from xtalign.distill.student.plans import loss_config

    base = TeacherConfig(model="gemma3-270m")
    chunk = dataclasses.replace(base, subset="per_chunk")
    nocap = dataclasses.replace(base, subset_cap=projection.teacher_vocab_size)
    return {"pkl_per_batch": loss_config("p-kl", base).build(projection),
            "pkl_per_chunk": loss_config("p-kl", chunk).build(projection),
            "pkl_nocap": loss_config("p-kl", nocap).build(projection),
            "hkl": loss_config("h-kl", base).build(projection), "gold": loss_config("gold", base).build(projection),
            "uld": loss_config("uld", base).build()}


@dataclass(frozen=True)
class References:
    """What the references need besides the window: W's reach, the common sets, the configs' constants."""

    reach: ReachIndex
    eps: float
    common: dict[str, tuple[Tensor, Tensor] | None]
    caps: dict[str, int]
    weights: dict[str, tuple[float, float]]

    @classmethod
    def of(cls, projection: SparseProjection, losses: dict[str, torch.nn.Module]) -> References:
        for name, loss in losses.items():
            cfg = loss.config
            if cfg.temperature != 1.0 or getattr(cfg, "direction", "forward") != "forward":
                raise ValueError(f"{name}: the references assume T = 1 and the forward direction")
        if losses["pkl_per_batch"].config.aggregation != "nemo":
            raise ValueError("the P-KL reference implements the nemo aggregation")
        common = {n: (losses[n].common_student, losses[n].common_teacher) for n in ("hkl", "gold")}
        caps = {"hkl": losses["hkl"].config.uld_cap, "gold": losses["gold"].config.uld_cap,
                "uld": losses["uld"].config.cap}
        weights = {n: (losses[n].config.common_weight, losses[n].config.uld_weight) for n in ("hkl", "gold")}
        return cls(ReachIndex.of(projection), losses["pkl_per_batch"].config.eps, {**common, "uld": None}, caps,
                   {**weights, "uld": (0.0, 1.0)})

    def evaluate(self, z: Tensor, layout: ChunkLayout, teacher_lp: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """Reference ``(values [g], dΣ/dz [S, V_s])`` of P-KL, H-KL, GOLD and ULD on one window."""
        out = {"pkl": value_and_grad(lambda x: pkl_reference(x, layout, teacher_lp, self.reach, self.eps), z)}
        lt = group_mean(teacher_lp, layout.teacher_group, layout.teacher_count)  # [g, V_t]
        ls = pooled_student(z, layout)
        for name in ("hkl", "gold", "uld"):
            def fn(x: Tensor, name: str = name) -> Tensor:
                return gold_reference(x, lt, self.common[name], self.caps[name], self.weights[name])

            values, g_ls = value_and_grad(fn, ls)
            out[name] = (values, pooled_grad(z, layout, g_ls))
        return out


def topk_value_and_grad(name: str, prepared: PreparedLoss, z: Tensor, window: Window,
                        ) -> tuple[Tensor, Tensor, int]:
    """The engine's chunk values of one window from top-k teacher outputs, ``dΣ/dz`` and the chunk count."""
    part = prepared.part(window)
    if name.startswith("pkl"):
        values, grad = value_and_grad(lambda x: prepared.values(x, part, prepared.extra), z)
    else:
        layout, pooled = part
        values, g_ls = value_and_grad(lambda x: prepared.loss.chunk_values(x, pooled), pooled_student(z, layout))
        grad = pooled_grad(z, layout, g_ls)
    return values, grad, int(values.shape[0])


def check_references(losses: dict[str, torch.nn.Module], refs: References, z: Tensor, layout: ChunkLayout,
                     teacher_logits: Tensor) -> dict[str, dict[str, float]]:
    """The references against the engine's own modules at k = V_t (every teacher id kept, fp32) on one window.

    The window becomes a one-row batch: its student rows and its chunks' teacher positions. Returns, per loss,
    both values, their relative difference and the cosine of the two student-logit gradients.
    """
    v_t = teacher_logits.shape[-1]
    s_chunk = torch.full((1, z.shape[0]), -1, dtype=torch.long)
    s_chunk[0, layout.student_pos] = layout.student_group
    t_chunk = layout.teacher_group[None, :].clone()
    full = TeacherTopK.from_logits(teacher_logits[None], v_t)  # [1, P_t, V_t]
    mine = refs.evaluate(z, layout, teacher_logprobs(teacher_logits))
    # P-KL with the cap at V_t and every id kept: the subset is the whole teacher vocabulary
    engine = {"pkl": losses["pkl_nocap"], "hkl": losses["hkl"], "gold": losses["gold"], "uld": losses["uld"]}
    out = {}
    for name, loss in engine.items():
        leaf = z[None].detach().clone().requires_grad_(True)
        value = loss(leaf, full, s_chunk, t_chunk)
        (grad,) = torch.autograd.grad(value, leaf)
        ref_v, ref_g = mine[name]
        ours = float(ref_v.sum()) / layout.n_groups
        a, b = grad.reshape(z.shape).double(), ref_g.double()
        out[name] = {"engine": float(value.detach()), "reference": ours,
                     "rel_diff": abs(ours - float(value.detach())) / abs(float(value.detach())),
                     "grad_cosine": float((a * b).sum() / (a.norm() * b.norm()))}
    return out


# --- accumulating one text ----------------------------------------------------------------------------------------


@dataclass
class Acc:
    """Sums over evaluated chunks: loss values, reference values, gradient dot product and squared norms."""

    value: float = 0.0
    reference: float = 0.0
    dot: float = 0.0
    norm2: float = 0.0
    ref_norm2: float = 0.0
    chunks: int = 0

    def add(self, values: Tensor, ref_values: Tensor, grad: Tensor, ref_grad64: Tensor) -> None:
        g = grad.double()
        self.value += float(values.double().sum())
        self.reference += float(ref_values.double().sum())
        self.dot += float((g * ref_grad64).sum())
        self.norm2 += float((g * g).sum())
        self.ref_norm2 += float((ref_grad64 * ref_grad64).sum())
        self.chunks += int(values.shape[0])

    def __iadd__(self, other: Acc) -> Acc:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def summary(self) -> dict[str, float]:
        cos = self.dot / math.sqrt(max(self.norm2 * self.ref_norm2, 1e-300))
        return {"loss": self.value / max(self.chunks, 1), "reference": self.reference / max(self.chunks, 1),
                "rel_error": (self.value - self.reference) / abs(self.reference) if self.reference else 0.0,
                "grad_cosine": cos, "chunks": self.chunks}


@dataclass(frozen=True)
class Combo:
    """One top-k loss to evaluate: loss name, k, and the rows its batch has (None: chunk-local, any batch)."""

    loss: str
    k: int
    rows: int | None


def combos_for(ks: Sequence[int], geometries: Sequence[int], ks_large: Sequence[int]) -> list[Combo]:
    """Every combo: all ``ks`` on the smallest geometry, ``ks_large`` on the larger ones."""
    small = min(geometries)
    out = []
    for k in sorted(set(ks) | set(ks_large)):
        for loss in LOSSES:
            if loss in BATCH_DEPENDENT:
                out += [Combo(loss, k, g) for g in geometries if k in (ks if g == small else ks_large)]
            elif k in ks or k in ks_large:
                out.append(Combo(loss, k, None))
    return out


def combo_rows(combos: Sequence[Combo], geometries: Sequence[int], ks_large: Sequence[int]) -> dict[Combo, int]:
    """How many leading batch rows each combo is evaluated on: its own geometry (per_batch), else the largest
    geometry that reports its k (a chunk-local loss's values on rows 0..3 serve the 4- and the 8-row batch)."""
    big, small = max(geometries), min(geometries)
    return {c: c.rows if c.rows is not None else (big if c.k in ks_large else small) for c in combos}


@dataclass
class TextRun:
    """Everything one text's evaluation needs (the batch is the largest geometry)."""

    student_chunk: Tensor  # [B, Ts]
    teacher_chunk: Tensor  # [B, Tt]
    teacher: TeacherTopK  # [B, Tt, k_max] the worker's answer
    hidden: Tensor  # [B·Ts, H] student final hidden states
    head: Any  # LMHead of the student
    captured: tuple[Tensor, Tensor]  # flat teacher positions [n], fp32 logits [n, V_t]
    windows: list[EvalWindow]
    accs: dict[tuple[Combo, int], Acc] = field(default_factory=dict)


def student_logits(head: Any, h: Tensor) -> Tensor:
    """``[S, V_s]`` fp32 logits of hidden rows ``h [S, H]`` (the student's head: bias, scale, softcap)."""
    z = F.linear(h, head.weight, head.bias)
    if head.scale is not None:
        z = z * head.scale
    if head.softcap is not None:
        z = torch.tanh(z / head.softcap) * head.softcap
    return z.float()


def evaluate(run: TextRun, losses: dict[str, torch.nn.Module], refs: References, combos: Sequence[Combo],
             combo_rows: dict[Combo, int]) -> None:
    """Prepare every combo on its batch, then for each window: the references, then every combo's values and grads."""
    layout = ChunkLayout.build(run.student_chunk, run.teacher_chunk).ordered()
    prepared = {c: losses[c.loss].prepare(truncate(run.teacher, c.k, c.rows), run.student_chunk[: c.rows],
                                          run.teacher_chunk[: c.rows]) for c in combos}
    cap_pos, cap_rows = run.captured
    for n, w in enumerate(run.windows):
        t0 = time.perf_counter()
        with torch.no_grad():
            z = student_logits(run.head, run.hidden[w.lo: w.hi])  # [S, V_s]
        lw = layout_window(layout, w)
        if lw.n_groups == 0:
            continue
        t_lp = teacher_logprobs(cap_rows[torch.searchsorted(cap_pos, lw.teacher_pos)])  # [P_t, V_t]
        refs_w = {name: (v, g.double()) for name, (v, g) in refs.evaluate(z, lw, t_lp).items()}
        del t_lp
        t1 = time.perf_counter()
        spent = dict.fromkeys(LOSSES, 0.0)
        for c in combos:
            if w.row >= combo_rows[c]:
                continue
            tc = time.perf_counter()
            values, grad, g = topk_value_and_grad(c.loss, prepared[c], z, window_of(prepared[c], w))
            ref_v, ref_g = refs_w[REFERENCE_OF[c.loss]]
            if g != ref_v.shape[0]:
                raise AssertionError(f"{c}: {g} chunks in the window, the reference has {ref_v.shape[0]}")
            run.accs.setdefault((c, w.row), Acc()).add(values, ref_v, grad, ref_g)
            spent[c.loss] += time.perf_counter() - tc
        log.info("window %d/%d (row %d, %d positions): references %.1f s, top-k losses %.1f s (%s)", n + 1,
                 len(run.windows), w.row, w.hi - w.lo, t1 - t0, time.perf_counter() - t1,
                 ", ".join(f"{k} {v:.1f}" for k, v in spent.items()))


def summarise_text(run: TextRun, combos: Sequence[Combo], combo_rows: dict[Combo, int], ks: Sequence[int],
                   geometries: Sequence[int], losses: dict[str, torch.nn.Module]) -> dict[str, Any]:
    """Per geometry and k: teacher-side statistics and, per loss, the summed accumulators of its rows."""
    out: dict[str, Any] = {}
    for geo in geometries:
        layout = ChunkLayout.build(run.student_chunk[:geo], run.teacher_chunk[:geo]).ordered()
        per_k: dict[str, Any] = {}
        for k in sorted({c.k for c in combos}):
            teacher = truncate(run.teacher, k, geo)
            mean, p10 = mass_kept(teacher, layout.teacher_pos)
            union = union_size(teacher, layout.teacher_pos)
            cap = losses["pkl_per_batch"].config.subset_cap
            entry: dict[str, Any] = {"k": k, "bytes_per_position": bytes_per_position(k), "mass_kept": mean,
                                     "mass_kept_p10": p10, "union": union, "cap": cap, "cap_binds": union > cap}
            prep = losses["pkl_per_batch"].prepare(teacher, run.student_chunk[:geo], run.teacher_chunk[:geo])
            entry.update(subset_stats(prep))
            entry["losses"] = {}
            for c in combos:
                if c.k != k or (c.rows is not None and c.rows != geo) or combo_rows[c] < geo:
                    continue
                acc = Acc()
                for r in range(geo):
                    acc += run.accs.get((c, r), Acc())
                entry["losses"][c.loss] = acc.summary()
            per_k[str(k)] = entry
        out[str(geo)] = {"rows": geo, "loss_teacher_positions": int(layout.teacher_pos.shape[0]),
                         "chunks": layout.n_groups, "k": per_k}
    return out


# --- texts, models, one text's run -------------------------------------------------------------------------------

SMOKE_TEXTS = {
    "smoke-prose": " ".join(f"The {w} walked {i} miles to the river, where the ferryman asked for {i * 3} coins."
                            for i, w in enumerate(["teacher", "student", "cat", "clerk", "doctor", "miller"] * 6)),
    "smoke-code": "\n".join(f"def f{i}(x):\n    return x * {i} + {i * i}  # square {i}" for i in range(60)),
}


def source_documents(corpus: Path, source: str) -> tuple[list[str], list[str]]:
    """The held-out documents of ``source`` in the pinned corpus, then its train documents (both in file order)."""
    out: dict[str, list[str]] = {}
    for split in ("heldout", "train"):
        path = corpus / f"{split}.jsonl"
        if not path.is_file():
            raise SystemExit(f"error: {path} does not exist; build the corpus: .venv/bin/python analysis/corpus.py")
        docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        out[split] = [d["text"] for d in docs if d.get("source") == source]
    if not out["heldout"]:
        raise SystemExit(f"error: {corpus} has no held-out document from source {source!r}; rebuild the corpus")
    return out["heldout"], out["train"]


def cut_rows(stream: str, n_rows: int, builder: Any, seq: int) -> list[str]:
    """``n_rows`` consecutive pieces of ``stream``; the builder cuts piece r at ≤ seq tokens per side and piece
    r + 1 starts where that cut ended (so rows are disjoint, contiguous text)."""
    rows, pos = [], 0
    for r in range(n_rows):
        if not stream[pos:].strip():
            raise SystemExit(f"error: the text runs out after {r} of {n_rows} rows of {seq} tokens")
        piece_chars = 8 * seq
        while True:
            piece = stream[pos: pos + piece_chars]
            b = builder.build(r, np.array([r]), [piece])
            full = max(int(b.student_lengths[0]), int(b.teachers[0].lengths[0])) >= seq
            if full or pos + piece_chars >= len(stream):
                break
            piece_chars *= 2
        rows.append(piece)
        pos += len(b.texts[0])
    return rows


def load_models(smoke: bool) -> tuple[Any, Any]:
    """(teacher, student): the real Gemma-3-270M and SmolLM2-135M-Instruct, or tiny random-init models
    with the same tokenizers (``--smoke``)."""
    from xtalign.distill.config import ArchConfig
    from xtalign.distill.models.load import load_model

    if smoke:
        teacher = load_model(model="random", tokenizer="gemma3", seed=1,
                             arch=ArchConfig(family="gemma3", hidden_size=32, num_layers=1, num_heads=2,
                                             num_kv_heads=1, head_dim=16, intermediate_size=64, max_position=256))
        student = load_model(model="random", tokenizer="smollm2", seed=2,
                             arch=ArchConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                             intermediate_size=64, max_position=256))
        return teacher, student
    return load_model(model="gemma3-270m"), load_model(model="smollm2-135m")


def projection_for(teacher: Any, student: Any) -> tuple[SparseProjection, str]:
    """W as the engine builds it: the cached default projection, fitted to the models' embedding rows."""
    from xtalign.distill.config import ProjectionSpec
    from xtalign.distill.student.plans import fit_projection, resolve_projection

    proj, where = resolve_projection(ProjectionSpec(), student.tokenizer, teacher.tokenizer)
    indices, weights = fit_projection(proj, student_rows=student.rows, teacher_rows=teacher.rows)
    return SparseProjection(indices=torch.as_tensor(indices), weights=torch.as_tensor(weights),
                            teacher_vocab_size=teacher.rows), where


@torch.no_grad()
def student_hidden(model: Any, ids: np.ndarray, lengths: np.ndarray, rows_per_call: int = 2) -> Tensor:
    """``[B·T, H]`` final hidden states (final norm applied) of a right-padded batch (-1 = padding)."""
    ids_t = torch.as_tensor(ids, dtype=torch.long)
    mask = torch.arange(ids_t.shape[1])[None, :] < torch.as_tensor(lengths)[:, None]  # [B, T]
    body = model.get_decoder()
    parts = []
    for a in range(0, ids_t.shape[0], rows_per_call):
        out = body(input_ids=ids_t[a: a + rows_per_call].clamp_min(0), attention_mask=mask[a: a + rows_per_call].long(),
                   use_cache=False)
        parts.append(out.last_hidden_state.float())
    return torch.cat(parts).reshape(-1, parts[0].shape[-1])


@dataclass(frozen=True)
class Setup:
    """The run's fixed parts: models, W, losses, references, combos, and the study's knobs."""

    teacher: Any
    student: Any
    losses: dict[str, torch.nn.Module]
    refs: References
    combos: list[Combo]
    combo_rows: dict[Combo, int]
    ks: tuple[int, ...]
    geometries: tuple[int, ...]
    seq: int
    windows_per_row: int
    window: int
    head_slice: int


def reference_check(setup: Setup, run: TextRun, layout: ChunkLayout) -> dict[str, Any]:
    """``check_references`` on the text's first window (the engine at k = V_t is slow: one window only)."""
    t0 = time.perf_counter()
    w = run.windows[0]
    lw = layout_window(layout, w)
    z = student_logits(run.head, run.hidden[w.lo: w.hi]).detach()
    pos, rows = run.captured
    out = check_references(setup.losses, setup.refs, z, lw, rows[torch.searchsorted(pos, lw.teacher_pos)])
    log.info("references vs the engine at k = V_t: %s (%.0f s)", ", ".join(
        f"{n} {r['rel_diff']:.1e} / cos {r['grad_cosine']:.9f}" for n, r in out.items()), time.perf_counter() - t0)
    return {"window": [w.lo, w.hi], "chunks": lw.n_groups, "losses": out}


def run_text(setup: Setup, name: str, rows: list[str], builder: Any, check_first: bool = False) -> dict[str, Any]:
    """One text: the engine's batch, one teacher forward at k_max (fp32 rows kept at the evaluated chunks),
    the student forward, every window, and the per-geometry summary."""
    from xtalign.losses.sliced import LMHead

    t0 = time.perf_counter()
    batch = builder.build(0, np.arange(len(rows)), rows)
    side = batch.teachers[0]
    sc, tc = torch.as_tensor(side.student_chunk), torch.as_tensor(side.teacher_chunk)
    layout = ChunkLayout.build(sc, tc).ordered()
    windows = plan_windows(layout, [int(n) for n in batch.student_lengths], sc.shape[1], setup.windows_per_row,
                           setup.window)
    want = torch.unique(torch.cat([layout_window(layout, w).teacher_pos for w in windows]))
    worker = CapturingWorker(setup.teacher, top_k=max(c.k for c in setup.combos), temperature=1.0,
                             head_slice=setup.head_slice)
    worker.capture(want)
    teacher = worker.forward(side.ids, side.lengths, side.targets)
    t1 = time.perf_counter()
    log.info("%s: teacher forward over %s positions in %.0f s", name, "×".join(map(str, side.ids.shape)), t1 - t0)
    hidden = student_hidden(setup.student.model, batch.student_ids, batch.student_lengths)
    t2 = time.perf_counter()
    log.info("%s: student forward in %.0f s", name, t2 - t1)
    run = TextRun(sc, tc, teacher, hidden, LMHead.from_hf(setup.student.model), worker.captured(), windows)
    evaluate(run, setup.losses, setup.refs, setup.combos, setup.combo_rows)
    t3 = time.perf_counter()
    check = reference_check(setup, run, layout) if check_first else None
    evaluated = [layout_window(layout, w) for w in windows]
    return {"text": name, "rows": len(rows), "n_bytes": [int(n) for n in batch.n_bytes],
            "student_tokens": [int(n) for n in batch.student_lengths],
            "teacher_tokens": [int(n) for n in side.lengths],
            "evaluated": {"windows": len(windows), "chunks": sum(lw.n_groups for lw in evaluated),
                          "student_positions": sum(int(lw.student_pos.shape[0]) for lw in evaluated),
                          "teacher_positions": int(want.shape[0])},
            "bf16": bf16_error(teacher, *worker.captured()),
            "seconds": {"teacher": round(t1 - t0, 1), "student": round(t2 - t1, 1), "losses": round(t3 - t2, 1)},
            **({"reference_check": check} if check is not None else {}),
            "geometries": summarise_text(run, setup.combos, setup.combo_rows, setup.ks, setup.geometries,
                                         setup.losses)}


# --- across texts ------------------------------------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, min and max of per-text values."""
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def aggregate(texts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per geometry, k and loss: the spread over texts of the gradient cosine and the relative loss error,
    and of the teacher-side statistics."""
    out: dict[str, Any] = {}
    for geo, first in texts[0]["geometries"].items():
        out[geo] = {}
        for k, entry in first["k"].items():
            per = [t["geometries"][geo]["k"][k] for t in texts]
            row: dict[str, Any] = {"k": int(k), "bytes_per_position": entry["bytes_per_position"],
                                   "cap": entry["cap"], "cap_binds": sum(bool(p["cap_binds"]) for p in per)}
            for stat in ("mass_kept", "mass_kept_p10", "union", "subset_columns", "mass_lost_to_cap"):
                row[stat] = spread([p[stat] for p in per])
            row["losses"] = {loss: {m: spread([p["losses"][loss][m] for p in per])
                                    for m in ("grad_cosine", "rel_error", "loss", "reference")}
                             for loss in LOSSES if loss in entry["losses"]}
            out[geo][k] = row
    return out


def report_k(summary: dict[str, Any]) -> int:
    """The k the conclusion is drawn at: the default 64 when every geometry has it, else the largest shared k."""
    shared = set.intersection(*({int(k) for k in g} for g in summary.values()))
    return DEFAULT_K if DEFAULT_K in shared else max(shared)


def recommend(summary: dict[str, Any], k: int | None = None) -> dict[str, Any]:
    """The subset default the numbers support at top-``k``: the mode with the higher mean gradient cosine at every
    geometry (ties, within 1e-4: the smaller |loss error|), with the numbers it rests on."""
    k = report_k(summary) if k is None else k
    rows = {geo: summary[geo][str(k)]["losses"] for geo in summary if str(k) in summary[geo]}
    votes, numbers = [], {}
    for geo, losses in rows.items():
        if not {"pkl_per_batch", "pkl_per_chunk"} <= set(losses):
            continue
        pb, pc = losses["pkl_per_batch"], losses["pkl_per_chunk"]
        numbers[geo] = {m: {"per_batch": pb[m]["mean"], "per_chunk": pc[m]["mean"]}
                        for m in ("grad_cosine", "rel_error")}
        d = pc["grad_cosine"]["mean"] - pb["grad_cosine"]["mean"]
        if abs(d) <= 1e-4:
            d = abs(pb["rel_error"]["mean"]) - abs(pc["rel_error"]["mean"])
        votes.append("per_chunk" if d > 0 else "per_batch")
    choice = votes[0] if votes and all(v == votes[0] for v in votes) else "undecided"
    return {"k": k, "subset": choice, "by_geometry": numbers}


# --- outputs -----------------------------------------------------------------------------------------------------


def _ms(s: dict[str, float], fmt: str, scale: float = 1.0) -> str:
    """``mean [min, max]`` of a spread."""
    a, b, c = (scale * s[x] for x in ("mean", "min", "max"))
    return f"{a:{fmt}} [{b:{fmt}}, {c:{fmt}}]"


def _loss_table(summary: dict[str, Any], geo: str, metric: str, fmt: str, scale: float, suffix: str) -> list[str]:
    losses = [n for n in LOSSES if any(n in r["losses"] for r in summary[geo].values())]
    lines = ["| k | bytes/position | " + " | ".join(LABELS[n] for n in losses) + " |",
             "|---:|---:|" + "---:|" * len(losses)]
    for k, r in summary[geo].items():
        if not r["losses"]:
            continue
        cells = [k, f"{r['bytes_per_position']:,}"]
        cells += [_ms(r["losses"][n][metric], fmt, scale) + suffix if n in r["losses"] else "–" for n in losses]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _teacher_table(summary: dict[str, Any], n_texts: int) -> list[str]:
    geos = list(summary)
    head = "| k | teacher mass kept |" + "".join(
        f" union, {g} rows | cap binds | kept mass dropped by the cap |" for g in geos)
    lines = [head, "|---:|---:|" + "---:|---:|---:|" * len(geos)]
    for k in summary[geos[0]]:
        cells = [k, _ms(summary[geos[0]][k]["mass_kept"], ".4f")]
        for g in geos:
            r = summary[g].get(k)
            if r is None:
                cells += ["–"] * 3
                continue
            cells += [_ms(r["union"], ",.0f"), f"{r['cap_binds']}/{n_texts}",
                      _ms(r["mass_lost_to_cap"], ".2f", 100) + " %"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _texts_line(texts: Sequence[dict[str, Any]]) -> str:
    parts = []
    for t in texts:
        parts.append(f"{t['text']} ({t['rows']} rows, {sum(t['teacher_tokens']):,} teacher / "
                     f"{sum(t['student_tokens']):,} student tokens, {t['evaluated']['chunks']:,} evaluated chunks"
                     f"{', ' + t['documents'] if t.get('documents') else ''})")
    return "; ".join(parts)


def _check_line(texts: Sequence[dict[str, Any]]) -> str:
    checks = [t["reference_check"] for t in texts if "reference_check" in t]
    if not checks:
        return ""
    c = checks[0]
    worst = max(r["rel_diff"] for r in c["losses"].values())
    cos = min(r["grad_cosine"] for r in c["losses"].values())
    return (f" The references equal the engine's own modules at k = V_t on {c['chunks']} real chunks (loss values "
            f"within {worst:.1e} relative, gradient cosine ≥ {cos:.9f}).")


def _conclusion(result: dict[str, Any]) -> list[str]:
    rec = result["recommendation"]
    s = result["summary"]
    k = str(rec["k"])
    lines = [f"**Recommended P-KL subset default at the shipped geometry: `{rec['subset']}`** (rule: the mode with the "
             "higher mean gradient cosine at every geometry). At k = " + k + ":"]
    for geo, nums in rec["by_geometry"].items():
        r = s[geo][k]
        nocap = r["losses"].get("pkl_nocap")
        extra = "" if nocap is None else (f"; per_batch without the cap cos {nocap['grad_cosine']['mean']:.4f}, "
                                          f"error {100 * nocap['rel_error']['mean']:+.2f} %")
        lines.append(f"- {geo} × {result['setup']['seq_len']:,}: per_batch cos {nums['grad_cosine']['per_batch']:.4f}, "
                     f"error {100 * nums['rel_error']['per_batch']:+.2f} %; per_chunk cos "
                     f"{nums['grad_cosine']['per_chunk']:.4f}, error {100 * nums['rel_error']['per_chunk']:+.2f} %"
                     f"{extra}; "
                     f"top-{k} union {_ms(r['union'], ',.0f')} columns against the cap of {r['cap']:,} (binds in "
                     f"{r['cap_binds']}/{r['union']['n']} texts; the cap drops "
                     f"{100 * r['mass_lost_to_cap']['mean']:.2f} % "
                     "of the kept teacher mass).")
    return lines


def to_markdown(result: dict[str, Any]) -> str:
    """The committed table (no dates, so regenerating only changes real numbers)."""
    s, summary, texts = result["setup"], result["summary"], result["texts"]
    small, big = (str(g) for g in (min(s["geometries"]), max(s["geometries"])))
    n = len(texts)
    bf = max(t["bf16"]["max_abs_logit"] for t in texts)
    k_rep = str(result["recommendation"]["k"])
    lines = [
        "# Top-k fidelity of the engine's teacher transport",
        "",
        f"Generated by `analysis/topk_fidelity.py` ({s['seconds']:.0f} s on {s['threads']} CPU threads). Teacher "
        f"{s['teacher']} (V_t = {s['teacher_vocab']:,}), student {s['student']}, W {s['projection']}. Batches from "
        f"the engine's `BatchBuilder` at seq_len {s['seq_len']:,}: {', '.join(f'{g} rows' for g in s['geometries'])} "
        f"(the first {small} rows of each {big}-row batch are its {small}-row batch). Texts ({n}, pinned corpus "
        f"sha256 `{s['corpus_sha256'][:16]}…`): {_texts_line(texts)}.",
        "",
        f"Top-k side: the engine's `TeacherWorker.forward` at k = {max(s['ks_all'])} (bf16 logits, int32 ids, "
        "fp32 logsumexp and target log-prob: 6k + 8 bytes per position), truncated for smaller k; the engine's loss "
        "modules prepared on the whole batch. Reference: the same loss from the teacher's full fp32 distribution "
        f"(the worker's own fp32 logits). Evaluated on {s['windows_per_row']} windows of ≈ {s['window']} student "
        "positions per row (whole chunks; a chunk's value and gradient depend only on its own positions). "
        "cos = cosine between the student-logit gradients of the top-k loss and of the reference over all evaluated "
        "positions; error = (Σ loss_k − Σ loss_full) / Σ loss_full over the evaluated chunks. Cells: mean over texts "
        f"[min, max]. Shipped bf16 logits differ from fp32 by at most {bf:.4f} at the kept ids.{_check_line(texts)}",
        "",
        *_conclusion(result),
        "",
        f"## Gradient cosine, {small} × {s['seq_len']:,}",
        "",
        *_loss_table(summary, small, "grad_cosine", ".4f", 1.0, ""),
        "",
        f"## Relative loss error, {small} × {s['seq_len']:,}",
        "",
        *_loss_table(summary, small, "rel_error", "+.2f", 100.0, " %"),
        "",
        f"## {big} × {s['seq_len']:,}: gradient cosine",
        "",
        *_loss_table(summary, big, "grad_cosine", ".4f", 1.0, ""),
        "",
        f"## {big} × {s['seq_len']:,}: relative loss error",
        "",
        *_loss_table(summary, big, "rel_error", "+.2f", 100.0, " %"),
        "",
        "## Teacher side: mass kept, P-KL's per-batch subset and its cap",
        "",
        *_teacher_table(summary, n),
        "",
        "Union: distinct teacher ids in the top-k of the batch's loss positions (P-KL `per_batch`'s subset before "
        "its cap); above the cap the engine keeps the ids with the highest log-prob anywhere in the batch, and the "
        "kept top-k mass of the dropped ids is replaced by the maximum-entropy fill. `per_chunk` uses each chunk's "
        "own top-k union and is never capped.",
        "",
        f"Reference values at {small} × {s['seq_len']:,} (nats per chunk, mean over texts): " + ", ".join(
            f"{LABELS[n]} {summary[small][k_rep]['losses'][n]['reference']['mean']:.4f}"
            for n in LOSSES if n in summary[small][k_rep]["losses"]) + ".",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Gradient cosine (left), relative loss error (middle) and the per-batch union (right) against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, summary = result["setup"], result["summary"]
    small, big = str(min(s["geometries"])), str(max(s["geometries"]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained", gridspec_kw={"width_ratios": [3, 3, 2]})
    colours = dict(zip(LOSSES, ("#c44e52", "#4c72b0", "#937860", "#55a868", "#8172b3", "#dd8452"), strict=True))
    for ax, metric, scale in ((axes[0], "grad_cosine", 1.0), (axes[1], "rel_error", 100.0)):
        for geo, style in ((small, "-"), (big, "--")):
            for name in LOSSES:
                pts = [(int(k), r["losses"][name][metric]) for k, r in summary[geo].items() if name in r["losses"]]
                if not pts:
                    continue
                ks = [k for k, _ in pts]
                mean = [scale * m["mean"] for _, m in pts]
                ax.plot(ks, mean, style, marker="o" if geo == small else "s", ms=3.5, color=colours[name],
                        alpha=1.0 if geo == small else 0.8)
                if len(pts) > 1:
                    ax.fill_between(ks, [scale * m["min"] for _, m in pts], [scale * m["max"] for _, m in pts],
                                    color=colours[name], alpha=0.15 if geo == small else 0.08, lw=0)
    axes[0].set(title="gradient cosine vs full distribution (higher is better)", ylabel="cosine")
    axes[1].set(title="relative loss error", ylabel="%")
    axes[1].axhline(0, color="black", lw=0.6)
    for geo, style in ((small, "-"), (big, "--")):
        ks = [int(k) for k in summary[geo]]
        axes[2].plot(ks, [r["union"]["mean"] for r in summary[geo].values()], style, marker="o", ms=3.5,
                     color="black", label=f"{geo}×{s['seq_len']}")
    cap = next(iter(summary[small].values()))["cap"]
    axes[2].axhline(cap, color="#c44e52", lw=1, ls=":", label=f"cap {cap:,}")
    axes[2].set(title="per-batch top-k union (columns)", yscale="log")
    axes[2].legend(fontsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[n], lw=2, label=LABELS[n]) for n in LOSSES]
    handles += [Line2D([], [], color="black", ls=ls, marker=m, ms=3.5, label=f"{g} × {s['seq_len']:,}")
                for g, ls, m in ((small, "-", "o"), (big, "--", "s"))]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=7, frameon=False)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ks = sorted({int(k) for g in summary.values() for k in g})
        ax.set_xticks(ks, [str(k) for k in ks], fontsize=7)
        ax.axvline(DEFAULT_K, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("teacher top-k")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Engine top-k teacher transport (bf16, {s['teacher_name']} → {s['student_name']}, "
                 f"{len(result['texts'])} texts; bands: min–max over texts; dotted: default k = {DEFAULT_K})",
                 fontsize=9)
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


# --- main --------------------------------------------------------------------------------------------------------


def texts_for(args: argparse.Namespace, builder: Any, n_rows: int) -> list[tuple[str, list[str], str]]:
    """(name, row texts, where they come from) per text."""
    if args.smoke:
        return [(name, cut_rows(text, n_rows, builder, args.seq), "built-in") for name, text in SMOKE_TEXTS.items()]
    out = []
    for source in args.sources:
        held, train = source_documents(args.corpus, source)
        stream = "\n\n".join(held + train)
        rows = cut_rows(stream, n_rows, builder, args.seq)
        used = sum(len(r) for r in rows)
        held_chars = len("\n\n".join(held))
        where = (f"{len(held)} held-out documents" + (f" + the first {used - held_chars - 2:,} characters of its "
                                                       "train documents" if used > held_chars else ""))
        out.append((source, rows, where))
    return out


def setup_run(args: argparse.Namespace) -> tuple[Setup, dict[str, Any], Any]:
    from xtalign.distill.data.builder import BatchBuilder

    teacher, student = load_models(args.smoke)
    projection, where = projection_for(teacher, student)
    losses = engine_losses(projection)
    geometries = tuple(sorted(set(args.rows)))
    combos = combos_for(args.ks, geometries, args.ks_large)
    setup = Setup(teacher, student, losses, References.of(projection, losses), combos,
                  combo_rows(combos, geometries, args.ks_large), tuple(args.ks), geometries, args.seq,
                  args.windows_per_row, args.window, args.head_slice)
    builder = BatchBuilder(student.tokenizer, [teacher.tokenizer], seq_len=args.seq, add_bos=True)
    info = {"teacher": teacher.source, "student": student.source, "teacher_name": teacher.tokenizer.name,
            "student_name": student.tokenizer.name, "teacher_fingerprint": teacher.fingerprint,
            "student_fingerprint": student.fingerprint, "projection": where, "teacher_vocab": teacher.rows,
            "student_vocab": student.rows, "seq_len": args.seq, "geometries": list(geometries), "ks": list(args.ks),
            "ks_large": list(args.ks_large), "ks_all": sorted({c.k for c in combos}),
            "windows_per_row": args.windows_per_row, "window": args.window, "head_slice": args.head_slice,
            "threads": args.threads, "smoke": bool(args.smoke),
            "loss_configs": {n: repr(m.config) for n, m in losses.items()}}
    return setup, info, builder


def corpus_sha(corpus: Path, smoke: bool) -> str:
    manifest = corpus / "manifest.json"
    if smoke or not manifest.is_file():
        return "0" * 64
    return str(json.loads(manifest.read_text())["sha256"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT / "out" / "corpus", help="analysis/corpus.py output")
    ap.add_argument("--sources", nargs="+", default=list(SOURCES), help="one text per corpus source")
    ap.add_argument("--rows", type=int, nargs="+", default=list(GEOMETRIES), help="batch geometries (rows)")
    ap.add_argument("--seq", type=int, default=SEQ_LEN, help="seq_len: max tokens per row on each side")
    ap.add_argument("--ks", type=int, nargs="+", default=list(KS), help="k sweep on the smallest geometry")
    ap.add_argument("--ks-large", type=int, nargs="+", default=list(KS), help="k on the larger geometries")
    ap.add_argument("--windows-per-row", type=int, default=2)
    ap.add_argument("--window", type=int, default=128, help="student positions per evaluated window (whole chunks)")
    ap.add_argument("--head-slice", type=int, default=512, help="the teacher worker's LM-head slice")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare the references with the engine's modules at k = V_t on the first window")
    ap.add_argument("--smoke", action="store_true", help="tiny random-init models, built-in texts, small sizes")
    ap.add_argument("--allow-dirty", action="store_true", help="run on a dirty tree (the diff's sha256 is recorded)")
    ap.add_argument("--out", type=Path, default=RESULT)
    ap.add_argument("--table", type=Path, default=TABLE)
    ap.add_argument("--figure", type=Path, default=FIGURE)
    ap.add_argument("--plot-only", action="store_true", help="redraw table and figure from --out")
    if ap.parse_args(argv).smoke:  # small defaults; explicit options still win
        ap.set_defaults(rows=[2, 3], seq=64, ks=[4, 16], ks_large=[16], windows_per_row=1, window=24,
                        check_reference=False)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.plot_only:
        result = json.loads(args.out.read_text())
    else:
        from xtalign.provenance import start_provenance

        prov = start_provenance(allow_dirty=args.allow_dirty)
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        setup, info, builder = setup_run(args)
        texts = []
        for i, (name, rows, where) in enumerate(texts_for(args, builder, max(setup.geometries))):
            texts.append({**run_text(setup, name, rows, builder, args.check_reference and i == 0), "documents": where})
        summary = aggregate(texts)
        info.update(corpus_sha256=corpus_sha(args.corpus, args.smoke), seconds=round(time.perf_counter() - t0, 1))
        result = {"provenance": prov, "setup": info, "summary": summary, "recommendation": recommend(summary),
                  "texts": texts}
    write_outputs(result, args.out, args.table, args.figure)
    print(f"wrote {args.out}, {args.table} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
