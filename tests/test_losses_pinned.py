"""Pinned loss values on tiny hand-built tensors; the expected numbers are re-derived with plain math."""

from __future__ import annotations

import math

import pytest
import torch

from xtalign.losses import (
    GoldConfig,
    MultiTeacherConfig,
    PKLConfig,
    ScalingConfig,
    SparseProjection,
    TeacherTopK,
    TopKKLConfig,
    ULDConfig,
    common_pairs,
    next_token_ce,
    teacher_score,
)


def val(x: torch.Tensor) -> float:
    return float(x.detach())


def log_softmax(z: list[float], temp: float = 1.0) -> list[float]:
    m = max(v / temp for v in z)
    lse = m + math.log(sum(math.exp(v / temp - m) for v in z))
    return [v / temp - lse for v in z]


def softmax(z: list[float], temp: float = 1.0) -> list[float]:
    return [math.exp(v) for v in log_softmax(z, temp)]


def kl_sum(p_log: list[float], q_log: list[float]) -> float:
    return sum(math.exp(a) * (a - b) for a, b in zip(p_log, q_log, strict=True))


def normalise(x: list[float]) -> list[float]:
    s = sum(x)
    return [v / s for v in x]


# P-KL: V_s = V_t = 3, teacher keeps all 3 ids (no fill). Chunk 0: 2 student positions, 1 teacher
# position; chunk 1: 1 student position, 2 teacher positions.
W_ROWS = [{0: 1.0}, {1: 0.75, 2: 0.25}, {2: 1.0}]
ZS = [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0]]
ZT = [[2.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]
S_CHUNK, T_CHUNK = [[0, 0, 1]], [[0, 1, 1]]


def w_proj(rows: list[dict[int, float]], v_t: int) -> SparseProjection:
    k = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), k, dtype=torch.long)
    w = torch.zeros(len(rows), k, dtype=torch.float64)
    for s, r in enumerate(rows):
        for slot, (t, weight) in enumerate(sorted(r.items())):
            idx[s, slot], w[s, slot] = t, weight
    return SparseProjection(indices=idx, weights=w, teacher_vocab_size=v_t)


def pkl_by_hand(aggregation: str, temp: float) -> float:
    q = []
    for z in ZS:
        p = softmax(z, temp)
        q.append([sum(p[s] * W_ROWS[s].get(t, 0.0) for s in range(3)) for t in range(3)])
    lt = [log_softmax(y, temp) for y in ZT]
    chunks = [([0, 1], [0]), ([2], [1, 2])]
    total = 0.0
    for s_pos, t_pos in chunks:
        t_mean = [sum(lt[j][c] for j in t_pos) / len(t_pos) for c in range(3)]
        if aggregation == "nemo":
            qm = normalise([sum(q[i][c] for i in s_pos) / len(s_pos) + 1e-10 for c in range(3)])
            total += kl_sum(t_mean, [math.log(v) for v in qm])
        else:
            s_log = [[math.log(v) for v in normalise([x + 1e-10 for x in q[i]])] for i in s_pos]
            s_mean = [sum(r[c] for r in s_log) / len(s_log) for c in range(3)]
            total += kl_sum(log_softmax(t_mean), log_softmax(s_mean))
    return total / len(chunks) * temp**2


@pytest.mark.parametrize(
    ("aggregation", "temp", "pinned"),
    [("nemo", 1.0, 0.0791939515), ("chain", 1.0, 0.1604246148), ("nemo", 2.0, 0.0944036090)],
)
def test_pkl_pinned(aggregation, temp, pinned):
    teacher = TeacherTopK.from_logits(torch.tensor([ZT], dtype=torch.float64), 3, temp)
    zs = torch.tensor([ZS], dtype=torch.float64)
    for subset in ("per_batch", "per_chunk"):
        loss = PKLConfig(temperature=temp, aggregation=aggregation, subset=subset).build(w_proj(W_ROWS, 3))
        got = val(loss(zs, teacher, torch.tensor(S_CHUNK), torch.tensor(T_CHUNK)))
        assert got == pytest.approx(pkl_by_hand(aggregation, temp), rel=1e-9)
        assert got == pytest.approx(pinned, rel=1e-6)


