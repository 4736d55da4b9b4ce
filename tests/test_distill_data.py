"""xtalign.distill.corpus / data: reading, packing, held-out split, batch building and the background pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from xtalign.align import token_ends
from xtalign.distill.config import DataConfig
from xtalign.distill.data.batch import IGNORE, Batch
from xtalign.distill.data.builder import BatchBuilder, cut_point_multi
from xtalign.distill.data.corpus import Corpus, DataError, load_corpus, pack_documents, read_documents, split_documents
from xtalign.distill.data.pipeline import DataPipeline, batch_order, heldout_batches, heldout_selection

TEXTS = [
    "Hello 👍🏽 world, the year 2025 had 365 days.",
    "x",
    "吾輩は猫である。名前はまだ無い。 Ünïcödé café naïve  \t tabs\n\nnew paragraph 1234567890",
    "def f(x):\n    return x ** 2  # 🇯🇵🏳️‍🌈 [INST] <s> \\x41",
    "A long line of prose that the budget cuts somewhere in the middle, " * 6,
]


# --- reading ---------------------------------------------------------------------------------------


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def test_text_documents_modes(tmp_path: Path) -> None:
    p = _write(tmp_path / "a.txt", "\ufeffone\r\ntwo\r\n\r\n  \nthree\n\n\n\nfour  \n")
    assert read_documents(str(p)) == ["one\ntwo", "three", "four  "]
    assert read_documents(str(p), documents="line") == ["one", "two", "three", "four  "]
    assert read_documents(str(p), documents="file") == ["one\ntwo\n\n  \nthree\n\n\n\nfour  "]
    assert read_documents(str(_write(tmp_path / "b.md", "x\n\ny"))) == ["x", "y"]


def test_jsonl_documents_and_errors(tmp_path: Path) -> None:
    p = _write(tmp_path / "d.jsonl", '{"text": "first"}\n\n{"text": "  "}\n{"text": "sec\\nond", "id": 2}\n')
    assert read_documents(str(p)) == ["first", "sec\nond"]
    assert read_documents(str(_write(tmp_path / "d.json", '{"body": "b"}')), field="body") == ["b"]
    cases = [('{"text": "a"}\n{"body": "b", "id": 1}\n', "d.jsonl:2: no key 'text' (keys: 'body', 'id')"),
             ('{"text": 3}\n', "d.jsonl:1: 'text' is a int, not a string"),
             ('{"text": "a"}\n{oops\n', "d.jsonl:2: not valid JSON"),
             ('["text"]\n', "d.jsonl:1: a JSON list, not an object")]
    for body, message in cases:
        with pytest.raises(DataError) as exc:
            read_documents(str(_write(tmp_path / "d.jsonl", body)))
        assert message in str(exc.value) and "\n" not in str(exc.value)


def test_parquet_documents_and_errors(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"content": ["alpha", " ", "beta"], "n": [1, 2, 3]}), p)
    assert read_documents(str(p), field="content") == ["alpha", "beta"]
    with pytest.raises(DataError, match=r"no column 'text' \(columns: content, n\); set data.field"):
        read_documents(str(p))
    with pytest.raises(DataError, match="column 'n' holds int64, not strings"):
        read_documents(str(p), field="n")
    pq.write_table(pa.table({"text": ["a", None]}), p)
    with pytest.raises(DataError, match="row 1 of column 'text' is null"):
        read_documents(str(p))


@pytest.mark.parametrize(("name", "body", "message"), [
    ("missing.txt", None, "does not exist"),
    ("blank.txt", " \n\n \t\n", "the corpus is empty (no non-blank document)"),
    ("bad.txt", b"ok \xe2\x82 bad", "not valid UTF-8 at byte offset 3"),
    ("data.csv", "a,b", "cannot tell the format from the suffix '.csv'; set data.format"),
])
def test_reading_errors(tmp_path: Path, name: str, body: str | bytes | None, message: str) -> None:
    p = tmp_path / name
    if body is not None:
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    with pytest.raises(DataError) as exc:
        read_documents(str(p))
    assert message in str(exc.value) and "\n" not in str(exc.value)
    if name == "data.csv":
        assert read_documents(str(p), fmt="text") == ["a,b"]  # an explicit format reads any suffix


def test_botchan_is_split_into_chapters() -> None:
    docs = read_documents("botchan")
    assert len(docs) == 13  # front matter, 11 chapters, the licence
    assert docs[0].startswith("Project Gutenberg's Botchan") and docs[1].startswith("CHAPTER I\n")
    assert docs[11].startswith("CHAPTER XI.\n") and docs[12].startswith("*** END OF THIS PROJECT GUTENBERG")
    assert len(read_documents("botchan", documents="line")) == 4288


# --- packing, split, hash --------------------------------------------------------------------------


def test_pack_documents_exact() -> None:
    docs = ["aaaa bbbb cccc", "dd", "e" * 25]
    samples = pack_documents(docs, pack_chars=8)
    # windows of 8 cut after the last whitespace in their final 8 // 8 = 1 character, else at 8
    assert samples == ["aaaa bbb", "b cccc\n\n", "dd\n\neeee", "eeeeeeee", "eeeeeeee", "eeeee"]
    assert "".join(samples) == "\n\n".join(docs)
    long = pack_documents(["word " * 1000, "tail"], pack_chars=64)
    assert all(len(s) <= 64 for s in long) and all(s.endswith(" ") for s in long[:-1])
    assert "".join(long) == "word " * 1000 + "\n\ntail"
    assert pack_documents(["x", " "], pack_chars=3) == ["x\n\n"]  # a whitespace-only tail is dropped


def test_split_disjoint_and_stable() -> None:
    train, held = split_documents(40, 0.1, seed=3)
    assert len(held) == 4 and len(train) == 36
    assert sorted([*train, *held]) == list(range(40))
    again = split_documents(40, 0.1, seed=3)
    assert np.array_equal(again[1], held) and not np.array_equal(split_documents(40, 0.1, seed=4)[1], held)
    assert [len(x) for x in split_documents(2, 0.01, seed=0)] == [1, 1]  # at least 1 on each side
    assert [len(x) for x in split_documents(3, 0.99, seed=0)] == [1, 2]
    with pytest.raises(DataError, match="has 1 document, so none can be held out; give data.heldout"):
        split_documents(1, 0.1, seed=0)


def test_load_corpus_split_and_hash(tmp_path: Path) -> None:
    p = _write(tmp_path / "c.txt", "\n\n".join(f"document {i} " + "word " * i for i in range(30)))
    cfg = DataConfig(train=str(p), pack_chars=100, heldout_fraction=0.2)
    a, b = load_corpus(cfg, seed=1), load_corpus(cfg, seed=1)
    assert a.train == b.train and a.heldout == b.heldout and a.data_hash == b.data_hash
    held_docs = re.findall(r"document (\d+) ", "".join(a.heldout))
    train_docs = re.findall(r"document (\d+) ", "".join(a.train))
    assert len(held_docs) == 6 and len(train_docs) == 24 and not set(held_docs) & set(train_docs)
    assert "".join(a.heldout) == "\n\n".join(f"document {i} " + "word " * i for i in sorted(map(int, held_docs)))
    assert all(len(s) <= 100 for s in (*a.train, *a.heldout))
    assert load_corpus(cfg, seed=2).data_hash != a.data_hash
    other = load_corpus(DataConfig(train=str(p), pack_chars=101, heldout_fraction=0.2), seed=1)
    assert other.data_hash != a.data_hash
    sep = load_corpus(DataConfig(train=str(p), heldout=str(_write(tmp_path / "h.txt", "held out"))), seed=0)
    assert sep.heldout == ("held out",) and "".join(sep.train).count("document") == 30
    assert len(a.data_hash) == 64 and "held out" in a.description


# --- truncation and batches on real tokenizers -----------------------------------------------------


def test_cut_point_multi_exact() -> None:
    text = b"abcdefgh"
    sides = [np.array([0, 3, 5, 8]), np.array([0, 2, 5, 8]), np.array([1, 5, 6, 8])]
    assert cut_point_multi(sides, max_tokens=4, text=text) == (8, [4, 4, 4])
    assert cut_point_multi(sides, max_tokens=3, text=text) == (5, [3, 3, 2])
    assert cut_point_multi(sides, max_tokens=1, text=text) == (0, [1, 1, 0])
    emoji = "a👍".encode()  # bytes: a=0, 👍=1..4; both sides end a token inside the emoji at 3
    assert cut_point_multi([np.array([1, 3, 5]), np.array([1, 3, 5])], max_tokens=2, text=emoji) == (1, [1, 1])


@pytest.fixture(scope="module")
def builder(zoo) -> BatchBuilder:
    return BatchBuilder(zoo("gpt2"), [zoo("mistral-v1"), zoo("llama3"), zoo("gpt2")], seq_len=24, add_bos=True)


def _check_batch(batch: Batch, bld: BatchBuilder, full_texts: list[str]) -> None:
    """Every invariant a batch promises, row by row and side by side."""
    sides = [(bld.student, batch.student_ids, batch.student_lengths, batch.student_targets, None, None)]
    sides += [(tok, t.ids, t.lengths, t.targets, t.student_chunk, t.teacher_chunk)
              for tok, t in zip(bld.teachers, batch.teachers, strict=True)]
    assert np.array_equal(batch.n_bytes, [len(t.encode()) for t in batch.texts])
    for b, text in enumerate(batch.texts):
        assert full_texts[b].startswith(text) and text
        for tok, ids, lengths, targets, _, _ in sides:
            n = int(lengths[b])
            row = ids[b, :n].tolist()
            assert n <= bld.seq_len and np.all(ids[b, n:] == -1) and np.all(targets[b, n - 1:] == IGNORE)
            assert tok.decode_bytes(row) == text.encode()  # exactly the covered text
            full = [tok.vocab.roles.get("bos", tok.vocab.roles.get("eos"))] + tok.encode(full_texts[b])
            assert row == full[:n]  # a prefix of the full tokenization
            ends = token_ends([row], tok)[0]
            carries = ends[1:] > ends[:-1]  # the next token adds bytes (SentencePiece's lone dummy prefix does not)
            assert np.array_equal(targets[b, : n - 1], np.where(carries, row[1:], IGNORE))
    s_bytes = [_token_bytes(bld.student, batch.student_ids[b, : batch.student_lengths[b]]) for b in range(batch.size)]
    for tok, ids, lengths, _, s_chunk, t_chunk in sides[1:]:
        if s_chunk is None:
            assert ids is batch.student_ids
            continue
        for b in range(batch.size):
            t_bytes = _token_bytes(tok, ids[b, : lengths[b]])
            assert _chunk_texts(s_chunk[b], s_bytes[b]) == _chunk_texts(t_chunk[b], t_bytes)


def _token_bytes(tok, ids: np.ndarray) -> list[bytes]:
    out = [tok.vocab.token_bytes[i] for i in ids.tolist()]
    if tok.dummy_prefix:  # the phantom space leaves the first token with bytes
        k = next((k for k, x in enumerate(out) if x), None)
        if k is not None:
            out[k] = out[k][1:]
    return out


def _chunk_texts(pred_chunk: np.ndarray, token_bytes: list[bytes]) -> list[bytes]:
    """Prediction chunk c at position p covers token p + 1: join each chunk's bytes; chunks must be 0..C-1."""
    chunks: dict[int, bytes] = {}
    for p, c in enumerate(pred_chunk.tolist()):
        if c >= 0:
            chunks[c] = chunks.get(c, b"") + token_bytes[p + 1]
        else:
            assert p + 1 >= len(token_bytes) or token_bytes[p + 1] == b""  # only text-less tokens are skipped
    assert list(chunks) == list(range(len(chunks)))
    return [chunks[c] for c in range(len(chunks))]


