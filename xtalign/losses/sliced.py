"""The student's LM head, CE and every KD term over slices of positions: no ``[B·T, V]`` logits ever exist.

Every loss of ``xtalign.losses`` is a mean over groups of student positions (chunks, or single positions
for CE / same-vocabulary KD) whose values depend only on the logits of their own positions
(``xtalign.losses.stages``). ``sliced_losses`` therefore runs the head ``z = cap·tanh((h W^T + b)/cap)``
and every loss's per-group stage over slices of about ``slice_positions`` positions that never split a
chunk of any term, keeping only one number per group; in the backward pass it recomputes each slice's
logits, back-propagates the slice's groups alone, and accumulates ``dL/dh``, ``dL/dW`` (in place, one
``[V, H]`` buffer), ``dL/db`` and the learnable projections' gradients. One slice's ``[S, V]`` logits and
their stage buffers are the largest tensors alive at any time (on top of W, its gradient and the hidden
states). Values and gradients equal the straightforward path (full logits → the loss modules) up to
float rounding, because both call the same stage functions.

Memory (besides W, dW, h, dh): ``O(S · V)`` for the slice, where a slice grows past ``slice_positions``
only as far as needed to end on a chunk boundary (at most the longest run of overlapping chunks), plus
the teacher-side bookkeeping (``O(P · K)``; per slice ``O(S · M)`` for P-KL's M teacher columns).

Cost: the head matmul runs once more than in the straightforward path (forward, recompute, two backward
products: 4 instead of 3). When the losses are combined with fixed ``weights`` (the combination does not
depend on this step's loss values: fixed CE/KD scaling, static or teacher-score multi-teacher weights),
``sliced_losses(..., weights=...)`` back-propagates every slice during the call itself and keeps only the
gradients, which the backward pass scales (as fused linear-cross-entropy kernels do): 3 matmuls, no
recomputation, and only ``total`` carries the gradient.

A student worker calls it with what a Hugging Face causal LM gives: the body's last hidden state
(``model.get_decoder()(...).last_hidden_state``, final norm applied) and ``LMHead.from_hf(model)``
(``lm_head.weight``, tied or not, its bias, Gemma's final-logit softcap). ``SlicedLM``
(`xtalign.losses.sliced_lm`) wraps the model so that body + head + losses run inside ONE module's ``forward``,
which is what DDP needs: wrap the ``SlicedLM`` in ``DistributedDataParallel`` and its gradient hooks fire as usual.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from xtalign.losses.gold import GoldLoss, ULDLoss
from xtalign.losses.kl import PreparedCE, TopKKLLoss, check_chunk_shapes
from xtalign.losses.lm_head import LMHead, _HeadMath
from xtalign.losses.pkl import PKLLoss
from xtalign.losses.stages import PreparedLoss, Window
from xtalign.losses.types import TeacherTopK

__all__ = ["LMHead", "SlicedOutput", "SlicedTerm", "auto_slice_positions", "check_inputs", "sliced_losses"]

# Elements of one slice's [S, V] logits when slice_positions is not given (128 MiB in fp32).
SLICE_ELEMENTS = 1 << 25


def auto_slice_positions(vocab_size: int) -> int:
    """Default slice size: about ``SLICE_ELEMENTS`` logits per slice."""
    return max(1, SLICE_ELEMENTS // max(1, vocab_size))


@dataclass(frozen=True)
class SlicedTerm:
    """One teacher's KD term: a loss module of ``xtalign.losses`` and that loss's own inputs.

    ``PKLLoss``, ``GoldLoss``, ``ULDLoss`` need ``student_chunk [B, T]`` and ``teacher_chunk [B, Tt]``;
    ``TopKKLLoss`` needs a teacher on the student's ``[B, T]`` positions and an optional ``mask [B, T]``.
    """

    loss: nn.Module
    teacher: TeacherTopK
    student_chunk: Tensor | None = None
    teacher_chunk: Tensor | None = None
    mask: Tensor | None = None

    def prepare(self, shape: tuple[int, int], vocab_size: int, dtype: torch.dtype) -> PreparedLoss:
        """The term's teacher side for a student batch of ``shape [B, T]`` and vocabulary ``vocab_size``."""
        loss = self.loss
        if isinstance(loss, TopKKLLoss):
            if tuple(self.teacher.logits.shape[:2]) != shape:
                raise ValueError("TopKKLLoss: teacher and student must cover the same [B, T] positions")
            prepared: PreparedLoss = loss.prepare(self.teacher, self.mask, dtype)
        elif isinstance(loss, PKLLoss | GoldLoss | ULDLoss):
            if self.student_chunk is None or self.teacher_chunk is None:
                raise ValueError(f"{type(loss).__name__} needs student_chunk and teacher_chunk")
            check_chunk_shapes(shape, self.teacher, self.student_chunk, self.teacher_chunk)
            prepared = loss.prepare(self.teacher, self.student_chunk, self.teacher_chunk, dtype)
        else:
            raise TypeError(f"SlicedTerm: unsupported loss {type(loss).__name__}")
        if prepared.student_vocab_size not in (None, vocab_size):
            raise ValueError(
                f"{type(loss).__name__}: expects a student vocabulary of {prepared.student_vocab_size}, "
                f"the head has {vocab_size}"
            )
        return prepared


