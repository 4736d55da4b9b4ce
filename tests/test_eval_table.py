"""benchmarks/eval_table.py (+ eval_rows, eval_markdown, distill_runs): every row's config (same batches and
budget, seeds only in the student's init), the dry runs (CPU and GPU, no GPU needed), provenance at the start
(a dirty tree refused), one hardware per work folder, reuse of finished runs (same config and commit), the
statistics (per seed, paired with CE, per source), the learned W's movement, repository-relative outputs, the
markdown and the figure's data; and (slow) the whole --smoke table with the real teachers."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import statistics
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


et = load_script("benchmarks/eval_table.py", "eval_table_under_test")
fig = load_script("figures/eval_table.py", "eval_table_figure_under_test")
runs = importlib.import_module("distill_runs")  # benchmarks/ is on sys.path once eval_table.py is loaded
rows_mod = importlib.import_module("eval_rows")

EXPECTED = {  # row -> (teachers, their losses, combine.multi)
    "ce": ((), (), "sum"),
    "same-vocab": (("smollm2-135m",), ("same-vocab",), "sum"),
    "uld": (("gemma3-270m",), ("uld",), "sum"),
    "gold": (("gemma3-270m",), ("gold",), "sum"),
    "h-kl": (("gemma3-270m",), ("h-kl",), "sum"),
    "p-kl-nemo": (("gemma3-270m",), ("p-kl",), "sum"),
    "p-kl-chain": (("gemma3-270m",), ("p-kl",), "sum"),
    "p-kl-learned": (("gemma3-270m",), ("p-kl",), "sum"),
    "auto": (("gemma3-270m",), ("auto",), "sum"),
    "multi-sum": (("gemma3-270m", "smollm2-135m"), ("p-kl", "same-vocab"), "sum"),
    "multi-dynamic": (("gemma3-270m", "smollm2-135m"), ("p-kl", "same-vocab"), "dynamic"),
}
HW = {"device": "cpu", "cpu": "Test CPU", "cpu_count": 2, "gpu": None}


def _base(device: str = "cpu", smoke: bool = False) -> dict:
    return et.base_dict(device=device, smoke=smoke, corpus="botchan")


def test_rows_are_the_briefs_and_differ_only_in_teachers_loss_and_seed(tmp_path: Path) -> None:
    base = _base()
    assert [r.key for r in et.ROWS] == list(EXPECTED)
    shared = None
    for row in et.ROWS:
        for seed in (0, 1, 2):
            cfg = et.row_config(base, row, seed, tmp_path)
            teachers, losses, multi = EXPECTED[row.key]
            assert tuple(t.label for t in cfg.teachers) == teachers
            assert tuple(t.loss for t in cfg.teachers) == losses
            assert cfg.combine.multi == multi and cfg.student.init_seed == seed and cfg.seed == 0
            assert [t.projection.learnable for t in cfg.teachers] == [row.key == "p-kl-learned"] * len(teachers)
            assert all(t.aggregation == ("chain" if row.key == "p-kl-chain" else "nemo") for t in cfg.teachers)
            geometry = (cfg.steps, cfg.batch_size, cfg.seq_len, cfg.grad_accum, cfg.data, cfg.student.arch,
                        cfg.optim, cfg.schedule, cfg.eval, cfg.cache_teachers)
            shared = shared or geometry
            assert geometry == shared  # the same batches, token budget and student for every row and seed


def test_teacher_settings_match_the_cache_in_every_row(tmp_path: Path) -> None:
    """The cache key holds teacher, k and temperature: a row that changed them would not find the cache."""
    base = _base()
    fills = {t: et.fill_config(base, t, tmp_path).teachers[0] for t in (et.GEMMA, et.SMOL)}
    for row in et.ROWS:
        for t in et.row_config(base, row, 0, tmp_path).teachers:
            f = fills[t.label]
            assert (t.model, t.top_k, t.temperature, t.head_slice) == (f.model, f.top_k, f.temperature, f.head_slice)


def test_dry_runs_print_every_row_without_a_gpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert et.main(["--dry-run", "--out", str(tmp_path / "cpu")]) == 0
    cpu = json.loads(capsys.readouterr().out)
    assert list(cpu["rows"]) == list(EXPECTED) and cpu["seeds"] == [0, 1, 2]
    assert cpu["rows"]["ce"]["student"]["model"] == "random" and cpu["rows"]["ce"]["device"] == "cpu"
    assert et.main(["--device", "cuda", "--dry-run", "--out", str(tmp_path / "gpu")]) == 0
    gpu = json.loads(capsys.readouterr().out)
    assert list(gpu["rows"]) == list(EXPECTED)
    for cfg in gpu["rows"].values():
        assert cfg["student"]["model"] == "smollm2-135m" and cfg["student"]["arch"] is None
        assert (cfg["device"], cfg["precision"], cfg["seq_len"]) == ("cuda", "bf16", 2048)
    assert not (tmp_path / "cpu").exists() and not (tmp_path / "gpu").exists()  # a dry run writes nothing


def test_cuda_table_is_refused_without_a_gpu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert et.main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda needs a CUDA GPU") and "\n" not in err


def test_one_output_folder_holds_one_hardware(tmp_path: Path) -> None:
    et.bind_hardware(tmp_path, HW)
    et.bind_hardware(tmp_path, dict(HW))  # the same machine again is fine
    with pytest.raises(et.CLIError, match="one table never mixes hardware") as exc:
        et.bind_hardware(tmp_path, {**HW, "device": "cuda", "gpu": "NVIDIA H200"})
    assert "\n" not in str(exc.value)
    assert json.loads((tmp_path / "hardware.json").read_text()) == HW


def test_finished_runs_are_reused_only_when_unchanged(tmp_path: Path) -> None:
    path, code = tmp_path / "result.json", {"git_sha": "abc123", "git_dirty": False, "git_diff_sha256": None}
    assert et.reusable(path, "abc", HW, code, overwrite=False) is None  # nothing there yet
    path.write_text(json.dumps({"config_sha256": "abc", "hardware": HW, "code": code, "wall_s": 1.0}))
    assert et.reusable(path, "abc", HW, code, overwrite=False)["wall_s"] == 1.0
    with pytest.raises(et.CLIError, match="another config; pass --overwrite"):
        et.reusable(path, "def", HW, code, overwrite=False)
    assert et.reusable(path, "def", HW, code, overwrite=True) is None
    with pytest.raises(et.CLIError, match="other hardware"):
        et.reusable(path, "abc", {**HW, "cpu": "Other CPU"}, code, overwrite=False)
    with pytest.raises(et.CLIError, match="the code of commit abc123, this is fff000; pass --overwrite") as exc:
        et.reusable(path, "abc", HW, {**code, "git_sha": "fff000"}, overwrite=False)  # made at another commit
    assert "\n" not in str(exc.value)
    assert et.reusable(path, "abc", HW, {**code, "git_sha": "fff000"}, overwrite=True) is None


def _dirty(monkeypatch: pytest.MonkeyPatch, files: list[str]) -> None:
    """Make xtalign.provenance see `files` as uncommitted changes (the real tree is never touched)."""
    import xtalign.provenance as prov

    monkeypatch.setattr(prov, "_dirty_files", lambda: list(files))
    monkeypatch.setattr(prov, "_diff_sha256", lambda: "d" * 64)


def test_a_dirty_tree_is_refused_at_the_start_in_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _dirty(monkeypatch, ["benchmarks/eval_rows.py"])
    out = tmp_path / "work"
    assert et.main(["--corpus", "botchan", "--out", str(out), "--results", str(tmp_path / "res")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the working tree has uncommitted changes (benchmarks/eval_rows.py)")
    assert "\n" not in err
    assert "--allow-dirty" in err and not out.exists() and not (tmp_path / "res").exists()  # nothing measured


def test_provenance_is_taken_at_the_start_and_records_a_dirty_diff(monkeypatch: pytest.MonkeyPatch) -> None:
    _dirty(monkeypatch, [])
    clean = runs.start(allow_dirty=False)
    assert clean["git_dirty"] is False and clean["git_diff_sha256"] is None and clean["git_sha"]
    _dirty(monkeypatch, ["x.py"])
    with pytest.raises(et.CLIError, match="uncommitted changes"):
        runs.start(allow_dirty=False)
    dirty = runs.start(allow_dirty=True)
    assert dirty["git_dirty"] is True and dirty["git_diff_sha256"] == "d" * 64 and dirty["dirty_files"] == ["x.py"]
    assert runs.code_state(dirty) == {"git_sha": dirty["git_sha"], "git_dirty": True, "git_diff_sha256": "d" * 64}
    labels = runs.commits([{"code": runs.code_state(dirty)}, {"code": runs.code_state(clean)}, {"code": {}}])
    assert labels == sorted([f"{dirty['git_sha']} (dirty, diff dddddddddddd)", clean["git_sha"], "None"])


def test_work_and_results_folders_default_apart() -> None:
    full, smoke = et.parse_args([]), et.parse_args(["--smoke"])
    assert full.results == ROOT / "benchmarks" / "results" / "eval-table-cpu" and full.out == ROOT / "out" / "eval"
    assert smoke.out == ROOT / "out" / "eval-smoke" and smoke.results == smoke.out / "results"
    assert et.parse_args(["--device", "cuda"]).results == ROOT / "benchmarks" / "results" / "eval-table-gpu"
    assert et.parse_args(["--results", "/tmp/r"]).results == Path("/tmp/r")


def test_a_smoke_run_never_writes_the_committed_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    committed = ROOT / "benchmarks" / "results" / "eval-table-cpu"
    assert et.main(["--smoke", "--allow-dirty", "--out", str(tmp_path / "w"), "--results", str(committed)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --smoke writes no committed results; give --results outside benchmarks/results/"
    assert not (tmp_path / "w").exists()


def test_mean_and_sample_std_over_seeds() -> None:
    s = et.mean_std([1.0, 2.0, None, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["n"] == 3
    assert s["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert et.mean_std([3.5]) == {"mean": 3.5, "std": None, "n": 1, "values": [3.5]}
    assert et.mean_std([None])["mean"] is None


def _eval(bpb: float, digits: float | None = None) -> dict:
    by = {c: {"bits_per_byte": bpb + i / 10, "bytes": 1000 * (i + 1)} for i, c in enumerate(et.CLASSES)}
    by["digits"] = {"bits_per_byte": digits, "bytes": 0 if digits is None else 100}
    sources = {"botchan": {"bits_per_byte": bpb - 0.5, "bytes": 500}, "sphinx": {"bits_per_byte": bpb + 0.25,
                                                                                 "bytes": 1000}}
    return {"bits_per_byte": bpb, "bytes": 1500, "rows": 3, "by_class": by, "by_source": sources}


def _synthetic_table() -> dict:
    fills = {t: {"teacher": t, "wall_s": 100.0, "heldout": _eval(1.0 + i)} for i, t in enumerate((et.GEMMA, et.SMOL))}
    runs = {}
    for k, row in enumerate(r for r in et.ROWS if r.key != "auto"):
        runs[row.key] = [{"seed": s, "initial": _eval(4.0 + s), "final": _eval(3.0 + k / 10 + s / 100, 2.0),
                          "tokens": 1000, "tokens_per_s": 50.0 * (s + 1), "wall_s": 10.0 + s,
                          "teacher_bytes_computed": 0,
                          "losses": {t: {"loss": lo} for t, lo in zip(EXPECTED[row.key][0], EXPECTED[row.key][1],
                                                                       strict=True)}} for s in (0, 1, 2)]
    auto = {"loss": "h-kl", "reason": "audit", "same_as": "h-kl"}
    return {"mode": "full", "hardware": HW, "seeds": [0, 1, 2], "equal_token_budget": True, "auto": auto,
            "data": {"name": "botchan", "data_hash": "0123456789abcdef"}, "student": "a test student",
            "budget": {"steps": 10, "batch_size": 4, "seq_len": 512, "tokens": 1000, "data_seed": 0,
                       "heldout_bytes": 1500}, "rows": et.build_rows(fills, runs, auto)}


def test_rows_markdown_and_figure_from_known_runs(tmp_path: Path) -> None:
    table = _synthetic_table()
    keys = [r["key"] for r in table["rows"]]
    assert keys == ["teacher:gemma3-270m", "teacher:smollm2-135m", "untrained", *EXPECTED]
    rows = {r["key"]: r for r in table["rows"]}
    assert rows["untrained"]["bits_per_byte"]["values"] == [4.0, 5.0, 6.0]
    assert rows["auto"]["bits_per_byte"] == rows["h-kl"]["bits_per_byte"] and rows["auto"]["loss"] == "auto → h-kl"
    assert rows["teacher:gemma3-270m"]["tokens_per_s"]["mean"] == 10.0  # 1000 student tokens / 100 s fill
    md = et.markdown(table).splitlines()
    sd = statistics.stdev([3.0, 3.01, 3.02])
    assert f"| CE only | ce | 3.010 ± {sd:.3f} | 2.000 ± 0.000 | 3.110 ± {sd:.3f} |" in "\n".join(md)
    assert "| auto (Gemma-3-270M) | auto → h-kl | 3.410 ± 0.010 |" in "\n".join(md)
    assert "| teacher gemma3-270m | — | 1.000 | — | 1.100 |" in "\n".join(md)
    assert md[0] == "# xtalign eval table (full, 2-core CPU: Test CPU)"
    png = fig.draw(table, tmp_path / "t.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_paired_differences_and_sources_in_rows_and_markdown() -> None:
    """Each row minus CE at the same seed (here the offsets cancel: row k is k/10 above CE at every seed)."""
    table = _synthetic_table()
    rows = {r["key"]: r for r in table["rows"]}
    assert "vs_ce" not in rows["ce"] and all("vs_ce" in r for r in table["rows"][4:])
    v = rows["p-kl-nemo"]["vs_ce"]  # the 6th trained row of the synthetic runs: +0.5 at every seed
    assert v["seeds"] == [0, 1, 2] and v["bits_per_byte"]["values"] == pytest.approx([0.5, 0.5, 0.5])
    assert v["by_source"]["botchan"]["values"] == pytest.approx([0.5] * 3) and v["by_class"]["digits"]["mean"] == 0
    assert rows["ce"]["by_source"]["botchan"]["mean"] == pytest.approx(2.51)
    assert rows["ce"]["source_bytes"] == {"botchan": 500, "sphinx": 1000}
    assert rows["teacher:smollm2-135m"]["by_source"]["sphinx"]["mean"] == pytest.approx(2.25)
    md = et.markdown(table)
    assert "## Difference from CE only, paired by seed" in md and "## Held-out bits per byte by source" in md
    assert "| P-KL nemo, fixed W (Gemma-3-270M) | +0.500 ± 0.000 [+0.500, +0.500] |" in md
    assert "| row | overall | digits† | whitespace | punctuation | letters | other | botchan† | sphinx |" in md
    assert "| CE only | 3.010 ± 0.010 | 2.510 ± 0.010 | 3.260 ± 0.010 |" in md  # the by-source table
    assert "NOT held out for the pretrained teachers" in md and "fewer than 1,000 held-out bytes: noise" in md


def test_figure_draws_differences_paired_by_seed() -> None:
    """The figure's data: trained rows but CE, auto folded into its twin, per-seed row − CE values; a table
    without `vs_ce` (written before it existed) gives the same numbers from the rows' per-seed values."""
    table = _synthetic_table()
    diffs = fig.differences(table)
    assert [d["key"] for d in diffs] == [k for k in EXPECTED if k not in ("ce", "auto")]
    assert next(d for d in diffs if d["key"] == "h-kl")["label"].endswith("(= auto)")
    by_key = {d["key"]: d for d in diffs}
    assert by_key["uld"]["bits_per_byte"]["values"] == pytest.approx([0.2] * 3)
    assert by_key["uld"]["by_source"]["sphinx"]["mean"] == pytest.approx(0.2)
    for r in table["rows"]:
        r.pop("vs_ce", None)
    old = {d["key"]: d for d in fig.differences(table)}
    assert old["uld"]["bits_per_byte"]["values"] == pytest.approx([0.2] * 3)
    assert old["uld"]["by_class"]["letters"]["mean"] == pytest.approx(0.2)
    groups = fig._groups(list(fig.CLASSES), table["rows"][0]["class_bytes"], fig.COLOURS)
    assert [g[2] for g in groups] == [True, False, False, False, False]  # digits: 100 bytes < 1,000 -> noise
    assert "noise" in groups[0][0] and groups[0][1] == fig.NOISE_COLOUR


