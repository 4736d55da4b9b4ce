"""Teacher cache: per-sample storage, bitwise round trip, any batch geometry, key refusals naming the field,
killed runs, append/continue, old caches refused with how to rebuild."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from xtalign.distill.data.batch import IGNORE, TeacherSide
from xtalign.distill.teacher.cache import (
    FORMAT_NAME,
    CacheError,
    CacheKey,
    CacheMismatchError,
    TeacherCacheReader,
    TeacherCacheWriter,
)
from xtalign.distill.teacher.wire import shard_topk
from xtalign.losses import TeacherTopK

B, TT, TS, V, K = 2, 7, 5, 50, 8

KEY = CacheKey(teacher="qwen", teacher_model="m" * 64, teacher_tokenizer="t" * 64, student_tokenizer="s" * 64,
               k=K, temperature=2.0, data_hash="d0", seq_len=16, add_bos=True)


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


def assert_same_rows(a: TeacherTopK, b: TeacherTopK, lengths: np.ndarray) -> None:
    """Bitwise equal on every row's real positions (padding is the codec's, not the teacher's)."""
    for row, n in enumerate(int(x) for x in lengths):
        for name in ("logits", "ids", "logsumexp"):
            x, y = getattr(a, name)[row, :n], getattr(b, name)[row, :n]
            assert x.dtype == y.dtype and torch.equal(x, y), name
        if a.target_logprob is not None:
            assert torch.equal(a.target_logprob[row, :n], b.target_logprob[row, :n])
    assert (a.target_logprob is None) == (b.target_logprob is None)
    assert (a.vocab_size, a.temperature, a.logits.shape) == (b.vocab_size, b.temperature, b.logits.shape)


def _rows(side: TeacherSide, rows: list[int]) -> TeacherSide:
    idx = np.asarray(rows)
    return TeacherSide(ids=side.ids[idx], lengths=side.lengths[idx], targets=side.targets[idx])


def test_round_trip_is_bitwise_per_sample(tmp_path) -> None:
    sides = {i: make_side(i, cross=i != 1) for i in (4, 0, 9)}
    outs = {i: make_out(i, sides[i], with_target=i != 9) for i in sides}
    with TeacherCacheWriter(tmp_path / "c", KEY, shard_samples=3) as writer:
        for i in sides:
            writer.write(i, sides[i], outs[i], sample_ids=np.array([10 * i, 10 * i + 1]))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_NAME and manifest["format_version"] == 2 and manifest["key"] == KEY.to_dict()
    assert [s["samples"] for s in manifest["shards"]] == [[40, 41, 0, 1], [90, 91]]  # whole batches per shard
    reader = TeacherCacheReader(tmp_path / "c", KEY)
    assert len(reader) == 6 and reader.has(np.array([0, 41])) and not reader.has(np.array([0, 2]))
    for i in (4, 0):
        assert_same_rows(reader.read(np.array([10 * i, 10 * i + 1]), sides[i]), outs[i], sides[i].lengths)
    assert reader.read(np.array([90, 91]), sides[9]).target_logprob is None
    reader.verify()


def test_any_batch_geometry_reads_the_samples(tmp_path) -> None:
    """Samples cached in batches of two read back in another grouping and order (a run with another batch
    size, rank count or data order over the same samples)."""
    sides = [make_side(i) for i in range(2)]
    outs = [make_out(i, s) for i, s in enumerate(sides)]
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        for i in range(2):
            writer.write(i, sides[i], outs[i], sample_ids=np.array([2 * i, 2 * i + 1]))
    reader = TeacherCacheReader(tmp_path, KEY)
    mixed = TeacherSide(ids=np.stack([sides[1].ids[0], sides[0].ids[1]]),
                        lengths=np.array([sides[1].lengths[0], sides[0].lengths[1]]), targets=sides[0].targets)
    got = reader.read(np.array([2, 1]), mixed)  # sample 2 = batch 1 row 0, sample 1 = batch 0 row 1
    assert torch.equal(got.logits[0], outs[1].logits[0]) and torch.equal(got.ids[1, :5], outs[0].ids[1, :5])
    one = reader.read(np.array([3]), _rows(sides[1], [1]))
    assert_same_rows(one, shard_topk(outs[1], slice(1, 2)), np.array([5]))


