"""`xtalign distill` end to end on tiny random-init models over real zoo tokenizers (CPU, seconds each)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xtalign.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY_ARCH = {"family": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1,
             "intermediate_size": 64, "max_position": 128}


def fast_config(tmp: Path, name: str = "run.yaml", **extra: object) -> Path:
    """A seconds-long run: mistral-v1 student <- gpt2 teacher (P-KL), 32 tokens per row."""
    cfg = {
        "student": {"model": "random", "tokenizer": "mistral-v1", "arch": TINY_ARCH},
        "teachers": [{"name": "t-gpt2", "model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "loss": "p-kl",
                      "top_k": 16, "head_slice": 32}],
        "data": {"train": "botchan", "pack_chars": 160, "heldout_fraction": 0.02},
        "optim": {"lr": 3e-3}, "schedule": {"kind": "constant"},
        "eval": {"every": 0, "max_batches": 1}, "checkpoint": {"every": 0, "keep_last": 2},
        "steps": 3, "batch_size": 2, "seq_len": 32, "seed": 0, "device": "cpu", "threads": 1,
    }
    cfg.update(extra)
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def evals(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]


def distill(*args: object) -> int:
    return main(["distill", *map(str, args)])


def test_tiny_recipe_end_to_end(tmp_path: Path) -> None:
    """The shipped tiny recipe: every output the issue names, and a student transformers can load."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny"
    assert distill("--config", ROOT / "distill/configs/tiny-cpu.yaml", "--out", out) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["steps"] == 40 and cfg["teachers"][0]["loss"] == "p-kl"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 41))
    for key in ("tokens", "loss", "kd", "ce", "loss_scale", "lr", "grad_norm", "accuracy", "agreement",
                "tokens_per_s", "time", "peak_memory_mb"):
        assert key in rows[-1], key
    assert set(rows[-1]["time"]) == {"data", "teacher", "transfer", "student"}
    ev = evals(out)
    assert [e["model"] for e in ev[:2]] == ["teacher:tiny-gpt2", "student"]
    assert [e["step"] for e in ev if e["model"] == "student"] == [0, 20, 40]
    assert all(e["bits_per_byte"] > 0 and e["uncovered_bytes"] == 0 for e in ev)
    assert ev[-1]["bits_per_byte"] < ev[1]["bits_per_byte"]  # 40 steps of training help
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]
    model = AutoModelForCausalLM.from_pretrained(out / "export")
    assert model.get_input_embeddings().num_embeddings == 32000
    losses = json.loads((out / "losses.json").read_text())
    assert losses["tiny-gpt2"]["loss"] == "p-kl"


def test_loss_falls_on_repetitive_text(tmp_path: Path) -> None:
    text = tmp_path / "rep.txt"
    text.write_text("\n\n".join(["The cat sat on the mat and the dog sat on the log."] * 60))
    cfg = fast_config(tmp_path, steps=30, data={"train": str(text), "pack_chars": 120, "heldout_fraction": 0.05})
    out = tmp_path / "rep"
    assert distill("--config", cfg, "--out", out) == 0
    rows = metrics(out)
    assert rows[-1]["ce"] < 0.5 * rows[0]["ce"], (rows[0]["ce"], rows[-1]["ce"])
    assert rows[-1]["loss"] < rows[0]["loss"]


@pytest.mark.parametrize("loss, extra", [
    ("p-kl", {"aggregation": "chain"}), ("p-kl", {"subset": "per_chunk"}), ("h-kl", {}), ("gold", {}), ("uld", {}),
    ("auto", {}),
])
def test_every_cross_tokenizer_loss_runs(tmp_path: Path, loss: str, extra: dict) -> None:
    teacher = {"name": "t", "model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "loss": loss, "top_k": 16,
               **extra}
    cfg = fast_config(tmp_path, teachers=[teacher], steps=2)
    out = tmp_path / loss
    assert distill("--config", cfg, "--out", out) == 0
    rows = metrics(out)
    assert len(rows) == 2 and all(r["kd"]["t"] == r["kd"]["t"] for r in rows)  # finite, not nan
    chosen = json.loads((out / "losses.json").read_text())["t"]
    if loss == "auto":  # mistral-v1 -> gpt2: the audit's rule, recorded with its reason
        assert chosen["loss"] in ("p-kl", "h-kl") and "xtalign audit" in chosen["reason"]
    else:
        assert chosen["loss"] == loss


def test_multi_teacher_cross_and_same_vocab(tmp_path: Path) -> None:
    teachers = [
        {"name": "cross", "model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "loss": "p-kl", "top_k": 16,
         "weight": 0.8},
        {"name": "same", "model": "random", "tokenizer": "mistral-v1", "arch": TINY_ARCH, "loss": "auto",
         "top_k": 16, "weight": 0.2},
    ]
    for mode in ("sum", "dynamic"):
        cfg = fast_config(tmp_path, teachers=teachers, steps=2, combine={"multi": mode})
        out = tmp_path / mode
        assert distill("--config", cfg, "--out", out) == 0
        last = metrics(out)[-1]
        assert set(last["kd"]) == {"cross", "same"}
        weights = last["teacher_weights"]
        if mode == "sum":
            assert weights == pytest.approx({"cross": 0.8, "same": 0.2})
        else:
            assert sum(weights.values()) == pytest.approx(1.0) and weights["cross"] != 0.8
        assert json.loads((out / "losses.json").read_text())["same"]["loss"] == "same-vocab"
        assert 0 <= last["agreement"]["same"] <= 1
        names = [e["model"] for e in evals(out)]
        assert names[:2] == ["teacher:cross", "teacher:same"]


