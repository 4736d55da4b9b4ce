"""xtalign.distill.teacher.codec: exact blobs round-trip bitwise; compact blobs keep exactly the top ids, stop the
adaptive k where the mass says, quantise within step / 2, restore the target, and pad so that every loss sees the
answer with its dropped tail re-filled."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from xtalign.distill.teacher.codec import (
    TARGET_STEP,
    TOP_STEP,
    CodecConfig,
    CodecError,
    decode_row,
    decode_rows,
    encode_rows,
)
from xtalign.losses import GoldConfig, PKLConfig, SparseProjection, TeacherTopK, TopKKLConfig, ULDConfig
from xtalign.losses.types import LOG_FLOOR

COMPRESSORS = ("none", "zlib", "lzma", "zstd")


def worker_answer(
    b: int,
    t: int,
    v: int,
    k: int,
    *,
    seed: int = 0,
    scale: float = 3.0,
    temperature: float = 1.0,
    targets: bool = True,
    bf16: bool = True,
) -> TeacherTopK:
    """An answer as `TeacherWorker.forward` makes it: bf16 top-k logits (fp32 with ``bf16=False``), int32 ids,
    fp32 logsumexp / target."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(b, t, v, generator=gen) * scale + 10.0
    tg = torch.randint(0, v, (b, t), generator=gen) if targets else None
    if tg is not None:
        tg[:, -1] = -100
    full = TeacherTopK.from_logits(z, k, temperature, tg)
    return TeacherTopK(
        logits=full.logits.to(torch.bfloat16 if bf16 else torch.float32),
        ids=full.ids,
        logsumexp=full.logsumexp.float(),
        vocab_size=v,
        temperature=temperature,
        target_logprob=None if tg is None else full.target_logprob.float(),
    )


def input_logprobs(out: TeacherTopK) -> np.ndarray:
    """float64 log-probs of the answer's slots, as the encoder sees them."""
    return (out.logits.double() / out.temperature - out.logsumexp.double()[..., None]).numpy()


def roundtrip(out: TeacherTopK, lengths, cfg: CodecConfig, **kw) -> TeacherTopK:
    blobs = encode_rows(out, np.asarray(lengths), cfg)
    return decode_rows(blobs, cfg, out.vocab_size, out.temperature, width=out.logits.shape[1], **kw)


# --- exact ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compressor", COMPRESSORS)
@pytest.mark.parametrize(("targets", "bf16"), [(True, True), (False, True), (True, False)])
def test_exact_round_trip_is_bitwise(compressor: str, targets: bool, bf16: bool) -> None:
    out = worker_answer(3, 17, 300, 16, seed=1, targets=targets, bf16=bf16)
    lengths = [17, 5, 0]
    dec = roundtrip(out, lengths, CodecConfig(kind="exact", compressor=compressor))
    assert (
        dec.logits.dtype == out.logits.dtype and dec.ids.dtype == torch.int32 and dec.logsumexp.dtype == torch.float32
    )
    assert (dec.target_logprob is None) == (not targets)
    for r, n in enumerate(lengths):
        view = torch.int16 if bf16 else torch.int32
        assert torch.equal(dec.logits[r, :n].view(view), out.logits[r, :n].view(view))
        assert torch.equal(dec.ids[r, :n], out.ids[r, :n])
        assert torch.equal(dec.logsumexp[r, :n].view(torch.int32), out.logsumexp[r, :n].view(torch.int32))
        if targets:
            assert torch.equal(dec.target_logprob[r, :n].view(torch.int32), out.target_logprob[r, :n].view(torch.int32))
    # padded positions: the worker's uniform answer (logits 0, logsumexp log V, distinct ids), target 0
    assert torch.allclose(dec.logprobs()[1, 5:], torch.full((12, 16), -math.log(300)))
    assert all(len(set(dec.ids[2, t].tolist())) == 16 for t in range(17))