def test_batch_invariants_real_tokenizers(builder: BatchBuilder) -> None:
    batch = builder.build(7, np.arange(len(TEXTS)), TEXTS)
    assert batch.index == 7 and batch.size == len(TEXTS) and np.array_equal(batch.sample_ids, range(len(TEXTS)))
    assert [t.same_vocab for t in batch.teachers] == [False, False, True]
    assert batch.texts[1] == "x" and batch.texts[0] == TEXTS[0][: len(batch.texts[0])]
    assert len(batch.texts[4]) < len(TEXTS[4])  # the budget binds and the cut is by text
    assert int(batch.student_lengths.max()) <= 24 and max(int(t.lengths.max()) for t in batch.teachers) == 24
    _check_batch(batch, builder, TEXTS)
    assert builder.build(7, np.arange(len(TEXTS)), TEXTS).texts == batch.texts  # cached rows give the same batch


def test_batch_invariants_on_botchan_samples(zoo) -> None:
    corpus = load_corpus(DataConfig(pack_chars=3000), seed=0)
    bld = BatchBuilder(zoo("gpt2"), [zoo("mistral-v1"), zoo("llama3")], seq_len=300, add_bos=True)
    texts = list(corpus.train[:6])
    _check_batch(bld.build(0, np.arange(6), texts), bld, texts)


