"""Allocation: from a bit budget to a configuration (DESIGN §2.6).

Per target matrix ``i`` and option ``k`` an *error table* holds ``err[i, k] = ‖W_i − Q_k(W_i)‖²_F``,
or its Fisher-weighted form ``Σ F_i ⊙ (W_i − Q_k(W_i))²``. Given a budget ``b`` (average bits per
weight), :func:`allocate` picks one option per matrix so as to

    minimise   Σ_i err[i, c_i]
    subject to Σ_i numel_i · bits(c_i) ≤ b · Σ_i numel_i

a multiple-choice knapsack, solved exactly with SciPy's ``milp`` (HiGHS), or approximately by a
greedy marginal analysis. Options that are dominated for a matrix (more bits and no less error than
another option) are dropped first; that never changes the optimum and shrinks the problem about
fourfold (75–105 of 432 options survive per MiniLM-L6 matrix).

Error tables cost minutes on a CPU (every option quantizes every matrix once), so
:class:`ErrorTableCache` keeps them on disk, keyed by model, space and weighting.

Shapes: ``N`` target matrices, ``K`` options per matrix (``space.n_options``), ``B`` budgets.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array
from tqdm.auto import tqdm

from coalora import quant as _quant
from coalora.space import QuantSpace, SpaceError

log = logging.getLogger(__name__)

__all__ = [
    "AllocationError",
    "ErrorTableCache",
    "allocate",
    "budget_grid",
    "error_table",
    "fisher_diagonal",
    "initial_set",
    "matrix_errors",
    "pareto_options",
    "target_weights",
    "total_error",
]

# HiGHS accepts a row activity up to its primal feasibility tolerance (1e-7) above the bound, and
# SciPy does not let us change that tolerance. A solution that lands in that sliver is re-solved
# once against a budget lowered by twice that amount.
_HIGHS_FEAS_TOL = 1e-7
_BUDGET_SLACK = 1e-9  # what "average bits ≤ budget" tolerates when checked on the result


class AllocationError(RuntimeError):
    """The solver failed or returned an unusable answer. The message says why and at which budget."""


# ---------------------------------------------------------------------- target weights and Fisher
def _target_modules(model: torch.nn.Module, space: QuantSpace) -> list[torch.nn.Module]:
    out = []
    for m in space.matrices:
        try:
            out.append(model.get_submodule(m.name))
        except AttributeError:
            raise SpaceError(f"model has no module {m.name!r} named by the configuration space") from None
    return out


def target_weights(model: torch.nn.Module, space: QuantSpace) -> list[torch.Tensor]:
    """The target weights of ``model`` in space order, each detached and shaped ``(out, in)``.

    GPT-2's ``Conv1D`` stores ``(in, out)``; such matrices (``TargetMatrix.transposed``) come back
    transposed. Raises :class:`SpaceError` if a module is missing or its shape differs from the space.
    """
    out: list[torch.Tensor] = []
    for m, module in zip(space.matrices, _target_modules(model, space)):
        w = module.weight.detach()
        if m.transposed:
            w = w.t()
        if tuple(w.shape) != m.shape:
            raise SpaceError(
                f"weight of {m.name!r} has shape {tuple(w.shape)} (out, in); the space expects {m.shape}"
            )
        out.append(w)
    return out


def _default_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss``: Hugging Face models return a loss when the batch carries labels."""
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: put labels in the batches or pass loss_fn")
    return loss