def test_exact_blobs_are_per_row() -> None:
    """A row's blob does not depend on the other rows of its batch or on the batch's padding width."""
    out = worker_answer(3, 12, 200, 8, seed=2)
    cfg = CodecConfig(kind="exact", compressor="lzma")
    blobs = encode_rows(out, np.array([12, 7, 3]), cfg)
    alone = TeacherTopK(
        logits=out.logits[1:2, :9],
        ids=out.ids[1:2, :9],
        logsumexp=out.logsumexp[1:2, :9],
        vocab_size=200,
        target_logprob=out.target_logprob[1:2, :9],
    )
    assert encode_rows(alone, np.array([7]), cfg)[0] == blobs[1]
    reread = decode_rows([blobs[2], blobs[0]], cfg, 200, 1.0)  # another batch geometry
    assert reread.logits.shape == (2, 12, 8)
    assert torch.equal(reread.ids[0, :3], out.ids[2, :3]) and torch.equal(reread.ids[1], out.ids[0])


# --- compact: what is kept -----------------------------------------------------------------------------------------


def test_adaptive_k_hand_case() -> None:
    """p = (0.6, 0.3, 0.06, 0.04) at V = 4, k = 4: mass 0.5 keeps 1, 0.85 keeps 2, 0.95 keeps 3, 1.0 keeps 4."""
    p = torch.tensor([0.6, 0.3, 0.06, 0.04], dtype=torch.float64)
    z = torch.log(p)[None, None, :]
    out = TeacherTopK.from_logits(z, 4)
    for mass, n in ((0.5, 1), (0.85, 2), (0.95, 3), (0.99, 4), (1.0, 4)):
        blob = encode_rows(out, np.array([1]), CodecConfig(mass=mass))[0]
        row = decode_row(blob)
        assert row.n.tolist() == [n], mass
        assert row.ids[0, :n].tolist() == [0, 1, 2, 3][:n]
    assert decode_row(encode_rows(out, np.array([1]), CodecConfig(mass=0.85, k=1))[0]).n.tolist() == [1]


@pytest.mark.parametrize("mass", [1.0, 0.99, 0.9, 0.6])
def test_compact_keeps_exactly_the_top_ids_and_stops_at_the_mass(mass: float) -> None:
    out = worker_answer(2, 30, 500, 24, seed=3)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(4))  # slots in no particular order
    shuffled = TeacherTopK(
        logits=out.logits[..., perm],
        ids=out.ids[..., perm],
        logsumexp=out.logsumexp,
        vocab_size=500,
        target_logprob=out.target_logprob,
    )
    k = 20
    blobs = encode_rows(shuffled, np.array([30, 30]), CodecConfig(mass=mass, k=k))
    lp = input_logprobs(out)  # sorted by value: from_logits keeps topk order
    for r, blob in enumerate(blobs):
        row = decode_row(blob)
        cum = np.cumsum(np.exp(lp[r]), axis=1)
        want = np.minimum((cum < mass).sum(1) + 1, k) if mass < 1 else np.full(30, k)
        assert row.n.tolist() == want.tolist()
        for t in range(30):
            n = int(row.n[t])
            value = dict(zip(out.ids[r, t].tolist(), lp[r, t].tolist(), strict=True))
            kept = [value[i] for i in row.ids[t, :n].tolist()]  # kept ids are distinct answer ids ...
            assert len(set(row.ids[t, :n].tolist())) == n
            assert kept == sorted(kept, reverse=True) == lp[r, t, :n].tolist()  # ... with the n largest values
            assert np.abs(row.logits[t, :n] - np.array(kept)).max() <= 1 / 32 + 1e-6
            if n < k:  # the stop is the first place the kept mass reaches `mass`
                assert cum[t, n - 1] >= mass and (n == 1 or cum[t, n - 2] < mass)


@pytest.mark.parametrize("step", [1 / 4, 1 / 16, 1 / 64])
@pytest.mark.parametrize("temperature", [1.0, 1.7])
def test_quantisation_error_is_at_most_half_a_step(step: float, temperature: float) -> None:
    out = worker_answer(3, 40, 400, 32, seed=5, scale=6.0, temperature=temperature, bf16=False)
    dec = roundtrip(out, [40, 40, 40], CodecConfig(step=step))
    assert dec.k == 32 and dec.logits.dtype == torch.float32
    assert torch.equal(dec.logsumexp, torch.zeros(3, 40))
    assert torch.equal(dec.ids, out.ids)
    err = (dec.logprobs(torch.float64) - torch.from_numpy(input_logprobs(out))).abs()
    assert float(err[..., 0].max()) <= TOP_STEP / 2 + 1e-6
    assert float(err.max()) <= step / 2 + 1e-6
    assert float(err.max()) > step / 8  # the test would see a wrong step


