"""Pareto-based configuration search: archive, GP proposals, baselines, training-set selection (DESIGN §2.5).

Both objectives are minimised: ``f1`` is a loss supplied by the caller, ``f2`` the exact average bits of
the configuration (computed here, never modelled). One :class:`ParetoSearch` holds

- the **archive**: one row per observation ``(round, config, loss, bits, status)``. A configuration may be
  observed again in a later round (the real loss changes as the model trains); every observation stays
  as a history row, and the latest finite value per configuration is what the GP and the filters use;
- the **training set**: the segment-wise Pareto filter (U equal bit segments, :mod:`coalora.pareto`) over
  the previous training set ∪ the configurations observed since the last selection.

A round, as the orchestrator drives it::

    search.observe(configs, losses)          # (B, N, 5), (B,): training set ∪ last candidates, re-scored
    train = search.select_training_set()     # (T, N, 5); closes the round, records its hypervolume
    cand = search.propose(k)                 # (k, N, 5) new configurations, spread over segments
    ... evaluate cand (and the next training set) ..., then observe again

Methods (``SearchSettings.method``): ``gp`` (BoTorch GP on f1 + qLogNEHVI with bits as a deterministic
objective), and the baselines ``random``, ``nsga2`` (Optuna NSGA-II), ``frozen`` (no proposals, the first
selected set is kept) and ``random-extend`` (random proposals, the set only grows; the paper's Fig. 8).
The GP's candidate generators (``SearchSettings.generator``): ``pool`` (default; acquisition-scored
mutations and crossovers of the segment fronts, two generations) and ``fd-walk`` (the paper's
finite-difference coordinate walk on the acquisition, with an acceptance test: :func:`fd_walk`).

Everything is seeded: call ``j`` of :meth:`ParetoSearch.propose` uses ``numpy.random.default_rng([seed, j])``
and a torch seed derived from it inside ``torch.random.fork_rng`` (the caller's torch RNG is untouched),
so two runs with the same seed and observations give the same proposals, also across save/load.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from coalora.pareto import (
    ObjectiveBounds,
    ParetoError,
    infer_reference_point,
    non_dominated_mask,
    segment_edges,
    segment_filter,
    segment_index,
)
from coalora.space import KNOBS, QuantSpace, SpaceError

METHODS: tuple[str, ...] = ("gp", "random", "nsga2", "frozen", "random-extend")
GENERATORS: tuple[str, ...] = ("pool", "fd-walk")
ENCODINGS: tuple[str, ...] = ("full", "bits", "layer")
STATE_VERSION = 1
_STATE_JSON = "search.json"
_ARCHIVE_PARQUET = "archive.parquet"


class SearchError(ValueError):
    """Bad input to the search (k ≤ 0, empty archive, unknown setting, unreadable state). Names the problem."""


def _use_pure_pytorch_log_ehvi() -> None:
    """Keep BoTorch on its pure-PyTorch qLog(N)EHVI path.

    BoTorch ≥ 0.17 JIT-compiles a C++ kernel (``-march=native``, via ``torch.utils.cpp_extension``)
    the first time a qLog(N)EHVI is built. That costs a minute of compilation in every fresh
    environment, builds binaries tied to one CPU model (clusters mix them), and waits forever on the
    build directory's lock file if an earlier process was killed mid-build (seen here: a search actor
    hung for good). The kernel only speeds up the acquisition's inner loop, which is not our
    bottleneck, so we mark it as already tried; BoTorch then uses its Python implementation.
    """
    try:
        from botorch.acquisition.multi_objective import logei
    except ImportError:  # pragma: no cover - botorch is a dependency
        return
    if getattr(logei, "_C", None) is None:
        logei._load_attempted = True


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class SearchSettings:
    """How the search proposes and selects. Every field is validated by :meth:`validate`.

    Attributes:
        method: one of :data:`METHODS`.
        generator: candidate generator of the ``gp`` method, one of :data:`GENERATORS`.
        encoding: GP input encoding, one of :data:`ENCODINGS` (see :class:`ConfigEncoder`).
        n_segments: U, the number of equal bit segments of the filter (paper: 40).
        bits_range: ``(lo, hi)`` of the segments and of the hypervolume's bits axis; None → the space's
            attainable range.
        loss_range: ``(lo, hi)`` that normalises the loss for hypervolumes; None → ``(min(0, first min),
            first max)`` of the first observed finite losses, then frozen (pass it for numbers comparable
            across runs).
        hv_margin: reference point ``1 + hv_margin`` in normalised units (:class:`ObjectiveBounds`).
        seed: seeds every random choice.
        max_gp_points: cap on GP training points (training set first, then the most recent ones).
        fit_maxiter: L-BFGS iterations of the GP fit (the fit cost is linear in it).
        mc_samples: quasi-MC samples of qLogNEHVI.
        max_baseline: qLogNEHVI's baseline: the observed points most likely to be Pareto-optimal, at most
            this many (its cost per candidate grows with the baseline).
        pool_size: candidates of the first pool generation (the second has half as many).
        fd_max_steps: step cap of each fd-walk.
        fd_starts_per_candidate: fd-walk start points per requested candidate (≥ 1).
        nsga2_population: NSGA-II population size.
    """

    method: str = "gp"
    generator: str = "pool"
    encoding: str = "bits"
    n_segments: int = 40
    bits_range: tuple[float, float] | None = None
    loss_range: tuple[float, float] | None = None
    hv_margin: float = 0.1
    seed: int = 0
    max_gp_points: int = 256
    fit_maxiter: int = 60
    mc_samples: int = 64
    max_baseline: int = 32
    pool_size: int = 512
    fd_max_steps: int = 10
    fd_starts_per_candidate: int = 1
    nsga2_population: int = 16

    def validate(self) -> "SearchSettings":
        for name, allowed in (("method", METHODS), ("generator", GENERATORS), ("encoding", ENCODINGS)):
            if getattr(self, name) not in allowed:
                raise SearchError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        positive = ("n_segments", "max_gp_points", "fit_maxiter", "mc_samples", "max_baseline", "pool_size", "fd_max_steps",
                    "fd_starts_per_candidate")
        for name in positive:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise SearchError(f"{name} must be a positive integer; got {v!r}")
        if isinstance(self.nsga2_population, bool) or not isinstance(self.nsga2_population, int) or self.nsga2_population < 2:
            raise SearchError(f"nsga2_population must be an integer ≥ 2; got {self.nsga2_population!r}")
        if self.max_gp_points < 2:
            raise SearchError(f"max_gp_points must be at least 2; got {self.max_gp_points}")
        for name in ("bits_range", "loss_range"):
            r = getattr(self, name)
            if r is not None:
                if len(r) != 2 or not all(math.isfinite(float(x)) for x in r) or not float(r[1]) > float(r[0]):
                    raise SearchError(f"{name} must be (lo, hi) with finite lo < hi; got {r!r}")
                setattr(self, name, (float(r[0]), float(r[1])))
        if not (math.isfinite(self.hv_margin) and self.hv_margin > 0):
            raise SearchError(f"hv_margin must be a positive number; got {self.hv_margin!r}")
        return self


# ---------------------------------------------------------------------------------------------- encoding
class ConfigEncoder:
    """Maps configurations to GP inputs in ``[0, 1]^d`` in which the average bits is affine.

    - ``full``: per matrix, every knob with more than one option as ``index / (cardinality − 1)``, then
      every matrix's storage bits scaled to ``[0, 1]`` by the space's bit range: ``d = N·K' + N``.
    - ``bits``: only the per-matrix storage bits: ``d = N``.
    - ``layer``: per-layer and per-module-type numel-weighted mean of the scaled bits: ``d = L + T``.

    ``avg_bits(C) = encode(C) @ a + b`` with ``(a, b) = bits_affine()``, which lets bits enter the
    acquisition exactly, as a deterministic model.
    """

    def __init__(self, space: QuantSpace, kind: str) -> None:
        if kind not in ENCODINGS:
            raise SearchError(f"encoding {kind!r} is not one of {list(ENCODINGS)}")
        self.space, self.kind = space, kind
        self.lo = space.min_bits
        self.span = max(space.max_bits - space.min_bits, 1e-12)
        self.varying = [k for k in range(len(KNOBS)) if space.cardinalities[k] > 1]
        w = space.numels / space.numels.sum()
        n = space.n_matrices
        if kind == "full":
            self.dim = n * len(self.varying) + n
            self._a = np.concatenate([np.zeros(n * len(self.varying)), self.span * w])
        elif kind == "bits":
            self.dim = n
            self._a = self.span * w
        else:
            layers = sorted({m.layer for m in space.matrices})
            types = space.module_types
            # (N, L + T) averaging matrix: column g holds the numel weights of group g's matrices, summing to 1.
            G = np.zeros((n, len(layers) + len(types)))
            for i, m in enumerate(space.matrices):
                G[i, layers.index(m.layer)] = w[i]
                G[i, len(layers) + types.index(m.module_type)] = w[i]
            group_w = G.sum(0)
            self._G = G / group_w
            self.dim = G.shape[1]
            self._a = np.concatenate([self.span * group_w[: len(layers)], np.zeros(len(types))])

    def encode(self, idx: np.ndarray) -> np.ndarray:
        """``(B, N, 5)`` index arrays → ``(B, d)`` float64 features in ``[0, 1]``."""
        idx = np.asarray(idx)
        z = (self.space.matrix_bits(idx) - self.lo) / self.span  # (B, N)
        if self.kind == "bits":
            return z
        if self.kind == "layer":
            return z @ self._G
        card = self.space.cardinalities[self.varying]
        knobs = idx[..., self.varying] / (card - 1)  # (B, N, K')
        return np.concatenate([knobs.reshape(len(idx), -1), z], axis=-1)

    def bits_affine(self) -> tuple[np.ndarray, float]:
        """``(a (d,), b)`` with ``average_bits = encode(C) @ a + b``."""
        return self._a.copy(), float(self.lo)


# ---------------------------------------------------------------------------------------------- generators
def _keys(idx: np.ndarray) -> list[bytes]:
    """Exact de-duplication keys of ``(B, N, 5)`` index arrays."""
    flat = np.ascontiguousarray(np.asarray(idx, dtype=np.int16)).reshape(len(idx), -1)
    return [row.tobytes() for row in flat]


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
            in ``avoid``, or None; what :meth:`ParetoSearch.propose` takes when the end point is known.
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
        avoid: keys (:func:`_keys`) that ``best_new`` must not be.
    """
    avoid = avoid if avoid is not None else set()
    card = space.cardinalities
    coords = [(i, k) for i in range(space.n_matrices) for k in range(len(KNOBS)) if card[k] > 1]
    ci = np.array([c[0] for c in coords], dtype=np.int64)
    ck = np.array([c[1] for c in coords], dtype=np.int64)
    x = space.validate(start).copy()
    a0 = float(score(x[None])[0])
    start_value = a0
    best_new, best_new_value = (x.copy(), a0) if _keys(x[None])[0] not in avoid else (None, -math.inf)
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
        for r in np.flatnonzero(valid):
            if vals[r] > best_new_value and _keys(nb[r : r + 1])[0] not in avoid:
                best_new, best_new_value = nb[r].copy(), float(vals[r])
        if steps >= max_steps:
            break
        g = np.where(up_ok & dn_ok, (a_up - a_dn) / 2, np.where(up_ok, a_up - a0, a0 - a_dn))
        direction = np.where(g >= 0, 1, -1)
        target_val = np.where(direction > 0, a_up, a_dn)  # -inf where that side is out of range
        improving = target_val > a0
        if not improving.any():
            local_opt = True
            break
        order = np.argsort(-np.abs(np.where(improving, g, 0.0)), kind="stable")
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


