"""benchmarks/studylib/paper.py: the seed-to-seed spread and the issue-#15 options on Table 2, with every
command answered here (each is minutes to hours of training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.studylib import common, paper, report
from tests.benchmarks.studylib.conftest import study_in

ROOT = Path(__file__).resolve().parents[3]


def test_baseline_seeds_reports_the_seed_to_seed_range(tmp_path, monkeypatch):
    st = study_in(tmp_path)
    acc = {("shared", 0): 0.80, ("shared", 1): 0.79, ("per-config", 0): 0.81, ("per-config", 1): 0.78}
    calls = []

    def trained(name, config, method, sets, lm=False):
        calls.append((name, sets))
        return tmp_path / name

    def evaluate(name, *args):
        method, seed = name.rsplit("-s", 1)
        return [{"accuracy": acc[(method, int(seed))]}] * 6

    monkeypatch.setattr(st, "trained", trained)
    monkeypatch.setattr(st, "evaluate", evaluate)
    out = {r["method"]: r for r in paper.baseline_seeds(st, [0, 1])["baseline_seeds"]}
    assert out["shared"]["range_pt"] == pytest.approx(1.0)
    assert out["per-config"]["range_pt"] == pytest.approx(3.0)
    assert out["per-config"]["mean_accuracy"] == pytest.approx(0.795)
    # The same runs table2 makes: 4 rounds × 50 steps, seeded like it.
    assert calls[0] == ("shared-s0", ["train.seed=0", "search.seed=0", "train.steps=200"])

def _rounds(run: Path, loop_seconds: list[float]) -> None:
    """A run directory's rounds table (real Parquet, through the orchestrator's store)."""
    from orchestration.store import RunStore

    run.mkdir(parents=True, exist_ok=True)
    store = RunStore(run)
    for k, t in enumerate(loop_seconds):
        store.append_round([], {"round": k, "hypervolume": 0.5, "hv_train": 0.5, "set_size": 2, "evaluated": 0,
                                "failed": 0, "train_loss": 1.0, "train_steps": 10, "train_seconds": t + 5,
                                "train_loop_seconds": t, "eval_seconds": 1.0, "search_seconds": 1.0,
                                "train_attempts": 1, "eval_retries": 0, "evaluators_replaced": 0})

def test_table2_options_compare_each_option_with_table2s_own_runs(tmp_path, monkeypatch):
    st = study_in(tmp_path)
    acc = {"coa": [0.70, 0.80], "shared": [0.72, 0.80], "per-config": [0.74, 0.82],
           "coa-residual-fit": [0.73, 0.81], "shared-residual": [0.72, 0.78]}
    for m, tail in (("coa", "-budgets"), ("shared", ""), ("per-config", "")):
        (st.runs / f"eval-{m}-s0{tail}.json").write_text("[]")
    allocation = {"m": {"bits": 3}}
    (st.runs / "per-config-s0" / "a").mkdir(parents=True)
    (st.runs / "per-config-s0" / "per_config.json").write_text(json.dumps({"checkpoints": ["a"]}))
    (st.runs / "per-config-s0" / "a" / "meta.json").write_text(json.dumps({"trainset": [allocation]}))
    for m, t in (("shared", 90.0), ("shared-residual", 95.0)):
        (st.runs / f"{m}-s0").mkdir()
        (st.runs / f"{m}-s0" / "meta.json").write_text(json.dumps({"trainset": [{"m": {"bits": 2}}],
                                                                   "train_seconds": t}))
    _rounds(st.runs / "coa-s0", [40.0, 50.0])
    _rounds(st.runs / "coa-residual-fit-s0", [45.0, 55.0])
    for m in ("coa-s0", "coa-residual-fit-s0"):
        (st.runs / m / "checkpoints" / "round_0").mkdir(parents=True)
        (st.runs / m / "checkpoints" / "round_0" / "meta.json").write_text(json.dumps({"trainset": [{"m": {"bits": 4}}]}))
    calls = []

    def evaluate(name, *args):
        calls.append((name, args))
        m = name[:name.index("-s0")]
        return [{"config_id": f"c{i}", "accuracy": a} for i, a in enumerate(acc[m])]

    monkeypatch.setattr(st, "evaluate", evaluate)
    monkeypatch.setattr(st, "orchestrated", lambda name, config, sets, lm=False: calls.append((name, sets)) or st.runs / name)
    monkeypatch.setattr(st, "trained", lambda name, config, method, sets, lm=False: calls.append((name, sets))
                        or st.runs / name)
    st.variants = ["coa-residual-fit", "shared-residual", "coa-warm"]  # --variants: two of the options (and a
    rows = {r["method"]: r for r in paper.table2_options(st, [0])["table2_options"]}  # testbed-only variant)
    assert set(rows) == {"coa", "shared", "coa-residual-fit", "shared-residual"}
    assert {c[0] for c in calls if "bank" in c[0]} == set()  # the bank options were not asked for
    assert rows["coa-residual-fit"]["gap_to_shared_pt"] == pytest.approx(1.0)  # (+1, +1) points
    assert rows["coa-residual-fit"]["gap_to_per_config_pt"] == pytest.approx(-1.0)
    assert rows["coa"]["gap_to_shared_pt"] == pytest.approx(-1.0)
    assert rows["shared-residual"]["gap_to_shared_pt"] == pytest.approx(-1.0)
    assert rows["coa-residual-fit"]["train_seconds"] == 100.0 and rows["shared-residual"]["train_seconds"] == 95.0
    # The options' runs: Table 2's seed and step count, plus the option.
    assert ("coa-residual-fit-s0", ["train.seed=0", "search.seed=0", "lora.init=residual",
                                    "hypernet.residual_fit=200"]) in calls
    assert ("shared-residual-s0", ["train.seed=0", "search.seed=0", "train.steps=200", "lora.init=residual"]) in calls
    # A later call with one option keeps the other's rows (and refreshes its own and the plain runs').
    st.variants = ["shared-residual"]
    acc["shared-residual"] = [0.74, 0.80]
    rows = {r["method"]: r for r in paper.table2_options(st, [0])["table2_options"]}
    assert set(rows) == {"coa", "shared", "coa-residual-fit", "shared-residual"}
    assert rows["coa-residual-fit"]["gap_to_shared_pt"] == pytest.approx(1.0)
    assert rows["shared-residual"]["gap_to_shared_pt"] == pytest.approx(1.0)
    seeds_rows = common.read_csv(st.results / "table2-options-seeds.csv")
    assert [(r["seed"], r["method"]) for r in seeds_rows] == [(0, "coa"), (0, "shared"), (0, "shared-residual"),
                                                              (0, "coa-residual-fit")]
    # An option that trained on an evaluated allocation makes the comparison unfair: the study stops.
    (st.runs / "shared-residual-s0" / "meta.json").write_text(json.dumps({"trainset": [allocation], "train_seconds": 1}))
    with pytest.raises(SystemExit, match="in a training set"):
        paper.table2_options(st, [0])
    (st.runs / "eval-per-config-s0.json").unlink()
    with pytest.raises(SystemExit, match="run `--parts table2 --seeds 0` first"):
        paper.table2_options(st, [0])
    st.variants = ["coa-warm"]
    with pytest.raises(SystemExit, match="none of table2-options' options"):
        paper.table2_options(st, [0])
    res = st.results
    (res / "report-template.md").write_text("{{table2-options}}\n")
    lines = report.render_report(res, tmp_path / "r.md").splitlines()
    assert lines[0] == ("| method | mean accuracy, seed 0 | mean ± std | gap to per-config | gap to shared "
                        "| training s, seed 0 |")
    assert "| coa-residual-fit | 0.7700 | 0.770 ± 0.000 | −1.00 ± 0.00 pt | +1.00 ± 0.00 pt | 100 |" in lines