def fisher_diagonal(
    model: torch.nn.Module,
    batches: Iterable[Any],
    space: QuantSpace,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher of the target weights: ``N`` tensors shaped ``(out, in)``.

    ``F_i = Σ_batches (∂ loss / ∂ W_i)²``. This is the *batch-level* empirical Fisher: each batch's
    mean-loss gradient is squared, not each example's (per-example gradients cost one backward per
    example; for ranking matrices by sensitivity a few batches are enough). Only the relative scale
    between matrices matters to the allocation, so the sum is not normalised.

    Args:
        model: a torch model whose target modules are named as in ``space``.
        batches: an iterable of batches; with the default ``loss_fn`` each is a mapping of keyword
            arguments of ``model`` that includes labels (``model(**batch).loss``).
        loss_fn: ``(model, batch) -> scalar loss`` for models without a built-in loss.

    The model runs in eval mode (no dropout noise in the gradients) and its ``requires_grad`` flags
    and ``.grad`` fields are left as they were.
    """
    loss_fn = loss_fn or _default_loss
    params = [mod.weight for mod in _target_modules(model, space)]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    n = 0
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            if loss.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
            # autograd.grad instead of backward(): no .grad field of the model is touched.
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach().float().square())
            n += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    if n == 0:
        raise ValueError("fisher_diagonal needs at least one batch; got none")
    return [f.t().contiguous() if m.transposed else f for f, m in zip(fisher, space.matrices)]


# ---------------------------------------------------------------------- error tables
def matrix_errors(w: torch.Tensor, space: QuantSpace, fisher: torch.Tensor | None = None) -> np.ndarray:
    """Quantization error of one matrix under every option of ``space``: ``(out, in)`` → ``(K,)``.

    ``err[k] = ‖W − Q_k(W)‖²_F``, or ``Σ F ⊙ (W − Q_k(W))²`` when ``fisher`` (same shape as ``w``) is
    given. The unit of work a parallel builder hands to one worker. With double quantization every
    one of the five knobs changes ``Q_k``, so each option is computed once and none is shared.
    """
    if w.ndim != 2:
        raise ValueError(f"weight must be a 2-D (out, in) matrix, got shape {tuple(w.shape)}")
    w = w.detach().float()
    if fisher is not None:
        if tuple(fisher.shape) != tuple(w.shape):
            raise ValueError(f"Fisher has shape {tuple(fisher.shape)}; the weight has {tuple(w.shape)}")
        fisher = fisher.detach().to(device=w.device, dtype=torch.float32)
    out = np.empty(space.n_options, dtype=np.float64)
    for k, row in enumerate(space.option_table):
        out[k] = _quant.quantization_error(w, space.option(row), space.family, weight=fisher)
    return out


def error_table(
    weights: Sequence[torch.Tensor],
    space: QuantSpace,
    fisher: Sequence[torch.Tensor] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The ``(N, K)`` error table of ``weights`` (``N`` tensors ``(out, in)`` in space order).

    ``fisher``, if given, holds one non-negative tensor per weight (same shapes): the table is then
    Fisher-weighted. A progress bar counts quantized (matrix, option) pairs.
    """
    if len(weights) != space.n_matrices:
        raise SpaceError(f"got {len(weights)} weights for a space of {space.n_matrices} target matrices")
    if fisher is not None and len(fisher) != space.n_matrices:
        raise SpaceError(f"got {len(fisher)} Fisher tensors for a space of {space.n_matrices} target matrices")
    for w, m in zip(weights, space.matrices):
        if tuple(w.shape) != m.shape:
            raise SpaceError(f"weight for {m.name!r} has shape {tuple(w.shape)}; the space expects {m.shape}")
    err = np.empty((space.n_matrices, space.n_options), dtype=np.float64)
    with tqdm(total=space.n_matrices * space.n_options, disable=not progress, desc="error table",
              unit="opt") as bar:
        for i, (w, m) in enumerate(zip(weights, space.matrices)):
            f = None if fisher is None else fisher[i]
            err[i] = matrix_errors(w, space, f)
            if not np.all(np.isfinite(err[i])):
                raise ValueError(f"quantization error of {m.name!r} is not finite (NaN/inf in its weights?)")
            bar.update(space.n_options)
    return err


def _quantizer_id() -> str:
    """A hash of the quantizer's source: a cached table made by another quantizer is not trusted."""
    return hashlib.sha1(Path(_quant.__file__).read_bytes()).hexdigest()[:12]


