"""The resource plan against a cluster's nodes and autoscaler groups: exact, no Ray needed."""

from __future__ import annotations

import pytest

from coalora.errors import PlanError
from coalora.pipeline.config import load_config
from coalora.storage import open_location
from orchestration.loop import check_storage
from orchestration.resources import Bundle, Capacity, ResourcePlan, check_plan, local_cluster_cpus


def _plan(**ray):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    return load_config(root / "configs" / "smoke.yaml", [f"ray.{k}={v}" for k, v in ray.items()]).ray


ONE_GPU_HOST = Capacity(nodes=[{"CPU": 0.0}, {"CPU": 4.0, "GPU": 1.0}])


def test_one_gpu_host_releases_evaluators_during_training():
    r = _plan(num_workers=1, use_gpu="true", gpus_per_worker=1, evaluators=2, gpus_per_evaluator=0.5)
    # Training takes the GPU, evaluation the two halves of it: never both at once.
    assert check_plan(ResourcePlan.of(r), ONE_GPU_HOST, "auto") is False
    assert check_plan(ResourcePlan.of(r), ONE_GPU_HOST, "release") is False
    with pytest.raises(PlanError, match="evaluators_during_training is keep.*2 GPU"):
        check_plan(ResourcePlan.of(r), ONE_GPU_HOST, "keep")


def test_plan_that_fits_keeps_evaluators():
    r = _plan(num_workers=1, use_gpu="true", evaluators=2, gpus_per_evaluator=0.5)
    two = Capacity(nodes=[{"CPU": 0.0}, {"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0, "GPU": 1.0}])
    assert check_plan(ResourcePlan.of(r), two, "auto") is True


def test_more_gpu_workers_than_gpus_fails_fast_with_one_line():
    r = _plan(num_workers=2, use_gpu="true", gpus_per_worker=1)
    with pytest.raises(PlanError) as e:
        check_plan(ResourcePlan.of(r), ONE_GPU_HOST, "auto")
    msg = str(e.value)
    assert "\n" not in msg
    assert "training phase needs 1 CPU + 2 GPU" in msg and "2 node(s) with 4 CPU, 1 GPU" in msg


def test_a_worker_no_node_can_hold():
    r = _plan(num_workers=1, cpus_per_worker=8)
    with pytest.raises(PlanError, match="needs 8 CPU \\+ 0 GPU on one node"):
        check_plan(ResourcePlan.of(r), ONE_GPU_HOST, "auto")


def test_autoscaler_maximum_counts_and_packing_is_per_node():
    r = _plan(num_workers=4, use_gpu="true", gpus_per_worker=1, cpus_per_worker=4, evaluators=2,
              gpus_per_evaluator=0.5, cpus_per_evaluator=2)
    head_only = Capacity(nodes=[{"CPU": 0.0}], groups=[({"CPU": 8.0, "GPU": 1.0}, 4)])
    # 4 workers fill 4 GPU nodes; evaluators fit only when training is over.
    assert check_plan(ResourcePlan.of(r), head_only, "auto") is False
    head_only.groups = [({"CPU": 8.0, "GPU": 1.0}, 5)]
    assert check_plan(ResourcePlan.of(r), head_only, "auto") is True
    # Totals would fit (6 GPUs) but one process needs a whole GPU on one node: 12 half-GPU nodes cannot hold it.
    halves = Capacity(nodes=[{"CPU": 8.0, "GPU": 0.5}] * 12)
    with pytest.raises(PlanError, match="no node of the cluster has that much"):
        check_plan(ResourcePlan.of(r), halves, "auto")
    assert "autoscaler maximum 40 CPU, 5 GPU" in head_only.describe()


def test_bundle_text_and_local_cpus():
    assert str(Bundle("evaluator(s)", 2, 0.5, 0.25)) == "2 evaluator(s) × (0.5 CPU + 0.25 GPU)"
    r = _plan()  # smoke: 2 × 0.5 + 2 × 0.5 + 0 = 2 logical CPUs
    assert local_cluster_cpus(r, 1) == 2 and local_cluster_cpus(r, 16) == 16


def test_node_local_run_dir_on_several_nodes_is_refused(tmp_path):
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "smoke.yaml")
    local = open_location(tmp_path / "runs" / "smoke")
    check_storage(local, cfg, Capacity(nodes=[{"CPU": 2.0}]))  # one machine: fine
    for cap in (Capacity(nodes=[{"CPU": 0.0}, {"CPU": 2.0}, {"CPU": 2.0}]),
                Capacity(nodes=[{"CPU": 0.0}], groups=[({"CPU": 8.0, "GPU": 1.0}, 2)])):
        with pytest.raises(Exception, match="is on this node's disk.*s3://bucket/path"):
            check_storage(local, cfg, cap)
    shared = load_config(root / "configs" / "smoke.yaml", ["run.shared_fs=true"])
    check_storage(local, shared, Capacity(nodes=[{"CPU": 0.0}, {"CPU": 2.0}]))
    assert not (tmp_path / "runs").exists()
