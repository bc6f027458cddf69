"""The adapted model: PEFT equivalence, configuration switching, caching, trainable set, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coalora.core.quant import fake_quantize
from coalora.core.space import QuantSpace
from coalora.errors import CheckpointMismatchError
from coalora.model.hypernet import HypernetConfig
from coalora.model.lora import CoaLinear, CoaModel, LoraSettings, within_radius
from tests.coalora._tiny import tiny_bert, tiny_llama


def batch(seed: int = 0, n: int = 3, t: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _randomise_lora(model: CoaModel, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_identity_core_equals_peft_lora_on_dequantized_base(kind):
    """With M = I and the same A/B, outputs equal a PEFT LoRA model on the same dequantized base."""
    from peft import LoraConfig, get_peft_model

    make = tiny_bert if kind == "bert" else tiny_llama
    base = make()
    space = QuantSpace.from_model(base)
    cfg = space.sample(np.random.default_rng(0), 1)[0]
    coa = CoaModel(make(), space, LoraSettings(rank=4, alpha=8), HypernetConfig(init_std=0.0))
    coa.set_config(cfg)
    _randomise_lora(coa)
    # The same dequantized base inside a plain HF model, wrapped by PEFT with the same factors.
    ref = make()
    with torch.no_grad():
        for m, row in zip(space.matrices, cfg):
            mod = ref.get_submodule(m.name)
            mod.weight.copy_(fake_quantize(mod.weight, space.option(row), family=space.family))
    heads = ["classifier"] if kind == "bert" else None
    peft_model = get_peft_model(
        ref,
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[m.name for m in space.matrices],
                   modules_to_save=heads),
    ).eval()
    with torch.no_grad():
        for m, layer in zip(space.matrices, coa.layers):
            peft_layer = peft_model.base_model.model.get_submodule(m.name)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
        if heads:
            peft_model.base_model.model.classifier.modules_to_save["default"].load_state_dict(
                coa.model.classifier.state_dict()
            )
    b = batch()
    with torch.no_grad():
        ours = coa(**b).logits
        theirs = peft_model(**b).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_backbone_frozen_and_trainable_set():
    coa = CoaModel(tiny_bert(), QuantSpace.from_model(tiny_bert()), LoraSettings(rank=4), HypernetConfig())
    names = {n for n, p in coa.named_parameters() if p.requires_grad}
    assert any(n.startswith("hypernet.") for n in names)
    assert any(n.endswith("classifier.weight") for n in names)
    assert sum(n.endswith("lora_A") for n in names) == 12
    backbone = {n for n in names if n.startswith("model.")}
    assert not any("embeddings" in n or "LayerNorm" in n or "pooler" in n for n in backbone)
    assert isinstance(coa.model.bert.encoder.layer[0].attention.self.query, CoaLinear)


def test_switching_configuration_uses_cache_and_changes_output():
    base = tiny_bert()
    space = QuantSpace.from_model(base)
    coa = CoaModel(base, space, LoraSettings(rank=4), HypernetConfig())
    rng = np.random.default_rng(0)
    low = space.sample_near(2.3, rng, 1)[0]
    high = space.sample_near(8.0, rng, 1, tol=0.3)[0]
    b = batch()
    with torch.no_grad():
        coa.set_config(low)
        out_low = coa(**b).logits
        misses = coa.cache.misses
        coa.set_config(high)
        out_high = coa(**b).logits
        coa.set_config(low)
        again = coa(**b).logits
    assert not torch.allclose(out_low, out_high)
    torch.testing.assert_close(again, out_low, rtol=0, atol=0)
    assert coa.cache.misses == misses + 12  # the second visit of `low` was all hits
    assert coa.cache.hits >= 12


def test_the_residual_start_the_fit_targets_and_training_quantize_each_pair_once():
    base = tiny_llama()
    space = QuantSpace.from_model(base)
    configs = space.sample(np.random.default_rng(5), 3)
    model = CoaModel(base, space, LoraSettings(rank=4, alpha=8, init="residual"), HypernetConfig())
    pairs = {(i, int(k)) for c in configs for i, k in enumerate(space.flat_option(c))}
    model.init_lora_from_residual(configs)
    assert (model.cache.misses, model.cache.hits) == (len(pairs), 0)
    model.residual_core_targets(configs)
    model.set_config(configs[1])
    assert model.cache.misses == len(pairs)  # every later use was a hit
    assert model.cache.hits == len(pairs) + len(model.layers)
    # The cached weights are the quantizer's own.
    i, k = next(iter(pairs))
    want = fake_quantize(model.layers[i].weight, space.option(space.option_table[k]), family=space.family,
                         dtype=model.layers[i].weight.dtype)
    torch.testing.assert_close(model.quantized(i, k), want, atol=0, rtol=0)


def test_fp_mode_runs_the_unquantized_base():
    base = tiny_bert()
    ref = tiny_bert()
    coa = CoaModel(base, QuantSpace.from_model(ref), LoraSettings(rank=4), hypernet=None)
    coa.set_config(None)
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(coa(**b).logits, ref(**b).logits, atol=1e-6, rtol=0)
    coa_h = CoaModel(tiny_bert(), QuantSpace.from_model(ref), LoraSettings(rank=4), HypernetConfig())
    with pytest.raises(ValueError, match="needs a configuration"):
        coa_h.set_config(None)


def test_gradients_reach_lora_hypernet_and_head_only():
    base = tiny_bert()
    space = QuantSpace.from_model(base)
    coa = CoaModel(base, space, LoraSettings(rank=4), HypernetConfig()).train()
    coa.set_config(space.sample(np.random.default_rng(0), 1)[0])
    out = coa(**batch(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    layer = coa.layers[0]
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    # B = 0 at init, so A and U_θ get no gradient on the first step; the head does.
    assert coa.model.classifier.weight.grad.abs().sum() > 0
    assert coa.hypernet.fc2.weight.grad is not None


def test_trainable_state_round_trip_and_mismatch():
    space = QuantSpace.from_model(tiny_bert())
    a = CoaModel(tiny_bert(0), space, LoraSettings(rank=4), HypernetConfig())
    _randomise_lora(a)
    b = CoaModel(tiny_bert(5), space, LoraSettings(rank=4), HypernetConfig())
    b.load_trainable_state(a.trainable_state())
    for k, v in a.trainable_state().items():
        torch.testing.assert_close(b.trainable_state()[k], v)
    wrong_rank = CoaModel(tiny_bert(), space, LoraSettings(rank=2), HypernetConfig())
    with pytest.raises(CheckpointMismatchError, match="shape"):
        wrong_rank.load_trainable_state(a.trainable_state())
    plain = CoaModel(tiny_bert(), space, LoraSettings(rank=4), None)
    with pytest.raises(CheckpointMismatchError, match="unexpected"):
        plain.load_trainable_state(a.trainable_state())


def test_folded_lora_reproduces_cores():
    base = tiny_bert()
    space = QuantSpace.from_model(base)
    coa = CoaModel(base, space, LoraSettings(rank=4, alpha=8), HypernetConfig(init_std=0.3))
    _randomise_lora(coa)
    cfg = space.sample(np.random.default_rng(2), 1)[0]
    coa.set_config(cfg)
    folded = coa.folded_lora(cfg)
    with torch.no_grad():
        cores = coa.cores()
        for i, (m, layer) in enumerate(zip(space.matrices, coa.layers)):
            x = torch.randn(5, layer.in_features)
            a, b_fold = folded[m.name]
            want = x @ layer.lora_A.T @ cores[i].T @ layer.lora_B.T
            torch.testing.assert_close(x @ a.T @ b_fold.T, want, atol=1e-6, rtol=1e-5)


def test_rank_must_be_positive():
    from coalora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^lora\.rank: must be a positive integer, got 0$"):
        LoraSettings(rank=0)


def test_rank_above_a_matrix_side_fails_before_allocating():
    """Rank 10⁹ would ask for gigabytes per factor: the check comes first and names the tightest matrix."""
    from coalora.core.space import TargetMatrix
    from coalora.errors import ConfigError

    base = tiny_llama()
    space = QuantSpace.from_model(base)
    narrow = min(space.matrices, key=lambda m: min(m.shape))
    assert isinstance(narrow, TargetMatrix) and narrow.shape == (32, 64)  # k_proj: 2 KV heads × 16
    with pytest.raises(ConfigError) as e:
        CoaModel(base, space, LoraSettings(rank=1_000_000_000))
    assert str(e.value) == (f"lora.rank: 1000000000 is larger than the smaller side of target matrix {narrow.name} "
                            "(shape 32 x 64, out x in); set lora.rank to at most 32")
    assert not any(isinstance(m, CoaLinear) for m in base.modules())  # the base was left as it was
    CoaModel(base, space, LoraSettings(rank=32))  # the largest rank every matrix holds


# ---------------------------------------------------------------------- lora.init: residual
def test_residual_factors_are_the_top_r_part():
    """scaling·B·A is the best rank-r approximation: on diag(3, 2, 1) at r = 2, exactly diag(3, 2, 0)."""
    from coalora.model.lora import residual_factors

    a, b = residual_factors(torch.diag(torch.tensor([3.0, 2.0, 1.0])), rank=2, scaling=2.0)
    assert a.shape == (2, 3) and b.shape == (3, 2)
    torch.testing.assert_close(2.0 * b @ a, torch.diag(torch.tensor([3.0, 2.0, 0.0])), atol=1e-6, rtol=0)
    # The scale is split evenly: both factors have the same norm.
    torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0))


def test_residual_init_reconstructs_the_mean_residuals_top_r_part():
    from coalora.model.lora import residual_factors

    base = tiny_llama()
    space = QuantSpace.from_model(base)
    configs = space.sample(np.random.default_rng(3), 3)
    configs[1] = configs[0]  # a repeated configuration weighs twice in the mean
    model = CoaModel(base, space, LoraSettings(rank=4, alpha=8, init="residual"))
    model.init_lora_from_residual(configs)
    for i, layer in enumerate(model.layers):
        w = layer.weight
        q = [fake_quantize(w, space.option(c[i]), family=space.family, dtype=w.dtype) for c in configs]
        residual = w - (q[0] + q[1] + q[2]) / 3
        u, s, vh = torch.linalg.svd(residual)
        top = (u[:, :4] * s[:4]) @ vh[:4]
        torch.testing.assert_close(layer.scaling * layer.lora_B @ layer.lora_A, top, atol=1e-5, rtol=1e-4)
        # ... so the corrected weight is closer to W than the average quantized one.
        assert (residual - layer.scaling * layer.lora_B @ layer.lora_A).norm() < residual.norm()
    a, b = residual_factors(residual, 4, model.layers[-1].scaling)
    torch.testing.assert_close(model.layers[-1].lora_A, a)


def test_residual_init_lowers_the_quantized_models_distance_to_the_base():
    """Under a training configuration the residual-initialised model's logits are closer to the
    unquantized base's than the default initialisation's (which starts at the quantized base)."""
    fp = tiny_llama()
    space = QuantSpace.from_model(fp)
    c = space.sample(np.random.default_rng(0), 1)
    with torch.no_grad():
        want = fp(**batch()).logits
    gaps = {}
    for init in ("default", "residual"):
        model = CoaModel(tiny_llama(), space, LoraSettings(rank=8, alpha=16, init=init))
        if init == "residual":
            model.init_lora_from_residual(c)
        model.set_config(c[0])
        with torch.no_grad():
            gaps[init] = float((model(**batch()).logits - want).norm())
    assert gaps["residual"] < gaps["default"]


def test_lora_init_must_be_known():
    from coalora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^lora\.init: must be one of default, residual, got 'loftq'$"):
        LoraSettings(init="loftq")


# ---------------------------------------------------------------------- hypernet.residual_fit
def _residual_model(configs, **hyper):
    base = tiny_llama()
    space = QuantSpace.from_model(base)
    model = CoaModel(base, space, LoraSettings(rank=4, alpha=8, init="residual"), HypernetConfig(**hyper))
    model.init_lora_from_residual(configs)
    return model


def test_the_target_core_of_the_configuration_the_lora_was_initialised_from_is_the_identity():
    """B·A is then the top-r part of that configuration's residual: the best core within it is exactly I."""
    space = QuantSpace.from_model(tiny_llama())
    c = space.sample(np.random.default_rng(0), 1)
    model = _residual_model(c)
    targets, gram_b, gram_a = model.residual_core_targets(c)
    assert targets.shape == (1, space.n_matrices, 4, 4) and gram_b.shape == gram_a.shape == (space.n_matrices, 4, 4)
    torch.testing.assert_close(targets[0], torch.eye(4).expand(space.n_matrices, 4, 4), atol=2e-4, rtol=0)


