"""Run in every Ray worker process of a coalora job (``runtime_env["worker_process_setup_hook"]``).

Ray Train's placement-group cleaner, a detached actor, queries the state API without an address;
with no ``RAY_ADDRESS`` in its environment Ray then looks for "the" cluster among every Ray instance
on the machine, and with two runs on one machine it raises "Found multiple active Ray instances".
Pinning the address of the cluster this worker belongs to means nothing inside Ray goes looking.
"""

from __future__ import annotations

import os


def pin_cluster_address() -> None:
    """Set ``RAY_ADDRESS`` to this worker's own cluster (the GCS it is connected to)."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
