"""Teacher cache: bitwise round trip, key refusals naming the field, killed runs, append/continue."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from xtalign.distill.batch import IGNORE, TeacherSide
from xtalign.distill.cache import (
    FORMAT_NAME,
    CacheError,
    CacheKey,
    CacheMismatchError,
    TeacherCacheReader,
    TeacherCacheWriter,
)
from xtalign.losses import TeacherTopK

B, TT, TS, V, K = 2, 7, 5, 50, 8

KEY = CacheKey(teacher="qwen", teacher_model="m" * 64, teacher_tokenizer="t" * 64, student_tokenizer="s" * 64,
               k=K, temperature=2.0, data_hash="d0", seq_len=16, batch_size=B, seed=3, add_bos=True)


def make_side(index: int, *, cross: bool = True) -> TeacherSide:
    rng = np.random.default_rng(index)
    ids = rng.integers(0, V, size=(B, TT)).astype(np.int64)
    ids[1, 5:] = -1
    targets = np.full((B, TT), IGNORE, dtype=np.int64)
    targets[:, :-1] = np.where(ids[:, 1:] >= 0, ids[:, 1:], IGNORE)
    chunks = {}
    if cross:
        chunks = {"student_chunk": rng.integers(-1, 3, size=(B, TS)),
                  "teacher_chunk": rng.integers(-1, 3, size=(B, TT))}
    return TeacherSide(ids=ids, lengths=np.array([TT, 5], dtype=np.int64), targets=targets, **chunks)


def make_out(index: int, side: TeacherSide, *, with_target: bool = True) -> TeacherTopK:
    gen = torch.Generator().manual_seed(index)
    logits = torch.randn(B, TT, V, generator=gen).bfloat16()  # [B, Tt, V]
    targets = torch.from_numpy(side.targets) if with_target else None
    out = TeacherTopK.from_logits(logits, K, temperature=KEY.temperature, targets=targets)
    return dataclasses.replace(out, logits=out.logits.to(torch.bfloat16))


def assert_same(a: TeacherTopK, b: TeacherTopK) -> None:
    for name in ("logits", "ids", "logsumexp"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name
    assert (a.target_logprob is None) == (b.target_logprob is None)
    if a.target_logprob is not None:
        assert a.target_logprob.dtype == b.target_logprob.dtype and torch.equal(a.target_logprob, b.target_logprob)
    assert (a.vocab_size, a.temperature) == (b.vocab_size, b.temperature)


def test_round_trip_is_bitwise(tmp_path) -> None:
    sides = {i: make_side(i, cross=i != 1) for i in (4, 0, 9)}
    outs = {i: make_out(i, sides[i], with_target=i != 9) for i in sides}
    assert outs[4].logits.dtype == torch.bfloat16 and outs[4].ids.dtype == torch.int32
    assert outs[4].logsumexp.dtype == torch.float32
    with TeacherCacheWriter(tmp_path / "c", KEY, shard_batches=2) as writer:
        for i in sides:
            writer.write(i, sides[i], outs[i], sample_ids=np.array([10 * i, 10 * i + 1]))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_NAME and manifest["key"] == KEY.to_dict()
    assert [s["batches"] for s in manifest["shards"]] == [[4, 0], [9]] and manifest["sample_order"] == [4, 0, 9]
    reader = TeacherCacheReader(tmp_path / "c", KEY)
    assert reader.indices() == [4, 0, 9] and len(reader) == 3 and reader.has(0) and not reader.has(1)
    for i in sides:
        assert_same(reader.read(i, sides[i]), outs[i])
        back = reader.side(i)
        assert np.array_equal(back.ids, sides[i].ids) and np.array_equal(back.targets, sides[i].targets)
        assert back.same_vocab == (i == 1) and back.ids.dtype == np.int64
        assert reader.sample_ids(i).tolist() == [10 * i, 10 * i + 1]
    assert reader.side(4).student_chunk.tolist() == sides[4].student_chunk.tolist()
    assert reader.read(9, sides[9]).target_logprob is None
    reader.verify()


def test_changed_batch_is_refused(tmp_path) -> None:
    side = make_side(0)
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        writer.write(0, side, make_out(0, side))
    reader = TeacherCacheReader(tmp_path, KEY)
    other = dataclasses.replace(side, ids=side.ids.copy())
    other.ids[0, 0] = (other.ids[0, 0] + 1) % V
    with pytest.raises(CacheMismatchError, match="batch 0 differs from the cached one"):
        reader.read(0, other)
    with pytest.raises(CacheError, match="has no batch 5"):
        reader.read(5, side)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(CacheKey)])
def test_every_key_field_is_checked(tmp_path, field) -> None:
    side = make_side(0)
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        writer.write(0, side, make_out(0, side))
    value = getattr(KEY, field)
    changed = {bool: lambda v: not v, int: lambda v: v * 2, float: lambda v: v + 0.5, str: lambda v: v + "x"}
    other = dataclasses.replace(KEY, **{field: changed[type(value)](value)})
    with pytest.raises(CacheMismatchError, match=rf"was made with {field}=.*this run uses {field}=") as err:
        TeacherCacheReader(tmp_path, other)
    assert "\n" not in str(err.value)
    with pytest.raises(CacheMismatchError, match=field):
        TeacherCacheWriter(tmp_path, other)


def test_k_message_is_exact(tmp_path) -> None:
    TeacherCacheWriter(tmp_path / "c", KEY).close()
    with pytest.raises(CacheMismatchError) as err:
        TeacherCacheReader(tmp_path / "c", dataclasses.replace(KEY, k=64))
    assert str(err.value).startswith(f"teacher cache {tmp_path / 'c'} was made with k=8, this run uses k=64; ")


def test_missing_and_garbled_manifest(tmp_path) -> None:
    with pytest.raises(CacheError, match="has no manifest.json") as err:
        TeacherCacheReader(tmp_path / "nothing", KEY)
    assert "\n" not in str(err.value)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="garbled"):
        TeacherCacheReader(tmp_path / "g", KEY)
    (tmp_path / "g" / "manifest.json").write_text(json.dumps({"format": FORMAT_NAME, "shards": []}))
    with pytest.raises(CacheError, match="garbled"):
        TeacherCacheReader(tmp_path / "g", KEY)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        TeacherCacheWriter(tmp_path / "busy", KEY)


def test_killed_run_keeps_complete_shards(tmp_path) -> None:
    writer = TeacherCacheWriter(tmp_path, KEY, shard_batches=2)
    sides = [make_side(i) for i in range(3)]
    for i, side in enumerate(sides):
        writer.write(i, side, make_out(i, side))
    del writer  # killed: never closed, batch 2 was still waiting for its shard
    reader = TeacherCacheReader(tmp_path, KEY)
    assert reader.indices() == [0, 1] and not reader.has(2)
    assert_same(reader.read(1, sides[1]), make_out(1, sides[1]))
    assert not list(tmp_path.glob(".*.tmp"))


def test_append_continues_and_skips_known(tmp_path) -> None:
    sides = [make_side(i) for i in range(5)]
    with TeacherCacheWriter(tmp_path, KEY, shard_batches=2) as writer:
        for i in (0, 1, 2):
            writer.write(i, sides[i], make_out(i, sides[i]))
    with TeacherCacheWriter(tmp_path, KEY, shard_batches=2) as writer:
        assert writer.has(2) and not writer.has(3)
        bogus = make_out(99, sides[1])
        writer.write(1, sides[1], bogus)  # already cached: skipped, the original stays
        for i in (3, 4):
            writer.write(i, sides[i], make_out(i, sides[i]))
    reader = TeacherCacheReader(tmp_path, KEY)
    assert reader.indices() == [0, 1, 2, 3, 4]
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 3
    for i in range(5):
        assert_same(reader.read(i, sides[i]), make_out(i, sides[i]))
    writer.close()  # idempotent
    with pytest.raises(CacheError, match="closed"):
        writer.write(7, sides[0], make_out(7, sides[0]))


def test_wrong_answer_is_refused(tmp_path) -> None:
    side = make_side(0)
    out = make_out(0, side)
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        with pytest.raises(CacheError, match="temperature"):
            writer.write(0, side, dataclasses.replace(out, temperature=1.0))
        with pytest.raises(CacheError, match="positions"):
            writer.write(0, dataclasses.replace(side, ids=side.ids[:, :3]), out)
    assert TeacherCacheReader(tmp_path, KEY).indices() == []