def test_residual_fit_lets_each_configuration_correct_its_own_residual():
    """After the fit, every fitted configuration's corrected weight s·B·M(C)·A is closer to its own residual
    than the shared correction s·B·A is, and the fitted loss fell."""
    space = QuantSpace.from_model(tiny_llama())
    configs = space.sample(np.random.default_rng(1), 6)
    torch.manual_seed(0)
    model = _residual_model(configs)
    losses = model.fit_cores_to_residuals(configs, steps=300, lr=3e-3)
    assert len(losses) == 301 and losses[-1] < 0.5 * losses[0]
    better = 0
    with torch.no_grad():
        cores = model.hypernet(torch.as_tensor(configs))
        for j, c in enumerate(configs):
            for i, layer in enumerate(model.layers):
                w = layer.weight
                r = w - fake_quantize(w, space.option(c[i]), family=space.family, dtype=w.dtype)
                shared = (r - layer.scaling * layer.lora_B @ layer.lora_A).norm()
                mine = (r - layer.scaling * layer.lora_B @ cores[j, i] @ layer.lora_A).norm()
                better += int(mine < shared)
    assert better >= 0.9 * configs.shape[0] * space.n_matrices


def _inputs_of(model: CoaModel, batches) -> list[torch.Tensor]:
    """Each matrix's inputs ``(T, in)`` on the unquantized base, padding left out: recorded directly."""
    seen: list[list[torch.Tensor]] = [[] for _ in model.layers]
    mask = []
    hooks = [layer.register_forward_pre_hook(lambda mod, args, i=i: seen[i].append(args[0].detach()))
             for i, layer in enumerate(model.layers)]
    with torch.no_grad(), model.unadapted():
        for b in batches:
            model.model(**b)
            mask.append(b["attention_mask"].reshape(-1).bool())
    for h in hooks:
        h.remove()
    keep = torch.cat(mask)
    return [torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])[keep] for xs in seen]


