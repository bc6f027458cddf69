"""The orchestrator on a local Ray: a smoke run, fault injection, bad YAML (resume after a killed
driver: ``test_multinode.py``).

The reference smoke run (2 rounds, 2 Ray Train workers, 2 evaluator actors, one of them killed
mid-round: ``conftest.reference``) is what undisturbed, resumed and multi-node runs must reproduce
exactly (everything is seeded).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

# Columns that legitimately differ between runs: who evaluated a configuration and how long it took.
VOLATILE = ("actor", "seconds")


def _stable(rows):
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.fixture(scope="module")
def runs(smoke_runs):
    return smoke_runs


def test_smoke_run_writes_every_artefact(reference):
    from orchestration.store import RunStore

    run_dir, summary, _ = reference
    store = RunStore(run_dir)
    for name in ("archive.parquet", "rounds.parquet", "config.yaml", "front.png", "hypervolume.png", "report.md"):
        assert (run_dir / name).is_file(), name
    for k in (0, 1):
        assert (store.checkpoint_dir(k) / "trainable.safetensors").is_file()
        assert (store.checkpoint_dir(k) / "optimizer.safetensors").is_file()
        assert store.trainset_path(k).is_file()
        assert (store.search_dir(k) / "search.json").is_file()
    rounds = store.read_rounds()
    assert [r["round"] for r in rounds] == [0, 1]
    for r in rounds:
        assert 0.0 < r["hypervolume"] <= 1.21 + 1e-9  # normalised, reference point at 1.1 × 1.1
        assert r["train_steps"] == 5 and math.isfinite(r["train_loss"]) and r["failed"] == 0
        assert 0 < r["train_loop_seconds"] <= r["train_seconds"]
    archive = store.read_archive()
    # Round 0 scores the initial set (4 allocations); round 1 the selected set plus 2 candidates.
    r0 = [a for a in archive if a["round"] == 0]
    r1 = [a for a in archive if a["round"] == 1]
    assert len(r0) == 4 and {a["role"] for a in r0} == {"train"}
    assert sum(a["role"] == "candidate" for a in r1) == 2
    assert all(a["status"] == "ok" and 0 <= a["accuracy"] <= 1 for a in archive)
    assert all(len(a["knobs"]) == 12 * 5 for a in archive)
    # Both evaluator actors did work, and the replacement of the killed one.
    assert len({a["actor"] for a in archive}) == 3
    # The candidates are new configurations, not re-scored training members.
    cand_ids = {a["config_id"] for a in r1 if a["role"] == "candidate"}
    assert not cand_ids & {a["config_id"] for a in r0}
    report = (run_dir / "report.md").read_text()
    assert "Best configuration per budget" in report and "coalora adapt --checkpoint" in report
    saved = json.loads(store.trainset_path(1).read_text())
    assert saved["candidates"] == [] and len(saved["trainset"]) >= 1
    assert summary["rounds"] == 2


def test_killed_evaluator_is_replaced_and_its_work_redone(reference):
    """An evaluator killed mid-round: a replacement starts and every configuration is still scored
    (that the scores are the undisturbed ones is checked against an undisturbed run, the job of
    ``test_job_submit.py``)."""
    from orchestration.store import RunStore

    run_dir, _, fault = reference
    assert fault["killed_at"] is not None, "the fault was never injected"
    assert fault["spawned"] == 3  # one replacement actor
    r1 = [a for a in RunStore(run_dir).read_archive() if a["round"] == 1]
    assert len(r1) == 6 and all(a["status"] == "ok" for a in r1)
    assert "evaluator-2" in {a["actor"] for a in r1}


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "orchestration" / "run.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lora:\n  rank: 0\n", "lora.rank: must be a positive integer"),
        ("ray:\n  evaluatorz: 2\n", "ray.evaluatorz: unknown key"),
        ("run:\n  rounds: two\n", "run.rounds: expected an integer"),
        ("search:\n  method: bayes\n", "search: method='bayes' is not one of"),
        ("data:\n  name: /nope/reviews.csv\n", "data.name: file not found"),
        ("model: [1, 2\n", "malformed YAML"),
    ],
)
def test_bad_yaml_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, text, message):
    # In-process (run.py checks everything before Ray starts); one case below goes through a real process.
    from orchestration.run import main as run_main

    (tmp_path / "bad.yaml").write_text(text)
    assert run_main(["--config", str(tmp_path / "bad.yaml"), "--set", f"run.out_dir={tmp_path / 'runs'}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "runs").exists()


def test_bad_yaml_through_the_command_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("model: [1, 2\n")
    res = _run_cli("--config", str(tmp_path / "bad.yaml"), "--set", f"run.out_dir={tmp_path / 'runs'}", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "malformed YAML" in lines[0] and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "runs").exists()


def test_existing_run_dir_is_refused(tmp_path, capsys):
    from orchestration.run import main as run_main

    (tmp_path / "runs" / "smoke").mkdir(parents=True)
    (tmp_path / "runs" / "smoke" / "archive.parquet").write_text("keep me")
    for extra in ((), ("--overwrite",)):
        assert run_main(["--smoke-test", "--set", f"run.out_dir={tmp_path / 'runs'}", *extra]) == 2
        # Not marked as a coalora run: neither resumed nor offered to be overwritten.
        assert "is not a coalora run" in capsys.readouterr().err
        assert (tmp_path / "runs" / "smoke" / "archive.parquet").read_text() == "keep me"


def test_report_best_per_budget_picks_lowest_loss_under_budget():
    from orchestration.report import best_per_budget, front_rows

    rows = [{"avg_bits": 2.5, "loss": 0.9}, {"avg_bits": 3.0, "loss": 0.5}, {"avg_bits": 3.0, "loss": 0.7},
            {"avg_bits": 4.0, "loss": 0.6}]
    best = best_per_budget(rows, [2.0, 2.75, 3.5, 8.0])
    assert best[0] is None
    assert best[1]["loss"] == 0.9 and best[2]["loss"] == 0.5 and best[3]["loss"] == 0.5
    assert [(r["avg_bits"], r["loss"]) for r in front_rows(rows)] == [(2.5, 0.9), (3.0, 0.5)]
    assert np.isfinite([r["loss"] for r in rows]).all()


def test_adapt_from_run_picks_best_evaluated_configuration(reference, tmp_path):
    from coalora.cli import main
    from orchestration.report import best_per_budget
    from orchestration.store import RunStore

    run_dir, _, _ = reference
    out = tmp_path / "adapter"
    assert main(["adapt", "--run", str(run_dir), "--budget", "4.0", "--out", str(out)]) == 0
    summary = json.loads((out / "export.json").read_text())
    final = [r for r in RunStore(run_dir).read_archive() if r["round"] == 1 and r["status"] == "ok"]
    (want,) = best_per_budget(final, [4.0])
    assert summary["config_id"] == want["config_id"]
    assert "best evaluated configuration" in summary["chosen_by"]
    assert summary["checkpoint"].endswith("round_1")


def test_evaluate_from_run_scores_its_last_training_set(reference, capsys):
    """`coalora evaluate --run DIR --config trainset/round_1.json` uses the last checkpoint on that set."""
    from coalora.cli import main

    run_dir, _, _ = reference
    trainset = run_dir / "trainset" / "round_1.json"
    assert main(["evaluate", "--run", str(run_dir), "--config", str(trainset), "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    saved = json.loads(trainset.read_text())["trainset"]
    assert len(rows) == len(saved) > 0
    assert all(np.isfinite(r["loss"]) for r in rows)


def test_relative_out_dir_inside_a_jobs_working_dir_is_refused(tmp_path, monkeypatch, capsys):
    """Under `ray job submit` the driver runs in the job's unpacked working_dir, which Ray deletes with the
    job: a relative run.out_dir there would lose the run, so it is one line and exit 2 before Ray starts."""
    from orchestration.run import main as run_main

    job_dir = tmp_path / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    job_dir.mkdir(parents=True)
    monkeypatch.chdir(job_dir)
    assert run_main(["--smoke-test"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "run.out_dir=runs is relative" in line and "which Ray deletes with the job" in line
    assert not (job_dir / "runs").exists()
    assert run_main(["--smoke-test", "--set", "run.out_dir=s3://"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_ctrl_c_during_training_ends_the_run_and_says_how_to_resume(tmp_path, ctrl_c):
    """SIGINT while round 0 trains. Before the fit left the driver's main thread, Ray Train (2.60) took over
    SIGINT there: a Ctrl-C during a fit was swallowed (the run went on to the end), and one after a fit exited
    1 with no message. Now: exit 130 within seconds, one line, and a directory that resumes."""
    import os
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray, like a user's
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "orchestration" / "run.py"), "--smoke-test",
                                 "--set", f"run.out_dir={tmp_path / 'runs'}"], cwd=tmp_path, env=env, stdout=out,
                                stderr=err, text=True)
        try:
            deadline = time.time() + 600
            while "round 1/2 | train:" not in out_path.read_text() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(5)  # Ray Train's fit is under way (its worker group takes longer than this to start)
            assert proc.poll() is None, out_path.read_text()[-3000:] + err_path.read_text()[-3000:]
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)  # it ends; it does not train on
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    said, shown = err_path.read_text(), out_path.read_text()
    assert proc.returncode == 130, said[-3000:] + shown[-3000:]
    run_dir = tmp_path / "runs" / "smoke"
    assert [x for x in said.splitlines() if x.strip()] == [
        f"orchestration/run.py: interrupted: {run_dir} keeps 0 of 2 round(s); continue with: "
        f"python orchestration/run.py --resume {run_dir}"], said[-3000:]
    assert "train done" not in shown and not any(x.startswith("done:") for x in shown.splitlines()), shown
    # The directory is a run that resumes from the start: it passes the checks of --resume.
    res = _run_cli("--resume", str(run_dir), "--check", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resume {run_dir} after 0 of 2 round(s)" in res.stdout, res.stdout


def test_a_failed_run_shows_its_traceback_then_says_how_to_resume(tmp_path):
    """A Ray Train worker killed while round 0 trains (as Ray's memory monitor kills one, with SIGKILL), with
    no retries allowed: exit 1, the traceback, and as the last line what the run directory keeps and the command that
    continues it; the directory passes --resume's checks."""
    import os
    import signal
    import time

    import psutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray: its processes are ours
    out_path, err_path = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-u", str(ROOT / "orchestration" / "run.py"), "--smoke-test",
                                 "--set", f"run.out_dir={tmp_path / 'runs'}", "--set", "ray.max_failures=0",
                                 "--set", "run.steps_per_round=300"],  # ~30 s of steps: time to kill one mid-way
                                cwd=tmp_path, env=env, stdout=out, stderr=err, text=True)
        try:
            driver, killed, deadline = psutil.Process(proc.pid), None, time.time() + 600
            while killed is None and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
                if "train worker 0: memory plan" not in out_path.read_text():
                    continue  # not training yet: a worker killed while Ray starts it is started again
                for child in driver.children(recursive=True):
                    try:
                        if " ".join(child.cmdline()).startswith("ray::RayTrainWorker"):
                            child.send_signal(signal.SIGKILL)
                            killed = child.pid
                            break
                    except psutil.Error:  # it ended between the listing and the look
                        continue
            assert killed is not None, out_path.read_text()[-3000:] + err_path.read_text()[-3000:]
            proc.wait(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    said, shown = err_path.read_text(), out_path.read_text()
    assert proc.returncode == 1, said[-3000:] + shown[-3000:]
    run_dir = tmp_path / "runs" / "smoke"
    lines = [x for x in said.splitlines() if x.strip()]
    assert "Traceback (most recent call last):" in said, said[-3000:]
    assert lines[-1] == (f"orchestration/run.py: the run failed: {run_dir} keeps 0 of 2 round(s); continue with: "
                         f"python orchestration/run.py --resume {run_dir}"), said[-3000:]
    assert not any(x.startswith("done:") for x in shown.splitlines()), shown
    res = _run_cli("--resume", str(run_dir), "--check", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"resume {run_dir} after 0 of 2 round(s)" in res.stdout, res.stdout
