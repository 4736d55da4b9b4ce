"""benchmarks/common.py and the measured benchmarks (engine, teacher memory, Ray, data, overlap, projection,
align, P-KL): the shared helpers (spread, provenance at the start with the dirty-tree refusal, results JSON,
phase clock, step figures), the full-logits baseline teacher against `TeacherWorker`, the data slices, and a
`--smoke` run of each script."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


common = load_script("benchmarks/common.py", "benchmarks.common")
bench_data = load_script("benchmarks/bench_data.py", "bench_data_under_test")
bench_memory = load_script("benchmarks/bench_teacher_memory.py", "bench_teacher_memory_under_test")
bench_engine = load_script("benchmarks/bench_engine.py", "bench_engine_under_test")


def _smoke(script: str, out: Path, *extra: str, timeout: int = 300) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), "--smoke", "--allow-dirty", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["smoke"] is True and record["provenance"]["git_sha"]
    assert record["provenance"]["cpu_count"] and "load_average_1min_start" in record["provenance"]
    assert record["command"].startswith(".venv/bin/python benchmarks/" + script)
    return record


# --- helpers ---------------------------------------------------------------------------------------------


def test_spread_has_median_quartiles_and_values() -> None:
    s = common.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["iqr"], s["min"], s["max"], s["n"]) == (3, 2, 4, 2, 1, 5, 5)
    assert s["values"] == [5.0, 1.0, 3.0, 2.0, 4.0]
    one = common.spread([7.0])
    assert one["median"] == one["q1"] == one["q3"] == 7.0 and one["iqr"] == 0.0
    assert common.ratio(common.spread([4.0, 6.0]), common.spread([2.0])) == pytest.approx(2.5)
    with pytest.raises(ValueError):
        common.spread([])


def test_begin_refuses_a_dirty_tree_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import xtalign.provenance as prov

    monkeypatch.setattr(prov, "provenance", lambda: {"git_dirty": True, "dirty_files": ["a.py"], "git_sha": "x"})
    args = argparse.Namespace(allow_dirty=False, smoke=False, out=Path("/tmp/x.json"))
    with pytest.raises(SystemExit) as exc:
        common.begin(args, "bench_x.py")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_x.py: the working tree has uncommitted changes (a.py)") and err.count("\n") == 1
    args.allow_dirty = True
    record = common.begin(args, "bench_x.py")
    assert record["git_dirty"] and record["load_average_1min_start"] >= 0


def test_a_smoke_run_never_writes_the_committed_results(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(allow_dirty=True, smoke=True, out=common.RESULTS_DIR / "engine.json")
    with pytest.raises(SystemExit) as exc:
        common.begin(args, "bench_x.py")
    assert exc.value.code == 2 and "--smoke writes no committed results" in capsys.readouterr().err


def test_parser_defaults_to_the_committed_results_file() -> None:
    args = common.parser("thing", "doc").parse_args([])
    assert args.out == ROOT / "benchmarks" / "results" / "thing.json"
    assert not args.allow_dirty and not args.smoke


def test_write_results_records_command_arguments_and_provenance(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "sub" / "r.json"
    monkeypatch.setattr(sys, "argv", [str(ROOT / "benchmarks/bench_x.py"), "--smoke"])
    args = argparse.Namespace(out=out, allow_dirty=True, smoke=True)
    common.write_results(args, "x", {"git_sha": "abc"}, {"summary": {"a": 1}})
    rec = json.loads(out.read_text())
    assert rec["benchmark"] == "x" and rec["summary"] == {"a": 1} and rec["provenance"] == {"git_sha": "abc"}
    assert rec["command"] == ".venv/bin/python benchmarks/bench_x.py --smoke"
    assert rec["arguments"]["out"] == str(out) and rec["smoke"] is True and "load_average_1min_end" in rec


def test_phase_clock_charges_each_lap_to_its_phase() -> None:
    clock = common.PhaseClock("cpu")
    clock.start()
    clock.lap("a")
    sum(range(20000))
    clock.lap("b")
    clock.lap("a")
    assert set(clock.parts) == {"a", "b"} and clock.total == pytest.approx(sum(clock.parts.values()))
    clock.start()
    assert clock.parts == {}


def test_step_figures_leave_out_the_warm_up() -> None:
    rows = [{"tokens": 100, "step_s": s, "time": {"data": 0.0, "teacher": s / 2}, "loss": 1.0}
            for s in (10.0, 1.0, 2.0, 4.0)]
    fig = common.step_figures(rows, 1, ("data", "teacher", "student"))
    assert fig["tokens_per_s"] == 50.0 and fig["step_s"] == 2.0 and fig["steps_timed"] == 3
    assert fig["time"] == {"data": 0.0, "teacher": 1.0, "student": 0.0} and len(fig["losses"]) == 4
    with pytest.raises(ValueError, match="raise --steps"):
        common.step_figures(rows, 4, ("data",))


# --- the full-logits baseline ----------------------------------------------------------------------------


@pytest.mark.parametrize(("temperature", "softcap"), [(1.0, None), (2.0, 5.0)])
def test_full_logits_teacher_matches_the_sliced_worker(temperature: float, softcap: float | None) -> None:
    import torch

    from xtalign.distill.config import ArchConfig
    from xtalign.distill.models.load import load_model
    from xtalign.distill.teacher.worker import TeacherWorker

    arch = ArchConfig(family="llama", hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32,
                      max_position=64)
    lm = load_model(model="random", arch=arch, tokenizer="gpt2", seed=3)
    lm.model.config.final_logit_softcapping = softcap
    worker = TeacherWorker(lm, top_k=8, temperature=temperature, head_slice=7)
    assert worker.softcap == softcap
    rng = np.random.default_rng(0)
    ids = rng.integers(0, lm.tokenizer.size, (3, 12))
    lengths = np.array([12, 9, 5])
    targets = np.where(np.arange(12)[None, :] < lengths[:, None] - 1, np.roll(ids, -1, axis=1), -100)
    ids = np.where(np.arange(12)[None, :] < lengths[:, None], ids, -1)
    want = worker.forward(ids, lengths, targets)
    got = common.FullLogitsTeacher(worker).forward(ids, lengths, targets)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.logits, want.logits)
    torch.testing.assert_close(got.logsumexp, want.logsumexp, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.target_logprob, want.target_logprob, rtol=0, atol=1e-5)
    assert got.temperature == temperature and got.vocab_size == want.vocab_size


def test_memory_check_refuses_variants_that_disagree() -> None:
    full = {"logsumexp": [1.0, 2.0], "top1": [0.5, 0.5]}
    runs = {"full": [full], "sliced-64": [{"logsumexp": [1.0, 2.001], "top1": [0.5, 0.5]}]}
    assert bench_memory.check_agreement(runs, tol=0.01)["sliced-64"] == pytest.approx(0.001)
    with pytest.raises(SystemExit, match="disagrees"):
        bench_memory.check_agreement(runs, tol=1e-4)


def test_engine_summary_ratios_and_loss_check() -> None:
    def fig(tps: float, losses: list[float]) -> dict:
        return {"tokens_per_s": tps, "step_s": 1 / tps, "time": {p: 0.1 for p in bench_engine.PHASES},
                "losses": losses, "minor_faults_per_step": 1}

    runs = {"engine": [fig(90, [3.0, 2.0]), fig(110, [3.0, 2.0])], "bare": [fig(100, [3.0, 2.0])],
            "bare, full logits": [fig(50, [3.0, 2.5])]}
    s = bench_engine.summarise(runs)
    assert s["ratios"]["engine_over_bare"] == pytest.approx(1.0)
    assert s["ratios"]["engine_over_bare_full_logits"] == pytest.approx(2.0)
    assert s["max_loss_difference_vs_engine"] == {"engine": 0.0, "bare": 0.0, "bare, full logits": 0.5}
    assert s["engine"]["tokens_per_s"]["iqr"] == pytest.approx(10.0)


# --- the data slices -------------------------------------------------------------------------------------


def test_po_messages_joins_continuations_and_drops_the_header() -> None:
    po = 'msgid ""\nmsgstr ""\n"Project-Id: x\\n"\n\nmsgid "a"\nmsgstr "甲"\n\nmsgid "b"\nmsgstr ""\n"乙 "\n"丙"\n'
    assert bench_data.po_messages(po) == ["Project-Id: x\n", "甲", "乙 丙"]


def test_code_and_cjk_slices_are_real_distinct_text() -> None:
    code = bench_data.packed(bench_data.code_slice(), 10240, None)
    assert code.origin["licence"] == "BSD-2-Clause" and len(code.documents) > 100
    assert all("import" in d.text or "def " in d.text or '"""' in d.text for d in code.documents[:20])
    cjk = bench_data.packed(bench_data.cjk_slice(), 3584, None)
    assert [d.source for d in cjk.documents] == ["sphinx-ja", "sphinx-ko", "sphinx-zh_CN", "sphinx-zh_TW"]
    text = "".join(cjk.corpus.train)
    assert sum("\u3040" <= c <= "\u9fff" or "\uac00" <= c <= "\ud7af" for c in text) > 30000
    assert len(set(cjk.corpus.train)) == len(cjk.corpus.train) >= 16


