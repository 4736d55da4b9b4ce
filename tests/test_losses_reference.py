"""Fast loss paths against slow dense float64 references written plainly here (dense W, loops over chunks)."""

from __future__ import annotations

import math

import pytest
import torch

from xtalign.losses import (
    GoldConfig,
    LearnableProjection,
    PKLConfig,
    SparseProjection,
    TeacherTopK,
    TopKKLConfig,
    ULDConfig,
    chunk_means,
    common_pairs,
    projected_softmax,
)
from xtalign.losses.softmax_projection import SharedPlan

V_S, V_T, B, T_S, T_T, K = 50, 60, 2, 12, 10, 8


# ----------------------------------------------------------------------------------------- random data
def random_projection(v_s: int, v_t: int, k: int, gen: torch.Generator) -> SparseProjection:
    """Row-stochastic W with exact 1.0 rows (some colliding), unmapped rows, 0.6+ rows and empty slots."""
    idx = torch.randint(0, v_t, (v_s, k), generator=gen)
    w = torch.zeros(v_s, k, dtype=torch.float64)
    for s in range(v_s):
        kind = int(torch.randint(0, 10, (1,), generator=gen))
        cols = torch.randperm(v_t, generator=gen)[:k]
        idx[s, : cols.shape[0]] = cols
        if kind < 4:
            w[s, 0] = 1.0
        elif kind == 4:
            continue  # unmapped row
        else:
            n = 2 + int(torch.randint(0, k - 1, (1,), generator=gen))
            raw = torch.rand(n, generator=gen, dtype=torch.float64) + 0.05
            if kind >= 8:
                raw[0] = raw[1:].sum() * 2.0  # top weight ≥ 2/3: an H-KL common candidate
            w[s, :n] = raw / raw.sum()
    return SparseProjection(indices=idx, weights=w, teacher_vocab_size=v_t)


def random_chunks(n_pos: int, n_chunks: int, gen: torch.Generator) -> torch.Tensor:
    """Non-decreasing chunk ids 0..n_chunks-1 over the first positions, −1 at the end."""
    valid = n_pos - 1 - int(torch.randint(0, 2, (1,), generator=gen))
    cuts = torch.sort(torch.randperm(valid - 1, generator=gen)[: n_chunks - 1] + 1).values
    ids = torch.zeros(valid, dtype=torch.long)
    for c in cuts.tolist():
        ids[c:] += 1
    return torch.cat([ids, torch.full((n_pos - valid,), -1, dtype=torch.long)])


def make_case(seed: int, temperature: float, k: int = K, dtype: torch.dtype = torch.float64):
    gen = torch.Generator().manual_seed(seed)
    proj = random_projection(V_S, V_T, 4, gen)
    zs = (torch.randn(B, T_S, V_S, generator=gen, dtype=torch.float64) * 2).to(dtype).requires_grad_()
    zt = torch.randn(B, T_T, V_T, generator=gen, dtype=torch.float64) * 2
    teacher = TeacherTopK.from_logits(zt, k, temperature)
    n_chunks = 7
    sc = torch.stack([random_chunks(T_S, n_chunks, gen) for _ in range(B)])
    tc = torch.stack([random_chunks(T_T, n_chunks - 1, gen) for _ in range(B)])
    sc[1, 3] = -1  # a hole inside a row
    return proj, zs, teacher, sc, tc


# ------------------------------------------------------------------------------------ dense references
def dense_teacher(teacher: TeacherTopK) -> torch.Tensor:
    """[B, Tt, V_t] float64 log-probs: exact on the kept ids, (1 − kept mass)/(V_t − K) elsewhere."""
    lp = teacher.logits.double() / teacher.temperature - teacher.logsumexp.double()[..., None]
    bsz, seq, k = lp.shape
    out = torch.empty(bsz, seq, teacher.vocab_size, dtype=torch.float64)
    for b in range(bsz):
        for j in range(seq):
            rest = 1.0 - float(torch.exp(lp[b, j]).sum())
            fill = math.log(max(rest, 1e-300) / (teacher.vocab_size - k)) if teacher.vocab_size > k else -60.0
            out[b, j] = fill
            out[b, j, teacher.ids[b, j].long()] = lp[b, j]
    return out


def chunks_of(sc: torch.Tensor, tc: torch.Tensor, b: int) -> list[tuple[list[int], list[int]]]:
    both = sorted(set(sc[b].tolist()) & set(tc[b].tolist()) - {-1})
    return [
        (
            [i for i, c in enumerate(sc[b].tolist()) if c == ch],
            [j for j, c in enumerate(tc[b].tolist()) if c == ch],
        )
        for ch in both
    ]


