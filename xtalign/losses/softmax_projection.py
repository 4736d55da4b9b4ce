"""``q = softmax(z / T) @ W`` on a few teacher columns without keeping a full-vocabulary probability tensor.

The straightforward way keeps ``softmax(z / T)`` (``[N, V_s]`` fp32) alive for backward, and the softmax
backward allocates more ``[N, V_s]`` buffers. Here nothing full-size is saved: probabilities are
recomputed block by block (about ``2**22`` elements at a time) in forward and in backward, and the only
full-size tensor is the logits gradient itself, written in the logits' own dtype. With
``a = dL/dp`` (non-zero only on student rows that reach a kept column):

    dL/dz_v = p_v * (a_v - Σ_u p_u a_u) / T.

The work is a list of "entries", one per non-zero ``W[s, t]`` that feeds a wanted output column:
- ``SharedPlan``: every position uses the same columns (the batch-global subset): ``E`` entries
  ``(student row, column)`` applied to every position.
- ``PairPlan``: every position has its own columns (per-chunk subsets): triples
  ``(position, student row, output slot)``, sorted by position.
The entry weights are a tensor input, so a learnable projection gets its gradient too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["PairPlan", "SharedPlan", "projected_softmax"]

_BLOCK_ELEMS = 1 << 22

# (p·a per entry, scatter-add of per-entry values into a [b, V_s] buffer, per-row sum of per-entry values)
_Terms = tuple[Tensor, Callable[[Tensor, Tensor], None], Callable[[Tensor], Tensor]]


@dataclass(frozen=True)
class SharedPlan:
    """Same kept columns for all positions.

    Attributes:
        positions: ``[P]`` rows of the 2-D logits to use (distinct, ascending).
        entry_row: ``[E]`` student id of each entry.
        entry_col: ``[E]`` output column of each entry.
        n_cols: number of output columns M.
    """

    positions: Tensor
    entry_row: Tensor
    entry_col: Tensor
    n_cols: int


@dataclass(frozen=True)
class PairPlan:
    """Per-position kept columns, as triples sorted by position.

    Attributes:
        positions: ``[P]`` rows of the 2-D logits to use (distinct, ascending).
        trip_pos: ``[N3]`` index into ``positions`` (non-decreasing).
        trip_row: ``[N3]`` student id.
        trip_out: ``[N3]`` flat index into the ``[P, n_cols]`` output.
        n_cols: number of output columns M.
    """

    positions: Tensor
    trip_pos: Tensor
    trip_row: Tensor
    trip_out: Tensor
    n_cols: int


def projected_softmax(
    logits2d: Tensor, weights: Tensor, plan: SharedPlan | PairPlan, temperature: float
) -> Tensor:
    """``[P, M]`` projected probabilities ``softmax(logits2d[positions] / T) @ W`` on the kept columns.

    ``logits2d`` is ``[N, V_s]`` (any float dtype); ``weights`` is ``[E]`` (shared plan) or ``[N3]``
    (pair plan). Computes in float64 when the logits are float64, else float32.
    """
    return _ProjectedSoftmax.apply(logits2d, weights, plan, float(temperature))


class _Blocks:
    """Iterates over blocks of positions: the block's probabilities and (pair plan) its triple range."""

    def __init__(self, logits2d: Tensor, plan: SharedPlan | PairPlan, temp: float) -> None:
        self.logits2d, self.plan, self.temp = logits2d, plan, temp
        self.cd = torch.float64 if logits2d.dtype == torch.float64 else torch.float32
        n_pos = plan.positions.shape[0]
        self.n_pos = n_pos
        self.step = max(1, _BLOCK_ELEMS // max(1, logits2d.shape[1]))
        self.contiguous = n_pos > 0 and int(plan.positions[-1]) - int(plan.positions[0]) + 1 == n_pos
        self.starts = list(range(0, n_pos, self.step))
        self.bounds: list[int] = []
        if isinstance(plan, PairPlan):
            edges = torch.tensor(self.starts + [n_pos], device=plan.trip_pos.device)
            self.bounds = torch.searchsorted(plan.trip_pos, edges).tolist()

    def rows(self, i: int) -> Tensor | slice:
        """Rows of the logits for the block starting at position index ``i``."""
        pos = self.plan.positions
        if self.contiguous:
            first = int(pos[0])
            return slice(first + i, first + min(i + self.step, self.n_pos))
        return pos[i : i + self.step]

    def probs(self, i: int) -> Tensor:
        """``softmax(z / T)`` for the block, ``[b, V_s]`` in the compute dtype."""
        z = self.logits2d[self.rows(i)]  # [b, V_s]
        if self.temp != 1.0:
            z = z / self.temp
        return F.softmax(z, dim=-1) if z.dtype == self.cd else F.softmax(z, dim=-1, dtype=self.cd)


class _ProjectedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits2d: Tensor, w: Tensor, plan: SharedPlan | PairPlan, temp: float) -> Tensor:
        blocks = _Blocks(logits2d, plan, temp)
        out = torch.zeros(blocks.n_pos, plan.n_cols, dtype=blocks.cd, device=logits2d.device)  # [P, M]
        wc = w.detach().to(blocks.cd)
        for n, i in enumerate(blocks.starts):
            p = blocks.probs(i)  # [b, V_s]
            if isinstance(plan, SharedPlan):
                p_e = p.index_select(1, plan.entry_row)  # [b, E]
                out[i : i + blocks.step].index_add_(1, plan.entry_col, p_e * wc)
            else:
                lo, hi = blocks.bounds[n], blocks.bounds[n + 1]
                flat = (plan.trip_pos[lo:hi] - i) * p.shape[1] + plan.trip_row[lo:hi]  # [n3]
                out.view(-1).index_add_(0, plan.trip_out[lo:hi], p.view(-1)[flat] * wc[lo:hi])
        ctx.save_for_backward(logits2d, w)
        blocks.logits2d = None  # type: ignore[assignment]  # the saved copy is used in backward
        ctx.blocks = blocks
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        logits2d, w = ctx.saved_tensors
        blocks: _Blocks = ctx.blocks
        blocks.logits2d = logits2d
        need_z, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad_out.to(blocks.cd)
        wc = w.to(blocks.cd)
        gz = _empty_grad(logits2d, blocks.plan.positions) if need_z else None  # [N, V_s]
        gw = torch.zeros_like(wc) if need_w else None
        for n, i in enumerate(blocks.starts):
            p = blocks.probs(i)  # [b, V_s]
            if isinstance(blocks.plan, SharedPlan):
                pa, cols, piece = _shared_terms(p, g[i : i + blocks.step], wc, blocks.plan, gw)
            else:
                lo, hi = blocks.bounds[n], blocks.bounds[n + 1]
                pa, cols, piece = _pair_terms(p, g, wc, blocks.plan, gw, i, lo, hi)
            if gz is None:
                continue
            c = piece(pa)  # [b] Σ_u p_u a_u
            rows = blocks.rows(i)
            if isinstance(rows, slice) and gz.dtype == p.dtype:  # write straight into the gradient
                dst = gz[rows]
                torch.mul(p, -c[:, None] / blocks.temp, out=dst)  # the −p·Σ p a / T part
                cols(dst, pa / blocks.temp)  # + p_v a_v / T on the entries' own columns
            else:
                p.mul_(-c[:, None] / blocks.temp)
                cols(p, pa / blocks.temp)
                gz[rows] = p.to(gz.dtype)
        return gz, (gw.to(w.dtype) if gw is not None else None), None, None


