"""The engine's structure: import layering, per-worker devices, one stats merge, config errors that name the
key, overrides anywhere on the line, and the metrics sinks (JSONL, TensorBoard, W&B offline)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.test_distill_engine import TINY_ARCH, distill, fast_config, metrics
from xtalign.config import ConfigError
from xtalign.distill.devices import WorkerDevice, resolve_worker_device
from xtalign.distill.protocols import StepStats, merge_stats

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "xtalign"


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at any depth), as dotted names; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here.split(".")[: -node.level] + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_only_the_cli_imports_the_cli_and_only_distill_ray_imports_ray() -> None:
    for path in PKG.rglob("*.py"):
        mod, deps = _module(path), _imports(path)
        if not mod.startswith("xtalign.cli"):
            assert not [d for d in deps if d.startswith("xtalign.cli")], f"{mod} imports the CLI"
        if not mod.startswith("xtalign.distill.ray"):
            assert not [d for d in deps if d == "ray" or d.startswith("ray.")], f"{mod} imports ray"


def test_engine_modules_have_no_import_cycles() -> None:
    """Module-level imports among xtalign.distill's modules form a DAG (no module needs itself back)."""
    files = {_module(p): p for p in (PKG / "distill").rglob("*.py")}
    graph = {}
    for mod, path in files.items():
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.Import | ast.ImportFrom)]
        deps = set()
        for node in top:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] + [
                f"{node.module}.{a.name}" for a in node.names]
            deps |= {n for n in names if n in files and n != mod}
        graph[mod] = deps
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(trail + [node, dep])}")
            if dep not in state:
                visit(dep, trail + [node])
        state[node] = 2

    for mod in graph:
        if mod not in state:
            visit(mod, [])


def test_errors_module_imports_neither_torch_nor_ray() -> None:
    import subprocess
    import sys

    code = ("import sys, xtalign.distill.errors, xtalign.distill.devices; "
            "print('torch' in sys.modules, 'ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == [
        "False", "False"]


def test_every_file_of_the_engine_stays_readable() -> None:
    long = [(p.relative_to(ROOT), n) for p in (PKG / "distill").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 400]
    assert not long, long


# --- devices: one rule, applied by each worker where it runs --------------------------------------------


def test_worker_device_rule() -> None:
    assert resolve_worker_device("auto", "auto", cuda_available=False) == WorkerDevice("cpu", None)
    assert resolve_worker_device("auto", "auto", cuda_available=True) == WorkerDevice("cuda", "bfloat16")
    assert resolve_worker_device("cuda", "fp32", cuda_available=True) == WorkerDevice("cuda", None)
    assert resolve_worker_device("cpu", "bf16", cuda_available=True) == WorkerDevice("cpu", "bfloat16")
    with pytest.raises(ConfigError, match="teacher t sees no CUDA GPU"):
        resolve_worker_device("cuda", "auto", cuda_available=False, who="teacher t")


# --- one merge of per-rank / per-micro-batch stats ----------------------------------------------------


def test_merge_takes_ratios_of_sums_and_means_of_losses() -> None:
    a = StepStats(loss=2.0, ce=1.0, kd=(1.0,), kd_total=1.0, loss_scale=1.0, teacher_weights=(1.0,), acc_hits=1,
                  acc_n=10, agree_hits=(3,), agree_n=(4,), grad_norm=0.5, lr=0.1)
    b = StepStats(loss=4.0, ce=3.0, kd=(3.0,), kd_total=3.0, loss_scale=1.0, teacher_weights=(1.0,), acc_hits=9,
                  acc_n=10, agree_hits=(0,), agree_n=(1,), grad_norm=0.7, lr=0.1, peak_memory_mb=9.0)
    m = merge_stats([a, b])
    assert (m.loss, m.ce, m.kd, m.kd_total) == (3.0, 2.0, (2.0,), 2.0)
    assert (m.acc_hits, m.acc_n, m.accuracy) == (10, 20, 0.5)
    assert m.agreement == (3 / 5,)  # ratio of sums, not the mean of 3/4 and 0/1
    assert (m.grad_norm, m.peak_memory_mb) == (0.5, 9.0)
    assert merge_stats([a, b], grad_norm=1.25).grad_norm == 1.25


# --- config errors name the key --------------------------------------------------------------------------


@pytest.mark.parametrize("override, needle", [
    ("teachers.0.temperature=abc", "teachers.0.temperature='abc' is not a number"),
    ("teachers.0.model=gemma-9b", "teachers.0.model='gemma-9b' is not a zoo model (closest: gemma3-270m"),
    ("student.num_gpus=null", "student.num_gpus must be a number; got null"),
    ("seq_len=4096", "seq_len=4096 exceeds student.arch.max_position=128"),
    ("teachers.0.top_k=100000", "teachers.0.top_k=100000 exceeds teacher t-gpt2's vocabulary (50,257 embedding rows)"),
    ("teachers.0.arch.num_heads=3", "teachers.0.arch.hidden_size (32) must be a multiple of teachers.0.arch.num_heads"),
    ("teachers.3.model=random", "index 3 is past the end of the list"),
])
def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str,
                                    needle: str) -> None:
    code = distill("--config", fast_config(tmp_path), override, "--out", tmp_path / "r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "r").exists()


def test_arch_on_a_real_model_says_what_to_drop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = distill("--config", fast_config(tmp_path), "teachers.0.model=smollm2-135m", "--out", tmp_path / "r")
    err = capsys.readouterr().err
    assert code == 2 and "teachers.0.arch only applies to teachers.0.model=random" in err and "arch=null" in err


def test_overrides_anywhere_on_the_line(tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert distill("--config", fast_config(tmp_path), "steps=1", "--out", out, "teachers.0.top_k=4",
                   "--dry-run") == 0
    assert distill("--config", fast_config(tmp_path), "steps=1", "--out", out, "seed=3") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["steps"], cfg["seed"]) == (1, 3)


# --- metrics sinks ------------------------------------------------------------------------------------------


def test_tensorboard_and_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    out = tmp_path / "r"
    assert distill("--config", fast_config(tmp_path, steps=2), 'log.to=["tensorboard","wandb"]', "--out", out) == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "tensorboard").glob("events.*")))).Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(r["step"], pytest.approx(r["loss"])) for r in metrics(out)]
    assert "eval/student/bits_per_byte" in events.Tags()["scalars"]
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_missing_sink_package_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_wandb(name: str, *args: object, **kwargs: object) -> object:
        if name == "wandb":
            raise ImportError("no wandb here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    code = distill("--config", fast_config(tmp_path, steps=1), 'log.to=["wandb"]', "--out", tmp_path / "r")
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'xtalign[wandb]'" in err and len(err.splitlines()) == 1, err


def test_random_teacher_arch_checked_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = {**TINY_ARCH, "max_position": 16}
    code = distill("--config", fast_config(tmp_path), f"teachers.0.arch={json.dumps(small)}", "--out", tmp_path / "r")
    assert code == 2 and "exceeds teachers.0.arch.max_position=16" in capsys.readouterr().err