# ---------------------------------------------------------------------------------------------- acquisition
class GPAcquisition:
    """qLogNEHVI over (normalised loss, normalised bits) with a GP on the loss and exact bits.

    Fits ``SingleTaskGP(X, y, Standardize)`` with ``fit_gpytorch_mll`` (L-BFGS capped at ``fit_maxiter``).
    The bits enter as a deterministic second objective computed from the inputs (the encoding makes
    them affine: ``X @ a + b``), both objectives are negated for BoTorch's maximisation, and the reference
    point is one every observation dominates (:func:`~coalora.pareto.infer_reference_point`, 10 % margin).
    A single-output GP keeps BoTorch's cached-root fast path for the noisy baseline.

    Args:
        encoder: the input encoding.
        X: ``(n, d)`` encoded configurations; ``y``: ``(n,)`` normalised losses; ``bits_norm``: ``(n,)``
            normalised bits of the same configurations.
        bounds: the fixed normalisation (its bits range scales the deterministic objective).
    """

    def __init__(
        self, encoder: ConfigEncoder, X: np.ndarray, y: np.ndarray, bits_norm: np.ndarray, bounds: ObjectiveBounds,
        fit_maxiter: int, mc_samples: int, seed: int, max_baseline: int = 32,
    ) -> None:
        import torch
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import GenericMCMultiOutputObjective
        from botorch.acquisition.multi_objective.utils import prune_inferior_points_multi_objective
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.sampling import SobolQMCNormalSampler
        from gpytorch.mlls import ExactMarginalLogLikelihood

        self.encoder = encoder
        self._torch = torch
        dt = torch.float64
        tX = torch.as_tensor(X, dtype=dt)
        ty = torch.as_tensor(y, dtype=dt).unsqueeze(-1)
        self.gp = SingleTaskGP(tX, ty, outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(self.gp.likelihood, self.gp)
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": int(fit_maxiter)}})
        a, b = encoder.bits_affine()
        span, lo = bounds.bits[1] - bounds.bits[0], bounds.bits[0]
        a_n = torch.as_tensor(a / span, dtype=dt)  # normalised bits = X @ a_n + b_n
        b_n = (b - lo) / span

        def objective(samples: "torch.Tensor", X: "torch.Tensor | None" = None) -> "torch.Tensor":
            # samples: (mc, batch, q, 1) loss draws; X: (batch, q, d) → (mc, batch, q, 2), both maximised.
            bits = (X @ a_n + b_n).unsqueeze(-1).expand(samples.shape)
            return torch.cat([-samples, -bits], dim=-1)

        ref = torch.as_tensor(-infer_reference_point(np.stack([y, bits_norm], axis=-1), scale=0.1), dtype=dt)
        mc_objective = GenericMCMultiOutputObjective(objective)
        # NEHVI re-evaluates the posterior of every baseline point jointly with each candidate, so its cost
        # grows with the baseline: keep the max_baseline points most likely to be Pareto-optimal.
        baseline = prune_inferior_points_multi_objective(
            self.gp, tX, ref, objective=mc_objective, max_frac=min(1.0, max_baseline / len(tX))
        )
        _use_pure_pytorch_log_ehvi()
        self.acqf = qLogNoisyExpectedHypervolumeImprovement(
            self.gp,
            ref_point=ref.tolist(),
            X_baseline=baseline,
            sampler=SobolQMCNormalSampler(torch.Size([mc_samples]), seed=seed),
            objective=mc_objective,
            prune_baseline=False,
            cache_root=True,
        )

    def __call__(self, configs: np.ndarray, batch: int = 256) -> np.ndarray:
        """``(B, N, 5)`` → ``(B,)`` log-EHVI values (q = 1 each)."""
        torch = self._torch
        X = torch.as_tensor(self.encoder.encode(configs), dtype=torch.float64)
        out = []
        with torch.no_grad():
            for s in range(0, len(X), batch):
                out.append(self.acqf(X[s : s + batch].unsqueeze(1)))
        return torch.cat(out).numpy() if out else np.zeros(0)


# ---------------------------------------------------------------------------------------------- NSGA-II
class _Nsga2:
    """Optuna NSGA-II over one categorical parameter per knob per matrix, driven by ask/tell.

    The study is rebuilt from the archive on demand (after a load) by replaying every finite row as an
    enqueued, asked and told trial; proposals are asked and then told FAIL at once (their values arrive
    later as ordinary archive rows). The generations therefore depend only on the archive order, so a
    resumed search proposes what an uninterrupted one would.
    """

    def __init__(self, space: QuantSpace, population: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.space, self.population = space, population
        self.names = [f"m{i}.{k}" for i in range(space.n_matrices) for k in KNOBS]
        self.dists = {
            f"m{i}.{k}": optuna.distributions.CategoricalDistribution(tuple(range(int(space.cardinalities[j]))))
            for i in range(space.n_matrices)
            for j, k in enumerate(KNOBS)
        }
        self.study = optuna.create_study(
            directions=["minimize", "minimize"],
            sampler=optuna.samplers.NSGAIISampler(population_size=population, seed=0),
        )
        self.told = 0  # archive rows replayed so far

    def _params(self, idx: np.ndarray) -> dict[str, int]:
        return {name: int(v) for name, v in zip(self.names, idx.reshape(-1))}

    def _config(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([params[n] for n in self.names], dtype=np.int64).reshape(self.space.n_matrices, len(KNOBS))

    def sync(self, rows: list[dict[str, Any]], configs: dict[bytes, np.ndarray]) -> None:
        self.study.sampler = self.optuna.samplers.NSGAIISampler(population_size=self.population, seed=0)
        for row in rows[self.told :]:
            if row["status"] == "ok":
                self.study.enqueue_trial(self._params(configs[row["key"]]))
                trial = self.study.ask(self.dists)
                self.study.tell(trial, [row["loss"], row["bits"]])
        self.told = len(rows)

    def propose(self, k: int, seed: int, avoid: set[bytes], rng: np.random.Generator, fallback: np.ndarray) -> np.ndarray:
        self.study.sampler = self.optuna.samplers.NSGAIISampler(population_size=self.population, seed=seed)
        out: list[np.ndarray] = []
        for _ in range(20 * k):
            if len(out) == k:
                break
            trial = self.study.ask(self.dists)
            cfg = self._config(trial.params)
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            key = _keys(cfg[None])[0]
            if key not in avoid:
                avoid.add(key)
                out.append(cfg)
        # NSGA-II kept repeating known configurations (a converged population): mutate archive members.
        tries = 0
        while len(out) < k and len(fallback) and tries < 50 * k:
            tries += 1
            cfg = mutation_pool(self.space, fallback, rng, 1)[0]
            key = _keys(cfg[None])[0]
            if key not in avoid:
                avoid.add(key)
                out.append(cfg)
        return np.stack(out) if out else np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)


# ---------------------------------------------------------------------------------------------- the search
@dataclass
class _Row:
    row: int
    round: int
    key: bytes
    config_id: str
    loss: float
    bits: float
    status: str
    proposed: bool

    def public(self, config: np.ndarray) -> dict[str, Any]:
        return {
            "row": self.row, "round": self.round, "config_id": self.config_id, "loss": self.loss,
            "bits": self.bits, "status": self.status, "proposed": self.proposed, "config": config.tolist(),
        }


@dataclass
class ParetoSearch:
    """The configuration search over one :class:`~coalora.space.QuantSpace` (see the module docstring).

    Args:
        space: the configuration space.
        settings: :class:`SearchSettings` (validated on construction).
    """

    space: QuantSpace
    settings: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self) -> None:
        self.settings.validate()
        s, sp = self.settings, self.space
        lo, hi = s.bits_range if s.bits_range is not None else (sp.min_bits, sp.max_bits)
        if not hi > lo:
            raise SearchError(
                f"the space's bit range [{lo:.4f}, {hi:.4f}] is empty: every configuration has the same bits, "
                "so there is nothing to trade off"
            )
        self.bits_range = (float(lo), float(hi))
        self.edges = segment_edges(lo, hi, s.n_segments)
        self.bounds: ObjectiveBounds | None = (
            ObjectiveBounds(s.loss_range, self.bits_range, s.hv_margin) if s.loss_range is not None else None
        )
        self.encoder = ConfigEncoder(sp, s.encoding)
        self.round = 0
        self._calls = 0
        self._rows: list[_Row] = []
        self._configs: dict[bytes, np.ndarray] = {}
        self._latest: dict[bytes, int] = {}
        self._train: list[bytes] | None = None
        self._since_select: list[bytes] = []
        self._pending: set[bytes] = set()
        self._history: list[dict[str, Any]] = []
        self._nsga: _Nsga2 | None = None
        self.last_walks: list[WalkResult] = []

    # ------------------------------------------------------------------------------------------ observe
    def observe(self, configs: Any, losses: Any, round: int | None = None) -> int:
        """Record losses of configurations; bits are computed exactly here.

        Args:
            configs: ``(B, N, 5)`` (or one ``(N, 5)``) index arrays; known configurations are re-observed
                (a new history row; the latest finite value is the one used).
            losses: ``(B,)`` f1 values. NaN or infinite values are recorded with status ``"nonfinite"``,
                left out of the GP and the filter, and reported in one warning.
            round: the round these values belong to; default the current round. Rounds never go back.

        Returns:
            The number of finite observations recorded.
        """
        idx = self.space.validate(configs)
        if idx.ndim == 2:
            idx = idx[None]
        l = np.asarray(losses, dtype=np.float64).reshape(-1)
        if l.shape != (len(idx),):
            raise SearchError(f"{len(idx)} configurations but {np.asarray(losses).size} losses")
        if round is not None:
            if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < self.round:
                raise SearchError(f"round {round!r} is before the current round {self.round}; rounds only go forward")
            self.round = int(round)
        finite = np.isfinite(l)
        if not finite.all():
            warnings.warn(
                f"{int((~finite).sum())} of {len(l)} losses are NaN or infinite; those configurations are "
                "recorded with status 'nonfinite' and left out of the search until observed again",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.bounds is None and finite.any():
            # Frozen at the first observation: from 0 (the floor of a cross-entropy loss; lower if the
            # caller's losses go negative) to the worst first loss. A loss range taken as the first
            # round's min..max would be nearly empty when every configuration starts alike, and later
            # improvements would then blow the normalised hypervolume far past the reference box.
            lo, hi = min(0.0, float(l[finite].min())), float(l[finite].max())
            if not hi > lo:
                hi = lo + 0.1 * max(abs(lo), 1.0)
            self.bounds = ObjectiveBounds((lo, hi), self.bits_range, self.settings.hv_margin)
        bits = np.atleast_1d(self.space.average_bits(idx))
        for cfg, key, loss, b, ok in zip(idx, _keys(idx), l, bits, finite):
            if key not in self._configs:
                self._configs[key] = cfg.copy()
            row = _Row(len(self._rows), self.round, key, self.space.config_id(cfg), float(loss), float(b),
                       "ok" if ok else "nonfinite", key in self._pending)
            self._pending.discard(key)
            self._rows.append(row)
            self._latest[key] = row.row
            self._since_select.append(key)
        return int(finite.sum())

    # ------------------------------------------------------------------------------------------ views
    def _finite_latest(self, keys: Sequence[bytes] | None = None) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """Configurations whose latest observation is finite: keys, losses ``(n,)``, bits ``(n,)``."""
        keys = list(self._latest) if keys is None else list(dict.fromkeys(keys))
        rows = [self._rows[self._latest[k]] for k in keys]
        ok = [r for r in rows if r.status == "ok"]
        return [r.key for r in ok], np.array([r.loss for r in ok]), np.array([r.bits for r in ok])

    def evaluated(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latest finite value per configuration: configs ``(n, N, 5)``, losses ``(n,)``, bits ``(n,)``."""
        keys, l, b = self._finite_latest()
        return self._stack(keys), l, b

    def _stack(self, keys: Sequence[bytes]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)
        return np.stack([self._configs[k] for k in keys])

    def training_set(self) -> np.ndarray:
        """The current training set ``(T, N, 5)``, in increasing bits (empty before the first selection)."""
        return self._stack(self._train or [])

    def training_set_ids(self) -> list[str]:
        return [self.space.config_id(self._configs[k]) for k in (self._train or [])]

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per closed round: round, evaluations, hypervolumes of the archive and the set, sizes."""
        return [dict(h) for h in self._history]

    def hypervolume(self) -> float:
        """Normalised hypervolume (fixed bounds) of the latest finite values of the whole archive."""
        _, l, b = self._finite_latest()
        if self.bounds is None or len(l) == 0:
            return 0.0
        return self.bounds.hypervolume(l, b)

    def archive_rows(self) -> list[dict[str, Any]]:
        """Every observation as a dict (``config`` is the ``N × 5`` index list), in observation order."""
        return [r.public(self._configs[r.key]) for r in self._rows]

    def archive_table(self) -> Any:
        """The archive as a ``pyarrow.Table``; ``config`` is the flattened ``N·5`` index list."""
        import pyarrow as pa

        cols: dict[str, list[Any]] = {k: [] for k in
                                      ("row", "round", "config_id", "loss", "bits", "status", "proposed", "config")}
        for r in self._rows:
            for k in ("row", "round", "config_id", "loss", "bits", "status", "proposed"):
                cols[k].append(getattr(r, k))
            cols["config"].append(self._configs[r.key].reshape(-1).astype(np.int16).tolist())
        schema = pa.schema([
            ("row", pa.int64()), ("round", pa.int64()), ("config_id", pa.string()), ("loss", pa.float64()),
            ("bits", pa.float64()), ("status", pa.string()), ("proposed", pa.bool_()),
            ("config", pa.list_(pa.int16())),
        ])
        return pa.table(cols, schema=schema)

    # ------------------------------------------------------------------------------------------ selection
    def select_training_set(self) -> np.ndarray:
        """Close the round: filter (training set ∪ new observations) segment-wise and record hypervolumes.

        ``gp``, ``random`` and ``nsga2`` keep each segment's non-dominated members; ``frozen`` keeps the
        first selection forever; ``random-extend`` keeps everything finite (the set only grows).

        Returns:
            The new training set, ``(T, N, 5)`` in increasing bits.
        """
        pool = list(self._train or []) + self._since_select
        keys, l, b = self._finite_latest(pool)
        if not keys:
            raise SearchError(
                "no configuration with a finite loss to select from: observe() configurations "
                "(with finite losses) before select_training_set()"
            )
        method = self.settings.method
        seg = segment_index(b, self.edges)
        if method == "frozen" and self._train is not None:
            chosen = list(self._train)
        elif method in ("frozen", "random-extend"):
            chosen = keys
        else:
            outside = int((seg < 0).sum())
            if outside:
                warnings.warn(
                    f"{outside} configuration(s) lie outside the bit range [{self.edges[0]:.4f}, "
                    f"{self.edges[-1]:.4f}] and are left out of the training set", RuntimeWarning, stacklevel=2,
                )
            if outside == len(keys):
                raise SearchError(
                    f"every configuration lies outside the bit range [{self.edges[0]:.4f}, {self.edges[-1]:.4f}]; "
                    "widen SearchSettings.bits_range"
                )
            used = np.unique(seg[seg >= 0])
            if len(used) == 1 and len(self.edges) > 2 and len(keys) > 1:
                u = int(used[0])
                warnings.warn(
                    f"all {len(keys)} configurations lie in one bit segment [{self.edges[u]:.4f}, "
                    f"{self.edges[u + 1]:.4f}); the training set is that segment's front only. Spread the "
                    "initial configurations over the bit range (e.g. QuantSpace.sample_near)",
                    RuntimeWarning, stacklevel=2,
                )
            mask = segment_filter(l, b, self.edges)
            chosen = [k for k, m in zip(keys, mask) if m]
        bits_of = {k: self._rows[self._latest[k]].bits for k in chosen}
        self._train = sorted(chosen, key=lambda k: (bits_of[k], k))
        self._record_history()
        self._since_select = []
        self.round += 1
        return self.training_set()

    def _record_history(self) -> None:
        keys, l, b = self._finite_latest()
        tk, tl, tb = self._finite_latest(self._train or [])
        bounds = self.bounds
        seg = segment_index(tb, self.edges)
        self._history.append({
            "round": self.round,
            "n_evaluated": len(keys),
            "n_rows": len(self._rows),
            "n_train": len(self._train or []),
            "segments_covered": int(len(np.unique(seg[seg >= 0]))),
            "hv_archive": bounds.hypervolume(l, b) if bounds and len(l) else 0.0,
            "hv_train": bounds.hypervolume(tl, tb) if bounds and len(tl) else 0.0,
        })

    # ------------------------------------------------------------------------------------------ proposals
    def propose(self, k: int) -> np.ndarray:
        """``k`` new valid configurations (never in the archive, no duplicates), spread over segments.

        Returns:
            ``(k, N, 5)``; ``(0, N, 5)`` for ``frozen``. Fewer than ``k`` (with a warning) only when the
            generator cannot find ``k`` unseen configurations (a nearly exhausted space).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SearchError(f"k must be a positive integer number of proposals; got {k!r}")
        k = int(k)
        method = self.settings.method
        call = self._calls
        self._calls += 1
        empty = np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)
        if method == "frozen":
            return empty
        rng = np.random.default_rng([self.settings.seed, call])
        avoid = set(self._configs)
        if method in ("random", "random-extend"):
            out = self._random_spread(k, rng, avoid)
        elif method == "nsga2":
            if self._nsga is None:
                self._nsga = _Nsga2(self.space, self.settings.nsga2_population)
            self._nsga.sync([asdict(r) for r in self._rows], self._configs)
            seed = int(rng.integers(2**31 - 1))
            fallback = self.evaluated()[0]
            out = self._nsga.propose(k, seed, avoid, rng, fallback if len(fallback) else self.space.sample(rng, 1))
        else:
            out = self._propose_gp(k, rng, avoid)
        if len(out) < k:
            warnings.warn(f"found only {len(out)} of {k} unseen configurations to propose", RuntimeWarning,
                          stacklevel=2)
        self._pending.update(_keys(out))
        return out

    def _random_spread(self, k: int, rng: np.random.Generator, avoid: set[bytes]) -> np.ndarray:
        """Random configurations near random targets in distinct segments (segments cycle if k > U)."""
        U = len(self.edges) - 1
        lo_att, hi_att = self.space.min_bits, self.space.max_bits
        out: list[np.ndarray] = []
        order = rng.permutation(U)
        for attempt in range(50 * k):
            if len(out) == k:
                break
            u = int(order[attempt % U])
            a, c = self.edges[u], self.edges[u + 1]
            target = float(np.clip(rng.uniform(a, c), lo_att, hi_att))
            cfg = self.space.sample_near(target, rng, 1, tol=(c - a) / 2)[0]
            key = _keys(cfg[None])[0]
            if key not in avoid:
                avoid.add(key)
                out.append(cfg)
        return np.stack(out) if out else np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)

    def _gp_training_keys(self) -> list[bytes]:
        """Training-set members first, then the newest observations, capped at ``max_gp_points``."""
        keys, _, _ = self._finite_latest()
        finite = set(keys)
        recency = sorted(keys, key=lambda k: -self._latest[k])
        ordered = list(dict.fromkeys([k for k in (self._train or []) if k in finite] + recency))
        return ordered[: self.settings.max_gp_points]

    def _parents(self) -> np.ndarray:
        """The segment fronts: the training set, or the filter over everything if none was selected."""
        if self._train:
            keys, _, _ = self._finite_latest(self._train)
            if keys:
                return self._stack(keys)
        keys, l, b = self._finite_latest()
        mask = segment_filter(l, b, self.edges)
        if not mask.any():
            mask = non_dominated_mask(np.stack([l, b], -1))
        return self._stack([k for k, m in zip(keys, mask) if m])

    def build_acquisition(self, seed: int = 0) -> GPAcquisition:
        """Fit the GP on the archive (latest finite values, capped) and build qLogNEHVI.

        Raises:
            SearchError: fewer than 2 configurations with finite losses.
        """
        keys = self._gp_training_keys()
        if len(keys) < 2:
            raise SearchError(
                f"the GP needs at least 2 configurations with finite losses; the archive has {len(keys)}. "
                "observe() an initial set (e.g. QuantSpace.sample_near over the bit range) first"
            )
        assert self.bounds is not None
        _, l, b = self._finite_latest(keys)
        pts = self.bounds.normalise(l, b)
        X = self.encoder.encode(self._stack(keys))
        return GPAcquisition(self.encoder, X, pts[:, 0], pts[:, 1], self.bounds, self.settings.fit_maxiter,
                             self.settings.mc_samples, seed, self.settings.max_baseline)

    def _propose_gp(self, k: int, rng: np.random.Generator, avoid: set[bytes]) -> np.ndarray:
        import torch

        seed = int(rng.integers(2**31 - 1))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            acq = self.build_acquisition(seed)
            parents = self._parents()
            if self.settings.generator == "fd-walk":
                return self._fd_walk_candidates(k, acq, parents, rng, avoid)
            return self._pool_candidates(k, acq, parents, rng, avoid)

    def _dedup(self, cands: np.ndarray, avoid: set[bytes]) -> tuple[np.ndarray, list[bytes]]:
        keep, keys = [], []
        seen = set(avoid)
        for i, key in enumerate(_keys(cands)):
            if key not in seen:
                seen.add(key)
                keep.append(i)
                keys.append(key)
        return cands[keep], keys

    def _pool_candidates(
        self, k: int, acq: GPAcquisition, parents: np.ndarray, rng: np.random.Generator, avoid: set[bytes]
    ) -> np.ndarray:
        size = self.settings.pool_size
        U = len(self.edges) - 1
        # Generation 1: mutations and crossovers of the segment fronts, plus one random configuration per
        # segment so that empty segments get candidates too.
        explore = self._random_spread(U, rng, set(avoid))
        pool = np.concatenate([mutation_pool(self.space, parents, rng, size), explore])
        pool, keys = self._dedup(pool, avoid)
        vals = acq(pool)
        # Generation 2: refine around the best-scoring children.
        top = pool[np.argsort(-vals, kind="stable")[: max(8, size // 16)]]
        pool2, keys2 = self._dedup(mutation_pool(self.space, top, rng, max(1, size // 2)), avoid | set(keys))
        if len(pool2):
            pool = np.concatenate([pool, pool2])
            vals = np.concatenate([vals, acq(pool2)])
        seg = segment_index(self.space.average_bits(pool), self.edges)
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
        n_starts = k * self.settings.fd_starts_per_candidate
        for r in range(n_starts):
            group = by_seg[r % len(by_seg)]
            starts.append(parents[group[(r // len(by_seg)) % len(group)]])
        self.last_walks = []
        results = []
        for s in starts:
            w = fd_walk(self.space, acq, s, self.settings.fd_max_steps, avoid)
            self.last_walks.append(w)
            if w.best_new is not None:
                results.append((w.best_new_value, w.best_new))
        out: list[np.ndarray] = []
        for _, cfg in sorted(results, key=lambda t: -t[0]):
            key = _keys(cfg[None])[0]
            if key not in avoid:
                avoid.add(key)
                out.append(cfg)
            if len(out) == k:
                break
        return np.stack(out) if out else np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)

    # ------------------------------------------------------------------------------------------ state
    def save(self, path: str | Path) -> Path:
        """Write ``path/archive.parquet`` and ``path/search.json`` (settings, space, RNG counter, sets)."""
        import pyarrow.parquet as pq

        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.archive_table(), d / _ARCHIVE_PARQUET)
        ids = {k: self.space.config_id(v) for k, v in self._configs.items()}
        state = {
            "version": STATE_VERSION,
            "space": self.space.signature(),
            "settings": asdict(self.settings),
            "bounds": self.bounds.as_dict() if self.bounds else None,
            "round": self.round,
            "propose_calls": self._calls,
            "train": None if self._train is None else [ids[k] for k in self._train],
            "since_select": [ids[k] for k in self._since_select],
            "pending": [self._pending_config(k).reshape(-1).tolist() for k in sorted(self._pending)],
            "history": self._history,
        }
        (d / _STATE_JSON).write_text(json.dumps(state, indent=1))
        return d

    def _pending_config(self, key: bytes) -> np.ndarray:
        return np.frombuffer(key, dtype=np.int16).astype(np.int64).reshape(self.space.n_matrices, len(KNOBS))

    @classmethod
    def load(cls, path: str | Path, space: QuantSpace) -> "ParetoSearch":
        """Restore a search saved by :meth:`save`; ``space`` must be the space it was made for.

        Raises:
            SearchError: missing or unreadable files.
            SpaceError: the state belongs to another model or configuration space.
        """
        import pyarrow.parquet as pq

        d = Path(path)
        if not (d / _STATE_JSON).is_file() or not (d / _ARCHIVE_PARQUET).is_file():
            raise SearchError(f"no search state in {str(d)!r}: expected {_STATE_JSON} and {_ARCHIVE_PARQUET}")
        try:
            state = json.loads((d / _STATE_JSON).read_text())
        except json.JSONDecodeError as e:
            raise SearchError(f"search state {str(d / _STATE_JSON)!r} is not valid JSON: {e}") from None
        if state.get("version") != STATE_VERSION:
            raise SearchError(f"search state version {state.get('version')!r} is not {STATE_VERSION}")
        space.check_same(state["space"], what=f"search state {str(d)!r}")
        st = dict(state["settings"])
        for name in ("bits_range", "loss_range"):
            if st.get(name) is not None:
                st[name] = tuple(st[name])
        try:
            self = cls(space, SearchSettings(**st))
        except TypeError as e:
            raise SearchError(f"search state {str(d)!r} has settings this version does not know: {e}") from None
        if state["bounds"] is not None:
            self.bounds = ObjectiveBounds.from_dict(state["bounds"])
        table = pq.read_table(d / _ARCHIVE_PARQUET).to_pylist()
        by_id: dict[str, bytes] = {}
        for rec in table:
            cfg = space.validate(np.asarray(rec["config"], dtype=np.int64).reshape(space.n_matrices, len(KNOBS)))
            key = _keys(cfg[None])[0]
            self._configs.setdefault(key, cfg)
            by_id[rec["config_id"]] = key
            self._rows.append(_Row(int(rec["row"]), int(rec["round"]), key, rec["config_id"], float(rec["loss"]),
                                   float(rec["bits"]), rec["status"], bool(rec["proposed"])))
            self._latest[key] = int(rec["row"])
        self.round = int(state["round"])
        self._calls = int(state["propose_calls"])
        self._train = None if state["train"] is None else [by_id[i] for i in state["train"]]
        self._since_select = [by_id[i] for i in state["since_select"]]
        self._pending = set(_keys(np.asarray(state["pending"], dtype=np.int64).reshape(
            -1, space.n_matrices, len(KNOBS)))) if state["pending"] else set()
        self._history = list(state["history"])
        return self


__all__ = [
    "ConfigEncoder", "ENCODINGS", "GENERATORS", "GPAcquisition", "METHODS", "ParetoError", "ParetoSearch",
    "SearchError", "SearchSettings", "SpaceError", "WalkResult", "fd_walk", "mutation_pool", "spread_select",
]
