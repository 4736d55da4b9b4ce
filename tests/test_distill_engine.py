"""`xtalign distill` end to end on tiny random-init models over real zoo tokenizers (CPU, seconds each)."""

from __future__ import annotations

import json
import math
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
    assert set(rows[-1]["time"]) == {"data", "teacher", "student", "teacher_wait"}
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
    assert len(rows) == 2 and all(math.isfinite(r["kd"]["t"]) for r in rows)  # (GOLD's common-set term may be < 0)
    chosen = json.loads((out / "losses.json").read_text())["t"]
    if loss == "auto":  # mistral-v1 -> gpt2: numerals are not shared (0/100, 0/1000 aligned), so P-KL
        assert chosen["loss"] == "p-kl"
        assert chosen["reason"].startswith("xtalign audit mistral-v1 -> gpt2: numerals, the paper's decisive class")
        assert "0/100 two-digit and 0/1000 three-digit" in chosen["reason"]
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
        assert json.loads((out / "losses.json").read_text())["same"]["loss"] == "same-vocab"
        hits, n = last["counts"]["agreement"]["same"]
        assert last["agreement"]["same"] == hits / n
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
    from xtalign.distill.build import build_run
    from xtalign.distill.config import load_config
    from xtalign.distill.engine import fill_cache
    from xtalign.distill.loop import Loop
    from xtalign.distill.metrics import Sinks

    cfg_path = fast_config(tmp_path, steps=2)
    cache = tmp_path / "cache"
    fill_cache(load_config(cfg_path), cache)
    cfg = load_config(cfg_path, [f"cache_teachers={cache}"])
    parts = build_run(cfg, tmp_path / "run")
    (tmp_path / "run").mkdir()
    Loop(parts, tmp_path / "run", Sinks(tmp_path / "run", [])).run()
    src = parts.sources[0]
    assert not src.compute.loaded and src.forwards == 0 and src.cache_hits == 2


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, "run ended before the checkpoint appeared"
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.05)


