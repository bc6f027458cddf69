"""Fuzz: mutated copies of a real run directory fed to ``run.py --resume RUN --check``.

Files deleted, truncated, bit-flipped or replaced; JSON and Parquet files with mutated contents;
``config.yaml`` with mutated values; junk files and directories. Each case ends with exit 0 or 2 (one
``orchestration/run.py: error:`` line), no traceback, and leaves the run directory exactly as it was:
``--check`` writes nothing.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestration.run import main as run_main
from tests.fuzz.conftest import (
    FUZZ,
    INPUTS,
    bounded,
    call,
    case_dir,
    examples,
    mutate_bytes,
    mutate_tree,
    untouched,
    values,
)

# What a resume reads first; the rest (plots, logs, Ray Train's copies) is mutated less often.
READ_ON_RESUME = ["rounds.parquet", "archive.parquet", "config.yaml", "coalora-run.json", "trainset/round_0.json",
                  "trainset/round_1.json", "checkpoints/round_1/meta.json", "checkpoints/round_1/trainable.safetensors",
                  "checkpoints/round_1/optimizer.safetensors", "checkpoints/round_1/optimizer.json",
                  "search/round_1/search.json", "search/round_1/archive.parquet"]


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-run-dir")


@functools.lru_cache(maxsize=None)
def run_files(run: Path) -> list[str]:
    """Every file of the reference run (not a fixture: hypothesis would print the list with each failure)."""
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    missing = [f for f in READ_ON_RESUME if f not in files]
    assert not missing, f"the reference run lacks {missing}"
    return files


def _mutate_rows(draw, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # noqa: ANN001
    """A Parquet table's rows with values of their own type changed, rows dropped or duplicated."""
    tree = mutate_tree(draw, {"rows": rows}, safe=False)
    out = tree.get("rows") if isinstance(tree, dict) else None
    return out if isinstance(out, list) else rows[:0]


def _write_parquet(path: Path, rows: list[Any], schema: pa.Schema) -> None:
    """Rows back to Parquet: with the file's own schema when they still fit it, else with the types
    pyarrow infers (a column of another type), else as a table of one string column."""
    for make in (lambda: pa.Table.from_pylist(rows, schema=schema), lambda: pa.Table.from_pylist(rows),
                 lambda: pa.table({"junk": [repr(r) for r in rows]})):
        try:
            table = make()
        except (pa.ArrowException, AttributeError, TypeError, ValueError, OverflowError):
            continue
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path.write_bytes(buf.getvalue())
        return


def _mutate_file(draw, root: Path, rel: str) -> str:  # noqa: ANN001
    """One mutation of ``root/rel``; returns what was done (for the record)."""
    path = root / rel
    op = draw(st.sampled_from(["content", "content", "bytes", "delete", "dir", "junk"]))
    if op == "junk":
        where = draw(st.sampled_from([".", "checkpoints", "checkpoints/round_1", "search", "search/round_1",
                                      "trainset"]))
        name = draw(st.sampled_from(["round_7", "round_2.json", "round_x", ".tmp", "x.parquet", "round_-1.json"]))
        target = root / where / name
        as_dir, blob = draw(st.booleans()), draw(st.binary(max_size=64))
        if target.exists() or not target.parent.is_dir():  # an earlier mutation made a file of it, or removed it
            return f"junk {where}/{name}: no place for it"
        if as_dir:
            target.mkdir()
        else:
            target.write_bytes(blob)
        return f"junk {where}/{name}"
    if not path.is_file():
        return f"{rel}: gone already"
    if op == "delete":
        path.unlink()
        return f"deleted {rel}"
    if op == "dir":
        path.unlink()
        path.mkdir()
        return f"{rel} is a directory"
    if op == "content" and rel.endswith(".parquet"):
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError):
            return f"{rel}: unreadable already"
        rows = _mutate_rows(draw, table.to_pylist())
        _write_parquet(path, rows, table.schema)
        return f"{rel} rows: {repr(rows)[:1500]}"
    if op == "content" and rel.endswith(".json"):
        try:
            tree = json.loads(path.read_text())
        except ValueError:
            return f"{rel}: unreadable already"
        text = json.dumps(mutate_tree(draw, tree, safe=False))
        path.write_text(text)
        return f"{rel}: {text[:1500]}"
    if op == "content" and rel.endswith(".yaml"):
        try:
            tree = yaml.safe_load(path.read_text())
        except yaml.YAMLError:
            return f"{rel}: unreadable already"
        text = yaml.safe_dump(bounded(mutate_tree(draw, tree, safe=False)), sort_keys=False)
        path.write_text(text)
        return f"{rel}: {text[:1500]}"
    path.write_bytes(mutate_bytes(draw, path.read_bytes(), unchanged=False))
    return f"{rel}: bytes mutated, {path.stat().st_size} bytes now"


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_resume_check_mutated_run(fuzz_run_dir: Path, cases: Path, data: st.DataObject) -> None:
    d = case_dir(cases)
    run = d / "run"
    shutil.copytree(fuzz_run_dir, run, symlinks=True)
    done = []
    for _ in range(data.draw(st.integers(1, 3))):
        rel = data.draw(st.one_of(st.sampled_from(READ_ON_RESUME), st.sampled_from(run_files(fuzz_run_dir))))
        done.append(_mutate_file(data.draw, run, rel))
    argv = ["--resume", str(run), "--check"]
    if data.draw(st.integers(0, 4)) == 4:  # an override a resumed run may take
        argv.append("--set=" + data.draw(st.sampled_from(["run.rounds", "ray.evaluators", "model.cache_gib"]))
                    + "=" + yaml.safe_dump(data.draw(values()), default_flow_style=True).strip().removesuffix("...")
                    .strip())
    INPUTS.clear()
    INPUTS.update({"mutations": repr(done), "argv": repr(argv)})
    with untouched([d, fuzz_run_dir]):
        call(run_main, argv, "orchestration/run.py", "run.py --resume --check: mutated run directory")


