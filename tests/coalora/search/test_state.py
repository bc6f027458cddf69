"""The saved search state: version 2 uses the run directory's column names; version 1 states still load."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from coalora.core.space import space_from_shapes
from coalora.errors import SearchError
from coalora.search.pareto_search import ParetoSearch
from coalora.search.settings import SearchSettings
from coalora.search.state import STATE_VERSION, V1_COLUMNS

OPTIONS = {"bits": (2, 3, 4, 8), "scale_bits": (8,), "scale2_dtype": ("fp32",), "block": (16, 64), "block2": (256,)}


@pytest.fixture(scope="module")
def space():
    return space_from_shapes(2, {"a": (32, 32), "b": (64, 32)}, options=OPTIONS)


def saved(space, path):
    """A random search after one proposal round and one pending proposal, saved at ``path``."""
    s = ParetoSearch(space, SearchSettings(method="random", seed=4, n_segments=6))
    init = space.sample(np.random.default_rng(0), 6)
    s.observe(init, np.linspace(1.0, 2.0, 6))
    s.select_training_set()
    cand = s.propose(3)
    s.observe(cand[:2], [0.5, 0.7])
    s.save(path)
    return s


def test_version_2_writes_avg_bits_and_knobs(space, tmp_path):
    s = saved(space, tmp_path)
    assert STATE_VERSION == 2 and json.loads((tmp_path / "search.json").read_text())["version"] == 2
    t = pq.read_table(tmp_path / "archive.parquet")
    assert "avg_bits" in t.column_names and "knobs" in t.column_names
    assert not {"bits", "config"} & set(t.column_names)
    assert t.column("avg_bits").to_pylist() == [r["avg_bits"] for r in s.archive_rows()]


def test_version_1_state_loads_with_renamed_columns(space, tmp_path):
    s = saved(space, tmp_path)
    # Turn the files into what version 1 wrote: the same JSON fields, the archive's old column names.
    state = json.loads((tmp_path / "search.json").read_text())
    (tmp_path / "search.json").write_text(json.dumps({**state, "version": 1}, indent=1))
    old = {new: name for name, new in V1_COLUMNS.items()}
    t = pq.read_table(tmp_path / "archive.parquet")
    pq.write_table(t.rename_columns([old.get(c, c) for c in t.column_names]), tmp_path / "archive.parquet")
    b = ParetoSearch.load(tmp_path, space)
    assert b.archive_rows() == s.archive_rows()
    assert np.array_equal(b.training_set(), s.training_set()) and b.history == s.history
    assert b.archive.pending == s.archive.pending and len(b.archive.pending) == 1
    assert np.array_equal(b.propose(3), s.propose(3))  # same RNG call counter
    # Saved again, it is a version 2 state.
    b.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "search.json").read_text())["version"] == 2


def test_unknown_version_is_refused(space, tmp_path):
    saved(space, tmp_path)
    state = json.loads((tmp_path / "search.json").read_text())
    for bad in (3, True, None):
        (tmp_path / "search.json").write_text(json.dumps({**state, "version": bad}))
        with pytest.raises(SearchError, match=f"search state version {bad!r} is not 1 or 2"):
            ParetoSearch.load(tmp_path, space)
