"""The run directory of an orchestrated run: its layout, its two Parquet tables, and reading it without Ray.

    <out_dir>/<name>/
        coalora-run.json          the marker: written first, it makes the directory a coalora run (only a
                                  marked run is ever deleted, by --overwrite)
        ray_processes.json        the local Ray processes of the last session (ended by the next one)
        config.yaml               the effective experiment configuration (resume reads it back)
        archive.parquet           one row per evaluation (:data:`ARCHIVE_SCHEMA`, :class:`ArchiveRow`)
        rounds.parquet            one row per completed round (:data:`ROUNDS_SCHEMA`, :class:`RoundRow`);
                                  its presence marks the round complete
        trainset/round_<k>.json   the training set and candidates selected at the end of round k
                                  (:class:`TrainsetFile`)
        checkpoints/round_<k>/    the coalora checkpoint trained in round k
        search/round_<k>/         the search state at the end of round k (resume reads the last complete one)
        ray_train/<name>-round<k> Ray Train's storage (its copy of each round's checkpoint)
        logs/                     the driver's log of each session (Ray's own lines go here, not to the console)
        front/<config_id>.json    the configurations of the last round's front
        front.png, hypervolume.png, report.md

This module is the one place that spells these names and columns: ``orchestration`` writes the
directory (``orchestration.store.RunStore``) and the CLI and the benchmarks read it, all through it.
The directory may be local, on a mount every node shares, or in an object store
(:class:`coalora.storage.Location`); nothing here needs Ray.
"""

from __future__ import annotations

import io
import json
import math
import os
from typing import Any, Sequence, TypedDict

import numpy as np
import pyarrow as pa

from coalora.core.space import KNOBS
from coalora.errors import CheckpointError, StorageError
from coalora.storage import Location, open_location

# ---------------------------------------------------------------------- names
MARKER = "coalora-run.json"
PROCESSES = "ray_processes.json"
CONFIG = "config.yaml"
ARCHIVE = "archive.parquet"
ROUNDS = "rounds.parquet"
TRAINSET_DIR = "trainset"
CHECKPOINTS_DIR = "checkpoints"
SEARCH_DIR = "search"
RAY_TRAIN_DIR = "ray_train"
LOGS_DIR = "logs"
FRONT_DIR = "front"
FRONT_PLOT = "front.png"
HYPERVOLUME_PLOT = "hypervolume.png"
REPORT = "report.md"
# Everything a run writes at its top level: --overwrite refuses a directory holding anything else.
KNOWN_ENTRIES = frozenset({MARKER, PROCESSES, CONFIG, ARCHIVE, ROUNDS, TRAINSET_DIR, CHECKPOINTS_DIR, SEARCH_DIR,
                           RAY_TRAIN_DIR, LOGS_DIR, FRONT_DIR, FRONT_PLOT, HYPERVOLUME_PLOT, REPORT})
# The folders holding one entry per round (``round_<k>`` or ``round_<k>.json``).
PER_ROUND_DIRS = (CHECKPOINTS_DIR, TRAINSET_DIR, SEARCH_DIR)

# A sweep (``orchestration/sweep.py``) writes its own directory <out_dir>/<name>/: all rows of all
# trials, their plot, and Ray Tune's storage.
SWEEP_TABLE = "sweep.parquet"
SWEEP_PLOT = "sweep.png"
TUNE_DIR = "_tune"


def round_name(k: int) -> str:
    """``round_<k>``: the name of round k's entry in each of :data:`PER_ROUND_DIRS`."""
    return f"round_{k}"


def round_of(name: str) -> int | None:
    """The round of a per-round entry (``round_3`` or ``round_3.json`` → 3); None for any other name."""
    head, sep, k = name.split(".")[0].partition("round_")
    return int(k) if sep and not head and k.isdigit() else None


def ray_train_name(run_name: str, k: int) -> str:
    """Ray Train's name of round k of run ``run_name`` (its folder under ``ray_train/``)."""
    return f"{run_name}-round{k}"


def ray_train_round(name: str) -> int | None:
    """The round of a ``ray_train/`` folder named by :func:`ray_train_name`; None for any other name."""
    _, sep, k = name.rpartition("-round")
    return int(k) if sep and k.isdigit() else None


