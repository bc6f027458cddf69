"""benchmarks/studylib/runner.py: reusing finished commands without losing them from the manifest, and
running commands side by side (--jobs)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from tests.benchmarks.studylib.conftest import study_in

ROOT = Path(__file__).resolve().parents[3]


def test_reuse_records_a_finished_log_once(tmp_path, monkeypatch):
    st = study_in(tmp_path)
    (st.logs / "train-x.log").write_text(f"$ {tmp_path}/.venv/bin/python -m coalora.cli train --out runs/x\n"
                                         "step 10 ...\n# exit 0 after 42 s\n")
    st.reuse("train-x.log")
    st.reuse("train-x.log")
    cmds = json.loads(st.manifest_path.read_text())["commands"]
    assert cmds == [{"command": ".venv/bin/python -m coalora.cli train --out runs/x", "seconds": 42.0,
                     "log": "runs/study/logs/train-x.log"}]

def test_reuse_ignores_failed_and_missing_logs(tmp_path, monkeypatch):
    st = study_in(tmp_path)
    (st.logs / "bad.log").write_text("$ python x\nTraceback ...\n# exit 1 after 3 s\n")
    (st.logs / "cut.log").write_text("$ python y\nstep 10\n")
    for log in ("bad.log", "cut.log", "missing.log"):
        st.reuse(log)
    assert st.manifest["commands"] == []

def test_run_all_starts_nothing_after_a_failure_and_raises_it_once_the_running_calls_end(tmp_path, monkeypatch):
    """``--jobs 2``: a command fails while another runs; the running one finishes (a rerun reuses it), the
    queued ones never start, and the failure is what the part raises. With one job, calls run in order."""
    import threading
    import time

    st = study_in(tmp_path)
    ran, second_started = [], threading.Event()

    def fails():
        second_started.wait(10)
        raise SystemExit("study: command failed")

    def slow():
        second_started.set()
        time.sleep(0.3)
        ran.append("slow")
        return "slow"

    st.jobs = 2
    with pytest.raises(SystemExit, match="command failed"):
        st.run_all({"a": fails, "b": slow, "c": lambda: ran.append("c"), "d": lambda: ran.append("d")})
    assert ran == ["slow"]
    assert st.run_all({"x": lambda: 1, "y": lambda: 2}) == {"x": 1, "y": 2}
    st.jobs = 1
    order = []
    assert st.run_all({k: functools.partial(order.append, k) for k in "cab"}) == {"c": None, "a": None, "b": None}
    assert order == ["c", "a", "b"]

def test_side_by_side_commands_point_at_their_logs_instead_of_echoing(tmp_path, monkeypatch, capsys):
    """With ``--jobs 2`` a command's output goes to its log only (two progress bars would interleave): the
    console says where to follow it and when it ended; the manifest records it like any other."""
    import sys

    st = study_in(tmp_path)
    st.jobs = 2
    out = st.sh([sys.executable, "-c", "import sys; print('rows'); print('step 3/4', file=sys.stderr)"], "one.log",
                echo=True)
    said = capsys.readouterr().out
    assert out == "rows\n"
    assert f"   its progress: tail -f {st.logs / 'one.log'}\n" in said and "   done in 0 s: one.log\n" in said
    assert "    step 3/4" not in said and "step 3/4\n" in (st.logs / "one.log").read_text()
    assert [c["log"] for c in json.loads(st.manifest_path.read_text())["commands"]] == ["runs/study/logs/one.log"]
    st.jobs = 1
    st.sh([sys.executable, "-c", "import sys; print('step 4/4', file=sys.stderr)"], "two.log", echo=True)
    said = capsys.readouterr().out
    assert "    step 4/4\n" in said and "tail -f" not in said
