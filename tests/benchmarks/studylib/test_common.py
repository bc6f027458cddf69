"""benchmarks/studylib/common.py: the accuracy hypervolume, aggregation over seeds, per-config's
configurations, which configurations a training set held, and a search run's summary row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studylib import common

ROOT = Path(__file__).resolve().parents[3]


def test_accuracy_hypervolume_exact():
    # Error 0 at the lowest bits is the ideal corner (0, 0): the whole box up to the reference (1.1, 1.1).
    assert common.accuracy_hypervolume(np.array([1.0]), np.array([2.0]), (2.0, 4.0)) == pytest.approx(1.21)
    # Error 0.25 of 0.5 and bits 3 of [2, 4] normalise to (0.5, 0.5): 0.6 × 0.6.
    assert common.accuracy_hypervolume(np.array([0.75]), np.array([3.0]), (2.0, 4.0)) == pytest.approx(0.36)
    # A dominated point adds nothing.
    both = common.accuracy_hypervolume(np.array([0.75, 0.7]), np.array([3.0, 3.5]), (2.0, 4.0))
    assert both == pytest.approx(0.36)

def test_aggregate_mean_and_spread():
    rows = [{"method": "a", "x": 1.0}, {"method": "a", "x": 3.0}, {"method": "b", "x": 5.0}]
    out = {r["method"]: r for r in common.aggregate(rows, "method", ["x"])}
    assert out["a"]["seeds"] == 2 and out["a"]["x"] == pytest.approx(2.0)
    assert out["b"]["seeds"] == 1 and out["b"]["x"] == pytest.approx(5.0)
    assert out["b"]["x_std"] == 0.0
    assert out["a"]["x_std"] == pytest.approx(1.0)  # population std: half the difference of two seeds

def test_per_config_configs_in_budget_order(tmp_path):
    # The configurations coa and shared are scored on: exactly those per-config trained for, in order.
    out = tmp_path / "per-config"
    cfgs = {"b3": {"m": {"bits": 3}}, "b4": {"m": {"bits": 4}}}
    for name, c in cfgs.items():
        (out / name).mkdir(parents=True)
        (out / name / "meta.json").write_text(json.dumps({"trainset": [c], "budget": 0}))
    (out / "per_config.json").write_text(json.dumps({"checkpoints": ["b4", "b3"]}))
    path = common.per_config_configs(out)
    assert json.loads(path.read_text()) == [cfgs["b4"], cfgs["b3"]]

def test_evaluated_configurations_in_a_training_set_are_found(tmp_path):
    a, b, c = {"m": {"bits": 3}}, {"m": {"bits": 4}}, {"m": {"bits": 8}}
    (tmp_path / "seen.json").write_text(json.dumps([a, c]))
    (tmp_path / "unseen.json").write_text(json.dumps([b]))
    outs = {}
    for name, trainset in (("shared", [{"m": {"bits": 2}}]), ("per-config", [a]), ("per-config-residual", [a]),
                           ("coa", [c, {"m": {"bits": 4}}])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text(json.dumps({"trainset": trainset}))
        outs[name] = tmp_path / name
    evaluated = [tmp_path / "seen.json", tmp_path / "unseen.json"]
    assert common.trained_on(outs, evaluated) == {"coa": [1, 2]}  # c (seen, 2nd) and b (unseen, 1st)
    del outs["coa"]
    assert common.trained_on(outs, evaluated) == {}  # per-config variants may train on theirs

def test_an_orchestrated_run_trained_on_the_union_of_its_rounds(tmp_path):
    # A run's rounds each record the set they trained on; the search changes it between rounds.
    a, b, c = {"m": {"bits": 3}}, {"m": {"bits": 4}}, {"m": {"bits": 8}}
    run = tmp_path / "coa-s0"
    for k, trainset in enumerate(([a], [b, {"m": {"bits": 6}}])):
        (run / "checkpoints" / f"round_{k}").mkdir(parents=True)
        (run / "checkpoints" / f"round_{k}" / "meta.json").write_text(json.dumps({"trainset": trainset}))
    (tmp_path / "eval.json").write_text(json.dumps([c, b, a]))
    assert common.trained_on({"coa": run}, [tmp_path / "eval.json"]) == {"coa": [1, 2]}
    with pytest.raises(SystemExit, match="neither"):
        common.training_configs(tmp_path / "nothing")

def test_a_search_run_row_counts_what_the_search_did(tmp_path):
    from orchestration.store import RunStore

    def archive(k, cid, status="ok"):
        return {"round": k, "config_id": cid, "role": "train", "knobs": [0] * 5, "avg_bits": 3.0, "loss": 4.0,
                "accuracy": None, "perplexity": 60.0, "status": status, "error": None, "seconds": 1.0, "actor": "e"}

    def rnd(k, hv, size):
        return {"round": k, "hypervolume": hv, "hv_train": hv, "set_size": size, "evaluated": 2, "failed": 0,
                "train_loss": 4.0, "train_steps": 10, "train_seconds": 10.0, "train_loop_seconds": 8.0,
                "eval_seconds": 3.0, "search_seconds": 1.0, "train_attempts": 1, "eval_retries": 0,
                "evaluators_replaced": 0}

    store = RunStore(tmp_path / "run")
    (tmp_path / "run").mkdir()
    store.append_round([archive(0, "a"), archive(0, "b")], rnd(0, 0.25, 2))
    store.append_round([archive(1, "a"), archive(1, "c", "error")], rnd(1, 0.5, 3))
    row, (x, hv) = common.search_run_row(tmp_path / "run", 7, "gp", {"seen_mean_loss": 4.5})
    assert row == {"seed": 7, "method": "gp", "rounds": 2, "evaluations": 3, "distinct_configs": 3,
                   "final_hypervolume": 0.5, "seen_mean_loss": 4.5, "final_set_size": 3,
                   "train_seconds": 16.0, "total_seconds": 28.0}
    assert x.tolist() == [0.0, 1.0] and hv.tolist() == [0.25, 0.5]
