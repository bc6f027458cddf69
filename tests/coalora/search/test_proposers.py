"""Proposers: the registry covers every method, the frozen one proposes nothing, random is random_spread."""

from __future__ import annotations

import numpy as np
import pytest

from coalora.core.space import space_from_shapes
from coalora.search.gp_proposer import GPProposer
from coalora.search.moves import random_spread
from coalora.search.pareto_search import ParetoSearch
from coalora.search.proposers import PROPOSERS, FrozenProposer, Nsga2Proposer, RandomProposer, make_proposer
from coalora.search.settings import METHODS, SearchSettings

OPTIONS = {"bits": (2, 3, 4, 8), "scale_bits": (8,), "scale2_dtype": ("fp32",), "block": (16, 64), "block2": (256,)}


@pytest.fixture(scope="module")
def space():
    return space_from_shapes(2, {"a": (32, 32), "b": (64, 32)}, options=OPTIONS)


def test_registry_builds_one_proposer_per_method(space):
    assert set(PROPOSERS) == set(METHODS)
    kinds = {m: type(make_proposer(space, SearchSettings(method=m), np.array([2.0, 5.0, 8.5]))) for m in METHODS}
    assert kinds == {"gp": GPProposer, "random": RandomProposer, "nsga2": Nsga2Proposer,
                     "frozen": FrozenProposer, "random-extend": RandomProposer}
    assert [m for m in METHODS if not ParetoSearch(space, SearchSettings(method=m)).proposes] == ["frozen"]


def test_frozen_proposes_nothing(space):
    s = ParetoSearch(space, SearchSettings(method="frozen"))
    out = s.proposer.propose(3, np.random.default_rng(0), s.archive, None, None)
    assert out.shape == (0, 4, 5) and s.propose(3).shape == (0, 4, 5)


def test_random_proposals_are_random_spread_from_the_calls_generator(space):
    s = ParetoSearch(space, SearchSettings(method="random", seed=7, n_segments=6))
    first = s.propose(4)
    assert np.array_equal(first, random_spread(space, s.edges, 4, np.random.default_rng([7, 0]), set()))
    assert not np.array_equal(s.propose(4), first)  # call 1 draws from default_rng([7, 1])


def test_an_exhausted_space_warns_instead_of_proposing():
    tiny = space_from_shapes(1, {"a": (32, 32)}, options={**OPTIONS, "block": (16,), "bits": (2, 4)})
    s = ParetoSearch(tiny, SearchSettings(method="random", n_segments=2))
    every = tiny.sample(np.random.default_rng(0), 40)
    s.observe(every, np.ones(len(every)))
    assert len(s.evaluated()[0]) == 2
    with pytest.warns(RuntimeWarning, match="found only 0 of 2"):
        assert s.propose(2).shape == (0, 1, 5)
