"""benchmarks/policy_cpu.py: the arms differ only in the policy settings (same data order, teacher, budget and
student), the dry run writes nothing, and (slow) the whole --smoke study on the real pair writes every arm's
figures, the untrained student's included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


pc = load_script("benchmarks/policy_cpu.py", "policy_cpu_under_test")


def test_the_arms_differ_only_in_the_policy(tmp_path: Path) -> None:
    base = pc.base_dict(corpus=tmp_path, smoke=False, steps=None)
    cfgs = {arm: pc.arm_config(base, arm, 1) for arm in pc.ARMS}
    assert {a: (c.policy.mode, c.policy.objective) for a, c in cfgs.items()} == {
        "off": ("off", "kd"), "on-kd": ("on", "kd"), "on-rkl": ("on", "reverse_kl"), "mix": ("mix", "kd")}
    assert cfgs["mix"].policy.on_fraction == 0.5
    shared = {(c.steps, c.batch_size, c.seq_len, c.seed, c.student.init_seed, c.data, c.teachers, c.optim,
               c.schedule, c.student.model) for c in cfgs.values()}
    assert len(shared) == 1  # one data order, teacher, budget and student for every arm
    assert pc.arm_config(base, "off", 0, steps=43).steps == 43  # the equal-wall-clock arm: only its steps change


def test_dry_run_prints_every_arm_and_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "train.jsonl").write_text("")
    assert pc.main(["--dry-run", "--corpus", str(corpus), "--out", str(tmp_path / "w")]) == 0
    assert list(json.loads(capsys.readouterr().out)) == list(pc.ARMS)
    assert not (tmp_path / "w").exists()


def test_a_missing_corpus_is_one_line_that_says_how_to_make_it(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    assert pc.main(["--dry-run", "--corpus", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "analysis/corpus.py" in err


@pytest.mark.slow
def test_smoke_study_on_the_real_pair(pinned_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "policy"
    # one data order: every arm and the untrained row still run end to end (the study itself uses two)
    assert pc.main(["--smoke", "--allow-dirty", "--seeds", "0", "--corpus", str(pinned_corpus), "--out", str(out)]) == 0
    r = json.loads((out / "results" / "policy_cpu.json").read_text())
    assert r["mode"] == "smoke" and list(r["arms"]) == [*pc.ARMS, "off-wall"] and r["seeds"] == [0]
    assert math.isfinite(r["before"]["heldout_text_bits_per_byte"]["mean"])
    for arm in r["arms"].values():
        assert arm["steps"][0] >= 1 and math.isfinite(arm["heldout_text_bits_per_byte"]["mean"])
        assert math.isfinite(arm["teacher_bits_per_byte_of_samples"]["mean"])
    assert (out / "results" / "policy_cpu.md").read_text().count("\n|") >= 7
