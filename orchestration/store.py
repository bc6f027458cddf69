"""Writing and checking a run directory (its layout and tables: :mod:`coalora.pipeline.rundir`).

Every file is written all-or-nothing, so a killed run never leaves a half-written file under its final
name; ``rounds.parquet`` is written last in a round, so its rows are the complete rounds.
"""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from coalora.errors import CoaloraError, RunDirError
from coalora.core.space import KNOBS
from coalora.pipeline.rundir import (ARCHIVE_SCHEMA, KNOWN_ENTRIES, MARKER, OPTIONAL_COLUMNS, PER_ROUND_DIRS,
                                     ROUND_COLUMN, ROUNDS_SCHEMA, ArchiveRow, RoundRow, RunDir, TrainsetFile,
                                     ray_train_round, read_trainset, round_of)
from coalora.storage import Location


def _write_table(path: Location, rows: Sequence[Any], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    path.write_bytes(buf.getvalue())


def _checked_table(path: Location, schema: pa.Schema) -> list[dict[str, Any]]:
    """Rows of a run's Parquet table; a damaged one or one without the expected columns is a RunDirError.

    Columns added to the schema later (:data:`coalora.pipeline.rundir.OPTIONAL_COLUMNS`) may be missing
    from older runs.
    """
    try:
        table = pq.read_table(io.BytesIO(path.read_bytes()))
    except (OSError, pa.ArrowException) as e:
        raise RunDirError(f"{path}: not a readable Parquet table ({e})") from None
    missing = [f.name for f in schema if f.name not in table.column_names and f.name not in OPTIONAL_COLUMNS]
    if missing:
        raise RunDirError(f"{path}: missing column(s) {missing}")
    if ROUND_COLUMN in table.column_names:
        kind, nulls = table.schema.field(ROUND_COLUMN).type, table.column(ROUND_COLUMN).null_count
        if not pa.types.is_integer(kind):
            raise RunDirError(f"{path}: column '{ROUND_COLUMN}' holds {kind}, not integers")
        if nulls:
            raise RunDirError(f"{path}: {nulls} row(s) without a round")
    return table.to_pylist()


class RunStore(RunDir):
    """Writes and validates one run directory; its paths and readers are :class:`RunDir`'s."""

    def completed_rounds(self) -> int:
        """How many rounds finished (rounds 0 … n−1); later files are leftovers of a killed round."""
        return len(self.read_rounds())

    def append_round(self, archive_rows: Sequence[ArchiveRow], round_row: RoundRow) -> None:
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
        for sub in PER_ROUND_DIRS:
            for p in (self.root / sub).iterdir():
                k = round_of(p.name)
                if k is not None and k >= n_rounds:
                    p.remove()
        # An unfinished Ray Train run would be resumed by the next round of that name, not redone.
        for p in self.ray_train_dir.iterdir():
            k = ray_train_round(p.name)
            if k is not None and k >= n_rounds:
                p.remove()

    def write_trainset(self, k: int, configs: TrainsetFile) -> None:
        self.trainset_path(k).write_text(json.dumps(configs, indent=1))

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
        width = space.n_matrices * len(KNOBS)
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
                read_trainset(path, space)
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