def kl(p_log: torch.Tensor, q_log: torch.Tensor, direction: str) -> torch.Tensor:
    if direction == "reverse":
        p_log, q_log = q_log, p_log
    return (torch.exp(p_log) * (p_log - q_log)).sum()


def ref_pkl(proj, zs, teacher, sc, tc, *, temperature, direction, aggregation, subset, cap=8192, eps=1e-10):
    w = proj.to_dense().double()  # [V_s, V_t]
    q = torch.softmax(zs.double() / temperature, -1) @ w  # [B, Ts, V_t]
    lt = dense_teacher(teacher)
    groups = [(b, s_pos, t_pos) for b in range(zs.shape[0]) for s_pos, t_pos in chunks_of(sc, tc, b)]
    if subset == "per_batch":
        best: dict[int, float] = {}
        for b, _, t_pos in groups:
            for j in t_pos:
                for i in teacher.ids[b, j].tolist():
                    best[i] = max(best.get(i, -math.inf), float(lt[b, j, i]))
        keep = sorted(best, key=lambda i: -best[i])[:cap]
        shared = torch.tensor(sorted(keep))
    losses = []
    for b, s_pos, t_pos in groups:
        cols = (
            shared
            if subset == "per_batch"
            else torch.tensor(sorted({i for j in t_pos for i in teacher.ids[b, j].tolist()}))
        )
        t_rows = torch.stack([torch.log_softmax(lt[b, j, cols], -1) for j in t_pos])  # [n, M]
        if aggregation == "nemo":
            qm = torch.stack([q[b, i, cols] for i in s_pos]).mean(0) + eps
            losses.append(kl(t_rows.mean(0), torch.log(qm / qm.sum()), direction))
        else:
            s_rows = torch.stack(
                [torch.log((q[b, i, cols] + eps) / (q[b, i, cols] + eps).sum()) for i in s_pos]
            )
            s_pool = torch.log_softmax(s_rows.mean(0), -1)
            losses.append(kl(torch.log_softmax(t_rows.mean(0), -1), s_pool, direction))
    return torch.stack(losses).mean() * temperature**2


def ref_common(proj: SparseProjection, threshold: float, strict: bool) -> list[tuple[int, int]]:
    w = proj.to_dense()
    claims: dict[int, tuple[float, int]] = {}
    for s in range(w.shape[0]):
        nz = [(float(w[s, t]), t) for t in range(w.shape[1]) if w[s, t] > 0]
        if not nz:
            continue
        top_w, top_t = max(nz, key=lambda e: (e[0], -e[1]))
        ok = (len(nz) == 1 and top_w == 1.0) if strict else top_w >= threshold
        if ok and (top_t not in claims or (top_w, -s) > (claims[top_t][0], -claims[top_t][1])):
            claims[top_t] = (top_w, s)
    return sorted((s, t) for t, (_, s) in claims.items())


