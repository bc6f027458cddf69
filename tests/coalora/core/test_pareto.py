"""Pareto masks, exact 2-D hypervolume, reference points and the segment-wise filter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.core.pareto import (
    ObjectiveBounds,
    hypervolume_2d,
    infer_reference_point,
    non_dominated_mask,
    segment_edges,
    segment_filter,
    segment_hypervolumes,
    segment_index,
)
from coalora.errors import ParetoError


def _brute_mask(Y: np.ndarray) -> np.ndarray:
    return np.array([
        not any(np.all(Y[j] <= Y[i]) and np.any(Y[j] < Y[i]) for j in range(len(Y))) for i in range(len(Y))
    ])


# ------------------------------------------------------------------ non-dominated mask
def test_mask_of_hand_made_front_keeps_duplicates():
    Y = np.array([[1, 5], [2, 3], [3, 4], [4, 1], [2, 3], [5, 5]], dtype=float)
    # (3,4) is dominated by (2,3); (5,5) by everything; both copies of (2,3) stay.
    assert non_dominated_mask(Y).tolist() == [True, True, False, True, True, False]


def test_mask_three_objectives_by_hand():
    Y = np.array([[1, 2, 3], [1, 2, 4], [0, 5, 5], [2, 1, 3]], dtype=float)
    assert non_dominated_mask(Y).tolist() == [True, False, True, True]


def test_mask_matches_brute_force_on_random_integer_points():
    rng = np.random.default_rng(0)
    for _ in range(100):
        Y = rng.integers(0, 5, size=(int(rng.integers(1, 25)), 2)).astype(float)
        assert np.array_equal(non_dominated_mask(Y), _brute_mask(Y))


def test_mask_empty_and_bad_input():
    assert non_dominated_mask(np.zeros((0, 2))).shape == (0,)
    with pytest.raises(ParetoError, match="NaN"):
        non_dominated_mask([[1.0, np.nan]])
    with pytest.raises(ParetoError, match="shape"):
        non_dominated_mask([1.0, 2.0])


# ------------------------------------------------------------------ hypervolume
def test_hypervolume_of_hand_made_front():
    # Union of [0,1]x[0.5,1] and [0.5,1]x[0,1]: 0.5 + 0.25.
    assert hypervolume_2d([[0.0, 0.5], [0.5, 0.0]], [1.0, 1.0]) == pytest.approx(0.75)
    # A dominated point and a point beyond the reference add nothing.
    assert hypervolume_2d([[0.0, 0.5], [0.5, 0.0], [0.6, 0.6], [2.0, -1.0]], [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume_2d([[1.0, 0.0]], [1.0, 1.0]) == 0.0
    assert hypervolume_2d(np.zeros((0, 2)), [1.0, 1.0]) == 0.0
    assert hypervolume_2d([[0.25, 0.5], [0.25, 0.5]], [1.0, 1.0]) == pytest.approx(0.375)


def test_hypervolume_agrees_with_botorch_dominated_partitioning():
    from botorch.utils.multi_objective.box_decompositions.dominated import DominatedPartitioning

    rng = np.random.default_rng(1)
    for _ in range(20):
        Y = rng.random((int(rng.integers(1, 40)), 2))
        ref = np.array([1.1, 1.05])
        # BoTorch maximises: negate points and reference.
        bt = DominatedPartitioning(
            ref_point=torch.tensor(-ref, dtype=torch.float64), Y=torch.tensor(-Y, dtype=torch.float64)
        ).compute_hypervolume()
        assert hypervolume_2d(Y, ref) == pytest.approx(float(bt), rel=1e-12, abs=1e-12)


def test_hypervolume_rejects_bad_reference_and_dimensions():
    with pytest.raises(ParetoError, match="reference point"):
        hypervolume_2d([[0.0, 0.0]], [1.0, np.inf])
    with pytest.raises(ParetoError, match="2 objectives"):
        hypervolume_2d([[0.0, 0.0, 0.0]], [1.0, 1.0])


# ------------------------------------------------------------------ reference point and bounds
def test_infer_reference_point_by_hand_and_dominated_by_all():
    assert infer_reference_point([[0.0, 1.0], [2.0, 3.0]]).tolist() == pytest.approx([2.2, 3.2])
    # A column with zero range gets scale·max(|worst|, 1).
    assert infer_reference_point([[1.0, 5.0], [1.0, 3.0]]).tolist() == pytest.approx([1.1, 5.2])
    Y = np.random.default_rng(2).normal(size=(30, 2))
    assert np.all(Y < infer_reference_point(Y))
    with pytest.raises(ParetoError, match="empty"):
        infer_reference_point(np.zeros((0, 2)))


def test_objective_bounds_normalise_and_hypervolume():
    b = ObjectiveBounds(loss=(0.0, 2.0), bits=(2.0, 8.0), margin=0.1)
    assert b.normalise([1.0], [5.0]).tolist() == [[0.5, 0.5]]
    assert b.ref_point.tolist() == pytest.approx([1.1, 1.1])
    assert b.hypervolume([1.0], [5.0]) == pytest.approx(0.6 * 0.6)
    assert ObjectiveBounds.from_dict(b.as_dict()) == b
    with pytest.raises(ParetoError, match="loss bounds"):
        ObjectiveBounds(loss=(1.0, 1.0), bits=(2.0, 8.0))


# ------------------------------------------------------------------ segments
def test_segment_edges_and_index():
    e = segment_edges(2.0, 6.0, 4)
    assert e.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert segment_index([2.0, 2.99, 3.0, 6.0, 1.9, 6.1], e).tolist() == [0, 0, 1, 3, -1, -1]
    # Rounding of a weighted average of bits does not put the range's own edges outside it.
    assert segment_index([2.0 - 4e-16, 6.0 + 9e-16, 2.0 - 1e-6, 6.0 + 1e-6], e).tolist() == [0, 3, -1, -1]
    with pytest.raises(ParetoError, match="positive integer"):
        segment_edges(2.0, 6.0, 0)
    with pytest.raises(ParetoError, match="hi > lo"):
        segment_edges(6.0, 6.0, 3)


def test_segment_filter_keeps_each_segments_front():
    e = segment_edges(2.0, 6.0, 2)  # [2, 4) and [4, 6]
    losses = np.array([0.5, 1.2, 0.7, 0.6, 0.4, 0.1])
    bits = np.array([3.5, 3.0, 4.5, 5.0, 5.5, 7.0])
    keep = segment_filter(losses, bits, e)
    # (0.7, 4.5) is dominated globally by (0.5, 3.5) but is the best of its segment at its bits;
    # (0.6, 5.0) is dominated by nothing in its segment either; (0.1, 7.0) is outside the range.
    assert keep.tolist() == [True, True, True, True, True, False]
    glob = non_dominated_mask(np.stack([losses, bits], -1))
    assert not glob[2] and keep[2]
    losses2 = losses.copy()
    losses2[3] = 0.8  # now dominated by (0.7, 4.5) inside segment 1
    assert segment_filter(losses2, bits, e).tolist() == [True, True, True, False, True, False]


def test_segment_hypervolumes_by_hand():
    bounds = ObjectiveBounds(loss=(0.0, 1.0), bits=(0.0, 2.0), margin=0.1)
    e = segment_edges(0.0, 2.0, 4)
    hv = segment_hypervolumes([0.5, 0.1], [0.0, 1.5], e, bounds)
    # Segment 0: point at its left edge, loss 0.5 → 1.1 − 0.5. Segment 3 = [1.5, 2]: same at loss 0.1.
    assert hv.tolist() == pytest.approx([0.6, 0.0, 0.0, 1.0])
