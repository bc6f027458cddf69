"""`ray start --head` on loopback with token authentication, then `ray job submit -- python
orchestration/run.py --smoke-test` with that token; a client without it is refused.

Hermetic: the test makes its own token in a temporary directory (``RAY_AUTH_TOKEN_PATH``) and runs
every Ray command with an empty ``HOME``, so nothing depends on a token that an earlier ``ray.init()``
on this machine left in ``~/.ray/auth_token`` (Ray 2.60's ``ray start --head`` turns token
authentication on only when a token exists, or when ``RAY_AUTH_MODE=token`` says so and one is given).

The head is started with its own temporary directory; at the end only the processes of that head
(found by that directory in their command lines, and their children) are stopped, never `ray stop`
(which would kill every Ray cluster on the machine) outside CI.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _head_processes(temp_dir: str) -> list:
    import psutil

    roots = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in part for part in (p.info["cmdline"] or [])):
                roots.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    procs = {p.pid: p for p in roots}
    for p in roots:
        try:
            for c in p.children(recursive=True):
                procs[c.pid] = c
        except psutil.NoSuchProcess:
            continue
    return list(procs.values())


def _stop_head(temp_dir: str) -> None:
    import psutil

    procs = _head_processes(temp_dir)
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    # Measured: the GCS server and the autoscaler's monitor outlive a SIGTERM by more than 20 s once the rest
    # of the head is gone (each waits on the others), so waiting longer than the rest need is idle suite time.
    _, alive = psutil.wait_procs(procs, timeout=3)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _clean_env(home: Path) -> dict[str, str]:
    """This process's environment without any Ray token setting, with an empty HOME."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                                                            "RAY_ADDRESS")}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1")
    return env


@pytest.fixture()
def ray_head(tmp_path):
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    dash = free_port()
    token_path = tmp_path / "token" / "auth_token"
    token_path.parent.mkdir()
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    env = dict(_clean_env(tmp_path / "home"), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path))
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
           "--num-cpus=2", f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dash}", "--disable-usage-stats",
           # Its own job agent port: another Ray on this machine (the suite's in-process one) holds the default.
           f"--dashboard-agent-listen-port={free_port()}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert res.returncode == 0, res.stderr[-2000:]
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_smoke_test_succeeds(ray_head, reference, tmp_path):
    """The documented command, as a user submits it: it succeeds, and the run, undisturbed and seeded,
    equals the reference run (tests/conftest.py), whose killed evaluator therefore lost nothing."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    from orchestration.store import RunStore
    from tests.orchestration.test_run import _stable

    address, env = ray_head
    out = tmp_path / "runs"
    # The client sends the token from RAY_AUTH_TOKEN_PATH (env carries RAY_AUTH_MODE=token and the path).
    job_id = f"coalora-smoke-{os.getpid()}-{int(time.time())}"
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--submission-id", job_id,
              "--working-dir", str(ROOT),
              "--runtime-env", str(ROOT / "cluster" / "runtime_env.yaml"), "--no-wait", "--",
              "python", "orchestration/run.py", "--smoke-test", "--set", f"run.out_dir={out}"]
    for _ in range(60):  # right after `ray start` the head's job agent may not be up yet
        res = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
        if res.returncode == 0 or "No available agent" not in res.stdout + res.stderr:
            break
        time.sleep(3)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    # Waiting is polled over HTTP from this process with the same token: a `ray job status` process every
    # few seconds would cost a Ray import each (about 1.5 CPU-seconds) for the two minutes the job runs.
    token = Path(env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    client = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    status, deadline = client.get_job_status(job_id), time.time() + 900
    while not status.is_terminal() and time.time() < deadline:
        time.sleep(1)
        status = client.get_job_status(job_id)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, f"{status}: {logs[-3000:]}"
    assert "done: 2 round(s)" in logs
    assert (out / "smoke" / "rounds.parquet").is_file() and (out / "smoke" / "report.md").is_file()
    assert reference[2]["killed_at"] is not None
    assert _stable(RunStore(out / "smoke").read_archive()) == _stable(RunStore(reference[0]).read_archive())
    # A client without the token, or with another one, is refused by the head's job API.
    for who, extra in (("no token", {}), ("a wrong token", {"RAY_AUTH_MODE": "token",
                                                          "RAY_AUTH_TOKEN": secrets.token_hex(32)})):
        bare = dict(_clean_env(tmp_path / "stranger"), **extra)
        res = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=bare,
                             capture_output=True, text=True, timeout=60)
        said = (res.stdout + res.stderr).lower()
        assert res.returncode != 0, f"{who}: the job API answered: {said[-500:]}"
        assert "token" in said or "authentication" in said or "401" in said or "403" in said, (who, said[-1000:])
        assert job_id not in said, who
