"""Candidate moves: mutation pool, the finite-difference walk, spread selection."""

from __future__ import annotations

import numpy as np
import pytest

from coalora.core.space import space_from_shapes
from coalora.search.archive import config_keys
from coalora.search.moves import fd_walk, mutation_pool, spread_select

OPTIONS = {"bits": (2, 3, 4, 8), "scale_bits": (8,), "scale2_dtype": ("fp32",), "block": (16, 64), "block2": (256,)}


@pytest.fixture(scope="module")
def space():
    # 4 matrices × 8 options.
    return space_from_shapes(2, {"a": (32, 32), "b": (64, 32)}, options=OPTIONS)


def test_mutation_pool_gives_valid_children_near_their_parents(space):
    rng = np.random.default_rng(0)
    parents = space.sample(rng, 3)
    kids = mutation_pool(space, parents, rng, 200)
    assert kids.shape == (200, 4, 5)
    space.validate(kids)
    # Knobs with a single option never move.
    assert np.all(kids[..., [1, 2, 4]] == 0)
    # Without crossover every child is within a few knob changes of some parent.
    one = mutation_pool(space, parents[:1], rng, 100)
    changed = (one != parents[0]).sum(axis=(1, 2))
    assert changed.max() <= 8 and np.mean(changed > 0) > 0.5


def test_fd_walk_climbs_to_an_interior_optimum_from_a_boundary_start(space):
    target = np.array([[2, 0, 0, 1, 0], [1, 0, 0, 0, 0], [2, 0, 0, 1, 0], [1, 0, 0, 1, 0]])

    def score(C):
        return -np.abs(np.asarray(C) - target).sum(axis=(-1, -2)).astype(float)

    start = np.zeros_like(target)  # every knob at the bottom of its range: the authors' walk stopped here
    w = fd_walk(space, score, start, max_steps=50)
    assert w.local_optimum and w.steps == 9  # the L1 distance from the start
    assert np.array_equal(w.config, target)
    assert w.end_value == 0.0 > w.start_value


def test_fd_walk_respects_the_step_cap_and_avoid_set(space):
    target = np.zeros((4, 5), dtype=np.int64)
    target[:, 0] = 3

    def score(C):
        return -np.abs(np.asarray(C) - target).sum(axis=(-1, -2)).astype(float)

    w = fd_walk(space, score, np.zeros((4, 5), dtype=np.int64), max_steps=2)
    assert w.steps == 2 and not w.local_optimum
    # Started at the optimum with the optimum avoided: no step, and the best *new* configuration is the
    # best neighbour instead of the start point.
    w2 = fd_walk(space, score, target, max_steps=5, avoid=set(config_keys(target[None])))
    assert w2.local_optimum and w2.steps == 0
    assert w2.best_new is not None and np.abs(w2.best_new - target).sum() == 1
    assert w2.best_new_value == -1.0


def test_fd_walk_takes_an_improving_move_even_when_gradients_tie(space):
    # a(x) rises by 1 whichever way the last matrix's bits index moves from 1: its central difference is
    # 0 like every other coordinate's, and the walk must still take that improving move rather than a
    # flat one (or stop).
    def score(C):
        C = np.asarray(C)
        return (np.abs(C[..., 3, 0] - 1) == 1).astype(float)

    start = np.zeros((4, 5), dtype=np.int64)
    start[3, 0] = 1
    w = fd_walk(space, score, start, max_steps=3)
    assert w.steps >= 1 and w.end_value == 1.0


def test_spread_select_takes_one_per_segment_first():
    values = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    segs = np.array([0, 0, 1, 1, 2])
    assert spread_select(values, segs, 3) == [0, 2, 4]
    assert spread_select(values, segs, 5) == [0, 2, 4, 1, 3]
    assert spread_select(values, segs, 9) == [0, 2, 4, 1, 3]
