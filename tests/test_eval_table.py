"""benchmarks/eval_table.py: every row's config (same batches and budget, seeds only in the student's init),
the dry runs (CPU and GPU, no GPU needed), one hardware per table, reuse of finished runs, the statistics,
the markdown and the figure; and (slow) the whole --smoke table with the real teachers."""

from __future__ import annotations

import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, rel: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


et = _load("eval_table_under_test", "benchmarks/eval_table.py")
fig = _load("eval_table_figure_under_test", "figures/eval_table.py")

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
    path = tmp_path / "result.json"
    assert et._reusable(path, "abc", HW, overwrite=False) is None  # nothing there yet
    path.write_text(json.dumps({"config_sha256": "abc", "hardware": HW, "wall_s": 1.0}))
    assert et._reusable(path, "abc", HW, overwrite=False)["wall_s"] == 1.0
    with pytest.raises(et.CLIError, match="another config; pass --overwrite"):
        et._reusable(path, "def", HW, overwrite=False)
    assert et._reusable(path, "def", HW, overwrite=True) is None
    with pytest.raises(et.CLIError, match="other hardware"):
        et._reusable(path, "abc", {**HW, "cpu": "Other CPU"}, overwrite=False)


def test_mean_and_sample_std_over_seeds() -> None:
    s = et.mean_std([1.0, 2.0, None, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["n"] == 3
    assert s["std"] == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert et.mean_std([3.5]) == {"mean": 3.5, "std": None, "n": 1, "values": [3.5]}
    assert et.mean_std([None])["mean"] is None


def _eval(bpb: float, digits: float | None = None) -> dict:
    by = {c: {"bits_per_byte": bpb + i / 10, "bytes": 100 * (i + 1)} for i, c in enumerate(et.CLASSES)}
    by["digits"] = {"bits_per_byte": digits, "bytes": 0 if digits is None else 100}
    return {"bits_per_byte": bpb, "bytes": 1500, "by_class": by}


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
    return {"mode": "full", "hardware": HW, "seeds": [0, 1, 2], "equal_token_budget": True,
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
def test_smoke_table_end_to_end_with_the_real_teachers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "smoke"
    assert et.main(["--smoke", "--out", str(out)]) == 0
    table = json.loads((out / "eval_table.json").read_text())
    rows = {r["key"]: r for r in table["rows"]}
    assert list(rows) == ["teacher:gemma3-270m", "teacher:smollm2-135m", "untrained", *EXPECTED]
    assert table["mode"] == "smoke" and table["seeds"] == [0, 1] and table["equal_token_budget"]
    assert table["cache_reused"]  # no trained run ran a teacher: every row read the one cache
    assert {f["forwards"] for f in table["fills"].values()} == {3}  # each teacher ran once over the 3 batches
    for key, r in rows.items():
        assert math.isfinite(r["bits_per_byte"]["mean"]), key
        assert r["bits_per_byte"]["n"] == (1 if key.startswith("teacher:") else 2)
    untrained = rows["untrained"]["bits_per_byte"]["mean"]
    assert rows["ce"]["bits_per_byte"]["mean"] < untrained  # three CE steps already help
    assert rows["teacher:gemma3-270m"]["bits_per_byte"]["mean"] < 2.0 < untrained
    assert rows["auto"]["loss"] == "auto → h-kl" and table["provenance"]["git_sha"]
    assert (out / "eval_table.md").read_text().startswith("# xtalign eval table (smoke")
    assert (out / "eval_table.png").stat().st_size > 10_000
    before = (out / "runs" / "ce" / "seed-0" / "result.json").read_text()
    capsys.readouterr()
    assert et.main(["--smoke", "--out", str(out)]) == 0  # started again: every run and fill is reused
    again = json.loads((out / "eval_table.json").read_text())
    assert again["rows"] == table["rows"]
    assert (out / "runs" / "ce" / "seed-0" / "result.json").read_text() == before
