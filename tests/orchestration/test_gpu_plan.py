"""A one-"GPU" cluster: Ray schedules ``num_gpus`` on a node that declares a GPU this machine lacks.

The smoke run with ``use_gpu``, one training worker holding the GPU and two evaluators at half a GPU
each cannot hold training and evaluation at once: the evaluators give the GPU back while training
runs, the run finishes, and since torch here has no CUDA the compute falls back to CPU and the run
says so once. A sweep trial that reserves the GPU computes on the device its reservation resolves to.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from tests.orchestration.conftest import ClusterOnThisMachine

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def one_gpu_cluster():
    c = ClusterOnThisMachine({"num_cpus": 2, "num_gpus": 1})
    try:
        yield c
    finally:
        c.shutdown()


def _run(cluster, script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "orchestration" / script), *args], cwd=cwd,
                          env=cluster.driver_env(), capture_output=True, text=True, timeout=900)


# The nodes of this cluster share this machine's disk: a mount every node has, declared with run.shared_fs.
SHARED = ("--set", "run.shared_fs=true")


def test_smoke_run_on_one_gpu_releases_evaluators_and_falls_back_to_cpu_once(one_gpu_cluster, tmp_path):
    res = _run(one_gpu_cluster, "run.py", "--smoke-test", "--set", f"run.out_dir={tmp_path / 'runs'}", *SHARED,
               "--set", "ray.num_workers=1", "--set", "ray.use_gpu=true", "--set", "ray.gpus_per_worker=1",
               "--set", "ray.gpus_per_evaluator=0.5", "--set", "ray.evaluators=2", cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "evaluators are stopped during training and restarted after it" in out
    if not torch.cuda.is_available():
        assert out.count("has no usable CUDA device: training and evaluation compute on CPU") == 1, out[-4000:]
    assert "done: 2 round(s)" in out and "Traceback" not in out
    rounds = pq.read_table(tmp_path / "runs" / "smoke" / "rounds.parquet").to_pylist()
    assert [r["round"] for r in rounds] == [0, 1] and all(r["failed"] == 0 for r in rounds)


def test_plan_that_can_never_fit_fails_fast(one_gpu_cluster, tmp_path):
    res = _run(one_gpu_cluster, "run.py", "--smoke-test", "--set", f"run.out_dir={tmp_path / 'runs'}", *SHARED,
               "--set", "ray.use_gpu=true", "--set", "ray.num_workers=2", cwd=tmp_path)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    (line,) = [x for x in res.stderr.splitlines() if x.startswith("orchestration/run.py: error:")]
    assert "training phase needs 1 CPU + 2 GPU" in line and "can never hold it" in line
    assert "Traceback" not in res.stderr and not (tmp_path / "runs").exists()


def test_sweep_trial_that_reserves_a_gpu_computes_on_it(one_gpu_cluster, tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {ROOT / 'configs' / 'smoke.yaml'}\nname: gpu-sweep\ngrid:\n  train.method: [per-config]\n"
                     "  eval.budgets: [[4.0]]\ncpus_per_trial: 1\ngpus_per_trial: 1\nmax_concurrent: 1\n")
    res = _run(one_gpu_cluster, "sweep.py", "--config", str(sweep), "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (row,) = pq.read_table(tmp_path / "out" / "gpu-sweep" / "sweep.parquet").to_pylist()
    assert row["gpu_ids"] == "0"  # the trial held the node's GPU ...
    assert row["device"] == ("cuda:0" if torch.cuda.is_available() else "cpu")  # ... and computed where it could