def test_learned_w_movement_counts_only_multi_entry_rows() -> None:
    import numpy as np

    idx = np.array([[3, 0, 0], [1, 2, 0], [0, 0, 0], [4, 5, 6]])
    w0 = np.array([[1.0, 0, 0], [0.6, 0.4, 0], [0, 0, 0], [0.5, 0.3, 0.2]])
    w1 = np.array([[1.0, 0, 0], [0.7, 0.3, 0], [0, 0, 0], [0.5, 0.3, 0.2]])
    m = et.w_movement(idx, w0, idx, w1)
    assert (m["rows"], m["empty_rows"], m["one_slot_rows"], m["multi_entry_rows"]) == (4, 1, 1, 2)
    assert m["one_slot_fraction"] == pytest.approx(1 / 3) and m["pattern_kept"] and m["one_slot_l1_max"] == 0
    assert (m["l1_mean"], m["l1_max"], m["moved_rows"]) == (pytest.approx(0.1), pytest.approx(0.2), 1)
    table = {**_synthetic_table(), "learned_w": {"label": "P-KL learned", "lr": 0.01,
                                                 "per_seed": [{"seed": 0, **m}, {"seed": 1, **m}]}}
    md = et.markdown(table)
    assert "## How far the learned W moved" in md and "1 (33.3 % of the non-empty rows) have one live entry" in md
    assert "seed 1: mean 1.00e-01, max 2.00e-01, 1 rows moved > 0.001" in md


