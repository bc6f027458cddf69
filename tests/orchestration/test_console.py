"""The driver's console: product lines once each on the terminal, Ray's lines only in the log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def _run(code: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "s.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=dict(os.environ, PYTHONPATH=os.getcwd()))


CODE = """
    import logging, os, sys, warnings
    sys.path.insert(0, {root!r})
    from orchestration.console import Console, MARK
    verbose = len(sys.argv) > 1
    with Console({log!r}, verbose=verbose) as c:
        c.say("round 1/2 | train: 4 configurations")
        print("Requesting resources: {{'CPU': 0.5}} * 2", flush=True)
        os.write(2, b"[2026 E 1 2] core_worker.cc:2465: PreemptionWatcher chatter\\n")
        os.write(1, b"(RayTrainWorker pid=7) " + MARK.encode() + b"[round 0] train step 5/5 loss 0.69\\n")
        os.write(2, MARK.encode() + b"[round 0] train step 5/5 loss 0.69\\n")  # Train V2 forwards it again
        os.write(1, MARK.encode() + b"A" + MARK.encode() + b"B\\n")  # two writers glued into one line
        logging.getLogger("coalora.allocation").warning("HiGHS hit its time limit")
        logging.getLogger("coalora.allocation").warning("HiGHS hit its time limit")
        logging.getLogger("coalora.allocation").info("node limit reached")
        warnings.warn_explicit("not p.d., added jitter", UserWarning, "/x/linear_operator/cholesky.py", 41)
    print("after")
    raise SystemExit(3)
"""


def test_console_routes_lines(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    log = tmp_path / "run.log"
    res = _run(CODE.format(root=root, log=str(log)), tmp_path)
    assert res.returncode == 3
    out = (res.stdout + res.stderr).splitlines()
    assert out.count("[round 0] train step 5/5 loss 0.69") == 1
    assert "round 1/2 | train: 4 configurations" in out and "A" in out and "B" in out
    assert out.count("warning: HiGHS hit its time limit") == 1
    assert "after" in out  # the terminal is back once the console closes
    for chatter in ("Requesting resources", "core_worker.cc", "jitter", "node limit"):
        assert not any(chatter in line for line in out), chatter
    text = log.read_text()
    for line in ("Requesting resources", "core_worker.cc:2465", "not p.d., added jitter", "node limit reached",
                 "round 1/2 | train: 4 configurations"):
        assert line in text, line
    # --verbose shows Ray's lines too.
    res = _run(CODE.format(root=root, log=str(tmp_path / "v.log")), tmp_path, "verbose")
    assert "core_worker.cc:2465" in res.stdout + res.stderr
