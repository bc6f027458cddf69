"""The run directory: Parquet tables, per-round training sets, checkpoints, plots and a report.

    <out_dir>/<name>/
        config.yaml               the effective experiment configuration (resume reads it back)
        archive.parquet           one row per evaluation
        rounds.parquet            one row per completed round (its presence marks the round complete)
        trainset/round_<k>.json   the training set selected at the end of round k
        checkpoints/round_<k>/    the coalora checkpoint trained in round k
        search/round_<k>/         the search state at the end of round k (resume reads the last complete one)
        ray_train/                Ray Train's storage (its copy of each round's checkpoint)
        logs/                     the driver's log of each session (Ray's own lines go here, not to the console)
        front.png, hypervolume.png, report.md

The directory may be local, on a mount every node shares, or in an object store
(:class:`coalora.storage.Location`). Every file is written all-or-nothing, so a killed run never leaves
a half-written file under its final name.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from coalora.storage import Location, open_location

ARCHIVE_SCHEMA = pa.schema([
    ("round", pa.int64()),
    ("config_id", pa.string()),
    ("role", pa.string()),  # "train" (in the round's training set) or "candidate"
    ("knobs", pa.list_(pa.int16())),  # the N × 5 option indices, flattened
    ("avg_bits", pa.float64()),
    ("loss", pa.float64()),
    ("accuracy", pa.float64()),
    ("perplexity", pa.float64()),
    ("status", pa.string()),  # "ok" or "error"
    ("error", pa.string()),
    ("seconds", pa.float64()),
    ("actor", pa.string()),
])

ROUNDS_SCHEMA = pa.schema([
    ("round", pa.int64()),
    ("hypervolume", pa.float64()),
    ("hv_train", pa.float64()),
    ("set_size", pa.int64()),
    ("evaluated", pa.int64()),
    ("failed", pa.int64()),
    ("train_loss", pa.float64()),
    ("train_steps", pa.int64()),
    ("train_seconds", pa.float64()),  # wall time of the training phase (Ray Train start-up included)
    ("train_loop_seconds", pa.float64()),  # of which the training loop itself, as the workers measured it
    ("eval_seconds", pa.float64()),
    ("search_seconds", pa.float64()),
])


def _write_table(path: Location, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.write_bytes(buf.getvalue())


def _read_table(path: Location) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(path.read_bytes())).to_pylist() if path.is_file() else []


class RunStore:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, root: str | os.PathLike | Location) -> None:
        self.root = open_location(root)

    # ------------------------------------------------------------------ paths
    @property
    def archive_path(self) -> Location:
        return self.root / "archive.parquet"

    @property
    def rounds_path(self) -> Location:
        return self.root / "rounds.parquet"

    @property
    def config_path(self) -> Location:
        return self.root / "config.yaml"

    @property
    def ray_train_dir(self) -> Location:
        return self.root / "ray_train"

    def search_dir(self, k: int) -> Location:
        return self.root / "search" / f"round_{k}"

    def checkpoint_dir(self, k: int) -> Location:
        return self.root / "checkpoints" / f"round_{k}"

    def trainset_path(self, k: int) -> Location:
        return self.root / "trainset" / f"round_{k}.json"

    # ------------------------------------------------------------------ tables
    @property
    def logs_dir(self) -> Location:
        return self.root / "logs"

    def read_archive(self) -> list[dict[str, Any]]:
        return _read_table(self.archive_path)

    def read_rounds(self) -> list[dict[str, Any]]:
        return _read_table(self.rounds_path)

    def completed_rounds(self) -> int:
        """How many rounds finished (rounds 0 … n−1); later files are leftovers of a killed round."""
        return len(self.read_rounds())

    def append_round(self, archive_rows: Sequence[dict[str, Any]], round_row: dict[str, Any]) -> None:
        """Record one finished round. ``rounds.parquet`` is written last: it marks the round complete."""
        k = round_row["round"]
        kept = [r for r in self.read_archive() if r["round"] < k]
        _write_table(self.archive_path, kept + list(archive_rows), ARCHIVE_SCHEMA)
        rounds = [r for r in self.read_rounds() if r["round"] < k]
        _write_table(self.rounds_path, rounds + [round_row], ROUNDS_SCHEMA)

    def truncate_to(self, n_rounds: int) -> None:
        """Drop everything a killed round left behind (rows and files of rounds ≥ ``n_rounds``)."""
        archive = [r for r in self.read_archive() if r["round"] < n_rounds]
        if self.archive_path.is_file():
            _write_table(self.archive_path, archive, ARCHIVE_SCHEMA)
        for sub in ("checkpoints", "trainset", "search"):
            for p in (self.root / sub).iterdir():
                stem = p.name.split(".")[0]
                if stem.startswith("round_") and int(stem.split("_")[1]) >= n_rounds:
                    p.remove()
        # Ray Train runs are named "<run>-round<k>"; an unfinished one would be resumed, not redone.
        for p in self.ray_train_dir.iterdir():
            head, sep, k = p.name.rpartition("-round")
            if sep and k.isdigit() and int(k) >= n_rounds:
                p.remove()

    def write_trainset(self, k: int, configs: list[dict[str, Any]]) -> None:
        self.trainset_path(k).write_text(json.dumps(configs, indent=1))