class ErrorTableCache:
    """Error tables on disk: ``<root>/<model>-<space fingerprint>-<weighting>.npy`` + a JSON sidecar.

    ``root`` defaults to ``$COALORA_CACHE/errors`` or ``~/.cache/coalora/errors``. The sidecar records
    model key, space fingerprint, weighting, shape, the quantizer's source hash and the array's
    checksum; a table whose sidecar disagrees with any of them (another space, a changed quantizer, a
    half-written or mismatched pair) is recomputed, never trusted. Writes go to a temporary file that
    ``os.replace`` moves into place, so a reader never sees a partial file.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            base = os.environ.get("COALORA_CACHE")
            root = Path(base) / "errors" if base else Path.home() / ".cache" / "coalora" / "errors"
        self.root = Path(root)

    @staticmethod
    def _weighting(fisher: bool | str) -> str:
        if fisher is False:
            return "plain"
        if fisher is True:
            return "fisher"
        if isinstance(fisher, str) and fisher:
            return f"fisher-{fisher}"
        raise ValueError(f"fisher must be a bool or a non-empty string naming the Fisher data, got {fisher!r}")

    def path(self, model_key: str, space: QuantSpace, fisher: bool | str = False) -> Path:
        """Where the table lives (``.npy``; the sidecar is the same path with ``.json``)."""
        if not model_key:
            raise ValueError("model_key must be a non-empty string (e.g. the model name)")
        weighting = self._weighting(fisher)
        # Readable slug plus a hash of the raw strings, so "a/b" and "a_b" never collide.
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key)[:80]
        tag = hashlib.sha1(f"{model_key}\0{weighting}".encode()).hexdigest()[:8]
        w_slug = re.sub(r"[^A-Za-z0-9._-]+", "_", weighting)[:40]
        return self.root / f"{slug}-{space.fingerprint()}-{w_slug}-{tag}.npy"

    def _meta(self, model_key: str, space: QuantSpace, fisher: bool | str) -> dict[str, Any]:
        return {
            "model_key": model_key,
            "space_fingerprint": space.fingerprint(),
            "weighting": self._weighting(fisher),
            "shape": [space.n_matrices, space.n_options],
            "quantizer": _quantizer_id(),
        }

    def load(self, model_key: str, space: QuantSpace, fisher: bool | str = False) -> np.ndarray | None:
        """The cached ``(N, K)`` table, or None if absent or not trustworthy for this space."""
        path = self.path(model_key, space, fisher)
        side = path.with_suffix(".json")
        if not path.exists() or not side.exists():
            return None
        try:
            meta = json.loads(side.read_text())
            err = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("unreadable cached error table %s (%s); recomputing", path, e)
            return None
        want = self._meta(model_key, space, fisher)
        stale = [k for k, v in want.items() if meta.get(k) != v]
        if list(err.shape) != want["shape"]:
            stale.append("array shape")
        elif meta.get("sha1") != hashlib.sha1(np.ascontiguousarray(err).tobytes()).hexdigest():
            stale.append("checksum")
        if stale:
            log.warning("cached error table %s does not match (%s); recomputing", path, ", ".join(stale))
            return None
        return err

    def save(self, model_key: str, space: QuantSpace, err: np.ndarray, fisher: bool | str = False) -> Path:
        """Store a ``(N, K)`` table atomically and return its path."""
        err = np.ascontiguousarray(err, dtype=np.float64)
        if err.shape != (space.n_matrices, space.n_options):
            raise SpaceError(
                f"error table has shape {err.shape}; the space needs ({space.n_matrices}, {space.n_options})"
            )
        path = self.path(model_key, space, fisher)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self._meta(model_key, space, fisher) | {"sha1": hashlib.sha1(err.tobytes()).hexdigest()}
        _atomic_write(path, lambda f: np.save(f, err, allow_pickle=False))
        _atomic_write(path.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
        return path

    def get_or_compute(
        self,
        model_key: str,
        space: QuantSpace,
        compute: Callable[[], np.ndarray],
        fisher: bool | str = False,
    ) -> np.ndarray:
        """The cached table if it is valid, else ``compute()`` (stored before it is returned)."""
        err = self.load(model_key, space, fisher)
        if err is None:
            t0 = time.perf_counter()
            err = np.asarray(compute(), dtype=np.float64)
            log.info("error table for %s computed in %.1f s", model_key, time.perf_counter() - t0)
            self.save(model_key, space, err, fisher)
        return err


def _atomic_write(path: Path, write: Callable[[Any], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------- allocation
def _check_table(err: np.ndarray, space: QuantSpace) -> np.ndarray:
    err = np.asarray(err, dtype=np.float64)
    if err.shape != (space.n_matrices, space.n_options):
        raise SpaceError(
            f"error table has shape {err.shape}; the space needs ({space.n_matrices}, {space.n_options}) "
            f"= (matrices, options)"
        )
    if not np.all(np.isfinite(err)):
        raise ValueError("error table contains NaN or inf")
    return err


def total_error(err: np.ndarray, space: QuantSpace, cfg: np.ndarray) -> float | np.ndarray:
    """``Σ_i err[i, c_i]`` of a configuration: ``(N, 5)`` → float, ``(B, N, 5)`` → ``(B,)``."""
    err = _check_table(err, space)
    flat = space.flat_option(space.validate(cfg))
    s = err[np.arange(space.n_matrices), flat].sum(-1)
    return float(s) if np.ndim(s) == 0 else s


def pareto_options(err_row: np.ndarray, option_bits: np.ndarray) -> np.ndarray:
    """Non-dominated options of one matrix, in ascending bits (so descending error): ``(K,)`` → ``(P,)``.

    Option ``k`` is dropped if another has no more bits and no more error (an exact tie keeps the
    lower index). Some optimal allocation uses only kept options, so dropping the rest is lossless.
    """
    order = np.lexsort((np.arange(len(err_row)), err_row, option_bits))  # bits, then error, then index
    e = err_row[order]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(e)[:-1]))
    return order[e < best_before]


def _lower_hull(bits: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Positions on the lower convex hull of Pareto points sorted by ascending bits: ``(P,)`` → ``(H,)``."""
    hull: list[int] = []
    for j in range(len(bits)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (bits[b] - bits[a]) * (err[j] - err[a]) - (err[b] - err[a]) * (bits[j] - bits[a])
            if cross > 0:  # a→b→j turns left: b stays on the lower hull
                break
            hull.pop()
        hull.append(j)
    return np.array(hull, dtype=np.int64)


_STDOUT_LOCK = threading.Lock()


def _flush_c_stdio() -> None:
    """Flush the C library's stdio buffers (``fflush(NULL)``): native code's ``printf`` output waits there."""
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to reach this way (Windows): nothing to flush
        pass


@contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """Send what native code writes to file descriptor 1 to descriptor 2 while the block runs.

    HiGHS prints some lines with C's ``printf`` whatever its ``disp``/``output_flag`` settings (e.g.
    ``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();`` during branch and
    bound). That bypasses ``sys.stdout``, so only a descriptor-level redirect keeps the stdout of
    ``coalora ... --json`` a single JSON document. Python buffers are flushed before the switch and C
    buffers before the switch back, so every line lands on the side it was written for. Without a real
    descriptor 1 or 2 (a closed stream) the block runs as is.
    """
    with _STDOUT_LOCK:  # one redirect at a time: the descriptors are process-wide
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        _flush_c_stdio()
        try:
            saved = os.dup(1)
        except OSError:  # no descriptor 1 at all
            yield
            return
        try:
            try:
                os.dup2(2, 1)
            except OSError:  # no descriptor 2: leave stdout alone
                pass
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved, 1)
            os.close(saved)


