"""GP side of the search: encodings, GP inputs with exact bits, the additive kernel, the acquisition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.core.pareto import ObjectiveBounds
from coalora.core.space import space_from_shapes
from coalora.errors import SearchError
from coalora.search.gp import ConfigEncoder, GPAcquisition, GPInputs, additive_bits_kernel, bits_basis

OPTIONS = {"bits": (2, 3, 4, 8), "scale_bits": (8,), "scale2_dtype": ("fp32",), "block": (16, 64), "block2": (256,)}


@pytest.fixture(scope="module")
def space():
    return space_from_shapes(2, {"a": (32, 32), "b": (64, 32)}, options=OPTIONS)


@pytest.mark.parametrize("kind", ["full", "bits", "layer"])
def test_encoding_is_in_unit_cube_and_bits_are_affine(space, kind):
    enc = ConfigEncoder(space, kind)
    C = space.sample(np.random.default_rng(0), 50)
    X = enc.encode(C)
    a, b = enc.bits_affine()
    assert X.shape == (50, enc.dim)
    assert X.min() >= 0 and X.max() <= 1
    assert X @ a + b == pytest.approx(space.average_bits(C), abs=1e-12)


def test_encoding_dimensions(space):
    # full: 2 varying knobs (bits, block) + 1 bits feature per matrix; layer: 2 layers + 2 module types.
    assert ConfigEncoder(space, "full").dim == 4 * 3
    assert ConfigEncoder(space, "bits").dim == 4
    assert ConfigEncoder(space, "layer").dim == 2 + 2
    with pytest.raises(SearchError, match="encoding 'onehot'"):
        ConfigEncoder(space, "onehot")


def test_bits_basis_by_hand():
    phi = bits_basis(np.array([0.0, 0.5]), 3)  # centres 0, 0.5, 1; width 0.5
    e = np.exp(-0.5)
    assert phi == pytest.approx(np.array([[1.0, e, np.exp(-2.0)], [e, 1.0, e]]))


@pytest.mark.parametrize("kernel", ["additive", "rbf", "additive+rbf"])
def test_gp_inputs_keep_bits_affine(space, kernel):
    inputs = GPInputs(ConfigEncoder(space, "full"), kernel, 4)
    C = space.sample(np.random.default_rng(1), 20)
    X = inputs(C)
    a, b = inputs.bits_affine()
    assert X.shape == (20, inputs.dim)
    assert X @ a + b == pytest.approx(space.average_bits(C), abs=1e-12)


def test_additive_kernel_matches_its_formula(space):
    enc = ConfigEncoder(space, "bits")
    inputs = GPInputs(enc, "additive", 3)
    C = space.sample(np.random.default_rng(2), 5)
    X = torch.as_tensor(inputs(C))
    k = inputs.covariance()
    with torch.no_grad():
        k.raw_scales.copy_(torch.tensor([0.3, -0.2], dtype=torch.float64))
        K = k(X, X).to_dense().numpy()
        diag = k(X, X, diag=True).numpy()
    s1, s2 = k.scales.detach().numpy()
    z = enc.encode(C)  # (5, G)
    phi = bits_basis(z, 3)  # (5, G, R)
    w = space.numels / space.numels.sum()
    psi = np.einsum("bgr,g->br", phi, w)
    expected = s1 / z.shape[1] * np.einsum("agr,bgr->ab", phi, phi) + s2 * psi @ psi.T
    assert K == pytest.approx(expected, rel=1e-12)
    assert diag == pytest.approx(np.diag(expected), rel=1e-12)
    assert additive_bits_kernel(4, 3) is not additive_bits_kernel(4, 3)  # fresh modules


def test_additive_gp_learns_an_additive_loss_better_than_rbf():
    """On f1 = Σ_i s_i·2^−bits_i over 12 matrices, 40 points: the additive kernel ranks 200 held-out
    configurations near 4.5 bits better than BoTorch's RBF (Spearman measured 0.995 vs 0.87)."""
    from scipy.stats import spearmanr

    sp = space_from_shapes(6, {"a": (32, 32), "b": (64, 32)}, options={**OPTIONS, "block": (64,)})
    sens = np.random.default_rng(0).lognormal(0.0, 1.0, sp.n_matrices)

    def f(C):
        return (sens * 2.0 ** (-sp.matrix_bits(C))).sum(-1)

    rng = np.random.default_rng(1)
    train = np.concatenate([sp.sample_near(t, rng, 1, tol=0.3) for t in rng.uniform(2.3, 7.9, 40)])
    test = sp.sample_near(4.5, rng, 200, tol=0.3)
    lo, hi = 0.0, float(f(train).max())
    bounds = ObjectiveBounds((lo, hi), (sp.min_bits, sp.max_bits))
    pts = bounds.normalise(f(train), sp.average_bits(train))
    corr = {}
    for kernel in ("additive", "rbf"):
        acq = GPAcquisition(GPInputs(ConfigEncoder(sp, "bits"), kernel, 8), train, pts[:, 0], pts[:, 1], bounds,
                            fit_maxiter=60, mc_samples=16, seed=0)
        with torch.no_grad():
            mean = acq.gp.posterior(torch.as_tensor(acq.inputs(test))).mean.squeeze(-1).numpy()
        corr[kernel] = spearmanr(mean, f(test))[0]
    assert corr["additive"] > 0.95 and corr["additive"] > corr["rbf"] + 0.05, corr


def test_acquisition_reference_point_is_dominated_by_every_observation(space):
    rng = np.random.default_rng(0)
    C = np.concatenate([space.sample_near(t, rng, 1, tol=0.3) for t in np.linspace(2.3, 7.9, 8)])
    loss = (2.0 ** (-space.matrix_bits(C))).sum(-1)
    bounds = ObjectiveBounds((0.0, 2.0), (space.min_bits, space.max_bits))
    pts = bounds.normalise(loss, space.average_bits(C))
    acq = GPAcquisition(GPInputs(ConfigEncoder(space, "bits"), "additive", 4), C, pts[:, 0], pts[:, 1], bounds,
                        fit_maxiter=15, mc_samples=16, seed=0)
    ref = acq.acqf.ref_point.numpy()  # BoTorch maximises the negated objectives
    assert np.all(-pts > ref)
    vals = acq(space.sample(rng, 10))
    assert vals.shape == (10,) and np.all(np.isfinite(vals))