def kill_at_checkpoint(cfg: Path, out: Path, step: int) -> None:
    """Run `distill --config cfg --out out` in a child process and SIGKILL it once checkpoint `step` is complete."""
    proc = subprocess.Popen([sys.executable, "-m", "xtalign.cli.main", "distill", "--config", str(cfg), "--out",
                             str(out)], env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait_for(out / "checkpoints" / f"step-{step:08d}" / "COMPLETE", proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)


def test_sigkill_and_resume_matches_uninterrupted(tmp_path: Path) -> None:
    cfg = fast_config(tmp_path, steps=8, checkpoint={"every": 2, "keep_last": 2}, eval={"every": 4, "max_batches": 1})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert distill("--config", cfg, "--out", whole) == 0
    kill_at_checkpoint(cfg, killed, 4)
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
    from xtalign.distill.models.load import load_model
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


def test_dynamic_weights_accuracy_and_agreement_by_hand(tmp_path: Path) -> None:
    """One step's figures against a computation by hand on the same first batch and the same initial model:
    dynamic weights = softmax(alpha * mean teacher target log-prob), accuracy = argmax hits over counted
    targets, same-vocabulary agreement = the student's argmax equal to the teacher's top-1 over counted targets."""
    import numpy as np
    import torch

    from xtalign.distill.build import build_run
    from xtalign.distill.config import load_config
    from xtalign.distill.data.batch import IGNORE
    from xtalign.distill.data.pipeline import DataPipeline

    teachers = [{"name": "cross", "model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "loss": "p-kl",
                 "top_k": 16}, {"name": "same", "model": "random", "tokenizer": "mistral-v1", "arch": TINY_ARCH,
                                "loss": "same-vocab", "top_k": 16}]
    cfg = load_config(fast_config(tmp_path, teachers=teachers, combine={"multi": "dynamic", "alpha": 2.0}))
    parts = build_run(cfg)
    pipe = DataPipeline(parts.corpus, parts.builder, batch_size=cfg.batch_size, seed=cfg.seed)
    batch = next(pipe)
    pipe.close()
    answers = [src.submit(batch) for src in parts.sources]
    outs = [a.topk() for a in answers]
    model = parts.student.model  # type: ignore[union-attr]
    ids = torch.from_numpy(batch.student_ids)
    with torch.no_grad():
        top = model(input_ids=ids.clamp_min(0), attention_mask=(ids >= 0).long()).logits.argmax(-1)  # [B, Ts]
    targets = torch.from_numpy(batch.student_targets)
    keep = targets != IGNORE
    scores = []
    for side, out in zip(batch.teachers, outs, strict=True):
        t_keep = torch.from_numpy(side.targets) != IGNORE
        scores.append(float(out.target_logprob[t_keep].mean()))
    want = torch.softmax(2.0 * torch.tensor(scores), 0).tolist()
    same_top = outs[1].ids[..., 0].long()
    stats = parts.student.train_step([(batch, answers)])  # type: ignore[union-attr]
    assert list(stats.teacher_weights) == pytest.approx(want, rel=1e-6)
    assert (stats.acc_hits, stats.acc_n) == (int(((top == targets) & keep).sum()), int(keep.sum()))
    assert (stats.agree_hits[1], stats.agree_n[1]) == (int(((top == same_top) & keep).sum()), int(keep.sum()))
    parts.close()
    assert np.isfinite(stats.loss)


def test_kd_moves_the_student_towards_what_only_the_teacher_prefers(tmp_path: Path) -> None:
    """A teacher that puts nearly all its mass on one token the data never shows (' zebra'): a few steps of KD
    raise the student's probability of it; the same steps of CE alone do not."""
    import torch

    from xtalign.distill.build import build_run
    from xtalign.distill.config import load_config
    from xtalign.distill.data.pipeline import DataPipeline
    from xtalign.losses import TeacherTopK

    text = tmp_path / "text.txt"
    text.write_text("\n\n".join(["The cat sat on the mat and the dog sat on the log."] * 40))
    teacher = {"name": "t", "model": "random", "tokenizer": "mistral-v1", "arch": TINY_ARCH, "loss": "same-vocab",
               "top_k": 1}
    probs = {}
    for arm, combine in (("kd", {"scaling": "fixed", "kd_weight": 1.0, "ce_weight": 1.0}),
                         ("ce", {"scaling": "fixed", "kd_weight": 0.0, "ce_weight": 1.0})):
        cfg = load_config(fast_config(tmp_path, f"{arm}.yaml", teachers=[teacher], combine=combine, steps=12,
                                      optim={"lr": 1e-2}, data={"train": str(text), "pack_chars": 120,
                                                                "heldout_fraction": 0.05}))
        parts = build_run(cfg)
        zebra = parts.student_tok.encode(" zebra")[0]
        pipe = DataPipeline(parts.corpus, parts.builder, batch_size=cfg.batch_size, seed=cfg.seed)
        for _ in range(12):
            batch = next(pipe)
            shape = batch.teachers[0].ids.shape
            forced = TeacherTopK(logits=torch.full((*shape, 1), 30.0), ids=torch.full((*shape, 1), zebra),
                                 logsumexp=torch.full(shape, 30.0), vocab_size=parts.teacher_rows[0],
                                 target_logprob=torch.zeros(shape))

            class _Forced:
                nbytes = 0

                def topk(self, out: TeacherTopK = forced) -> TeacherTopK:
                    return out

            parts.student.train_step([(batch, [_Forced()])])  # type: ignore[union-attr]
        pipe.close()
        model = parts.student.model  # type: ignore[union-attr]
        ids = torch.from_numpy(batch.student_ids).clamp_min(0)
        with torch.no_grad():
            p = torch.softmax(model(input_ids=ids).logits.float(), -1)[..., zebra].mean()
        probs[arm] = float(p)
        parts.close()
    assert probs["kd"] > 0.01 and probs["kd"] > 100 * probs["ce"], probs  # seen: 0.042 vs 2.2e-05
