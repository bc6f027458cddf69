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
    """The smoke run (2 rounds, 2 Ray Train workers, 2 evaluators) on the local Ray: ``(run_dir, summary)``.

    Everything is seeded, so a resumed, fault-injected or multi-node run of the same configuration
    must end with the same archive.
    """
    from orchestration.loop import Orchestrator

    cfg = smoke_config(smoke_runs, "ref")
    summary = Orchestrator(cfg, smoke_runs / "ref", say=lambda s: None).run()
    return smoke_runs / "ref", summary
