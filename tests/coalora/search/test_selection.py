"""Selection policies: segment fronts, the frozen set, the growing set; one policy per method."""

from __future__ import annotations

import numpy as np
import pytest

from coalora.errors import SearchError
from coalora.search.selection import POLICIES, KeepAll, KeepFirst, SegmentFronts, make_policy
from coalora.search.settings import METHODS, SearchSettings

EDGES = np.array([2.0, 4.0, 6.0])  # two segments
KEYS = [b"a", b"b", b"c", b"d"]
LOSSES = np.array([1.0, 2.0, 0.5, 0.4])
BITS = np.array([2.5, 3.0, 4.5, 5.5])


def test_segment_fronts_keep_each_segments_non_dominated():
    # Segment [2, 4): a dominates b. Segment [4, 6): c (fewer bits) and d (lower loss) both stay.
    assert SegmentFronts(EDGES).select(None, KEYS, LOSSES, BITS) == [b"a", b"c", b"d"]


def test_segment_fronts_warn_about_outside_and_refuse_all_outside():
    with pytest.warns(RuntimeWarning, match="1 configuration"):
        assert SegmentFronts(EDGES).select(None, KEYS, LOSSES, np.array([2.5, 3.0, 4.5, 7.0])) == [b"a", b"c"]
    with pytest.warns(RuntimeWarning), pytest.raises(SearchError, match="every configuration lies outside"):
        SegmentFronts(EDGES).select(None, KEYS[:1], LOSSES[:1], np.array([7.0]))


def test_segment_fronts_keep_a_configuration_at_the_ranges_edge_despite_rounding():
    # SmolLM2's allocation at the 2.7-bit budget averages 2.6999999999999997 bits (a weighted sum). With
    # bits_range [2.7, 4.5] the gp search once dropped it after round 0 as "outside the bit range".
    import warnings

    edges = np.linspace(2.7, 4.5, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = SegmentFronts(edges).select(None, [b"lo", b"hi"], np.array([6.5, 4.5]),
                                           np.array([2.6999999999999997, 4.500000000000001]))
    assert kept == [b"lo", b"hi"]


def test_frozen_keeps_the_first_selection_and_random_extend_everything():
    assert KeepFirst().select(None, KEYS, LOSSES, BITS) == KEYS
    assert KeepFirst().select([b"b"], KEYS, LOSSES, BITS) == [b"b"]
    assert KeepAll().select([b"b"], KEYS, LOSSES, BITS) == KEYS


def test_every_method_has_a_policy():
    assert set(POLICIES) == set(METHODS)
    kinds = {m: type(make_policy(SearchSettings(method=m), EDGES)) for m in METHODS}
    assert kinds == {"gp": SegmentFronts, "random": SegmentFronts, "nsga2": SegmentFronts,
                     "frozen": KeepFirst, "random-extend": KeepAll}
