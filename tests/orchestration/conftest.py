"""Fixtures shared by the orchestration tests: one undisturbed smoke run that other runs must reproduce."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_config(out_dir, name: str, *extra: str):
    from coalora.config import load_config

    return load_config(SMOKE, [f"run.out_dir={out_dir}", f"run.name={name}", *extra])


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="session")
def reference(ray_local, smoke_runs):
    """The smoke run (2 rounds, 2 Ray Train workers, 2 evaluators) on the local Ray, with a fault: one
    evaluator is killed half-way through round 1's evaluation. Returns ``(run_dir, summary, fault)``.

    Everything is seeded, so every other run of this configuration (undisturbed, resumed after a killed
    driver, on several nodes) must end with the same archive; an undisturbed one equal to this is what
    shows the killed evaluator lost nothing (``test_concurrent.py``).
    """
    import ray

    from orchestration.loop import Orchestrator

    fault: dict = {"killed_at": None}
    orch = None

    def kill_one(k, done, total):
        if k == 1 and fault["killed_at"] is None and done < total:
            ray.kill(orch.pool.actors[0])
            fault["killed_at"] = done

    cfg = smoke_config(smoke_runs, "ref")
    orch = Orchestrator(cfg, smoke_runs / "ref", say=lambda s: None, on_eval_progress=kill_one)
    summary = orch.run()
    fault["spawned"] = orch.pool.spawned
    return smoke_runs / "ref", summary, fault


class ClusterOnThisMachine:
    """A ``ray.cluster_utils.Cluster`` (a head with no CPUs plus worker nodes, all on this machine) and
    the environment a driver process needs to join it.

    Nodes started here read the token-authentication mode from this process's environment at start;
    an in-process ``ray.init()`` (the ``ray_local`` fixture) may turn ``RAY_AUTH_MODE=token`` on later,
    and a driver whose mode differs from the cluster's loses its actors. So the mode is recorded at
    start and handed to every driver.
    """

    def __init__(self, *worker_nodes: dict) -> None:
        import os

        from ray.cluster_utils import Cluster

        small = 120 * 1024**2
        self.auth_mode = os.environ.get("RAY_AUTH_MODE", "disabled")
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                                     "object_store_memory": small})
        try:
            for node in worker_nodes:
                self.cluster.add_node(object_store_memory=small, **node)
            self.cluster.wait_for_nodes()
        except BaseException:
            self.cluster.shutdown()
            raise

    @property
    def address(self) -> str:
        return self.cluster.address

    def driver_env(self) -> dict[str, str]:
        import os

        return dict(os.environ, RAY_ADDRESS=self.address, RAY_AUTH_MODE=self.auth_mode, OMP_NUM_THREADS="1")

    def shutdown(self) -> None:
        self.cluster.shutdown()
