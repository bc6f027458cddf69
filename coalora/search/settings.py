"""The configuration search's settings (the ``search:`` section of the experiment YAML): method,
candidate generator, proposals per round, segments, GP options."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from coalora.errors import ConfigError
from coalora.search.gp import ENCODINGS, KERNELS

METHODS: tuple[str, ...] = ("gp", "random", "nsga2", "frozen", "random-extend")
GENERATORS: tuple[str, ...] = ("pool", "fd-walk")


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class SearchSettings:
    """How the search proposes and selects: the ``search:`` section of the experiment YAML.

    This dataclass is the one definition of each search setting (:mod:`coalora.pipeline.config` builds
    it from the YAML). Every field is checked on construction (:meth:`validate`), and a wrong value is a
    :class:`ConfigError` naming the key, e.g. ``search: kernel='matern' is not one of [...]``.

    Attributes:
        method: one of :data:`METHODS`.
        generator: candidate generator of the ``gp`` method, one of :data:`GENERATORS`.
        encoding: GP input encoding, one of :data:`ENCODINGS` (see :class:`ConfigEncoder`).
        kernel: GP covariance, one of :data:`KERNELS`: ``additive`` (a shared plus a per-matrix smooth
            function of each matrix's bits, :func:`additive_bits_kernel`), ``rbf`` (BoTorch's default
            RBF with ARD over the whole encoding) or their sum.
        candidates: new configurations proposed per round (read by the orchestrator's round loop; 0 is
            allowed: rounds then only re-select among what they have).
        n_segments: U, the number of equal bit segments of the filter (paper: 40).
        bits_range: ``(lo, hi)`` of the segments and of the hypervolume's bits axis, within the space's
            attainable range (checked by :class:`ParetoSearch`); None → the attainable range.
        loss_range: ``(lo, hi)`` that normalises the loss for hypervolumes; None → ``(min(0, first min),
            first max)`` of the first observed finite losses, then frozen (pass it for numbers comparable
            across runs).
        seed: seeds every random choice.
        max_gp_points: cap on GP training points (training set first, then the most recent ones).
        n_basis: basis functions per matrix of the additive kernel.
        hv_margin: reference point ``1 + hv_margin`` in normalised units (:class:`ObjectiveBounds`).
        fit_maxiter: L-BFGS iterations of the GP fit (the fit cost is linear in it).
        mc_samples: quasi-MC samples of qLogNEHVI.
        max_baseline: qLogNEHVI's baseline: the observed points most likely to be Pareto-optimal, at most
            this many (its cost per candidate grows with the baseline).
        pool_size: candidates of the first generation of the ``pool`` generator.
        pool_generations: generations of the ``pool`` generator (1 = score one pool of mutations).
        pool_children: mutants per lineage per later generation (2k lineages).
        fd_max_steps: step cap of each fd-walk.
        fd_starts_per_candidate: fd-walk start points per requested candidate (≥ 1).
        nsga2_population: NSGA-II population size.
    """

    # The first ten fields in the order a run's config.yaml has always listed them.
    method: str = "gp"
    generator: str = "pool"
    encoding: str = "bits"
    kernel: str = "additive"
    candidates: int = 8
    n_segments: int = 40
    bits_range: tuple[float, float] | None = None
    loss_range: tuple[float, float] | None = None
    seed: int = 0
    max_gp_points: int = 256
    n_basis: int = 8
    hv_margin: float = 0.1
    fit_maxiter: int = 60
    mc_samples: int = 64
    max_baseline: int = 32
    pool_size: int = 512
    pool_generations: int = 6
    pool_children: int = 32
    fd_max_steps: int = 10
    fd_starts_per_candidate: int = 1
    nsga2_population: int = 16

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "SearchSettings":
        """Check every field (again: a dataclass's fields can be reassigned after construction).

        Raises:
            ConfigError: the first wrong setting, named as ``search: <key> ...``.
        """
        for name, allowed in (("method", METHODS), ("generator", GENERATORS), ("encoding", ENCODINGS),
                              ("kernel", KERNELS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"search: {name}={getattr(self, name)!r} is not one of {list(allowed)}")
        if not _is_int(self.candidates) or self.candidates < 0:
            raise ConfigError(f"search: candidates must be an integer >= 0; got {self.candidates!r}")
        positive = ("n_segments", "n_basis", "max_gp_points", "fit_maxiter", "mc_samples", "max_baseline", "pool_size",
                    "pool_generations", "pool_children", "fd_max_steps",
                    "fd_starts_per_candidate")
        for name in positive:
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"search: {name} must be a positive integer; got {v!r}")
        if not _is_int(self.nsga2_population) or self.nsga2_population < 2:
            raise ConfigError(f"search: nsga2_population must be an integer ≥ 2; got {self.nsga2_population!r}")
        if self.max_gp_points < 2:
            raise ConfigError(f"search: max_gp_points must be at least 2; got {self.max_gp_points}")
        for name in ("bits_range", "loss_range"):
            r = getattr(self, name)
            if r is not None:
                if len(r) != 2 or not all(math.isfinite(float(x)) for x in r) or not float(r[1]) > float(r[0]):
                    raise ConfigError(f"search: {name} must be (lo, hi) with finite lo < hi; got {r!r}")
                setattr(self, name, (float(r[0]), float(r[1])))
        if not (math.isfinite(self.hv_margin) and self.hv_margin > 0):
            raise ConfigError(f"search: hv_margin must be a positive number; got {self.hv_margin!r}")
        return self


def _is_int(v: object) -> bool:
    """An integer setting (numpy's included), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
