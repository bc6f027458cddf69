"""Ray processes a killed driver left behind, found again by the next run of the same run directory.

A driver that starts its own local Ray is the parent of that Ray (the GCS, the raylet, the dashboard
and runtime-env agents, and through the raylet every worker). Killed with ``SIGKILL``, it cannot stop
them, and some outlive it (a worker, the agents, which may ignore ``SIGTERM``). So the driver records
its descendants in ``<run>/ray_processes.json`` (host, process id, start time, name) whenever the set
changes, and the next run of that directory ends the recorded ones that still run: only a process
with the same id *and* the same start time on the same host, so a recycled process id is never hit.

Find them by hand: ``cat <run>/ray_processes.json`` lists them; ``ps -o pid,lstart,cmd -p <pid>``
shows one; ``kill <pid>`` (then ``kill -9 <pid>``) ends it.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any, Callable

import psutil

from coalora.errors import StorageError
from coalora.pipeline.rundir import PROCESSES as RECORD
from coalora.storage import Location


def descendants(pid: int | None = None) -> list[dict[str, Any]]:
    """This process's descendants (every process it started, and theirs): ``[{pid, started, name}]``."""
    rows = []
    for p in psutil.Process(pid or os.getpid()).children(recursive=True):
        try:
            rows.append({"pid": p.pid, "started": p.create_time(), "name": " ".join(p.cmdline()[:2])[:120]})
        except psutil.Error:  # it ended while we looked
            continue
    return rows


class ProcessRecord:
    """Keeps ``<run>/ray_processes.json`` up to date with the driver's descendants.

    Processes seen once stay recorded for the session (a worker that ended is harmless to list, and
    one that is merely out of sight must still be found later).
    """

    def __init__(self, run_dir: Location) -> None:
        self.path = run_dir / RECORD
        self.seen: dict[tuple[int, float], dict[str, Any]] = {}

    def update(self) -> None:
        """Record the current descendants (best effort: a record is not worth a failed run)."""
        new = [p for p in descendants() if (p["pid"], p["started"]) not in self.seen]
        if not new and self.seen:
            return
        for p in new:
            self.seen[(p["pid"], p["started"])] = p
        doc = {"host": socket.gethostname(), "driver": os.getpid(), "processes": list(self.seen.values())}
        try:
            self.path.write_text(json.dumps(doc, indent=1) + "\n")
        except (OSError, StorageError):
            pass


def end_leftovers(run_dir: Location, say: Callable[[str], None] = print, grace_s: float = 5.0) -> list[int]:
    """End the processes an earlier, killed session of ``run_dir`` recorded that still run here.

    Returns the ids of the processes ended. A record from another host, or one that cannot be read,
    ends nothing.
    """
    path = run_dir / RECORD
    try:
        if not path.is_file():
            return []
        doc = json.loads(path.read_text())
        if doc.get("host") != socket.gethostname():
            return []
        recorded = [(int(p["pid"]), float(p["started"])) for p in doc.get("processes", [])]
    except (OSError, StorageError, ValueError, KeyError, TypeError, AttributeError):
        return []
    alive = []
    for pid, started in recorded:
        if pid == os.getpid():
            continue
        try:
            proc = psutil.Process(pid)
            # Start times are floats from the same clock; equal to the recorded one means the same process.
            # A zombie has ended already (its parent has yet to reap it).
            if abs(proc.create_time() - started) < 1e-3 and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
        except psutil.Error:
            continue
    if not alive:
        return []
    say(f"ending {len(alive)} process(es) an earlier, killed session of this run left running: "
        f"{' '.join(str(p.pid) for p in alive)}")
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=grace_s)
    for p in still:  # ignored SIGTERM
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(still, timeout=grace_s)
    return [p.pid for p in alive]