def test_input_statistics_are_the_products_of_the_real_tokens_inputs():
    space = QuantSpace.from_model(tiny_llama())
    c = space.sample(np.random.default_rng(0), 2)
    model = _residual_model(c)
    batches = [batch(0), batch(1)]  # batch row 0 has 3 padded positions each
    stats = model.input_statistics(iter(batches))
    xs = _inputs_of(model, batches)
    assert xs[0].shape[0] == 2 * (3 * 10 - 3)
    for (p, w), x, layer in zip(stats, xs, model.layers):
        torch.testing.assert_close(p, x.T @ (x @ layer.lora_A.detach().T))
        torch.testing.assert_close(w, (x @ layer.weight.T).square().sum())
    # The configuration and the adapters are back on after the unadapted passes.
    assert all(layer.adapter_on for layer in model.layers)


def test_input_weighted_targets_are_least_squares_on_the_inputs():
    """M* makes the corrected output error orthogonal to every core direction (the normal equations
    Bᵀ (R − s·B M* A) XᵀX Aᵀ = 0), and the grams give ‖X (s·B D A)ᵀ‖²/‖X Wᵀ‖² for any core error D."""
    space = QuantSpace.from_model(tiny_llama())
    configs = space.sample(np.random.default_rng(2), 3)
    model = _residual_model(configs[:1])
    batches = [batch(0), batch(1)]
    stats = model.input_statistics(iter(batches))
    xs = _inputs_of(model, batches)
    targets, gram_b, gram_a = model.residual_core_targets(configs, stats)
    g = torch.Generator().manual_seed(0)
    for i in (0, space.n_matrices - 1):
        layer, x = model.layers[i], xs[i].double()
        a, b, s = layer.lora_A.detach().double(), layer.lora_B.detach().double(), layer.scaling
        w = layer.weight.double()
        for j, c in enumerate(configs):
            r = w - fake_quantize(layer.weight, space.option(c[i]), family=space.family).double()
            e = r - s * b @ targets[j, i].double() @ a
            normal = b.T @ e @ x.T @ x @ a.T
            assert normal.abs().max() < 1e-5 * (b.T @ r @ x.T @ x @ a.T).abs().max()
        d = torch.randn(4, 4, generator=g, dtype=torch.float64)
        want = (x @ (s * b @ d @ a).T).square().sum() / (x @ w.T).square().sum()
        got = torch.trace(d.T @ gram_b[i].double() @ d @ gram_a[i].double())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0)


