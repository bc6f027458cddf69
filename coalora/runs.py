"""Read an orchestrated run directory (``runs/<name>``) without Ray: its last checkpoint and the best
evaluated configuration under a bit budget."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from coalora.checkpoint import CheckpointError


def last_round(run_dir: str | os.PathLike) -> int:
    """Index of the last complete round (its row in ``rounds.parquet``)."""
    import pyarrow.parquet as pq

    p = Path(run_dir) / "rounds.parquet"
    if not p.is_file():
        raise CheckpointError(f"{run_dir} is not a coalora run directory with a complete round (no rounds.parquet)")
    rounds = pq.read_table(p, columns=["round"]).column("round").to_pylist()
    if not rounds:
        raise CheckpointError(f"{run_dir} has no complete round yet")
    return int(max(rounds))


def run_checkpoint(run_dir: str | os.PathLike) -> Path:
    """The checkpoint trained in the last complete round."""
    return Path(run_dir) / "checkpoints" / f"round_{last_round(run_dir)}"


def best_under_budget(run_dir: str | os.PathLike, budget: float, space: Any) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The lowest-loss configuration evaluated in the last complete round whose average bits fit
    ``budget``: ``((N, 5) indices, archive row)``, or None when no evaluated configuration fits."""
    import pyarrow.parquet as pq

    k = last_round(run_dir)
    rows = [r for r in pq.read_table(Path(run_dir) / "archive.parquet").to_pylist()
            if r["round"] == k and r["status"] == "ok" and math.isfinite(r["loss"]) and r["avg_bits"] <= budget + 1e-12]
    if not rows:
        return None
    best = min(rows, key=lambda r: r["loss"])
    idx = space.validate(np.asarray(best["knobs"], dtype=np.int64).reshape(space.n_matrices, 5))
    return idx, best
