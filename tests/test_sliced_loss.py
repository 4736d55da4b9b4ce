"""The sliced student head + losses equal the straightforward path (full logits → the loss modules)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xtalign.losses import (
    GoldConfig,
    LearnableProjection,
    PKLConfig,
    SparseProjection,
    TeacherTopK,
    TopKKLConfig,
    ULDConfig,
    next_token_ce,
)
from xtalign.losses.sliced import LMHead, SlicedTerm, _Plan, sliced_losses
from xtalign.losses.sliced_lm import SlicedLM, sliced_token_nll

V_S, V_T, H, B, T, T_T, K = 300, 400, 16, 2, 24, 20, 8
SLICES = [1, 7, 1000]  # one position, a non-divisor of B·T, more than B·T


# ----------------------------------------------------------------------------------------------- inputs
def random_projection(gen: torch.Generator, v_s: int = V_S, v_t: int = V_T, k: int = 4) -> SparseProjection:
    """Exact 1.0 rows (some colliding), unmapped rows, H-KL candidates (top ≥ 2/3) and empty slots."""
    idx = torch.randint(0, v_t, (v_s, k), generator=gen)
    w = torch.zeros(v_s, k)
    kind = torch.randint(0, 10, (v_s,), generator=gen)
    for s in range(v_s):
        if kind[s] < 4:
            w[s, 0] = 1.0
        elif kind[s] > 4:
            n = 2 + int(torch.randint(0, k - 1, (1,), generator=gen))
            raw = torch.rand(n, generator=gen) + 0.05
            if kind[s] >= 8:
                raw[0] = raw[1:].sum() * 2.0
            w[s, :n] = raw / raw.sum()
    return SparseProjection(indices=idx, weights=w, teacher_vocab_size=v_t)


def toy_chunks(n_pos: int, n_chunks: int, gen: torch.Generator) -> torch.Tensor:
    """Non-decreasing chunk ids (multi-position chunks) over a prefix of the row, −1 at the end."""
    valid = n_pos - 1 - int(torch.randint(0, 3, (1,), generator=gen))
    cuts = torch.sort(torch.randperm(valid - 1, generator=gen)[: n_chunks - 1] + 1).values
    ids = torch.zeros(valid, dtype=torch.long)
    for c in cuts.tolist():
        ids[c:] += 1
    return torch.cat([ids, torch.full((n_pos - valid,), -1, dtype=torch.long)])


class Case:
    """A small random student (hidden states + head) and one cross-tokenizer teacher batch."""

    def __init__(self, seed: int = 0, temperature: float = 1.0, *, bias: bool = False, softcap: float | None = None,
                 scale: float | None = None, dtype: torch.dtype = torch.float32) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.hidden = torch.randn(B, T, H, generator=gen).to(dtype).requires_grad_()
        self.weight = (torch.randn(V_S, H, generator=gen) * 0.7).to(dtype).requires_grad_()
        self.bias = (torch.randn(V_S, generator=gen) * 0.3).to(dtype).requires_grad_() if bias else None
        self.head = LMHead(self.weight, self.bias, scale=scale, softcap=softcap)
        self.proj = random_projection(gen)
        self.teacher = TeacherTopK.from_logits(torch.randn(B, T_T, V_T, generator=gen) * 2, K, temperature)
        self.sc = torch.stack([toy_chunks(T, 10, gen) for _ in range(B)])
        self.tc = torch.stack([toy_chunks(T_T, 9, gen) for _ in range(B)])
        self.sc[1, 4] = -1  # a gap inside a chunk
        self.targets = torch.randint(0, V_S, (B, T), generator=gen)
        self.targets[torch.rand(B, T, generator=gen) < 0.2] = -100
        self.targets[:, -1] = -100
        self.same = TeacherTopK.from_logits(torch.randn(B, T, V_S, generator=gen) * 2, 6, temperature)
        self.mask = torch.rand(B, T, generator=gen) > 0.3

    def params(self) -> list[torch.Tensor]:
        return [p for p in (self.hidden, self.weight, self.bias) if p is not None]

    def logits(self) -> torch.Tensor:
        """The straightforward path: full ``[B, T, V]`` logits (fp32, as the workers' ``.float()``)."""
        z = F.linear(self.hidden, self.weight, self.bias)  # [B, T, V]
        if self.head.scale is not None:
            z = z * self.head.scale
        if self.head.softcap is not None:
            z = torch.tanh(z / self.head.softcap) * self.head.softcap
        return z if z.dtype in (torch.float32, torch.float64) else z.float()

    def term(self, loss: torch.nn.Module) -> SlicedTerm:
        return SlicedTerm(loss, self.teacher, self.sc, self.tc)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``‖a − b‖ / ‖b‖`` (Frobenius norm) of ``a`` against ``b``.

    In float32 the straightforward path's own gradients are off the float64 truth by ~1e-6 (max norm),
    so the norm-wise error is the one that can be held to 1e-6; float64 tests hold far tighter.
    """
    a, b = a.detach().double(), b.detach().double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def assert_same(got: torch.Tensor, want: torch.Tensor, params: list[torch.Tensor], tol: float = 1e-6) -> None:
    """Values and gradients w.r.t. ``params`` agree to ``tol`` (relative, see ``rel_err``)."""
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=tol, abs=1e-12)
    g_got = torch.autograd.grad(got, params, retain_graph=True)
    g_want = torch.autograd.grad(want, params, retain_graph=True)
    for a, b in zip(g_got, g_want, strict=True):
        assert float(b.abs().max()) > 0
        assert rel_err(a, b) <= tol


# ------------------------------------------------------------------------------------------------ the terms
@pytest.mark.parametrize("size", SLICES)
@pytest.mark.parametrize(("bias", "softcap", "scale"), [(False, None, None), (True, 3.0, None), (True, 3.0, 1.7)])
def test_ce_matches(size, bias, softcap, scale):
    c = Case(1, bias=bias, softcap=softcap, scale=scale)
    out = sliced_losses(c.hidden, c.head, targets=c.targets, slice_positions=size)
    assert out.kd == [] and out.argmax is None
    assert_same(out.ce, next_token_ce(c.logits(), c.targets), c.params())


@pytest.mark.parametrize("size", SLICES)
@pytest.mark.parametrize("aggregation", ["nemo", "chain"])
@pytest.mark.parametrize("subset", ["per_batch", "per_chunk"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_pkl_matches(size, aggregation, subset, direction):
    c = Case(2, temperature=1.5)
    loss = PKLConfig(temperature=1.5, aggregation=aggregation, subset=subset, direction=direction).build(c.proj)
    out = sliced_losses(c.hidden, c.head, terms=[c.term(loss)], slice_positions=size)
    assert out.ce is None
    assert_same(out.kd[0], loss(c.logits(), c.teacher, c.sc, c.tc), c.params())


@pytest.mark.parametrize("size", [1, 7])
def test_pkl_per_batch_cap(size):
    c = Case(3)
    loss = PKLConfig(subset_cap=17).build(c.proj)
    out = sliced_losses(c.hidden, c.head, terms=[c.term(loss)], slice_positions=size)
    assert_same(out.kd[0], loss(c.logits(), c.teacher, c.sc, c.tc), c.params())


@pytest.mark.parametrize("size", SLICES)
@pytest.mark.parametrize("aggregation", ["nemo", "chain"])
@pytest.mark.parametrize("subset", ["per_batch", "per_chunk"])
def test_pkl_learnable_w_gets_the_same_gradient(size, aggregation, subset):
    c = Case(4, temperature=2.0)
    learn = LearnableProjection(c.proj)
    loss = PKLConfig(temperature=2.0, aggregation=aggregation, subset=subset).build(learn)
    out = sliced_losses(c.hidden, c.head, terms=[c.term(loss)], slice_positions=size)
    assert_same(out.kd[0], loss(c.logits(), c.teacher, c.sc, c.tc), [*c.params(), learn.logits])


@pytest.mark.parametrize("size", SLICES)
@pytest.mark.parametrize("variant", ["gold", "hkl"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gold_hkl_match(size, variant, direction):
    c = Case(5, temperature=1.3)
    loss = GoldConfig(variant=variant, direction=direction, temperature=1.3, uld_cap=11,
                      common_weight=0.7, uld_weight=1.3).build(c.proj)
    assert loss.common_student.numel() > 10
    out = sliced_losses(c.hidden, c.head, terms=[c.term(loss)], slice_positions=size)
    assert_same(out.kd[0], loss(c.logits(), c.teacher, c.sc, c.tc), c.params())


@pytest.mark.parametrize("size", SLICES)
@pytest.mark.parametrize("cap", [8192, 7])
def test_uld_matches(size, cap):
    c = Case(6, temperature=1.5)
    loss = ULDConfig(temperature=1.5, cap=cap).build()
    out = sliced_losses(c.hidden, c.head, terms=[c.term(loss)], slice_positions=size)
    assert_same(out.kd[0], loss(c.logits(), c.teacher, c.sc, c.tc), c.params())


@pytest.mark.parametrize("size", SLICES)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_topk_kl_matches_with_mask(size, tail, direction):
    c = Case(7, temperature=1.7)
    loss = TopKKLConfig(temperature=1.7, tail=tail, direction=direction).build()
    term = SlicedTerm(loss, c.same, mask=c.mask)
    out = sliced_losses(c.hidden, c.head, terms=[term], slice_positions=size)
    assert_same(out.kd[0], loss(c.logits(), c.same, c.mask), c.params())
    full = sliced_losses(c.hidden, c.head, terms=[SlicedTerm(loss, c.same)], slice_positions=size)
    assert_same(full.kd[0], loss(c.logits(), c.same), c.params())


# ------------------------------------------------------------------------------------------ together
@pytest.mark.parametrize("size", SLICES)
def test_ce_and_several_teachers_share_one_pass(size):
    c = Case(8, bias=True, softcap=4.0)
    gen = torch.Generator().manual_seed(80)
    learn = LearnableProjection(c.proj)
    pkl = PKLConfig(subset="per_chunk", aggregation="chain").build(learn)
    gold = GoldConfig(variant="hkl").build(c.proj)
    topk = TopKKLConfig().build()
    # A second cross-tokenizer teacher with its own chunking of the student's positions.
    other = TeacherTopK.from_logits(torch.randn(B, 15, V_T, generator=gen) * 2, 5)
    sc2 = torch.stack([toy_chunks(T, 6, gen) for _ in range(B)])
    tc2 = torch.stack([toy_chunks(15, 6, gen) for _ in range(B)])
    terms = [c.term(pkl), SlicedTerm(gold, other, sc2, tc2), SlicedTerm(topk, c.same, mask=c.mask)]
    out = sliced_losses(c.hidden, c.head, targets=c.targets, terms=terms, slice_positions=size, argmax=True)
    z = c.logits()
    want = [pkl(z, c.teacher, c.sc, c.tc), gold(z, other, sc2, tc2), topk(z, c.same, c.mask)]
    params = [*c.params(), learn.logits]
    assert_same(out.ce, next_token_ce(z, c.targets), c.params())
    for i, (got, ref) in enumerate(zip(out.kd, want, strict=True)):
        assert_same(got, ref, params if i == 0 else c.params())  # only P-KL reads the learnable W
    total = 0.3 * out.ce + out.kd[0] + 0.5 * out.kd[1] + 2.0 * out.kd[2]
    assert_same(total, 0.3 * next_token_ce(z, c.targets) + want[0] + 0.5 * want[1] + 2.0 * want[2], params)
    read = out.argmax >= 0
    assert bool((out.argmax[read] == z.argmax(-1)[read]).all())
    assert bool(read[c.targets >= 0].all())


@pytest.mark.parametrize("size", SLICES)
def test_fused_weights_give_the_same_gradient_in_one_pass(size):
    """With fixed weights the gradient is made in the forward pass; ``total`` alone carries it."""
    c = Case(18, bias=True, softcap=4.0)
    learn = LearnableProjection(c.proj)
    pkl = PKLConfig(subset="per_chunk").build(learn)
    gold, uld = GoldConfig(variant="hkl").build(c.proj), ULDConfig(cap=20).build()
    topk = TopKKLConfig().build()
    terms = [c.term(pkl), c.term(gold), c.term(uld), SlicedTerm(topk, c.same, mask=c.mask)]
    weights = (0.4, 0.9, 0.3, 0.2, 1.7)
    out = sliced_losses(c.hidden, c.head, targets=c.targets, terms=terms, slice_positions=size, weights=weights)
    z = c.logits()
    parts = [next_token_ce(z, c.targets), pkl(z, c.teacher, c.sc, c.tc), gold(z, c.teacher, c.sc, c.tc),
             uld(z, c.teacher, c.sc, c.tc), topk(z, c.same, c.mask)]
    for got, want in zip([out.ce, *out.kd], parts, strict=True):
        assert not got.requires_grad
        assert float(got) == pytest.approx(float(want.detach()), rel=1e-6)
    want = sum(w * p for w, p in zip(weights, parts, strict=True))
    assert_same(out.total, want, [*c.params(), learn.logits])


def test_fused_scales_by_the_incoming_gradient():
    c = Case(19)
    loss = PKLConfig().build(c.proj)
    out = sliced_losses(c.hidden, c.head, targets=c.targets, terms=[c.term(loss)], slice_positions=7,
                        weights=(1.0, 2.0))
    (out.total * 3.0).backward()
    z = c.logits()
    ref = [t.detach().clone().requires_grad_() for t in (c.hidden, c.weight)]
    z = F.linear(ref[0], ref[1])
    (3.0 * (next_token_ce(z, c.targets) + 2.0 * loss(z, c.teacher, c.sc, c.tc))).backward()
    assert rel_err(c.hidden.grad, ref[0].grad) <= 1e-6 and rel_err(c.weight.grad, ref[1].grad) <= 1e-6
    with torch.no_grad():
        quiet = sliced_losses(c.hidden, c.head, targets=c.targets, terms=[c.term(loss)], slice_positions=7,
                              weights=(1.0, 2.0))
    assert float(quiet.total) == pytest.approx(float(out.total.detach()), rel=1e-6)
    with pytest.raises(ValueError, match="2 losses .* but 1 weights"):
        sliced_losses(c.hidden, c.head, targets=c.targets, terms=[c.term(loss)], weights=(1.0,))


FLOAT64_LOSSES = {
    "pkl-nemo-per_batch": lambda p: PKLConfig(temperature=1.5, subset_cap=40).build(p),
    "pkl-chain-per_chunk-reverse": lambda p: PKLConfig(temperature=1.5, aggregation="chain", subset="per_chunk",
                                                       direction="reverse").build(p),
    "pkl-learnable": lambda p: PKLConfig(temperature=1.5, subset="per_chunk").build(LearnableProjection(p)),
    "gold": lambda p: GoldConfig(temperature=1.5, uld_cap=50).build(p),
    "hkl-reverse": lambda p: GoldConfig(variant="hkl", direction="reverse", temperature=1.5).build(p),
    "uld": lambda p: ULDConfig(temperature=1.5).build(),
}


@pytest.mark.parametrize("size", [1, 7])
@pytest.mark.parametrize("name", sorted(FLOAT64_LOSSES))
def test_float64_agrees_to_rounding(name, size):
    """In float64 the two paths agree to ~1e-13: only the summation order differs."""
    c = Case(9, temperature=1.5, dtype=torch.float64, bias=True, softcap=5.0)
    loss = FLOAT64_LOSSES[name](c.proj)
    out = sliced_losses(c.hidden, c.head, targets=c.targets, terms=[c.term(loss)], slice_positions=size)
    z = c.logits()
    params = c.params() + list(loss.parameters())
    want = next_token_ce(z, c.targets) + loss(z, c.teacher, c.sc, c.tc)
    assert_same(out.ce + out.kd[0], want, params, tol=1e-12)


def test_float64_topk_kl_agrees_to_rounding():
    c = Case(9, temperature=1.5, dtype=torch.float64)
    loss = TopKKLConfig(temperature=1.5).build()
    out = sliced_losses(c.hidden, c.head, terms=[SlicedTerm(loss, c.same, mask=c.mask)], slice_positions=5)
    assert_same(out.kd[0], loss(c.logits(), c.same, c.mask), c.params(), tol=1e-12)


def test_chunk_ids_in_any_order_and_interleaved():
    """Chunk numbering along a row is free, and chunks may even interleave: slices keep them whole."""
    c = Case(10)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    sc = torch.where(c.sc >= 0, perm[c.sc.clamp_min(0)], -1)
    tc = torch.where(c.tc >= 0, perm[c.tc.clamp_min(0)], -1)
    sc[0, 2], sc[0, 3] = sc[0, 3].clone(), sc[0, 2].clone()
    sc[0, 1], sc[0, 6] = sc[0, 6].clone(), sc[0, 1].clone()  # two chunks now interleave
    for loss in (PKLConfig(aggregation="chain").build(c.proj), GoldConfig().build(c.proj)):
        for size in (1, 4):
            out = sliced_losses(c.hidden, c.head, terms=[SlicedTerm(loss, c.teacher, sc, tc)], slice_positions=size)
            assert_same(out.kd[0], loss(c.logits(), c.teacher, sc, tc), c.params())


def test_slices_never_split_a_chunk():
    c = Case(11)
    loss = PKLConfig().build(c.proj)
    prepared = [c.term(loss).prepare((B, T), V_S, torch.float32)]
    plan = _Plan(prepared, B * T, 3, c.hidden.device)
    assert len(plan.slices) > 1
    seen = []
    for sl in plan.slices:
        rows = torch.arange(B * T)[sl.rows].tolist()
        seen.extend(rows)
        chunks = {(r // T, int(c.sc.reshape(-1)[r])) for r in rows if c.sc.reshape(-1)[r] >= 0}
        for b, ch in chunks:
            assert set(rows) >= {b * T + i for i in range(T) if int(c.sc[b, i]) == ch}
    assert seen == sorted(set(seen))


# ------------------------------------------------------------------------------------------ precision
def test_autocast_bfloat16_within_rounding():
    c = Case(12)
    loss = PKLConfig().build(c.proj)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sliced_losses(c.hidden, c.head, targets=c.targets, terms=[c.term(loss)], slice_positions=7)
        z16 = F.linear(c.hidden, c.weight)  # [B, T, V] bf16, as a Hugging Face lm_head under autocast
    assert z16.dtype == torch.bfloat16
    z = z16.float()
    got = out.ce + out.kd[0]
    want = next_token_ce(z, c.targets) + loss(z, c.teacher, c.sc, c.tc)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    g_got = torch.autograd.grad(got, c.params())
    g_want = torch.autograd.grad(want, c.params())
    for a, b in zip(g_got, g_want, strict=True):
        assert a.dtype == torch.float32 and rel_err(a, b) <= 2e-2  # bf16 matmuls, summed in another order
    fp32 = sliced_losses(c.hidden, c.head, targets=c.targets, terms=[c.term(loss)], slice_positions=7)
    assert float(got.detach()) == pytest.approx(float((fp32.ce + fp32.kd[0]).detach()), rel=2e-2)


# ------------------------------------------------------------------------------------------ edge cases
def test_nothing_counted_gives_connected_zeros():
    c = Case(13)
    none = torch.full((B, T), -1)
    terms = [
        SlicedTerm(PKLConfig().build(c.proj), c.teacher, none, c.tc),
        SlicedTerm(ULDConfig().build(), c.teacher, none, c.tc),
        SlicedTerm(TopKKLConfig().build(), c.same, mask=torch.zeros(B, T, dtype=torch.bool)),
    ]
    out = sliced_losses(c.hidden, c.head, targets=torch.full((B, T), -100), terms=terms, slice_positions=4)
    total = out.ce + sum(out.kd)
    assert float(total.detach()) == 0.0 and out.n_slices == 0
    total.backward()
    assert c.hidden.grad is not None and float(c.hidden.grad.abs().sum()) == 0.0


def test_refuses_mismatches():
    c = Case(14)
    pkl = PKLConfig().build(c.proj)
    with pytest.raises(ValueError, match="student vocabulary of 300"):
        sliced_losses(c.hidden, LMHead(c.weight[:-1]), terms=[c.term(pkl)])
    with pytest.raises(ValueError, match="needs student_chunk"):
        sliced_losses(c.hidden, c.head, terms=[SlicedTerm(pkl, c.teacher)])
    with pytest.raises(ValueError, match="do not match student_chunk"):
        sliced_losses(c.hidden, c.head, terms=[SlicedTerm(pkl, c.teacher, c.sc[:, :-1], c.tc)])
    with pytest.raises(ValueError, match="same \\[B, T\\] positions"):
        sliced_losses(c.hidden, c.head, terms=[SlicedTerm(TopKKLConfig().build(), c.teacher)])
    with pytest.raises(ValueError, match="nothing to compute"):
        sliced_losses(c.hidden, c.head)
    with pytest.raises(ValueError, match="targets"):
        sliced_losses(c.hidden, c.head, targets=c.targets[:, :-1])


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_token_nll_matches_the_eval_formula(size):
    c = Case(15, softcap=3.0)
    got = sliced_token_nll(c.hidden, c.head, c.targets, slice_positions=size)
    lp = torch.log_softmax(c.logits().detach().double(), dim=-1)
    want = -lp.gather(-1, c.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    want = torch.where(c.targets != -100, want, float("nan"))
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-6, atol=1e-6)  # fp32 logits: ulps


# ------------------------------------------------------------------------------------ Hugging Face models
def tiny_llama(tied: bool) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=V_S, hidden_size=H, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("tied", [False, True])
def test_hf_model_wrapper_matches_logits_path(tied):
    model = tiny_llama(tied)
    c = Case(16)
    ids = torch.randint(0, V_S, (B, T), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(B, T, dtype=torch.long)
    loss = PKLConfig().build(c.proj)
    out = SlicedLM(model, slice_positions=5)(ids, mask, targets=c.targets, terms=[c.term(loss)])
    got = out.ce + out.kd[0]
    params = [p for p in model.parameters()]
    g_got = torch.autograd.grad(got, params, allow_unused=True)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()
    want = next_token_ce(logits, c.targets) + loss(logits, c.teacher, c.sc, c.tc)
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    g_want = torch.autograd.grad(want, params, allow_unused=True)
    for a, b in zip(g_got, g_want, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert rel_err(a, b) <= 1e-5
    nll = SlicedLM(model).token_nll(ids, mask, c.targets)
    assert torch.isfinite(nll[c.targets >= 0]).all()


def test_hf_softcap_is_read_from_the_config():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.Gemma2Config(vocab_size=V_S, hidden_size=H, intermediate_size=32, num_hidden_layers=1,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                    final_logit_softcapping=2.5)
    model = transformers.Gemma2ForCausalLM(cfg)
    head = LMHead.from_hf(model)
    assert head.softcap == 2.5 and head.weight is model.get_output_embeddings().weight
    ids = torch.randint(0, V_S, (1, 9), generator=torch.Generator().manual_seed(4))
    targets = torch.randint(0, V_S, (1, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = SlicedLM(model, slice_positions=4)(ids, targets=targets).ce
        want = next_token_ce(model(input_ids=ids).logits.float(), targets)
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_ddp_wraps_the_sliced_model(tmp_path):
    dist = torch.distributed
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("needs torch.distributed with gloo")
    model = tiny_llama(True)
    c = Case(17)
    ids = torch.randint(0, V_S, (B, T), generator=torch.Generator().manual_seed(6))
    loss = PKLConfig().build(c.proj)
    ref = SlicedLM(model, slice_positions=7)(ids, targets=c.targets, terms=[c.term(loss)])
    want = torch.autograd.grad(ref.ce + ref.kd[0], list(model.parameters()))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(SlicedLM(model, slice_positions=7))
        out = ddp(ids, targets=c.targets, terms=[c.term(loss)])
        (out.ce + out.kd[0]).backward()
    finally:
        dist.destroy_process_group()
    for p, w in zip(model.parameters(), want, strict=True):
        assert p.grad is not None and rel_err(p.grad, w) <= 1e-6