def test_start_token_and_no_bos(zoo) -> None:
    bld = BatchBuilder(zoo("llama3"), [zoo("qwen3")], seq_len=16, add_bos=True)
    batch = bld.build(0, np.arange(1), ["Hi there"])
    assert batch.student_ids[0, 0] == 128000 and batch.teachers[0].ids[0, 0] == 151643  # qwen3: eos starts
    plain = BatchBuilder(zoo("llama3"), [zoo("qwen3")], seq_len=16, add_bos=False).build(0, np.arange(1), ["Hi there"])
    assert plain.student_ids[0].tolist() == [13347, 1070] and plain.student_targets[0].tolist() == [1070, IGNORE]


def test_seq_len_too_short(zoo) -> None:
    bld = BatchBuilder(zoo("gpt2"), [zoo("mistral-v1")], seq_len=2, add_bos=True)
    message = r"^seq_len=2 is too short to hold one aligned chunk of sample 5 .*raise seq_len$"
    with pytest.raises(DataError, match=message):
        bld.build(0, np.array([5]), ["👍🏽 ok"])


# --- order and the pipeline ------------------------------------------------------------------------


def test_batch_order() -> None:
    a = batch_order(10, 3, seed=0, epoch=0)
    assert a.shape == (3, 3) and a.dtype == np.int64 and len(set(a.ravel().tolist())) == 9
    assert np.array_equal(a, batch_order(10, 3, seed=0, epoch=0))
    assert not np.array_equal(a, batch_order(10, 3, seed=0, epoch=1))
    assert not np.array_equal(a, batch_order(10, 3, seed=1, epoch=0))
    small = batch_order(3, 7, seed=0, epoch=2)
    assert small.shape == (1, 7) and sorted(small[0, :3].tolist()) == [0, 1, 2]
    assert small[0].tolist() == small[0, :3].tolist() * 2 + small[0, :1].tolist()  # wrap-around


