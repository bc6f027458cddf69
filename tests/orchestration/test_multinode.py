"""A multi-node Ray cluster on this machine with its storage in an S3-compatible object store.

``ray.cluster_utils.Cluster`` starts a head with no CPUs and two 2-CPU worker nodes, as a cloud
cluster has; moto's standalone server is the object store, on loopback. The nodes share this
machine's disk, so Ray's own storage check (a marker file visible from the workers) cannot fail
here: the object store is what proves the storage path, and the product's own check (a node-local
run directory on several nodes stops before round 0) is exercised directly.

The driver is a separate process, as under ``ray job submit``: it is killed after round 0 and a new
driver resumes from the ``s3://`` URI. During the resumed round, the node running the training
workers is killed mid-training and a node running an evaluator mid-evaluation (each replaced by a
fresh node, as an autoscaler would): the archive must still equal an undisturbed run's, and
``rounds.parquet`` records the retries. No file of the run and no line of its log holds the object
store's secret key.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.orchestration.conftest import ClusterOnThisMachine
from tests.orchestration.test_run import _stable

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
@pytest.fixture(scope="module")
def s3(s3_server):
    """The runs URI in a bucket of the session's S3 server on loopback."""
    return s3_server("coalora-test")


@pytest.fixture(scope="module")
def cluster(s3):
    """Head with 0 CPUs, two worker nodes with 2 CPUs each (started after the credentials are set, so
    every node's workers can reach the object store)."""
    c = ClusterOnThisMachine({"num_cpus": 2}, {"num_cpus": 2})
    try:
        yield c
    finally:
        c.shutdown()


def _driver(cluster, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "orchestration" / "run.py"), *args], cwd=cwd,
                            env=cluster.driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


