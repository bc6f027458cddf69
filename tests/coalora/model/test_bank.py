"""``lora.bank``: a rank-R LoRA pair per (matrix, weight bit width), picked by the configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.core.quant import fake_quantize
from coalora.core.space import QuantSpace
from coalora.errors import CheckpointMismatchError, ConfigError
from coalora.model.hypernet import HypernetConfig
from coalora.model.lora import CoaModel, LoraSettings
from tests.coalora._tiny import tiny_bert, tiny_llama
from tests.coalora.model.test_lora import batch


def _bank_model(bank: int = 2, hyper: HypernetConfig | None = None, init: str = "default",
                base=None) -> CoaModel:
    base = base if base is not None else tiny_bert()
    torch.manual_seed(0)
    return CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4, alpha=8, init=init, bank=bank), hyper)


def _two_widths(space: QuantSpace) -> np.ndarray:
    """Two configurations that differ only in matrix 0's weight bit width (index 0 vs 1)."""
    c = space.sample(np.random.default_rng(4), 1)[0]
    a, b = c.copy(), c.copy()
    a[0, 0], b[0, 0] = 0, 1
    return np.stack([a, b])


def test_a_bank_has_one_pair_per_bit_width_and_starts_at_zero():
    model = _bank_model(bank=2)
    n_bits = len(model.space.options["bits"])
    for layer in model.layers:
        assert layer.bank_A.shape == (n_bits, 2, layer.in_features)
        assert layer.bank_B.shape == (n_bits, layer.out_features, 2)
        assert torch.count_nonzero(layer.bank_B) == 0 and torch.count_nonzero(layer.bank_A) > 0
    names = set(model.trainable_state())
    assert {n for n in names if "bank" in n} and all(n.endswith(("bank_A", "bank_B")) for n in names if "bank" in n)
    assert "bank=(4, 2)" in repr(model.layers[0])
    # No bank: no such parameters.
    assert not [n for n in _bank_model(bank=0).trainable_state() if "bank" in n]


def test_each_matrix_uses_the_entry_of_its_bit_width_only():
    model = _bank_model(bank=2)
    a, b = _two_widths(model.space)
    model.set_config(a)
    assert [layer.bank_slot for layer in model.layers] == [int(w) for w in a[:, 0]]
    x = batch()
    with torch.no_grad():
        before = model(**x).logits
        model.layers[0].bank_B[1].normal_()  # width 1 of matrix 0: configuration b's, not a's
        torch.testing.assert_close(model(**x).logits, before, atol=0, rtol=0)
        model.set_config(b)
        changed = model(**x).logits
        model.layers[0].bank_B[1].zero_()
        model.set_config(b)
        assert not torch.allclose(changed, model(**x).logits)
    model.set_config(None)  # the unquantized base: no width, no bank entry
    assert all(layer.bank_slot is None for layer in model.layers)


def test_gradients_reach_only_the_entries_the_configuration_uses():
    model = _bank_model(bank=2, hyper=HypernetConfig())
    a, _ = _two_widths(model.space)
    model.set_config(a)
    model(**batch()).logits.square().sum().backward()
    layer = model.layers[0]
    used = int(a[0, 0])
    assert layer.bank_B.grad[used].abs().sum() > 0  # B_b is zero, so A_b's gradient is zero at start
    others = [k for k in range(layer.bank_B.shape[0]) if k != used]
    assert torch.count_nonzero(layer.bank_B.grad[others]) == 0


def test_residual_init_gives_each_width_the_next_directions_of_its_mean_residual():
    """From one configuration, B·A is the residual's top r and each matrix's bank entry (of that matrix's
    width) the next R: together its top r + R. The core target of that configuration stays the identity."""
    model = _bank_model(bank=3, init="residual", base=tiny_llama(), hyper=HypernetConfig())
    space = model.space
    c = space.sample(np.random.default_rng(3), 1)
    model.init_lora_from_residual(c)
    for i, layer in enumerate(model.layers):
        w = layer.weight
        residual = w - fake_quantize(w, space.option(c[0, i]), family=space.family, dtype=w.dtype)
        u, s, vh = torch.linalg.svd(residual)
        slot = int(c[0, i, 0])
        got = layer.scaling * (layer.lora_B @ layer.lora_A + layer.bank_B[slot] @ layer.bank_A[slot])
        torch.testing.assert_close(got, (u[:, :7] * s[:7]) @ vh[:7], atol=1e-5, rtol=1e-4)
        others = [k for k in range(layer.bank_B.shape[0]) if k != slot]
        assert torch.count_nonzero(layer.bank_B[others]) == 0  # widths it never saw keep the zero start
    targets, _, _ = model.residual_core_targets(c)
    torch.testing.assert_close(targets[0], torch.eye(4).expand_as(targets[0]), atol=2e-3, rtol=0)


def test_the_folded_adapter_holds_the_core_and_the_bank_entry():
    model = _bank_model(bank=2, hyper=HypernetConfig(init_std=0.3))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in model.layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)
            layer.bank_B.copy_(torch.randn(layer.bank_B.shape, generator=g) * 0.1)
    c = model.space.sample(np.random.default_rng(2), 1)[0]
    model.set_config(c)
    folded = model.folded_lora(c)
    assert model.folded_rank == 6
    with torch.no_grad():
        cores = model.cores()
        for i, (m, layer) in enumerate(zip(model.space.matrices, model.layers)):
            x = torch.randn(5, layer.in_features)
            a, b = folded[m.name]
            assert a.shape == (6, layer.in_features) and b.shape == (layer.out_features, 6)
            slot = int(c[i, 0])
            want = x @ layer.lora_A.T @ cores[i].T @ layer.lora_B.T + x @ layer.bank_A[slot].T @ layer.bank_B[slot].T
            torch.testing.assert_close(x @ a.T @ b.T, want, atol=1e-6, rtol=1e-5)


def test_a_checkpoint_with_a_bank_fits_only_a_model_with_the_same_bank():
    a = _bank_model(bank=2)
    b = _bank_model(bank=2)
    with torch.no_grad():
        a.layers[0].bank_B.normal_()
    b.load_trainable_state(a.trainable_state())
    torch.testing.assert_close(b.layers[0].bank_B, a.layers[0].bank_B, atol=0, rtol=0)
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        _bank_model(bank=0).load_trainable_state(a.trainable_state())
    with pytest.raises(CheckpointMismatchError, match="shape"):
        _bank_model(bank=3).load_trainable_state(a.trainable_state())


def test_bank_settings_are_checked():
    with pytest.raises(ConfigError, match="lora.bank: must be a non-negative integer"):
        LoraSettings(bank=-1)
    with pytest.raises(ConfigError, match="lora.bank: must be a non-negative integer"):
        LoraSettings(bank=1.5)
    base = tiny_bert()
    space = QuantSpace.from_model(base)
    side = min(min(m.shape) for m in space.matrices)
    with pytest.raises(ConfigError, match=f"lora.bank: {side + 1} is larger .* set lora.bank to at most {side}"):
        CoaModel(base, space, LoraSettings(rank=4, bank=side + 1))