def _solve_milp(
    err: np.ndarray,
    space: QuantSpace,
    cand: list[np.ndarray],
    rhs: float,
    time_limit: float,
    node_limit: int,
    mip_rel_gap: float,
) -> tuple[np.ndarray | None, str]:
    """One HiGHS solve over the candidate options: the chosen flat option per matrix ``(N,)`` (None when
    a limit was reached before any feasible configuration was found) and why HiGHS stopped:
    ``"optimal"`` (proved within ``mip_rel_gap``), ``"nodes"`` or ``"time"`` (that limit reached)."""
    n = space.n_matrices
    w = space.numels / space.numels.sum()
    sizes = np.array([len(c) for c in cand])
    starts = np.concatenate(([0], np.cumsum(sizes)))
    flat = np.concatenate(cand)
    owner = np.repeat(np.arange(n), sizes)
    # Objective: error above each matrix's best, divided by the largest such excess. Subtracting a
    # per-matrix constant leaves the argmin unchanged (one option per matrix) and puts every
    # coefficient in [0, 1], which keeps HiGHS's absolute tolerances meaningful whatever the units.
    excess = err[owner, flat] - err.min(axis=1)[owner]
    scale = float(excess.max()) or 1.0
    c = excess / scale
    # Rows 0..N-1: one option per matrix. Row N: numel-weighted average bits ≤ budget.
    v = len(flat)
    data = np.concatenate((np.ones(v), w[owner] * space.option_bits[flat]))
    rows = np.concatenate((owner, np.full(v, n)))
    cols = np.concatenate((np.arange(v), np.arange(v)))
    a = csr_array((data, (rows, cols)), shape=(n + 1, v))
    lb = np.concatenate((np.ones(n), [-np.inf]))
    ub = np.concatenate((np.ones(n), [rhs]))
    with _native_stdout_to_stderr():  # HiGHS's printf lines must not reach stdout (see there)
        res = milp(
            c,
            integrality=np.ones(v),
            bounds=Bounds(0, 1),
            constraints=LinearConstraint(a, lb, ub),
            options={"time_limit": float(time_limit), "node_limit": int(node_limit),
                     "mip_rel_gap": float(mip_rel_gap), "disp": False},
        )
    # SciPy reports a time limit as status 1 and HiGHS's node limit as status 4 ("not recognized").
    stop = {0: "optimal", 1: "time"}.get(res.status, "nodes")
    if res.x is None:
        if res.status == 1 or (res.status == 4 and getattr(res, "mip_node_count", 0) >= node_limit):
            # A limit reached before HiGHS found any feasible configuration: not an infeasible budget,
            # so the caller falls back to the greedy allocation.
            return None, stop
        raise AllocationError(
            f"MILP found no configuration for budget {rhs:.6f} bits: {res.message} (HiGHS status {res.status})"
        )
    x = res.x
    choice = np.empty(n, dtype=np.int64)
    for i in range(n):
        seg = x[starts[i] : starts[i + 1]]
        j = int(np.argmax(seg))
        if seg[j] < 0.5:
            raise AllocationError(f"MILP returned a fractional choice for matrix {space.matrices[i].name!r}")
        choice[i] = flat[starts[i] + j]
    return choice, stop


