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


def _runtime_env() -> dict:
    """The job-wide runtime env this driver adds: forwarded variables and the address-pinning hook.

    Under ``ray job submit`` the job already has a runtime env (``--runtime-env``) and Ray refuses a
    driver's runtime env that sets the same field or variable again, so whatever the job sets wins.
    """
    import json

    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    job = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR, "{}")).get("runtime_env") or {}
    taken = set(job.get("env_vars") or {})
    env: dict = {"env_vars": {k: v for k, v in worker_env().items() if k not in taken}}
    if "worker_process_setup_hook" not in job:
        env["worker_process_setup_hook"] = "orchestration.worker_setup.pin_cluster_address"
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
        runtime_env = _runtime_env()
        if os.environ.get("RAY_ADDRESS"):
            ray.init(logging_config=quiet, runtime_env=runtime_env)  # the cluster this job runs on
        else:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_config=quiet,
                     object_store_memory=None if object_store_mb is None else object_store_mb * 1024**2,
                     runtime_env=runtime_env)
    address = ray.get_runtime_context().gcs_address
    os.environ["RAY_ADDRESS"] = address
    return address
