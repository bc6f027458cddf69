"""U_θ: shapes, near-identity start, any depth, one batched call, context input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.core.space import space_from_shapes
from coalora.model.hypernet import ConfigHypernet, HypernetConfig, as_index_tensor


def _space(layers: int = 3):
    return space_from_shapes(layers, {"q": (64, 64), "ffn": (128, 64)})


def test_shapes_single_and_batched():
    s = _space()
    net = ConfigHypernet(s, rank=4)
    cfgs = s.sample(np.random.default_rng(0), 5)
    single = net(as_index_tensor(cfgs[0]))
    batched = net(as_index_tensor(cfgs))
    assert single.shape == (6, 4, 4)
    assert batched.shape == (5, 6, 4, 4)
    torch.testing.assert_close(batched[0], single)


def test_starts_near_identity():
    s = _space()
    torch.manual_seed(0)
    net = ConfigHypernet(s, rank=8)
    m = net(as_index_tensor(s.sample(np.random.default_rng(1), 1)[0]))
    eye = torch.eye(8).expand_as(m)
    assert (m - eye).abs().max() < 0.02
    assert (m - eye).abs().max() > 0  # not exactly I: the last layer is N(0, 1e-3), not zero


def test_zero_init_gives_exact_identity():
    s = _space()
    net = ConfigHypernet(s, rank=4, cfg=HypernetConfig(init_std=0.0))
    m = net(as_index_tensor(s.sample(np.random.default_rng(1), 1)[0]))
    torch.testing.assert_close(m, torch.eye(4).expand_as(m), rtol=0, atol=0)


def test_deep_models_past_32_layers():
    s = _space(layers=40)
    net = ConfigHypernet(s, rank=2)
    out = net(as_index_tensor(s.sample(np.random.default_rng(0), 1)[0]))
    assert out.shape == (80, 2, 2)


def test_cores_depend_on_knobs_after_training_signal():
    """Different options give different cores once U_θ is non-trivial, and gradients reach every part."""
    s = _space()
    net = ConfigHypernet(s, rank=4, cfg=HypernetConfig(init_std=0.5))
    a, b = s.sample(np.random.default_rng(3), 2)
    ma, mb = net(as_index_tensor(a)), net(as_index_tensor(b))
    assert not torch.allclose(ma, mb)
    (ma.sum() + mb.pow(2).sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name


def test_context_input_changes_cores_for_same_matrix_knobs():
    s = _space()
    net = ConfigHypernet(s, rank=4, cfg=HypernetConfig(context=True, init_std=0.5))
    a = s.sample(np.random.default_rng(4), 1)[0]
    b = a.copy()
    b[1:, 0] = (b[1:, 0] + 1) % 4  # change every matrix but the first
    ma, mb = net(as_index_tensor(a)), net(as_index_tensor(b))
    # Matrix 0 has identical knobs in both, but the global context differs.
    assert not torch.allclose(ma[0], mb[0])
    plain = ConfigHypernet(s, rank=4, cfg=HypernetConfig(context=False, init_std=0.5))
    torch.testing.assert_close(plain(as_index_tensor(a))[0], plain(as_index_tensor(b))[0])


def test_cores_stay_float32_inside_a_callers_autocast():
    """U_θ ignores an enclosing bf16 autocast: its cores equal the float32 ones bit for bit."""
    s = _space()
    torch.manual_seed(0)
    net = ConfigHypernet(s, rank=4, cfg=HypernetConfig(init_std=0.05, context=True))
    idx = as_index_tensor(s.sample(np.random.default_rng(3), 2))
    want = net(idx)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = net(idx)
        # The same network's first layer under the autocast does compute in bf16 (the guard matters).
        assert net.fc1(torch.randn(2, net.fc1.in_features)).dtype == torch.bfloat16
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)


# ---------------------------------------------------------------------- hypernet.damage
def _damage_net(s, rel, sq, **kw):
    return ConfigHypernet(s, rank=4, cfg=HypernetConfig(damage=True, **kw), rel_errors=rel, norms_sq=sq)


def test_damage_features_are_read_from_the_error_table():
    """Own error, whole-configuration error and error up to the matrix's layer, exactly as the table says."""
    s = space_from_shapes(2, {"q": (64, 64)})  # 2 matrices, one per layer
    k = s.n_options
    rel = np.full((2, k), 0.01)
    rel[0, 3], rel[1, 5] = 0.04, 0.09
    sq = np.array([1.0, 3.0])  # ‖W‖²: the second matrix weighs three times the first
    net = _damage_net(s, rel, sq)
    cfg = np.stack([s.option_table[3], s.option_table[5]])  # matrix 0 at flat option 3, matrix 1 at 5
    assert list(s.flat_option(cfg)) == [3, 5]
    feats = net.damage(as_index_tensor(cfg)[None]) * net._log_sd + net._log_mu  # undo the standardisation
    total = (0.04 * 1 + 0.09 * 3) / 4
    want = np.log([[[0.04, total, 0.04], [0.09, total, total]]])  # layer 0 sees only itself; layer 1 both
    np.testing.assert_allclose(feats.numpy(), want, rtol=1e-5)