@pytest.fixture(scope="module")
def small_corpus() -> Corpus:
    return load_corpus(DataConfig(pack_chars=600), seed=0)


def _same(x: Batch, y: Batch) -> bool:
    arrays = [(x.sample_ids, y.sample_ids), (x.student_ids, y.student_ids), (x.student_targets, y.student_targets)]
    arrays += [(a.student_chunk, b.student_chunk) for a, b in zip(x.teachers, y.teachers, strict=True)]
    arrays += [(a.ids, b.ids) for a, b in zip(x.teachers, y.teachers, strict=True)]
    return x.index == y.index and x.texts == y.texts and all(np.array_equal(a, b) for a, b in arrays)


def _take(corpus: Corpus, zoo, n: int, **kw) -> list[Batch]:
    bld = BatchBuilder(zoo("gpt2"), [zoo("llama3")], seq_len=64, add_bos=True)
    with DataPipeline(corpus, bld, batch_size=16, seed=5, **kw) as pipe:
        return [b for _, b in zip(range(n), pipe, strict=False)]


def test_pipeline_order_workers_and_resume(small_corpus: Corpus, zoo) -> None:
    per_epoch = len(small_corpus.train) // 16
    n = per_epoch + 3  # crosses an epoch boundary
    one = _take(small_corpus, zoo, n, workers=1, prefetch=2)
    three = _take(small_corpus, zoo, n, workers=3, prefetch=5)
    assert [b.index for b in one] == list(range(n))
    assert all(_same(a, b) for a, b in zip(one, three, strict=True))
    resumed = _take(small_corpus, zoo, 4, workers=2, start_batch=per_epoch - 1)
    assert all(_same(a, b) for a, b in zip(one[per_epoch - 1:], resumed, strict=True))
    ids = np.stack([b.sample_ids for b in one[:per_epoch]])
    assert len(set(ids.ravel().tolist())) == per_epoch * 16  # no sample twice within an epoch