# ---------------------------------------------------------------------- tables
ROUND_COLUMN = "round"  # the key of both tables
# The values of the archive's ``status`` and ``role`` columns.
STATUS_OK = "ok"
ROLE_TRAIN = "train"  # in the round's training set
ROLE_CANDIDATE = "candidate"  # proposed by the search in the round before


# The column vocabulary: rows are plain dicts (what Parquet reads and writes), typed by these two
# TypedDicts, whose keys are exactly the schemas' columns (tests/coalora/pipeline/test_rundir.py checks
# it), so a misspelt column is a type error wherever a row is built or read.
class ArchiveRow(TypedDict):
    """One row of ``archive.parquet``: one evaluation of one configuration in one round."""

    round: int
    config_id: str
    role: str  # ROLE_TRAIN or ROLE_CANDIDATE
    knobs: list[int]  # the (N, 5) option indices, flattened to N·5
    avg_bits: float
    loss: float
    accuracy: float | None  # classification tasks
    perplexity: float | None  # language-modelling tasks
    status: str  # STATUS_OK, or "error" (then see error)
    error: str | None
    seconds: float
    actor: str


class RoundRow(TypedDict, total=False):
    """One row of ``rounds.parquet``: one completed round. Fault counts may be absent in older runs."""

    round: int
    hypervolume: float
    hv_train: float
    set_size: int
    evaluated: int
    failed: int
    train_loss: float
    train_steps: int
    train_seconds: float  # wall time of the training phase (Ray Train start-up included)
    train_loop_seconds: float  # of which the training loop itself, as the workers measured it
    eval_seconds: float
    search_seconds: float
    # Faults survived: Ray Train attempts of the round (1 = no restart), evaluator calls re-submitted
    # after their actor died, and evaluators replaced (dead, or out of memory).
    train_attempts: int
    eval_retries: int
    evaluators_replaced: int


ARCHIVE_SCHEMA = pa.schema([
    ("round", pa.int64()),
    ("config_id", pa.string()),
    ("role", pa.string()),
    ("knobs", pa.list_(pa.int16())),
    ("avg_bits", pa.float64()),
    ("loss", pa.float64()),
    ("accuracy", pa.float64()),
    ("perplexity", pa.float64()),
    ("status", pa.string()),
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
    ("train_seconds", pa.float64()),
    ("train_loop_seconds", pa.float64()),
    ("eval_seconds", pa.float64()),
    ("search_seconds", pa.float64()),
    ("train_attempts", pa.int64()),
    ("eval_retries", pa.int64()),
    ("evaluators_replaced", pa.int64()),
])
# Columns added to ROUNDS_SCHEMA after runs were made: a run without them still resumes.
OPTIONAL_COLUMNS = frozenset({"train_attempts", "eval_retries", "evaluators_replaced"})


class TrainsetFile(TypedDict):
    """``trainset/round_<k>.json``: what round k+1 trains on and scores, as ``space.to_json`` mappings."""

    trainset: list[dict[str, dict[str, Any]]]
    candidates: list[dict[str, dict[str, Any]]]