def _greedy(err: np.ndarray, space: QuantSpace, cand: list[np.ndarray], budget: float) -> np.ndarray:
    """Marginal analysis on the lower convex hulls, then local search; flat option per matrix ``(N,)``.

    1. Every matrix starts at its least-error option.
    2. While the average bits exceed the budget, the matrix whose next step down its lower convex
       hull of (bits, error) costs the least error per average bit saved takes that step (hull
       slopes grow along the hull, so a heap of next steps is exact for this rule). This is the
       classic LP-relaxation greedy of the multiple-choice knapsack.
    3. The last step usually overshoots, and hull-only moves skip Pareto options inside the hull;
       :func:`_improve` spends the slack and trades bits between pairs of matrices.
    The result is feasible, and never better than the MILP's.
    """
    bits = space.option_bits
    w = space.numels / space.numels.sum()
    hulls = [c[_lower_hull(bits[c], err[i, c])] for i, c in enumerate(cand)]
    pos = [len(h) - 1 for h in hulls]
    choice = np.array([h[-1] for h in hulls], dtype=np.int64)
    avg = float(w @ bits[choice])

    def step(i: int) -> tuple[float, int]:
        a, b = hulls[i][pos[i]], hulls[i][pos[i] - 1]
        return (err[i, b] - err[i, a]) / (w[i] * (bits[a] - bits[b])), i

    heap = [step(i) for i in range(len(hulls)) if pos[i] > 0]
    heapq.heapify(heap)
    while avg > budget and heap:
        _, i = heapq.heappop(heap)
        pos[i] -= 1
        new = hulls[i][pos[i]]
        avg += w[i] * (bits[new] - bits[choice[i]])
        choice[i] = new
        if pos[i] > 0:
            heapq.heappush(heap, step(i))
    return _improve(err, w, bits, cand, choice, budget)