def test_inputs_that_span_every_direction_equally_give_the_weight_space_targets():
    """X = I (Σ = I): P = Aᵀ and ‖X Wᵀ‖² = ‖W‖², so the input-weighted targets and grams are the plain ones."""
    space = QuantSpace.from_model(tiny_llama())
    configs = space.sample(np.random.default_rng(3), 2)
    model = _residual_model(configs)
    plain = model.residual_core_targets(configs)
    identity = [(layer.lora_A.detach().T.clone(), layer.weight.float().square().sum()) for layer in model.layers]
    for got, want in zip(model.residual_core_targets(configs, identity), plain):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_input_weighted_fit_lowers_the_output_error():
    space = QuantSpace.from_model(tiny_llama())
    configs = space.sample(np.random.default_rng(1), 6)
    torch.manual_seed(0)
    model = _residual_model(configs)
    stats = model.input_statistics(iter([batch(0), batch(1)]))
    losses = model.fit_cores_to_residuals(configs, steps=200, lr=3e-3, inputs=stats)
    assert len(losses) == 201 and losses[-1] < 0.5 * losses[0]


def test_a_residual_of_rank_below_r_gives_finite_targets():
    """A matrix whose weight is exactly zero has no residual: B = A = 0 there, so BᵀB and AAᵀ are singular.
    Its target and error weight are 0 (nothing to correct); every other matrix's are as before."""
    space = QuantSpace.from_model(tiny_llama())
    configs = space.sample(np.random.default_rng(4), 3)
    model = _residual_model(configs)
    before = model.residual_core_targets(configs)
    with torch.no_grad():
        model.layers[0].weight.zero_()
    model.cache.clear()  # the base is frozen in real use: its quantized copies are cached by (matrix, option)
    model.init_lora_from_residual(configs)
    targets, gram_b, gram_a = model.residual_core_targets(configs)
    assert torch.isfinite(targets).all() and torch.isfinite(gram_b).all()
    assert (targets[:, 0] == 0).all() and (gram_b[0] == 0).all()
    torch.testing.assert_close(targets[:, 1:], before[0][:, 1:], rtol=1e-4, atol=1e-5)
    losses = model.fit_cores_to_residuals(configs, steps=5, lr=3e-3)
    assert all(np.isfinite(losses))