def test_results_name_repository_relative_paths_only(tmp_path: Path) -> None:
    table = _synthetic_table()
    table["data"]["name"] = et.rel(str(ROOT / "out" / "corpus"))
    table["rows"][3]["note"] = f"read from {ROOT / 'out' / 'eval' / 'cache'} and {Path.home() / '.cache' / 'x'}"
    assert table["data"]["name"] == "out/corpus"
    written = et.write_outputs(tmp_path, table)
    assert [p.name for p in written] == ["eval_table.json", "eval_table.md", "eval_table.png"]
    for path in written[:2]:
        text = path.read_text()
        assert str(ROOT) not in text and str(Path.home()) not in text, path
        assert "out/eval/cache" in text and "~/.cache/x" in text
    assert runs.absolute_paths(json.loads(written[0].read_text())) == []
    assert "Data: out/corpus" in written[1].read_text()


def test_rel_keeps_a_symlinks_own_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere" / "corpus"
    (repo / "out").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    (repo / "out" / "corpus").symlink_to(elsewhere)
    (repo / "out" / "real").mkdir()
    monkeypatch.setattr(runs, "ROOT", repo)
    assert runs.rel(repo / "out" / "corpus") == "out/corpus"  # not the target's absolute path
    assert runs.rel(repo / "out" / "real") == "out/real"
    assert runs.rel("not/there") == "not/there"
    assert runs.rel(elsewhere) == runs.portable(str(elsewhere))


