"""Training loop, evaluation and checkpoints on tiny models (the real-model test is in test_experiment)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from coalora.core.space import QuantSpace
from coalora.errors import CheckpointError
from coalora.model.hypernet import HypernetConfig
from coalora.model.lora import CoaModel, LoraSettings
from coalora.pipeline.checkpoint import load_optimizer, load_trainable, read_meta, save_checkpoint
from coalora.pipeline.config import TrainSection
from coalora.pipeline.evaluate import evaluate
from coalora.pipeline.train import make_optimizer, make_scheduler, train
from tests.coalora._tiny import fixed_batches, separable_batches, tiny_bert, tiny_llama


def coa_model(seed: int = 0, hyper: bool = True) -> CoaModel:
    base = tiny_bert(seed)
    return CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4, alpha=8),
                    HypernetConfig() if hyper else None)


def test_coa_training_lowers_loss_and_is_seeded():
    cfg = TrainSection(steps=40, lr=2e-3, warmup_steps=0, schedule="constant", log_every=5)
    results, states = [], []
    for _ in range(2):
        torch.manual_seed(0)
        model = coa_model()
        trainset = model.space.sample_near(3.0, np.random.default_rng(0), 4)
        val = fixed_batches(4)
        before = evaluate(model, trainset[:1], val, "classification")[0]["loss"]
        res = train(model, separable_batches(), trainset, cfg, progress=False)
        after = evaluate(model, trainset[:1], val, "classification")[0]
        results.append((before, after, res))
        states.append(model.trainable_state())
    before, after, res = results[0]
    assert res.steps == 40 and len(res.losses) == 40
    assert after["loss"] < before - 0.05
    assert after["accuracy"] > 0.6
    # Same seed, same everything: bitwise-identical training.
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0)


def test_each_step_visits_k_configurations():
    model = coa_model()
    trainset = model.space.sample(np.random.default_rng(0), 5)
    seen = []
    orig = model.set_config

    def spy(idx):
        seen.append(model.space.config_id(idx))
        orig(idx)

    model.set_config = spy  # type: ignore[method-assign]
    train(model, separable_batches(), trainset, TrainSection(steps=3, configs_per_step=2), progress=False)
    assert len(seen) == 6
    assert all(seen[i] != seen[i + 1] for i in range(0, 6, 2))  # k distinct configs per step


def test_fp_lora_trains_without_configurations():
    model = coa_model(hyper=False)
    res = train(model, separable_batches(), None, TrainSection(steps=3), progress=False)
    assert res.steps == 3 and model.config is None


def test_causal_lm_training_step_and_perplexity():
    base = tiny_llama()
    model = CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4), HypernetConfig())
    g = torch.Generator().manual_seed(0)

    def lm_batches():
        while True:
            ids = torch.randint(3, 100, (4, 16), generator=g)
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}

    trainset = model.space.sample(np.random.default_rng(0), 2)
    res = train(model, lm_batches(), trainset, TrainSection(steps=2), progress=False)
    assert res.steps == 2 and np.isfinite(res.losses).all()
    it = lm_batches()
    rows = evaluate(model, trainset, [next(it), next(it)], "causal-lm")
    assert len(rows) == 2
    for r in rows:
        assert r["perplexity"] == pytest.approx(np.exp(r["loss"]))
        assert r["examples"] == 8
        # 2 batches × 4 sequences × 15 predicted positions; a random 100-token model is near-uniform.
        assert 30 < r["perplexity"] < 300


def test_evaluate_rows_have_bits_and_ids():
    model = coa_model()
    cfgs = model.space.sample(np.random.default_rng(1), 3)
    rows = evaluate(model, cfgs, fixed_batches(2), "classification")
    assert [r["config_id"] for r in rows] == [model.space.config_id(c) for c in cfgs]
    assert [r["avg_bits"] for r in rows] == pytest.approx(list(model.space.average_bits(cfgs)))
    assert all(r["examples"] == 32 for r in rows)


def test_scheduler_shapes():
    model = coa_model()
    opt = make_optimizer(model, TrainSection(lr=1.0))
    cfg = TrainSection(lr=1.0, warmup_steps=2, schedule="linear")
    sched = make_scheduler(opt, cfg, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 1/3, 2/3; then linear decay over the 4 remaining steps: 1, 0.75, 0.5, 0.25
    assert lrs == pytest.approx([1 / 3, 2 / 3, 1.0, 0.75, 0.5, 0.25])
    # Resuming at step 3 continues the same curve.
    opt2 = make_optimizer(model, TrainSection(lr=1.0))
    sched2 = make_scheduler(opt2, cfg, total_steps=6, start_step=3)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.75)
    del sched2


def test_checkpoint_round_trip_with_optimizer(tmp_path):
    model = coa_model()
    trainset = model.space.sample(np.random.default_rng(0), 3)
    cfg = TrainSection(steps=2)
    opt = make_optimizer(model, cfg)
    train(model, separable_batches(), trainset, cfg, optimizer=opt, progress=False)
    path = save_checkpoint(tmp_path / "ck", model, {"method": "coa", "step": 2}, optimizer=opt)
    meta = read_meta(path)
    assert meta["method"] == "coa" and meta["lora"]["rank"] == 4 and meta["hypernet"]["hidden"] == 128
    assert meta["space_fingerprint"] == model.space.fingerprint()
    assert not list(tmp_path.glob(".ck.tmp-*"))
    other = coa_model(seed=3)
    other.load_trainable_state(load_trainable(path))
    for k, v in model.trainable_state().items():
        torch.testing.assert_close(other.trainable_state()[k], v, rtol=0, atol=0)
    opt2 = make_optimizer(other, cfg)
    assert load_optimizer(path, other, opt2)
    p_old = next(p for p in model.parameters() if p.requires_grad)
    p_new = next(p for p in other.parameters() if p.requires_grad)
    torch.testing.assert_close(opt2.state[p_new]["exp_avg"], opt.state[p_old]["exp_avg"])
    # Saving again replaces the old checkpoint in one piece.
    save_checkpoint(path, model, {"method": "coa", "step": 3})
    assert read_meta(path)["step"] == 3
    assert not (tmp_path / "ck.old").exists()


def test_not_a_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_meta(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is not a coalora checkpoint"):
        read_meta(tmp_path / "empty")
    model = coa_model()
    path = save_checkpoint(tmp_path / "ck", model, {"method": "coa"})
    (path / "meta.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_meta(path)
    (path / "meta.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        read_meta(path)


def test_bad_trainset_shape():
    model = coa_model()
    with pytest.raises(ValueError, match="non-empty"):
        train(model, separable_batches(), np.zeros((0, 12, 5), dtype=int), TrainSection(steps=1), progress=False)


def test_hypernet_gets_its_own_learning_rate():
    model = coa_model()
    cfg = TrainSection(lr=0.01, hypernet_lr_scale=5.0, warmup_steps=0, schedule="linear")
    opt = make_optimizer(model, cfg)
    lora_group, hyper_group = opt.param_groups
    hyper_ids = {id(p) for p in model.hypernet.parameters()}
    assert {id(p) for p in hyper_group["params"]} == hyper_ids
    assert not hyper_ids & {id(p) for p in lora_group["params"]}
    assert len(lora_group["params"]) + len(hyper_group["params"]) == len(
        [p for p in model.parameters() if p.requires_grad])
    assert (lora_group["lr"], hyper_group["lr"]) == pytest.approx((0.01, 0.05))
    sched = make_scheduler(opt, cfg, total_steps=4)
    opt.step()
    sched.step()  # the schedule scales both groups alike: factor 0.75 after one of four steps
    assert (lora_group["lr"], hyper_group["lr"]) == pytest.approx((0.0075, 0.0375))


def test_warm_start_trains_the_shared_lora_exactly_then_switches_on_at_the_identity():
    """``hypernet.warm_start``: until the switch, coa is bit for bit the shared baseline (U_θ frozen at an
    exact-identity core); at the switch every core is exactly I; after it U_θ trains."""
    cfg = TrainSection(steps=4, lr=2e-3, warmup_steps=0, schedule="constant")
    torch.manual_seed(0)
    shared = coa_model(hyper=False)
    torch.manual_seed(0)
    base = tiny_bert(0)
    warm = CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4, alpha=8), HypernetConfig(warm_start=0.5))
    assert warm.warm_switch_step(8) == 4 and shared.warm_switch_step(8) == 0
    trainset = warm.space.sample_near(3.0, np.random.default_rng(0), 4)
    hyper_before = {k: v.clone() for k, v in warm.hypernet.state_dict().items()}
    eye = torch.eye(4).expand(warm.space.n_matrices, 4, 4)

    opt_w, opt_s = make_optimizer(warm, cfg), make_optimizer(shared, cfg)
    train(warm, separable_batches(), trainset, cfg, total_steps=8, optimizer=opt_w, progress=False)
    train(shared, separable_batches(), trainset, cfg, total_steps=8, optimizer=opt_s, progress=False)
    lora_w = {k: v for k, v in warm.trainable_state().items() if not k.startswith("hypernet.")}
    assert lora_w.keys() == shared.trainable_state().keys()
    for k, v in shared.trainable_state().items():
        torch.testing.assert_close(lora_w[k], v, rtol=0, atol=0)  # the warm phase is the shared baseline
    for k, v in warm.hypernet.state_dict().items():
        torch.testing.assert_close(v, hyper_before[k], rtol=0, atol=0)  # U_θ untouched...
    for c in trainset:
        warm.set_config(c)
        assert torch.equal(warm.cores(), eye)  # ...and every core exactly the identity at the switch

    train(warm, separable_batches(1), trainset, cfg, start_step=4, total_steps=8, optimizer=opt_w, progress=False)
    assert not torch.equal(warm.hypernet.fc2.weight, hyper_before["fc2.weight"])  # U_θ trains after it
    warm.set_config(trainset[0])
    assert not torch.equal(warm.cores(), eye[:1].expand_as(warm.cores()))
    assert warm.hypernet_frozen is False


def test_warm_start_must_be_a_share_of_the_schedule():
    from coalora.errors import ConfigError

    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match=r"^hypernet\.warm_start: must be a share of the schedule in \[0, 1\]"):
            HypernetConfig(warm_start=bad)
    assert HypernetConfig(warm_start=1.0).warm_start == 1.0


# ---------------------------------------------------------------------- train.distill, train.random_configs
def lm_batches(seed: int = 0, batch: int = 4, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(3, 100, (batch, length), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 8:] = 0
        yield {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def test_distill_loss_is_the_kl_from_the_teacher_over_kept_positions():
    from coalora.pipeline.train import distill_loss

    teacher = torch.tensor([[[0.0, 0.0], [5.0, 1.0]]])  # (B=1, T=2, V=2)
    student = torch.tensor([[[float(np.log(3.0)), 0.0], [0.0, 9.0]]])
    # Position 0: KL([.5, .5] ‖ [.75, .25]) = .5·ln(4/3); position 1 is masked out.
    got = distill_loss(student, teacher, torch.tensor([[1, 0]]))
    assert float(got) == pytest.approx(0.5 * np.log(4 / 3), abs=1e-6)
    assert float(distill_loss(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)


def test_unadapted_runs_the_original_base_and_restores_the_configuration():
    base = tiny_llama()
    x = next(lm_batches())
    with torch.no_grad():
        want = base(**x).logits
    model = CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4, alpha=8), HypernetConfig())
    with torch.no_grad():
        for layer in model.layers:
            layer.lora_B.normal_()
    c = model.space.sample(np.random.default_rng(0), 1)[0]
    model.set_config(c)
    with torch.no_grad():
        adapted = model(**x).logits
    torch.testing.assert_close(model.base_output(**x).logits, want, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(**x).logits, adapted, rtol=0, atol=0)  # config and LoRA are back


def test_distill_step_loss_mixes_the_task_loss_and_the_kl_to_the_base():
    """One step's recorded loss is (1 − λ)·CE + λ·KL(base ‖ adapted), averaged over the step's configurations."""
    from coalora.pipeline.train import distill_loss

    base = tiny_llama()
    model = CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4, alpha=8), None)
    trainset = model.space.sample_near(3.0, np.random.default_rng(0), 2)
    x = next(lm_batches())
    teacher = model.base_output(**x).logits
    want = []
    with torch.no_grad():
        for c in trainset:
            model.set_config(c)
            out = model(**x)
            want.append(0.7 * float(out.loss) + 0.3 * float(distill_loss(out.logits, teacher, x["attention_mask"])))
    cfg = TrainSection(steps=1, lr=1e-3, warmup_steps=0, configs_per_step=2, distill=0.3)
    res = train(model, lm_batches(), trainset, cfg, progress=False)
    assert res.losses[0] == pytest.approx(float(np.mean(want)), rel=1e-5)


def test_a_sampler_adds_its_configurations_to_every_step():
    model = coa_model(hyper=False)
    trainset = model.space.sample_near(3.0, np.random.default_rng(0), 1)
    extra = model.space.sample_near(4.0, np.random.default_rng(1), 2)
    x = next(separable_batches())
    with torch.no_grad():
        want = []
        for c in (trainset[0], *extra):
            model.set_config(c)
            want.append(float(model(**x).loss))
    draws = []

    def sampler(rng):
        draws.append(rng.random())  # drawn from the loop's own generator
        return extra

    cfg = TrainSection(steps=2, lr=1e-3, warmup_steps=0, configs_per_step=1)
    res = train(model, separable_batches(), trainset, cfg, progress=False, sampler=sampler)
    assert len(draws) == 2 and draws[0] != draws[1]
    assert res.losses[0] == pytest.approx(float(np.mean(want)), rel=1e-5)


def test_training_sampler_draws_across_the_deployed_range_and_never_a_held_out_configuration():
    from coalora.pipeline.config import ExperimentConfig
    from coalora.pipeline.experiment import random_configs, training_sampler

    base = tiny_llama()
    space = QuantSpace.from_model(base)
    cfg = ExperimentConfig()
    cfg.eval.random_bits, cfg.eval.random_min_bits, cfg.eval.random = [3.1, 3.6], 3, 2
    assert training_sampler(cfg, space) is None  # train.random_configs = 0: no sampler
    cfg.train.random_configs = 3
    draw = training_sampler(cfg, space)
    got = np.concatenate([draw(np.random.default_rng(s)) for s in range(20)])
    assert got.shape == (60, space.n_matrices, 5)
    bits = space.average_bits(got)
    assert bits.min() >= 3.1 - 0.05 and bits.max() <= 3.6 + 0.05 and bits.max() - bits.min() > 0.2
    assert np.asarray(space.options["bits"])[got[..., 0]].min() >= 3
    held_out = {space.config_id(c) for c in random_configs(cfg, space)}
    assert held_out.isdisjoint(space.config_id(c) for c in got)
    np.testing.assert_array_equal(draw(np.random.default_rng(5)), draw(np.random.default_rng(5)))


def test_new_training_settings_are_checked():
    from coalora.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^train\.random_configs: must be >= 0$"):
        TrainSection(random_configs=-1).validate()
    with pytest.raises(ConfigError, match=r"^train\.distill: must be a weight in \[0, 1\]$"):
        TrainSection(distill=1.5).validate()


def test_training_sampler_skips_held_out_configurations_where_collisions_are_likely():
    """One matrix, a narrow range: plain draws hit the held-out configurations often; the sampler's never do."""
    from coalora.core.space import space_from_shapes
    from coalora.pipeline.config import ExperimentConfig
    from coalora.pipeline.experiment import random_configs, training_sampler

    space = space_from_shapes(1, {"q": (64, 64)})
    cfg = ExperimentConfig()
    cfg.eval.random_bits, cfg.eval.random_min_bits, cfg.eval.random = [4.1, 4.2], None, 3
    cfg.train.random_configs = 50
    held_out = {space.config_id(c) for c in random_configs(cfg, space)}
    rng = np.random.default_rng(0)
    plain = [space.config_id(space.sample_near(float(rng.uniform(4.1, 4.2)), rng, 1)[0]) for _ in range(50)]
    assert held_out & set(plain)  # the draws do collide here ...
    got = training_sampler(cfg, space)(np.random.default_rng(0))
    assert held_out.isdisjoint(space.config_id(c) for c in got)  # ... and the sampler leaves them out