# GOLD / H-KL / ULD: V_s = V_t = 4. s0, s1 exact; s2 → t2 0.7; s3 → t2 (0.8 wins the collision, or 0.7
# and the tie goes to the lower student id s2).
G_ZS = [[1.0, 0.0, 0.5, -1.0], [0.0, 1.0, 1.0, 0.0]]
G_ZT = [[2.0, 0.5, 0.0, 1.0]]


def gold_rows(s3_top: float) -> list[dict[int, float]]:
    return [{0: 1.0}, {1: 1.0}, {2: 0.7, 3: 0.3}, {2: s3_top, 1: round(1 - s3_top, 10)}]


def gold_by_hand(pairs: list[tuple[int, int]], cap: int = 8192) -> float:
    ls = [(a + b) / 2 for a, b in zip(log_softmax(G_ZS[0]), log_softmax(G_ZS[1]), strict=True)]
    lt = log_softmax(G_ZT[0])
    common = sum(math.exp(lt[t]) * (lt[t] - ls[s]) for s, t in pairs)
    us = sorted((math.exp(ls[s]) for s in range(4) if s not in {p[0] for p in pairs}), reverse=True)
    ut = sorted((math.exp(lt[t]) for t in range(4) if t not in {p[1] for p in pairs}), reverse=True)
    n = min(cap, max(len(us), len(ut)))
    us, ut = (us + [0.0] * n)[:n], (ut + [0.0] * n)[:n]
    return common + sum(abs(a - b) for a, b in zip(us, ut, strict=True))


def gold_inputs() -> tuple[torch.Tensor, TeacherTopK, torch.Tensor, torch.Tensor]:
    teacher = TeacherTopK.from_logits(torch.tensor([G_ZT], dtype=torch.float64), 4)
    return torch.tensor([G_ZS], dtype=torch.float64), teacher, torch.tensor([[0, 0]]), torch.tensor([[0]])


@pytest.mark.parametrize(
    ("variant", "s3_top", "pairs", "pinned"),
    [
        ("gold", 0.8, [(0, 0), (1, 1)], 0.5200828010),
        ("hkl", 0.8, [(0, 0), (1, 1), (3, 2)], 0.4923114988),  # collision on t2: 0.8 beats 0.7
        ("hkl", 0.7, [(0, 0), (1, 1), (2, 2)], 0.4034675592),  # tie 0.7 / 0.7: lower student id
    ],
)
def test_gold_hkl_pinned(variant, s3_top, pairs, pinned):
    proj = w_proj(gold_rows(s3_top), 4)
    s, t = common_pairs(proj, threshold=0.6, strict=variant == "gold")
    assert list(zip(s.tolist(), t.tolist(), strict=True)) == pairs
    got = val(GoldConfig(variant=variant).build(proj)(*gold_inputs()))
    assert got == pytest.approx(gold_by_hand(pairs), rel=1e-9)
    assert got == pytest.approx(pinned, rel=1e-6)


def test_common_pairs_tie_inside_a_row_takes_lowest_teacher_id():
    proj = w_proj([{3: 0.5, 1: 0.5}, {2: 0.4, 0: 0.6}], 4)
    s, t = common_pairs(proj, threshold=0.5, strict=False)
    assert (s.tolist(), t.tolist()) == ([0, 1], [1, 0])
    s, _ = common_pairs(proj, threshold=1.0, strict=True)
    assert s.tolist() == []


def test_uld_pinned():
    got = val(ULDConfig().build()(*gold_inputs()))
    assert got == pytest.approx(gold_by_hand([]), rel=1e-9)
    assert got == pytest.approx(0.4321507845, rel=1e-6)
    capped = val(ULDConfig(cap=2).build()(*gold_inputs()))
    assert capped == pytest.approx(gold_by_hand([], cap=2), rel=1e-9)


