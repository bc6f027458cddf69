"""The run directory: Parquet tables, per-round training sets, checkpoints, plots and a report.

    <out_dir>/<name>/
        coalora-run.json          the marker: written first, it makes the directory a coalora run (only a
                                  marked run is ever deleted, by --overwrite)
        ray_processes.json        the local Ray processes of the last session (ended by the next one)
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

from coalora.errors import CoaloraError, RunDirError
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
    # Faults survived: Ray Train attempts of the round (1 = no restart), evaluator calls re-submitted
    # after their actor died, and evaluators replaced (dead, or out of memory).
    ("train_attempts", pa.int64()),
    ("eval_retries", pa.int64()),
    ("evaluators_replaced", pa.int64()),
])

MARKER = "coalora-run.json"
# Everything a run writes at its top level: --overwrite refuses a directory holding anything else.
KNOWN_ENTRIES = frozenset({MARKER, "ray_processes.json", "config.yaml", "archive.parquet", "rounds.parquet",
                           "trainset", "checkpoints", "search", "ray_train", "logs", "front.png",
                           "hypervolume.png", "report.md"})


def _write_table(path: Location, rows: Sequence[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.write_bytes(buf.getvalue())


def _read_table(path: Location) -> list[dict[str, Any]]:
    return pq.read_table(io.BytesIO(path.read_bytes())).to_pylist() if path.is_file() else []


def _checked_table(path: Location, schema: pa.Schema) -> list[dict[str, Any]]:
    """Rows of a run's Parquet table; a damaged one or one without the expected columns is a RunDirError.

    Columns added to the schema later (``train_attempts`` ...) may be missing from older runs.
    """
    try:
        table = pq.read_table(io.BytesIO(path.read_bytes()))
    except (OSError, pa.ArrowException) as e:
        raise RunDirError(f"{path}: not a readable Parquet table ({e})") from None
    optional = {"train_attempts", "eval_retries", "evaluators_replaced"}
    missing = [f.name for f in schema if f.name not in table.column_names and f.name not in optional]
    if missing:
        raise RunDirError(f"{path}: missing column(s) {missing}")
    if "round" in table.column_names and not pa.types.is_integer(table.schema.field("round").type):
        raise RunDirError(f"{path}: column 'round' holds {table.schema.field('round').type}, not integers")
    if "round" in table.column_names and table.column("round").null_count:
        raise RunDirError(f"{path}: {table.column('round').null_count} row(s) without a round")
    return table.to_pylist()


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

    # ------------------------------------------------------------------ life cycle
    @property
    def marker_path(self) -> Location:
        return self.root / MARKER

    def create(self, name: str, config_text: str) -> None:
        """Make the run directory: the marker first (so a half-made run can still be replaced), then
        the configuration."""
        import datetime as dt

        self.root.mkdir()
        self.marker_path.write_text(json.dumps({"format": 1, "name": name,
                                                "created": dt.datetime.now(dt.timezone.utc).isoformat()}) + "\n")
        self.config_path.write_text(config_text)

    def check_replaceable(self) -> None:
        """Raise unless the directory is a coalora run that ``--overwrite`` may delete: it carries the
        marker and holds nothing a run does not write."""
        if not self.marker_path.is_file():
            raise RunDirError(f"{self.root} is not a coalora run (no {MARKER}); --overwrite only replaces a run "
                              "this tool made: choose another run.name or run.out_dir")
        foreign = sorted(p.name for p in self.root.iterdir() if p.name not in KNOWN_ENTRIES)
        if foreign:
            raise RunDirError(f"{self.root} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, "
                              "which no run writes; --overwrite will not delete it: move it away or choose "
                              "another run.name")

    def validate(self, space: Any) -> int:
        """Check everything a resume reads, before anything is changed; returns the complete rounds.

        Checks that ``rounds.parquet`` and ``archive.parquet`` are readable Parquet tables with the
        run's columns and consistent rounds (0 … n−1, each with archive rows for this space), that
        every complete round's training set parses for ``space``, and that the last round's checkpoint
        and search state are whole.

        Raises:
            RunDirError: naming the file and what is wrong with it.
        """
        if not self.rounds_path.is_file():
            return 0  # killed during round 0: nothing complete, the run starts over
        rounds = sorted(int(r["round"]) for r in _checked_table(self.rounds_path, ROUNDS_SCHEMA))
        n = len(rounds)
        if rounds != list(range(n)):
            raise RunDirError(f"{self.rounds_path}: rounds {rounds} are not 0 … {n - 1}")
        if n == 0:
            return 0
        if not self.archive_path.is_file():
            raise RunDirError(f"{self.archive_path}: missing, but {self.rounds_path} records {n} complete round(s)")
        archive = [r for r in _checked_table(self.archive_path, ARCHIVE_SCHEMA) if r["round"] < n]
        width = space.n_matrices * 5
        for k in range(n):
            rows = [r for r in archive if r["round"] == k]
            if not rows:
                raise RunDirError(f"{self.archive_path}: no evaluation of complete round {k}")
            if any(len(r["knobs"] or ()) != width for r in rows):
                raise RunDirError(f"{self.archive_path}: round {k} holds configurations of another model "
                                  f"(expected {width} knob values each)")
        for k in range(n):
            path = self.trainset_path(k)
            if not path.is_file():
                raise RunDirError(f"{path}: missing (round {k} is complete)")
            try:
                saved = json.loads(path.read_text())
                for c in list(saved["trainset"]) + list(saved["candidates"]):
                    space.from_json(c)
            except (CoaloraError, ValueError, KeyError, TypeError) as e:  # JSON, shape or knob errors of a damaged file
                raise RunDirError(f"{path}: not a training set of this run ({type(e).__name__}: {e})") from None
        self._check_checkpoint(n - 1)
        self._check_search(n - 1, space)
        return n

    def _check_checkpoint(self, k: int) -> None:
        from coalora.errors import CheckpointError
        from coalora.pipeline.checkpoint import check_checkpoint_files

        ckpt = self.checkpoint_dir(k)
        if not ckpt.is_dir():
            raise RunDirError(f"{ckpt}: missing (round {k} is complete)")
        try:
            check_checkpoint_files(ckpt.read_files(), str(ckpt))
        except CheckpointError as e:
            raise RunDirError(str(e)) from None

    def _check_search(self, k: int, space: Any) -> None:
        import tempfile
        from pathlib import Path

        from coalora.search.pareto_search import ParetoSearch

        where = self.search_dir(k)
        if not where.is_dir():
            raise RunDirError(f"{where}: missing (round {k} is complete)")
        with tempfile.TemporaryDirectory() as tmp:
            for name, blob in where.read_files().items():
                (Path(tmp) / name).write_bytes(blob)
            try:
                ParetoSearch.load(tmp, space)
            except (CoaloraError, ValueError, KeyError, TypeError, AttributeError, OSError, pa.ArrowException) as e:
                raise RunDirError(f"{where}: damaged search state ({type(e).__name__}: {e})".replace(tmp, str(where))) \
                    from None