def ref_gold(proj, zs, teacher, sc, tc, *, temperature, direction, pairs, cap, wc=1.0, wu=1.0):
    ls_all = torch.log_softmax(zs.double() / temperature, -1)
    lt = dense_teacher(teacher)
    cs, ct = {s for s, _ in pairs}, {t for _, t in pairs}
    losses = []
    for b in range(zs.shape[0]):
        for s_pos, t_pos in chunks_of(sc, tc, b):
            ls = ls_all[b, s_pos].mean(0)
            lt_c = lt[b, t_pos].mean(0)
            total = torch.zeros((), dtype=torch.float64)
            for s, t in pairs:
                a, c = (lt_c[t], ls[s]) if direction == "forward" else (ls[s], lt_c[t])
                total = total + wc * torch.exp(a) * (a - c)
            us = torch.sort(
                torch.exp(ls[[s for s in range(ls.shape[0]) if s not in cs]]), descending=True
            ).values
            ut = torch.sort(
                torch.exp(lt_c[[t for t in range(lt_c.shape[0]) if t not in ct]]), descending=True
            ).values
            n = min(cap, max(us.shape[0], ut.shape[0]))
            us = torch.cat([us, torch.zeros(max(0, n - us.shape[0]), dtype=torch.float64)])[:n]
            ut = torch.cat([ut, torch.zeros(max(0, n - ut.shape[0]), dtype=torch.float64)])[:n]
            losses.append(total + wu * (us - ut).abs().sum())
    return torch.stack(losses).mean() * temperature**2


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("aggregation", ["nemo", "chain"])
@pytest.mark.parametrize("subset", ["per_batch", "per_chunk"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [0.7, 1.0, 2.5])
def test_pkl_matches_dense_reference(aggregation, subset, direction, temperature):
    proj, zs, teacher, sc, tc = make_case(11, temperature)
    cfg = PKLConfig(temperature=temperature, direction=direction, aggregation=aggregation, subset=subset)
    got = cfg.build(proj)(zs, teacher, sc, tc)
    want = ref_pkl(
        proj,
        zs,
        teacher,
        sc,
        tc,
        temperature=temperature,
        direction=direction,
        aggregation=aggregation,
        subset=subset,
    )
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    (g_got,) = torch.autograd.grad(got, zs)
    (g_want,) = torch.autograd.grad(want, zs)
    torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("aggregation", ["nemo", "chain"])
def test_pkl_per_batch_cap_and_full_topk(aggregation):
    proj, zs, teacher, sc, tc = make_case(5, 1.3)
    cfg = PKLConfig(temperature=1.3, aggregation=aggregation, subset_cap=17)
    want = ref_pkl(
        proj,
        zs,
        teacher,
        sc,
        tc,
        temperature=1.3,
        direction="forward",
        aggregation=aggregation,
        subset="per_batch",
        cap=17,
    )
    assert float(cfg.build(proj)(zs, teacher, sc, tc).detach()) == pytest.approx(
        float(want.detach()), rel=1e-5
    )
    proj, zs, teacher, sc, tc = make_case(6, 1.0, k=V_T)  # teacher keeps its whole vocabulary: no fill
    for subset in ("per_batch", "per_chunk"):
        cfg = PKLConfig(aggregation=aggregation, subset=subset)
        want = ref_pkl(
            proj,
            zs,
            teacher,
            sc,
            tc,
            temperature=1.0,
            direction="forward",
            aggregation=aggregation,
            subset=subset,
        )
        assert float(cfg.build(proj)(zs, teacher, sc, tc).detach()) == pytest.approx(
            float(want.detach()), rel=1e-5
        )


def test_pkl_float32_close_to_reference():
    proj, zs, teacher, sc, tc = make_case(3, 1.0, dtype=torch.float32)
    for subset in ("per_batch", "per_chunk"):
        got = PKLConfig(subset=subset).build(proj)(zs, teacher, sc, tc)
        want = ref_pkl(
            proj,
            zs.double(),
            teacher,
            sc,
            tc,
            temperature=1.0,
            direction="forward",
            aggregation="nemo",
            subset=subset,
        )
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=2e-4)


