"""Search cost: GP fit plus one proposal round (k = 8) against archive size, on RoBERTa-large's space.

RoBERTa-large shapes: 144 target matrices × 5 knobs = 720 knob dimensions, 432 options per matrix. The
archive holds ``n`` configurations spread over the bit range (``QuantSpace.sample_near``) with a cheap
synthetic loss ``Σ_i s_i · 2^−bits_i`` (the values only shape the GP fit; see search_efficiency.py
for search quality). GP variants (kernel / encoding, ``dims`` = GP input columns):

- ``additive/bits`` (the default): additive kernel on the 144 per-matrix bits (basis features precomputed);
- ``rbf/full``: BoTorch's RBF-ARD on the full encoding (720 knob + 144 bits features);
- ``rbf/bits``: RBF-ARD on the 144 per-matrix bits;
- ``additive/layer``: additive kernel on 24 per-layer + 6 per-module-type mean bits.

For each variant and ``n`` (the GP fits on all ``n`` points) it times

- ``fit_s``: ``ParetoSearch.build_acquisition`` (GP fit, L-BFGS capped at ``fit_maxiter``, plus building
  qLogNEHVI with its pruned baseline);
- ``propose_s``: a whole ``propose(8)`` with the default ``pool`` generator: its own GP fit plus
  ~3,100 acquisition evaluations plus selection, i.e. the cost of one search round (the target: < 60 s);
- ``walk_step_s``: one step of the paper's finite-difference walk (all ~1,300 ±1 neighbours scored in
  batches); ``fd_walk_8_s`` = 8 candidates × ``fd_max_steps`` (10) such steps, the ``fd-walk`` generator's
  round (the authors' uncapped walk takes up to d = 720 steps per candidate).

Each figure is the median of ``--repeats`` runs (1 by default: single runs take up to a minute).

    python benchmarks/search_cost.py [--quick] [--json] [--repeats R] [--variants additive/bits,...]
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any


import _bench  # noqa: E402  (sets OMP_NUM_THREADS before torch is imported)
import numpy as np  # noqa: E402

from coalora.search.pareto_search import ParetoSearch  # noqa: E402
from coalora.search.settings import SearchSettings  # noqa: E402
from coalora.search.moves import fd_walk  # noqa: E402
from coalora.core.space import ROBERTA_LARGE_SHAPES, space_from_shapes  # noqa: E402


def main() -> None:
    p = _bench.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--variants", default="additive/bits,rbf/full,rbf/bits,additive/layer")
    args = p.parse_args()
    _bench.setup_threads(args.threads)
    warnings.simplefilter("ignore")
    # --quick: 6 of the 24 layers (36 matrices), smaller archives and proposal rounds; same table shape.
    space = space_from_shapes(6 if args.quick else 24, ROBERTA_LARGE_SHAPES)
    sens = np.random.default_rng(0).lognormal(0.0, 0.75, space.n_matrices)

    def f(C: np.ndarray) -> np.ndarray:
        return (sens * 2.0 ** (-space.matrix_bits(C))).sum(-1) / sens.sum()

    sizes = (8, 16, 24, 32) if args.quick else (64, 128, 256, 512)
    extra: dict[str, Any] = (
        {"pool_size": 64, "pool_generations": 2, "pool_children": 8, "fit_maxiter": 20, "mc_samples": 32}
        if args.quick else {}
    )
    rng = np.random.default_rng(0)
    archive = np.concatenate([space.sample_near(t, rng, 1) for t in rng.uniform(2.1, 8.5, max(sizes))])
    losses = f(archive)
    variants = {
        "additive/bits": {},
        "rbf/full": {"kernel": "rbf", "encoding": "full"},
        "rbf/bits": {"kernel": "rbf"},
        "additive/layer": {"encoding": "layer"},
    }
    rows: list[dict[str, Any]] = []
    for label in args.variants.split(","):
        for n in sizes:
            settings = SearchSettings(max_gp_points=n, seed=0, **variants[label], **extra)
            fit_t, prop_t, step_t = [], [], []
            dim = 0
            for r in range(args.repeats):
                s = ParetoSearch(space, settings)
                s.observe(archive[:n], losses[:n])
                s.select_training_set()
                t0 = time.perf_counter()
                acq = s.build_acquisition(seed=r)
                fit_t.append(time.perf_counter() - t0)
                dim = acq.inputs.dim
                start = s.training_set()[0]
                t0 = time.perf_counter()
                fd_walk(space, acq, start, max_steps=0)  # scores every neighbour once: one step's cost
                step_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                cand = s.propose(8)
                prop_t.append(time.perf_counter() - t0)
                assert len(cand) == 8
            print(f"[{label}] n={n} done", file=sys.stderr, flush=True)
            rows.append({
                "variant": label,
                "dims": dim,
                "n": n,
                "fit_s": float(np.median(fit_t)),
                "propose_s": float(np.median(prop_t)),
                "walk_step_s": float(np.median(step_t)),
                "fd_walk_8_s": float(np.median(step_t)) * settings.fd_max_steps * 8,
            })
    defaults = SearchSettings()
    meta = {
        "space": f"{space.n_matrices} matrices, {space.n_matrices * 5} knob dims, {space.n_options} options",
        "repeats": args.repeats,
        "fit_maxiter": extra.get("fit_maxiter", defaults.fit_maxiter),
        "pool_size": extra.get("pool_size", defaults.pool_size),
        "pool_generations": extra.get("pool_generations", defaults.pool_generations),
        "pool_children": extra.get("pool_children", defaults.pool_children),
        "mc_samples": extra.get("mc_samples", defaults.mc_samples),
        "max_baseline": defaults.max_baseline,
    }
    _bench.emit("Search cost: GP fit + one proposal round (k=8), RoBERTa-large space", rows, args.json, meta)


if __name__ == "__main__":
    main()
