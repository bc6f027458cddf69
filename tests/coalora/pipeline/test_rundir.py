"""The run directory: its names and columns (on-disk format), and reading a small hand-made run."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from coalora.core.space import BITS_ONLY_OPTIONS, QuantSpace, TargetMatrix
from coalora.errors import CheckpointError
from coalora.pipeline.rundir import (
    ARCHIVE_SCHEMA,
    KNOWN_ENTRIES,
    OPTIONAL_COLUMNS,
    ROUNDS_SCHEMA,
    ArchiveRow,
    RoundRow,
    RunDir,
    TrainsetFile,
    best_under_budget,
    last_round,
    ray_train_name,
    ray_train_round,
    read_trainset,
    round_of,
    run_checkpoint,
)


def _space() -> QuantSpace:
    return QuantSpace([TargetMatrix("l0.q", 0, "q", (4, 4)), TargetMatrix("l1.q", 1, "q", (4, 4))],
                      options=BITS_ONLY_OPTIONS)


def _row(k: int, cid: str, bits: float, loss: float, status: str = "ok", bits_index: int = 0) -> ArchiveRow:
    return ArchiveRow(round=k, config_id=cid, role="train", knobs=[bits_index, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                      avg_bits=bits, loss=loss, accuracy=None, perplexity=None, status=status,
                      error=None if status == "ok" else "boom", seconds=1.0, actor="a")


def _round(k: int) -> RoundRow:
    return RoundRow(round=k, hypervolume=0.5, hv_train=0.4, set_size=3, evaluated=4, failed=0, train_loss=0.6,
                    train_steps=5, train_seconds=1.0, train_loop_seconds=0.5, eval_seconds=1.0, search_seconds=1.0,
                    train_attempts=1, eval_retries=0, evaluators_replaced=0)


@pytest.fixture
def run(tmp_path):
    """A run of two complete rounds; round 1 holds an error row and one row per budget question."""
    root = tmp_path / "run"
    root.mkdir()
    archive = [_row(0, "r0", 2.0, 0.1),  # the best row overall, but not of the last round
               _row(1, "a", 3.0, 0.5, bits_index=1), _row(1, "b", 2.5, 0.4, status="error"),
               _row(1, "c", 2.5, 0.6, bits_index=2), _row(1, "d", 4.0, 0.3), _row(1, "e", 3.5, math.nan)]
    pq.write_table(pa.Table.from_pylist(archive, schema=ARCHIVE_SCHEMA), root / "archive.parquet")
    pq.write_table(pa.Table.from_pylist([_round(0), _round(1)], schema=ROUNDS_SCHEMA), root / "rounds.parquet")
    return root


def test_names_and_columns_are_the_on_disk_format(tmp_path):
    # Existing runs resume only if these stay as they are.
    assert sorted(KNOWN_ENTRIES) == ["archive.parquet", "checkpoints", "coalora-run.json", "config.yaml", "front",
                                     "front.png", "hypervolume.png", "logs", "ray_processes.json", "ray_train",
                                     "report.md", "rounds.parquet", "search", "trainset"]
    assert ARCHIVE_SCHEMA.names == ["round", "config_id", "role", "knobs", "avg_bits", "loss", "accuracy",
                                    "perplexity", "status", "error", "seconds", "actor"]
    assert ARCHIVE_SCHEMA.field("knobs").type == pa.list_(pa.int16())
    assert ROUNDS_SCHEMA.names == ["round", "hypervolume", "hv_train", "set_size", "evaluated", "failed",
                                   "train_loss", "train_steps", "train_seconds", "train_loop_seconds",
                                   "eval_seconds", "search_seconds", "train_attempts", "eval_retries",
                                   "evaluators_replaced"]
    # One vocabulary: the typed rows have exactly the tables' columns, in order.
    assert list(ArchiveRow.__annotations__) == ARCHIVE_SCHEMA.names
    assert list(RoundRow.__annotations__) == ROUNDS_SCHEMA.names
    assert OPTIONAL_COLUMNS <= set(ROUNDS_SCHEMA.names)
    d = RunDir(tmp_path / "run")
    root = str(tmp_path / "run")
    assert str(d.checkpoint_dir(1)) == f"{root}/checkpoints/round_1"
    assert str(d.search_dir(0)) == f"{root}/search/round_0"
    assert str(d.trainset_path(2)) == f"{root}/trainset/round_2.json"
    assert str(d.front_config_path("abc")) == f"{root}/front/abc.json"
    assert [str(p) for p in (d.marker_path, d.config_path, d.report_path, d.ray_train_dir, d.logs_dir)] == [
        f"{root}/coalora-run.json", f"{root}/config.yaml", f"{root}/report.md", f"{root}/ray_train", f"{root}/logs"]


def test_round_names_parse_back():
    assert [round_of(n) for n in ("round_3", "round_12.json", "round_x", "xround_1", "front")] == [3, 12, None, None,
                                                                                                   None]
    assert ray_train_name("smoke", 4) == "smoke-round4"
    assert [ray_train_round(n) for n in ("smoke-round4", "my-round-run-round0", "smoke", "smoke-roundx")] == [
        4, 0, None, None]


def test_last_round_checkpoint_and_best_under_budget(run):
    space = _space()
    assert last_round(run) == 1
    assert str(run_checkpoint(run)) == f"{run}/checkpoints/round_1"
    assert RunDir(run).read_rounds()[1]["train_loop_seconds"] == 0.5
    # Round 1 only, scored rows only (b failed, e has no finite loss), the lowest loss under the budget.
    picks = {b: best_under_budget(run, b, space) for b in (2.0, 2.75, 3.0, 8.0)}
    assert picks[2.0] is None  # round 0's row fits, but is not of the last round
    assert picks[2.75][1]["config_id"] == "c"
    assert picks[3.0][1]["config_id"] == "a" and picks[8.0][1]["config_id"] == "d"
    idx, row = picks[3.0]
    assert idx.shape == (2, 5) and idx.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 0]] and row["loss"] == 0.5


def test_a_directory_without_rounds_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="is not a coalora run directory with a complete round"):
        last_round(tmp_path)
    assert RunDir(tmp_path).read_archive() == [] and RunDir(tmp_path).read_rounds() == []


def test_trainset_file_reads_back_as_index_arrays(tmp_path):
    space = _space()
    config = np.array([[2, 0, 0, 0, 0], [1, 0, 0, 0, 0]])
    path = RunDir(tmp_path).trainset_path(0)
    path.write_text(json.dumps(TrainsetFile(trainset=[space.to_json(config)], candidates=[])))
    trainset, candidates = read_trainset(path, space)
    assert trainset.tolist() == [config.tolist()] and candidates.shape == (0, 2, 5)