@pytest.mark.parametrize("variant", ["gold", "hkl"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_gold_hkl_match_dense_reference(variant, direction, temperature):
    proj, zs, teacher, sc, tc = make_case(21, temperature)
    pairs = ref_common(proj, 0.6, strict=variant == "gold")
    assert len(pairs) > 5
    cfg = GoldConfig(
        variant=variant,
        temperature=temperature,
        direction=direction,
        uld_cap=9,
        common_weight=0.7,
        uld_weight=1.3,
    )
    got = cfg.build(proj)(zs, teacher, sc, tc)
    want = ref_gold(
        proj,
        zs,
        teacher,
        sc,
        tc,
        temperature=temperature,
        direction=direction,
        pairs=pairs,
        cap=9,
        wc=0.7,
        wu=1.3,
    )
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    torch.testing.assert_close(
        torch.autograd.grad(got, zs)[0], torch.autograd.grad(want, zs)[0], rtol=1e-5, atol=1e-9
    )


@pytest.mark.parametrize("cap", [8192, 7])
def test_uld_matches_dense_reference(cap):
    proj, zs, teacher, sc, tc = make_case(31, 1.5)
    got = ULDConfig(temperature=1.5, cap=cap).build()(zs, teacher, sc, tc)
    want = ref_gold(proj, zs, teacher, sc, tc, temperature=1.5, direction="forward", pairs=[], cap=cap)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


@pytest.mark.parametrize("threshold", [0.3, 0.6, 1.0])
def test_common_pairs_match_reference(threshold):
    proj = random_projection(200, 90, 4, torch.Generator().manual_seed(1))
    for strict in (True, False):
        s, t = common_pairs(proj, threshold=threshold, strict=strict)
        assert list(zip(s.tolist(), t.tolist(), strict=True)) == ref_common(proj, threshold, strict)


@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_kl_matches_reference(tail, direction):
    gen = torch.Generator().manual_seed(4)
    zs = torch.randn(B, T_S, V_S, generator=gen, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(B, T_S, V_S, generator=gen, dtype=torch.float64)
    teacher = TeacherTopK.from_logits(zt, 6, 1.7)
    mask = torch.rand(B, T_S, generator=gen) > 0.3
    got = TopKKLConfig(temperature=1.7, direction=direction, tail=tail).build()(zs, teacher, mask)
    losses = []
    for b in range(B):
        for i in range(T_S):
            if not mask[b, i]:
                continue
            ids = teacher.ids[b, i].long()
            pt, ps = torch.softmax(zt[b, i] / 1.7, -1), torch.softmax(zs[b, i] / 1.7, -1)
            a, c = pt[ids], ps[ids]
            if tail == "bucket":
                a, c = torch.cat([a, 1 - a.sum(0, keepdim=True)]), torch.cat([c, 1 - c.sum(0, keepdim=True)])
            else:
                a, c = a / a.sum(), c / c.sum()
            losses.append(kl(torch.log(a), torch.log(c), direction))
    want = torch.stack(losses).mean() * 1.7**2
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)


def test_chunk_means_matches_loop():
    gen = torch.Generator().manual_seed(2)
    vals = torch.randn(2, 9, 3, generator=gen)
    chunk = torch.tensor([[0, 0, 1, 1, 1, 3, -1, -1, -1], [0, 1, 2, 2, 2, 2, 2, 3, -1]])
    means, counts = chunk_means(vals, chunk)
    for b in range(2):
        for c in range(4):
            sel = chunk[b] == c
            assert int(counts[b, c]) == int(sel.sum())
            want = vals[b][sel].mean(0) if sel.any() else torch.zeros(3)
            torch.testing.assert_close(means[b, c], want)


def test_projected_softmax_matches_dense():
    gen = torch.Generator().manual_seed(8)
    z = torch.randn(5, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, generator=gen, dtype=torch.float64, requires_grad=True)
    entry_row = torch.tensor([1, 1, 4, 6, 6, 6, 4])
    entry_col = torch.tensor([0, 2, 1, 0, 3, 2, 3])
    plan = SharedPlan(torch.tensor([0, 2, 3]), entry_row, entry_col, 4)
    got = projected_softmax(z, w, plan, 1.5)
    dense = torch.zeros(9, 4, dtype=torch.float64).index_put((entry_row, entry_col), w, accumulate=True)
    want = torch.softmax(z[[0, 2, 3]] / 1.5, -1) @ dense
    torch.testing.assert_close(got, want)
    assert torch.autograd.gradcheck(lambda zz, ww: projected_softmax(zz, ww, plan, 1.5), (z, w))


# --------------------------------------------------------------------------------------------- gradcheck
def small_case(seed: int, temperature: float = 1.3):
    gen = torch.Generator().manual_seed(seed)
    proj = random_projection(7, 8, 3, gen)
    zs = torch.randn(1, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    teacher = TeacherTopK.from_logits(
        torch.randn(1, 4, 8, generator=gen, dtype=torch.float64), 3, temperature
    )
    return proj, zs, teacher, torch.tensor([[0, 0, 1, 2, -1]]), torch.tensor([[0, 1, 1, 2]])


@pytest.mark.parametrize("aggregation", ["nemo", "chain"])
@pytest.mark.parametrize("subset", ["per_batch", "per_chunk"])
def test_gradcheck_pkl(aggregation, subset):
    proj, zs, teacher, sc, tc = small_case(0)
    loss = PKLConfig(temperature=1.3, aggregation=aggregation, subset=subset).build(proj)
    assert torch.autograd.gradcheck(lambda z: loss(z, teacher, sc, tc), (zs,))


@pytest.mark.parametrize("variant", ["gold", "hkl"])
def test_gradcheck_gold(variant):
    proj, zs, teacher, sc, tc = small_case(1)
    loss = GoldConfig(variant=variant, temperature=1.3, uld_cap=4).build(proj)
    assert torch.autograd.gradcheck(lambda z: loss(z, teacher, sc, tc), (zs,))


def test_gradcheck_uld():
    _, zs, teacher, sc, tc = small_case(2)
    loss = ULDConfig(temperature=1.3, cap=5).build()
    assert torch.autograd.gradcheck(lambda z: loss(z, teacher, sc, tc), (zs,))


@pytest.mark.parametrize("subset", ["per_batch", "per_chunk"])
def test_gradcheck_learnable_projection(subset):
    proj, zs, teacher, sc, tc = small_case(3)
    learn = LearnableProjection(proj)
    loss = PKLConfig(temperature=1.3, subset=subset).build(learn)
    theta = learn.logits.detach().clone().requires_grad_()

    def f(z: torch.Tensor, th: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, {"learnable.logits": th}, (z, teacher, sc, tc))

    assert torch.autograd.gradcheck(f, (zs, theta))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    proj, zs, teacher, sc, tc = make_case(9, 1.0, dtype=torch.float32)
    for subset in ("per_batch", "per_chunk"):
        cfg = PKLConfig(subset=subset)
        cpu = cfg.build(proj)(zs, teacher, sc, tc)
        dev = cfg.build(proj).cuda()(zs.detach().cuda(), teacher.to("cuda"), sc.cuda(), tc.cuda())
        assert float(dev.detach()) == pytest.approx(float(cpu.detach()), rel=1e-4)