class SlicedOutput(NamedTuple):
    """What ``sliced_losses`` returns (a NamedTuple, so DDP and pytrees see its tensors).

    ce: scalar CE (None without targets); kd: one scalar per ``SlicedTerm``, in order; argmax: ``[B, T]``
    student top-1 at the positions some term reads (−1 elsewhere), when asked; n_slices: slices used;
    total: with ``weights``, ``Σ weight · loss`` — then it alone carries the gradient (ce/kd are detached).
    """

    ce: Tensor | None
    kd: list[Tensor]
    argmax: Tensor | None
    n_slices: int
    total: Tensor | None = None


# ------------------------------------------------------------------------------------------------ slicing
@dataclass(frozen=True)
class _Slice:
    """One slice: ``rows`` of the flat hidden states (a ``slice`` when they are contiguous)."""

    rows: Tensor | slice


class _Plan:
    """Which rows are computed, how they are sliced, and every term's part of every slice."""

    def __init__(self, prepared: Sequence[PreparedLoss], n_rows: int, size: int, device: torch.device) -> None:
        rows = torch.unique(torch.cat([p.positions for p in prepared])) if prepared else None  # [R]
        rows = torch.zeros(0, dtype=torch.long, device=device) if rows is None else rows
        bounds = _bounds(_allowed_starts(prepared, rows, n_rows), int(rows.shape[0]), size)
        rows_cpu = rows.cpu()
        self.slices = [_make_slice(rows, rows_cpu, a, b) for a, b in bounds]
        self.parts: list[list[Any]] = []
        self.groups: list[list[tuple[int, int]]] = []
        for p in prepared:
            windows = _windows(p, rows, bounds)
            self.parts.append([None if w.empty else p.part(w) for w in windows])
            self.groups.append([w.groups for w in windows])


def _allowed_starts(prepared: Sequence[PreparedLoss], rows: Tensor, n_rows: int) -> list[int]:
    """Indices ``j`` into ``rows`` where a slice may start: no chunk of any term spans ``rows[j - 1] → rows[j]``."""
    inside = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)  # difference array over flat rows
    for p in prepared:
        if p.single_positions or p.n_groups == 0:
            continue
        one = torch.ones_like(p.group_first)
        inside.index_add_(0, p.group_first + 1, one).index_add_(0, p.group_last + 1, -one)
    ok = torch.cumsum(inside, 0)[rows] == 0  # [R] a cut just before rows[j] splits no chunk
    if ok.numel():
        ok[0] = True
    return torch.nonzero(ok).squeeze(1).tolist()


def _bounds(starts: list[int], n: int, size: int) -> list[tuple[int, int]]:
    """Greedy slices ``[j0, j1)`` of ``n`` rows: end at the last allowed cut ≤ ``j0 + size``, else the next one."""
    cuts = sorted({*starts, n})  # allowed slice starts, and the end
    out, j0 = [], 0
    while j0 < n:
        goal = j0 + size
        if goal >= n:
            j1 = n
        else:
            before = cuts[bisect.bisect_right(cuts, goal) - 1]
            j1 = before if before > j0 else cuts[bisect.bisect_right(cuts, j0)]
        out.append((j0, j1))
        j0 = j1
    return out


