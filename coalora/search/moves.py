"""Candidate moves of the configuration search: mutations, the finite-difference walk, spread selection,
random configurations spread over the bit segments.

All work on index arrays of a :class:`~coalora.core.space.QuantSpace`: one configuration is ``(N, 5)``, a batch
``(B, N, 5)``. Used by the proposers (:mod:`coalora.search.proposers`); no BoTorch here (the walk takes any
scoring function).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from coalora.core.space import KNOBS, QuantSpace
from coalora.search.archive import NewConfigs, config_keys


def mutation_pool(
    space: QuantSpace, parents: np.ndarray, rng: np.random.Generator, size: int
) -> np.ndarray:
    """Children of ``parents`` by local moves and crossover: ``(P, N, 5)`` → ``(size, N, 5)``.

    Moves, chosen per child: *step* (±1 on 1–4 random knobs, reflected at the ends of a knob's range),
    *swap* (one matrix one bit level up, another one down: moves within a bit segment), *resample*
    (1–2 matrices get a random option) and *cross* (uniform per-matrix crossover of two parents, then a
    step). Children may repeat parents or each other; the caller de-duplicates.
    """
    card = space.cardinalities
    varying = np.flatnonzero(card > 1)
    n = space.n_matrices
    out = np.empty((size, n, len(KNOBS)), dtype=np.int64)
    if len(varying) == 0:
        out[:] = parents[0]
        return out
    bits_k = KNOBS.index("bits")
    can_swap = card[bits_k] > 1 and n > 1
    moves = rng.choice(4, size=size, p=[0.35, 0.25 if can_swap else 0.0, 0.2, 0.2 + (0.0 if can_swap else 0.25)])
    for c in range(size):
        child = parents[rng.integers(len(parents))].copy()
        move = moves[c]
        if move == 3 and len(parents) > 1:
            other = parents[rng.integers(len(parents))]
            take = rng.random(n) < 0.5
            child[take] = other[take]
            move = 0
        if move == 1:
            i, j = rng.choice(n, size=2, replace=False)
            child[i, bits_k] = _reflect(child[i, bits_k] + 1, card[bits_k])
            child[j, bits_k] = _reflect(child[j, bits_k] - 1, card[bits_k])
        elif move == 2:
            for i in rng.choice(n, size=min(n, 1 + int(rng.integers(2))), replace=False):
                child[i] = rng.integers(0, card)
        else:
            for _ in range(min(4, int(rng.geometric(0.5)))):
                i, k = int(rng.integers(n)), int(varying[rng.integers(len(varying))])
                child[i, k] = _reflect(child[i, k] + (1 if rng.random() < 0.5 else -1), card[k])
        out[c] = child
    return out


def _reflect(v: int, card: int) -> int:
    """Keep an index in ``[0, card)`` by bouncing off the ends (a step past the top goes one down)."""
    if v >= card:
        return max(card - 2, 0)
    if v < 0:
        return min(1, card - 1)
    return int(v)


@dataclass
class WalkResult:
    """Outcome of one :func:`fd_walk`.

    Attributes:
        config: ``(N, 5)`` end point of the walk.
        start_value, end_value: acquisition at the start and end point (end ≥ start).
        steps: accepted moves.
        local_optimum: True when the walk stopped because no ±1 move improves the acquisition
            (False: it hit the step cap).
        best_new: ``(N, 5)`` best-scoring configuration seen (end point or a scored neighbour) that is not
            in ``avoid``, or None; what the GP proposer takes when the end point is known.
        best_new_value: its acquisition value (−inf if none).
    """

    config: np.ndarray
    start_value: float
    end_value: float
    steps: int
    local_optimum: bool
    best_new: np.ndarray | None
    best_new_value: float


def fd_walk(
    space: QuantSpace,
    score: Callable[[np.ndarray], np.ndarray],
    start: np.ndarray,
    max_steps: int,
    avoid: set[bytes] | None = None,
) -> WalkResult:
    """The paper's finite-difference coordinate walk on an acquisition function (δ = 1), made sound.

    Each step scores every ±1 neighbour of ``x`` in one batch, forms the per-coordinate gradient
    estimate ``g_j = (a(x+e_j) − a(x−e_j))/2`` (a one-sided *difference* ``±(a(x±e_j) − a(x))`` where
    only one side exists; the authors' code used the raw value there, which always pointed out of the
    range and returned the start point), and moves along ``sign(g_j)`` on the coordinate with the largest
    ``|g_j|`` whose move stays in range **and increases** the acquisition. It stops at a local optimum
    (no ±1 move improves) or after ``max_steps`` moves, never because a coordinate is at a boundary.

    Args:
        space: the configuration space.
        score: ``(B, N, 5)`` → ``(B,)`` acquisition values (higher is better).
        start: ``(N, 5)`` start point.
        max_steps: step cap (≥ 0).
        avoid: keys (:func:`config_keys`) that ``best_new`` must not be.
    """
    avoid = avoid if avoid is not None else set()
    card = space.cardinalities
    coords = [(i, k) for i in range(space.n_matrices) for k in range(len(KNOBS)) if card[k] > 1]
    ci = np.array([c[0] for c in coords], dtype=np.int64)
    ck = np.array([c[1] for c in coords], dtype=np.int64)
    x = space.validate(start).copy()
    a0 = float(score(x[None])[0])
    start_value = a0
    best_new, best_new_value = (x.copy(), a0) if config_keys(x[None])[0] not in avoid else (None, -math.inf)
    steps, local_opt = 0, False
    while True:
        v = x[ci, ck]
        up_ok, dn_ok = v + 1 < card[ck], v - 1 >= 0
        nb = np.repeat(x[None], 2 * len(coords), axis=0)
        j = np.arange(len(coords))
        nb[j, ci, ck] = np.minimum(v + 1, card[ck] - 1)
        nb[len(coords) + j, ci, ck] = np.maximum(v - 1, 0)
        valid = np.concatenate([up_ok, dn_ok])
        vals = np.full(2 * len(coords), -np.inf)
        vals[valid] = score(nb[valid])
        a_up, a_dn = vals[: len(coords)], vals[len(coords) :]
        for r in np.argsort(-vals, kind="stable"):  # the best scored neighbour not in `avoid`
            if not vals[r] > best_new_value:
                break
            if config_keys(nb[r : r + 1])[0] not in avoid:
                best_new, best_new_value = nb[r].copy(), float(vals[r])
                break
        if steps >= max_steps:
            break
        g = np.where(up_ok & dn_ok, (a_up - a_dn) / 2, np.where(up_ok, a_up - a0, a0 - a_dn))
        direction = np.where(g >= 0, 1, -1)
        target_val = np.where(direction > 0, a_up, a_dn)  # -inf where that side is out of range
        improving = target_val > a0
        if not improving.any():
            local_opt = True
            break
        order = np.argsort(-np.where(improving, np.abs(g), -1.0), kind="stable")
        c = int(order[0])
        x[ci[c], ck[c]] += direction[c]
        a0 = float(target_val[c])
        steps += 1
    return WalkResult(x, start_value, a0, steps, local_opt, best_new, best_new_value)


def spread_select(values: np.ndarray, segments: np.ndarray, k: int) -> list[int]:
    """Pick ``k`` candidates by value, at most one per segment per pass: ``(M,), (M,)`` → indices.

    Pass 1 takes the best candidate of each segment in order of value until ``k`` are taken; further
    passes repeat over what is left, so proposals cover as many segments as the pool allows.
    """
    order = np.argsort(-values, kind="stable")
    chosen: list[int] = []
    taken = np.zeros(len(values), dtype=bool)
    while len(chosen) < k and not taken.all():
        used: set[int] = set()
        for c in order:
            if taken[c] or int(segments[c]) in used:
                continue
            used.add(int(segments[c]))
            taken[c] = True
            chosen.append(int(c))
            if len(chosen) == k:
                break
    return chosen


def random_spread(
    space: QuantSpace, edges: np.ndarray, k: int, rng: np.random.Generator, avoid: set[bytes]
) -> np.ndarray:
    """Up to ``k`` random configurations near random targets in distinct segments: ``(m, N, 5)``, ``m ≤ k``.

    Segments (``edges``: ``(U + 1,)`` bit boundaries) are visited in a random order and cycle when
    ``k > U``; each target is uniform in its segment, clipped to the space's attainable bits. Configurations
    in ``avoid`` are skipped, and the kept ones are added to it; after ``50 k`` draws it gives up.
    """
    U = len(edges) - 1
    lo_att, hi_att = space.min_bits, space.max_bits
    new = NewConfigs(space, k, avoid)
    order = rng.permutation(U)
    for attempt in range(50 * k):
        if new.full:
            break
        u = int(order[attempt % U])
        a, c = edges[u], edges[u + 1]
        target = float(np.clip(rng.uniform(a, c), lo_att, hi_att))
        new.offer(space.sample_near(target, rng, 1, tol=(c - a) / 2)[0])
    return new.configs()