def _empty_grad(logits2d: Tensor, positions: Tensor) -> Tensor:
    """Gradient buffer; only rows outside ``positions`` need zeroing (the rest are overwritten)."""
    gz = torch.empty_like(logits2d)
    if positions.shape[0] != logits2d.shape[0]:
        untouched = torch.ones(logits2d.shape[0], dtype=torch.bool, device=logits2d.device)
        untouched[positions] = False
        gz.index_fill_(0, torch.nonzero(untouched).squeeze(1), 0)  # touches only those rows
    return gz


def _shared_terms(p: Tensor, g: Tensor, wc: Tensor, plan: SharedPlan, gw: Tensor | None) -> _Terms:
    """Per-entry ``p·a`` for one block of a shared plan, and how to reduce / scatter it."""
    p_e = p.index_select(1, plan.entry_row)  # [b, E]
    g_e = g.index_select(1, plan.entry_col)  # [b, E]
    if gw is not None:
        gw += (p_e * g_e).sum(0)
    pa = p_e * g_e * wc  # [b, E]

    def cols(buf: Tensor, vals: Tensor) -> None:
        buf.index_add_(1, plan.entry_row, vals)

    return pa, cols, lambda x: x.sum(-1)


def _pair_terms(
    p: Tensor, g: Tensor, wc: Tensor, plan: PairPlan, gw: Tensor | None, i: int, lo: int, hi: int
) -> _Terms:
    """Per-triple ``p·a`` for one block of a pair plan, and how to reduce / scatter it."""
    local = plan.trip_pos[lo:hi] - i  # [n3]
    flat = local * p.shape[1] + plan.trip_row[lo:hi]  # [n3]
    p_t = p.view(-1)[flat]  # [n3]
    g_t = g.view(-1)[plan.trip_out[lo:hi]]  # [n3]
    if gw is not None:
        gw[lo:hi] = p_t * g_t
    pa = p_t * g_t * wc[lo:hi]  # [n3]

    def cols(buf: Tensor, vals: Tensor) -> None:
        buf.view(-1).index_add_(0, flat, vals)

    def piece(x: Tensor) -> Tensor:
        return torch.zeros(p.shape[0], dtype=p.dtype, device=p.device).index_add_(0, local, x)

    return pa, cols, piece
