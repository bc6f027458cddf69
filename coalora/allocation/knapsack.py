"""Allocation: from a bit budget to a configuration (docs/architecture.md §2.6).

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
:class:`~coalora.allocation.error_tables.ErrorTableCache` keeps them on disk, keyed by model (name and
weights), space and weighting.

Shapes: ``N`` target matrices, ``K`` options per matrix (``space.n_options``), ``B`` budgets.
"""

from __future__ import annotations

import heapq
import logging
import os
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_array

from coalora.allocation.error_tables import _check_table, total_error
from coalora.core.space import QuantSpace
from coalora.errors import AllocationError, SpaceError

log = logging.getLogger(__name__)

# HiGHS accepts a row activity up to its primal feasibility tolerance (1e-7) above the bound, and
# SciPy does not let us change that tolerance. A solution that lands in that sliver is re-solved
# once against a budget lowered by twice that amount.
_HIGHS_FEAS_TOL = 1e-7
_BUDGET_SLACK = 1e-9  # what "average bits ≤ budget" tolerates when checked on the result


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
