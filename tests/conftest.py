"""Shared fixtures. Thread and network settings must be in place before torch is imported."""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster for the whole session (``address="local"`` never joins a stale cluster)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024**2,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny random BERT-, Llama- and GPT-2-shaped models (built in code, no files)."""
    from coalora.models import build_tiny_model

    return {kind: build_tiny_model(kind) for kind in ("bert", "llama", "gpt2")}