def read_table(path: Location, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a Parquet table (one dict each); ``columns`` limits what is read."""
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(path.read_bytes()), columns=columns).to_pylist()


def evaluated_ok(rows: Sequence[ArchiveRow], round_k: int | None = None) -> list[ArchiveRow]:
    """The archive rows that scored (status ok, finite loss), of round ``round_k`` when given."""
    return [r for r in rows if r["status"] == STATUS_OK and (round_k is None or r["round"] == round_k)
            and math.isfinite(r["loss"])]


def best_row_under(rows: Sequence[ArchiveRow], budget: float) -> ArchiveRow | None:
    """The lowest-loss row whose average bits fit ``budget`` (None if none does)."""
    fit = [r for r in rows if r["avg_bits"] <= budget + 1e-12]
    return min(fit, key=lambda r: r["loss"]) if fit else None


def knobs_of(row: ArchiveRow, space: Any) -> np.ndarray:
    """An archive row's configuration as ``(N, 5)`` option indices of ``space``."""
    return space.validate(np.asarray(row["knobs"], dtype=np.int64).reshape(space.n_matrices, len(KNOBS)))


def read_trainset(path: Location, space: Any) -> tuple[np.ndarray, np.ndarray]:
    """A ``trainset/round_<k>.json`` → ``(training set (T, N, 5), candidates (C, N, 5))``.

    Raises whatever a damaged file raises (``ValueError`` for JSON, ``KeyError``/``TypeError`` for its
    shape, ``CoaloraError`` for a configuration that is not of ``space``).
    """
    saved: TrainsetFile = json.loads(path.read_text())

    def stack(configs: list[dict[str, dict[str, Any]]]) -> np.ndarray:
        if not configs:
            return np.zeros((0, space.n_matrices, len(KNOBS)), dtype=np.int64)
        return np.stack([space.from_json(c) for c in configs])

    return stack(list(saved["trainset"])), stack(list(saved["candidates"]))


# ---------------------------------------------------------------------- paths
class RunDir:
    """The paths of one run directory (see the module docstring); reading them needs no Ray."""

    def __init__(self, root: str | os.PathLike | Location) -> None:
        self.root = open_location(root)

    @property
    def marker_path(self) -> Location:
        return self.root / MARKER

    @property
    def config_path(self) -> Location:
        return self.root / CONFIG

    @property
    def archive_path(self) -> Location:
        return self.root / ARCHIVE

    @property
    def rounds_path(self) -> Location:
        return self.root / ROUNDS

    @property
    def ray_train_dir(self) -> Location:
        return self.root / RAY_TRAIN_DIR

    @property
    def logs_dir(self) -> Location:
        return self.root / LOGS_DIR

    @property
    def report_path(self) -> Location:
        return self.root / REPORT

    @property
    def front_plot_path(self) -> Location:
        return self.root / FRONT_PLOT

    @property
    def hypervolume_plot_path(self) -> Location:
        return self.root / HYPERVOLUME_PLOT

    def front_config_path(self, config_id: str) -> Location:
        return self.root / FRONT_DIR / f"{config_id}.json"

    def checkpoint_dir(self, k: int) -> Location:
        return self.root / CHECKPOINTS_DIR / round_name(k)

    def search_dir(self, k: int) -> Location:
        return self.root / SEARCH_DIR / round_name(k)

    def trainset_path(self, k: int) -> Location:
        return self.root / TRAINSET_DIR / f"{round_name(k)}.json"

    def read_archive(self) -> list[ArchiveRow]:
        """Every evaluation so far (none before round 0 completes)."""
        return read_table(self.archive_path) if self.archive_path.is_file() else []  # type: ignore[return-value]

    def read_rounds(self) -> list[RoundRow]:
        """Every completed round so far."""
        return read_table(self.rounds_path) if self.rounds_path.is_file() else []  # type: ignore[return-value]


# ---------------------------------------------------------------------- reading a finished run
def last_round(run_dir: str | os.PathLike) -> int:
    """Index of the last complete round (its row in ``rounds.parquet``)."""
    try:
        run = RunDir(run_dir)
        found = run.rounds_path.is_file()
    except StorageError as e:  # its message names the location without any credential
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"run {run_dir}: {e}") from None
    if not found:
        raise CheckpointError(f"{run_dir} is not a coalora run directory with a complete round (no {ROUNDS})")
    rounds = [r["round"] for r in read_table(run.rounds_path, [ROUND_COLUMN])]
    if not rounds:
        raise CheckpointError(f"{run_dir} has no complete round yet")
    return int(max(rounds))


def run_checkpoint(run_dir: str | os.PathLike) -> Location:
    """The checkpoint trained in the last complete round."""
    return RunDir(run_dir).checkpoint_dir(last_round(run_dir))


def best_under_budget(run_dir: str | os.PathLike, budget: float, space: Any) -> tuple[np.ndarray, ArchiveRow] | None:
    """The lowest-loss configuration evaluated in the last complete round whose average bits fit
    ``budget``: ``((N, 5) indices, archive row)``, or None when no evaluated configuration fits."""
    k = last_round(run_dir)
    archive: list[ArchiveRow] = read_table(RunDir(run_dir).archive_path)  # type: ignore[assignment]
    best = best_row_under(evaluated_ok(archive, k), budget)
    return None if best is None else (knobs_of(best, space), best)
