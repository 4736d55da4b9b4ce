"""analysis/topk_fidelity.py: pinned small cases of its functions, its references against the engine's losses at
k = V_t, its window-by-window evaluation against the engine's whole-batch losses, the worker truncation it relies
on, and a ``--smoke`` run on tiny random-init models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from tests.scripts import load_script
from xtalign.losses import ChunkLayout, GoldConfig, PKLConfig, SparseProjection, TeacherTopK, ULDConfig
from xtalign.losses.sliced import LMHead

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mod() -> ModuleType:
    return load_script("analysis/topk_fidelity.py", "topk_fidelity")


# --- pinned small cases -------------------------------------------------------------------------------------------


def test_bytes_per_position_is_the_engines_price(mod: ModuleType) -> None:
    assert [mod.bytes_per_position(k) for k in (1, 8, 64, 256)] == [14, 56, 392, 1544]  # 6k + 8


def test_mass_kept_and_union_by_hand(mod: ModuleType) -> None:
    probs = torch.tensor([[[0.5, 0.3, 0.15, 0.05], [0.1, 0.6, 0.25, 0.05]]])  # [1, 2, 4]
    teacher = TeacherTopK.from_logits(probs.log(), 2)  # top-2: {0, 1} (0.8) and {1, 2} (0.85)
    mean, _ = mod.mass_kept(teacher, torch.tensor([0, 1]))
    assert mean == pytest.approx(0.825, abs=1e-6)
    assert mod.union_size(teacher, torch.tensor([0, 1])) == 3 and mod.union_size(teacher, torch.tensor([1])) == 2


def test_truncate_is_a_slice(mod: ModuleType) -> None:
    logits = torch.randn(3, 5, 40, generator=torch.Generator().manual_seed(0))
    full = TeacherTopK.from_logits(logits, 16, targets=torch.randint(0, 40, (3, 5)))
    small = mod.truncate(full, 4, rows=2)
    want = TeacherTopK.from_logits(logits[:2], 4, targets=None)
    assert torch.equal(small.ids, want.ids) and torch.equal(small.logits, want.logits)
    assert torch.equal(small.logsumexp, want.logsumexp) and small.target_logprob.shape == (2, 5)


def test_acc_cosine_and_error_by_hand(mod: ModuleType) -> None:
    acc = mod.Acc()
    acc.add(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]).double())
    out = acc.summary()
    assert out["grad_cosine"] == pytest.approx(1 / math.sqrt(2)) and out["rel_error"] == pytest.approx(1.0)
    total = mod.Acc()
    total += acc
    total += acc
    assert total.summary()["grad_cosine"] == pytest.approx(1 / math.sqrt(2)) and total.chunks == 2


def test_windows_hold_whole_chunks(mod: ModuleType) -> None:
    sc = torch.tensor([[0, 1, 1, 2, 3, -1], [0, 0, 1, 2, -1, -1]])  # chunk 1 of row 0 spans positions 1-2
    tc = torch.tensor([[0, 1, 2, 3, -1], [0, 1, 2, -1, -1]])
    layout = ChunkLayout.build(sc, tc).ordered()
    cuts = mod.allowed_cuts(layout, 12)
    assert cuts.tolist()[:7] == [True, True, False, True, True, True, True]  # no cut inside positions 1-2
    assert not bool(cuts[7])  # row 1's chunk 0 spans flat positions 6-7
    windows = mod.plan_windows(layout, [6, 6], 6, 1, 2)
    assert windows[0] == mod.EvalWindow(0, 0, 3)  # the cut at 2 would split chunk 1, so the window grows to 3
    lw = mod.layout_window(layout, windows[0])
    assert lw.n_groups == 2 and lw.student_pos.tolist() == [0, 1, 2] and lw.teacher_pos.tolist() == [0, 1]
    assert mod.combo_rows(mod.combos_for([4, 8], [2, 4], [8]), [2, 4], [8]) == {
        mod.Combo("pkl_per_batch", 4, 2): 2, mod.Combo("pkl_per_chunk", 4, None): 2, mod.Combo("pkl_nocap", 4, 2): 2,
        mod.Combo("hkl", 4, None): 2, mod.Combo("gold", 4, None): 2, mod.Combo("uld", 4, None): 2,
        mod.Combo("pkl_per_batch", 8, 2): 2, mod.Combo("pkl_nocap", 8, 2): 2,  # k = 8 is swept on the small batch too
        mod.Combo("pkl_per_batch", 8, 4): 4, mod.Combo("pkl_per_chunk", 8, None): 4, mod.Combo("pkl_nocap", 8, 4): 4,
        mod.Combo("hkl", 8, None): 4, mod.Combo("gold", 8, None): 4, mod.Combo("uld", 8, None): 4}


def test_pooled_grad_is_the_chain_rule(mod: ModuleType) -> None:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64)
    layout = ChunkLayout.build(torch.tensor([[0, 0, 1, -1, 2]]), torch.tensor([[0, 1, 2]])).ordered()
    weights = torch.randn(3, 7, generator=g, dtype=torch.float64)
    leaf = z.clone().requires_grad_(True)
    (mod.pooled_student(leaf, layout) * weights).sum().backward()
    assert torch.allclose(mod.pooled_grad(z, layout, weights), leaf.grad, atol=1e-12)


# --- the references are the engine's losses at k = V_t --------------------------------------------------------------


def _projection(v_s: int, v_t: int, seed: int) -> SparseProjection:
    """Half the rows one-hot (GOLD's common set), the rest split 0.7 / 0.3 (H-KL's relaxed set at 0.6)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.zeros(v_s, v_t)
    for s in range(v_s - 2):  # two empty rows: student tokens W cannot map
        cols = torch.randperm(v_t, generator=g)[:2]
        dense[s, cols[0]] = 1.0 if s % 2 else 0.7
        if s % 2 == 0:
            dense[s, cols[1]] = 0.3
    return SparseProjection.from_dense(dense)


