"""benchmarks/gemma3_cpu.py: the two arms differ only in the KD weight (same batches, teacher, budget, seeds only
in the student's init), the recipe's budget repeats no training sample, a repeating budget and a dirty tree
are refused in one line before anything runs, the results and markdown from known runs; and (slow) the whole
--smoke study with the real Gemma-3-270M teacher on a two-source corpus, started twice (every run reused)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
HW = {"device": "cpu", "cpu": "Test CPU", "cpu_count": 2, "gpu": None}


g3 = load_script("benchmarks/gemma3_cpu.py", "gemma3_cpu_under_test")
runs_mod = sys.modules["distill_runs"]  # benchmarks/ is on sys.path once gemma3_cpu.py is loaded
CLASSES = sys.modules["eval_rows"].CLASSES


def _corpus(folder: Path) -> Path:
    """A small two-source corpus in the analysis/corpus.py layout, cut from Botchan's chapters."""
    from xtalign.distill.data.corpus import read_documents

    docs = read_documents("botchan")[1:12]
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"text": d, "source": "novel" if i % 2 else "notes"}) for i, d in enumerate(docs)]
    (folder / "train.jsonl").write_text("\n".join(lines[:-2]) + "\n")
    (folder / "heldout.jsonl").write_text("\n".join(lines[-2:]) + "\n")
    return folder


def test_the_arms_differ_only_in_the_kd_weight_and_seeds_only_in_the_init(tmp_path: Path) -> None:
    base = g3.base_dict(corpus=tmp_path, smoke=False)
    fill = g3.fill_config(base, tmp_path / "cache")
    assert fill.data.train == str(tmp_path / "train.jsonl") and fill.data.heldout == str(tmp_path / "heldout.jsonl")
    shared = None
    for seed in (0, 1):
        for arm in g3.ARMS:
            cfg = g3.arm_config(base, arm, seed, tmp_path / "cache")
            assert cfg.student.init_seed == seed and cfg.seed == 0 and cfg.cache_teachers == str(tmp_path / "cache")
            assert (cfg.combine.scaling, cfg.combine.kd_weight == 0) == (("fixed", True) if arm == "ce"
                                                                         else ("dynamic", False))
            same = (cfg.steps, cfg.batch_size, cfg.seq_len, cfg.grad_accum, cfg.data, cfg.teachers, cfg.optim,
                    cfg.schedule, cfg.eval, cfg.student.arch)
            shared = shared or same
            assert same == shared  # the very same batches, teacher (so cache) and budget for both arms
    assert fill.teachers == shared[5] and (fill.steps, fill.batch_size) == (200, 4)


