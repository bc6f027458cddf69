"""Mixed precision (docs/architecture.md §5): bf16/fp16 frozen base, float32 trainables and optimizer state, autocast
forward, per-dtype gradient all-reduce (two real gloo processes), fp16 gradient scaling, checkpoints.
"""

from __future__ import annotations

import json
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from coalora.core.space import QuantSpace
from coalora.model.hypernet import HypernetConfig
from coalora.model.lora import CoaLinear, CoaModel, LoraSettings
from coalora.pipeline.checkpoint import load_optimizer, load_trainable, read_meta, save_checkpoint
from coalora.pipeline.config import TrainSection
from coalora.pipeline.evaluate import evaluate
from coalora.pipeline.train import make_grad_scaler, make_optimizer, sync_gradients, train
from tests.coalora._tiny import fixed_batches, separable_batches, tiny_bert, tiny_llama

BF16, FP16 = torch.bfloat16, torch.float16


def coa(kind: str = "bert", dtype: torch.dtype = BF16, seed: int = 0, init_seed: int = 0) -> CoaModel:
    """A tiny CoA model whose frozen base is in ``dtype``; ``init_seed`` seeds LoRA and U_θ."""
    base = (tiny_bert(seed) if kind == "bert" else tiny_llama(seed)).to(dtype)
    torch.manual_seed(init_seed)
    return CoaModel(base, QuantSpace.from_model(base), LoraSettings(rank=4, alpha=8), HypernetConfig())