def _batch(v_s: int, v_t: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    sc = torch.tensor([[0, 1, 1, 2, 3, 4, 5, -1], [0, 0, 1, 2, 3, 4, -1, -1]])  # multi-position chunks on both sides
    tc = torch.tensor([[0, 1, 2, 3, 3, 4, 5], [0, 1, 2, 2, 3, 4, -1]])
    return {"sc": sc, "tc": tc, "zs": torch.randn(2, 8, v_s, generator=g) * 2,
            "zt": torch.randn(2, 7, v_t, generator=g) * 3}


def _engine(loss: torch.nn.Module, zs: torch.Tensor, teacher: TeacherTopK, sc: torch.Tensor, tc: torch.Tensor,
            ) -> tuple[float, torch.Tensor]:
    z = zs.clone().requires_grad_(True)
    value = loss(z, teacher, sc, tc)
    (grad,) = torch.autograd.grad(value, z)
    return float(value.detach()), grad


def test_references_equal_the_engine_at_full_k(mod: ModuleType) -> None:
    v_s, v_t = 30, 40
    w, b = _projection(v_s, v_t, 0), _batch(v_s, v_t, 1)
    full = TeacherTopK.from_logits(b["zt"], v_t)
    losses = {"pkl": PKLConfig(subset_cap=v_t).build(w), "hkl": GoldConfig(variant="hkl").build(w),
              "gold": GoldConfig().build(w), "uld": ULDConfig().build()}
    refs = mod.References.of(w, {**mod.engine_losses(w), "hkl": losses["hkl"], "gold": losses["gold"]})
    layout = ChunkLayout.build(b["sc"], b["tc"]).ordered()
    z2 = b["zs"].reshape(-1, v_s)
    lp = mod.teacher_logprobs(b["zt"].reshape(-1, v_t)[layout.teacher_pos])
    got = refs.evaluate(z2, layout, lp)
    for name, loss in losses.items():
        value, grad = _engine(loss, b["zs"], full, b["sc"], b["tc"])
        values, g = got[name]
        assert float(values.sum()) / layout.n_groups == pytest.approx(value, rel=1e-5, abs=1e-6), name
        assert torch.allclose(g / layout.n_groups, grad.reshape(-1, v_s), atol=1e-6), name
    row0 = ChunkLayout.build(b["sc"][:1], b["tc"][:1]).ordered()  # the study's own check, on row 0 as one window
    check = mod.check_references(mod.engine_losses(w), refs, b["zs"][0], row0, b["zt"][0][row0.teacher_pos])
    assert set(check) == {"pkl", "hkl", "gold", "uld"}
    assert all(c["rel_diff"] < 1e-5 and c["grad_cosine"] > 1 - 1e-9 for c in check.values())
    chunk = PKLConfig(subset="per_chunk").build(w)  # at k = V_t every chunk's subset is the whole vocabulary too
    assert _engine(chunk, b["zs"], full, b["sc"], b["tc"])[0] == pytest.approx(
        float(got["pkl"][0].sum()) / layout.n_groups, rel=1e-5)


def _tiles(mod: ModuleType, layout: ChunkLayout, rows: int, seq: int, size: int) -> list[Any]:
    """Windows of at least ``size`` positions (whole chunks) that tile every row."""
    cuts = torch.nonzero(mod.allowed_cuts(layout, rows * seq)).squeeze(1).tolist()
    out = []
    for r in range(rows):
        edges = [c for c in cuts if r * seq <= c <= (r + 1) * seq]
        lo = edges[0]
        for c in edges[1:]:
            if c - lo >= size or c == (r + 1) * seq:
                out.append(mod.EvalWindow(r, lo, c))
                lo = c
    return out


def test_windows_reproduce_the_engines_whole_batch_losses(mod: ModuleType) -> None:
    """Window by window (top-k side and reference) = the engine's losses on the whole batch: the loss values and
    the cosine of the whole-batch student-logit gradients."""
    v_s, v_t, hidden = 30, 40, 6
    w, b = _projection(v_s, v_t, 2), _batch(v_s, v_t, 3)
    g = torch.Generator().manual_seed(4)
    h = torch.randn(16, hidden, generator=g)
    head = LMHead(weight=torch.randn(v_s, hidden, generator=g))
    zs = (h @ head.weight.T).reshape(2, 8, v_s)
    exact = TeacherTopK.from_logits(b["zt"], 8)
    teacher = TeacherTopK(logits=exact.logits.bfloat16(), ids=exact.ids, logsumexp=exact.logsumexp, vocab_size=v_t)
    losses = mod.engine_losses(w)
    refs = mod.References.of(w, losses)
    geometries, ks = (1, 2), (3, 8)
    combos = mod.combos_for(ks, geometries, ks)
    layout = ChunkLayout.build(b["sc"], b["tc"]).ordered()
    windows = _tiles(mod, layout, 2, 8, 3)
    assert len(windows) >= 4 and all(w.hi - w.lo >= 3 or w.hi % 8 == 0 for w in windows)
    run = mod.TextRun(b["sc"], b["tc"], teacher, h, head, (torch.arange(14), b["zt"].reshape(-1, v_t)), windows)
    mod.evaluate(run, losses, refs, combos, mod.combo_rows(combos, geometries, ks))
    full = TeacherTopK.from_logits(b["zt"], v_t)
    reference = {"pkl": PKLConfig(subset_cap=v_t).build(w), "hkl": losses["hkl"], "gold": losses["gold"],
                 "uld": losses["uld"]}
    for c in combos:
        rows = c.rows or 2
        acc = mod.Acc()
        for r in range(rows):
            acc += run.accs[(c, r)]
        got = acc.summary()
        sl = slice(0, rows)
        value, grad = _engine(losses[c.loss], zs[sl], mod.truncate(teacher, c.k, rows), b["sc"][sl], b["tc"][sl])
        ref_v, ref_g = _engine(reference[mod.REFERENCE_OF[c.loss]], zs[sl], mod.truncate(full, v_t, rows),
                               b["sc"][sl], b["tc"][sl])
        cos = float((grad.double() * ref_g.double()).sum() / (grad.double().norm() * ref_g.double().norm()))
        assert got["loss"] == pytest.approx(value, rel=1e-5, abs=1e-6), c
        assert got["reference"] == pytest.approx(ref_v, rel=1e-5, abs=1e-6), c
        assert got["grad_cosine"] == pytest.approx(cos, abs=1e-6), c


# --- the engine's teacher worker ----------------------------------------------------------------------------------


def test_worker_truncates_exactly_and_capture_sees_its_fp32_logits(mod: ModuleType) -> None:
    from xtalign.distill.config import ArchConfig
    from xtalign.distill.models.load import load_model
    from xtalign.distill.teacher.worker import TeacherWorker

    arch = ArchConfig(family="gemma3", hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8,
                      intermediate_size=32, max_position=64)
    loaded = load_model(model="random", tokenizer="gpt2", arch=arch, seed=3)
    g = np.random.default_rng(0)
    ids = g.integers(0, 50000, size=(2, 12))
    ids[1, 9:] = -1
    lengths = np.array([12, 9])
    targets = np.where(ids >= 0, np.roll(ids, -1, axis=1), -100)
    targets[:, -1] = -100
    big = TeacherWorker(loaded, top_k=32, temperature=1.0, head_slice=5).forward(ids, lengths, targets)
    small = TeacherWorker(loaded, top_k=8, temperature=1.0, head_slice=5).forward(ids, lengths, targets)
    cut = mod.truncate(big, 8)
    for name in ("logits", "logsumexp", "target_logprob"):
        assert torch.equal(getattr(cut, name), getattr(small, name)), name  # k only truncates; lse is k-free
    valid = torch.as_tensor(ids >= 0)  # padded positions have all-zero logits: any order of the tie is a top-k
    assert torch.equal(cut.ids[valid], small.ids[valid])
    worker = mod.CapturingWorker(loaded, top_k=32, temperature=1.0, head_slice=5)
    want = torch.tensor([0, 4, 5, 11, 13, 20])
    worker.capture(want)
    out = worker.forward(ids, lengths, targets)
    assert torch.equal(out.logits, big.logits) and torch.equal(out.ids, big.ids)
    pos, rows = worker.captured()
    with torch.no_grad():
        mask = torch.as_tensor(ids >= 0).long()
        direct = loaded.model(input_ids=torch.as_tensor(ids).clamp_min(0), attention_mask=mask).logits.float()
    assert torch.allclose(rows, direct.reshape(-1, direct.shape[-1])[pos], atol=1e-4)
    err = mod.bf16_error(out, pos, rows)
    assert err["max_abs_logsumexp"] < 1e-5 and 0 < err["max_abs_logit"] < 0.05


# --- the whole script on tiny random-init models ------------------------------------------------------------------


def test_smoke_run_writes_table_figure_and_json(mod: ModuleType, tmp_path: Path) -> None:
    paths = {"--out": tmp_path / "r.json", "--table": tmp_path / "t.md", "--figure": tmp_path / "f.png"}
    args = ["--smoke", "--allow-dirty", "--rows", "1", "2", "--window", "16"]
    assert mod.main(args + [str(x) for kv in paths.items() for x in kv]) == 0
    result = json.loads(paths["--out"].read_text())
    assert result["provenance"]["git_sha"] and result["setup"]["smoke"] and len(result["texts"]) == 2
    assert set(result["summary"]) == {"1", "2"} and set(result["summary"]["1"]) == {"4", "16"}
    assert result["summary"]["2"]["4"]["losses"] == {} and result["recommendation"]["k"] == 16  # k = 4: 1 row only
    assert result["summary"]["2"]["16"]["union"]["mean"] >= result["summary"]["1"]["16"]["union"]["mean"]
    for geo in result["summary"].values():
        for row in geo.values():
            assert set(row["losses"]) in (set(), set(mod.LOSSES))
            for m in row["losses"].values():
                assert -1.0 - 1e-9 <= m["grad_cosine"]["mean"] <= 1.0 + 1e-9 and math.isfinite(m["rel_error"]["mean"])
    table = paths["--table"].read_text()
    assert "## Gradient cosine, 1 × 64" in table and "| 16 | 104 |" in table
    assert paths["--figure"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    paths["--table"].unlink()
    assert mod.main(["--plot-only"] + [str(x) for kv in paths.items() for x in kv]) == 0
    assert paths["--table"].read_text() == table
