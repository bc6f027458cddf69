"""Processes a killed driver left behind are ended by the next run of the same run directory.

A real process tree: a "driver" starts a child that ignores SIGTERM (as Ray's agents did), records
its descendants the way ``run.py`` does, and is killed with SIGKILL; the child outlives it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil

from coalora.storage import open_location
from orchestration.leftovers import RECORD, end_leftovers

ROOT = Path(__file__).resolve().parents[2]

DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    from coalora.storage import open_location
    from orchestration.leftovers import ProcessRecord
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    child.stdout.readline()
    ProcessRecord(open_location(sys.argv[1])).update()
    print(child.pid, flush=True)
    time.sleep(600)
""")


def _orphan(run: Path) -> psutil.Process:
    """Start the driver, wait for its record, kill it: returns the child it left running."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(run)], stdout=subprocess.PIPE, text=True, env=env)
    child = psutil.Process(int(driver.stdout.readline()))
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    time.sleep(0.2)
    assert child.is_running() and child.status() != psutil.STATUS_ZOMBIE, "the child should outlive the driver"
    return child


def test_a_killed_drivers_leftovers_are_ended_by_the_next_session(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    child = _orphan(run)
    try:
        record = json.loads((run / RECORD).read_text())
        assert child.pid in [p["pid"] for p in record["processes"]]
        lines: list[str] = []
        ended = end_leftovers(open_location(run), say=lines.append, grace_s=1.0)
        assert ended == [child.pid]
        assert lines == [f"ending 1 process(es) an earlier, killed session of this run left running: {child.pid}"]
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE  # SIGTERM ignored: killed
        assert end_leftovers(open_location(run), say=lines.append) == []  # nothing twice
    finally:
        if child.is_running():
            child.kill()


def test_a_recycled_process_id_or_another_host_is_never_touched(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    me = psutil.Process()
    # This very process under a wrong start time (its id reused by someone else), and a record from elsewhere.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        p = psutil.Process(sleeper.pid)
        doc = {"host": __import__("socket").gethostname(), "driver": 1,
               "processes": [{"pid": p.pid, "started": p.create_time() - 5.0, "name": "x"},
                             {"pid": me.pid, "started": me.create_time(), "name": "pytest"}]}
        (run / RECORD).write_text(json.dumps(doc))
        assert end_leftovers(open_location(run), say=lambda s: None) == []
        doc["host"] = "another-host"
        doc["processes"][0]["started"] = p.create_time()
        (run / RECORD).write_text(json.dumps(doc))
        assert end_leftovers(open_location(run), say=lambda s: None) == []
        assert p.is_running()
        (run / RECORD).write_text("{not json")
        assert end_leftovers(open_location(run), say=lambda s: None) == []
    finally:
        sleeper.kill()
        sleeper.wait()
