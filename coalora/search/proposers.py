"""Proposers: one class per search method behind :class:`Proposer`, built from the settings by :func:`make_proposer`.

A proposer turns the archive into ``k`` new configurations ``(k, N, 5)``: never in the archive, no
duplicates. :class:`~coalora.search.pareto_search.ParetoSearch` hands it the random generator of the call
(``numpy.random.default_rng([seed, call])``), so a proposer draws only from that generator (and, for the GP,
from a torch seed drawn from it).

- ``gp``: :class:`~coalora.search.gp_proposer.GPProposer` (BoTorch GP + qLogNEHVI);
- ``random``, ``random-extend``: :class:`RandomProposer` (random configurations spread over the segments);
- ``nsga2``: :class:`Nsga2Proposer` (Optuna's NSGA-II, :mod:`coalora.search.nsga2`);
- ``frozen``: :class:`FrozenProposer` (proposes nothing).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import numpy as np

from coalora.core.pareto import ObjectiveBounds
from coalora.core.space import QuantSpace
from coalora.search.archive import Archive, empty_configs
from coalora.search.gp_proposer import GPProposer
from coalora.search.moves import random_spread
from coalora.search.nsga2 import Nsga2Study
from coalora.search.settings import SearchSettings


class Proposer(Protocol):
    """Proposes new configurations for one search method.

    Attributes:
        proposes: False for a method that never proposes (its :meth:`propose` returns ``(0, N, 5)``).
    """

    proposes: bool

    def propose(
        self,
        k: int,
        rng: np.random.Generator,
        archive: Archive,
        train: Sequence[bytes] | None,
        bounds: ObjectiveBounds | None,
    ) -> np.ndarray:
        """Up to ``k`` configurations not in ``archive``: ``(m, N, 5)``, ``m ≤ k``.

        Args:
            k: how many (≥ 1).
            rng: this call's generator (the only source of randomness).
            archive: the observations so far.
            train: keys of the current training set (None before the first selection).
            bounds: the objectives' normalisation (None before the first finite observation).
        """
        ...


class RandomProposer:
    """Random configurations near random targets in distinct bit segments (:func:`random_spread`).

    Args:
        space: the configuration space.
        settings: the search settings (unused: random proposals have no options).
        edges: ``(U + 1,)`` segment boundaries in bits.
    """

    proposes = True

    def __init__(self, space: QuantSpace, settings: SearchSettings, edges: np.ndarray) -> None:
        self.space, self.edges = space, edges

    def propose(self, k: int, rng: np.random.Generator, archive: Archive, train: Sequence[bytes] | None,
                bounds: ObjectiveBounds | None) -> np.ndarray:
        return random_spread(self.space, self.edges, k, rng, archive.known())


class Nsga2Proposer:
    """Optuna's NSGA-II, told every finite observation (:class:`~coalora.search.nsga2.Nsga2Study`).

    The study is built on the first proposal and replays the whole archive then, so a search restored from
    its saved state proposes what an uninterrupted one would.
    """

    proposes = True

    def __init__(self, space: QuantSpace, settings: SearchSettings, edges: np.ndarray) -> None:
        self.space, self.population = space, settings.nsga2_population
        self._study: Nsga2Study | None = None

    def propose(self, k: int, rng: np.random.Generator, archive: Archive, train: Sequence[bytes] | None,
                bounds: ObjectiveBounds | None) -> np.ndarray:
        if self._study is None:
            self._study = Nsga2Study(self.space, self.population)
        self._study.sync(archive.rows, archive.configs)
        seed = int(rng.integers(2**31 - 1))
        fallback = archive.stack(archive.finite_latest()[0])
        return self._study.propose(k, seed, archive.known(), rng,
                                   fallback if len(fallback) else self.space.sample(rng, 1))


class FrozenProposer:
    """The ``frozen`` baseline: no proposals; the first training set is kept."""

    proposes = False

    def __init__(self, space: QuantSpace, settings: SearchSettings, edges: np.ndarray) -> None:
        self.space = space

    def propose(self, k: int, rng: np.random.Generator, archive: Archive, train: Sequence[bytes] | None,
                bounds: ObjectiveBounds | None) -> np.ndarray:
        return empty_configs(self.space)


# Every method of SearchSettings.METHODS → its proposer, built from (space, settings, segment edges).
PROPOSERS: dict[str, Callable[[QuantSpace, SearchSettings, np.ndarray], Proposer]] = {
    "gp": GPProposer,
    "random": RandomProposer,
    "nsga2": Nsga2Proposer,
    "frozen": FrozenProposer,
    "random-extend": RandomProposer,
}


def make_proposer(space: QuantSpace, settings: SearchSettings, edges: np.ndarray) -> Proposer:
    """The proposer of ``settings.method`` (validated settings) over the segments ``edges`` (``(U + 1,)``)."""
    return PROPOSERS[settings.method](space, settings, edges)
