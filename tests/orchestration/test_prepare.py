"""``run.py`` before Ray starts: bad input is one line and exit 2, and nothing on disk changes.

The run-name and ``--overwrite`` cases guard against data loss (a name of ``.`` or ``..`` once made
``--overwrite`` delete every run, or the working directory). The resume cases use a copy of the
reference smoke run and damage one file at a time: resume must name the file and change nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from orchestration.run import main as run_main
from orchestration.store import MARKER, RunStore


def tree_hash(root: Path) -> dict[str, str]:
    """Every file and directory under ``root``: relative path → sha256 of its bytes (``dir`` for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("orchestration/run.py: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture
def runs(tmp_path):
    """``runs/`` with a marked coalora run ``a`` and somebody's directory ``b``."""
    root = tmp_path / "runs"
    RunStore(root / "a").create("a", "run: {name: a}\n")
    (root / "b").mkdir(parents=True)
    (root / "b" / "thesis.tex").write_text("years of work")
    (tmp_path / "notes.txt").write_text("keep")
    return root


@pytest.mark.parametrize("name", [".", "..", "../runs", "a/b", "", "-rf", "a b"])
def test_a_run_name_is_one_plain_component_even_with_overwrite(runs, tmp_path, monkeypatch, capsys, name):
    before = tree_hash(tmp_path)
    monkeypatch.chdir(tmp_path)  # the default out_dir, runs, is relative to here
    for out_dir in (str(runs), "runs"):
        assert run_main(["--smoke-test", "--set", f"run.out_dir={out_dir}", "--set", f"run.name={name}",
                         "--overwrite"]) == 2
        assert "run.name" in _error(capsys)
    assert tree_hash(tmp_path) == before


def test_overwrite_replaces_only_a_marked_run_of_known_files(runs, tmp_path, capsys):
    before = tree_hash(tmp_path)
    args = ["--smoke-test", "--set", f"run.out_dir={runs}", "--overwrite", "--check"]
    assert run_main([*args, "--set", "run.name=b"]) == 2
    assert f"{runs / 'b'} is not a coalora run (no {MARKER})" in _error(capsys)
    # Without --overwrite, only a coalora run is offered to be overwritten.
    assert run_main(["--smoke-test", "--set", f"run.out_dir={runs}", "--set", "run.name=b"]) == 2
    assert "it is not a coalora run: choose another run.name" in _error(capsys)
    assert run_main(["--smoke-test", "--set", f"run.out_dir={runs}", "--set", "run.name=a"]) == 2
    assert f"pass --resume {runs / 'a'} to continue it, --overwrite to replace it" in _error(capsys)
    # A marked run that also holds something no run writes is not deleted either.
    (runs / "a" / "notes.md").write_text("mine")
    before = tree_hash(tmp_path)
    assert run_main([*args, "--set", "run.name=a"]) == 2
    assert "holds notes.md, which no run writes" in _error(capsys)
    assert tree_hash(tmp_path) == before
    # A clean marked run passes the checks (--check stops before Ray, so it is still there).
    (runs / "a" / "notes.md").unlink()
    assert run_main([*args, "--set", "run.name=a"]) == 0
    assert f"ok: replace {runs / 'a'}" in capsys.readouterr().out
    assert (runs / "a" / MARKER).is_file()


@pytest.mark.parametrize("setting, message", [
    ("model.name=no-such-model", "no-such-model"),
    ("lora.rank=1000000000", "lora.rank: 1000000000 is larger than the smaller side of target matrix"),
    ("train.init_budgets=[1.0]", "train.init_budgets[0]"),
    ("eval.budgets=[1.5]", "eval.budgets[0]"),
])
def test_model_and_space_problems_stop_before_anything_is_written(tmp_path, capsys, setting, message):
    assert run_main(["--smoke-test", "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", setting]) == 2
    assert message in _error(capsys)
    assert not (tmp_path / "runs").exists()


def test_an_out_dir_that_is_a_file_or_under_one_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert run_main(["--smoke-test", "--set", f"run.out_dir={tmp_path / 'f'}"]) == 2
    assert f"run.out_dir {tmp_path / 'f'} is a file" in _error(capsys)
    assert run_main(["--smoke-test", "--set", f"run.out_dir={tmp_path / 'f' / 'runs'}"]) == 2
    assert f"{tmp_path / 'f'} is a file" in _error(capsys)
    assert (tmp_path / "f").read_text() == "x"


# ---------------------------------------------------------------------- resume
@pytest.fixture
def copy_of_reference(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference[0], run)
    return run


def test_resume_takes_only_settings_a_run_can_change(copy_of_reference, capsys):
    run = copy_of_reference
    before = tree_hash(run)
    assert run_main(["--resume", str(run), "--config", "configs/smoke.yaml"]) == 2
    assert "--config cannot be combined with --resume" in _error(capsys)
    assert run_main(["--resume", str(run), "--set", "lora.rank=8"]) == 2
    assert "lora.rank cannot change when a run resumes" in _error(capsys)
    assert run_main(["--resume", str(run), "--set", "run.rounds=1"]) == 2
    assert "run.rounds=1 is less than the 2 round(s) this run completed" in _error(capsys)
    assert run_main(["--resume", str(run), "--overwrite"]) == 2
    assert "--overwrite cannot be combined with --resume" in _error(capsys)
    assert run_main(["--resume", str(run), "--set", "run.rounds=3", "--set", "ray.evaluators=1", "--check"]) == 0
    assert f"ok: resume {run} after 2 of 3 round(s)" in capsys.readouterr().out
    assert tree_hash(run) == before


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


DAMAGE = {
    "rounds.parquet": (lambda run: (run / "rounds.parquet").write_bytes(b"PAR1 not really"),
                       "rounds.parquet: not a readable Parquet table"),
    "archive.parquet": (lambda run: _truncate(run / "archive.parquet"), "archive.parquet: not a readable Parquet"),
    "trainset": (lambda run: (run / "trainset" / "round_0.json").unlink(), "round_0.json: missing (round 0 is complete)"),
    "trainset json": (lambda run: (run / "trainset" / "round_1.json").write_text('{"trainset": [{"x": 1}]}'),
                      "round_1.json: not a training set of this run"),
    "checkpoint": (lambda run: _truncate(run / "checkpoints" / "round_1" / "trainable.safetensors"),
                   "trainable.safetensors"),
    "checkpoint meta": (lambda run: (run / "checkpoints" / "round_1" / "meta.json").write_text("[1, 2]"), "meta.json"),
    "no checkpoint": (lambda run: shutil.rmtree(run / "checkpoints" / "round_1"),
                      "round_1: missing (round 1 is complete)"),
    "search": (lambda run: (run / "search" / "round_1" / "search.json").write_text("{"), "search/round_1"),
    "config": (lambda run: (run / "config.yaml").write_text("lora: {rank: 4}\nlora: {rank: 8}\n"),
               "duplicate key 'lora'"),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_a_damaged_run_directory_is_named_and_left_as_it_was(copy_of_reference, capsys, what):
    run = copy_of_reference
    # What a killed round 2 would leave, which a resume deletes: only once the whole run checked out.
    (run / "checkpoints" / "round_2").mkdir()
    (run / "checkpoints" / "round_2" / "partial").write_text("x")
    damage, message = DAMAGE[what]
    damage(run)
    before = tree_hash(run)
    assert run_main(["--resume", str(run), "--set", "run.rounds=3"]) == 2
    assert message in _error(capsys)
    assert tree_hash(run) == before


def test_a_cluster_side_error_is_found_under_rays_wrapping(ray_local):
    """What only a worker can find (here a data error in a Ray task) still reaches the user as one line."""
    from coalora.errors import DataError
    from orchestration.prepare import expected_cause, one_line

    @ray_local.remote
    def load() -> None:
        raise DataError("reviews.csv row 7: label 5 is not below model.num_labels=2")

    with pytest.raises(Exception) as info:
        ray_local.get(load.remote())
    cause = expected_cause(info.value)
    assert isinstance(cause, DataError)
    assert one_line(cause) == "reviews.csv row 7: label 5 is not below model.num_labels=2"
    assert expected_cause(RuntimeError("a bug")) is None


def test_a_kill_by_rays_memory_monitor_is_recognised_under_its_wrapping():
    """Ray's own exception types; the controller's text is Ray 2.60's, from a real run's log (two SmolLM2 runs
    on one 24 GiB machine), which Ray Train wraps with no typed cause."""
    from ray.exceptions import OutOfMemoryError
    from ray.train import ControllerError

    from orchestration.prepare import killed_for_memory

    said = ("4 worker(s) were killed due to the node running low on memory. Memory on the node (IP: 192.0.2.2) "
            "was 22.29GB used / 23.54GB limit (0.946683)")
    assert killed_for_memory(ControllerError(RuntimeError(said)))
    try:
        try:
            raise OutOfMemoryError("Task was killed due to the node running low on memory.")
        except OutOfMemoryError as e:
            raise RuntimeError("evaluation failed") from e
    except RuntimeError as wrapped:
        assert killed_for_memory(wrapped)
    assert not killed_for_memory(ControllerError(RuntimeError("worker group failed to start")))
    assert not killed_for_memory(MemoryError())  # this process's own allocation: not Ray's monitor


def test_a_resumed_run_records_its_overrides(tmp_path):
    from orchestration.loop import Orchestrator
    from tests.conftest import smoke_config

    store = RunStore(tmp_path / "r")
    store.create("r", "# made by hand\nrun: {name: r}\n")
    orch = Orchestrator(smoke_config(tmp_path, "r", "run.rounds=4"), store.root, resume=True,
                        resume_overrides=["run.rounds=4"])
    orch._record_overrides()
    text = store.config_path.read_text()
    lines = text.splitlines()
    assert lines[0] == "# made by hand" and lines[1].startswith("# resumed ") and lines[1].endswith(
        "with --set run.rounds=4")
    from coalora.pipeline.config import load_config

    assert load_config(store.config_path.path).run.rounds == 4
    assert json.loads(store.marker_path.read_text())["name"] == "r"


@pytest.mark.parametrize("how", [["-m", "orchestration.run"], ["orchestration/run.py"]],
                         ids=["python -m orchestration.run", "python orchestration/run.py"])
def test_both_ways_of_starting_run_py_work_from_anywhere(how, tmp_path):
    """``ray job submit -- python orchestration/run.py`` and ``python -m orchestration.run`` need no
    ``sys.path`` edit: the installed package is found from any working directory."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, *([how[0], how[1]] if how[0] == "-m" else [str(root / how[0])]),
           "--smoke-test", "--check", "--set", f"run.out_dir={tmp_path / 'runs'}"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1].startswith(f"ok: new run {tmp_path / 'runs' / 'smoke'}: 2 round(s); tiny-bert")
    assert not (tmp_path / "runs").exists()  # --check writes nothing


def test_snapshots_are_refused_by_a_run(tmp_path, capsys):
    """``train.snapshots`` belongs to ``coalora train``: a run's rounds are its snapshots. Refused before
    anything is written."""
    assert run_main(["--smoke-test", "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "train.snapshots=[2]",
                     "--check"]) == 2
    assert _error(capsys) == ("orchestration/run.py: error: train.snapshots: [2] is for `coalora train`; a run keeps "
                              "every round's checkpoint (checkpoints/round_<k>), which are its snapshots: remove it")
    assert not (tmp_path / "runs").exists()