def test_a_missing_or_altered_corpus_says_how_to_make_it(tmp_path: Path) -> None:
    with pytest.raises(bench_data.SliceError, match=r"\.venv/bin/python analysis/corpus\.py"):
        bench_data.corpus_slice(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "manifest.json").write_text(json.dumps({"train": {"sha256": "0" * 64}}))
    with pytest.raises(bench_data.SliceError, match="--overwrite"):
        bench_data.corpus_slice(tmp_path)


def test_packing_refuses_repeated_samples() -> None:
    from xtalign.distill.data.corpus import Document

    sl = bench_data.Slice("s", [Document("same text here", "a"), Document("same text here", "b")], {})
    with pytest.raises(bench_data.SliceError, match="repeat"):
        bench_data.packed(sl, 1000, None)


# --- smoke runs of the scripts ---------------------------------------------------------------------------


def test_bench_data_smoke(tmp_path: Path) -> None:
    slices = ["code", "cjk"] + (["corpus"] if (ROOT / "out/corpus/manifest.json").is_file() else [])
    rec = _smoke("bench_data.py", tmp_path / "data.json", "--slices", *slices)
    for name in slices:
        s = rec["slices"][name]
        assert s["distinct_samples_equal_samples"] and s["origin"]
        assert set(s["workers"]) == {"1", "2"} and s["workers"]["1"]["student_tokens_per_s"]["median"] > 0


