"""benchmarks/study.py, the study's command line (the parts are tested in tests/benchmarks/studylib/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import study
from benchmarks.studylib import runner
from tests.benchmarks.studylib.conftest import write_csv

ROOT = Path(__file__).resolve().parents[2]


def test_report_only_writes_the_report_and_runs_nothing(tmp_path, monkeypatch):
    res = tmp_path / "benchmarks" / "results" / "study"
    res.mkdir(parents=True)
    write_csv(res / "baseline-seeds.csv", "seed,method,mean_accuracy", "0,shared,0.8", "1,shared,0.79")
    monkeypatch.setattr(study, "Study", None)  # constructing a Study (which starts work) would fail
    assert study.main(["--report-only"], root=tmp_path) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| shared | 0.8000 | 0.7900 | 1.00 pt |" in text.splitlines()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, said", [
    (["--parts", "table3"], "unknown part(s) ['table3']"),
    (["--parts", "headroom", "--variants", "coa-nope"], "unknown variant(s) ['coa-nope']"),
    (["--parts", "headroom", "--jobs", "0"], "--jobs must be 1 or more, not 0"),
    (["--seeds", "0,one"], "--seeds takes comma-separated integers, not '0,one'"),
])
def test_bad_arguments_are_one_message_and_exit_2_before_any_work(tmp_path, monkeypatch, capsys, args, said):
    monkeypatch.setattr(runner.Study, "__init__", None)  # nothing may be set up for a refused command line
    with pytest.raises(SystemExit) as e:
        study.main(args, root=tmp_path)
    assert e.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_it_runs_as_a_script_from_anywhere(tmp_path):
    """``python benchmarks/study.py`` from another directory finds its package (it is not installed)."""
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "study.py"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--parts" in res.stdout and "--jobs N" in res.stdout, res.stderr[-2000:]
