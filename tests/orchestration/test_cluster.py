"""Cluster launcher YAMLs pass Ray's own schema; the job runtime env keeps working_dir small;
every experiment YAML validates and names its launch command."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_yaml_validates_with_rays_schema(name):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / name).read_text())
    validate_config(fillout_defaults(copy.deepcopy(cfg)))
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # nothing scheduled on the head
    workers = [v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert workers and all(w["max_workers"] >= 1 and w.get("min_workers", 0) == 0 for w in workers)


def test_schema_validation_can_fail():
    import jsonschema
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    cfg["available_node_types"]["ray.worker.gpu"]["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fillout_defaults(cfg))


def test_runtime_env_excludes_heavy_paths():
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    for path in (".git", ".venv", "runs"):
        assert path in env["excludes"]
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1"


def test_kuberay_rayjob_points_at_a_real_config():
    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "orchestration/run.py"]
    assert (ROOT / entry[entry.index("--config") + 1]).is_file()
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("sweep-"))
SWEEPS = sorted((ROOT / "configs").glob("sweep-*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_validates_and_documents_its_command(path, monkeypatch):
    from coalora.config import load_config

    monkeypatch.chdir(ROOT)
    header = path.read_text().splitlines()[:8]
    assert any(("orchestration/run.py" in line or "benchmarks/" in line) and line.startswith("#") for line in header)
    load_config(path)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_sweep_validates(path, monkeypatch):
    from orchestration.sweep import expand_grid, load_sweep

    monkeypatch.chdir(ROOT)
    assert "orchestration/sweep.py" in path.read_text().splitlines()[1]
    cfg = load_sweep(path)
    assert cfg.optuna is not None or len(expand_grid(cfg.grid)) >= 2