def _improve(
    err: np.ndarray,
    w: np.ndarray,
    bits: np.ndarray,
    cand: list[np.ndarray],
    choice: np.ndarray,
    budget: float,
) -> np.ndarray:
    """Best-improvement local search from a feasible ``choice`` ``(N,)``; stays feasible.

    Each round takes the move that lowers the total error most among (a) one matrix to another
    Pareto option that fits in the slack, and (b) one matrix down plus another up, the pair
    fitting in the slack. Pairs are found without enumerating them: up-moves sorted by bits added
    with a running best (and best from a different matrix), then a binary search per down-move.
    Every round strictly lowers the error, so the search ends.
    """
    owner = np.concatenate([np.full(len(c), i) for i, c in enumerate(cand)])
    opt = np.concatenate(cand)
    choice = choice.copy()
    while True:
        slack = budget - float(w @ bits[choice])
        cur = choice[owner]
        db = w[owner] * (bits[opt] - bits[cur])  # average bits added by each move
        de = err[owner, opt] - err[owner, cur]  # error added by each move
        tol = 1e-12 * max(float(err[np.arange(len(choice)), choice].sum()), 1e-300)
        single = np.flatnonzero((db <= slack) & (opt != cur))
        best_gain, best_moves = 0.0, ()
        if single.size:
            j = single[np.argmin(de[single])]
            if -de[j] > tol:
                best_gain, best_moves = -de[j], ((owner[j], opt[j]),)
        up = np.flatnonzero(db > 0)
        down = np.flatnonzero(db < 0)
        if up.size and down.size:
            up = up[np.argsort(db[up], kind="stable")]
            # Running best and runner-up (from another matrix) of error added, over up-moves by bits.
            b1 = np.empty(len(up), dtype=np.int64)
            b2 = np.full(len(up), -1, dtype=np.int64)
            first, second = -1, -1
            for t, u in enumerate(up):
                if first < 0 or de[u] < de[first]:
                    if first >= 0 and owner[first] != owner[u]:
                        second = first
                    first = u
                elif owner[u] != owner[first] and (second < 0 or de[u] < de[second]):
                    second = u
                b1[t], b2[t] = first, second
            reach = np.searchsorted(db[up], slack - db[down], side="right") - 1
            ok = reach >= 0
            d, r = down[ok], reach[ok]
            partner = np.where(owner[b1[r]] != owner[d], b1[r], b2[r])
            ok = partner >= 0
            d, partner = d[ok], partner[ok]
            if d.size:
                total = de[d] + de[partner]
                t = int(np.argmin(total))
                if -total[t] > max(best_gain, tol):
                    best_gain = -total[t]
                    best_moves = ((owner[d[t]], opt[d[t]]), (owner[partner[t]], opt[partner[t]]))
        if not best_moves:
            return choice
        for i, k in best_moves:
            choice[i] = k