def test_step_sixteenth_is_exact_on_bf16_logits_from_8_up() -> None:
    """bf16 logits of 8 and above lie on a 1/16 grid: their offsets from the top are stored without error."""
    out = worker_answer(1, 50, 300, 16, seed=6, scale=2.0)
    assert float(out.logits.float().min()) >= 8.0
    dec = roundtrip(out, [50], CodecConfig(step=1 / 16))
    got = dec.logprobs(torch.float64) - dec.logprobs(torch.float64)[..., :1]
    want = torch.from_numpy(input_logprobs(out)) - torch.from_numpy(input_logprobs(out))[..., :1]
    assert float((got - want).abs().max()) < 1e-5


def test_large_gaps_use_the_escape_stream() -> None:
    z = torch.tensor([[[0.0, -0.5, -40.0, -41.0, -95.0]]], dtype=torch.float64)  # 639 and 880 steps of 1/16
    out = TeacherTopK.from_logits(z, 5)
    dec = roundtrip(out, [1], CodecConfig())
    assert torch.allclose(dec.logprobs(torch.float64), out.logprobs(torch.float64), atol=1 / 32 + 1e-6)


def test_target_logprob_restored_within_its_precision() -> None:
    out = worker_answer(2, 25, 300, 8, seed=7, scale=5.0)
    dec = roundtrip(out, [25, 10], CodecConfig(mass=0.9))
    assert float((dec.target_logprob[0] - out.target_logprob[0]).abs().max()) <= TARGET_STEP / 2 + 1e-6
    assert float((dec.target_logprob[1, :10] - out.target_logprob[1, :10]).abs().max()) <= TARGET_STEP / 2 + 1e-6
    assert float(dec.target_logprob[0, -1]) == 0.0  # an ignored target stays 0
    assert torch.equal(dec.target_logprob[1, 10:], torch.zeros(15))
    assert roundtrip(worker_answer(1, 4, 50, 4, targets=False), [4], CodecConfig()).target_logprob is None


# --- compact: padding is harmless ----------------------------------------------------------------------------------


def refilled(out: TeacherTopK, n: np.ndarray, k_out: int, step: float, original_ids: bool) -> TeacherTopK:
    """The answer with the dropped tail re-filled, built here independently of the codec: the top ``n`` slots
    quantised as the codec promises, slots ``[n, k_out)`` at the maximum-entropy fill ``log(r / (V − n))``, with
    either the ORIGINAL tail ids (``original_ids``, needs ``k_out ≤ K``) or the smallest ids not kept."""
    v = out.vocab_size
    lp = input_logprobs(out)
    b, t, _ = lp.shape
    new_lp = np.zeros((b, t, k_out))
    new_ids = np.zeros((b, t, k_out), dtype=np.int64)
    for r in range(b):
        for p in range(t):
            m = int(n[r, p])
            top = -round(-lp[r, p, 0] / TOP_STEP) * TOP_STEP
            kept = top - np.rint((top - lp[r, p, :m]) / step) * step
            kept[0] = top
            rest = 1.0 - np.exp(kept).sum()
            fill = max(min(math.log(rest / (v - m)), kept.min()), LOG_FLOOR)
            ids = out.ids[r, p].tolist()
            if original_ids:
                tail = ids[m:k_out]
            else:
                tail = [i for i in range(v) if i not in set(ids[:m])][: k_out - m]
            new_lp[r, p] = np.concatenate([kept, np.full(k_out - m, fill)])
            new_ids[r, p] = ids[:m] + tail
    return TeacherTopK(
        logits=torch.from_numpy(new_lp).float() * out.temperature,
        ids=torch.from_numpy(new_ids).int(),
        logsumexp=torch.zeros(b, t),
        vocab_size=v,
        temperature=out.temperature,
    )


