"""Pareto fronts, exact 2-D hypervolume and the segment-wise Pareto filter (docs/architecture.md §2.5).

Conventions (used everywhere in the project):

- Objectives are **minimised**. A point ``a`` dominates ``b`` when ``a ≤ b`` in every objective and
  ``a < b`` in at least one. Identical points do not dominate each other, so duplicates of a front
  point are all kept.
- Hypervolumes are computed on **normalised** objectives with **fixed** bounds chosen by the caller
  (:class:`ObjectiveBounds`): ``(loss − lo)/(hi − lo)`` and ``(bits − lo)/(hi − lo)``, so numbers are
  comparable across rounds, runs and search methods. The reference point is ``(1 + margin, 1 + margin)``
  in that normalised space: every point inside the bounds dominates it strictly. (This is the same
  area as the maximisation form "1 − normalised loss, 1 − normalised bits" against ``(−margin, −margin)``.)
  Points outside the box contribute only the part of their dominated region that lies inside it.
- The bit range is split into ``U`` equal, contiguous segments; the last one is closed on the right.
  Points outside the range belong to no segment (index ``-1``) and are never selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coalora.errors import ParetoError


def _as_points(Y: Any, name: str = "Y") -> np.ndarray:
    arr = np.asarray(Y, dtype=np.float64)
    if arr.ndim != 2:
        raise ParetoError(f"{name} must be a 2-D array of shape (n, m); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ParetoError(f"{name} contains NaN or infinite values; drop them before computing a front")
    return arr


def non_dominated_mask(Y: Any) -> np.ndarray:
    """Which rows are Pareto-optimal under minimisation.

    Args:
        Y: ``(n, m)`` objective values, finite.

    Returns:
        ``(n,)`` bool mask, True for rows no other row dominates (duplicates all kept).
    """
    Y = _as_points(Y)
    n, m = Y.shape
    if n == 0:
        return np.zeros(0, dtype=bool)
    if m == 2:
        # In (f1, f2) lexicographic order a point is non-dominated iff its f2 is below every earlier f2;
        # exact duplicates sit next to each other and share the verdict of the first of their run.
        # O(n log n), vectorised.
        order = np.lexsort((Y[:, 1], Y[:, 0]))
        s1, s2 = Y[order, 0], Y[order, 1]
        prev_min = np.concatenate([[np.inf], np.minimum.accumulate(s2)[:-1]])
        nd = s2 < prev_min
        run_start = np.ones(n, dtype=bool)
        run_start[1:] = (s1[1:] != s1[:-1]) | (s2[1:] != s2[:-1])
        run_id = np.cumsum(run_start) - 1
        nd = nd[np.flatnonzero(run_start)][run_id]
        mask = np.zeros(n, dtype=bool)
        mask[order] = nd
        return mask
    # General m: pairwise comparison in row chunks to bound memory at ~chunk·n·m.
    mask = np.ones(n, dtype=bool)
    chunk = max(1, 2_000_000 // max(1, n * m))
    for s in range(0, n, chunk):
        block = Y[s : s + chunk, None, :]  # (c, 1, m)
        le = np.all(Y[None, :, :] <= block, axis=-1)  # other ≤ this
        lt = np.any(Y[None, :, :] < block, axis=-1)
        mask[s : s + chunk] = ~np.any(le & lt, axis=1)
    return mask


def hypervolume_2d(Y: Any, ref: Any) -> float:
    """Exact area dominated by a set of 2-D points and bounded by a reference point (minimisation).

    Args:
        Y: ``(n, 2)`` points, finite.
        ref: ``(2,)`` reference point. Only the part of each point's dominated box that lies below
            ``ref`` counts, so points not strictly better than ``ref`` in both objectives add nothing.

    Returns:
        The area of ``∪_j [Y_j, ref]``.
    """
    Y = _as_points(Y)
    if Y.shape[1] != 2:
        raise ParetoError(f"hypervolume_2d needs 2 objectives; got {Y.shape[1]}")
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    if r.shape != (2,) or not np.all(np.isfinite(r)):
        raise ParetoError(f"reference point must be 2 finite numbers; got {ref!r}")
    Y = Y[(Y[:, 0] < r[0]) & (Y[:, 1] < r[1])]
    if len(Y) == 0:
        return 0.0
    Y = Y[np.lexsort((Y[:, 1], Y[:, 0]))]
    # Horizontal strips: walking in increasing f1, each new record low f2 adds the strip
    # [f1, ref1] × [f2, previous record f2].
    area = 0.0
    ceiling = r[1]
    for f1, f2 in Y:
        if f2 < ceiling:
            area += (r[0] - f1) * (ceiling - f2)
            ceiling = f2
    return float(area)


def infer_reference_point(Y: Any, scale: float = 0.1) -> np.ndarray:
    """A reference point strictly dominated by every row of ``Y`` (minimisation).

    ``ref = worst + scale · range`` per objective, where ``worst`` is the column maximum and
    ``range`` the column's max − min; a column with zero range uses ``scale · max(|worst|, 1)``
    instead, so the point is always strictly worse than every row.

    Args:
        Y: ``(n, m)`` finite points, ``n ≥ 1``.
        scale: positive margin as a fraction of the range.

    Returns:
        ``(m,)`` reference point.
    """
    Y = _as_points(Y)
    if len(Y) == 0:
        raise ParetoError("cannot infer a reference point from an empty set of points")
    if not scale > 0:
        raise ParetoError(f"scale must be positive; got {scale}")
    worst = Y.max(axis=0)
    span = worst - Y.min(axis=0)
    span = np.where(span > 0, span, np.maximum(np.abs(worst), 1.0))
    return worst + scale * span


@dataclass(frozen=True)
class ObjectiveBounds:
    """Fixed normalisation of (loss, bits) for hypervolumes that are comparable across runs.

    Attributes:
        loss: ``(lo, hi)`` of the loss: lo maps to 0, hi to 1.
        bits: ``(lo, hi)`` of the average bits, usually the space's attainable range.
        margin: the reference point is ``(1 + margin, 1 + margin)`` in normalised units.
    """

    loss: tuple[float, float]
    bits: tuple[float, float]
    margin: float = 0.1

    def __post_init__(self) -> None:
        for name in ("loss", "bits"):
            lo, hi = getattr(self, name)
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise ParetoError(f"{name} bounds must be finite with hi > lo; got ({lo}, {hi})")
        if not self.margin >= 0:
            raise ParetoError(f"margin must be ≥ 0; got {self.margin}")

    @property
    def ref_point(self) -> np.ndarray:
        """``(2,)`` reference point in normalised (loss, bits) space."""
        return np.full(2, 1.0 + self.margin)

    def normalise(self, losses: Any, bits: Any) -> np.ndarray:
        """``(n,)`` losses and ``(n,)`` bits → ``(n, 2)`` normalised points."""
        l = np.asarray(losses, dtype=np.float64).reshape(-1)
        b = np.asarray(bits, dtype=np.float64).reshape(-1)
        if l.shape != b.shape:
            raise ParetoError(f"{l.size} losses but {b.size} bit values")
        return np.stack(
            [(l - self.loss[0]) / (self.loss[1] - self.loss[0]), (b - self.bits[0]) / (self.bits[1] - self.bits[0])],
            axis=-1,
        )

    def hypervolume(self, losses: Any, bits: Any) -> float:
        """Normalised hypervolume of the points ``(losses[j], bits[j])`` (dominated ones add nothing)."""
        return hypervolume_2d(self.normalise(losses, bits), self.ref_point)

    def as_dict(self) -> dict[str, Any]:
        return {"loss": list(self.loss), "bits": list(self.bits), "margin": self.margin}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ObjectiveBounds":
        return cls(tuple(d["loss"]), tuple(d["bits"]), float(d["margin"]))  # type: ignore[arg-type]


def segment_edges(lo: float, hi: float, n_segments: int) -> np.ndarray:
    """``U + 1`` edges of ``U`` equal segments over ``[lo, hi]``: ``(U + 1,)``."""
    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments < 1:
        raise ParetoError(f"the number of segments must be a positive integer; got {n_segments!r}")
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ParetoError(f"segment range must be finite with hi > lo; got [{lo}, {hi}]")
    return np.linspace(float(lo), float(hi), int(n_segments) + 1)


# Bits by which a point may miss the outer edges of the segments and still count as inside: far above a
# float sum's rounding (1e-15) and far below any step between options (1/64 of a bit and more).
EDGE_TOLERANCE = 1e-9


def segment_index(bits: Any, edges: Any) -> np.ndarray:
    """Segment of each point: ``(n,)`` bits → ``(n,)`` int in ``[0, U)``, or ``-1`` outside the range.

    Segments are half-open ``[e_u, e_{u+1})`` except the last, which includes its right edge. A point
    within :data:`EDGE_TOLERANCE` bits of an outer edge is inside: an average of bits is a weighted sum, and
    the allocation at a 2.7-bit budget averages 2.6999999999999997 bits, which would otherwise leave the
    range's own lowest configuration out of every segment (and of the gp search's training set).
    """
    b = np.asarray(bits, dtype=np.float64).reshape(-1)
    e = np.asarray(edges, dtype=np.float64)
    seg = np.clip(np.searchsorted(e, b, side="right") - 1, 0, len(e) - 2)
    outside = (b < e[0] - EDGE_TOLERANCE) | (b > e[-1] + EDGE_TOLERANCE) | ~np.isfinite(b)
    return np.where(outside, -1, seg).astype(np.int64)


def segment_filter(losses: Any, bits: Any, edges: Any) -> np.ndarray:
    """The segment-wise Pareto filter: the union over segments of each segment's non-dominated set.

    Args:
        losses: ``(n,)`` finite losses.
        bits: ``(n,)`` average bits.
        edges: ``(U + 1,)`` segment edges (:func:`segment_edges`).

    Returns:
        ``(n,)`` bool mask of the kept points; points outside the bit range are never kept.
    """
    l = np.asarray(losses, dtype=np.float64).reshape(-1)
    b = np.asarray(bits, dtype=np.float64).reshape(-1)
    if l.shape != b.shape:
        raise ParetoError(f"{l.size} losses but {b.size} bit values")
    seg = segment_index(b, edges)
    keep = np.zeros(l.shape, dtype=bool)
    Y = np.stack([l, b], axis=-1)
    for u in np.unique(seg[seg >= 0]):
        members = np.flatnonzero(seg == u)
        keep[members] = non_dominated_mask(Y[members])
    return keep


def segment_hypervolumes(losses: Any, bits: Any, edges: Any, bounds: ObjectiveBounds) -> np.ndarray:
    """Per-segment hypervolume, each in loss units: ``(U,)``.

    For segment ``u`` with normalised edges ``[a, c]``, the area dominated by its members inside the
    slab ``[a, c] × [·, ref_loss]`` (reference point ``(ref_loss, c)``), divided by the slab width
    ``c − a``. It is therefore the mean, across the slab, of how far the segment's front lies below the
    loss reference; an empty segment scores 0 and a segment whose best point sits at its left edge with
    normalised loss ``l`` scores ``ref_loss − l``.
    """
    l = np.asarray(losses, dtype=np.float64).reshape(-1)
    b = np.asarray(bits, dtype=np.float64).reshape(-1)
    e = np.asarray(edges, dtype=np.float64)
    seg = segment_index(b, e)
    pts = bounds.normalise(l, b)
    e_norm = (e - bounds.bits[0]) / (bounds.bits[1] - bounds.bits[0])
    out = np.zeros(len(e) - 1)
    for u in range(len(e) - 1):
        members = pts[seg == u]
        if len(members) == 0:
            continue
        ref = np.array([bounds.ref_point[0], e_norm[u + 1]])
        width = e_norm[u + 1] - e_norm[u]
        out[u] = hypervolume_2d(members, ref) / width
    return out