def test_auto_resolves_to_h_kl_and_shares_its_runs(tmp_path: Path) -> None:
    pick = et.auto_pick(_base(), tmp_path)
    assert (pick["loss"], pick["same_as"]) == ("h-kl", "h-kl")
    assert pick["reason"].startswith("xtalign audit smollm2 -> gemma3")


def test_rows_see_the_same_text_with_and_without_gemma(tmp_path: Path) -> None:
    from dataclasses import replace

    cfg = et.row_config(_base(smoke=True), et.ROWS[-1], 0, tmp_path)  # both teachers
    assert len(et.check_same_text(cfg)) == 64  # the corpus's data hash
    with pytest.raises(et.CLIError, match="at another byte with the teachers than without"):
        et.check_same_text(replace(cfg, seq_len=64))


@pytest.mark.slow
def test_smoke_table_end_to_end_with_the_real_teachers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import xtalign.provenance as prov

    monkeypatch.setattr(prov, "git_sha", lambda: "0123456789ab")  # the tree's commit may move while this runs
    out = tmp_path / "smoke"
    assert et.main(["--smoke", "--allow-dirty", "--out", str(out)]) == 0
    results = out / "results"
    table = json.loads((results / "eval_table.json").read_text())
    rows = {r["key"]: r for r in table["rows"]}
    assert list(rows) == ["teacher:gemma3-270m", "teacher:smollm2-135m", "untrained", *EXPECTED]
    assert table["mode"] == "smoke" and table["seeds"] == [0, 1] and table["equal_token_budget"]
    assert table["cache_reused"]  # no trained run ran a teacher: every row read the one cache
    assert {f["forwards"] for f in table["fills"].values()} == {3}  # each teacher ran once over the 3 batches
    for key, r in rows.items():
        assert math.isfinite(r["bits_per_byte"]["mean"]), key
        assert r["bits_per_byte"]["n"] == (1 if key.startswith("teacher:") else 2)
        assert list(r["by_source"]) == ["botchan"], key
    untrained = rows["untrained"]["bits_per_byte"]["mean"]
    assert rows["ce"]["bits_per_byte"]["mean"] < untrained  # three CE steps already help
    assert rows["teacher:gemma3-270m"]["bits_per_byte"]["mean"] < 2.0 < untrained
    assert rows["auto"]["loss"] == "auto → h-kl"
    assert rows["p-kl-nemo"]["vs_ce"]["seeds"] == [0, 1]
    assert table["provenance"]["git_sha"] and table["commits"] == [runs.code_label(table["provenance"])]
    assert table["data_usage"]["repeated_samples"] == 0 and table["data"]["name"] == "botchan"
    w = table["learned_w"]["per_seed"]
    assert [s["seed"] for s in w] == [0, 1] and all(s["one_slot_l1_max"] == 0 and s["pattern_kept"] for s in w)
    assert all(s["multi_entry_rows"] > 1000 and s["l1_max"] > 0 for s in w)  # 3 steps at lr 1e-2 move it a little
    assert runs.absolute_paths(table) == []
    assert (results / "eval_table.md").read_text().startswith("# xtalign eval table (smoke")
    assert (results / "eval_table.png").stat().st_size > 10_000
    assert (out / "eval_table.json").is_file()  # the table so far, in the work folder
    before = (out / "runs" / "ce" / "seed-0" / "result.json").read_text()
    capsys.readouterr()
    assert et.main(["--smoke", "--allow-dirty", "--out", str(out)]) == 0  # started again: every run is reused
    again = json.loads((results / "eval_table.json").read_text())
    assert again["rows"] == table["rows"]
    assert (out / "runs" / "ce" / "seed-0" / "result.json").read_text() == before
