"""Read an orchestrated run directory without Ray: its last checkpoint and the best evaluated
configuration under a bit budget. The run may be local or in an object store (``s3://...``)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from coalora.errors import CheckpointError
from coalora.storage import Location, open_location
from coalora.errors import StorageError


def _table(path: Location, columns: list[str] | None = None) -> list[dict[str, Any]]:
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(path.read_bytes()), columns=columns).to_pylist()


def last_round(run_dir: str | os.PathLike) -> int:
    """Index of the last complete round (its row in ``rounds.parquet``)."""
    try:
        p = open_location(run_dir) / "rounds.parquet"
        found = p.is_file()
    except StorageError as e:  # its message names the location without any credential
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"run {run_dir}: {e}") from None
    if not found:
        raise CheckpointError(f"{run_dir} is not a coalora run directory with a complete round (no rounds.parquet)")
    rounds = [r["round"] for r in _table(p, ["round"])]
    if not rounds:
        raise CheckpointError(f"{run_dir} has no complete round yet")
    return int(max(rounds))


def run_checkpoint(run_dir: str | os.PathLike) -> Location:
    """The checkpoint trained in the last complete round."""
    return open_location(run_dir) / "checkpoints" / f"round_{last_round(run_dir)}"


def best_under_budget(run_dir: str | os.PathLike, budget: float, space: Any) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The lowest-loss configuration evaluated in the last complete round whose average bits fit
    ``budget``: ``((N, 5) indices, archive row)``, or None when no evaluated configuration fits."""
    k = last_round(run_dir)
    rows = [r for r in _table(open_location(run_dir) / "archive.parquet")
            if r["round"] == k and r["status"] == "ok" and math.isfinite(r["loss"]) and r["avg_bits"] <= budget + 1e-12]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["loss"])
    idx = space.validate(np.asarray(best["knobs"], dtype=np.int64).reshape(space.n_matrices, 5))
    return idx, best