def _make_slice(rows: Tensor, rows_cpu: Tensor, j0: int, j1: int) -> _Slice:
    first, last = int(rows_cpu[j0]), int(rows_cpu[j1 - 1])
    if last - first == j1 - j0 - 1:
        return _Slice(slice(first, last + 1))
    return _Slice(rows[j0:j1])


def _windows(p: PreparedLoss, rows: Tensor, bounds: list[tuple[int, int]]) -> list[Window]:
    """Each slice's window of the prepared loss ``p`` (its positions and groups inside the slice)."""
    if not bounds:
        return []
    lo = rows[torch.tensor([a for a, _ in bounds], device=rows.device)]  # [K] first flat row of each slice
    hi = rows[torch.tensor([b - 1 for _, b in bounds], device=rows.device)] + 1  # [K] one past the last
    pa, pb = torch.searchsorted(p.positions, lo).tolist(), torch.searchsorted(p.positions, hi).tolist()
    ga, gb = torch.searchsorted(p.group_first, lo).tolist(), torch.searchsorted(p.group_first, hi).tolist()
    row_of = torch.searchsorted(rows, p.positions)  # [P] index of each position in rows
    return [
        Window(row_of[a:b] - j0, (a, b), (c, d))
        for (j0, _), a, b, c, d in zip(bounds, pa, pb, ga, gb, strict=True)
    ]


