"""Checkpoints: bitwise-exact resume (tied weights, AdamW, LambdaLR, RNG), keep-last-N, incomplete dirs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from xtalign.distill.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint

VOCAB, DIM = 20, 8


class Tiny(nn.Module):
    """Embedding → MLP with dropout → LM head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, DIM), nn.GELU(), nn.Dropout(0.2), nn.LayerNorm(DIM))
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.emb(x)))  # [B, T, V]


def build(seed: int) -> tuple[Tiny, torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    torch.manual_seed(seed)
    model = Tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1.0 + s))
    return model, opt, sched


def train(model: Tiny, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> None:
    for _ in range(steps):
        x = torch.randint(0, VOCAB, (4, 6))  # [B, T]: drawn from the global RNG, like dropout
        loss = nn.functional.cross_entropy(model(x)[:, :-1].reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def save(run_dir, step, model, opt, sched, keep_last=2, **state) -> object:
    return save_checkpoint(run_dir, step, model=model.state_dict(), optimizer=opt, scheduler=sched,
                           tensors={"torch_rng": torch.get_rng_state()}, state={"step": step, **state},
                           keep_last=keep_last)


def test_resume_is_bitwise(tmp_path) -> None:
    model, opt, sched = build(0)
    train(model, opt, sched, 3)
    np_state = np.random.default_rng(7).bit_generator.state
    path = save(tmp_path, 3, model, opt, sched, cursor=12, np_rng=np_state, pair=(1, 2.5), arr=np.arange(3))
    assert path == tmp_path / "checkpoints" / "step-00000003" and (path / "COMPLETE").is_file()
    train(model, opt, sched, 3)

    fresh, fresh_opt, fresh_sched = build(123)
    assert not torch.equal(fresh.emb.weight, model.emb.weight)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 3 and ck.path == path
    assert ck.model["head.weight"] is ck.model["emb.weight"]  # the tie is restored, stored once
    assert list(ck.model) == list(model.state_dict())
    assert ck.state == {"step": 3, "cursor": 12, "np_rng": np_state, "pair": (1, 2.5),
                        "arr": ck.state["arr"]} and ck.state["arr"].tolist() == [0, 1, 2]
    steps = [v["step"] for v in ck.optimizer_state["state"].values()]
    assert sorted(ck.optimizer_state["state"]) == [0, 1, 2, 3, 4] and all(s.dtype == torch.float32 for s in steps)
    assert ck.optimizer_state["param_groups"][0]["betas"] == (0.9, 0.95)
    fresh.load_state_dict(ck.model)
    fresh_opt.load_state_dict(ck.optimizer_state)
    fresh_sched.load_state_dict(ck.scheduler_state)
    torch.set_rng_state(ck.tensors["torch_rng"])
    train(fresh, fresh_opt, fresh_sched, 3)

    assert fresh.head.weight is fresh.emb.weight
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    for a, b in zip(opt.state.values(), fresh_opt.state.values(), strict=True):
        assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert sched.get_last_lr() == fresh_sched.get_last_lr() and sched.last_epoch == fresh_sched.last_epoch == 6


def test_keep_last_and_stale_tmp(tmp_path) -> None:
    model, opt, sched = build(0)
    stale = tmp_path / "checkpoints" / ".tmp-step-00000099-1"
    stale.mkdir(parents=True)
    for step in (1, 2, 3, 4):
        save(tmp_path, step, model, opt, sched, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000003", "step-00000004"]
    save(tmp_path, 2, model, opt, sched, keep_last=1)  # an older step: kept (the new one), and the newest
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    save(tmp_path, 4, model, opt, sched, keep_last=3, cursor=5)  # the same step again replaces it
    assert load_checkpoint(tmp_path).state == {"step": 4, "cursor": 5}
    assert json.loads((tmp_path / "checkpoints" / "step-00000004" / "COMPLETE").read_text())["step"] == 4


def test_incomplete_and_missing(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="has no complete checkpoint under checkpoints/; nothing to resume"):
        load_checkpoint(tmp_path)
    assert latest_checkpoint(tmp_path) is None
    model, opt, sched = build(0)
    good = save(tmp_path, 5, model, opt, sched)
    broken = tmp_path / "checkpoints" / "step-00000009"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path) == good
    assert load_checkpoint(tmp_path).step == 5
    with pytest.raises(CheckpointError, match="incomplete checkpoint") as err:
        load_checkpoint(broken)
    assert "\n" not in str(err.value)


def test_unstorable_state_leaves_nothing(tmp_path) -> None:
    model, opt, sched = build(0)
    with pytest.raises(CheckpointError, match="cannot store a object at state.bad"):
        save_checkpoint(tmp_path, 1, model=model.state_dict(), optimizer=opt, scheduler=None, tensors={},
                        state={"state": {"bad": object()}}, keep_last=1)
    assert list((tmp_path / "checkpoints").iterdir()) == []
    path = save_checkpoint(tmp_path, 1, model=model.state_dict(), optimizer=opt, scheduler=None, tensors={},
                           state={}, keep_last=1)
    ck = load_checkpoint(path)
    assert ck.scheduler_state is None and ck.tensors == {} and ck.optimizer_state["state"] == {}
