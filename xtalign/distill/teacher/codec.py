"""The stored form of a teacher answer, one blob per sample row: `exact` (today's tensors, bit for bit) or `compact`.

`encode_rows(out, lengths, cfg)` turns a `TeacherTopK` ``[B, T, K]`` into one ``bytes`` per row (positions
``[0, lengths[b])`` of row b), so a cache keyed per sample serves any batch geometry; `decode_rows(blobs, cfg,
vocab_size, temperature)` builds the padded ``[B, width, K_out]`` answer back. Numpy only at import; torch is
imported to read and build `TeacherTopK` tensors, pyarrow only for the ``zstd`` compressor.

``exact`` stores bf16 logits (their 16-bit patterns), int32 ids and fp32 logsumexp and target log-prob, optionally
compressed losslessly: the decoded tensors equal the encoded ones bitwise at every position within the lengths.

``compact`` stores what the losses read, the log-probabilities of the kept ids, quantised:

- per position the top log-prob ``a = max(logits)/T - logsumexp`` on a fine grid (``TOP_STEP = 2**-12`` nats), and
  for every other kept slot its offset below the DECODED top, ``c_j = round((a_dec - lp_j) / step)``: every kept
  log-prob comes back within ``step / 2`` (the top within ``TOP_STEP / 2``). The offsets are sorted, so they are
  stored as differences of consecutive codes (mostly 0 to 3: about 2 bits each after compression). bf16 logits
  in [8, 16) lie on a 1/16 grid and those in [16, 32) on a 1/8 grid, so ``step = 1/16`` reproduces the offsets
  between bf16 logits of 8 and above exactly; bf16 itself rounds a logit in [16, 32) by up to 1/16.
- adaptive k: per position the smallest number of top ids whose teacher probability reaches ``mass``, at most
  ``k`` (``mass = 1`` keeps ``min(k, K)``);
- the kept ids in rank order (``ids = "raw"``: int32; ``"rank"``: a per-row table of the distinct ids, most
  frequent first, and each slot's index into it, uint16);
- the target log-prob on a ``TARGET_STEP = 2**-10`` grid (0 stays 0: ignored targets).

Each stream is compressed on its own (``lzma`` raw LZMA2 with per-stream literal settings, ``zlib``, ``zstd``, or
``none``). The decoded answer carries the log-probs themselves: ``logits = lp · T`` in fp32 and ``logsumexp = 0``,
so ``logprobs()`` returns them; ``target_logprob`` is restored.

Padding. A position keeps ``n ≤ K_out`` ids; slots ``[n, K_out)`` hold DISTINCT ids that are not among the
position's kept ids (the smallest such ids) at the maximum-entropy fill value ``f = log(r / (V - n))``, ``r`` the
teacher mass outside the n kept ids. Then ``fill_logprob()`` of the padded answer is again ``f`` (the padded slots
take exactly their share of ``r``), GOLD / H-KL / ULD pool the same distribution as from the n kept ids alone (a
slot at the fill adds nothing to its id's pooled value), no id repeats within a position (P-KL's scatter and the
top-k KL's gather stay well defined), and P-KL's subset / the top-k KL see the padded ids as extra ids at the fill
value. Positions at or beyond a row's length come back as the worker's padded positions do: a uniform
distribution (every slot ``-log V``, ids ``0..K_out-1``), target log-prob 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from xtalign.distill.teacher.streams import COMPRESSORS, DEFAULT_LEVELS, HEADER, MAGIC, CodecError, pack, unpack

if TYPE_CHECKING:  # torch is imported where tensors are read or built
    from xtalign.losses import TeacherTopK

__all__ = ["COMPRESSORS", "TARGET_STEP", "TOP_STEP", "CodecConfig", "CodecError", "RowArrays", "decode_row",
           "decode_rows", "encode_row", "encode_rows", "row_arrays"]

Kind = Literal["exact", "compact"]
Compressor = Literal["none", "zlib", "lzma", "zstd"]
IdMode = Literal["raw", "rank"]

TOP_STEP = 2.0**-12  # nats: the grid of each position's top log-prob
TARGET_STEP = 2.0**-10  # nats: the grid of the target log-prob
LOG_FLOOR = -60.0  # as xtalign.losses.types.LOG_FLOOR (not imported: that module needs torch)
_LP_MIN = 2 * LOG_FLOOR  # kept log-probs are clamped here before quantising (e^-120 is 0 in fp32)
_KINDS = ("exact", "compact")
_ID_MODES = ("raw", "rank")
_F_TARGET, _F_RANK, _F_WIDE, _F_F32 = 1, 2, 4, 8  # target stored; rank-table ids; uint32 index; fp32 logits




@dataclass(frozen=True, kw_only=True)
class CodecConfig:
    """How teacher answers are stored.

    Attributes:
        kind: ``exact`` (today's tensors, bitwise) or ``compact`` (quantised log-probs, adaptive k).
        k: compact: the most ids kept per position (the answer's own K if smaller).
        step: compact: the log-prob quantisation step in nats (error ≤ step / 2 per kept log-prob).
        mass: compact: keep the top ids until their teacher probability reaches this (1.0 = keep ``k``).
        ids: compact: ``raw`` int32 ids or ``rank`` (per-row table of distinct ids by frequency + uint16 index).
        compressor: ``lzma`` (stdlib, raw LZMA2), ``zlib``, ``zstd`` (through pyarrow) or ``none``.
        level: the compressor's level (lzma preset 0-9, zlib 0-9, zstd 1-22); None = its default here.
    """

    kind: Kind = "compact"
    k: int = 64
    step: float = 1.0 / 16
    mass: float = 1.0
    ids: IdMode = "rank"
    compressor: Compressor = "lzma"
    level: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"CodecConfig: kind must be one of {_KINDS}, got {self.kind!r}")
        if self.compressor not in COMPRESSORS:
            raise ValueError(f"CodecConfig: compressor must be one of {COMPRESSORS}, got {self.compressor!r}")
        if self.ids not in _ID_MODES:
            raise ValueError(f"CodecConfig: ids must be one of {_ID_MODES}, got {self.ids!r}")
        if not 1 <= self.k <= 65535:
            raise ValueError(f"CodecConfig: k must lie in [1, 65535], got {self.k}")
        if not (math.isfinite(self.step) and 2 * TOP_STEP <= self.step <= 8.0):
            raise ValueError(f"CodecConfig: step must lie in [{2 * TOP_STEP}, 8] nats, got {self.step}")
        if not 0.0 < self.mass <= 1.0:
            raise ValueError(f"CodecConfig: mass must lie in (0, 1], got {self.mass}")
        if self.level is not None and not -1 <= self.level <= 22:
            raise ValueError(f"CodecConfig: level must lie in [-1, 22], got {self.level}")

    @property
    def compress_level(self) -> int:
        return DEFAULT_LEVELS[self.compressor] if self.level is None else int(self.level)


# --- one row as arrays ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowArrays:
    """One row's answer over its ``T`` positions, as numpy arrays.

    ``logits`` ``[T, K]``: exact: the bf16 bit patterns (int16); compact: fp32 log-probs of the kept slots
    (``n[t]`` kept at position t, slots beyond hold 0). ``ids`` ``[T, K]`` int32 (0 beyond ``n``); ``logsumexp``
    ``[T]`` fp32 (compact: None); ``target`` ``[T]`` fp32 or None; ``n`` ``[T]`` kept ids per position.
    """

    kind: str
    logits: np.ndarray
    ids: np.ndarray
    logsumexp: np.ndarray | None
    target: np.ndarray | None
    n: np.ndarray
    vocab_size: int
    temperature: float

    @property
    def positions(self) -> int:
        return int(self.ids.shape[0])


def row_arrays(out: TeacherTopK, lengths: np.ndarray) -> list[tuple[np.ndarray, ...]]:
    """Per row ``(logits [T, K], ids [T, K] int32, logsumexp [T] fp32, target [T] fp32 | None)`` on the host, cut
    to its length; bf16 logits (the worker's) as their 16-bit patterns (int16), any other dtype as float64."""
    import torch

    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    b, t = out.logits.shape[:2]
    if lengths.shape != (b,) or (lengths.size and (lengths.min() < 0 or lengths.max() > t)):
        raise ValueError(f"encode_rows: lengths must be [B={b}] in [0, {t}], got {lengths.tolist()}")
    logits = out.logits.detach()
    if logits.dtype == torch.bfloat16:
        bits = logits.contiguous().view(torch.int16).cpu().numpy()
    else:
        bits = logits.double().cpu().numpy()
    ids = out.ids.detach().to(torch.int32).cpu().numpy()
    lse = out.logsumexp.detach().float().cpu().numpy()
    tl = None if out.target_logprob is None else out.target_logprob.detach().float().cpu().numpy()
    return [(bits[r, :n], ids[r, :n], lse[r, :n], None if tl is None else tl[r, :n])
            for r, n in enumerate(lengths.tolist())]


def _bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.int32) << 16).view(np.float32)


def kept_counts(lp: np.ndarray, k: int, mass: float) -> np.ndarray:
    """``[T]`` ids kept per position: the fewest top ids (``lp [T, K]`` sorted descending) whose probability
    reaches ``mass``, at most ``k``; ``mass = 1`` keeps ``min(k, K)``."""
    t, width = lp.shape
    cap = min(k, width)
    if mass >= 1.0 or width == 0:
        return np.full(t, cap, dtype=np.int64)
    cum = np.cumsum(np.exp(lp), axis=1)  # [T, K]
    return np.minimum((cum < mass).sum(axis=1) + 1, cap).astype(np.int64)


def encode_row(bits: np.ndarray, ids: np.ndarray, lse: np.ndarray, target: np.ndarray | None, *, vocab_size: int,
               temperature: float, cfg: CodecConfig) -> bytes:
    """One row's blob from its host arrays (logits ``[T, K]``: bf16 bits as int16, or floats; ids ``[T, K]``,
    logsumexp ``[T]``, target ``[T]`` or None). ``exact`` keeps bf16 logits as bf16 and others as fp32."""
    t, width = bits.shape
    flags = _F_TARGET if target is not None else 0
    is_bf16 = bits.dtype == np.int16
    comp, level = COMPRESSORS.index(cfg.compressor), cfg.compress_level
    if cfg.kind == "exact":
        flags |= 0 if is_bf16 else _F_F32
        header = (MAGIC, 0, flags, comp, level, t, width, vocab_size, temperature, 0.0)
        streams = [bits if is_bf16 else bits.astype(np.float32), ids.astype(np.int32), lse.astype(np.float32)]
        if target is not None:
            streams.append(target.astype(np.float32))
        return pack(header, streams, cfg.compressor, level)
    raw = _bf16_to_f32(bits) if is_bf16 else bits
    lp = raw.astype(np.float64) / temperature - lse.astype(np.float64)[:, None]  # [T, K]
    order = np.argsort(-lp, axis=1, kind="stable")  # sorted descending, ties in slot order
    lp = np.maximum(np.take_along_axis(lp, order, axis=1), _LP_MIN)
    ids = np.take_along_axis(ids.astype(np.int64), order, axis=1)
    n = kept_counts(lp, cfg.k, cfg.mass)  # [T]
    kmax = int(n.max()) if t else 0
    top_code = np.rint(-lp[:, 0] / TOP_STEP).astype(np.int64) if width else np.zeros(t, np.int64)  # [T]
    top = -top_code * TOP_STEP
    codes = np.maximum(np.rint((top[:, None] - lp[:, :kmax]) / cfg.step), 0).astype(np.int64)  # [T, kmax]
    diffs = np.diff(codes, axis=1)  # [T, kmax - 1] ≥ 0: codes are sorted
    slot = np.arange(kmax)
    keep = slot[None, :] < n[:, None]  # [T, kmax]
    d = diffs[keep[:, 1:]]  # [Σ (n - 1)] row-major
    small = np.minimum(d, 255).astype(np.uint8)
    escapes = d[d >= 255].astype(np.uint32)
    kept_ids = ids[:, :kmax][keep]  # [Σ n]
    count_dt = np.uint8 if kmax <= 255 else np.uint16
    streams = [n.astype(count_dt), top_code.astype(np.int32), small, escapes]
    if cfg.ids == "rank":
        flags |= _F_RANK
        uniq, inverse, counts = np.unique(kept_ids, return_inverse=True, return_counts=True)
        by_freq = np.argsort(-counts, kind="stable")  # most frequent first
        rank = np.empty_like(by_freq)
        rank[by_freq] = np.arange(by_freq.shape[0])
        index_dt = np.uint16 if uniq.shape[0] <= 65536 else np.uint32
        flags |= 0 if index_dt is np.uint16 else _F_WIDE
        streams += [uniq[by_freq].astype(np.int32), rank[inverse.reshape(-1)].astype(index_dt)]
    else:
        streams += [kept_ids.astype(np.int32), np.zeros(0, np.uint16)]
    if target is not None:
        streams.append(np.rint(-target.astype(np.float64) / TARGET_STEP).clip(-2**31, 2**31 - 1).astype(np.int32))
    header = (MAGIC, 1, flags, comp, level, t, kmax, vocab_size, temperature, cfg.step)
    return pack(header, streams, cfg.compressor, level)


def encode_rows(out: TeacherTopK, lengths: np.ndarray, cfg: CodecConfig) -> list[bytes]:
    """One blob per row of ``out`` (positions ``[0, lengths[b])`` of row b)."""
    return [encode_row(*row, vocab_size=int(out.vocab_size), temperature=float(out.temperature), cfg=cfg)
            for row in row_arrays(out, lengths)]


def decode_row(blob: bytes, cfg: CodecConfig | None = None) -> RowArrays:
    """One blob back to arrays; with ``cfg``, refuse a blob of another kind or step."""
    if len(blob) < HEADER.size or blob[:4] != MAGIC:
        raise CodecError("not a teacher-answer blob (bad magic or too short); the cache is damaged or of another "
                         "format: recompute the teacher")
    head = HEADER.unpack_from(blob, 0)
    kind_code, flags, t, width, vocab, temperature, step = head[1], head[2], head[5], head[6], head[7], head[8], head[9]
    if kind_code >= len(_KINDS):
        raise CodecError(f"teacher-answer blob of unknown kind {kind_code}; recompute the teacher")
    kind = _KINDS[kind_code]
    if cfg is not None and (kind != cfg.kind or (kind == "compact" and step != cfg.step)):
        raise CodecError(f"teacher-answer blob was stored as {kind}" + (f" (step {step})" if kind == "compact" else "")
                         + f", this run reads {cfg.kind}" + (f" (step {cfg.step})" if cfg.kind == "compact" else "")
                         + "; use a cache made with this codec setting")
    has_target = bool(flags & _F_TARGET)
    if kind == "exact":
        logit_dt = np.dtype(np.float32 if flags & _F_F32 else np.int16)
        dts = [logit_dt, np.dtype(np.int32), np.dtype(np.float32)] + [np.dtype(np.float32)] * has_target
        _, s = unpack(blob, dts)
        if s[0].size != t * width or s[1].size != t * width or s[2].size != t:
            raise CodecError("teacher-answer blob: streams do not match its shape; recompute the teacher")
        return RowArrays("exact", s[0].reshape(t, width), s[1].reshape(t, width), s[2],
                         s[3] if has_target else None, np.full(t, width, np.int64), vocab, temperature)
    count_dt = np.dtype(np.uint8 if width <= 255 else np.uint16)
    index_dt = np.dtype(np.uint32 if flags & _F_WIDE else np.uint16)
    dts = [count_dt, np.dtype(np.int32), np.dtype(np.uint8), np.dtype(np.uint32), np.dtype(np.int32), index_dt]
    dts += [np.dtype(np.int32)] * has_target
    _, s = unpack(blob, dts)
    n = s[0].astype(np.int64)
    if n.shape[0] != t or (t and (n.min() < 1 or n.max() > width)):
        raise CodecError("teacher-answer blob: kept counts out of range; recompute the teacher")
    keep = np.arange(width)[None, :] < n[:, None]  # [T, K]
    total = int(n.sum())
    d = s[2].astype(np.int64)
    if d.shape[0] != total - t:
        raise CodecError("teacher-answer blob: offsets do not match the kept counts; recompute the teacher")
    big = d == 255
    if int(big.sum()) != s[3].shape[0]:
        raise CodecError("teacher-answer blob: escape stream does not match; recompute the teacher")
    d[big] = s[3]
    dense = np.zeros((t, width), dtype=np.int64)
    if width > 1:
        dense[:, 1:][keep[:, 1:]] = d
    codes = np.cumsum(dense, axis=1)  # [T, K]
    top = -s[1].astype(np.float64) * TOP_STEP  # [T]
    lp = np.where(keep, top[:, None] - codes * step, 0.0).astype(np.float32)
    if flags & _F_RANK:
        table, index = s[4], s[5]
        if index.shape[0] != total or (total and int(index.max()) >= table.shape[0]):
            raise CodecError("teacher-answer blob: id index out of its table; recompute the teacher")
        kept_ids = table[index]
    else:
        kept_ids = s[4]
        if kept_ids.shape[0] != total:
            raise CodecError("teacher-answer blob: ids do not match the kept counts; recompute the teacher")
    ids = np.zeros((t, width), dtype=np.int32)
    ids[keep] = kept_ids
    target = (-s[6].astype(np.float64) * TARGET_STEP).astype(np.float32) if has_target else None
    return RowArrays("compact", lp, ids, None, target, n, vocab, temperature)


# --- a batch back ---------------------------------------------------------------------------------------------------


def _pad_slots(lp: np.ndarray, ids: np.ndarray, n: np.ndarray, vocab: int) -> None:
    """Fill slots ``[n[t], K)`` of positions that kept fewer than K ids, in place (``lp``, ``ids`` ``[T, K]``).

    Value: the maximum-entropy fill ``log(r / (V - n))`` from the position's kept log-probs (float64), clamped as
    `TeacherTopK.fill_logprob` clamps (at most the smallest kept log-prob, at least ``LOG_FLOOR``). Ids: the
    smallest ids not kept at the position, in ascending order (distinct; all < V since K ≤ V).
    """
    t, k = lp.shape
    short = np.flatnonzero(n < k)
    if short.size == 0:
        return
    ns = n[short]
    keep = np.arange(k)[None, :] < ns[:, None]  # [S, K]
    x = np.where(keep, lp[short].astype(np.float64), -np.inf)
    top = x[:, 0]  # kept slots are sorted: slot 0 is the largest
    mass = top + np.log(np.exp(x - top[:, None]).sum(axis=1))  # [S] log of the kept mass
    mass = np.minimum(mass, -1e-7)
    rest = np.where(mass > -math.log(2.0), np.log(-np.expm1(mass)), np.log1p(-np.exp(mass)))
    low = x[np.arange(short.size), ns - 1]  # smallest kept log-prob
    fill = np.maximum(np.minimum(rest - np.log(np.maximum(vocab - ns, 1)), low), LOG_FLOOR)
    lp[short] = np.where(keep, lp[short], fill[:, None].astype(np.float32))
    span = min(vocab, k + int(ns.max()))  # the first (k - n) free ids lie below k + n
    taken = np.zeros((short.size, span), dtype=bool)
    kid = ids[short]
    rows = np.broadcast_to(np.arange(short.size)[:, None], kid.shape)
    hit = keep & (kid < span)
    taken[rows[hit], kid[hit]] = True
    r, c = np.nonzero(~taken)  # free candidates, row by row ascending
    first = np.cumsum(span - taken.sum(axis=1)) - (span - taken.sum(axis=1))  # [S] where each row's run starts
    rank = np.arange(r.shape[0]) - first[r]
    sel = rank < (k - ns)[r]
    ids[short[r[sel]], ns[r[sel]] + rank[sel]] = c[sel]


def decode_rows(blobs: list[bytes], cfg: CodecConfig, vocab_size: int, temperature: float, *,
                width: int | None = None, pad_to: int | None = None, device: Any = None) -> TeacherTopK:
    """The rows' answer ``[B, width, K_out]`` (``width`` default: the longest row; ``K_out``: exact: the stored K;
    compact: the most ids any position kept, or ``pad_to``). See the module docstring for the padding."""
    import torch

    from xtalign.losses import TeacherTopK

    rows = [decode_row(b, cfg) for b in blobs]
    for r in rows:
        if r.vocab_size != vocab_size or not math.isclose(r.temperature, temperature, rel_tol=1e-9):
            raise CodecError(f"teacher-answer blob was made for V={r.vocab_size}, T={r.temperature}; this run reads "
                             f"V={vocab_size}, T={temperature}")
    longest = max((r.positions for r in rows), default=0)
    width = longest if width is None else int(width)
    if width < longest:
        raise ValueError(f"decode_rows: width {width} is shorter than the longest row ({longest} positions)")
    targets = {r.target is not None for r in rows}
    if len(targets) > 1:
        raise CodecError("decode_rows: some rows carry a target log-prob and some do not")
    has_target = targets == {True}
    b = len(rows)
    tl = np.zeros((b, width), dtype=np.float32)
    if cfg.kind == "exact":
        ks = {r.ids.shape[1] for r in rows} or {min(cfg.k, vocab_size)}
        dts = {r.logits.dtype for r in rows} or {np.dtype(np.int16)}
        if len(ks) > 1 or len(dts) > 1:
            raise CodecError(f"decode_rows: exact rows were stored at different k or logit dtypes ({sorted(ks)})")
        k, dt = ks.pop(), dts.pop()
        bits = np.zeros((b, width, k), dtype=dt)  # padded positions: logits 0, uniform like the worker's
        ids = np.broadcast_to(np.arange(k, dtype=np.int32), (b, width, k)).copy()
        lse = np.full((b, width), math.log(vocab_size), dtype=np.float32)  # logsumexp of V zero logits
        for i, r in enumerate(rows):
            t = r.positions
            bits[i, :t], ids[i, :t], lse[i, :t] = r.logits, r.ids, r.logsumexp
            if r.target is not None:
                tl[i, :t] = r.target
        logits = torch.from_numpy(bits).view(torch.bfloat16) if dt == np.int16 else torch.from_numpy(bits)
        out_lse = torch.from_numpy(lse)
    else:
        kmax = max((r.ids.shape[1] for r in rows if r.positions), default=1)
        k = max(kmax, 1) if pad_to is None else int(pad_to)
        if k < kmax or k > vocab_size:
            raise ValueError(f"decode_rows: pad_to={pad_to} must lie in [{kmax}, V={vocab_size}]")
        lp = np.full((b, width, k), -math.log(vocab_size), dtype=np.float32)  # padded positions: uniform
        ids = np.broadcast_to(np.arange(k, dtype=np.int32), (b, width, k)).copy()
        for i, r in enumerate(rows):
            t, w = r.positions, r.ids.shape[1]
            if t == 0:
                continue
            row_lp, row_ids = lp[i, :t], ids[i, :t]  # views
            row_lp[:, :w], row_ids[:, :w] = r.logits, r.ids
            _pad_slots(row_lp, row_ids, r.n, vocab_size)
            if r.target is not None:
                tl[i, :t] = r.target
        if temperature != 1.0:
            lp *= np.float32(temperature)
        logits = torch.from_numpy(lp)
        out_lse = torch.zeros((b, width), dtype=torch.float32)
    out = TeacherTopK(logits=logits, ids=torch.from_numpy(ids), logsumexp=out_lse, vocab_size=int(vocab_size),
                      temperature=float(temperature), target_logprob=torch.from_numpy(tl) if has_target else None)
    return out if device is None else out.to(device)