# ------------------------------------------------------------------------------------ the autograd function
class _Run:
    """The state the autograd functions carry from their forward to their backward."""

    def __init__(self, head: _HeadMath, prepared: Sequence[PreparedLoss], plan: _Plan, argmax: bool) -> None:
        self.head, self.prepared, self.plan, self.argmax = head, list(prepared), plan, argmax

    def forward(
        self, hidden2d: Tensor, weight: Tensor, bias: Tensor | None, extras: Sequence[Tensor | None]
    ) -> tuple[Tensor, ...]:
        """Per-term ``[G_t]`` values (groups in order) and the ``[N]`` argmax (empty unless asked)."""
        w, b = self.head.cast(weight, bias)
        vals: list[list[Tensor]] = [[] for _ in self.prepared]
        top = self._empty_top(hidden2d)  # [N]
        for k, sl in enumerate(self.plan.slices):
            z = self.head.finish(self.head.raw(hidden2d[sl.rows], w, b))  # [S, V]
            for t, prep in enumerate(self.prepared):
                part = self.plan.parts[t][k]
                if part is not None:
                    vals[t].append(prep.values(z, part, extras[t]))  # [g]
            if self.argmax:
                top[sl.rows] = z.argmax(-1)
            del z
        return (*self._cat(vals, hidden2d.device), top)

    def backward(
        self, grads: Sequence[Tensor], saved: Sequence[Tensor | None], needs: Sequence[bool]
    ) -> list[Tensor | None]:
        """Gradients for ``(hidden2d, weight, bias, *extras)`` from the values' gradients ``grads``."""
        hidden2d, weight, bias, *extras = saved
        assert hidden2d is not None and weight is not None
        w, b = self.head.cast(weight, bias)
        acc = _Grads(hidden2d, weight, bias, extras, needs)
        for k, sl in enumerate(self.plan.slices):
            live = self._live(grads, k)
            if live:
                h = hidden2d[sl.rows].to(self.head.dtype)  # [S, H]
                dz, _, _ = self._slice_grad(h, (w, b), k, live, acc)  # [S, V]
                if dz is not None:
                    acc.add_head(sl.rows, dz, h, w)
        return acc.result()

    def fused(
        self, inputs: Sequence[Tensor | None], coefs: Sequence[Tensor], needs: Sequence[bool]
    ) -> tuple[tuple[Tensor, ...], list[Tensor | None]]:
        """One pass: the values and argmax of ``forward`` and the gradients of ``Σ_t coefs_t · values_t``."""
        hidden2d, weight, bias, *extras = inputs
        assert hidden2d is not None and weight is not None
        w, b = self.head.cast(weight, bias)
        acc = _Grads(hidden2d, weight, bias, extras, needs)
        vals: list[list[Tensor]] = [[] for _ in self.prepared]
        top = self._empty_top(hidden2d)  # [N]
        for k, sl in enumerate(self.plan.slices):
            live = self._live(coefs, k)
            if not live:
                continue
            h = hidden2d[sl.rows].to(self.head.dtype)  # [S, H]
            dz, outs, top_k = self._slice_grad(h, (w, b), k, live, acc)  # [S, V]
            for (t, _), out in zip(live, outs, strict=True):
                vals[t].append(out)
            if top_k is not None:
                top[sl.rows] = top_k
            if dz is not None:
                acc.add_head(sl.rows, dz, h, w)
        return (*self._cat(vals, hidden2d.device), top), acc.result()

    def _live(self, per_group: Sequence[Tensor], k: int) -> list[tuple[int, Tensor]]:
        """``(term, its groups' share of per_group[term])`` for the terms that have groups in slice ``k``."""
        return [(t, per_group[t][slice(*self.plan.groups[t][k])])
                for t in range(len(self.prepared)) if self.plan.parts[t][k] is not None]

    def _slice_grad(
        self, h: Tensor, head: tuple[Tensor, Tensor | None], k: int, live: list[tuple[int, Tensor]], acc: _Grads
    ) -> tuple[Tensor | None, list[Tensor], Tensor | None]:
        """Slice ``k`` with autograd on: ``(dL/dz_raw [S, V], the terms' values, argmax)``; adds the extras' grads."""
        with torch.enable_grad():
            raw = self.head.raw(h, *head).requires_grad_()  # [S, V] a leaf: nothing upstream is recorded
            z = self.head.finish(raw)  # [S, V]
            outs = [self.prepared[t].values(z, self.plan.parts[t][k], acc.extras[t]) for t, _ in live]
            wanted = [t for t, _ in live if acc.extras_need[t]]
            grad_out = [g.to(o.dtype) for (_, g), o in zip(live, outs, strict=True)]
            got = torch.autograd.grad(outs, [raw, *(acc.extras[t] for t in wanted)], grad_out, allow_unused=True)
        for t, g in zip(wanted, got[1:], strict=True):
            acc.add_extra(t, g)
        top = z.detach().argmax(-1) if self.argmax else None
        return got[0], [o.detach() for o in outs], top

    def _empty_top(self, hidden2d: Tensor) -> Tensor:
        n = hidden2d.shape[0] if self.argmax else 0
        return torch.full((n,), -1, dtype=torch.long, device=hidden2d.device)

    def _cat(self, vals: list[list[Tensor]], device: torch.device) -> list[Tensor]:
        dtype = self.head.loss_dtype
        return [torch.cat(v) if v else torch.zeros(0, dtype=dtype, device=device) for v in vals]


class _Grads:
    """Gradient accumulators of the sliced head: written slice by slice, in place."""

    def __init__(self, hidden2d: Tensor, weight: Tensor, bias: Tensor | None, extras: Sequence[Tensor | None],
                 needs: Sequence[bool]) -> None:
        self.dh = torch.zeros_like(hidden2d) if needs[0] else None  # [N, H]
        self.weight, self.need_w = weight, bool(needs[1])
        self.dw: Tensor | None = None  # [V, H], made by the first slice's product (no zeros + add)
        self.db = torch.zeros_like(bias) if needs[2] and bias is not None else None  # [V]
        self.extras_need = [bool(n) and e is not None for e, n in zip(extras, needs[3:], strict=True)]
        self.extras = [e.detach().requires_grad_() if n else e
                       for e, n in zip(extras, self.extras_need, strict=True)]
        self.de: list[Tensor | None] = [torch.zeros_like(e) if n else None
                                        for e, n in zip(extras, self.extras_need, strict=True)]

    def add_head(self, rows: Tensor | slice, dz: Tensor, h: Tensor, w: Tensor) -> None:
        """``dh[rows] = dz @ W``, ``dW += dz^T h``, ``db += Σ dz`` for one slice."""
        if self.dh is not None:
            self.dh[rows] = (dz @ w).to(self.dh.dtype)  # [S, H]
        if self.need_w and self.dw is None:
            self.dw = (dz.t() @ h).to(self.weight.dtype)  # [V, H]
        elif self.dw is not None and dz.dtype == self.dw.dtype:
            self.dw.addmm_(dz.t(), h)  # [V, H] in place: no second weight-sized buffer
        elif self.dw is not None:
            self.dw.add_(dz.t() @ h)  # low-precision product, accumulated in the weight's dtype
        if self.db is not None:
            self.db.add_(dz.sum(0))

    def add_extra(self, t: int, grad: Tensor | None) -> None:
        de = self.de[t]
        if grad is not None and de is not None:
            de.add_(grad)

    def result(self) -> list[Tensor | None]:
        if self.need_w and self.dw is None:  # no slice had anything to back-propagate
            self.dw = torch.zeros_like(self.weight)
        return [self.dh, self.dw, self.db, *self.de]