def test_damage_tells_apart_options_with_the_same_knobs_elsewhere():
    """Two configurations differing only in matrix 0's error (same knobs everywhere else) give every
    later matrix different inputs: the accumulated and total errors move."""
    s = _space(layers=2)
    rng = np.random.default_rng(0)
    rel = rng.uniform(0.001, 0.1, size=(4, s.n_options))
    net = _damage_net(s, rel, np.ones(4))
    a = s.sample(np.random.default_rng(1), 1)[0]
    b = a.copy()
    b[0] = s.option_table[(s.flat_option(a)[0] + 1) % s.n_options]
    fa, fb = net.damage(as_index_tensor(np.stack([a, b])))
    assert not torch.allclose(fa[3], fb[3])  # matrix 3 (layer 1) has the same knobs in both
    torch.testing.assert_close(fa[3, 0], fb[3, 0])  # ... and the same own error


def test_damage_input_shapes_and_identity_at_zero_init():
    s = _space()
    net = _damage_net(s, np.full((6, s.n_options), 0.02), np.ones(6), init_std=0.0)
    cfgs = as_index_tensor(s.sample(np.random.default_rng(0), 3))
    out = net(cfgs)
    assert out.shape == (3, 6, 4, 4)
    torch.testing.assert_close(out, torch.eye(4).expand_as(out), rtol=0, atol=0)


def test_damage_needs_well_formed_tables():
    s = _space()
    with pytest.raises(ValueError, match="needs the relative error table"):
        ConfigHypernet(s, rank=4, cfg=HypernetConfig(damage=True))
    with pytest.raises(ValueError, match=r"must be \(6, \d+\) and \(6,\)"):
        _damage_net(s, np.ones((5, s.n_options)), np.ones(6))
    with pytest.raises(ValueError, match="finite non-negative"):
        _damage_net(s, np.full((6, s.n_options), np.nan), np.ones(6))


# ---------------------------------------------------------------------- hypernet.gates
def test_gated_cores_are_block_diagonal_scalings():
    """K = 2 gates on rank 4: each core is diag(g1, g1, g2, g2) with g = 1 + s·u from U_θ's K outputs."""
    s = _space()
    torch.manual_seed(0)
    net = ConfigHypernet(s, rank=4, cfg=HypernetConfig(gates=2, init_std=0.5))
    assert net.fc2.out_features == 2
    cfgs = as_index_tensor(s.sample(np.random.default_rng(0), 3))
    m = net(cfgs)
    assert m.shape == (3, 6, 4, 4)
    d = torch.diagonal(m, dim1=-2, dim2=-1)
    torch.testing.assert_close(m, torch.diag_embed(d), rtol=0, atol=0)  # nothing off the diagonal
    torch.testing.assert_close(d[..., 0], d[..., 1], rtol=0, atol=0)  # one gate per block of r/K = 2
    torch.testing.assert_close(d[..., 2], d[..., 3], rtol=0, atol=0)
    assert not torch.allclose(d[..., 0], d[..., 2])  # the two gates differ
    assert not torch.allclose(d[0], d[1])  # and depend on the configuration


def test_gates_must_divide_the_rank():
    from coalora.errors import ConfigError
    from coalora.pipeline.config import load_config

    with pytest.raises(ValueError, match="3 gates do not divide rank 4"):
        ConfigHypernet(_space(), rank=4, cfg=HypernetConfig(gates=3))
    with pytest.raises(ConfigError, match=r"^hypernet\.gates: must be 0 \(a dense core\) or a positive number"):
        HypernetConfig(gates=-1)
    with pytest.raises(ConfigError, match=r"^hypernet\.gates: 3 gates must divide lora\.rank \(16\) into equal blocks$"):
        load_config(None, ["hypernet.gates=3"])
