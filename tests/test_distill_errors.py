"""Bad input to `xtalign distill` / `eval` / `cache-teachers`: one clear line, exit 2, nothing earlier touched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_distill_engine import fast_config
from xtalign.cli.main import main


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_unknown_key_names_the_closest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), "stepz=3", "--out", str(tmp_path / "o")],
                   "unknown config key 'stepz'", "'steps'")
    data = yaml.safe_load(cfg.read_text())
    data["teachers"][0]["temprature"] = 2.0
    cfg.write_text(yaml.safe_dump(data))
    one_line_error(capsys, ["distill", "--config", str(cfg), "--out", str(tmp_path / "o")],
                   "teachers.0.temprature", "'temperature'")
    assert not (tmp_path / "o").exists()


def test_projection_for_other_tokenizers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proj = tmp_path / "w.safetensors"
    assert main(["build-projection", "--student", "gpt2", "--teacher", "mistral-v1", "--out", str(proj)]) == 0
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), f"teachers.0.projection.source={proj}", "--out",
                            str(tmp_path / "o")], "student vocabulary mismatch", "gpt2")


@pytest.mark.parametrize("content, needle", [
    (b"", "empty"), (b"\n\n   \n", "empty"), (b"ok text \xff\xfe more", "UTF-8"),
])
def test_bad_corpus(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, needle: str) -> None:
    data = tmp_path / "corpus.txt"
    data.write_bytes(content)
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), f"data.train={data}", "--out", str(tmp_path / "o")],
                   needle)


def test_missing_corpus_and_missing_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), f"data.train={tmp_path / 'nope.txt'}", "--out",
                            str(tmp_path / "o")], "nope.txt")
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"body": f"document {i} " * 20}) for i in range(10)))
    one_line_error(capsys, ["distill", "--config", str(cfg), f"data.train={jl}", "--out", str(tmp_path / "o")],
                   "text", "body")
    pq = tmp_path / "c.parquet"
    import pandas as pd

    pd.DataFrame({"body": [f"document {i} " * 20 for i in range(10)]}).to_parquet(pq)
    one_line_error(capsys, ["distill", "--config", str(cfg), f"data.train={pq}", "--out", str(tmp_path / "o")],
                   "text", "body")


def test_seq_len_too_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), "seq_len=4", "--out", str(tmp_path / "o")],
                   "seq_len=4", "too short")
    one_line_error(capsys, ["distill", "--config", str(cfg), f"data.train={tmp_path / 'nope.txt'}", "--out",
                            str(tmp_path / "o")], "nope.txt")
    assert not (tmp_path / "o").exists()  # a refused run leaves no directory behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), "device=cuda", "--out", str(tmp_path / "o")],
                   "device=cuda", "no CUDA")


def test_resume_without_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    one_line_error(capsys, ["distill", "--resume", str(run)], "config.json")
    (run / "config.json").write_text(json.dumps(yaml.safe_load(fast_config(tmp_path).read_text())))
    (run / "checkpoints" / ".tmp-step-00000002").mkdir(parents=True)
    one_line_error(capsys, ["distill", "--resume", str(run)], "no complete checkpoint")


def test_existing_out_is_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "metrics.jsonl").write_text("earlier run\n")
    cfg = fast_config(tmp_path)
    one_line_error(capsys, ["distill", "--config", str(cfg), "--out", str(out)], "--overwrite")
    assert (out / "metrics.jsonl").read_text() == "earlier run\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_bad_input_fails_before_touching_an_overwritable_run(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """With --overwrite, a config that fails its checks leaves the earlier run as it was."""
    cfg = fast_config(tmp_path)
    out = tmp_path / "run"
    assert main(["distill", "--config", str(cfg), "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    one_line_error(capsys, ["distill", "--config", str(cfg), f"data.train={tmp_path / 'missing.txt'}",
                            "--overwrite", "--out", str(out)], "missing.txt")
    assert (out / "metrics.jsonl").read_text() == before
    assert (out / "checkpoints").is_dir() and (out / "export").is_dir()


def test_dry_run_validates_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1] / "distill" / "configs"
    for recipe in sorted(root.glob("*.yaml")):
        capsys.readouterr()
        assert main(["distill", "--config", str(recipe), "--dry-run"]) == 0, recipe
        resolved = json.loads(capsys.readouterr().out)
        assert resolved["student"]["model"] and resolved["teachers"], recipe
    paper = json.loads(_dry(capsys, root / "llama-1b-from-qwen3-4b.yaml"))
    assert paper["student"]["model"] == "meta-llama/Llama-3.2-1B" and paper["teachers"][0]["model"] == "Qwen/Qwen3-4B"
    assert paper["optim"]["lr"] == 5e-5 and paper["seq_len"] == 2048 and paper["data"]["pack_chars"] == 16384


def _dry(capsys: pytest.CaptureFixture[str], path: Path) -> str:
    capsys.readouterr()
    assert main(["distill", "--config", str(path), "--dry-run"]) == 0
    return capsys.readouterr().out


def test_ray_only_settings_refused_on_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = fast_config(tmp_path)
    for override, needle in (("ray.async=true", "ray.async (async teachers) needs backend: ray"),
                             ("student.num_workers=2", "num_workers > 1 needs backend: ray"),
                             ("teachers.0.num_replicas=2", "num_replicas > 1 needs backend: ray")):
        one_line_error(capsys, ["distill", "--config", str(cfg), override, "--out", str(tmp_path / "o")], needle)
    capsys.readouterr()
    assert main(["distill", "--config", str(cfg), "backend=ray", "ray.async=true", "--dry-run"]) == 0