class Lines:
    """A driver's output, read as it comes (so the test can act on what the run is doing)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=lambda: self.lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        self.thread.start()

    def wait_for(self, text: str, proc: subprocess.Popen, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert proc.poll() is None or self.thread.is_alive(), "".join(self.lines)[-3000:]
            assert time.time() < deadline, f"never saw {text!r}: " + "".join(self.lines)[-3000:]
            time.sleep(0.2)

    @property
    def text(self) -> str:
        self.thread.join(timeout=60)
        return "".join(self.lines)


def _nodes_running(cluster, actor_class: str) -> list:
    """The worker nodes with a live process of ``actor_class`` (Ray titles it ``ray::<class>...``)."""
    import psutil

    found = []
    for node in list(cluster.cluster.worker_nodes):
        raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
        for p in raylet.children(recursive=True):
            try:
                if f"ray::{actor_class}" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(node)
                    break
            except psutil.Error:
                continue
    return found


def _kill_node_running(cluster, actor_class: str, timeout: float = 300):
    """Kill (no grace) a worker node running ``actor_class`` and add a fresh node, as an autoscaler would."""
    deadline = time.time() + timeout
    while not (nodes := _nodes_running(cluster, actor_class)):
        assert time.time() < deadline, f"no node ever ran {actor_class}"
        time.sleep(0.1)
    cluster.cluster.remove_node(nodes[0], allow_graceful=False)
    cluster.cluster.add_node(num_cpus=2, object_store_memory=120 * 1024**2)


def _rounds_done(run_uri: str) -> int:
    from coalora.storage import open_location

    p = open_location(run_uri) / "rounds.parquet"
    return len(pq.read_table(io.BytesIO(p.read_bytes()))) if p.is_file() else 0


def test_node_local_run_dir_stops_before_round_0(cluster, tmp_path):
    proc = _driver(cluster, "--smoke-test", "--set", f"run.out_dir={tmp_path / 'runs'}", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("orchestration/run.py: error:")]
    assert len(errors) == 1 and "is on this node's disk, but the cluster has 3 node(s)" in errors[0], out[-3000:]
    assert "Traceback" not in out and "round 1/2" not in out
    assert not (tmp_path / "runs").exists()


def test_smoke_run_on_s3_killed_after_round_0_resumes_to_the_same_archive(cluster, s3, reference, tmp_path):
    from coalora.storage import open_location

    base, query = s3.split("?")
    run_uri = f"{base}/mn?{query}"
    proc = _driver(cluster, "--smoke-test", "--set", f"run.out_dir={s3}", "--set", "run.name=mn", cwd=tmp_path)
    try:
        deadline = time.time() + 600
        while _rounds_done(run_uri) < 1:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "round 0 never completed"
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies as a killed job's driver does
        proc.wait(timeout=60)
    first = proc.stdout.read()
    assert "round 1/2 | evaluate: 4/4" in first, first[-3000:]
    assert _rounds_done(run_uri) == 1
    # Whatever the killed round left behind must not leak into the resumed run.
    junk = open_location(run_uri) / "checkpoints" / "round_1" / "junk"
    junk.write_text("partial")

    # A resumed run may take more rounds (recorded in its config.yaml); here it keeps 2.
    proc = _driver(cluster, "--resume", run_uri, "--set", "run.rounds=2", cwd=tmp_path)
    lines = Lines(proc)
    try:
        # A worker prints its memory plan once its training function runs (the round's attempt is counted).
        lines.wait_for("[round 1] train worker", proc)
        _kill_node_running(cluster, "RayTrainWorker")  # mid-training
        # The evaluators' node too, if they were elsewhere: an evaluation takes well under a second here,
        # so the pool must find them dead when it starts rather than race a kill; their calls fail.
        if _nodes_running(cluster, "EvaluatorActor"):
            _kill_node_running(cluster, "EvaluatorActor")
        lines.wait_for("round 2/2 | train done", proc)
        _kill_node_running(cluster, "EvaluatorActor")  # a replacement's node, while the evaluation waits on it
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = lines.text
    assert proc.returncode == 0, out[-4000:]
    assert "resuming" in out and "after 1 complete round(s)" in out
    assert "done: 2 round(s)" in out and "Traceback" not in out
    assert "round 2: training restarted" in out, out[-4000:]

    from orchestration.store import RunStore

    store = RunStore(run_uri)
    ref = RunStore(reference[0])
    assert _stable(store.read_archive()) == _stable(ref.read_archive())
    assert json.loads(store.trainset_path(1).read_text()) == json.loads(ref.trainset_path(1).read_text())
    assert not junk.exists()
    # Every artefact lives in the object store, Ray Train's checkpoints included; nothing on local disk.
    root = open_location(run_uri)
    for name in ("config.yaml", "archive.parquet", "rounds.parquet", "report.md", "front.png", "hypervolume.png"):
        assert (root / name).is_file(), name
    for k in (0, 1):
        assert (store.checkpoint_dir(k) / "trainable.safetensors").is_file()
        assert (store.search_dir(k) / "search.json").is_file()
    assert {p.name for p in store.ray_train_dir.iterdir()} >= {"mn-round0", "mn-round1"}
    assert len(list(store.logs_dir.iterdir())) == 2  # one log per driver session
    assert not (tmp_path / "runs").exists()
    # The trainers ran on the worker nodes (the head has no CPUs) and reached the store from there.
    rows = store.read_rounds()
    assert [r["round"] for r in rows] == [0, 1] and all(r["failed"] == 0 for r in rows)
    # Round 0 ran undisturbed; round 1 survived both nodes and says so.
    assert (rows[0]["train_attempts"], rows[0]["eval_retries"], rows[0]["evaluators_replaced"]) == (1, 0, 0)
    assert rows[1]["train_attempts"] >= 2 and rows[1]["eval_retries"] >= 1 and rows[1]["evaluators_replaced"] >= 1
    archive = store.read_archive()
    keys = [(r["round"], r["role"], r["config_id"]) for r in archive]
    assert len(keys) == len(set(keys)), "an evaluation was recorded twice"
    assert "# resumed " in (root / "config.yaml").read_text().splitlines()[0]

    # The object store's secret key is in no file of the run and no line of the drivers' logs.
    from tests.conftest import S3_CREDENTIALS

    secret = S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"].encode()

    def files(loc):
        for p in loc.iterdir():
            yield from files(p) if p.is_dir() else [p]

    scanned = list(files(root))
    assert len(scanned) > 20 and not [str(p) for p in scanned if secret in p.read_bytes()]
    local_logs = [Path(line.split("log: ", 1)[1].strip()) for line in (first + out).splitlines()
                  if line.startswith("log: ")]
    assert len(local_logs) == 2 and all(secret not in p.read_bytes() for p in local_logs)

    # `coalora adapt` deploys straight from the object store.
    from coalora.cli import main

    out_dir = tmp_path / "adapter"
    assert main(["adapt", "--run", run_uri, "--budget", "4.0", "--out", str(out_dir)]) == 0
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((out_dir / "export.json").read_text())["checkpoint"].split("?")[0].endswith("/mn/checkpoints/round_1")
