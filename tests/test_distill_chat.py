"""`data.format: chat` in the engine: each side in its own template, loss masks, bits per byte over assistant
content, routing by row, the cache key, resume, Ray, and the export's chat template (tiny random models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.test_distill_engine import TINY_ARCH, distill, metrics
from xtalign.distill.data.batch import IGNORE

TEACHER = {"name": "t-gemma", "model": "random", "tokenizer": "gemma3", "chat_template": "google-gemma-2-2b-it",
           "arch": {**TINY_ARCH, "max_position": 256}, "loss": "p-kl", "top_k": 16, "head_slice": 64}
SAME = {"name": "t-smol", "model": "random", "tokenizer": "smollm2", "arch": {**TINY_ARCH, "max_position": 256},
        "loss": "same-vocab", "top_k": 16}


def conversations(n: int = 24) -> list[dict]:
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Question {i}: what is {i} + {i}? naïve 🤖"},
                {"role": "assistant", "content": f"It is {2 * i}. 日本語で、{i}。"}]
        if i % 3 == 0:
            msgs += [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because I added them."}]
        rows.append({"messages": msgs})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_config(tmp: Path, name: str = "chat.yaml", rows: list[dict] | None = None, **extra: object) -> Path:
    data = write_jsonl(tmp / "chat.jsonl", rows if rows is not None else conversations())
    cfg = {"student": {"model": "random", "tokenizer": "smollm2", "arch": {**TINY_ARCH, "max_position": 256}},
           "teachers": [TEACHER], "data": {"train": str(data), "format": "chat", "heldout_fraction": 0.2},
           "optim": {"lr": 3e-3}, "schedule": {"kind": "constant"}, "eval": {"every": 0, "max_batches": 2},
           "checkpoint": {"every": 0, "keep_last": 2}, "steps": 3, "batch_size": 2, "seq_len": 96, "seed": 0,
           "device": "cpu", "threads": 1}
    cfg.update(extra)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
    return path


def _parts(cfg_path: Path):
    from xtalign.distill.build import build_teachers
    from xtalign.distill.config import load_config

    return build_teachers(load_config(cfg_path))


def test_batches_carry_loss_on_assistant_content_and_turn_end_only(tmp_path: Path) -> None:
    from xtalign.chat import TokenPart

    tp = _parts(chat_config(tmp_path))
    try:
        conv = tp.corpus.train[0]
        batch = tp.builder.build(0, np.array([0]), [conv])
        conv, als = tp.builder.align(conv)
        al = als[0]
        s = al.student
        want = np.isin(s.part, (TokenPart.CONTENT, TokenPart.EDGE, TokenPart.TURN_END))
        want &= np.array([conv.messages[m].role == "assistant" for m in np.maximum(s.message, 0)]) & (s.message >= 0)
        predicted = np.flatnonzero(batch.student_targets[0] != IGNORE) + 1  # the tokens CE trains on
        assert predicted.tolist() == np.flatnonzero(want).tolist()
        eot = [int(i) for i in s.turn_end if i >= 0 and conv.messages[int(s.message[i])].role == "assistant"]
        # every message closes with <|im_end|>, and so does the system prompt SmolLM2's template adds
        assert set(eot) <= set(predicted.tolist()) and s.text.count("<|im_end|>") == len(conv.messages) + 1
        side = batch.teachers[0]
        t_text = side.texts[0]
        assert "<start_of_turn>model\n" in t_text and "<|im_start|>" not in t_text  # no student marker
        assert t_text.startswith("<bos>") and t_text.count("<bos>") == 1
        kd_chunks = set(side.student_chunk[0][side.student_chunk[0] >= 0].tolist())
        assert kd_chunks == set(np.flatnonzero(al.loss_chunk).tolist())  # KD only on assistant chunks
    finally:
        tp.backend.close()


def test_chat_run_scores_assistant_content_bytes_on_both_sides(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert distill("--config", chat_config(tmp_path), "--out", out) == 0
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    teacher, student = evals[0], evals[-1]
    assert teacher["model"] == "teacher:t-gemma" and teacher["bytes"] == student["bytes"] > 0
    assert teacher["uncovered_bytes"] > 0  # the templates' own bytes are not scored
    rows = metrics(out)
    assert len(rows) == 3 and all(np.isfinite(r["kd"]["t-gemma"]) for r in rows)
    cfg = json.loads((out / "export" / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in cfg["chat_template"]  # the student's own template


def test_same_vocab_teacher_and_routing_by_row(tmp_path: Path) -> None:
    rows = conversations(24)
    for i, r in enumerate(rows):
        r["teacher"] = ["t-gemma", "t-smol", None][i % 3]
    cfg = chat_config(tmp_path, rows=[{k: v for k, v in r.items() if v is not None} for r in rows],
                      teachers=[TEACHER, SAME], combine={"multi": "route"})
    tp = _parts(cfg)
    try:
        ids = np.arange(3)
        batch = tp.builder.build(0, ids, [tp.corpus.train[i] for i in ids])
        assert batch.teachers[1].student_chunk is None  # the student's tokenizer and template: per position
        for i, t in enumerate(("t-gemma", "t-smol")):
            named = [c.teacher for c in (tp.corpus.train[j] for j in ids)]
            assert batch.route[i].tolist() == [n in (None, t) for n in named]
    finally:
        tp.backend.close()
    out = tmp_path / "run"
    assert distill("--config", cfg, "--out", out) == 0
    w = [r["teacher_weights"] for r in metrics(out)]
    assert all(abs(sum(x.values()) - 1) < 1e-6 for x in w)


def test_chat_cache_refused_for_text_and_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_distill_engine import fast_config

    cache = tmp_path / "cache"
    assert distill("--config", chat_config(tmp_path), "--cache-teachers", cache, "--out", tmp_path / "a") == 0
    text = fast_config(tmp_path, teachers=[{**TEACHER, "chat_template": None}],
                       student={"model": "random", "tokenizer": "smollm2", "arch": TINY_ARCH})
    code = distill("--config", text, "--cache-teachers", cache, "--out", tmp_path / "b")
    err = capsys.readouterr().err
    assert code == 2 and "data_format=chat" in err and "data_format=text" in err, err


def test_template_missing_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = chat_config(tmp_path, teachers=[{**TEACHER, "chat_template": None}])
    code = distill("--config", cfg, "--out", tmp_path / "r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "set teachers.0.chat_template" in err, err


def test_strict_refuses_the_bad_row_by_number(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = conversations(10)
    rows.insert(4, {"messages": [{"role": "user", "content": "no answer here"}]})
    cfg = chat_config(tmp_path, rows=rows)
    assert distill("--config", cfg, "data.strict=true", "--out", tmp_path / "r") == 2
    assert "chat.jsonl: row 5: the row has no assistant turn" in capsys.readouterr().err
    assert distill("--config", cfg, "--out", tmp_path / "ok") == 0  # not strict: counted and skipped


def test_chat_run_resumes_exactly_after_sigkill(tmp_path: Path) -> None:
    from tests.test_distill_engine import kill_at_checkpoint

    cfg = chat_config(tmp_path, steps=8, checkpoint={"every": 2, "keep_last": 2})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert distill("--config", cfg, "--out", whole) == 0
    kill_at_checkpoint(cfg, killed, 4)
    assert distill("--resume", killed) == 0
    assert [r["loss"] for r in metrics(killed)] == [r["loss"] for r in metrics(whole)]  # exact


def test_chat_on_ray_is_bitwise_local(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    local, remote = tmp_path / "local", tmp_path / "ray"
    cfg = chat_config(tmp_path)
    assert distill("--config", cfg, "--out", local) == 0
    assert distill("--config", cfg, "backend=ray", "ray.num_cpus=4", "--out", remote) == 0
    for key in ("loss", "ce", "kd", "accuracy", "agreement"):
        assert [r[key] for r in metrics(local)] == [r[key] for r in metrics(remote)], key
