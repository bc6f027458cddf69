"""Fixtures shared by the orchestration tests: a multi-node cluster on this machine.

The reference smoke run that other runs must reproduce (``reference``, ``smoke_config``) lives in
``tests/conftest.py``: the fuzz suite uses it too.
"""

from __future__ import annotations


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
        # The GCS checks each raylet every second instead of every 3 s: a killed node (the multi-node test
        # kills two or three) is declared dead after 5 failed checks, measured 15 s by default and under 7.4 s
        # so. A live node under load still has 5 checks of the default 10 s timeout before it is given up.
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": small,
            "_system_config": {"health_check_period_ms": 1000}})
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
