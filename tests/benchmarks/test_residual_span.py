"""benchmarks/residual_span.py: the share of a configuration's quantization residual each correction leaves."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from coalora.core.space import QuantSpace
from coalora.model.lora import CoaModel, LoraSettings
from tests.coalora._tiny import tiny_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def span():
    spec = importlib.util.spec_from_file_location("residual_span", ROOT / "benchmarks" / "residual_span.py")
    mod = importlib.util.module_from_spec(spec)
    # `python benchmarks/residual_span.py` puts benchmarks/ on sys.path (for its `_bench`); so does this load.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return mod


def test_for_the_configuration_the_lora_starts_from_every_rank_r_correction_is_its_top_r(span):
    """Initialised from one configuration's residual, B·A is its top-r part: shared, the best core and its
    own top-r all leave exactly the residual's energy beyond rank r; 4r leaves less."""
    base = tiny_llama()
    space = QuantSpace.from_model(base)
    c = space.sample(np.random.default_rng(0), 1)
    model = CoaModel(base, space, LoraSettings(rank=4, alpha=8, init="residual"))
    model.init_lora_from_residual(c)
    got = span.residual_shares(model, c, rank=4)
    assert got["shared"][0] == pytest.approx(got["own top-r"][0], rel=1e-4)
    assert got["best core"][0] == pytest.approx(got["own top-r"][0], rel=1e-4)
    assert 0 <= got["own top-4r"][0] < got["own top-r"][0] < 1


def test_for_other_configurations_the_core_helps_but_cannot_reach_their_own_directions(span):
    base = tiny_llama()
    space = QuantSpace.from_model(base)
    configs = space.sample(np.random.default_rng(1), 4)
    model = CoaModel(base, space, LoraSettings(rank=4, alpha=8, init="residual"))
    model.init_lora_from_residual(configs[:2])
    got = span.residual_shares(model, configs, rank=4)
    # The best in-span core never does worse than the fixed core I, nor better than the own top-r.
    assert np.all(got["best core"] <= got["shared"] + 1e-9)
    assert np.all(got["own top-r"] <= got["best core"] + 1e-9)
    # An exact value: a zero core leaves the whole residual, so "shared" of a B·A = 0 model is 1.
    with torch.no_grad():
        for layer in model.layers:
            layer.lora_B.zero_()
            layer.lora_B[0, 0] = 1e-12  # B must keep a column for the QR of the span
    zero = span.residual_shares(model, configs[:1], rank=4)
    assert zero["shared"][0] == pytest.approx(1.0, abs=1e-6)


def test_quick_prints_the_table_as_json_and_appends_the_csv(tmp_path):
    """The script end to end on a random tiny Llama: one row per evaluated budget and unseen configuration,
    each share in [0, 1] and ordered as a correction's reach requires."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "residual_span.py"), "--quick", "--json", "--unseen", "2",
           "--bank", "4", "--csv", str(tmp_path / "span.csv")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout)["rows"]
    assert [r["set"] for r in rows] == ["seen"] * 4 + ["unseen"] * 2 and {r["rank"] for r in rows} == {4}
    for r in rows:
        assert 0 <= r["own_top_4r"] <= r["own_top_r"] <= r["best_core"] <= r["shared"] + 1e-9 <= 1 + 1e-9
        assert r["best_core_bank"] <= min(r["best_core"], r["shared_bank"]) + 1e-9 and r["reach_bank"] >= r["reach"]
    assert len((tmp_path / "span.csv").read_text().splitlines()) == 1 + 6


def test_a_bank_per_bit_width_reaches_the_next_directions_and_never_does_worse(span):
    base = tiny_llama()
    space = QuantSpace.from_model(base)
    c = space.sample(np.random.default_rng(0), 1)
    model = CoaModel(base, space, LoraSettings(rank=4, alpha=8, init="residual"))
    model.init_lora_from_residual(c)
    # Trained on one configuration, its bank entry is its residual's directions 5..16: with B·A, its top 16.
    got = span.residual_shares(model, c, rank=4, trainset=c, bank_rank=12)
    assert got["shared+bank"][0] == pytest.approx(got["own top-4r"][0], rel=1e-4)
    assert got["best core+bank"][0] == pytest.approx(got["own top-4r"][0], rel=1e-4)
    # Other configurations: the joint span holds B·A + bank and the old span, so its projection is the best.
    configs = space.sample(np.random.default_rng(1), 4)
    model.init_lora_from_residual(configs[:2])
    got = span.residual_shares(model, configs, rank=4, trainset=configs[:2], bank_rank=4)
    assert np.all(got["best core+bank"] <= got["best core"] + 1e-9)
    assert np.all(got["best core+bank"] <= got["shared+bank"] + 1e-9)
    with pytest.raises(ValueError, match="training set"):
        span.residual_shares(model, configs, rank=4, bank_rank=4)