def test_changed_sample_is_refused(tmp_path) -> None:
    side = make_side(0)
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        writer.write(0, side, make_out(0, side), sample_ids=np.array([0, 1]))
    reader = TeacherCacheReader(tmp_path, KEY)
    other = dataclasses.replace(side, ids=side.ids.copy())
    other.ids[0, 0] = (other.ids[0, 0] + 1) % V
    with pytest.raises(CacheMismatchError, match="sample 0 differs from the cached one"):
        reader.read(np.array([0, 1]), other)
    with pytest.raises(CacheError, match="has no sample 5"):
        reader.read(np.array([5, 1]), side)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(CacheKey)])
def test_every_key_field_is_checked(tmp_path, field) -> None:
    side = make_side(0)
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        writer.write(0, side, make_out(0, side), sample_ids=np.array([0, 1]))
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


def test_old_per_batch_cache_is_refused_with_how_to_rebuild(tmp_path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"format": FORMAT_NAME, "format_version": 1, "key": {},
                                                        "shards": []}))
    with pytest.raises(CacheError, match=r"version 1 \(version 1 kept answers per batch\).*xtalign cache-teachers") \
            as err:
        TeacherCacheReader(tmp_path, KEY)
    assert "\n" not in str(err.value)


def test_missing_and_garbled_manifest(tmp_path) -> None:
    with pytest.raises(CacheError, match="has no manifest.json") as err:
        TeacherCacheReader(tmp_path / "nothing", KEY)
    assert "\n" not in str(err.value)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "manifest.json").write_text("{not json")
    with pytest.raises(CacheError, match="garbled"):
        TeacherCacheReader(tmp_path / "g", KEY)
    (tmp_path / "g" / "manifest.json").write_text(json.dumps({"format": FORMAT_NAME, "format_version": 2,
                                                              "shards": []}))
    with pytest.raises(CacheError, match="garbled"):
        TeacherCacheReader(tmp_path / "g", KEY)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    with pytest.raises(CacheError, match="not empty"):
        TeacherCacheWriter(tmp_path / "busy", KEY)


def test_killed_run_keeps_complete_shards(tmp_path) -> None:
    writer = TeacherCacheWriter(tmp_path, KEY, shard_samples=4)
    sides = [make_side(i) for i in range(3)]
    for i, side in enumerate(sides):
        writer.write(i, side, make_out(i, side), sample_ids=np.array([2 * i, 2 * i + 1]))
    del writer  # killed: never closed, samples 4 and 5 were still waiting for their shard
    reader = TeacherCacheReader(tmp_path, KEY)
    assert len(reader) == 4 and reader.has(np.array([2, 3])) and not reader.has(np.array([4]))
    assert_same_rows(reader.read(np.array([2, 3]), sides[1]), make_out(1, sides[1]), sides[1].lengths)
    assert not list(tmp_path.glob(".*.tmp"))


def test_append_continues_and_skips_known(tmp_path) -> None:
    sides = [make_side(i) for i in range(5)]
    with TeacherCacheWriter(tmp_path, KEY, shard_samples=4) as writer:
        for i in (0, 1, 2):
            writer.write(i, sides[i], make_out(i, sides[i]), sample_ids=np.array([2 * i, 2 * i + 1]))
    with TeacherCacheWriter(tmp_path, KEY, shard_samples=4) as writer:
        assert writer.has(np.array([4, 5])) and not writer.has(np.array([6]))
        writer.write(1, sides[1], make_out(99, sides[1]), sample_ids=np.array([2, 3]))  # known: the original stays
        for i in (3, 4):
            writer.write(i, sides[i], make_out(i, sides[i]), sample_ids=np.array([2 * i, 2 * i + 1]))
    reader = TeacherCacheReader(tmp_path, KEY)
    assert len(reader) == 10
    for i in range(5):
        assert_same_rows(reader.read(np.array([2 * i, 2 * i + 1]), sides[i]), make_out(i, sides[i]),
                         sides[i].lengths)
    writer.close()  # idempotent
    with pytest.raises(CacheError, match="closed"):
        writer.write(7, sides[0], make_out(7, sides[0]), sample_ids=np.array([20, 21]))