def test_bench_data_missing_corpus_exits_2(tmp_path: Path) -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks/bench_data.py"), "--smoke", "--allow-dirty", "--out",
           str(tmp_path / "d.json"), "--corpus-dir", str(tmp_path / "none"), "--slices", "corpus"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "analysis/corpus.py" in proc.stderr and not (tmp_path / "d.json").exists()


def test_bench_engine_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_engine.py", tmp_path / "engine.json")
    s = rec["summary"]
    assert set(s["engine"]["time"]) == {"data", "teacher", "student"}
    assert s["engine"]["tokens_per_s"]["n"] == 2 and s["ratios"]["engine_over_bare"] > 0
    assert max(s["max_loss_difference_vs_engine"].values()) < 1e-3  # the bare loops compute what the engine does
    assert rec["config"]["heap"]["policy"] == "pinned" and s["bare"]["minor_faults_per_step"]["n"] == 2


_HEAP_PROBE = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from benchmarks.common import minor_faults, pin_heap
def faults():  # five 64 MiB tensors made, written and freed
    f0 = minor_faults()
    for _ in range(5):
        z = torch.empty(1 << 24)
        z.fill_(1.0)
        del z
    return minor_faults() - f0
before = faults()
applied = pin_heap()["applied"]
print(before, applied, min(faults() for _ in range(4)))
"""


def test_pin_heap_reuses_large_buffers() -> None:
    # a subprocess: the heap policy is process-wide and would change every later test's memory figures
    proc = subprocess.run([sys.executable, "-c", _HEAP_PROBE, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, applied, after = proc.stdout.split()
    if applied != "True":
        pytest.skip("no glibc mallopt here")
    assert int(before) > 5 * 10_000  # glibc's own policy: a fresh mapping per tensor, a fault per 4 KiB page
    assert int(after) < 1_000  # pinned: the freed buffer is reused, its pages already there


def test_bench_teacher_memory_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_teacher_memory.py", tmp_path / "memory.json")
    s = rec["summary"]
    assert set(s["full_over_sliced"]) == {"sliced-32"}
    # the full forward holds one [B·T, V] fp32 buffer (256 MiB here) and not two
    assert s["one_fp32_logits_buffer_mib"] <= s["full"]["peak_rss_increase_mib"]["median"] < 1.5 * 256


@pytest.mark.slow
def test_bench_ray_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_ray.py", tmp_path / "ray.json")
    s = rec["steps"]["summary"]
    assert set(s) >= {"local-1", "local-2", "ray-sync", "ray-async", "ratios", "async_bound_from_local_1_split"}
    t = rec["transport"]
    assert t["topk"]["bytes"] < t["full_fp32"]["bytes"] and t["topk"]["put_and_fetch_s"]["n"] == 2


# --- the core benchmarks (overlap, projection, align, P-KL) -----------------------------------------------


def _is_spread(s: dict, n: int) -> bool:
    return {"median", "q1", "q3", "iqr", "min", "max", "values"} <= set(s) and s["n"] == len(s["values"]) == n


def test_bench_overlap_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_overlap.py", tmp_path / "overlap.json")
    assert rec["benchmark"] == "overlap" and rec["target_s"] == 20.0
    assert _is_spread(rec["wall_s"], 1) and 0 < rec["wall_s"]["median"] < 60
    assert rec["met"] == (rec["wall_s"]["median"] <= 20.0)


def test_bench_projection_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_projection.py", tmp_path / "projection.json")
    cli, build = rec["cli"], rec["build_alone"]
    assert rec["config"]["student"] == "llama3" and rec["config"]["teacher"] == "qwen3"
    assert _is_spread(cli["wall_s"], 1) and _is_spread(cli["peak_rss_mib"], 1) and cli["peak_rss_mib"]["median"] > 0
    assert cli["targets"] == {"wall_s": 10.0, "peak_rss_mib": 1024} and len(cli["runs"]) == 1
    assert _is_spread(build["build_s"], 1) and build["build_s"]["median"] > 0 and build["target_s"] == 1.0
    assert build["forward_tokens"] > 0 and build["reverse_tokens"] > 0 and build["stats"]


def test_bench_align_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_align.py", tmp_path / "align.json")
    assert rec["repeats"] == 1 and rec["tokens_both_sides"] > 0 and len(rec["cases"]) == 3
    for case in rec["cases"].values():
        assert _is_spread(case["seconds"], 1) and _is_spread(case["tokens_per_s"], 1)
        assert case["tokens_per_s"]["median"] > 0
    assert rec["target"]["target"] == 5e6 and rec["target"]["case"] in rec["cases"]
    [cmp] = rec["comparisons"]  # --smoke: the main pair only
    assert (cmp["student"], cmp["teacher"]) == ("llama3", "qwen3") and _is_spread(cmp["exact_tokens_per_s"], 1)
    assert cmp["baseline"]["exact_chunks"] > 0 and cmp["speedup"] > 0


def test_bench_pkl_smoke(tmp_path: Path) -> None:
    rec = _smoke("bench_pkl.py", tmp_path / "pkl.json", "--device", "cpu")
    assert rec["config"]["vs"] == rec["config"]["vt"] == 4096 and rec["config"]["seq"] == {"cpu": 128}
    assert {r["variant"] for r in rec["results"]} == {"naive", "fast"}
    for r in rec["results"]:
        assert r["device"] == "cpu" and _is_spread(r["ms"], 1) and r["ms"]["median"] > 0 and r["peak_mib"] > 0
    naive, fast = sorted(rec["results"], key=lambda r: r["variant"] != "naive")
    assert abs(naive["loss"] - fast["loss"]) < 1e-3 * abs(naive["loss"])  # the two variants compute the same loss
    assert rec["ratios"]["cpu"]["time_naive_over_fast"] > 0