class _SlicedHead(torch.autograd.Function):
    """``(hidden2d, W, b, *extras) → (per-term group values..., argmax)`` with slice-wise recomputation."""

    @staticmethod
    def forward(
        ctx: Any, run: _Run, hidden2d: Tensor, weight: Tensor, bias: Tensor | None, *extras: Tensor | None
    ) -> tuple[Tensor, ...]:
        ctx.run = run
        ctx.save_for_backward(hidden2d, weight, bias, *extras)
        with torch.autocast(hidden2d.device.type, enabled=False):  # the head's dtype is fixed in run.head
            out = run.forward(hidden2d, weight, bias, extras)
        ctx.mark_non_differentiable(out[-1])
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        saved = ctx.saved_tensors
        with torch.autocast(saved[0].device.type, enabled=False):
            got = ctx.run.backward(grads[:-1], saved, ctx.needs_input_grad[1:])
        return (None, *got)


class _FusedHead(torch.autograd.Function):
    """``(hidden2d, W, b, *extras) → (total, per-term group values..., argmax)``, gradients made in forward.

    ``total = Σ_t coefs_t · values_t`` for coefficients known up front; every slice is computed once and
    back-propagated at once, the gradients are kept, and backward only scales them by ``dL/dtotal``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        run: _Run,
        coefs: list[Tensor],
        hidden2d: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        *extras: Tensor | None,
    ) -> tuple[Tensor, ...]:
        with torch.autocast(hidden2d.device.type, enabled=False):
            out, ctx.grads = run.fused((hidden2d, weight, bias, *extras), coefs, ctx.needs_input_grad[2:])
        total = _weighted(coefs, out[:-1])  # Σ_t weight_t · loss_t
        ctx.mark_non_differentiable(*out)
        return (total, *out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_total: Tensor, *_: Tensor) -> tuple[Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        scale = None if bool(grad_total == 1) else grad_total
        if scale is not None:
            for g in grads:
                if g is not None:
                    g.mul_(scale.to(g.dtype))
        return (None, None, *grads)


# ------------------------------------------------------------------------------------------------- the API
def sliced_losses(
    hidden: Tensor,
    head: LMHead,
    *,
    targets: Tensor | None = None,
    terms: Sequence[SlicedTerm] = (),
    slice_positions: int | None = None,
    ignore_index: int = -100,
    argmax: bool = False,
    weights: Sequence[float] | None = None,
) -> SlicedOutput:
    """The student's CE and KD terms from its last hidden states, never forming ``[B·T, V]`` logits.

    Args:
        hidden: ``[B, T, H]`` final hidden states of the student body (final norm applied).
        head: the LM head (``LMHead.from_hf(model)``).
        targets: ``[B, T]`` next-token targets (already shifted; ``ignore_index`` = not counted), for CE.
        terms: the KD terms, each with its own loss module and teacher inputs; they share one logits pass.
        slice_positions: positions per slice (default ``auto_slice_positions(V)``); a slice never splits
            a chunk of any term, so it may grow to the end of the chunks it cuts into.
        argmax: also return the student's top-1 at the positions some term reads.
        weights: fixed coefficients of the losses (CE first when ``targets`` is given, then one per term).
            Given, the gradient of ``total = Σ weight · loss`` is formed during this call (each slice's
            head matmul runs once: 3 matmuls like the full-logits path, not 4) and only ``total`` is
            differentiable; use it when the combination does not depend on this step's loss values
            (fixed CE/KD scaling; static or teacher-score multi-teacher weights). Without, every loss
            is differentiable on its own and each slice is recomputed in the backward pass.

    Returns ``SlicedOutput``; its values equal ``next_token_ce`` / the loss modules on the full logits
    ``head(hidden)``, and so do the gradients w.r.t. ``hidden``, ``head.weight``, ``head.bias`` and any
    learnable projection. Positions no term reads are never computed.
    """
    bsz, seq = check_inputs(hidden, head, targets)
    math_ = _HeadMath.of(head, hidden)
    prepared: list[PreparedLoss] = [PreparedCE(targets, ignore_index)] if targets is not None else []
    prepared += [t.prepare((bsz, seq), head.vocab_size, math_.loss_dtype) for t in terms]
    if not prepared:
        raise ValueError("sliced_losses: nothing to compute (no targets and no KD terms)")
    size = slice_positions or auto_slice_positions(head.vocab_size)
    if size < 1:
        raise ValueError(f"sliced_losses: slice_positions must be >= 1, got {size}")
    run = _Run(math_, prepared, _Plan(prepared, bsz * seq, size, hidden.device), argmax)
    inputs = (hidden.reshape(bsz * seq, -1), head.weight, head.bias, *(p.extra for p in prepared))
    total, out = _apply(run, inputs, weights)
    losses = [p.reduce(v) for p, v in zip(prepared, out[:-1], strict=True)]
    ce = losses.pop(0) if targets is not None else None
    top = out[-1].reshape(bsz, seq) if argmax else None
    return SlicedOutput(ce, losses, top, len(run.plan.slices), total)


def _apply(
    run: _Run, inputs: tuple[Tensor | None, ...], weights: Sequence[float] | None
) -> tuple[Tensor | None, Sequence[Tensor]]:
    """Run the recomputing function (no ``weights``) or the fused one; returns ``(total, outputs)``."""
    if weights is None:
        return None, _SlicedHead.apply(run, *inputs)
    if len(weights) != len(run.prepared):
        raise ValueError(
            f"sliced_losses: {len(run.prepared)} losses (CE first, then the terms) but {len(weights)} weights"
        )
    device, dtype = run.prepared[0].positions.device, run.head.loss_dtype
    coefs = [float(w) * _reduce_coefs(p, dtype, device) for w, p in zip(weights, run.prepared, strict=True)]
    if not torch.is_grad_enabled():  # no gradient wanted: the plain forward, then the weighted sum
        out = _SlicedHead.apply(run, *inputs)
        return _weighted(coefs, out[:-1]), out
    total, *out = _FusedHead.apply(run, coefs, *inputs)
    return total, out


def _weighted(coefs: Sequence[Tensor], values: Sequence[Tensor]) -> Tensor:
    """``Σ_t coefs_t · values_t``: the weighted sum of the losses (their reduces are linear)."""
    total = torch.zeros((), dtype=coefs[0].dtype, device=coefs[0].device)
    for c, v in zip(coefs, values, strict=True):
        total = total + (c * v).sum()
    return total


def _reduce_coefs(prepared: PreparedLoss, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``[G]`` d loss / d values of a prepared loss (its ``reduce`` is linear, so a constant)."""
    values = torch.zeros(prepared.n_groups, dtype=dtype, device=device, requires_grad=True)
    with torch.enable_grad():
        (coef,) = torch.autograd.grad(prepared.reduce(values), values, allow_unused=True)
    return torch.zeros_like(values) if coef is None else coef.detach()


def check_inputs(hidden: Tensor, head: LMHead, targets: Tensor | None) -> tuple[int, int]:
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H], got {tuple(hidden.shape)}")
    if head.weight.dim() != 2 or head.weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"head weight {tuple(head.weight.shape)} does not fit hidden {tuple(hidden.shape)}")
    if targets is not None and tuple(targets.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"targets {tuple(targets.shape)} must be [B, T] = {tuple(hidden.shape[:2])}")
    return int(hidden.shape[0]), int(hidden.shape[1])