def allocate(
    err: np.ndarray,
    space: QuantSpace,
    budget: float,
    method: str = "milp",
    node_limit: int = 100,
    time_limit: float = 60.0,
    mip_rel_gap: float = 1e-6,
    prune: bool = True,
) -> np.ndarray:
    """The configuration of least total error whose average bits is at most ``budget``: ``(N, 5)``.

    Args:
        err: ``(N, K)`` error table (:func:`error_table`) of this space.
        budget: average storage bits per weight; below ``space.min_bits`` is an error naming the
            attainable range; at or above what the least-error configuration needs, that
            configuration is returned without solving.
        method: ``"milp"`` (exact, SciPy/HiGHS) or ``"greedy"`` (marginal analysis, see :func:`_greedy`).
        node_limit: branch-and-bound nodes HiGHS may explore. Past it the better of its best
            configuration and the greedy answer is used (logged at INFO). A node count, unlike
            a time limit, gives the same configuration on an idle and on a busy machine. Measured: 100
            nodes prove all 20 MiniLM-L6 budgets from 2.25 to 7 bits optimal but 5.75 (373 nodes to
            prove; the incumbent at 100 is already the optimum). SmolLM2-135M's 5 and 6 bits need more,
            at 0.1-0.4 s a node; there the greedy answer, within 0.03 % of the optimum, is the floor.
            Tables with near-tied options (tiny-bert: 17,000 nodes unproven after 120 s) stop in about
            a second.
        time_limit: seconds HiGHS may spend, a safety net for very large tables (SmolLM2's root
            relaxation alone takes 5-20 s on a busy 2-core machine). Reaching it has the same fallback
            as the node limit, with a ``RuntimeWarning``: what HiGHS has found by then depends on the
            machine's load.
        mip_rel_gap: HiGHS's relative optimality gap at which the search stops.
        prune: drop dominated options before the MILP (lossless, and far fewer binaries); off only
            to check that claim or to time the difference. The greedy method always prunes.
    """
    if method not in ("milp", "greedy"):
        raise ValueError(f"method must be 'milp' or 'greedy', got {method!r}")
    err = _check_table(err, space)
    budget = space.check_budget(budget)
    bits = space.option_bits
    cand = pruned = [pareto_options(err[i], bits) for i in range(space.n_matrices)]
    # The last Pareto option is each matrix's least error; if that fits, nothing is to be traded.
    best = np.array([c[-1] for c in cand], dtype=np.int64)
    if float(space.average_bits(space.option_table[best])) <= budget:
        choice = best
    elif method == "greedy":
        choice = _greedy(err, space, cand, budget)
    else:
        # check_budget refuses anything under min_bits; the max only guards the solver's own tolerance.
        rhs = max(budget, space.min_bits)
        if not prune:
            cand = [np.arange(space.n_options)] * space.n_matrices
        choice, stop = _solve_milp(err, space, cand, rhs, time_limit, node_limit, mip_rel_gap)
        if choice is not None and space.average_bits(space.option_table[choice]) > budget + _BUDGET_SLACK:
            choice, stop = _solve_milp(err, space, cand, rhs - 2 * _HIGHS_FEAS_TOL, time_limit, node_limit,
                                       mip_rel_gap)
        if stop != "optimal":
            # HiGHS reached a limit before closing the gap (it happens on tables whose options differ by
            # less than its tolerances), or before finding anything at all. Keep the better of its
            # incumbent (if any) and the greedy answer, which always exists for an attainable budget.
            greedy = _greedy(err, space, pruned, budget)
            found = choice is not None
            if not found or (total_error(err, space, space.option_table[greedy])
                             < total_error(err, space, space.option_table[choice])):
                choice = greedy
            what = "proving optimality" if found else "finding any configuration"
            used = "the better of its best configuration and the greedy one" if found else "the greedy one"
            if stop == "nodes":
                # By design and reproducible: the answer is the same on any machine, and never worse
                # than greedy. Worth a log line, not a warning on every run.
                log.info("MILP reached its node limit (%d) before %s at budget %.6f bits; using %s",
                         node_limit, what, budget, used)
            else:
                warnings.warn(
                    f"MILP reached its time limit ({time_limit:g} s) before {what} at budget {budget:.6f} "
                    f"bits; using {used}. What HiGHS finds in a given time depends on the machine's load: "
                    f"lower node_limit for a reproducible answer",
                    RuntimeWarning, stacklevel=2,
                )
    cfg = space.option_table[choice].copy()
    got = float(space.average_bits(cfg))
    if got > budget + _BUDGET_SLACK:
        raise AllocationError(f"{method} allocation uses {got:.9f} average bits, over the budget {budget}")
    return cfg


def budget_grid(space: QuantSpace, n: int = 20, lo: float = 2.25, hi: float = 7.0) -> np.ndarray:
    """``n`` evenly spaced budgets over ``[lo, hi]`` clipped to the attainable range: ``(n,)``."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    lo, hi = max(lo, space.min_bits), min(hi, space.max_bits)
    if lo > hi:
        raise SpaceError(
            f"budget range [{lo}, {hi}] does not meet the attainable range "
            f"{space.attainable_range()} of this space"
        )
    return np.linspace(lo, hi, n)


def initial_set(
    err: np.ndarray,
    space: QuantSpace,
    budgets: Sequence[float],
    method: str = "milp",
    node_limit: int = 100,
    time_limit: float = 60.0,
) -> np.ndarray:
    """One allocation per budget, duplicates removed, in budget order: ``(B', N, 5)``, ``B' ≤ B``.

    The first training set of the search. Neighbouring budgets can give the same configuration
    (the attainable averages are discrete), hence the de-duplication; the count is logged.
    """
    budgets = list(budgets)
    if not budgets:
        raise ValueError("initial_set needs at least one budget")
    for b in budgets:  # every bad budget is reported before any solve starts
        space.check_budget(b)
    seen: set[bytes] = set()
    out: list[np.ndarray] = []
    for b in budgets:
        cfg = allocate(err, space, b, method=method, node_limit=node_limit, time_limit=time_limit)
        key = cfg.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    log.info("initial set: %d distinct configurations from %d budgets", len(out), len(budgets))
    return np.stack(out)
