"""Join the cluster a job runs on, or start a local Ray; then pin its address everywhere.

Shared by ``run.py`` and ``sweep.py``. The address is pinned in the driver (``RAY_ADDRESS``) and, by
a worker setup hook (:mod:`orchestration.worker_setup`), in every worker of the job: Ray's internal
state queries then never go looking for "the" cluster among other Ray instances on the machine (two
runs at once would find two). The driver's environment passes the variables in ``FORWARDED_ENV`` to
every worker, so offline switches, caches and credentials (read from the environment, never written
to a file) reach the nodes.
"""

from __future__ import annotations

import os

FORWARDED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_TOKEN", "HF_ENDPOINT", "COALORA_CACHE",
                 "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL",
                 "GOOGLE_APPLICATION_CREDENTIALS")


def worker_env() -> dict[str, str]:
    """Environment variables every worker of the job gets (see ``FORWARDED_ENV``)."""
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env["OMP_NUM_THREADS"] = "1"  # torch processes side by side on shared cores
    return env


def connect(num_cpus: int | None = None, object_store_mb: int | None = None) -> str:
    """Connect this driver to Ray and return the cluster's GCS address.

    Args:
        num_cpus: logical CPUs of a local cluster (ignored when joining ``RAY_ADDRESS``).
        object_store_mb: object store of a local cluster.
    """
    import ray

    if not ray.is_initialized():
        # Ray's own INFO/WARNING lines are for the log (see orchestration.console); ERROR is enough here.
        quiet = ray.LoggingConfig(log_level="ERROR")
        runtime_env = {"env_vars": worker_env(),
                       "worker_process_setup_hook": "orchestration.worker_setup.pin_cluster_address"}
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_config=quiet, runtime_env=runtime_env)  # the cluster this job runs on
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_config=quiet,
                     object_store_memory=None if object_store_mb is None else object_store_mb * 1024**2,
                     runtime_env=runtime_env)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    return address
