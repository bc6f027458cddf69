"""The parallel error table (orchestration/tables.py): CPU tasks, and GPU-scheduled tasks on a Ray
cluster that declares a GPU this machine does not have (the tasks fall back to their CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

# Run in a fresh interpreter: the suite's session Ray (tests/conftest.py) declares no GPU, and a
# process cannot start a second Ray while one is up. It prints one JSON line for the test to check.
_GPU_CLUSTER_SCRIPT = r"""
import json, sys
import numpy as np
import ray
import torch

torch.set_num_threads(1)
from coalora.allocation.error_tables import ErrorTableCache, error_table, table_key
from coalora.allocation.sensitivity import target_weights
from coalora.model.loading import load_model
from coalora.core.space import QuantSpace
from orchestration.tables import _compute_table, cluster_has_gpus, error_table_parallel

model = load_model("tiny-bert").model
# Every bits, scale-bits and block value, one s1 dtype and block2: 48 options (the default has 432).
space = QuantSpace.from_model(model, options={"scale2_dtype": ("bf16",), "block2": (64,)})
expected = error_table(target_weights(model, space), space, progress=None)  # in-process, on CPU
ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
         object_store_memory=200 * 1024**2, log_to_driver=False)
try:
    err, results = _compute_table(target_weights(model, space), space, 0.25, progress=None)
    cached = error_table_parallel("tiny-bert", model, space, progress=None, gpu_fraction=0.25)
    out = {
        "has_gpus": cluster_has_gpus(),
        "cuda": torch.cuda.is_available(),
        "equal": bool(np.array_equal(err, expected)),
        "max_rel": float(np.max(np.abs(err - expected) / np.abs(expected))),
        "cached_equal": bool(np.array_equal(cached, expected)),
        "in_cache": bool(np.array_equal(ErrorTableCache().load(table_key("tiny-bert", target_weights(model, space)), space),
                                        expected)),
        "shape": list(err.shape),
        "devices": sorted({r.device for r in results}),
        "gpu_ids": sorted({",".join(r.gpu_ids) for r in results}),
    }
finally:
    ray.shutdown()
print("RESULT " + json.dumps(out))
"""


def test_gpu_scheduled_table_equals_cpu_table(tmp_path: Path) -> None:
    """Tasks that ask for a quarter GPU each on a cluster declaring one GPU are all given GPU 0. Without
    CUDA (this machine) they compute on CPU, and the table (and its cached copy) equals
    ``coalora.allocation.error_tables.error_table`` computed in-process on CPU, bit for bit; with CUDA, to 1e-12."""
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, COALORA_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1",
               RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _GPU_CLUSTER_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT "):])
    assert out["has_gpus"] is True
    assert out["shape"] == [12, 48]  # tiny-bert: 12 target matrices
    assert out["gpu_ids"] == ["0"]  # every task held the declared GPU
    assert out["devices"] == (["cuda"] if out["cuda"] else ["cpu"])
    if out["cuda"]:  # a real GPU: float64 sums in another order, equal up to rounding
        assert out["max_rel"] < 1e-12
    else:
        assert out["equal"] is True and out["max_rel"] == 0.0
        assert out["cached_equal"] is True and out["in_cache"] is True


def test_cpu_cluster_table_equals_in_process_table(ray_local, tiny_models, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """On the suite's GPU-less Ray the tasks ask for no GPU, hold none and compute on CPU."""
    import torch

    from coalora.allocation.error_tables import error_table
    from coalora.allocation.sensitivity import target_weights
    from coalora.core.space import QuantSpace
    from orchestration.tables import _compute_table, cluster_has_gpus, error_table_parallel

    model = tiny_models["bert"]
    space = QuantSpace.from_model(model, options={"bits": (2, 4), "scale_bits": (8,), "block": (16, 64)})
    torch.set_num_threads(1)
    expected = error_table(target_weights(model, space), space, progress=None)
    assert not cluster_has_gpus()
    err, results = _compute_table(target_weights(model, space), space, 0.25, progress=None)
    assert np.array_equal(err, expected)
    assert [(r.device, r.gpu_ids) for r in results] == [("cpu", ())] * space.n_matrices
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    assert np.array_equal(error_table_parallel("tiny", model, space, progress=None), expected)
    with pytest.raises(ValueError, match="gpu_fraction"):
        error_table_parallel("tiny", model, space, gpu_fraction=1.5)