def test_learnable_projection_changes_and_exports(tmp_path: Path) -> None:
    from xtalign.io import load_projection
    from xtalign.zoo import load_tokenizer

    teacher = {"name": "t", "model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "loss": "p-kl", "top_k": 16,
               "projection": {"learnable": True, "lr": 0.5}}
    cfg = fast_config(tmp_path, teachers=[teacher], steps=3)
    out = tmp_path / "learn"
    assert distill("--config", cfg, "--out", out) == 0
    path = out / "export" / "projection-t.safetensors"
    learned = load_projection(path, student=load_tokenizer("mistral-v1"), teacher=load_tokenizer("gpt2"))
    from xtalign.projection import build_projection

    fixed = build_projection(load_tokenizer("mistral-v1"), load_tokenizer("gpt2"))
    multi = (fixed.weights > 0).sum(1) > 1  # rows with a choice to learn
    changed = abs(learned.weights - fixed.weights).max(1) > 1e-4
    assert changed[multi].any() and not changed[~multi].any()
    assert learned.config.get("learned") is True
    assert main(["inspect", str(path), "--json"]) == 0


def test_teacher_cache_round_trip_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path)
    cache = tmp_path / "cache"
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["cache-teachers", "--config", str(cfg), "--out", str(cache)]) == 0
    assert (cache / "t-gpt2" / "manifest.json").is_file()
    assert distill("--config", cfg, "--out", first) == 0  # runs the teacher
    assert distill("--config", cfg, "--cache-teachers", cache, "--out", second) == 0  # reads the cache
    a, b = metrics(first), metrics(second)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # bitwise-identical teacher inputs
    assert [r["kd"] for r in a] == [r["kd"] for r in b]
    capsys.readouterr()
    code = distill("--config", cfg, "--cache-teachers", cache, "teachers.0.top_k=8", "--out", tmp_path / "bad")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "k=16" in err and "k=8" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_cached_run_never_loads_the_teacher(tmp_path: Path) -> None:
    from xtalign.distill.config import load_config
    from xtalign.distill.engine import Loop, Session, fill_cache

    cfg_path = fast_config(tmp_path, steps=2)
    cache = tmp_path / "cache"
    fill_cache(load_config(cfg_path), cache)
    cfg = load_config(cfg_path, [f"cache_teachers={cache}"])
    session = Session(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    Loop(session).run()
    src = session.sources[0]
    assert not src.loaded and src.forwards == 0 and src.cache_hits == 2


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "run ended before the checkpoint appeared"
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)


def test_sigkill_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path, steps=8, checkpoint={"every": 2, "keep_last": 2}, eval={"every": 4, "max_batches": 1})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert distill("--config", cfg, "--out", whole) == 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xtalign.cli.main", "distill", "--config", str(cfg), "--out",
                             str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(killed / "checkpoints" / "step-00000004" / "COMPLETE", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not (killed / "summary.json").exists()
    assert distill("--resume", killed) == 0
    a, b = metrics(whole), metrics(killed)
    assert [r["step"] for r in b] == list(range(1, 9))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]  # exact, not within a tolerance
    assert [e["bits_per_byte"] for e in evals(whole)] == [e["bits_per_byte"] for e in evals(killed)]


def test_resume_can_extend_but_not_change(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path, steps=2)
    out = tmp_path / "run"
    assert distill("--config", cfg, "--out", out) == 0
    assert distill("--resume", out, "steps=4") == 0
    assert [r["step"] for r in metrics(out)] == [1, 2, 3, 4]
    capsys.readouterr()
    assert distill("--resume", out, "steps=6", "optim.lr=1") == 2
    assert "optim.lr" in capsys.readouterr().err


def test_eval_hand_computed_bits_per_byte(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A model whose logits are all 0 gives every token log(V) nats: bits/byte = tokens·log2(V) / bytes."""
    import math

    import torch

    from xtalign.distill.config import ArchConfig
    from xtalign.distill.export import export_hf
    from xtalign.distill.models import load_model
    from xtalign.zoo import load_tokenizer

    loaded = load_model(model="random", tokenizer="gpt2", arch=ArchConfig(**TINY_ARCH))
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight.zero_()
    folder = export_hf(loaded.model, loaded.tokenizer, tmp_path / "zero")
    text = "Bits per byte, 2025: exact.\n\nA second document."
    data = tmp_path / "t.txt"
    data.write_text(text)
    assert main(["eval", "--model", str(folder), "--tokenizer", "gpt2", "--data", str(data), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    tok = load_tokenizer("gpt2")
    docs = text.split("\n\n")
    n_tokens = sum(len(tok.encode(d)) for d in docs)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert res["bytes"] == n_bytes and res["tokens"] == n_tokens
    assert res["bits_per_byte"] == pytest.approx(n_tokens * math.log2(50257) / n_bytes, rel=1e-9)
