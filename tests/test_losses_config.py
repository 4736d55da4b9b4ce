"""Configs refuse bad values; every mode × option runs with finite values and gradients."""

from __future__ import annotations

import itertools

import pytest
import torch

from xtalign.losses import (
    GoldConfig,
    LearnableProjection,
    MultiTeacherConfig,
    PKLConfig,
    ScalingConfig,
    SparseProjection,
    TeacherTopK,
    TopKKLConfig,
    ULDConfig,
    next_token_ce,
    teacher_score,
)


def case(seed: int = 0, temperature: float = 1.0, dtype: torch.dtype = torch.float32):
    gen = torch.Generator().manual_seed(seed)
    v_s, v_t = 30, 40
    idx = torch.randint(0, v_t, (v_s, 3), generator=gen)
    w = torch.rand(v_s, 3, generator=gen, dtype=torch.float64)
    w[:10, 1:] = 0  # exact rows
    w[10:14] = 0  # unmapped rows
    w[14:20, 0] += 3  # H-KL candidates
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    proj = SparseProjection(indices=idx, weights=w.to(dtype), teacher_vocab_size=v_t)
    zs = torch.randn(2, 9, v_s, generator=gen, dtype=dtype, requires_grad=True)
    teacher = TeacherTopK.from_logits(torch.randn(2, 7, v_t, generator=gen), 5, temperature)
    sc = torch.tensor([[0, 0, 1, 2, 3, 3, 4, -1, -1], [0, 1, 2, 2, 3, 4, 5, 6, -1]])
    tc = torch.tensor([[0, 1, 1, 2, 3, 4, -1], [0, 1, 2, 3, 3, 4, 6]])
    return proj, zs, teacher, sc, tc