def test_wrong_answer_is_refused(tmp_path) -> None:
    side = make_side(0)
    out = make_out(0, side)
    with TeacherCacheWriter(tmp_path, KEY) as writer:
        with pytest.raises(CacheError, match="temperature"):
            writer.write(0, side, dataclasses.replace(out, temperature=1.0), sample_ids=np.array([0, 1]))
        with pytest.raises(CacheError, match="positions"):
            writer.write(0, dataclasses.replace(side, ids=side.ids[:, :3]), out, sample_ids=np.array([0, 1]))
    assert len(TeacherCacheReader(tmp_path, KEY)) == 0


def test_compact_cache_reads_back_what_the_writer_returned(tmp_path) -> None:
    """A lossy codec: the writer hands back the decoded answer (what the filling run trains on), and a reader
    of the cache gets exactly that, in any grouping; kept log-probs within step / 2 of the teacher's."""
    from xtalign.distill.teacher.rows import CodecSpec

    spec = CodecSpec("compact", {"k": K})
    sides = [make_side(i) for i in range(2)]
    outs = [make_out(i, s) for i, s in enumerate(sides)]
    with TeacherCacheWriter(tmp_path / "c", KEY, codec=spec) as writer:
        assert writer.lossy
        got = [writer.write(i, sides[i], outs[i], sample_ids=np.array([2 * i, 2 * i + 1])) for i in range(2)]
    reader = TeacherCacheReader(tmp_path / "c", KEY)
    for i in range(2):
        back = reader.read(np.array([2 * i, 2 * i + 1]), sides[i])
        assert_same_rows(back, got[i], sides[i].lengths)
        for row, n in enumerate(int(x) for x in sides[i].lengths):
            want = outs[i].logprobs()[row, :n].float()  # [n, K], descending per position
            have = back.logprobs()[row, :n].float()
            order = torch.argsort(outs[i].ids[row, :n], dim=-1)
            assert torch.equal(torch.sort(back.ids[row, :n], dim=-1).values,
                               torch.take_along_dim(outs[i].ids[row, :n], order, dim=-1))
            err = (have.gather(-1, torch.argsort(back.ids[row, :n], dim=-1))
                   - want.gather(-1, order)).abs().max().item()
            assert err <= 1 / 32 + 1e-6, err
    exact = TeacherCacheWriter(tmp_path / "e", KEY)
    for i in range(2):
        assert exact.write(i, sides[i], outs[i], sample_ids=np.array([2 * i, 2 * i + 1])) is outs[i]
    exact.close()
    with pytest.raises(CacheMismatchError, match="stores answers as"):
        TeacherCacheWriter(tmp_path / "c", KEY)  # an exact run on a compact cache


def test_a_run_that_fills_a_compact_cache_equals_the_run_that_reads_it(tmp_path) -> None:
    from test_distill_engine import fast_config, metrics

    from xtalign.cli.main import main

    cfg = fast_config(tmp_path, steps=3, cache_codec="compact")
    cache = tmp_path / "cache"
    for name in ("fill", "read"):
        assert main(["distill", "--config", str(cfg), "--out", str(tmp_path / name), "--cache-teachers",
                     str(cache)]) == 0
    fill, read = metrics(tmp_path / "fill"), metrics(tmp_path / "read")
    assert [r["loss"] for r in fill] == [r["loss"] for r in read]  # exact: the filling run trained on the decoded
    manifest = json.loads((cache / "t-gpt2" / "manifest.json").read_text())
    assert manifest["codec"]["kind"] == "compact" and manifest["codec"]["settings"] == {"k": 16}