def lm_batches(n: int = 2, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` fixed causal-LM batches (4 × 16 tokens): training cycles them, so the loss can fall."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, 100, (4, 16), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def cycle(batches: list[dict[str, torch.Tensor]]) -> Iterator[dict[str, torch.Tensor]]:
    while True:
        yield from batches


def data(kind: str) -> tuple[Iterator[dict[str, torch.Tensor]], list[dict[str, torch.Tensor]], str]:
    """(training batches, held-out batches, task) for a tiny model kind."""
    if kind == "bert":
        return separable_batches(), fixed_batches(4), "classification"
    lm = lm_batches()
    return cycle(lm), lm, "causal-lm"


def _floating(t: torch.Tensor) -> bool:
    return t.is_floating_point()


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_bf16_base_float32_trainables_and_optimizer_state(kind):
    model = coa(kind)
    assert model.compute_dtype == BF16
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {p.dtype for p in trainable.values()} == {torch.float32}
    if kind == "bert":  # the task head was loaded in bf16 with the base and is trained in float32
        assert trainable["model.classifier.weight"].dtype == torch.float32
    frozen = [t for n, t in [*model.named_parameters(), *model.named_buffers()]
              if _floating(t) and n not in trainable and not n.startswith("hypernet.")]
    assert frozen and {t.dtype for t in frozen} == {BF16}
    cfg = model.space.sample(np.random.default_rng(0), 1)[0]
    model.set_config(cfg)
    assert {layer.qweight.dtype for layer in model.layers} == {BF16}  # the cache keeps the base's dtype
    assert model.cores().dtype == torch.float32
    train_it, held, task = data(kind)
    opt = make_optimizer(model, TrainSection(lr=1e-3))
    train(model, train_it, cfg[None], TrainSection(steps=2, lr=1e-3), optimizer=opt, progress=False)
    moments = [v for st in opt.state.values() for k, v in st.items() if k != "step"]
    assert len(moments) == 2 * len(trainable)
    assert {m.dtype for m in moments} == {torch.float32}
    assert {p.grad.dtype for p in trainable.values() if p.grad is not None} == {torch.float32}
    batch = {k: v for k, v in held[0].items() if k != "labels"}
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.dtype == BF16 and torch.isfinite(logits).all()


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_bf16_training_lowers_the_loss(kind):
    model = coa(kind)
    trainset = model.space.sample_near(3.0, np.random.default_rng(0), 4)
    train_it, held, task = data(kind)
    before = evaluate(model, trainset[:1], held, task)[0]["loss"]
    cfg = TrainSection(steps=20, lr=5e-3, warmup_steps=0, schedule="constant")
    res = train(model, train_it, trainset, cfg, progress=False)
    after = evaluate(model, trainset[:1], held, task)[0]["loss"]
    assert np.isfinite(res.losses).all() and res.skipped_steps == 0
    assert after < before - 0.05, (before, after)


def test_bf16_evaluation_matches_float32_weights_within_bf16_tolerance():
    """The same trained weights on a float32 and on a bf16 copy of the base: the same metrics, to bf16
    rounding. The float32 checkpoint loads into the bf16-base model unchanged."""
    fp32 = coa(dtype=torch.float32)
    trainset = fp32.space.sample_near(3.0, np.random.default_rng(0), 2)
    train(fp32, separable_batches(), trainset,
          TrainSection(steps=15, lr=5e-3, warmup_steps=0, schedule="constant"), progress=False)
    bf16 = coa(dtype=BF16, init_seed=7)
    bf16.load_trainable_state(fp32.trainable_state())
    for n, t in bf16.trainable_state().items():
        torch.testing.assert_close(t, fp32.trainable_state()[n], rtol=0, atol=0)
    held = fixed_batches(4)
    want = evaluate(fp32, trainset, held, "classification")
    got = evaluate(bf16, trainset, held, "classification")
    for w, g in zip(want, got):
        assert g["loss"] == pytest.approx(w["loss"], abs=0.005)
        assert abs(g["accuracy"] - w["accuracy"]) <= 2 / 64  # at most two borderline examples flip


def test_coalinear_outside_autocast_computes_in_the_activation_dtype():
    """No autocast: bf16 activations through a bf16 base and float32 LoRA; gradients land in float32."""
    torch.manual_seed(0)
    w = torch.randn(6, 8)
    ref = CoaLinear(w, None, LoraSettings(rank=2, alpha=4))
    low = CoaLinear(w.to(BF16), None, LoraSettings(rank=2, alpha=4))
    with torch.no_grad():
        ref.lora_B.normal_()
        low.lora_A.copy_(ref.lora_A)
        low.lora_B.copy_(ref.lora_B)
    core = torch.eye(2) + 0.1 * torch.randn(2, 2)
    ref.core, low.core = core, core.clone().requires_grad_(True)
    x = torch.randn(3, 8)
    y = low(x.to(BF16))
    assert y.dtype == BF16 and low.lora_A.dtype == torch.float32
    y.float().sum().backward()
    assert low.lora_A.grad.dtype == low.lora_B.grad.dtype == low.core.grad.dtype == torch.float32
    torch.testing.assert_close(y.float(), ref(x).detach(), atol=0.05, rtol=0.02)


def test_fp16_scaler_trains_and_skips_a_step_with_an_inf_gradient():
    model = coa(dtype=FP16)
    scaler = make_grad_scaler(model)
    assert scaler is not None and scaler.is_enabled()
    assert make_grad_scaler(coa(dtype=BF16)) is None and make_grad_scaler(coa(dtype=torch.float32)) is None
    trainset = model.space.sample_near(3.0, np.random.default_rng(0), 4)
    held = fixed_batches(4)
    before = evaluate(model, trainset[:1], held, "classification")[0]["loss"]
    head = model.model.classifier.weight
    calls = []

    def poison(grad: torch.Tensor) -> torch.Tensor:
        calls.append(1)  # one backward per step (configs_per_step=1): the 4th call is step 4
        return torch.full_like(grad, float("inf")) if len(calls) == 4 else grad

    head.register_hook(poison)
    snapshots = []
    scales = []

    def on_step(step: int, loss: float) -> None:
        snapshots.append({k: v.clone() for k, v in model.trainable_state().items()})
        scales.append(scaler.get_scale())

    cfg = TrainSection(steps=20, lr=5e-3, warmup_steps=0, schedule="constant", configs_per_step=1)
    res = train(model, separable_batches(), trainset, cfg, progress=False, on_step=on_step, scaler=scaler)
    after = evaluate(model, trainset[:1], held, "classification")[0]["loss"]
    assert res.skipped_steps == 1
    assert scales[3] == scales[2] / 2 == 2.0**15  # backed off once from the initial 2^16, never grown
    for k in snapshots[2]:  # step 4 changed nothing ...
        torch.testing.assert_close(snapshots[3][k], snapshots[2][k], rtol=0, atol=0)
    changed = [k for k in snapshots[3] if not torch.equal(snapshots[4][k], snapshots[3][k])]
    assert "model.classifier.weight" in changed  # ... and step 5 trains again
    assert all(torch.isfinite(v).all() for v in snapshots[-1].values())
    assert after < before - 0.05, (before, after)


def test_bf16_checkpoint_round_trip_reproduces_logits(tmp_path):
    model = coa()
    trainset = model.space.sample(np.random.default_rng(0), 3)
    cfg = TrainSection(steps=3, lr=5e-3)
    opt = make_optimizer(model, cfg)
    train(model, separable_batches(), trainset, cfg, optimizer=opt, progress=False)
    path = save_checkpoint(tmp_path / "ck", model, {"method": "coa", "step": 3}, optimizer=opt)
    assert read_meta(path)["base_dtype"] == "bfloat16"
    for f in ("trainable.safetensors", "optimizer.safetensors"):
        assert {t.dtype for t in load_file(str(path / f)).values()} == {torch.float32}, f
    assert "grad_scaler" not in json.loads((path / "optimizer.json").read_text())
    # A fresh bf16-base model (same frozen base, other LoRA/U_θ init) loads it and gives the same logits.
    other = coa(init_seed=5)
    assert not torch.equal(other.layers[0].lora_A, model.layers[0].lora_A)
    other.load_trainable_state(load_trainable(path))
    opt2 = make_optimizer(other, cfg)
    assert load_optimizer(path, other, opt2)
    for p_old, p_new in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"]):
        for key in ("exp_avg", "exp_avg_sq"):
            assert opt2.state[p_new][key].dtype == torch.float32
            torch.testing.assert_close(opt2.state[p_new][key], opt.state[p_old][key], rtol=0, atol=0)
    batch = {k: v for k, v in fixed_batches(1)[0].items() if k != "labels"}
    for c in trainset:
        model.set_config(c)
        other.set_config(c)
        with torch.no_grad():
            torch.testing.assert_close(other(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_fp16_checkpoint_keeps_the_gradient_scale(tmp_path):
    model = coa(dtype=FP16)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = make_optimizer(model, TrainSection())
    train(model, separable_batches(), model.space.sample(np.random.default_rng(0), 2), TrainSection(steps=1),
          optimizer=opt, scaler=scaler, progress=False)
    path = save_checkpoint(tmp_path / "ck", model, {"method": "coa"}, optimizer=opt, scaler=scaler)
    resumed = make_grad_scaler(model)
    assert resumed.get_scale() == 2.0**16
    assert load_optimizer(path, model, make_optimizer(model, TrainSection()), scaler=resumed)
    assert resumed.get_scale() == scaler.get_scale() in (1024.0, 512.0)


# ---------------------------------------------------------------------------- two gloo processes
def _two_rank_worker(rank: int, world: int, tmp: str) -> None:
    """One data-parallel rank: a hand-made gradient sync, then a short bf16 training run."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        a = torch.nn.Parameter(torch.zeros(3))
        b = torch.nn.Parameter(torch.zeros(2, 2, dtype=BF16))
        c = torch.nn.Parameter(torch.zeros(2))
        a.grad = torch.full((3,), rank + 1.0)
        b.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=BF16) * (rank + 1)
        if rank == 1:  # rank 0 has no gradient for c: it contributes zeros
            c.grad = torch.full((2,), 4.0)
        sync_gradients([a, b, c])
        grads = {"a": a.grad, "b": b.grad, "c": c.grad}
        # Each rank trains on its own batches and configuration stream; synced gradients keep the
        # ranks' weights identical.
        model = coa(dtype=BF16)
        trainset = model.space.sample(np.random.default_rng(0), 3)
        res = train(model, separable_batches(seed=rank), trainset,
                    TrainSection(steps=3, lr=1e-2, warmup_steps=0), rank=rank, progress=False)
        torch.save({"grads": grads, "state": model.trainable_state(), "losses": res.losses},
                   f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_gradient_all_reduce_per_dtype_with_two_gloo_processes(tmp_path):
    mp.spawn(_two_rank_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    out = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for o in out:
        g = o["grads"]
        assert g["a"].dtype == torch.float32 and g["a"].tolist() == [1.5, 1.5, 1.5]
        assert g["b"].dtype == BF16 and g["b"].float().tolist() == [[1.5, 3.0], [4.5, 6.0]]
        assert g["c"].tolist() == [2.0, 2.0]
    assert out[0]["losses"] != out[1]["losses"]  # the ranks did see different data ...
    start = coa(dtype=BF16).trainable_state()
    for k, v in out[0]["state"].items():  # ... yet hold the same, trained, float32 weights
        assert v.dtype == torch.float32
        torch.testing.assert_close(out[1]["state"][k], v, rtol=0, atol=0)
    assert not torch.equal(out[0]["state"]["model.classifier.weight"], start["model.classifier.weight"])


def test_sync_gradients_is_a_no_op_without_a_process_group():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.ones(2)
    sync_gradients([p])
    assert p.grad.tolist() == [1.0, 1.0]



def test_a_bf16_base_reads_its_own_error_table_not_its_fp32_copys(tmp_path, monkeypatch):
    """The error-table cache is keyed by the weights: the same model name loaded in fp32 and in bf16 keeps
    two tables, each that of its own weights. (Keyed by the name alone, a bf16 run read the table an fp32
    run of the same model had cached: its U_θ damage inputs, and so its scores, depended on which run
    wrote the cache first; tests/orchestration/test_concurrent.py caught it.)"""
    from pathlib import Path

    from coalora.allocation.error_tables import error_table
    from coalora.allocation.sensitivity import target_weights
    from coalora.pipeline import experiment
    from coalora.pipeline.config import load_config

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    smoke = Path(__file__).resolve().parents[3] / "configs" / "smoke.yaml"
    cfgs = {dtype: load_config(smoke, [f"model.dtype={dtype}"]) for dtype in ("float32", "bfloat16")}
    models = {dtype: experiment.load_base(cfg).model for dtype, cfg in cfgs.items()}
    space = experiment.build_space(cfgs["float32"], models["float32"])
    tables = {d: experiment.error_table_for(cfgs[d], models[d], space, progress=False) for d in cfgs}
    for d, model in models.items():
        np.testing.assert_array_equal(tables[d], error_table(target_weights(model, space), space, progress=False))
    assert not np.array_equal(tables["float32"], tables["bfloat16"])
    assert len(list((tmp_path / "errors").glob("*.npy"))) == 2
    assert all(experiment.error_table_path(cfgs[d], models[d], space).is_file() for d in cfgs)

    def no_compute(*args, **kwargs):
        raise AssertionError("a cached table was computed again")

    monkeypatch.setattr(experiment, "error_table", no_compute)
    for d in cfgs:  # each reads its own file back
        np.testing.assert_array_equal(experiment.error_table_for(cfgs[d], models[d], space, progress=False), tables[d])