def test_topk_kl_pinned():
    zs, zt = [1.0, 0.0, 0.0, -1.0], [2.0, 1.0, 0.0, 0.0]
    teacher = TeacherTopK.from_logits(torch.tensor([[zt]], dtype=torch.float64), 2)
    ps, pt = softmax(zs), softmax(zt)
    bucket = kl_sum(
        [math.log(v) for v in (pt[0], pt[1], pt[2] + pt[3])],
        [math.log(v) for v in (ps[0], ps[1], ps[2] + ps[3])],
    )
    got = val(TopKKLConfig().build()(torch.tensor([[zs]], dtype=torch.float64), teacher))
    assert got == pytest.approx(bucket, rel=1e-9)
    assert got == pytest.approx(0.0302755218, rel=1e-6)
    renorm = kl_sum([math.log(v) for v in normalise(pt[:2])], [math.log(v) for v in normalise(ps[:2])])
    got = val(TopKKLConfig(tail="renormalize").build()(torch.tensor([[zs]], dtype=torch.float64), teacher))
    assert got == pytest.approx(renorm, rel=1e-9)


def test_ce_pinned():
    logits = torch.tensor([[[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]], dtype=torch.float64)
    got = val(next_token_ce(logits, torch.tensor([[1, -100, 0]])))
    want = ((math.log(math.e + math.e**2 + 1) - 2) + math.log(3)) / 2
    assert got == pytest.approx(want, rel=1e-12)
    assert got == pytest.approx(0.7531091266, rel=1e-6)
    assert val(next_token_ce(logits, torch.full((1, 3), -100))) == 0.0


def test_dynamic_scaling_pinned():
    kd = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    ce = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    loss = ScalingConfig().build()(kd, ce)
    assert val(loss) == pytest.approx(4.0)  # sg(2/0.5)·0.5 + 2
    loss.backward()
    assert float(kd.grad) == pytest.approx(4.0) and float(ce.grad) == pytest.approx(1.0)
    neg = torch.tensor(-0.5, dtype=torch.float64, requires_grad=True)
    ScalingConfig().build()(neg, ce.detach()).backward()
    assert float(neg.grad) == pytest.approx(4.0)  # |KD| keeps the gradient pointing downhill
    fixed = ScalingConfig.from_alpha(0.3).build()(kd.detach(), ce.detach())
    assert val(fixed) == pytest.approx(0.3 * 0.5 + 0.7 * 2.0)


def test_multi_teacher_pinned():
    kds = [torch.tensor(1.0, requires_grad=True), torch.tensor(3.0, requires_grad=True)]
    scores = torch.tensor([-1.0, -2.0])
    loss, w = MultiTeacherConfig(mode="dynamic", n_teachers=2, alpha=2.0).build()(kds, scores)
    w0 = 1 / (1 + math.exp(-2.0))
    assert w.tolist() == pytest.approx([w0, 1 - w0])
    assert val(loss) == pytest.approx(w0 * 1.0 + (1 - w0) * 3.0)
    loss, w = MultiTeacherConfig(mode="select", n_teachers=2).build()(kds, scores)
    assert w.tolist() == [1.0, 0.0] and val(loss) == 1.0
    loss, _ = MultiTeacherConfig(mode="sum", n_teachers=2, weights=(0.8, 0.2)).build()(kds)
    assert val(loss) == pytest.approx(0.8 + 0.6)


def test_teacher_scores_pinned():
    zt = [[2.0, 1.0, 0.0, 0.0]]
    full = TeacherTopK.from_logits(torch.tensor([zt], dtype=torch.float64), 4, targets=torch.tensor([[1]]))
    p = softmax(zt[0])
    assert float(teacher_score(full, "ce")) == pytest.approx(math.log(p[1]), rel=1e-6)
    assert float(teacher_score(full, "max_prob")) == pytest.approx(p[0], rel=1e-6)
    assert float(teacher_score(full, "entropy")) == pytest.approx(sum(v * math.log(v) for v in p), rel=1e-6)
    top2 = TeacherTopK.from_logits(torch.tensor([zt], dtype=torch.float64), 2)
    rest = (p[2] + p[3]) / 2  # the outside mass spread evenly over the 2 unseen ids
    want = p[0] * math.log(p[0]) + p[1] * math.log(p[1]) + 2 * rest * math.log(rest)
    assert float(teacher_score(top2, "entropy")) == pytest.approx(want, rel=1e-6)