def test_dry_run_prints_both_arms_and_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert g3.main(["--dry-run", "--out", str(tmp_path / "w")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out["arms"]) == ["pkl", "ce"] and out["seeds"] == [0, 1]
    assert out["config"] == "distill/configs/gemma3-teacher-cpu.yaml"
    assert out["arms"]["ce"]["combine"]["kd_weight"] == 0 and out["cache_fill"]["teachers"][0]["name"] == "gemma3-270m"
    assert not (tmp_path / "w").exists()


def test_the_recipe_repeats_no_training_sample(pinned_corpus: Path) -> None:
    usage = runs_mod.data_usage(g3.fill_config(g3.base_dict(corpus=pinned_corpus, smoke=False),
                                               pinned_corpus / "cache"))
    assert usage["samples_used"] == 800 and usage["repeated_samples"] == 0 and usage["epochs"] < 0.25


def test_a_repeating_budget_is_refused_before_anything_runs(tmp_path: Path) -> None:
    cfg = g3.fill_config(g3.base_dict(corpus=_corpus(tmp_path / "c"), smoke=True, steps=4000), tmp_path / "cache")
    with pytest.raises(g3.CLIError, match=r"this budget repeats \d+ training samples") as exc:
        g3.data_audit(cfg)
    assert "\n" not in str(exc.value)
    audit = g3.data_audit(g3.fill_config(g3.base_dict(corpus=tmp_path / "c", smoke=True), tmp_path / "cache"))
    assert audit["distinct_samples"] == audit["samples_used"] == 6 and audit["repeated_samples"] == 0
    assert audit["distinct_tokens"] > 6 * 10 and sum(audit["samples_by_source"].values()) == 6


def test_a_dirty_tree_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import xtalign.provenance as prov

    monkeypatch.setattr(prov, "_dirty_files", lambda: ["benchmarks/gemma3_cpu.py"])
    corpus, out = _corpus(tmp_path / "c"), tmp_path / "w"
    assert g3.main(["--corpus", str(corpus), "--out", str(out), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the working tree has uncommitted changes (benchmarks/gemma3_cpu.py)")
    assert "\n" not in err and not out.exists() and not (tmp_path / "r").exists()
    assert g3.parse_args([]).results == ROOT / "benchmarks" / "results" / "gemma3-cpu"
    assert g3.parse_args(["--smoke"]).results == ROOT / "out" / "gemma3-cpu-smoke" / "results"
    committed = ROOT / "benchmarks" / "results" / "gemma3-cpu"
    assert g3.main(["--smoke", "--allow-dirty", "--corpus", str(corpus), "--out", str(out), "--results",
                    str(committed)]) == 2
    assert "--smoke writes no committed results" in capsys.readouterr().err and not out.exists()


def _eval(bpb: float) -> dict:
    classes = {c: {"bits_per_byte": bpb + i / 10, "bytes": 2000} for i, c in enumerate(CLASSES)}
    return {"bits_per_byte": bpb, "bytes": 10_000, "rows": 5, "by_class": classes,
            "by_source": {"novel": {"bits_per_byte": bpb - 0.1, "bytes": 6000},
                          "notes": {"bits_per_byte": bpb + 0.2, "bytes": 400}}}


def _run(arm: str, seed: int) -> dict:
    final = 3.0 + seed / 10 - (0.05 if arm == "pkl" else 0.0)
    return {"seed": seed, "wall_s": 60.0, "train_s": 50.0, "steps": 3, "tokens": 500, "tokens_per_s": 10.0,
            "initial": _eval(4.0 + seed / 10), "final": _eval(final), "code": {"git_sha": "abc"},
            "by_step": [{"step": 0, "bits_per_byte": 4.0 + seed / 10}, {"step": 3, "bits_per_byte": final}],
            "losses": {}, "final_loss": 1.0, "final_ce": 1.0}


def test_results_and_markdown_from_known_runs(tmp_path: Path) -> None:
    args = g3.parse_args(["--smoke", "--out", str(tmp_path), "--corpus", str(ROOT / "out" / "corpus")])
    base = g3.base_dict(corpus=tmp_path, smoke=True)
    audit = {"train_samples": 100, "heldout_samples": 9, "samples_used": 6, "distinct_samples": 6,
             "repeated_samples": 0, "epochs": 0.06, "distinct_tokens": 500, "sample_bytes": 1800,
             "trained_bytes": 1800, "samples_cut_at_seq_len": 0, "samples_by_source": {"novel": 6},
             "data_hash": "f" * 64}
    prov = {"git_sha": "abc", "git_dirty": False, "git_diff_sha256": None, "date": "today"}
    ctx = {"hw": HW, "prov": prov, "audit": audit, "corpus_sha256": "b" * 64}
    fill = {"teacher": "gemma3-270m", "wall_s": 30.0, "batches": 3, "forwards": 3, "heldout": _eval(1.2),
            "code": {"git_sha": "abc"}}
    known = {arm: [_run(arm, s) for s in (0, 1)] for arm in g3.ARMS}
    res = g3.assemble(args, base, ctx, fill, known, 123.0)
    assert res["paired"]["bits_per_byte"]["values"] == pytest.approx([-0.05, -0.05])
    assert res["paired"]["by_source"]["notes"]["mean"] == pytest.approx(-0.05) and res["tokens_match_audit"]
    assert res["commits"] == ["abc"] and res["data"]["corpus"] == "out/corpus"
    md = g3.markdown(res)
    assert "No training sample repeats, so KD is not acting as a regulariser" in md
    assert "every run's own token count equals it" in md and "commit abc (clean tree)" in md
    assert "| 1 | 3.1000 | 3.0500 | -0.0500 | 60 | 60 |" in md  # per seed
    assert "| model | overall | notes† | novel |" in md and "NOT held out for the pretrained teacher" in md
    assert "| 3 | 3.050 ± 0.071 | 3.000 ± 0.071 | -0.050 ± 0.000 [-0.050, -0.050] |" in md  # by step
    assert "**P-KL − CE only, paired by seed** [min, max] | -0.050 ± 0.000 [-0.050, -0.050]" in md


def test_outputs_keep_the_runs_records_and_draw_the_figure_from_them(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(g3, "markdown", lambda results: "# study\n")  # its own test is above
    root = tmp_path / "work" / "runs"
    runs = {}
    for arm, ce in (("pkl", 5.0), ("ce", 5.5)):
        run = root / arm / "seed-0"
        run.mkdir(parents=True)
        steps = [{"step": i, "loss": ce - i / 10, "ce": ce - i / 10, "accuracy": 0.1 * i} for i in range(1, 4)]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
        (run / "eval.jsonl").write_text(json.dumps({"step": 3, "bits_per_byte": ce / 2}) + "\n")
        (run / "model.safetensors").write_bytes(b"weights")  # never copied
        runs[f"{arm} seed 0"] = run
    folder = tmp_path / "results"
    written = g3.write_outputs(folder, {"x": 1}, runs, root)
    for arm in ("pkl", "ce"):
        kept = folder / "runs" / arm / "seed-0"
        assert sorted(p.name for p in kept.iterdir()) == ["eval.jsonl", "metrics.jsonl"]
        assert (kept / "metrics.jsonl").read_bytes() == (root / arm / "seed-0" / "metrics.jsonl").read_bytes()
    assert folder / "runs" / "ce" / "seed-0" / "eval.jsonl" in written
    assert (folder / "training_curves.png").stat().st_size > 10_000 and json.loads(
        (folder / "gemma3_cpu.json").read_text()) == {"x": 1}


@pytest.mark.slow
def test_smoke_study_with_the_real_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import xtalign.provenance as prov

    monkeypatch.setattr(prov, "git_sha", lambda: "0123456789ab")  # the tree's commit may move while this runs
    corpus, out = _corpus(tmp_path / "corpus"), tmp_path / "work"
    assert g3.main(["--smoke", "--allow-dirty", "--corpus", str(corpus), "--out", str(out)]) == 0
    res = json.loads((out / "results" / "gemma3_cpu.json").read_text())
    assert res["mode"] == "smoke" and res["seeds"] == [0, 1] and res["tokens_match_audit"]
    assert res["data"]["repeated_samples"] == 0 and res["data"]["distinct_samples"] == 6
    assert res["commits"] == [runs_mod.code_label(res["provenance"])] and res["teacher"]["forwards"] == 3
    assert set(res["teacher"]["heldout"]["by_source"]) == {"novel", "notes"}
    for arm in g3.ARMS:
        a = res["arms"][arm]
        assert [r["seed"] for r in a["runs"]] == [0, 1] and set(a["by_source"]) == {"novel", "notes"}
        assert all(r["tokens"] == res["data"]["distinct_tokens"] for r in a["runs"])
        assert a["bits_per_byte"]["mean"] < a["untrained"]["bits_per_byte"]["mean"]
    assert res["paired"]["seeds"] == [0, 1] and math.isfinite(res["paired"]["bits_per_byte"]["mean"])
    assert res["teacher"]["heldout"]["bits_per_byte"] < 2.0
    assert runs_mod.absolute_paths(res) == []
    md = (out / "results" / "gemma3_cpu.md").read_text()
    assert md.startswith("# Gemma-3-270M teaches a from-scratch student on CPU") and "No training sample" in md
    assert (out / "results" / "training_curves.png").stat().st_size > 10_000
    assert (out / "results" / "runs" / "ce" / "seed-1" / "metrics.jsonl").read_bytes() == (
        out / "runs" / "ce" / "seed-1" / "metrics.jsonl").read_bytes()
    before = (out / "runs" / "pkl" / "seed-1" / "result.json").read_text()
    capsys.readouterr()
    assert g3.main(["--smoke", "--allow-dirty", "--corpus", str(corpus), "--out", str(out)]) == 0  # all reused
    again = json.loads((out / "results" / "gemma3_cpu.json").read_text())
    assert again["arms"] == res["arms"] and again["teacher"] == res["teacher"]
    assert (out / "runs" / "pkl" / "seed-1" / "result.json").read_text() == before
