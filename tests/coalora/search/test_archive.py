"""The observation archive: keys, de-duplication, rows and latest values, the table round trip."""

from __future__ import annotations

import numpy as np
import pytest

from coalora.core.space import space_from_shapes
from coalora.search.archive import COLUMNS, Archive, NewConfigs, config_keys, first_unseen

OPTIONS = {"bits": (2, 3, 4, 8), "scale_bits": (8,), "scale2_dtype": ("fp32",), "block": (16, 64), "block2": (256,)}


@pytest.fixture(scope="module")
def space():
    # 4 matrices × 8 options.
    return space_from_shapes(2, {"a": (32, 32), "b": (64, 32)}, options=OPTIONS)


def test_config_keys_are_exact_and_distinct(space):
    C = space.sample(np.random.default_rng(0), 30)
    keys = config_keys(C)
    assert len(keys) == 30
    assert len(set(keys)) == len({c.tobytes() for c in C})
    assert config_keys(C[:1].copy()) == keys[:1]
    assert config_keys(C[:0]) == []


def test_new_configs_skips_known_and_repeated_and_stops_at_k(space):
    C = space.sample(np.random.default_rng(1), 4)
    C = C[np.unique(config_keys(C), return_index=True)[1]][:3]
    avoid = {config_keys(C[:1])[0]}
    new = NewConfigs(space, 2, avoid)
    assert [new.offer(c) for c in (C[0], C[1], C[1])] == [False, True, False]
    assert not new.full
    assert new.offer(C[2]) and new.full
    assert np.array_equal(new.configs(), C[1:3])
    assert avoid == set(config_keys(C))  # the caller's set learns what was kept
    assert NewConfigs(space, 2, set()).configs().shape == (0, 4, 5)


def test_first_unseen_keeps_first_occurrences_of_unknown(space):
    C = space.sample(np.random.default_rng(2), 3)
    C = C[np.unique(config_keys(C), return_index=True)[1]]
    cands = np.stack([C[0], C[1], C[0], C[2], C[1]])
    assert first_unseen(cands, {config_keys(C[2:3])[0]}).tolist() == [0, 1]


def test_rows_latest_values_and_proposed_flags(space):
    a = Archive(space)
    C = space.sample(np.random.default_rng(3), 2)
    C[1] = C[0]
    C[1, 0, 0] = (C[0, 0, 0] + 1) % 4  # two distinct configurations
    a.mark_proposed(C[1:])
    assert a.add(C, np.array([1.0, np.nan]), round=0) == config_keys(C)
    assert [(r.row, r.status, r.proposed) for r in a.rows] == [(0, "ok", False), (1, "nonfinite", True)]
    assert not a.pending and a.pending_configs().shape == (0, 4, 5)
    keys, losses, bits = a.finite_latest()
    assert keys == config_keys(C[:1]) and losses.tolist() == [1.0]
    assert bits.tolist() == pytest.approx([float(space.average_bits(C[0]))])
    # Observed again: a new row, the latest value counts (a finite one brings C[1] back, the NaN hides C[0]).
    a.add(C[::-1], np.array([0.5, np.inf]), round=1)
    assert a.latest == {config_keys(C[1:])[0]: 2, config_keys(C[:1])[0]: 3}
    assert a.finite_latest()[0] == config_keys(C[1:])
    assert not a.rows[2].proposed  # only the first observation of a proposal is marked


def test_table_round_trips_through_records(space):
    a = Archive(space)
    C = space.sample(np.random.default_rng(4), 3)
    a.add(C, np.array([3.0, 2.0, 1.0]), round=0)
    a.add(C[:1], np.array([0.5]), round=1)
    t = a.table()
    assert tuple(t.column_names) == COLUMNS
    assert t.column("knobs").to_pylist()[0] == C[0].reshape(-1).tolist()
    assert a.records()[0]["knobs"] == C[0].tolist()
    b, by_id = Archive.from_records(space, t.to_pylist())
    assert b.records() == a.records() and b.latest == a.latest
    assert by_id == {space.config_id(c): k for c, k in zip(C, config_keys(C))}