def _null_round(path: Path) -> None:
    """The table with its first row's ``round`` null (same schema: the column is nullable)."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[0]["round"] = None
    _write_parquet(path, rows, table.schema)


def _smash_page_header(path: Path) -> None:
    """Four 0xff bytes over the first page header, right after the ``PAR1`` magic: pyarrow's error
    message then spans three lines."""
    blob = path.read_bytes()
    path.write_bytes(blob[:4] + b"\xff" * 4 + blob[8:])


def _json_edit(rel: str, edit):  # noqa: ANN001, ANN202
    def apply(run: Path) -> None:
        tree = json.loads((run / rel).read_text())
        edit(tree)
        (run / rel).write_text(json.dumps(tree))
    return apply


# Failures the fuzz found, as fixed edits of the run (each one a bug until the exit contract holds).
RUN_REGRESSIONS = {
    # TypeError: int() argument must be ... not 'NoneType' (store.py, RunStore.validate).
    "rounds.parquet: a null round": lambda run: _null_round(run / "rounds.parquet"),
    # TypeError: '<' not supported between instances of 'NoneType' and 'int' (RunStore.validate).
    "archive.parquet: a null round": lambda run: _null_round(run / "archive.parquet"),
    # Multi-line messages: pyarrow's text is quoted whole into the one error line.
    "rounds.parquet: page header overwritten": lambda run: _smash_page_header(run / "rounds.parquet"),
    "archive.parquet: page header overwritten": lambda run: _smash_page_header(run / "archive.parquet"),
    "search archive: page header overwritten": lambda run: _smash_page_header(run / "search/round_1/archive.parquet"),
    "checkpoint meta.json: checksums is a number": _json_edit("checkpoints/round_1/meta.json",
                                                              lambda m: m.update(checksums=1)),
    # AttributeError: 'str' object has no attribute 'get' (ParetoSearch.load; _check_search lets it through).
    "search.json: a string": lambda run: (run / "search/round_1/search.json").write_text('"default"'),
    "trainset: a null configuration": _json_edit("trainset/round_1.json", lambda t: t["trainset"].append(None)),
}


@pytest.mark.parametrize("name", sorted(RUN_REGRESSIONS))
def test_run_dir_regressions(fuzz_run_dir: Path, cases: Path, name: str) -> None:
    INPUTS.clear()
    INPUTS["regression"] = name
    d = case_dir(cases)
    run = d / "run"
    shutil.copytree(fuzz_run_dir, run, symlinks=True)
    RUN_REGRESSIONS[name](run)
    with untouched([d, fuzz_run_dir]):
        res = call(run_main, ["--resume", str(run), "--check"], "orchestration/run.py", "regressions: run directory")
    assert res.rc == 2
