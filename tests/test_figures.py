"""The figure scripts (figures/*.py) and the top-k fidelity study run on tiny inputs and write small PNGs."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _load(rel: str) -> ModuleType:
    return load_script(rel, "fig_" + Path(rel).stem)


def _is_small_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size < 200_000


# --- overlap: clustered zoo matrix ------------------------------------------------------------------------


def _overlap_json(names: list[str], matrix: list[list[float]]) -> dict:
    return {"tokenizers": names, "sizes": [32_000 + 1000 * i for i in range(len(names))], "matrix": matrix}


def test_cluster_order_puts_families_together() -> None:
    mod = _load("figures/overlap_figure.py")
    m = [[1.0, 0.1, 0.9, 0.2], [0.1, 1.0, 0.15, 0.8], [0.9, 0.15, 1.0, 0.1], [0.2, 0.8, 0.1, 1.0]]
    order, link = mod.cluster_order(m)
    assert sorted(order) == [0, 1, 2, 3] and link.shape == (3, 4)
    pos = {t: i for i, t in enumerate(order)}
    assert abs(pos[0] - pos[2]) == 1 and abs(pos[1] - pos[3]) == 1  # {0, 2} and {1, 3} are families


def test_overlap_figure_writes_all_three_pngs(tmp_path: Path) -> None:
    mod = _load("figures/overlap_figure.py")
    guide = tmp_path / "guide.json"
    guide.write_text(json.dumps(_overlap_json(["a", "b"], [[1.0, 0.4], [0.4, 1.0]])))
    zoo = tmp_path / "zoo.json"
    m = [[1.0, 0.2, 0.7], [0.2, 1.0, 0.3], [0.7, 0.3, 1.0]]
    zoo.write_text(json.dumps(_overlap_json(["x", "y", "z"], m)))
    out = tmp_path / "figs"
    assert mod.main(["--from", str(guide), "--zoo-from", str(zoo), "--out-dir", str(out)]) == 0
    for name in ("overlap_guide.png", "overlap_zoo.png", "overlap_zoo_clustered.png"):
        assert _is_small_png(out / name), name


# --- projection rows ----------------------------------------------------------------------------------------


def test_projection_rows_cells_mark_the_cut_and_plot(tmp_path: Path) -> None:
    mod = _load("figures/projection_rows.py")
    pieces = [" π", "ε", "ρ", "ι", "ο", "χ", "ή"]
    weights = [0.9001, 0.09, 0.009, 0.0009]
    greek = {"word": " περιοχή", "student_id": 9, "source": "decomposed",
             "entries": [{"id": 10 + i, "text": pieces[i], "weight": w} for i, w in enumerate(weights)],
             "teacher_pieces": [{"id": 10 + i, "text": c} for i, c in enumerate(pieces)]}
    exact = {"word": " the", "student_id": 1, "source": "exact", "entries": [{"id": 5, "text": " the", "weight": 1.0}],
             "teacher_pieces": [{"id": 5, "text": " the"}]}
    cells = mod._cells(greek, 4)
    assert [w for _, w in cells] == [0.9001, 0.09, 0.009, 0.0009, None, None, None]
    assert mod._cells(exact, 4) == [(" the", 1.0)]
    data = {"student": "s", "teacher": "t", "projection": "test", "top_k": 4, "max_pieces": 4, "rows": [exact, greek]}
    src = tmp_path / "rows.json"
    src.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    assert mod.main(["--from", str(src), "--out", str(tmp_path / "rows.png")]) == 0
    assert _is_small_png(tmp_path / "rows.png")


def test_projection_rows_from_the_real_llama3_qwen3_projection() -> None:
    mod = _load("figures/projection_rows.py")
    data = mod.compute("llama3", "qwen3", [" the", "201", " περιοχή"])
    the, num, greek = data["rows"]
    assert the["source"] == "exact" and [e["weight"] for e in the["entries"]] == [1.0]
    assert [e["text"] for e in num["entries"]] == ["2", "0", "1"]
    assert [e["weight"] for e in num["entries"]] == [0.9009, 0.0901, 0.009]
    assert len(greek["teacher_pieces"]) == 7 and len(greek["entries"]) == 4  # cut after 4 of 7 pieces
    with pytest.raises(SystemExit, match="not one"):
        mod.compute("llama3", "qwen3", [" περιοχή περιοχή"])


# --- training curves ------------------------------------------------------------------------------------------


def test_training_curves_series_ema_and_png(tmp_path: Path) -> None:
    mod = _load("figures/training_curves.py")
    assert mod.ema([1.0, 3.0], 0.5) == [1.0, pytest.approx(7 / 3)]  # (0.25 + 1.5) / 0.75
    assert mod.ema([2.0, 4.0, 6.0], 0.0) == [2.0, 4.0, 6.0]
    rows = [{"step": s, "loss": 10.0 - s, "ce": 5.0 - s / 2, "accuracy": 0.01 * s,
             "kd": {"gemma": 3.0 - 0.1 * s, "smol": 2.0 - 0.1 * s}} for s in range(1, 6)]
    curves = mod.series(rows)
    assert sorted(curves) == ["accuracy", "ce", "kd:gemma", "kd:smol", "loss"]
    assert curves["kd:smol"] == ([1, 2, 3, 4, 5], [pytest.approx(2.0 - 0.1 * s) for s in range(1, 6)])
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert mod.main(["--run", str(run), "--run", str(run / "metrics.jsonl"), "--out", str(tmp_path / "c.png")]) == 0
    assert _is_small_png(tmp_path / "c.png")
    with pytest.raises(SystemExit, match="does not exist"):
        mod.read_metrics(tmp_path / "nothing")
