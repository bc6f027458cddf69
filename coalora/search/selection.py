"""Training-set selection policies: which configurations the next round trains on.

At the end of a round the search offers a policy the previous training set and the configurations whose
latest loss is finite among (previous set ∪ observed since), and the policy returns the keys to keep
(:class:`~coalora.search.pareto_search.ParetoSearch` orders them by bits). One policy per method, from
:data:`POLICIES`:

- :class:`SegmentFronts` (``gp``, ``random``, ``nsga2``): each bit segment's non-dominated members
  (:func:`coalora.core.pareto.segment_filter`; docs/architecture.md §2.5);
- :class:`KeepFirst` (``frozen``): the first selection (everything finite), then never changed;
- :class:`KeepAll` (``random-extend``): everything finite, so the set only grows (the paper's Fig. 8).
"""

from __future__ import annotations

import warnings
from typing import Callable, Protocol, Sequence

import numpy as np

from coalora.core.pareto import segment_filter, segment_index
from coalora.errors import SearchError
from coalora.search.settings import SearchSettings

# A policy warns about the caller of ParetoSearch.select_training_set, two frames up.
_STACKLEVEL = 3


class SelectionPolicy(Protocol):
    """Chooses the next training set."""

    def select(
        self, previous: Sequence[bytes] | None, keys: list[bytes], losses: np.ndarray, bits: np.ndarray
    ) -> list[bytes]:
        """The keys to keep.

        Args:
            previous: the current training set (None before the first selection).
            keys: the candidates (at least one): configurations with a finite latest loss.
            losses: ``(n,)`` their latest losses.
            bits: ``(n,)`` their average bits.
        """
        ...


class SegmentFronts:
    """Each segment's non-dominated members; configurations outside the segments are left out (a warning).

    Args:
        edges: ``(U + 1,)`` segment boundaries in bits.
    """

    def __init__(self, edges: np.ndarray) -> None:
        self.edges = edges

    def select(
        self, previous: Sequence[bytes] | None, keys: list[bytes], losses: np.ndarray, bits: np.ndarray
    ) -> list[bytes]:
        edges = self.edges
        seg = segment_index(bits, edges)
        outside = int((seg < 0).sum())
        if outside:
            warnings.warn(
                f"{outside} configuration(s) lie outside the bit range [{edges[0]:.4f}, "
                f"{edges[-1]:.4f}] and are left out of the training set", RuntimeWarning, stacklevel=_STACKLEVEL,
            )
        if outside == len(keys):
            raise SearchError(
                f"every configuration lies outside the bit range [{edges[0]:.4f}, {edges[-1]:.4f}]; "
                "widen SearchSettings.bits_range"
            )
        used = np.unique(seg[seg >= 0])
        if len(used) == 1 and len(edges) > 2 and len(keys) > 1:
            u = int(used[0])
            warnings.warn(
                f"all {len(keys)} configurations lie in one bit segment [{edges[u]:.4f}, "
                f"{edges[u + 1]:.4f}); the training set is that segment's front only. Spread the "
                "initial configurations over the bit range (e.g. QuantSpace.sample_near)",
                RuntimeWarning, stacklevel=_STACKLEVEL,
            )
        mask = segment_filter(losses, bits, edges)
        return [k for k, m in zip(keys, mask) if m]


class KeepFirst:
    """The first selection keeps every candidate; later ones keep it unchanged (the ``frozen`` baseline)."""

    def select(
        self, previous: Sequence[bytes] | None, keys: list[bytes], losses: np.ndarray, bits: np.ndarray
    ) -> list[bytes]:
        return list(keys) if previous is None else list(previous)


class KeepAll:
    """Every candidate, so the set only grows (the ``random-extend`` baseline)."""

    def select(
        self, previous: Sequence[bytes] | None, keys: list[bytes], losses: np.ndarray, bits: np.ndarray
    ) -> list[bytes]:
        return list(keys)


# Every method of SearchSettings.METHODS → its policy, built from the segment edges.
POLICIES: dict[str, Callable[[np.ndarray], SelectionPolicy]] = {
    "gp": SegmentFronts,
    "random": SegmentFronts,
    "nsga2": SegmentFronts,
    "frozen": lambda edges: KeepFirst(),  # these two ignore the segments
    "random-extend": lambda edges: KeepAll(),
}


def make_policy(settings: SearchSettings, edges: np.ndarray) -> SelectionPolicy:
    """The selection policy of ``settings.method`` (validated settings) over the segments ``edges``."""
    return POLICIES[settings.method](edges)