def assert_finite(loss: torch.Tensor, *params: torch.Tensor) -> None:
    assert torch.isfinite(loss).all()
    grads = torch.autograd.grad(loss, params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# ------------------------------------------------------------------------------------- every combination
@pytest.mark.parametrize(
    ("aggregation", "subset", "direction", "learnable", "temperature"),
    list(
        itertools.product(
            ["nemo", "chain"], ["per_batch", "per_chunk"], ["forward", "reverse"], [False, True], [1.0, 2.5]
        )
    ),
)
def test_pkl_all_modes_finite(aggregation, subset, direction, learnable, temperature):
    proj, zs, teacher, sc, tc = case(1, temperature)
    w = LearnableProjection(proj) if learnable else proj
    cfg = PKLConfig(temperature=temperature, direction=direction, aggregation=aggregation, subset=subset)
    loss = cfg.build(w)(zs, teacher, sc, tc)
    params = (zs, w.logits) if learnable else (zs,)
    assert_finite(loss, *params)


@pytest.mark.parametrize(
    ("variant", "direction", "temperature"),
    list(itertools.product(["gold", "hkl"], ["forward", "reverse"], [1.0, 2.0])),
)
def test_gold_all_modes_finite(variant, direction, temperature):
    proj, zs, teacher, sc, tc = case(2, temperature)
    assert_finite(
        GoldConfig(variant=variant, direction=direction, temperature=temperature).build(proj)(
            zs, teacher, sc, tc
        ),
        zs,
    )


@pytest.mark.parametrize("cap", [1, 8192])
def test_uld_finite(cap):
    _, zs, teacher, sc, tc = case(3)
    assert_finite(ULDConfig(cap=cap).build()(zs, teacher, sc, tc), zs)


@pytest.mark.parametrize(
    ("tail", "direction"), list(itertools.product(["bucket", "renormalize"], ["forward", "reverse"]))
)
def test_topk_all_modes_finite(tail, direction):
    gen = torch.Generator().manual_seed(4)
    zs = torch.randn(2, 6, 20, generator=gen, requires_grad=True)
    teacher = TeacherTopK.from_logits(torch.randn(2, 6, 20, generator=gen), 4, 2.0)
    assert_finite(TopKKLConfig(tail=tail, direction=direction, temperature=2.0).build()(zs, teacher), zs)


@pytest.mark.parametrize("mode", ["dynamic", "fixed"])
def test_scaling_with_real_losses(mode):
    proj, zs, teacher, sc, tc = case(5)
    kd = PKLConfig().build(proj)(zs, teacher, sc, tc)
    ce = next_token_ce(zs, torch.randint(0, 30, (2, 9)))
    assert_finite(ScalingConfig(mode=mode).build()(kd, ce), zs)


@pytest.mark.parametrize(
    ("mode", "score"),
    [
        ("sum", "ce"),
        ("dynamic", "ce"),
        ("dynamic", "entropy"),
        ("dynamic", "max_prob"),
        ("select", "ce"),
        ("select", "entropy"),
    ],
)
def test_multi_teacher_all_modes(mode, score):
    proj, zs, _, sc, tc = case(6)
    gen = torch.Generator().manual_seed(7)
    teachers = [
        TeacherTopK.from_logits(
            torch.randn(2, 7, 40, generator=gen) * s, 5, targets=torch.randint(0, 40, (2, 7), generator=gen)
        )
        for s in (1.0, 3.0)
    ]
    loss_fn = PKLConfig().build(proj)
    kds = [loss_fn(zs, t, sc, tc) for t in teachers]
    scores = torch.stack([teacher_score(t, score, tc >= 0) for t in teachers])
    weights = (0.8, 0.2) if mode == "sum" else None
    combined, w = MultiTeacherConfig(mode=mode, n_teachers=2, weights=weights, score=score).build()(
        kds, scores
    )
    assert not w.requires_grad and float(w.sum()) == pytest.approx(1.0)
    assert_finite(combined, zs)


# --------------------------------------------------------------------------------------------- behaviour
def test_learnable_projection_starts_at_w_and_learns():
    proj, zs, teacher, sc, tc = case(8)
    learn = LearnableProjection(proj)
    torch.testing.assert_close(learn(), proj.weights)
    assert bool((learn()[10:14] == 0).all())
    fixed = PKLConfig().build(proj)(zs, teacher, sc, tc)
    loss_fn = PKLConfig().build(learn)
    assert list(loss_fn.parameters()) == [learn.logits]
    loss = loss_fn(zs, teacher, sc, tc)
    assert float(loss.detach()) == pytest.approx(float(fixed.detach()), rel=1e-6)
    opt = torch.optim.AdamW(loss_fn.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        loss_fn(zs.detach(), teacher, sc, tc).backward()
        opt.step()
    assert float(loss_fn(zs.detach(), teacher, sc, tc).detach()) < float(loss.detach())
    rows = learn().sum(1)
    torch.testing.assert_close(rows[14:], torch.ones(16))
    assert torch.isfinite(learn.logits).all()


def test_one_position_chunks_nemo_equals_chain():
    proj, zs, teacher, _, _ = case(9)
    sc = torch.tensor([[0, 1, 2, 3, 4, 5, -1, -1, -1]] * 2)
    tc = torch.tensor([[0, 1, 2, 3, 4, 5, -1]] * 2)
    a = PKLConfig(aggregation="nemo").build(proj)(zs, teacher, sc, tc)
    b = PKLConfig(aggregation="chain").build(proj)(zs, teacher, sc, tc)
    assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-5)


def test_bfloat16_logits_close_to_float32():
    proj, zs, teacher, sc, tc = case(12)
    z16 = zs.detach().to(torch.bfloat16).requires_grad_()
    for subset in ("per_batch", "per_chunk"):
        loss_fn = PKLConfig(subset=subset).build(proj)
        want = loss_fn(z16.detach().float(), teacher, sc, tc)
        got = loss_fn(z16, teacher, sc, tc)
        assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
        (grad,) = torch.autograd.grad(got, z16)
        assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()


def test_no_shared_chunk_gives_connected_zero():
    proj, zs, teacher, _, _ = case(10)
    sc, tc = torch.full((2, 9), -1), torch.full((2, 7), -1)
    for loss_fn in (PKLConfig().build(proj), GoldConfig().build(proj), ULDConfig().build()):
        loss = loss_fn(zs, teacher, sc, tc)
        assert float(loss.detach()) == 0.0
        loss.backward()


def test_loss_refuses_mismatched_inputs():
    proj, zs, teacher, sc, tc = case(11, temperature=2.0)
    with pytest.raises(ValueError, match="temperature 2.0"):
        PKLConfig().build(proj)(zs, teacher, sc, tc)
    with pytest.raises(ValueError, match="student logits must be"):
        PKLConfig(temperature=2.0).build(proj)(zs[..., :-1], teacher, sc, tc)
    with pytest.raises(ValueError, match="does not match teacher_chunk"):
        PKLConfig(temperature=2.0).build(proj)(zs, teacher, sc, tc[:, :-1])
    with pytest.raises(ValueError, match="do not match student_chunk"):
        GoldConfig(temperature=2.0).build(proj)(zs, teacher, sc[:1], tc)
    with pytest.raises(ValueError, match="needs TeacherTopK.target_logprob"):
        teacher_score(teacher, "ce")
    with pytest.raises(ValueError, match="must both be \\[V_s, k\\]"):
        SparseProjection(
            indices=torch.zeros(3, 2, dtype=torch.long), weights=torch.zeros(3, 1), teacher_vocab_size=4
        )
    with pytest.raises(ValueError, match="indices must lie in"):
        SparseProjection(indices=torch.full((3, 1), 4), weights=torch.ones(3, 1), teacher_vocab_size=4)


# ----------------------------------------------------------------------------------- refused at construction
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: PKLConfig(temperature=0.0), "PKLConfig.temperature must be a finite number > 0"),
        (lambda: PKLConfig(temperature=float("nan")), "PKLConfig.temperature"),
        (lambda: PKLConfig(direction="backward"), "PKLConfig.direction must be one of 'forward', 'reverse'"),
        (lambda: PKLConfig(aggregation="mean"), "PKLConfig.aggregation must be one of"),
        (lambda: PKLConfig(subset="per_position"), "PKLConfig.subset must be one of"),
        (lambda: PKLConfig(subset_cap=0), "PKLConfig.subset_cap must be an integer >= 1"),
        (
            lambda: PKLConfig(subset="per_chunk", subset_cap=100),
            "subset_cap only applies to subset='per_batch'",
        ),
        (lambda: PKLConfig(eps=0.1), "PKLConfig.eps must be <= 1e-3"),
        (lambda: GoldConfig(variant="hkl", hkl_threshold=0.0), "hkl_threshold must be a finite number > 0"),
        (lambda: GoldConfig(variant="hkl", hkl_threshold=1.5), "hkl_threshold must lie in \\(0, 1\\]"),
        (lambda: GoldConfig(hkl_threshold=0.8), "hkl_threshold only applies to variant='hkl'"),
        (lambda: GoldConfig(variant="uld"), "GoldConfig.variant must be one of 'gold', 'hkl'"),
        (lambda: GoldConfig(common_weight=0, uld_weight=0), "cannot both be 0"),
        (lambda: GoldConfig(uld_cap=-3), "uld_cap must be an integer >= 1"),
        (lambda: ULDConfig(temperature=-1.0), "ULDConfig.temperature"),
        (lambda: TopKKLConfig(tail="drop"), "TopKKLConfig.tail must be one of 'bucket', 'renormalize'"),
        (lambda: ScalingConfig(ce_weight=0.0), "mode='dynamic' scales KD by CE"),
        (lambda: ScalingConfig(mode="fixed", kd_weight=0, ce_weight=0), "cannot both be 0"),
        (lambda: ScalingConfig(mode="fixed", kd_weight=-1.0), "kd_weight must be a finite number >= 0"),
        (lambda: ScalingConfig.from_alpha(1.5), "alpha must lie in \\[0, 1\\]"),
        (lambda: MultiTeacherConfig(n_teachers=2, weights=(0.5, 0.4)), "weights must sum to 1"),
        (lambda: MultiTeacherConfig(n_teachers=3, weights=(0.5, 0.5)), "needs 3 entries"),
        (lambda: MultiTeacherConfig(n_teachers=2), "needs 2 entries"),
        (
            lambda: MultiTeacherConfig(n_teachers=2, weights=(1.5, -0.5)),
            "weights must be a finite number >= 0",
        ),
        (
            lambda: MultiTeacherConfig(mode="dynamic", n_teachers=2, weights=(0.5, 0.5)),
            "only apply to mode='sum'",
        ),
        (
            lambda: MultiTeacherConfig(mode="dynamic", n_teachers=2, score="perplexity"),
            "score must be one of",
        ),
        (
            lambda: MultiTeacherConfig(mode="dynamic", n_teachers=2, alpha=0.0),
            "alpha must be a finite number > 0",
        ),
        (lambda: MultiTeacherConfig(n_teachers=0), "n_teachers must be an integer >= 1"),
    ],
)
def test_invalid_configs_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_configs_are_frozen_and_keyword_only():
    cfg = PKLConfig()
    with pytest.raises(AttributeError):
        cfg.temperature = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        PKLConfig(2.0)  # type: ignore[misc]
