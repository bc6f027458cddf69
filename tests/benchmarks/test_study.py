"""The study driver's bookkeeping (benchmarks/study.py): the hypervolume it reports, the seed
aggregation, and reusing finished commands without losing them from the manifest."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_driver", ROOT / "benchmarks" / "study.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_accuracy_hypervolume_exact(study):
    # Error 0 at the lowest bits is the ideal corner (0, 0): the whole box up to the reference (1.1, 1.1).
    assert study.accuracy_hypervolume(np.array([1.0]), np.array([2.0]), (2.0, 4.0)) == pytest.approx(1.21)
    # Error 0.25 of 0.5 and bits 3 of [2, 4] normalise to (0.5, 0.5): 0.6 × 0.6.
    assert study.accuracy_hypervolume(np.array([0.75]), np.array([3.0]), (2.0, 4.0)) == pytest.approx(0.36)
    # A dominated point adds nothing.
    both = study.accuracy_hypervolume(np.array([0.75, 0.7]), np.array([3.0, 3.5]), (2.0, 4.0))
    assert both == pytest.approx(0.36)


def test_aggregate_mean_and_spread(study):
    rows = [{"method": "a", "x": 1.0}, {"method": "a", "x": 3.0}, {"method": "b", "x": 5.0}]
    out = {r["method"]: r for r in study._aggregate(rows, "method", ["x"])}
    assert out["a"]["seeds"] == 2 and out["a"]["x"] == pytest.approx(2.0)
    assert out["b"]["seeds"] == 1 and out["b"]["x"] == pytest.approx(5.0)
    assert out["b"]["x_std"] == 0.0
    assert out["a"]["x_std"] == pytest.approx(1.0)  # population std: half the difference of two seeds


def _study_in(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ROOT", tmp_path)
    (tmp_path / "benchmarks").mkdir()
    return study.Study(quick=False, overrides=[])


def test_reuse_records_a_finished_log_once(study, tmp_path, monkeypatch):
    st = _study_in(study, tmp_path, monkeypatch)
    (st.logs / "train-x.log").write_text(f"$ {tmp_path}/.venv/bin/python -m coalora.cli train --out runs/x\n"
                                         "step 10 ...\n# exit 0 after 42 s\n")
    st.reuse("train-x.log")
    st.reuse("train-x.log")
    cmds = json.loads(st.manifest_path.read_text())["commands"]
    assert cmds == [{"command": ".venv/bin/python -m coalora.cli train --out runs/x", "seconds": 42.0,
                     "log": "runs/study/logs/train-x.log"}]


def test_reuse_ignores_failed_and_missing_logs(study, tmp_path, monkeypatch):
    st = _study_in(study, tmp_path, monkeypatch)
    (st.logs / "bad.log").write_text("$ python x\nTraceback ...\n# exit 1 after 3 s\n")
    (st.logs / "cut.log").write_text("$ python y\nstep 10\n")
    for log in ("bad.log", "cut.log", "missing.log"):
        st.reuse(log)
    assert st.manifest["commands"] == []


def test_per_config_configs_in_budget_order(study, tmp_path):
    # The configurations coa and shared are scored on: exactly those per-config trained for, in order.
    out = tmp_path / "per-config"
    cfgs = {"b3": {"m": {"bits": 3}}, "b4": {"m": {"bits": 4}}}
    for name, c in cfgs.items():
        (out / name).mkdir(parents=True)
        (out / name / "meta.json").write_text(json.dumps({"trainset": [c], "budget": 0}))
    (out / "per_config.json").write_text(json.dumps({"checkpoints": ["b4", "b3"]}))
    path = study._per_config_configs(out)
    assert json.loads(path.read_text()) == [cfgs["b4"], cfgs["b3"]]


def test_baseline_seeds_reports_the_seed_to_seed_range(study, tmp_path, monkeypatch):
    st = _study_in(study, tmp_path, monkeypatch)
    monkeypatch.setattr(study, "ROOT", ROOT)  # the real configs/study/minilm-rt.yaml
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
    out = {r["method"]: r for r in study.baseline_seeds(st, [0, 1])["baseline_seeds"]}
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


def test_table2_options_compare_each_option_with_table2s_own_runs(study, tmp_path, monkeypatch):
    st = _study_in(study, tmp_path, monkeypatch)
    monkeypatch.setattr(study, "ROOT", ROOT)  # the real configs/study/minilm-rt.yaml
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
    rows = {r["method"]: r for r in study.table2_options(st, [0])["table2_options"]}  # testbed-only variant)
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
    rows = {r["method"]: r for r in study.table2_options(st, [0])["table2_options"]}
    assert set(rows) == {"coa", "shared", "coa-residual-fit", "shared-residual"}
    assert rows["coa-residual-fit"]["gap_to_shared_pt"] == pytest.approx(1.0)
    assert rows["shared-residual"]["gap_to_shared_pt"] == pytest.approx(1.0)
    seeds_rows = study._read_csv(st.results / "table2-options-seeds.csv")
    assert [(r["seed"], r["method"]) for r in seeds_rows] == [(0, "coa"), (0, "shared"), (0, "shared-residual"),
                                                              (0, "coa-residual-fit")]
    # An option that trained on an evaluated allocation makes the comparison unfair: the study stops.
    (st.runs / "shared-residual-s0" / "meta.json").write_text(json.dumps({"trainset": [allocation], "train_seconds": 1}))
    with pytest.raises(SystemExit, match="in a training set"):
        study.table2_options(st, [0])
    (st.runs / "eval-per-config-s0.json").unlink()
    with pytest.raises(SystemExit, match="run `--parts table2 --seeds 0` first"):
        study.table2_options(st, [0])
    st.variants = ["coa-warm"]
    with pytest.raises(SystemExit, match="none of table2-options' options"):
        study.table2_options(st, [0])
    res = st.results
    (res / "report-template.md").write_text("{{table2-options}}\n")
    lines = study.render_report(res, tmp_path / "r.md").splitlines()
    assert lines[0] == ("| method | mean accuracy, seed 0 | mean ± std | gap to per-config | gap to shared "
                        "| training s, seed 0 |")
    assert "| coa-residual-fit | 0.7700 | 0.770 ± 0.000 | −1.00 ± 0.00 pt | +1.00 ± 0.00 pt | 100 |" in lines


def _write_csv(path: Path, header: str, *rows: str) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")


def test_report_renders_tables_from_the_result_files(study, tmp_path):
    # Two seeds of Table 2 and one of the causal LM, in the CSV format the parts write.
    res = tmp_path / "results"
    res.mkdir()
    _write_csv(res / "table2-seeds.csv",
               "seed,method,mean_accuracy,min_accuracy,configs,train_seconds,total_seconds,adapters,"
               "gap_to_per_config_pt,hypervolume",
               "0,coa,0.79,0.78,2,500.0,1200.0,1,-0.5,0.67", "0,per-config,0.795,0.79,2,1400.0,1400.0,2,0.0,0.68",
               "1,coa,0.78,0.77,2,520.0,1300.0,1,-1.5,0.65", "1,per-config,0.795,0.79,2,1500.0,1500.0,2,0.0,0.68")
    _write_csv(res / "table2.csv",
               "method,seeds,mean_accuracy,mean_accuracy_std,gap_to_per_config_pt,gap_to_per_config_pt_std,"
               "hypervolume,hypervolume_std,train_seconds,train_seconds_std",
               "coa,2,0.785,0.005,-1.0,0.5,0.66,0.01,510.0,10.0", "per-config,2,0.795,0.0,0.0,0.0,0.68,0.0,1450.0,50.0")
    _write_csv(res / "causal-lm-per-config.csv", "seed,method,budget,config_id,avg_bits,perplexity,loss",
               "0,per-config,3.0,a,3.0,60.0,4.1", "0,per-config,4.0,b,4.0,30.0,3.4",
               "0,coa,3.0,a,3.0,120.0,4.8", "0,coa,4.0,b,4.0,36.0,3.58")
    _write_csv(res / "causal-lm.csv", "method,seeds,mean_perplexity,mean_perplexity_std,ratio_to_per_config,"
               "ratio_to_per_config_std,train_seconds,train_seconds_std",
               "per-config,1,45.0,0.0,1.0,0.0,2600.0,0.0", "coa,1,78.0,0.0,1.6,0.0,1500.0,0.0")
    (res / "table2.png").write_bytes(b"")
    (res / "report-template.md").write_text("<!-- a note -->\n# R\n{{table2}}\n{{plot:table2}}\n{{causal-lm}}\n"
                                            "{{seen-unseen}}\n")
    lines = study.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[0] == "# R"  # the template's comment is gone
    assert lines[1] == ("| method | adapters | mean accuracy, seed 0 / seed 1 | mean ± std | gap to per-config | HV "
                        "| training s, seed 0 / seed 1 |")
    assert lines[3] == ("| coa | 1 | 0.7900 / 0.7800 | 0.785 ± 0.005 | −1.00 ± 0.50 pt | 0.660 ± 0.010 "
                        "| 500 / 520 (whole run 1,200 / 1,300) |")
    assert lines[4] == "| per-config | 2 | 0.7950 / 0.7950 | 0.795 ± 0.000 | 0 | 0.680 ± 0.000 | 1,400 / 1,500 |"
    assert lines[5] == "![table2](../results/table2.png)"  # relative to the report
    assert "| coa | 1 | 120.0 / 36.0 | 78.0 | 1.60 | 1,500 |" in lines
    assert "| per-config | 2 | 60.0 / 30.0 | 45.0 | 1 | 2,600 |" in lines
    assert lines[-1] == "_Not run yet: `python benchmarks/study.py --parts seen-unseen`._"


def test_the_headroom_table_shows_the_spread_of_g_where_there_is_a_g(study, tmp_path):
    # Two seeds of shared (no G), a coa variant with G and G_match, one seed of another: as headroom writes them.
    res = tmp_path / "results"
    res.mkdir()
    _write_csv(res / "headroom-summary.csv",
               "method,set,seeds,configs,mean_loss,gap_closed,gap_closed_std,gap_closed_match,gap_closed_match_std,"
               "unseen_vs_seen_line_pct",
               "shared,seen,2,3,4.8297,,,,,", "shared,unseen,2,8,4.2188,,,,,-6.12907",
               "coa-bank,seen,2,3,3.95352,0.95846,0.02113,0.05415,0.01847,",
               "coa-bank,unseen,2,8,4.00629,0.64332,0.00262,0.01452,0.00339,2.72085",
               "coa,seen,1,3,6.04735,-0.29398,0.0,,,", "coa,unseen,1,8,4.1864,0.07221,0.0,,,-16.34288")
    _write_csv(res / "headroom-seconds.csv", "method,seeds,train_seconds,train_seconds_std", "coa-bank,2,1365.0,10.0")
    (res / "report-template.md").write_text("{{headroom}}\n")
    lines = study.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[2:] == ["| coa | 6.047 | -0.29 |  | 4.186 | 0.07 |  | -16.3 % |  |",  # one seed: no spread
                         "| shared | 4.830 |  |  | 4.219 |  |  | -6.1 % |  |",
                         "| coa-bank | 3.954 | 0.96 ± 0.02 | 0.05 ± 0.02 | 4.006 | 0.64 ± 0.00 | 0.01 ± 0.00 | 2.7 % "
                         "| 1,365 |"]


def test_report_only_writes_the_report_and_runs_nothing(study, tmp_path, monkeypatch):
    monkeypatch.setattr(study, "ROOT", tmp_path)
    res = study.results_dir(quick=False)
    res.mkdir(parents=True)
    _write_csv(res / "baseline-seeds.csv", "seed,method,mean_accuracy", "0,shared,0.8", "1,shared,0.79")
    monkeypatch.setattr(study, "Study", None)  # constructing a Study (which starts work) would fail
    assert study.main(["--report-only"]) == 0
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "| shared | 0.8000 | 0.7900 | 1.00 pt |" in text.splitlines()
    assert not (tmp_path / "runs").exists()


def test_gap_closed_and_the_headroom_rows_have_exact_answers(study):
    assert study.gap_closed(shared=5.0, coa=4.5, per_config=4.0) == 0.5
    assert study.gap_closed(shared=5.0, coa=5.5, per_config=4.0) == -0.5  # worse than shared
    assert study.gap_closed(shared=4.0, coa=3.9, per_config=4.0) is None  # no gap to close
    row = lambda loss, bits: {"loss": loss, "avg_bits": bits}  # noqa: E731
    losses = {"per-config": {"a": row(4.0, 3.0), "u1": row(4.2, 3.2)},
              "shared": {"a": row(5.0, 3.0), "u1": row(5.2, 3.2), "u2": row(5.4, 3.4)},
              "coa": {"a": row(4.25, 3.0), "u1": row(5.0, 3.2), "u2": row(5.0, 3.4)}}
    rows = study.headroom_rows(7, losses, seen=["a"], budgets=[3.0], unseen=["u1", "u2"])
    coa = {r["config_id"]: r for r in rows if r["method"] == "coa"}
    assert coa["a"] == {"method": "coa", "seed": 7, "set": "seen", "budget": 3.0, "config_id": "a",
                        "avg_bits": 3.0, "loss": 4.25, "gap_closed": 0.75, "gap_closed_match": None}
    assert coa["u1"]["gap_closed"] == pytest.approx(0.2) and coa["u1"]["budget"] is None
    assert coa["u2"]["gap_closed"] is None  # per-config has no adapter for u2
    assert all(r["gap_closed"] is None for r in rows if r["method"] != "coa")
    assert len(rows) == 2 + 3 + 3
    summary = {(r["method"], r["set"]): r for r in study.headroom_summary(rows)}
    assert summary[("coa", "seen")]["gap_closed"] == 0.75 and summary[("coa", "seen")]["configs"] == 1
    assert summary[("coa", "unseen")]["mean_loss"] == 5.0 and summary[("coa", "unseen")]["gap_closed"] == pytest.approx(0.2)
    assert summary[("shared", "unseen")]["gap_closed"] is None and summary[("per-config", "unseen")]["configs"] == 1


def test_a_coa_variant_is_also_scored_against_the_shared_variant_with_its_option(study):
    """G_match: coa-x against shared-x (the same option given to shared), beside G against plain shared."""
    row = lambda loss: {"loss": loss, "avg_bits": 3.0}  # noqa: E731
    losses = {"per-config": {"a": row(4.0)}, "shared": {"a": row(6.0)}, "shared-x": {"a": row(5.0)},
              "coa-x": {"a": row(4.5)}, "coa": {"a": row(5.5)}}
    losses["per-config-x"] = {"a": row(3.0)}
    rows = study.headroom_rows(0, losses, seen=["a"], budgets=[3.0], unseen=[],
                               match={"coa-x": ("shared-x", "per-config-x")})
    by = {r["method"]: r for r in rows}
    assert by["coa-x"]["gap_closed"] == 0.75 and by["coa-x"]["gap_closed_match"] == 0.25  # (5 - 4.5) / (5 - 3)
    assert by["coa"]["gap_closed"] == 0.25 and by["coa"]["gap_closed_match"] is None
    assert by["shared-x"]["gap_closed"] == 0.5  # what the option alone gives shared
    assert by["per-config-x"]["gap_closed"] is None  # a baseline
    summary = {r["method"]: r for r in study.headroom_summary(rows)}
    assert summary["coa-x"]["gap_closed_match"] == 0.25 and summary["coa-x"]["gap_closed_match_std"] == 0.0
    assert study.HEADROOM_MATCH["coa-residual-fit"] == ("shared-residual", "per-config-residual")
    assert all(study.HEADROOM_VARIANTS[sh][0] == "shared" and pc in study.HEADROOM_PER_CONFIG
               for sh, pc in study.HEADROOM_MATCH.values())


def test_every_headroom_variant_is_a_valid_configuration_of_the_testbed(study):
    from coalora.pipeline.config import load_config

    for name, (method, sets) in study.HEADROOM_VARIANTS.items():
        cfg = load_config(study.ROOT / study.LOWBIT, sets)
        assert method in ("coa", "shared"), name
        assert cfg.lora.bank == (16 if "bank" in name else 0), name


def test_evaluated_configurations_in_a_training_set_are_found(study, tmp_path):
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
    assert study.trained_on(outs, evaluated) == {"coa": [1, 2]}  # c (seen, 2nd) and b (unseen, 1st)
    del outs["coa"]
    assert study.trained_on(outs, evaluated) == {}  # per-config variants may train on theirs


def test_exclude_trained_keeps_the_same_configurations_for_rows_and_curves(study):
    # Positions count seen then unseen: 1 is seen "b" (budget 3.0), 4 is unseen "v".
    hits = {"coa": [1, 4], "shared": [1]}
    seen, budgets, unseen, drop = study.kept_configs(hits, ["a", "b", "c"], [2.75, 3.0, 3.25], ["u", "v"])
    assert (seen, budgets, unseen) == (["a", "c"], [2.75, 3.25], ["u"])
    assert drop == {"b": ["coa", "shared"], "v": ["coa"]}  # each dropped id names only those that trained on it
    assert study.kept_configs({}, ["a"], [3.0], ["u"]) == (["a"], [3.0], ["u"], {})


def test_seed_records_keep_every_calls_methods_and_leave_out_each_seeds_excluded_configs(study, tmp_path):
    def row(method, seed, cid, loss):
        return {"method": method, "seed": seed, "config_id": cid, "loss": loss}

    # Seed 0: a first call with two methods; a second with one of them again (its rows replace the first's)
    # and a new one, which trained on "b" (--exclude-trained).
    s0 = tmp_path / "headroom-s0.json"
    study.record_seed(s0, {"rows": [row("shared", 0, "a", 5.0), row("shared", 0, "b", 4.0), row("coa", 0, "a", 4.5)],
                           "seconds": [{"method": "shared", "seed": 0, "train_seconds": 10.0}]}, {})
    study.record_seed(s0, {"rows": [row("coa", 0, "a", 4.4), row("coa", 0, "b", 3.9), row("coa-bank", 0, "a", 4.0)]},
                      {"b": ["coa-bank"]})
    # Seed 10 (ordered after 2 by number, not by name), seed 2 with its own exclusion; a file of another
    # kind (the testbed's seen configurations) is not a record.
    study.record_seed(tmp_path / "headroom-s10.json", {"rows": [row("shared", 10, "a", 5.5)]}, {})
    study.record_seed(tmp_path / "headroom-s2.json", {"rows": [row("shared", 2, "a", 5.2), row("shared", 2, "c", 5.1)]},
                      {"c": ["coa"], "b": ["coa"]})
    (tmp_path / "headroom-seen.json").write_text("[]")
    tables, excluded = study.seed_records(tmp_path)
    assert [(r["method"], r["seed"], r["config_id"], r["loss"]) for r in tables["rows"]] == [
        ("shared", 0, "a", 5.0), ("coa", 0, "a", 4.4), ("coa-bank", 0, "a", 4.0),  # seed 0 without b, for all
        ("shared", 2, "a", 5.2), ("shared", 10, "a", 5.5)]
    assert tables["seconds"] == [{"method": "shared", "seed": 0, "train_seconds": 10.0}]  # kept by the second call
    assert excluded == {"b": ["coa", "coa-bank"], "c": ["coa"]}
    assert study.seed_records(tmp_path / "nothing") == ({}, {})


def test_headroom_pairs_compare_a_variant_with_its_shared_variant_seed_by_seed(study, tmp_path):
    ev = lambda *losses: [{"loss": x} for x in losses]  # noqa: E731
    evals = {("coa-x", 0, "seen"): ev(4.0, 5.0), ("shared-x", 0, "seen"): ev(4.5, 4.9),
             ("coa-x", 1, "seen"): ev(3.0, 3.0), ("shared-x", 1, "seen"): ev(3.5, 3.5),
             ("coa-x", 2, "unseen"): ev(1.0)}  # seed 2 has no shared-x: no row
    rows = study.headroom_pairs(evals, {"coa-x": "shared-x"})
    assert [(r["seed"], r["set"], r["lower_on"], r["configs"]) for r in rows] == [(0, "seen", 1, 2), (1, "seen", 2, 2)]
    assert rows[0]["difference"] == pytest.approx(-0.2) and rows[1]["loss_against"] == 3.5
    evals[("coa-x", 1, "seen")][0]["config_id"] = "gone"
    (_, one) = study.headroom_pairs(evals, {"coa-x": "shared-x"}, exclude={"gone"})
    assert one["configs"] == 1 and one["loss"] == 3.0 and one["loss_against"] == 3.5
    # The evaluations are found in the runs directory by name, whatever the seed.
    st = study.Study.__new__(study.Study)
    st.runs = tmp_path
    (tmp_path / "eval-hr-coa-x-s1-unseen.json").write_text(json.dumps(ev(2.0)))
    (tmp_path / "eval-hr-coa-x-s1-budgets.json").write_text("[]")  # not a headroom set
    assert study._pair_evals(st, ["coa-x"]) == {("coa-x", 1, "unseen"): ev(2.0)}


def test_an_orchestrated_run_trained_on_the_union_of_its_rounds(study, tmp_path):
    # A run's rounds each record the set they trained on; the search changes it between rounds.
    a, b, c = {"m": {"bits": 3}}, {"m": {"bits": 4}}, {"m": {"bits": 8}}
    run = tmp_path / "coa-s0"
    for k, trainset in enumerate(([a], [b, {"m": {"bits": 6}}])):
        (run / "checkpoints" / f"round_{k}").mkdir(parents=True)
        (run / "checkpoints" / f"round_{k}" / "meta.json").write_text(json.dumps({"trainset": trainset}))
    (tmp_path / "eval.json").write_text(json.dumps([c, b, a]))
    assert study.trained_on({"coa": run}, [tmp_path / "eval.json"]) == {"coa": [1, 2]}
    with pytest.raises(SystemExit, match="neither"):
        study.training_configs(tmp_path / "nothing")


def test_learning_curves_score_each_step_on_per_configs_configurations(study, tmp_path):
    assert study.snapshot_steps(60) == [15, 30, 45] and study.snapshot_steps(2) == [1]
    row = lambda loss: {"loss": loss, "avg_bits": 3.0}  # noqa: E731
    by_step = {
        15: {"per-config": {"a": row(5.0), "u1": row(5.0)}, "shared": {"a": row(7.0), "u1": row(7.0), "u2": row(9.0)},
             "coa": {"a": row(6.0), "u1": row(6.5), "u2": row(1.0)}},
        60: {"per-config": {"a": row(4.0), "u1": row(4.0)}, "shared": {"a": row(5.0), "u1": row(5.0), "u2": row(9.0)},
             "coa": {"a": row(4.25), "u1": row(4.5), "u2": row(1.0)}},
    }
    rows = study.headroom_curves(3, by_step, seen=["a"], budgets=[3.0], unseen=["u1", "u2"])
    got = {(r["step"], r["method"], r["set"]): r for r in rows}
    # u2 has no per-config adapter: it is in no curve, so every method's unseen mean is over u1 alone.
    assert got[(15, "coa", "seen")]["mean_loss"] == 6.0 and got[(15, "coa", "seen")]["gap_closed"] == 0.5
    assert got[(15, "coa", "unseen")]["mean_loss"] == 6.5 and got[(15, "coa", "unseen")]["gap_closed"] == 0.25
    assert got[(60, "coa", "seen")]["gap_closed"] == 0.75 and got[(60, "shared", "unseen")]["mean_loss"] == 5.0
    assert {r["seed"] for r in rows} == {3} and len(rows) == 2 * 3 * 2
    res = tmp_path / "results"
    res.mkdir()
    (res / "report-template.md").write_text("{{headroom-curves}}\n")
    assert study.render_report(res, tmp_path / "r.md") == "_Not run yet: `python benchmarks/study.py --parts headroom`._\n"
    st = type("St", (), {"results": res})()
    study.Study.write_csv(st, "headroom-curves.csv", rows)
    lines = study.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[0] == "| method | set | step 15 | step 60 |"
    assert "| coa | seen | 6.000 (G 0.50) | 4.250 (G 0.75) |" in lines
    assert "| shared | unseen | 7.000 | 5.000 |" in lines


def test_the_headroom_search_runs_a_valid_configuration_and_reports_it(study, tmp_path):
    from coalora.pipeline.config import load_config

    sets = study.HEADROOM_SEARCH_SETS + study.HEADROOM_VARIANTS[study.HEADROOM_SEARCH_VARIANT][1]
    cfg = load_config(study.ROOT / study.LOWBIT, sets + ["search.method=frozen", "run.steps_per_round=30"])
    assert (cfg.run.rounds, cfg.search.bits_range, cfg.hypernet.residual_fit) == (4, (2.7, 4.5), 200)
    assert set(study.HEADROOM_SEARCH_METHODS) == {"gp", "frozen", "random-extend"}
    res = tmp_path / "results"
    res.mkdir()
    _write_csv(res / "headroom-search-seeds.csv",
               "seed,method,rounds,evaluations,distinct_configs,final_set_size,final_hypervolume,seen_mean_loss,"
               "unseen_mean_loss,train_seconds,total_seconds",
               "0,gp,4,40,30,12,0.5,4.1,4.0,600,900", "1,gp,4,42,31,13,0.6,4.3,4.2,620,950")
    _write_csv(res / "headroom-search.csv", "method,seeds,seen_mean_loss,seen_mean_loss_std,unseen_mean_loss,"
               "unseen_mean_loss_std,final_hypervolume,final_hypervolume_std",
               "gp,2,4.2,0.1,4.1,0.1,0.55,0.05")
    (res / "report-template.md").write_text("{{headroom-search}}\n")
    lines = study.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[2] == ("| gp | 4.100 / 4.300, 4.200 ± 0.100 | 4.000 / 4.200, 4.100 ± 0.100 | 0.500 / 0.600, "
                        "0.550 ± 0.050 | 40 / 42 | 12 / 13 | 900 / 950 |")


def test_a_search_run_row_counts_what_the_search_did(study, tmp_path):
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
    row, (x, hv) = study._search_run_row(tmp_path / "run", 7, "gp", {"seen_mean_loss": 4.5})
    assert row == {"seed": 7, "method": "gp", "rounds": 2, "evaluations": 3, "distinct_configs": 3,
                   "final_hypervolume": 0.5, "seen_mean_loss": 4.5, "final_set_size": 3,
                   "train_seconds": 16.0, "total_seconds": 28.0}
    assert x.tolist() == [0.0, 1.0] and hv.tolist() == [0.25, 0.5]


def test_the_headroom_search_can_run_one_method_a_call_and_keeps_the_others_rows(study, tmp_path, monkeypatch):
    """``--variants gp`` then ``--variants frozen``: the second call's tables hold both methods (each run
    is an hour on 2 cores, so they may be run in separate calls), and a method run again replaces its rows."""
    from orchestration.store import RunStore

    st = _study_in(study, tmp_path, monkeypatch)
    monkeypatch.setattr(study, "ROOT", ROOT)  # the real configs/study/smollm2-lowbit.yaml
    monkeypatch.setattr(study, "_seen_configs", lambda st, o: st.runs / "seen.json")
    monkeypatch.setattr(study, "_unseen_configs", lambda st, o: st.runs / "unseen.json")
    monkeypatch.setattr(study, "trained_on", lambda runs, paths: {})
    hv = {"gp": [0.4, 0.5], "frozen": [0.4, 0.45]}
    ran = []

    def orchestrated(name, config, sets, lm=False):
        ran.append(name)
        method = name.split("-")[1]
        run = st.runs / name
        run.mkdir(parents=True, exist_ok=True)
        store = RunStore(run)
        for k, h in enumerate(hv[method]):
            store.append_round([], {"round": k, "hypervolume": h, "set_size": 8 + k, "train_seconds": 10.0,
                                    "eval_seconds": 5.0, "search_seconds": 1.0})
        return run

    monkeypatch.setattr(st, "orchestrated", orchestrated)
    monkeypatch.setattr(st, "evaluate", lambda name, *a: [{"loss": 4.0 if "seen" in name.split("-")[-1] else 4.5}])
    st.variants = ["gp"]
    study.headroom_search(st, [0])
    st.variants = ["frozen"]
    hv["gp"] = [0.1, 0.2]  # not run in this call: gp's rows must stay as the first call wrote them
    agg = {r["method"]: r for r in study.headroom_search(st, [0])["headroom_search"]}
    assert ran == ["hrs-gp-s0", "hrs-frozen-s0"]
    assert agg["gp"]["final_hypervolume"] == pytest.approx(0.5) and agg["frozen"]["final_hypervolume"] == 0.45
    rows = study._read_csv(st.results / "headroom-search-seeds.csv")
    assert [(r["seed"], r["method"], r["rounds"], r["final_set_size"]) for r in rows] == [(0, "gp", 2, 9),
                                                                                          (0, "frozen", 2, 9)]
    assert (st.results / "headroom-search-seeds.csv").read_text().splitlines()[1].startswith("0,gp,2,")
    curves = study._read_csv(st.results / "headroom-search-curves.csv")
    assert [(r["method"], r["round"], r["hypervolume"]) for r in curves] == [
        ("frozen", 0, 0.4), ("frozen", 1, 0.45), ("gp", 0, 0.4), ("gp", 1, 0.5)]
    assert (st.results / "headroom-search.png").is_file()
    st.variants = ["coa-bank"]
    with pytest.raises(SystemExit, match="none of headroom-search's methods"):
        study.headroom_search(st, [0])
    st.variants = ["gp"]  # and the headroom part has no variant of that name
    with pytest.raises(SystemExit, match="none of headroom's variants"):
        study.headroom(st, [0])


def test_unseen_configurations_are_compared_with_a_line_through_the_seen_ones(study):
    """Through (3.0 bits, 5.0) and (3.5 bits, 4.0) the line predicts 4.5 at 3.25 bits: 4.95 there is 10 %
    above it (seed 0), 4.5 is on it (seed 1); the mean over seeds is 5 %."""
    rows = []
    for seed, unseen_loss in ((0, 4.95), (1, 4.5)):
        rows += [{"method": "coa", "seed": seed, "set": "seen", "avg_bits": 3.0, "loss": 5.0},
                 {"method": "coa", "seed": seed, "set": "seen", "avg_bits": 3.5, "loss": 4.0},
                 {"method": "coa", "seed": seed, "set": "unseen", "avg_bits": 3.25, "loss": unseen_loss}]
    by_set = {r["set"]: r for r in study.headroom_summary(rows)}
    assert by_set["unseen"]["unseen_vs_seen_line_pct"] == pytest.approx(5.0)
    assert "unseen_vs_seen_line_pct" not in by_set["seen"]
    one = [r for r in rows if not (r["set"] == "seen" and r["avg_bits"] == 3.5)]
    assert {r["set"]: r for r in study.headroom_summary(one)}["unseen"]["unseen_vs_seen_line_pct"] is None


def test_the_residual_span_table_shows_what_each_correction_removes(study, tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    _write_csv(res / "headroom-span.csv", "rank,set,avg_bits,shared,best_core,own_top_r,own_top_4r,reach",
               "16,seen,3.0012,0.97140,0.95740,0.89000,0.66830,0.38727")
    (res / "report-template.md").write_text("{{headroom-span}}\n")
    lines = study.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[2] == "| 16 | seen | 3.00 | 2.9 % | 4.3 % | 11.0 % | 33.2 % | 0.39 |"
    assert "headroom-span" in study.PARTS


def test_the_span_part_runs_each_analysis_once_and_splits_the_bank_table(study, tmp_path, monkeypatch):
    st = _study_in(study, tmp_path, monkeypatch)
    ran = []
    header = "rank,set,avg_bits,shared,best_core,own_top_r,own_top_4r,reach"

    def sh(cmd, log, echo=False):
        ran.append(log)
        csv_path = Path(cmd[cmd.index("--csv") + 1])
        rank = cmd[cmd.index("--rank") + 1]
        if "--bank" in cmd:
            _write_csv(csv_path, header + ",shared_bank,best_core_bank,reach_bank",
                       f"{rank},unseen,3.1,0.99,0.98,0.89,0.68,0.15,0.98,0.96,0.35")
        else:
            _write_csv(csv_path, header, f"{rank},unseen,3.1,0.99,0.98,0.89,0.68,0.15")
        return ""

    monkeypatch.setattr(st, "sh", sh)
    study.headroom_span(st, [0])
    assert ran == ["headroom-span-r16.log", "headroom-span-r64.log", "headroom-span-bank16.log"]
    assert (st.results / "headroom-span.csv").read_text().splitlines()[1:] == [
        "16,unseen,3.1,0.99,0.98,0.89,0.68,0.15", "64,unseen,3.1,0.99,0.98,0.89,0.68,0.15"]  # as the script wrote
    study.headroom_span(st, [0])  # every table is there: nothing runs again
    assert len(ran) == 3
    (st.results / "report-template.md").write_text("{{headroom-span-bank}}\n")
    lines = study.render_report(st.results, tmp_path / "r.md").splitlines()
    assert lines[2] == "| 16 | unseen | 3.10 | 1.0 % | 2.0 % | 2.0 % | 4.0 % | 11.0 % | 0.15 | 0.35 |"


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_full_size_pass_keeps_its_runs_and_tables_apart_from_the_mid_size_ones(study, tmp_path, monkeypatch,
                                                                                    jobs):
    """``--parts headroom-full``: the headroom part at the testbed's own size, with the same run names under
    ``runs/study-full/`` and its tables in ``headroom-full*.csv``; the mid-size pass's tables are left as they
    were, and the report renders the full pass from its own files. Every command is answered here (each is
    an hour of SmolLM2): the bookkeeping around them is what is tested, with exact G. With ``--jobs 2`` the
    trainings run side by side, then every evaluation, finals and learning curves alike (none is left to
    run one at a time after them), and the tables are the same."""
    import threading

    from coalora.pipeline.methods import snapshot_dir

    st = _study_in(study, tmp_path, monkeypatch)
    st.jobs = jobs
    monkeypatch.setattr(study, "ROOT", ROOT)  # the real configs/study/smollm2-lowbit.yaml (4 budgets)
    mid = st.results / "headroom-summary.csv"
    mid.write_text("method,set,mean_loss\nshared,seen,5.0\n")  # the mid-size pass's table: must stay
    seen_ids, unseen_ids = [f"b{i}" for i in range(4)], [f"u{i}" for i in range(8)]
    monkeypatch.setattr(study, "_unseen_configs", lambda st, o: _json_file(st.runs / "headroom-unseen.json",
                                                                               unseen_ids))
    monkeypatch.setattr(study, "trained_on", lambda outs, paths: {})
    loss = {"shared": 5.0, "per-config": 4.0, "per-config-residual": 3.8, "shared-residual-random": 4.8,
            "coa-residual-fit-random": 4.5}
    trained, commands = [], []

    def per_config_dir(out, ids):
        _json_file(out / "per_config.json", {"checkpoints": [f"c{i}" for i in range(len(ids))], "train_seconds": 40.0})
        for i, cid in enumerate(ids):
            _json_file(out / f"c{i}" / "meta.json", {"trainset": [cid]})

    def fake_trained(name, config, method, sets, lm=False):
        out = st.runs / name
        trained.append(out)
        for k in (30, 60, 90):  # train.snapshots of 120 steps
            snapshot_dir(out, k).mkdir(parents=True)
        if method == "per-config":
            _json_file(out / "per_config.json", {"checkpoints": [f"c{i}" for i in range(4)], "train_seconds": 40.0})
            for i, cid in enumerate(seen_ids):
                _json_file(out / f"c{i}" / "meta.json", {"trainset": [cid]})
        else:
            _json_file(out / "meta.json", {"train_seconds": 10.0, "trainset": []})
        return out

    def fake_coalora(*args, log, echo=False):
        commands.append((args[0], threading.current_thread() is threading.main_thread()))
        a = dict(zip(args[1::2], args[2::2])) if args[0] == "evaluate" else {}
        if args[0] == "train":  # per-config's adapters for the first unseen configurations
            out = Path(args[args.index("--out") + 1])
            for k in (30, 60, 90):
                snapshot_dir(out, k).mkdir(parents=True)
            _json_file(out / "per_config.json", {"train_seconds": 30.0})
            return ""
        ckpt = Path(a["--checkpoint"])
        run = next(p for p in [ckpt, *ckpt.parents] if p.name.startswith("hr-"))
        assert run.parent == tmp_path / "runs" / "study-full", ckpt
        method = run.name.removeprefix("hr-").removesuffix("-s0").removesuffix("-unseen")
        step = int(ckpt.name.removeprefix("step-")) if ckpt != run else 120
        if "--config" in a:
            ids = seen_ids if a["--config"].endswith("configs.json") else unseen_ids
        else:  # a per-config directory: its own adapters' configurations
            ids = unseen_ids[:study.HEADROOM_UNSEEN_PER_CONFIG] if "unseen" in run.name else seen_ids
        # The loss falls by 0.01 nats a step to its final value, the same for every method.
        return json.dumps([{"config_id": c, "avg_bits": 3.0 + i / 10, "loss": loss[method] + (120 - step) / 100}
                           for i, c in enumerate(ids)])

    monkeypatch.setattr(st, "trained", fake_trained)
    monkeypatch.setattr(st, "coalora", fake_coalora)
    st.variants = ["coa-residual-fit-random", "shared-residual-random"]
    runs = st.runs
    summary = study.headroom_full(st, [0])["headroom-full"]
    assert st.runs == runs and st.logs == runs / "logs"  # the next part runs where it should
    full = tmp_path / "runs" / "study-full"
    assert {p.name for p in trained} == {"hr-shared-s0", "hr-per-config-s0", "hr-per-config-residual-s0",
                                         "hr-coa-residual-fit-random-s0", "hr-shared-residual-random-s0"}
    assert all(p.parent == full for p in trained) and (full / "headroom-s0.json").is_file()
    # per-config and per-config-residual, each on 3 unseen configurations
    assert [c for c, _ in commands].count("train") == 2
    # Finals: 2 per-config methods × (budgets, unseen) + 3 others × (seen, unseen); curves: 3 snapshots of
    # each of those 5 (HEADROOM_CURVES). With --jobs 2 every one ran in the pool, none after it.
    assert [c for c, _ in commands].count("evaluate") == 10 * 4
    assert all(main for _, main in commands) if jobs == 1 else not any(main for _, main in commands)
    assert mid.read_text() == "method,set,mean_loss\nshared,seen,5.0\n"
    assert not (st.results / "headroom.csv").exists()
    for name in ("headroom-full.csv", "headroom-full-summary.csv", "headroom-full-pairs.csv",
                 "headroom-full-seconds.csv", "headroom-full-excluded.csv", "headroom-full.png"):
        assert (st.results / name).is_file(), name
    got = {(r["method"], r["set"]): r for r in summary}
    # G = (5.0 - 4.5) / (5.0 - 4.0); G_match = (4.8 - 4.5) / (4.8 - 3.8), on every budget and on the 3
    # unseen configurations per-config trained for.
    for set_name in ("seen", "unseen"):
        assert got[("coa-residual-fit-random", set_name)]["gap_closed"] == pytest.approx(0.5)
        assert got[("coa-residual-fit-random", set_name)]["gap_closed_match"] == pytest.approx(0.3)
    assert got[("per-config", "unseen")]["mean_loss"] == 4.0
    pairs = study._read_csv(st.results / "headroom-full-pairs.csv")
    assert [(r["set"], r["configs"], r["difference"]) for r in pairs] == [("seen", 4, pytest.approx(-0.3)),
                                                                         ("unseen", 8, pytest.approx(-0.3))]
    curves = {(r["method"], r["set"], r["step"]): r for r in study._read_csv(st.results / "headroom-full-curves.csv")}
    assert curves[("shared", "seen", 30)]["mean_loss"] == pytest.approx(5.9)
    assert curves[("coa-residual-fit-random", "seen", 30)]["gap_closed"] == pytest.approx(0.5)
    assert (st.results / "headroom-full-curves.png").is_file()
    (st.results / "report-template.md").write_text("{{headroom-full}}\n\n{{headroom-full-curves}}\n")
    report = study.render_report(st.results, tmp_path / "r.md")
    line = next(x for x in report.splitlines() if x.startswith("| coa-residual-fit-random "))
    assert "0.50" in line and "0.30" in line and "4.500" in line, line
    line = next(x for x in report.splitlines() if x.startswith("| shared | seen |"))
    assert line.split(" | ")[2:] == ["5.900", "5.600", "5.300", "5.000 |"], line


def _json_file(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_run_all_starts_nothing_after_a_failure_and_raises_it_once_the_running_calls_end(study, tmp_path, monkeypatch):
    """``--jobs 2``: a command fails while another runs; the running one finishes (a rerun reuses it), the
    queued ones never start, and the failure is what the part raises. With one job, calls run in order."""
    import threading
    import time

    st = _study_in(study, tmp_path, monkeypatch)
    ran, second_started = [], threading.Event()

    def fails():
        second_started.wait(10)
        raise SystemExit("study: command failed")

    def slow():
        second_started.set()
        time.sleep(0.3)
        ran.append("slow")
        return "slow"

    st.jobs = 2
    with pytest.raises(SystemExit, match="command failed"):
        st.run_all({"a": fails, "b": slow, "c": lambda: ran.append("c"), "d": lambda: ran.append("d")})
    assert ran == ["slow"]
    assert st.run_all({"x": lambda: 1, "y": lambda: 2}) == {"x": 1, "y": 2}
    st.jobs = 1
    order = []
    assert st.run_all({k: functools.partial(order.append, k) for k in "cab"}) == {"c": None, "a": None, "b": None}
    assert order == ["c", "a", "b"]


def test_side_by_side_commands_point_at_their_logs_instead_of_echoing(study, tmp_path, monkeypatch, capsys):
    """With ``--jobs 2`` a command's output goes to its log only (two progress bars would interleave): the
    console says where to follow it and when it ended; the manifest records it like any other."""
    import sys

    st = _study_in(study, tmp_path, monkeypatch)
    st.jobs = 2
    out = st.sh([sys.executable, "-c", "import sys; print('rows'); print('step 3/4', file=sys.stderr)"], "one.log",
                echo=True)
    said = capsys.readouterr().out
    assert out == "rows\n"
    assert f"   its progress: tail -f {st.logs / 'one.log'}\n" in said and "   done in 0 s: one.log\n" in said
    assert "    step 3/4" not in said and "step 3/4\n" in (st.logs / "one.log").read_text()
    assert [c["log"] for c in json.loads(st.manifest_path.read_text())["commands"]] == ["runs/study/logs/one.log"]
    st.jobs = 1
    st.sh([sys.executable, "-c", "import sys; print('step 4/4', file=sys.stderr)"], "two.log", echo=True)
    said = capsys.readouterr().out
    assert "    step 4/4\n" in said and "tail -f" not in said