def test_pipeline_reraises_worker_error_and_closes(small_corpus: Corpus, zoo) -> None:
    bld = BatchBuilder(zoo("gpt2"), [zoo("mistral-v1")], seq_len=1, add_bos=True)  # bos alone: nothing fits
    pipe = DataPipeline(small_corpus, bld, batch_size=4, seed=0, workers=2)
    with pytest.raises(DataError, match="seq_len=1 is too short"):
        next(pipe)
    assert pipe._pool is None  # closed on the error
    with pytest.raises(StopIteration):
        next(pipe)


def test_heldout_batches_all_when_they_fit(zoo) -> None:
    corpus = load_corpus(DataConfig(pack_chars=2000, heldout_fraction=0.2), seed=0)
    bld = BatchBuilder(zoo("gpt2"), [zoo("llama3")], seq_len=32, add_bos=True)
    held = heldout_batches(corpus, bld, batch_size=4, max_batches=100, seed=0)
    n = len(corpus.heldout)
    assert [b.size for b in held] == [4] * (n // 4) + ([n % 4] if n % 4 else [])
    ids = np.concatenate([b.sample_ids for b in held])
    assert ids.tolist() == list(range(len(corpus.train), len(corpus.train) + n))
    assert [b.texts[0] for b in held] == [corpus.heldout[4 * k][: len(held[k].texts[0])] for k in range(len(held))]
    assert all(set(b.sources) == {"botchan"} for b in held)


def test_heldout_selection_spreads_over_sources() -> None:
    sources = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    picked = heldout_selection(sources, 10, seed=0)
    assert picked.tolist() == sorted(set(picked.tolist())) and len(picked) == 10
    counts = {name: sum(sources[i] == name for i in picked) for name in "abc"}
    assert counts == {"a": 6, "b": 3, "c": 1}
    assert picked.max() > 50  # a spread, not the first samples in file order
    assert heldout_selection(sources, 10, seed=0).tolist() == picked.tolist()
    assert heldout_selection(sources, 10, seed=1).tolist() != picked.tolist()
    assert heldout_selection(sources, 200, seed=0).tolist() == list(range(100))
    tiny = heldout_selection(["a"] * 50 + ["b"], 4, seed=0)  # every source gets at least one sample
    assert sum(i == 50 for i in tiny) == 1


def test_default_corpus() -> None:
    corpus = load_corpus(DataConfig(), seed=0)
    assert corpus.description == ("botchan: 12 training documents -> 16 samples of <= 16384 characters; "
                                  "1 of 13 documents held out (seed 0) -> 2 held-out samples")
    assert [len(s) for s in corpus.heldout] == [16382, 6294] and corpus.heldout[0].startswith("CHAPTER X.\n")


def test_shard_batch_carries_every_per_row_field() -> None:
    """A rank's share keeps the on-policy fields with its rows (a rank once got the whole batch's targets)."""
    from xtalign.distill.data.batch import Batch, TeacherSide
    from xtalign.distill.teacher.wire import shard_batch

    ids = np.arange(4 * 3, dtype=np.int64).reshape(4, 3)
    cross = TeacherSide(ids=ids + 100, lengths=np.full(4, 3), targets=ids + 200, student_chunk=ids % 2,
                        teacher_chunk=ids % 3, texts=("a", "b", "c", "d"))
    same = TeacherSide(ids=ids, lengths=np.full(4, 3), targets=ids + 1)
    batch = Batch(index=7, sample_ids=np.arange(4), n_bytes=np.arange(4) + 10, student_ids=ids,
                  student_lengths=np.full(4, 3), student_targets=ids + 1, teachers=(cross, same),
                  texts=("w", "x", "y", "z"), policy_rows=np.array([True, False, True, False]),
                  policy_targets=ids + 5, policy_widths=np.array([1, 2, 3, 4]), stats={"generate_s": 1.0})
    half = shard_batch(batch, 1, 2)
    assert half.index == 7 and half.stats == {"generate_s": 1.0} and half.texts == ("y", "z")
    assert half.sample_ids.tolist() == [2, 3] and half.policy_rows.tolist() == [True, False]
    assert np.array_equal(half.policy_targets, ids[2:] + 5) and half.policy_widths.tolist() == [3, 4]
    assert np.array_equal(half.teachers[0].ids, ids[2:] + 100) and half.teachers[0].texts == ("c", "d")
    assert half.teachers[1].ids is half.student_ids  # a same-vocab side still shares the student's ids