def test_residual_fit_settings_are_checked():
    from coalora.errors import ConfigError
    from coalora.pipeline.config import load_config

    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit: fits U_θ within the LoRA's directions"):
        load_config(None, ["hypernet.residual_fit=10"])
    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit: moves U_θ away from the identity"):
        load_config(None, ["hypernet.residual_fit=10", "lora.init=residual", "hypernet.warm_start=0.5"])
    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_configs: must be a whole number >= 0, got -1$"):
        HypernetConfig(residual_fit_configs=-1)
    assert load_config(None, ["hypernet.residual_fit=10", "lora.init=residual"]).hypernet.residual_fit == 10
    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_calibration: weighs the residual fit, which is "
                                          r"off; set hypernet\.residual_fit to its steps$"):
        load_config(None, ["hypernet.residual_fit_calibration=4"])
    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_calibration: must be a whole number >= 0"):
        HypernetConfig(residual_fit_calibration=1.5)
    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_radius: bounds the residual fit, which is off; "
                                          r"set hypernet\.residual_fit to its steps$"):
        load_config(None, ["hypernet.residual_fit_radius=1"])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_radius: must be >= 0 \(0: no bound\)"):
            HypernetConfig(residual_fit_radius=bad)
    cfg = load_config(None, ["hypernet.residual_fit=10", "lora.init=residual", "hypernet.residual_fit_radius=0.5"])
    assert cfg.hypernet.residual_fit_radius == 0.5
    with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_lr: sets the residual fit's learning rate, but "
                                          r"the fit is off; set hypernet\.residual_fit to its steps$"):
        load_config(None, ["hypernet.residual_fit_lr=0.001"])
    for bad in (0.0, -1e-3, float("nan"), float("inf"), True):
        with pytest.raises(ConfigError, match=r"^hypernet\.residual_fit_lr: must be positive, got "):
            HypernetConfig(residual_fit_lr=bad)
    assert HypernetConfig().residual_fit_lr == 3e-3
    cfg = load_config(None, ["hypernet.residual_fit=10", "lora.init=residual", "hypernet.residual_fit_lr=1e-3"])
    assert cfg.hypernet.residual_fit_lr == 1e-3