def projection(v_s: int, v_t: int, seed: int) -> SparseProjection:
    """Half the student rows one exact 1.0 entry (GOLD's common set), the rest spread over 3 teacher ids."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(v_t, generator=gen)[:3] for _ in range(v_s)])
    w = torch.rand(v_s, 3, generator=gen, dtype=torch.float64) + 0.1
    w[::2] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    return SparseProjection(indices=idx, weights=w / w.sum(1, keepdim=True), teacher_vocab_size=v_t)


def chunks(t: int, n: int, pad: int) -> torch.Tensor:
    """``n`` chunks over the first ``t − pad`` positions (−1 after), sizes 1..3."""
    ids = (torch.arange(t - pad) * n // (t - pad)).long()
    return torch.cat([ids, torch.full((pad,), -1, dtype=torch.long)])


def losses_of(
    teacher: TeacherTopK,
    zs: torch.Tensor,
    zt: torch.Tensor,
    sc: torch.Tensor,
    tc: torch.Tensor,
    proj: SparseProjection,
    names: tuple[str, ...],
) -> dict[str, tuple[float, torch.Tensor]]:
    """(value, gradient wrt the student logits) of each loss on ``teacher``."""
    mods = {
        "pkl_per_chunk": (PKLConfig(subset="per_chunk").build(proj), True),
        "pkl_per_batch": (PKLConfig(subset="per_batch").build(proj), True),
        "gold": (GoldConfig(variant="gold", uld_cap=64).build(proj), True),
        "hkl": (GoldConfig(variant="hkl", uld_cap=64).build(proj), True),
        "uld": (ULDConfig(cap=64).build(), True),
        "topk_kl": (TopKKLConfig().build(), False),
    }
    out = {}
    for name in names:
        mod, chunked = mods[name]
        leaf = (zs if chunked else zt).detach().clone().requires_grad_(True)
        if chunked:
            value = mod(leaf, teacher, sc, tc)
        else:
            value = mod(leaf, teacher, tc >= 0)
        (grad,) = torch.autograd.grad(value, leaf)
        out[name] = (float(value.detach()), grad)
    return out


CHUNKED = ("pkl_per_chunk", "pkl_per_batch", "gold", "hkl", "uld")
ALL = (*CHUNKED, "topk_kl")


@pytest.mark.parametrize("mass", [0.7, 0.9])
def test_padded_slots_equal_the_refilled_tail(mass: float) -> None:
    v_t, v_s, b, t, k = 60, 24, 2, 14, 12
    out = worker_answer(b, t, v_t, k, seed=8, scale=2.0)
    lengths = np.array([t, t - 3])
    cfg = CodecConfig(mass=mass, k=k)
    blobs = encode_rows(out, lengths, cfg)
    dec = decode_rows(blobs, cfg, v_t, 1.0, width=t)
    n = np.zeros((b, t), dtype=np.int64)
    for r, blob in enumerate(blobs):
        n[r, : lengths[r]] = decode_row(blob).n
    n[1, lengths[1] :] = k  # (positions past the length are ignored by the chunks below)
    assert n.min() < 5 and len(set(n.reshape(-1).tolist())) > 2  # positions keep different numbers of ids
    k_out = dec.k
    gen = torch.Generator().manual_seed(9)
    zs = torch.randn(b, t + 2, v_s, generator=gen)
    zt = torch.randn(b, t, v_t, generator=gen)
    sc = torch.stack([chunks(t + 2, 6, 2), chunks(t + 2, 5, 5)])
    tc = torch.stack([chunks(t, 6, 0), chunks(t, 5, 3)])
    proj = projection(v_s, v_t, 10)
    # no id repeats within a position; the padded ids are not kept ones
    for r in range(b):
        for p in range(lengths[r]):
            assert len(set(dec.ids[r, p].tolist())) == k_out
    # every loss equals its value on the tail re-filled (here with the smallest free ids, as the codec pads)
    got = losses_of(dec, zs, zt, sc, tc, proj, ALL)
    want = losses_of(refilled(out, n, k_out, cfg.step, original_ids=False), zs, zt, sc, tc, proj, ALL)
    for name in ALL:
        assert got[name][0] == pytest.approx(want[name][0], rel=1e-5, abs=1e-6), name
        assert torch.allclose(got[name][1], want[name][1], rtol=1e-4, atol=1e-6), name
    # GOLD / H-KL / ULD see only the distribution: the same with the ORIGINAL tail ids at the fill value
    orig = losses_of(refilled(out, n, k_out, cfg.step, original_ids=True), zs, zt, sc, tc, proj, CHUNKED[2:])
    for name in CHUNKED[2:]:
        assert got[name][0] == pytest.approx(orig[name][0], rel=1e-5, abs=1e-6), name
        assert torch.allclose(got[name][1], orig[name][1], rtol=1e-4, atol=1e-6), name
    # the fill every loss spreads over unseen ids is the one of the kept ids alone
    fill = dec.fill_logprob(torch.float64)
    lp = dec.logprobs(torch.float64)
    for r in range(b):
        for p in range(lengths[r]):
            m = int(n[r, p])
            rest = 1.0 - float(lp[r, p, :m].exp().sum())
            assert float(fill[r, p]) == pytest.approx(max(math.log(rest / (v_t - m)), LOG_FLOOR), abs=1e-4)
            assert torch.allclose(lp[r, p, m:], fill[r, p].expand(k_out - m), atol=1e-4)


def test_more_padding_changes_nothing_for_the_pooled_losses() -> None:
    """GOLD / H-KL / ULD pool the distribution: padding to more slots (another batch's K_out) changes nothing."""
    v_t, v_s, t = 60, 24, 14
    out = worker_answer(1, t, v_t, 12, seed=11, scale=2.0)
    cfg = CodecConfig(mass=0.8, k=12)
    blobs = encode_rows(out, np.array([t]), cfg)
    a = decode_rows(blobs, cfg, v_t, 1.0)
    c = decode_rows(blobs, cfg, v_t, 1.0, pad_to=a.k + 9)
    assert c.k == a.k + 9
    gen = torch.Generator().manual_seed(12)
    zs, zt = torch.randn(1, t, v_s, generator=gen), torch.randn(1, t, v_t, generator=gen)
    sc, tc = chunks(t, 7, 0)[None], chunks(t, 7, 0)[None]
    got_a = losses_of(a, zs, zt, sc, tc, projection(v_s, v_t, 13), CHUNKED[2:])
    got_c = losses_of(c, zs, zt, sc, tc, projection(v_s, v_t, 13), CHUNKED[2:])
    for name in CHUNKED[2:]:
        assert got_a[name][0] == pytest.approx(got_c[name][0], rel=1e-5), name
        assert torch.allclose(got_a[name][1], got_c[name][1], rtol=1e-4, atol=1e-6), name
    assert torch.allclose(a.fill_logprob(), c.fill_logprob(), atol=1e-5)


def test_a_duplicate_padding_would_be_caught() -> None:
    """The check above bites: padding with a kept id (GOLD would pool its fill-valued slot twice) changes GOLD."""
    v_t, v_s, t = 60, 24, 10
    out = worker_answer(1, t, v_t, 12, seed=14, scale=2.0)
    cfg = CodecConfig(mass=0.8, k=12)
    dec = decode_rows(encode_rows(out, np.array([t]), cfg), cfg, v_t, 1.0)
    n = decode_row(encode_rows(out, np.array([t]), cfg)[0]).n
    ids = dec.ids.clone()
    for p in range(t):
        ids[0, p, n[p] :] = ids[0, p, 0]  # every padded slot repeats the top id, at a value below the fill
    bad = TeacherTopK(
        logits=torch.where(torch.arange(dec.k) < torch.as_tensor(n)[:, None], dec.logits[0], torch.tensor(LOG_FLOOR))[
            None
        ],
        ids=ids,
        logsumexp=dec.logsumexp,
        vocab_size=v_t,
    )
    gen = torch.Generator().manual_seed(15)
    zs, zt = torch.randn(1, t, v_s, generator=gen), torch.randn(1, t, v_t, generator=gen)
    sc, tc = chunks(t, 5, 0)[None], chunks(t, 5, 0)[None]
    good = losses_of(dec, zs, zt, sc, tc, projection(v_s, v_t, 16), ("gold",))["gold"][0]
    worse = losses_of(bad, zs, zt, sc, tc, projection(v_s, v_t, 16), ("gold",))["gold"][0]
    assert abs(good - worse) > 1e-3 * abs(good)


def test_positions_beyond_a_row_are_ignored_and_padded_uniform() -> None:
    out = worker_answer(2, 9, 100, 6, seed=17)
    dirty = TeacherTopK(
        logits=out.logits.clone(),
        ids=out.ids.clone(),
        logsumexp=out.logsumexp.clone(),
        vocab_size=100,
        target_logprob=out.target_logprob.clone(),
    )
    dirty.logits[1, 4:] = float("nan")
    dirty.ids[1, 4:] = -7
    dirty.logsumexp[1, 4:] = float("inf")
    for cfg in (CodecConfig(), CodecConfig(mass=0.8), CodecConfig(kind="exact")):
        assert encode_rows(dirty, np.array([9, 4]), cfg) == encode_rows(out, np.array([9, 4]), cfg)
        dec = decode_rows(encode_rows(dirty, np.array([9, 4]), cfg), cfg, 100, 1.0, width=9)
        assert torch.isfinite(dec.logprobs()).all() and torch.isfinite(dec.fill_logprob()).all()
        assert torch.allclose(dec.logprobs()[1, 4:], torch.full((5, dec.k), -math.log(100)), atol=1e-6)
        assert torch.equal(dec.target_logprob[1, 4:], torch.zeros(5))
        assert all(len(set(dec.ids[1, p].tolist())) == dec.k for p in range(4, 9))


@pytest.mark.parametrize("kind", ["exact", "compact"])
def test_empty_rows(kind: str) -> None:
    out = worker_answer(3, 6, 80, 5, seed=18)
    cfg = CodecConfig(kind=kind)
    blobs = encode_rows(out, np.array([0, 6, 0]), cfg)
    assert decode_row(blobs[0]).positions == 0
    dec = decode_rows(blobs, cfg, 80, 1.0)
    assert dec.logits.shape == (3, 6, 5)
    assert torch.allclose(dec.logprobs()[0], torch.full((6, 5), -math.log(80)), atol=1e-6)
    none = decode_rows([blobs[0], blobs[2]], cfg, 80, 1.0)
    assert none.logits.shape[:2] == (2, 0)
    wide = decode_rows([blobs[0]], cfg, 80, 1.0, width=4)
    assert wide.logits.shape[:2] == (1, 4) and torch.isfinite(wide.fill_logprob()).all()


def test_k_one() -> None:
    out = worker_answer(2, 7, 90, 5, seed=19)
    dec = roundtrip(out, [7, 7], CodecConfig(k=1))
    assert dec.k == 1 and torch.equal(dec.ids[..., 0], out.ids[..., 0])
    one = TeacherTopK(
        logits=out.logits[..., :1],
        ids=out.ids[..., :1],
        logsumexp=out.logsumexp,
        vocab_size=90,
        target_logprob=out.target_logprob,
    )
    for cfg in (CodecConfig(k=1), CodecConfig(mass=0.5), CodecConfig(kind="exact")):
        d = roundtrip(one, [7, 3], cfg)
        assert d.k == 1 and torch.equal(d.ids[0], one.ids[0])
    rest = 1 - dec.logprobs(torch.float64)[..., 0].exp()
    assert torch.allclose(dec.fill_logprob(torch.float64), torch.log(rest / 89), atol=1e-3)


@pytest.mark.parametrize("ids", ["raw", "rank"])
def test_small_vocabulary(ids: str) -> None:
    """V < 256, and k = V (nothing unseen: the fill is the floor) with adaptive k padding up to V."""
    out = worker_answer(2, 8, 7, 7, seed=20, scale=1.0)
    for mass in (1.0, 0.6):
        dec = roundtrip(out, [8, 5], CodecConfig(ids=ids, mass=mass))
        assert dec.k <= 7 and (dec.ids[0] < 7).all()
        assert all(len(set(dec.ids[r, p].tolist())) == dec.k for r in range(2) for p in range(8))
        assert torch.isfinite(dec.fill_logprob()).all()
    full = roundtrip(out, [8, 5], CodecConfig(ids=ids))
    assert torch.equal(full.fill_logprob(), torch.full((2, 8), LOG_FLOOR))
    assert torch.equal(roundtrip(out, [8, 5], CodecConfig(ids=ids, k=3)).ids[0], out.ids[0, :, :3])


@pytest.mark.parametrize("ids", ["raw", "rank"])
@pytest.mark.parametrize("compressor", COMPRESSORS)
def test_gemma_sized_vocabulary_ids(ids: str, compressor: str) -> None:
    """V = 262,144: ids up to 262,143 round-trip; more than 65,536 distinct ids in a row widen the rank index."""
    v, t, k = 262_144, 1200, 64
    gen = torch.Generator().manual_seed(21)
    tid = ((torch.arange(t * k) * 3 + 5) % v).reshape(1, t, k).int()  # 3x mod 2^18 is one-to-one: all distinct
    tid[0, 0, :2] = torch.tensor([v - 1, 0], dtype=torch.int32)
    logits = torch.sort(torch.randn(1, t, k, generator=gen) * 2 + 20, dim=-1, descending=True).values
    out = TeacherTopK(logits=logits.to(torch.bfloat16), ids=tid, logsumexp=torch.full((1, t), 25.0), vocab_size=v)
    cfg = CodecConfig(ids=ids, compressor=compressor)
    blobs = encode_rows(out, np.array([t]), cfg)
    assert len(np.unique(tid.numpy())) > 65_536
    dec = decode_rows(blobs, cfg, v, 1.0)
    assert torch.equal(dec.ids, tid)


def test_compressors_and_id_modes_agree() -> None:
    out = worker_answer(2, 20, 1000, 16, seed=22)
    ref = roundtrip(out, [20, 11], CodecConfig(compressor="none", ids="raw", mass=0.9))
    for compressor in COMPRESSORS:
        for ids in ("raw", "rank"):
            got = roundtrip(out, [20, 11], CodecConfig(compressor=compressor, ids=ids, mass=0.9))
            assert torch.equal(got.logits, ref.logits) and torch.equal(got.ids, ref.ids)
            assert torch.equal(got.target_logprob, ref.target_logprob)


def test_ties_keep_a_top_set() -> None:
    z = torch.tensor([[[3.0, 1.0, 3.0, 2.0, 3.0]]])
    out = TeacherTopK(
        logits=z.to(torch.bfloat16),
        ids=torch.tensor([[[4, 3, 2, 1, 0]]], dtype=torch.int32),
        logsumexp=torch.logsumexp(z, -1),
        vocab_size=9,
    )
    row = decode_row(encode_rows(out, np.array([1]), CodecConfig(k=3))[0])
    assert sorted(row.ids[0, :3].tolist()) == [0, 2, 4]


# --- errors and import ---------------------------------------------------------------------------------------------


def test_mismatches_and_damage_are_refused() -> None:
    out = worker_answer(1, 5, 50, 4, seed=23)
    blob = encode_rows(out, np.array([5]), CodecConfig())[0]
    with pytest.raises(CodecError, match="stored as compact"):
        decode_rows([blob], CodecConfig(kind="exact"), 50, 1.0)
    with pytest.raises(CodecError, match="step"):
        decode_rows([blob], CodecConfig(step=1 / 8), 50, 1.0)
    with pytest.raises(CodecError, match="V=50"):
        decode_rows([blob], CodecConfig(), 51, 1.0)
    with pytest.raises(CodecError, match="T=1.0"):
        decode_rows([blob], CodecConfig(), 50, 2.0)
    with pytest.raises(CodecError):
        decode_row(blob[:-3])
    with pytest.raises(CodecError):
        decode_row(b"garbage" * 10)
    with pytest.raises(CodecError):
        decode_row(blob[:40] + bytes(len(blob) - 40))
    with pytest.raises(ValueError, match="lengths"):
        encode_rows(out, np.array([6]), CodecConfig())
    with pytest.raises(ValueError, match="width"):
        decode_rows([blob], CodecConfig(), 50, 1.0, width=3)
    with pytest.raises(ValueError, match="pad_to"):
        decode_rows([blob], CodecConfig(), 50, 1.0, pad_to=2)


@pytest.mark.parametrize(
    "bad",
    [
        dict(kind="lossy"),
        dict(k=0),
        dict(step=0.0),
        dict(step=float("nan")),
        dict(mass=0.0),
        dict(mass=1.5),
        dict(compressor="bz2"),
        dict(ids="sorted"),
    ],
)
def test_config_is_checked(bad: dict) -> None:
    with pytest.raises(ValueError):
        CodecConfig(**bad)


def test_import_needs_numpy_only() -> None:
    code = "import sys, xtalign.distill.teacher.codec; print('torch' in sys.modules, 'pyarrow' in sys.modules)"
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert got == ["False", "False"]
