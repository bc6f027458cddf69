"""The ``gp`` method's proposer: a GP on the loss, qLogNEHVI with bits exact, and two candidate generators.

:func:`fit_acquisition` fits the GP (:mod:`coalora.search.gp`) on the latest finite values of the archive
(training set first, then the newest, capped at ``max_gp_points``). :class:`GPProposer` draws a torch seed
from the call's generator, fits inside ``torch.random.fork_rng`` (the caller's torch RNG is untouched) and
generates candidates (``SearchSettings.generator``):

- ``pool``: acquisition-scored mutations and crossovers of the segment fronts, then a (1 + λ) hill-climb on
  the acquisition from the best candidates of 2k segments;
- ``fd-walk``: the paper's finite-difference coordinate walk on the acquisition (:func:`fd_walk`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from coalora.core.pareto import ObjectiveBounds, non_dominated_mask, segment_filter, segment_index
from coalora.core.space import QuantSpace
from coalora.errors import SearchError
from coalora.search.archive import Archive, NewConfigs, config_keys, first_unseen
from coalora.search.gp import ConfigEncoder, GPAcquisition, GPInputs
from coalora.search.moves import WalkResult, fd_walk, mutation_pool, random_spread, spread_select
from coalora.search.settings import SearchSettings

# (k, acquisition, parents (P, N, 5), rng, avoid) → (m ≤ k, N, 5)
CandidateGenerator = Callable[[int, GPAcquisition, np.ndarray, np.random.Generator, set[bytes]], np.ndarray]


def gp_training_keys(archive: Archive, train: Sequence[bytes] | None, cap: int) -> list[bytes]:
    """Keys the GP is fitted on: training-set members first, then the newest observations, at most ``cap``."""
    keys, _, _ = archive.finite_latest()
    finite = set(keys)
    recency = sorted(keys, key=lambda k: -archive.latest[k])
    ordered = list(dict.fromkeys([k for k in (train or []) if k in finite] + recency))
    return ordered[:cap]


def fit_acquisition(
    space: QuantSpace,
    settings: SearchSettings,
    archive: Archive,
    train: Sequence[bytes] | None,
    bounds: ObjectiveBounds | None,
    seed: int,
) -> GPAcquisition:
    """Fit the GP on the archive (latest finite values, :func:`gp_training_keys`) and build qLogNEHVI.

    Raises:
        SearchError: fewer than 2 configurations with finite losses.
    """
    keys = gp_training_keys(archive, train, settings.max_gp_points)
    if len(keys) < 2:
        raise SearchError(
            f"the GP needs at least 2 configurations with finite losses; the archive has {len(keys)}. "
            "observe() an initial set (e.g. QuantSpace.sample_near over the bit range) first"
        )
    assert bounds is not None  # set by the first finite observation
    _, l, b = archive.finite_latest(keys)
    pts = bounds.normalise(l, b)
    st = settings
    return GPAcquisition(GPInputs(ConfigEncoder(space, st.encoding), st.kernel, st.n_basis), archive.stack(keys),
                         pts[:, 0], pts[:, 1], bounds, st.fit_maxiter, st.mc_samples, seed, st.max_baseline)


def segment_fronts(archive: Archive, train: Sequence[bytes] | None, edges: np.ndarray) -> np.ndarray:
    """The parents ``(P, N, 5)``: the training set, or the segment filter over everything if none was selected
    (the global front when the filter keeps nothing)."""
    if train:
        keys, _, _ = archive.finite_latest(train)
        if keys:
            return archive.stack(keys)
    keys, l, b = archive.finite_latest()
    mask = segment_filter(l, b, edges)
    if not mask.any():
        mask = non_dominated_mask(np.stack([l, b], -1))
    return archive.stack([k for k, m in zip(keys, mask) if m])


class GPProposer:
    """Proposals that maximise qLogNEHVI (see the module docstring).

    Args:
        space: the configuration space.
        settings: the search settings (GP, generator and pool options).
        edges: ``(U + 1,)`` segment boundaries in bits.

    Attributes:
        last_walks: the walks of the last ``fd-walk`` proposal (for diagnostics).
    """

    proposes = True

    def __init__(self, space: QuantSpace, settings: SearchSettings, edges: np.ndarray) -> None:
        self.space, self.settings, self.edges = space, settings, edges
        self.last_walks: list[WalkResult] = []
        self._generators: dict[str, CandidateGenerator] = {
            "pool": self._pool_candidates, "fd-walk": self._fd_walk_candidates,
        }

    def propose(self, k: int, rng: np.random.Generator, archive: Archive, train: Sequence[bytes] | None,
                bounds: ObjectiveBounds | None) -> np.ndarray:
        import torch

        avoid = archive.known()
        seed = int(rng.integers(2**31 - 1))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            acq = fit_acquisition(self.space, self.settings, archive, train, bounds, seed)
            parents = segment_fronts(archive, train, self.edges)
            return self._generators[self.settings.generator](k, acq, parents, rng, avoid)

    def _pool_candidates(
        self, k: int, acq: GPAcquisition, parents: np.ndarray, rng: np.random.Generator, avoid: set[bytes]
    ) -> np.ndarray:
        space, edges, st = self.space, self.edges, self.settings
        U = len(edges) - 1
        # Generation 1: mutations and crossovers of the segment fronts, plus one random configuration per
        # segment so that empty segments get candidates too.
        explore = random_spread(space, edges, U, rng, set(avoid))
        pool = np.concatenate([mutation_pool(space, parents, rng, st.pool_size), explore])
        pool = pool[first_unseen(pool, avoid)]
        vals = acq(pool)
        seen = avoid | set(config_keys(pool))
        # Later generations: a (1 + λ) hill-climb on the acquisition from 2k lineages, started at the best
        # candidate of as many segments as possible; each generation scores `pool_children` mutants of every
        # lineage head in one batch and moves a head to its best child when that improves the acquisition.
        seg = segment_index(space.average_bits(pool), edges)
        heads = spread_select(vals, seg, 2 * k)
        head_cfg, head_val = pool[heads], vals[heads]
        lam = st.pool_children
        for _ in range(st.pool_generations - 1):
            kids, owner = [], []
            for h in range(len(head_cfg)):
                kids.append(mutation_pool(space, head_cfg[h : h + 1], rng, lam))
                owner.append(np.full(lam, h))
            children, owner_arr = np.concatenate(kids), np.concatenate(owner)
            first = first_unseen(children, seen)
            if not len(first):
                break
            children, owner_arr = children[first], owner_arr[first]
            seen |= set(config_keys(children))
            cvals = acq(children)
            pool = np.concatenate([pool, children])
            vals = np.concatenate([vals, cvals])
            for h in range(len(head_cfg)):
                mine = np.flatnonzero(owner_arr == h)
                if len(mine) and cvals[mine].max() > head_val[h]:
                    best = mine[np.argmax(cvals[mine])]
                    head_cfg[h], head_val[h] = children[best], cvals[best]
        seg = segment_index(space.average_bits(pool), edges)
        if (seg >= 0).sum() >= k:  # candidates outside a configured bit range would never be selected
            inside = np.flatnonzero(seg >= 0)
            pool, vals, seg = pool[inside], vals[inside], seg[inside]
        picked = spread_select(vals, seg, k)
        return pool[picked]

    def _fd_walk_candidates(
        self, k: int, acq: GPAcquisition, parents: np.ndarray, rng: np.random.Generator, avoid: set[bytes]
    ) -> np.ndarray:
        seg = segment_index(self.space.average_bits(parents), self.edges)
        # One start per segment (random segment order, random member), cycling when k exceeds them.
        by_seg = [rng.permutation(np.flatnonzero(seg == u)) for u in rng.permutation(np.unique(seg))]
        starts = []
        for r in range(k * self.settings.fd_starts_per_candidate):
            group = by_seg[r % len(by_seg)]
            starts.append(parents[group[(r // len(by_seg)) % len(group)]])
        self.last_walks = []
        results = []
        for s in starts:
            w = fd_walk(self.space, acq, s, self.settings.fd_max_steps, avoid)
            self.last_walks.append(w)
            if w.best_new is not None:
                results.append((w.best_new_value, w.best_new))
        new = NewConfigs(self.space, k, avoid)
        for _, cfg in sorted(results, key=lambda t: -t[0]):
            new.offer(cfg)
            if new.full:
                break
        return new.configs()
