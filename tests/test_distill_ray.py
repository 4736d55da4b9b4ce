"""`backend: ray` on a local CPU cluster: same results as `local`, async, data-parallel ranks, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_distill_engine import TINY_ARCH, distill, fast_config, metrics
from xtalign.cli.main import main
from xtalign.distill.ray.placement import PlacementError, bundles, check_feasible

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module (runs reuse it instead of starting their own)."""
    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def ray_config(tmp: Path, **extra: object) -> Path:
    base = {"backend": "ray", "ray": {"address": None}}
    base.update(extra)
    return fast_config(tmp, "ray.yaml", **base)


def test_check_feasible_names_what_is_missing() -> None:
    from xtalign.distill.config import config_from_dict

    cfg = config_from_dict({"student": {"model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "num_workers": 2},
                            "teachers": [{"model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "name": "t",
                                          "num_gpus": 0.5, "resources": {"teacher-node": 1}}],
                            "backend": "ray", "batch_size": 2, "seq_len": 32})
    wanted = bundles(cfg)
    assert [w for w, _ in wanted] == ["teacher t", "student rank 0", "student rank 1"]
    assert wanted[0][1] == {"CPU": 1.0, "GPU": 0.5, "teacher-node": 1.0}
    with pytest.raises(PlacementError, match=r"needs 0.5 GPU \(the cluster has 0\), 1 teacher-node"):
        check_feasible(wanted, [{"CPU": 8.0}])
    with pytest.raises(PlacementError, match="no single node .* teacher t"):
        check_feasible(wanted, [{"CPU": 8.0}, {"GPU": 1.0}, {"teacher-node": 1.0}])
    check_feasible(wanted, [{"CPU": 8.0}, {"CPU": 1.0, "GPU": 1.0, "teacher-node": 1.0}])


def test_sync_ray_is_bitwise_local(tmp_path: Path, cluster: None) -> None:
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert distill("--config", fast_config(tmp_path), "--out", local) == 0
    assert distill("--config", ray_config(tmp_path), "--out", remote) == 0
    a, b = metrics(local), metrics(remote)
    for key in ("loss", "ce", "kd", "grad_norm", "accuracy", "agreement"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    assert all(r["teacher_bytes"] > 0 for r in b)
    workers = json.loads((remote / "workers.json").read_text())
    assert sorted(w["label"] for w in workers) == ["rank 0", "t-gpt2"]
    assert (remote / "export" / "model.safetensors").is_file()


def test_async_teachers_same_results(tmp_path: Path, cluster: None) -> None:
    sync, asyn = tmp_path / "sync", tmp_path / "async"
    assert distill("--config", ray_config(tmp_path, steps=4), "--out", sync) == 0
    assert distill("--config", ray_config(tmp_path, steps=4), "ray.async=true", "--out", asyn) == 0
    assert [r["loss"] for r in metrics(sync)] == [r["loss"] for r in metrics(asyn)]
    assert json.loads((asyn / "config.json").read_text())["ray"]["async"] is True


def test_teacher_replicas_split_rows(tmp_path: Path, cluster: None) -> None:
    """Two replicas of a teacher answer two halves of each batch: the same answers up to fp32 rounding."""
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = ray_config(tmp_path, steps=2, batch_size=4)
    assert distill("--config", cfg, "--out", one) == 0
    assert distill("--config", cfg, "teachers.0.num_replicas=2", "--out", two) == 0
    for ra, rb in zip(metrics(one), metrics(two), strict=True):
        assert rb["kd"]["t-gpt2"] == pytest.approx(ra["kd"]["t-gpt2"], rel=1e-4)
    labels = [w["label"] for w in json.loads((two / "workers.json").read_text())]
    assert sorted(labels) == ["rank 0", "t-gpt2 replica 0", "t-gpt2 replica 1"]


def test_two_ranks_match_one_rank_at_the_same_global_batch(tmp_path: Path, cluster: None) -> None:
    """2 gloo ranks × 2 rows against 1 rank × 4 rows: the same data; per-rank means of the losses differ
    from the global mean only by how tokens split between the ranks."""
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = ray_config(tmp_path, steps=4, batch_size=4)
    assert distill("--config", cfg, "--out", one) == 0
    assert distill("--config", cfg, "student.num_workers=2", "--out", two) == 0
    a, b = metrics(one), metrics(two)
    assert a[0]["loss"] == pytest.approx(b[0]["loss"], rel=2e-2)
    for ra, rb in zip(a, b, strict=True):
        assert rb["ce"] == pytest.approx(ra["ce"], rel=2e-2)
        assert rb["kd"]["t-gpt2"] == pytest.approx(ra["kd"]["t-gpt2"], rel=5e-2)
    assert len(json.loads((two / "workers.json").read_text())) == 3
    # resumable with another rank count: continue the 2-rank run on 1 rank
    assert distill("--resume", two, "steps=6", "student.num_workers=1") == 0
    assert [r["step"] for r in metrics(two)] == [1, 2, 3, 4, 5, 6]


def test_fsdp_ranks_match_ddp_and_resume_unsharded(tmp_path: Path, cluster: None) -> None:
    """FSDP2 over 2 gloo ranks: the same step as DDP's (up to reduction order); its rank-0 checkpoint holds
    the full model, so it resumes on 1 rank, and the export is a whole model."""
    from transformers import AutoModelForCausalLM

    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    cfg = ray_config(tmp_path, steps=3, batch_size=4, checkpoint={"every": 2, "keep_last": 2})
    assert distill("--config", cfg, "student.num_workers=2", "--out", ddp) == 0
    assert distill("--config", cfg, "student.num_workers=2", "student.sharding=fsdp", "--out", fsdp) == 0
    for ra, rb in zip(metrics(ddp), metrics(fsdp), strict=True):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-4)
        assert rb["grad_norm"] == pytest.approx(ra["grad_norm"], rel=1e-3)
    model = AutoModelForCausalLM.from_pretrained(fsdp / "export")
    assert model.get_input_embeddings().num_embeddings == 32000
    assert distill("--resume", fsdp, "steps=4", "student.num_workers=1", "student.sharding=ddp") == 0
    assert [r["step"] for r in metrics(fsdp)] == [1, 2, 3, 4]


def test_placement_that_cannot_fit_fails_at_once(tmp_path: Path, cluster: None,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    t0 = time.time()
    code = main(["distill", "--config", str(ray_config(tmp_path)), "teachers.0.num_gpus=1", "--out",
                 str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "1 GPU (the cluster has 0)" in err and len(err.splitlines()) == 1
    assert time.time() - t0 < 60


def _foreground() -> None:
    """The child gets Ctrl-C's default meaning: a test process (run in the background, or after a library set
    SIGINT to be ignored) would otherwise pass its ignored SIGINT on, and Python keeps it ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(cfg: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "xtalign.cli.main", "distill", "--config", str(cfg), "--out",
                             str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_foreground)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} did not appear"
        time.sleep(0.02)


def test_killed_teacher_actor_stops_the_run_and_resume_matches(tmp_path: Path, cluster: None) -> None:
    cfg = ray_config(tmp_path, steps=30, checkpoint={"every": 4, "keep_last": 2}, ray={"num_cpus": 4})
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert distill("--config", fast_config(tmp_path, steps=30, checkpoint={"every": 4, "keep_last": 2}),
                   "--out", whole) == 0
    proc = _run(cfg, killed)
    try:
        _wait_for(killed / "checkpoints" / "step-00000004" / "COMPLETE", proc)
        teacher = next(w for w in json.loads((killed / "workers.json").read_text()) if w["kind"] == "teacher")
        os.kill(teacher["pid"], signal.SIGKILL)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1 and time.time() - t0 < 30
    line = err.strip().splitlines()[-1]
    assert "teacher actor t-gpt2 on node" in line and f"pid {teacher['pid']}" in line and "--resume" in line
    assert distill("--resume", killed) == 0
    assert [r["loss"] for r in metrics(killed)] == [r["loss"] for r in metrics(whole)]


def test_ctrl_c_leaves_a_resumable_run(tmp_path: Path, cluster: None) -> None:
    # long enough that the run cannot end before the signal lands (a 30-step run once did, on an idle machine)
    cfg = ray_config(tmp_path, steps=400, checkpoint={"every": 4, "keep_last": 2}, ray={"num_cpus": 4})
    out = tmp_path / "run"
    proc = _run(cfg, out)
    try:
        _wait_for(out / "checkpoints" / "step-00000004" / "COMPLETE", proc)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    pids = [w["pid"] for w in json.loads((out / "workers.json").read_text())]
    time.sleep(1)
    assert not [p for p in pids if _alive(p)], "actors outlived the interrupted run"
    stopped = metrics(out)[-1]["step"]
    assert 4 <= stopped < 400
    resumed_at = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert distill("--resume", out, f"steps={resumed_at + 3}") == 0
    assert metrics(out)[-1]["step"] == resumed_at + 3


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("zombie") < 0


# --- the redesign: workers own their devices; the driver holds no tensor ---------------------------------


def test_driver_that_cannot_hold_tensors(tmp_path: Path, cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """`backend: ray` with every tensor move on the driver made to fail (the actors, in their own processes,
    are untouched): the loop only relays numpy batches and object refs, so the run goes through. (Before the
    redesign the loop moved every teacher output to the driver's device and failed at step 1.)"""
    import torch

    def refuse(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        raise AssertionError(f"the driver moved a tensor of shape {tuple(self.shape)}")

    monkeypatch.setattr(torch.Tensor, "to", refuse)
    monkeypatch.setattr(torch.Tensor, "cuda", refuse)
    out = tmp_path / "run"
    assert distill("--config", ray_config(tmp_path, steps=2), "student.num_workers=2", "--out", out) == 0
    assert [r["step"] for r in metrics(out)] == [1, 2] and all(r["teacher_bytes"] > 0 for r in metrics(out))


def test_cuda_is_resolved_per_actor_not_on_the_driver(tmp_path: Path, cluster: None,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """`device: cuda` on a head node without CUDA is not refused by the driver: each actor would resolve it
    from the GPUs it reserves, so the run asks the cluster for them (and this CPU cluster has none)."""
    capsys.readouterr()
    cfg = ray_config(tmp_path, device="cuda")
    code = distill("--config", cfg, "student.num_gpus=1", "teachers.0.num_gpus=0.5", "--out", tmp_path / "r")
    err = capsys.readouterr().err
    assert code == 2 and "needs 1.5 GPU (the cluster has 0)" in err and "no CUDA GPU" not in err, err
    code = distill("--config", cfg, "--out", tmp_path / "r2")  # cuda for actors that reserve no GPU
    assert code == 2 and "needs student.num_gpus > 0" in capsys.readouterr().err


def test_one_and_two_ranks_count_the_same(tmp_path: Path, cluster: None) -> None:
    """Accuracy and agreement are ratios of summed counts: 1 rank × 4 rows and 2 ranks × 2 rows count exactly
    the same hits on the same first batch (the model before any update)."""
    one, two = tmp_path / "one", tmp_path / "two"
    cfg = ray_config(tmp_path, steps=1, batch_size=4)
    assert distill("--config", cfg, "--out", one) == 0
    assert distill("--config", cfg, "student.num_workers=2", "--out", two) == 0
    a, b = metrics(one)[0], metrics(two)[0]
    assert a["counts"] == b["counts"] and a["counts"]["accuracy"][1] > 0
    assert (a["accuracy"], a["agreement"]) == (b["accuracy"], b["agreement"])


def _cache_tensors(root: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    out: dict[str, object] = {}
    for shard in sorted((root / "t-gpt2").glob("shard-*.safetensors")):
        out.update(load_file(str(shard)))
    return out


def test_cache_teachers_on_ray_writes_the_local_cache(tmp_path: Path, cluster: None) -> None:
    """`cache-teachers` honours `backend: ray` (the teachers' actors fill it) and writes, bitwise, what the
    local backend writes; a run then reads it without starting a teacher."""
    import torch

    cfg = fast_config(tmp_path, steps=3)
    assert main(["cache-teachers", "--config", str(cfg), "--out", str(tmp_path / "local")]) == 0
    assert main(["cache-teachers", "--config", str(cfg), "backend=ray", "--out", str(tmp_path / "ray")]) == 0
    a, b = _cache_tensors(tmp_path / "local"), _cache_tensors(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) >= 3 * 8
    assert all(torch.equal(a[k], b[k]) for k in a)  # type: ignore[arg-type]
    held = [json.loads((tmp_path / d / "t-gpt2" / "heldout_eval.json").read_text())["result"] for d in ("local", "ray")]
    assert held[0] == held[1]


def test_sliced_loss_under_ddp_syncs_like_the_full_logits(tmp_path: Path, cluster: None) -> None:
    """2 DDP ranks on the sliced path (DDP wraps the one student forward) step like 2 ranks on full logits:
    unsynced gradients would let the ranks drift apart from step 2 on."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    cfg = ray_config(tmp_path, steps=3, batch_size=4)
    assert distill("--config", cfg, "student.num_workers=2", "student.loss_slice=0", "--out", full) == 0
    assert distill("--config", cfg, "student.num_workers=2", "student.loss_slice=5", "--out", cut) == 0
    for a, b in zip(metrics(full), metrics(cut), strict=True):
        for key in ("loss", "ce", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=2e-5, abs=1e-6), (a["step"], key)


def test_policy_on_ray_async_and_two_ranks(tmp_path: Path, cluster: None) -> None:
    """On-policy rows on Ray: with `ray.async` the teachers score batch n+1 (sampled before step n's update)
    while the student steps on n, so only the first step is the sync run's; with 2 ranks each rank samples."""
    import math

    policy = {"mode": "on", "max_new_tokens": 8, "prompt_chars": 40}
    sync, asyn, two = tmp_path / "sync", tmp_path / "async", tmp_path / "two"
    cfg = ray_config(tmp_path, steps=3, batch_size=4, policy=policy)
    assert distill("--config", cfg, "--out", sync) == 0
    assert distill("--config", cfg, "ray.async=true", "--out", asyn) == 0
    assert distill("--config", cfg, "student.num_workers=2", "--out", two) == 0
    a, b, c = metrics(sync), metrics(asyn), metrics(two)
    assert a[0]["loss"] == b[0]["loss"]  # the same first samples from the same initial student
    for r in (*a, *b, *c):
        assert math.isfinite(r["loss"])
        assert 0 < r["policy"]["mean_completion_tokens"] <= 8 and r["policy"]["generate_tokens_per_s"] > 0
    assert all(r["time"]["generate"] > 0 for r in (*a, *c))
    # async: a step is charged the sampling it does for the next one, so the last step samples nothing
    assert [r["time"]["generate"] > 0 for r in b] == [True, True, False]
    assert len(json.loads((two / "workers.json").read_text())) == 3