def test_within_radius_pulls_a_core_back_along_the_segment_to_the_identity():
    # r = 1: ‖I‖ = 1, so radius 1 lets the core go from 0 to 2: 5 -> 2, -3 -> 0, 1.5 stays.
    got = within_radius(torch.tensor([[[5.0]], [[-3.0]], [[1.5]]]), 1.0)
    torch.testing.assert_close(got, torch.tensor([[[2.0]], [[0.0]], [[1.5]]]))
    # r = 2: ‖I‖ = √2; M − I = [[3, 0], [0, 4]] has norm 5, radius 0.5 allows √2/2.
    m = torch.tensor([[4.0, 0.0], [0.0, 5.0]])
    want = torch.eye(2) + torch.tensor([[3.0, 0.0], [0.0, 4.0]]) * (0.5 * 2 ** 0.5 / 5)
    torch.testing.assert_close(within_radius(m, 0.5), want)
    torch.testing.assert_close(within_radius(torch.eye(2), 0.1), torch.eye(2))


def test_bounded_targets_never_correct_less_than_the_identity_and_the_fit_stays_in_the_ball():
    """The bounded target's weight error tr(Dᵀ Gb D Ga) (D its distance to M*) is at most the identity's, for
    every configuration and matrix; a fit to targets within radius 0.1 leaves every core near the ball."""
    space = QuantSpace.from_model(tiny_llama())
    configs = space.sample(np.random.default_rng(5), 6)
    torch.manual_seed(0)
    model = _residual_model(configs[:2])
    targets, gram_b, gram_a = model.residual_core_targets(configs)

    def error(cores: torch.Tensor) -> torch.Tensor:
        d = cores - targets
        return torch.einsum("knab,nae,knef,nfb->kn", d, gram_b, d, gram_a)

    bounded = within_radius(targets, 0.1)
    assert ((bounded - torch.eye(4)).flatten(2).norm(dim=-1) <= 0.1 * 2 + 1e-5).all()
    assert (targets - torch.eye(4)).flatten(2).norm(dim=-1).max() > 0.1 * 2  # the bound is active somewhere
    assert (error(bounded) <= error(torch.eye(4).expand_as(targets)) * (1 + 1e-5)).all()
    model.fit_cores_to_residuals(configs, steps=300, lr=3e-3, radius=0.1)
    with torch.no_grad():
        cores = model.hypernet(torch.as_tensor(configs))
    assert (cores - torch.eye(4)).flatten(2).norm(dim=-1).max() < 0.1 * 2 * 1.5
