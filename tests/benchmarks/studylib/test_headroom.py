"""benchmarks/studylib/headroom.py: the headroom testbed's bookkeeping (G with exact answers, seed records,
pairs, curves, excluded configurations), its full-size pass, its search ablation and the span part."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest

from benchmarks.studylib import common, headroom, report, runner, settings
from tests.benchmarks.studylib.conftest import study_in, write_csv

ROOT = Path(__file__).resolve().parents[3]


def test_gap_closed_and_the_headroom_rows_have_exact_answers():
    assert headroom.gap_closed(shared=5.0, coa=4.5, per_config=4.0) == 0.5
    assert headroom.gap_closed(shared=5.0, coa=5.5, per_config=4.0) == -0.5  # worse than shared
    assert headroom.gap_closed(shared=4.0, coa=3.9, per_config=4.0) is None  # no gap to close
    row = lambda loss, bits: {"loss": loss, "avg_bits": bits}  # noqa: E731
    losses = {"per-config": {"a": row(4.0, 3.0), "u1": row(4.2, 3.2)},
              "shared": {"a": row(5.0, 3.0), "u1": row(5.2, 3.2), "u2": row(5.4, 3.4)},
              "coa": {"a": row(4.25, 3.0), "u1": row(5.0, 3.2), "u2": row(5.0, 3.4)}}
    rows = headroom.headroom_rows(7, losses, seen=["a"], budgets=[3.0], unseen=["u1", "u2"])
    coa = {r["config_id"]: r for r in rows if r["method"] == "coa"}
    assert coa["a"] == {"method": "coa", "seed": 7, "set": "seen", "budget": 3.0, "config_id": "a",
                        "avg_bits": 3.0, "loss": 4.25, "gap_closed": 0.75, "gap_closed_match": None}
    assert coa["u1"]["gap_closed"] == pytest.approx(0.2) and coa["u1"]["budget"] is None
    assert coa["u2"]["gap_closed"] is None  # per-config has no adapter for u2
    assert all(r["gap_closed"] is None for r in rows if r["method"] != "coa")
    assert len(rows) == 2 + 3 + 3
    summary = {(r["method"], r["set"]): r for r in headroom.headroom_summary(rows)}
    assert summary[("coa", "seen")]["gap_closed"] == 0.75 and summary[("coa", "seen")]["configs"] == 1
    assert summary[("coa", "unseen")]["mean_loss"] == 5.0 and summary[("coa", "unseen")]["gap_closed"] == pytest.approx(0.2)
    assert summary[("shared", "unseen")]["gap_closed"] is None and summary[("per-config", "unseen")]["configs"] == 1

def test_a_coa_variant_is_also_scored_against_the_shared_variant_with_its_option():
    """G_match: coa-x against shared-x (the same option given to shared), beside G against plain shared."""
    row = lambda loss: {"loss": loss, "avg_bits": 3.0}  # noqa: E731
    losses = {"per-config": {"a": row(4.0)}, "shared": {"a": row(6.0)}, "shared-x": {"a": row(5.0)},
              "coa-x": {"a": row(4.5)}, "coa": {"a": row(5.5)}}
    losses["per-config-x"] = {"a": row(3.0)}
    rows = headroom.headroom_rows(0, losses, seen=["a"], budgets=[3.0], unseen=[],
                               match={"coa-x": ("shared-x", "per-config-x")})
    by = {r["method"]: r for r in rows}
    assert by["coa-x"]["gap_closed"] == 0.75 and by["coa-x"]["gap_closed_match"] == 0.25  # (5 - 4.5) / (5 - 3)
    assert by["coa"]["gap_closed"] == 0.25 and by["coa"]["gap_closed_match"] is None
    assert by["shared-x"]["gap_closed"] == 0.5  # what the option alone gives shared
    assert by["per-config-x"]["gap_closed"] is None  # a baseline
    summary = {r["method"]: r for r in headroom.headroom_summary(rows)}
    assert summary["coa-x"]["gap_closed_match"] == 0.25 and summary["coa-x"]["gap_closed_match_std"] == 0.0
    assert settings.HEADROOM_MATCH["coa-residual-fit"] == ("shared-residual", "per-config-residual")
    assert all(settings.HEADROOM_VARIANTS[sh][0] == "shared" and pc in settings.HEADROOM_PER_CONFIG
               for sh, pc in settings.HEADROOM_MATCH.values())

def test_every_headroom_variant_is_a_valid_configuration_of_the_testbed():
    from coalora.pipeline.config import load_config

    for name, (method, sets) in settings.HEADROOM_VARIANTS.items():
        cfg = load_config(settings.ROOT / settings.LOWBIT, sets)
        assert method in ("coa", "shared"), name
        assert cfg.lora.bank == (16 if "bank" in name else 0), name

def test_exclude_trained_keeps_the_same_configurations_for_rows_and_curves():
    # Positions count seen then unseen: 1 is seen "b" (budget 3.0), 4 is unseen "v".
    hits = {"coa": [1, 4], "shared": [1]}
    seen, budgets, unseen, drop = headroom.kept_configs(hits, ["a", "b", "c"], [2.75, 3.0, 3.25], ["u", "v"])
    assert (seen, budgets, unseen) == (["a", "c"], [2.75, 3.25], ["u"])
    assert drop == {"b": ["coa", "shared"], "v": ["coa"]}  # each dropped id names only those that trained on it
    assert headroom.kept_configs({}, ["a"], [3.0], ["u"]) == (["a"], [3.0], ["u"], {})

def test_seed_records_keep_every_calls_methods_and_leave_out_each_seeds_excluded_configs(tmp_path):
    def row(method, seed, cid, loss):
        return {"method": method, "seed": seed, "config_id": cid, "loss": loss}

    # Seed 0: a first call with two methods; a second with one of them again (its rows replace the first's)
    # and a new one, which trained on "b" (--exclude-trained).
    s0 = tmp_path / "headroom-s0.json"
    headroom.record_seed(s0, {"rows": [row("shared", 0, "a", 5.0), row("shared", 0, "b", 4.0), row("coa", 0, "a", 4.5)],
                           "seconds": [{"method": "shared", "seed": 0, "train_seconds": 10.0}]}, {})
    headroom.record_seed(s0, {"rows": [row("coa", 0, "a", 4.4), row("coa", 0, "b", 3.9), row("coa-bank", 0, "a", 4.0)]},
                      {"b": ["coa-bank"]})
    # Seed 10 (ordered after 2 by number, not by name), seed 2 with its own exclusion; a file of another
    # kind (the testbed's seen configurations) is not a record.
    headroom.record_seed(tmp_path / "headroom-s10.json", {"rows": [row("shared", 10, "a", 5.5)]}, {})
    headroom.record_seed(tmp_path / "headroom-s2.json", {"rows": [row("shared", 2, "a", 5.2), row("shared", 2, "c", 5.1)]},
                      {"c": ["coa"], "b": ["coa"]})
    (tmp_path / "headroom-seen.json").write_text("[]")
    tables, excluded = headroom.seed_records(tmp_path)
    assert [(r["method"], r["seed"], r["config_id"], r["loss"]) for r in tables["rows"]] == [
        ("shared", 0, "a", 5.0), ("coa", 0, "a", 4.4), ("coa-bank", 0, "a", 4.0),  # seed 0 without b, for all
        ("shared", 2, "a", 5.2), ("shared", 10, "a", 5.5)]
    assert tables["seconds"] == [{"method": "shared", "seed": 0, "train_seconds": 10.0}]  # kept by the second call
    assert excluded == {"b": ["coa", "coa-bank"], "c": ["coa"]}
    assert headroom.seed_records(tmp_path / "nothing") == ({}, {})

def test_headroom_pairs_compare_a_variant_with_its_shared_variant_seed_by_seed(tmp_path):
    ev = lambda *losses: [{"loss": x} for x in losses]  # noqa: E731
    evals = {("coa-x", 0, "seen"): ev(4.0, 5.0), ("shared-x", 0, "seen"): ev(4.5, 4.9),
             ("coa-x", 1, "seen"): ev(3.0, 3.0), ("shared-x", 1, "seen"): ev(3.5, 3.5),
             ("coa-x", 2, "unseen"): ev(1.0)}  # seed 2 has no shared-x: no row
    rows = headroom.headroom_pairs(evals, {"coa-x": "shared-x"})
    assert [(r["seed"], r["set"], r["lower_on"], r["configs"]) for r in rows] == [(0, "seen", 1, 2), (1, "seen", 2, 2)]
    assert rows[0]["difference"] == pytest.approx(-0.2) and rows[1]["loss_against"] == 3.5
    evals[("coa-x", 1, "seen")][0]["config_id"] = "gone"
    (_, one) = headroom.headroom_pairs(evals, {"coa-x": "shared-x"}, exclude={"gone"})
    assert one["configs"] == 1 and one["loss"] == 3.0 and one["loss_against"] == 3.5
    # The evaluations are found in the runs directory by name, whatever the seed.
    st = runner.Study.__new__(runner.Study)
    st.runs = tmp_path
    (tmp_path / "eval-hr-coa-x-s1-unseen.json").write_text(json.dumps(ev(2.0)))
    (tmp_path / "eval-hr-coa-x-s1-budgets.json").write_text("[]")  # not a headroom set
    assert headroom._pair_evals(st, ["coa-x"]) == {("coa-x", 1, "unseen"): ev(2.0)}

def test_learning_curves_score_each_step_on_per_configs_configurations(tmp_path):
    assert headroom.snapshot_steps(60) == [15, 30, 45] and headroom.snapshot_steps(2) == [1]
    row = lambda loss: {"loss": loss, "avg_bits": 3.0}  # noqa: E731
    by_step = {
        15: {"per-config": {"a": row(5.0), "u1": row(5.0)}, "shared": {"a": row(7.0), "u1": row(7.0), "u2": row(9.0)},
             "coa": {"a": row(6.0), "u1": row(6.5), "u2": row(1.0)}},
        60: {"per-config": {"a": row(4.0), "u1": row(4.0)}, "shared": {"a": row(5.0), "u1": row(5.0), "u2": row(9.0)},
             "coa": {"a": row(4.25), "u1": row(4.5), "u2": row(1.0)}},
    }
    rows = headroom.headroom_curves(3, by_step, seen=["a"], budgets=[3.0], unseen=["u1", "u2"])
    got = {(r["step"], r["method"], r["set"]): r for r in rows}
    # u2 has no per-config adapter: it is in no curve, so every method's unseen mean is over u1 alone.
    assert got[(15, "coa", "seen")]["mean_loss"] == 6.0 and got[(15, "coa", "seen")]["gap_closed"] == 0.5
    assert got[(15, "coa", "unseen")]["mean_loss"] == 6.5 and got[(15, "coa", "unseen")]["gap_closed"] == 0.25
    assert got[(60, "coa", "seen")]["gap_closed"] == 0.75 and got[(60, "shared", "unseen")]["mean_loss"] == 5.0
    assert {r["seed"] for r in rows} == {3} and len(rows) == 2 * 3 * 2
    res = tmp_path / "results"
    res.mkdir()
    (res / "report-template.md").write_text("{{headroom-curves}}\n")
    assert report.render_report(res, tmp_path / "r.md") == "_Not run yet: `python benchmarks/study.py --parts headroom`._\n"
    st = type("St", (), {"results": res})()
    runner.Study.write_csv(st, "headroom-curves.csv", rows)
    lines = report.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[0] == "| method | set | step 15 | step 60 |"
    assert "| coa | seen | 6.000 (G 0.50) | 4.250 (G 0.75) |" in lines
    assert "| shared | unseen | 7.000 | 5.000 |" in lines

def test_the_headroom_search_runs_a_valid_configuration_and_reports_it(tmp_path):
    from coalora.pipeline.config import load_config

    sets = settings.HEADROOM_SEARCH_SETS + settings.HEADROOM_VARIANTS[settings.HEADROOM_SEARCH_VARIANT][1]
    cfg = load_config(settings.ROOT / settings.LOWBIT, sets + ["search.method=frozen", "run.steps_per_round=30"])
    assert (cfg.run.rounds, cfg.search.bits_range, cfg.hypernet.residual_fit) == (4, (2.7, 4.5), 200)
    assert set(settings.HEADROOM_SEARCH_METHODS) == {"gp", "frozen", "random-extend"}
    res = tmp_path / "results"
    res.mkdir()
    write_csv(res / "headroom-search-seeds.csv",
               "seed,method,rounds,evaluations,distinct_configs,final_set_size,final_hypervolume,seen_mean_loss,"
               "unseen_mean_loss,train_seconds,total_seconds",
               "0,gp,4,40,30,12,0.5,4.1,4.0,600,900", "1,gp,4,42,31,13,0.6,4.3,4.2,620,950")
    write_csv(res / "headroom-search.csv", "method,seeds,seen_mean_loss,seen_mean_loss_std,unseen_mean_loss,"
               "unseen_mean_loss_std,final_hypervolume,final_hypervolume_std",
               "gp,2,4.2,0.1,4.1,0.1,0.55,0.05")
    (res / "report-template.md").write_text("{{headroom-search}}\n")
    lines = report.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[2] == ("| gp | 4.100 / 4.300, 4.200 ± 0.100 | 4.000 / 4.200, 4.100 ± 0.100 | 0.500 / 0.600, "
                        "0.550 ± 0.050 | 40 / 42 | 12 / 13 | 900 / 950 |")

def test_the_headroom_search_can_run_one_method_a_call_and_keeps_the_others_rows(tmp_path, monkeypatch):
    """``--variants gp`` then ``--variants frozen``: the second call's tables hold both methods (each run
    is an hour on 2 cores, so they may be run in separate calls), and a method run again replaces its rows."""
    from orchestration.store import RunStore

    st = study_in(tmp_path)
    monkeypatch.setattr(headroom, "_seen_configs", lambda st, o, keep=None: st.runs / "seen.json")
    monkeypatch.setattr(headroom, "_unseen_configs", lambda st, o: st.runs / "unseen.json")
    monkeypatch.setattr(headroom, "trained_on", lambda runs, paths: {})
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
    headroom.headroom_search(st, [0])
    st.variants = ["frozen"]
    hv["gp"] = [0.1, 0.2]  # not run in this call: gp's rows must stay as the first call wrote them
    agg = {r["method"]: r for r in headroom.headroom_search(st, [0])["headroom_search"]}
    assert ran == ["hrs-gp-s0", "hrs-frozen-s0"]
    assert agg["gp"]["final_hypervolume"] == pytest.approx(0.5) and agg["frozen"]["final_hypervolume"] == 0.45
    rows = common.read_csv(st.results / "headroom-search-seeds.csv")
    assert [(r["seed"], r["method"], r["rounds"], r["final_set_size"]) for r in rows] == [(0, "gp", 2, 9),
                                                                                          (0, "frozen", 2, 9)]
    assert (st.results / "headroom-search-seeds.csv").read_text().splitlines()[1].startswith("0,gp,2,")
    curves = common.read_csv(st.results / "headroom-search-curves.csv")
    assert [(r["method"], r["round"], r["hypervolume"]) for r in curves] == [
        ("frozen", 0, 0.4), ("frozen", 1, 0.45), ("gp", 0, 0.4), ("gp", 1, 0.5)]
    assert (st.results / "headroom-search.png").is_file()
    st.variants = ["coa-bank"]
    with pytest.raises(SystemExit, match="none of headroom-search's methods"):
        headroom.headroom_search(st, [0])
    st.variants = ["gp"]  # and the headroom part has no variant of that name
    with pytest.raises(SystemExit, match="none of headroom's variants"):
        headroom.headroom(st, [0])

def test_unseen_configurations_are_compared_with_a_line_through_the_seen_ones():
    """Through (3.0 bits, 5.0) and (3.5 bits, 4.0) the line predicts 4.5 at 3.25 bits: 4.95 there is 10 %
    above it (seed 0), 4.5 is on it (seed 1); the mean over seeds is 5 %."""
    rows = []
    for seed, unseen_loss in ((0, 4.95), (1, 4.5)):
        rows += [{"method": "coa", "seed": seed, "set": "seen", "avg_bits": 3.0, "loss": 5.0},
                 {"method": "coa", "seed": seed, "set": "seen", "avg_bits": 3.5, "loss": 4.0},
                 {"method": "coa", "seed": seed, "set": "unseen", "avg_bits": 3.25, "loss": unseen_loss}]
    by_set = {r["set"]: r for r in headroom.headroom_summary(rows)}
    assert by_set["unseen"]["unseen_vs_seen_line_pct"] == pytest.approx(5.0)
    assert "unseen_vs_seen_line_pct" not in by_set["seen"]
    one = [r for r in rows if not (r["set"] == "seen" and r["avg_bits"] == 3.5)]
    assert {r["set"]: r for r in headroom.headroom_summary(one)}["unseen"]["unseen_vs_seen_line_pct"] is None

def test_the_span_part_runs_each_analysis_once_and_splits_the_bank_table(tmp_path, monkeypatch):
    st = study_in(tmp_path)
    ran = []
    header = "rank,set,avg_bits,shared,best_core,own_top_r,own_top_4r,reach"

    def sh(cmd, log, echo=False):
        ran.append(log)
        csv_path = Path(cmd[cmd.index("--csv") + 1])
        rank = cmd[cmd.index("--rank") + 1]
        if "--bank" in cmd:
            write_csv(csv_path, header + ",shared_bank,best_core_bank,reach_bank",
                       f"{rank},unseen,3.1,0.99,0.98,0.89,0.68,0.15,0.98,0.96,0.35")
        else:
            write_csv(csv_path, header, f"{rank},unseen,3.1,0.99,0.98,0.89,0.68,0.15")
        return ""

    monkeypatch.setattr(st, "sh", sh)
    headroom.headroom_span(st, [0])
    assert ran == ["headroom-span-r16.log", "headroom-span-r64.log", "headroom-span-bank16.log"]
    assert (st.results / "headroom-span.csv").read_text().splitlines()[1:] == [
        "16,unseen,3.1,0.99,0.98,0.89,0.68,0.15", "64,unseen,3.1,0.99,0.98,0.89,0.68,0.15"]  # as the script wrote
    headroom.headroom_span(st, [0])  # every table is there: nothing runs again
    assert len(ran) == 3
    (st.results / "report-template.md").write_text("{{headroom-span-bank}}\n")
    lines = report.render_report(st.results, tmp_path / "r.md").splitlines()
    assert lines[2] == "| 16 | unseen | 3.10 | 1.0 % | 2.0 % | 2.0 % | 4.0 % | 11.0 % | 0.15 | 0.35 |"

def test_a_units_evaluations_are_named_once_and_read_back_by_step_and_set(tmp_path, capsys):
    """The cache names of a unit's evaluations (finals, then each snapshot of a curve method when it has them
    all) are made in one place; the curve reads the rows back by (step, set), per-config's unseen adapters
    from their own unit, and a method without its snapshots means no curve."""
    from coalora.pipeline.methods import snapshot_dir

    st = study_in(tmp_path)
    seen, unseen = Path("seen.json"), Path("unseen.json")
    for k in (30, 60):
        snapshot_dir(st.runs / "hr-shared-s0", k).mkdir(parents=True)
    snapshot_dir(st.runs / "hr-per-config-s0", 30).mkdir(parents=True)  # 60 is missing
    names = lambda calls: [(e.step, e.set, e.name) for e in calls]  # noqa: E731
    assert names(headroom._unit_evaluations(st, "hr-shared-s0", None, True, [30, 60], seen, unseen)) == [
        (None, "seen", "hr-shared-s0-seen"), (None, "unseen", "hr-shared-s0-unseen"),
        (30, "seen", "hr-shared-s0-seen-step30"), (30, "unseen", "hr-shared-s0-unseen-step30"),
        (60, "seen", "hr-shared-s0-seen-step60"), (60, "unseen", "hr-shared-s0-unseen-step60")]
    assert headroom._unit_evaluations(st, "hr-shared-s0", None, True, [30], seen, unseen)[2].args == (
        "--checkpoint", str(snapshot_dir(st.runs / "hr-shared-s0", 30)), "--config", "seen.json")
    assert names(headroom._unit_evaluations(st, "hr-shared-s0", None, False, [30, 60], seen, unseen)) == [
        (None, "seen", "hr-shared-s0-seen"), (None, "unseen", "hr-shared-s0-unseen")]  # not a curve method
    assert names(headroom._unit_evaluations(st, "hr-per-config-s0", "seen", True, [30, 60], seen, unseen)) == [
        (None, "seen", "hr-per-config-s0")]  # without every snapshot: the final only
    row = lambda cid, loss: {"config_id": cid, "avg_bits": 3.0, "loss": loss}  # noqa: E731
    units = {"shared": headroom.Unit(Path("s"), {(None, "seen"): [row("a", 5.0)], (None, "unseen"): [row("u", 5.0)],
                                                 (30, "seen"): [row("a", 6.0)], (30, "unseen"): [row("u", 7.0)]}),
             "per-config": headroom.Unit(Path("p"), {(None, "seen"): [row("a", 4.0)], (30, "seen"): [row("a", 5.0)]}),
             "per-config-unseen": headroom.Unit(Path("pu"), {(None, "unseen"): [row("u", 4.0)],
                                                             (30, "unseen"): [row("u", 4.5)]})}
    assert units["shared"].rows(30) == [row("a", 6.0), row("u", 7.0)]
    rows_of = functools.partial(headroom.method_rows, units, {name: [name] for name in units})
    assert rows_of("per-config", 30) == [row("a", 5.0), row("u", 4.5)]  # its unseen adapters' unit too
    final = {m: {r["config_id"]: r for r in rows_of(m)} for m in ("shared", "per-config")}
    curves = headroom._headroom_curve(0, rows_of, ["shared", "per-config"], [30], 120, final, ["a"], [3.0], ["u"])
    got = {(r["step"], r["method"], r["set"]): r["mean_loss"] for r in curves}
    assert got == {(30, "shared", "seen"): 6.0, (30, "shared", "unseen"): 7.0, (30, "per-config", "seen"): 5.0,
                   (30, "per-config", "unseen"): 4.5, (120, "shared", "seen"): 5.0, (120, "shared", "unseen"): 5.0,
                   (120, "per-config", "seen"): 4.0, (120, "per-config", "unseen"): 4.0}
    units["per-config"] = headroom.Unit(Path("hr-per-config-s0"), {(None, "seen"): [row("a", 4.0)]})
    assert headroom._headroom_curve(0, rows_of, ["shared", "per-config"], [30], 120, final, ["a"], [3.0], ["u"]) == []
    assert "per-config: no snapshot at step 30" in capsys.readouterr().out


@pytest.mark.parametrize("jobs", [1, 2])
def test_the_full_size_pass_keeps_its_runs_and_tables_apart_from_the_mid_size_ones(tmp_path, monkeypatch,
                                                                                    jobs):
    """``--parts headroom-full``: the headroom part at the testbed's own size, with the same run names under
    ``runs/study-full/`` and its tables in ``headroom-full*.csv``; the mid-size pass's tables are left as they
    were, and the report renders the full pass from its own files. Every command is answered here (each is
    an hour of SmolLM2): the bookkeeping around them is what is tested, with exact G. Each method's
    evaluations, finals and learning curves alike, follow its own training; with ``--jobs 2`` those units
    run side by side (no evaluation is left to run one at a time after them), and the tables are the same."""
    st = study_in(tmp_path)
    st.jobs = jobs
    mid = st.results / "headroom-summary.csv"
    mid.write_text("method,set,mean_loss\nshared,seen,5.0\n")  # the mid-size pass's table: must stay
    trained, commands = _answer_the_full_pass(st, monkeypatch)
    st.variants = ["coa-residual-fit-random", "shared-residual-random"]
    runs = st.runs
    summary = headroom.headroom_full(st, [0])["headroom-full"]
    assert st.runs == runs and st.logs == runs / "logs"  # the next part runs where it should
    full = tmp_path / "runs" / "study-full"
    # per-config and per-config-residual: an adapter a unit, for each budget and 3 unseen configurations
    per_config = [f"hr-{m}-{c}-s0" for m in ("per-config", "per-config-residual")
                  for c in ("b2.75", "b3", "b3.25", "b3.5", "unseen0", "unseen1", "unseen2")]
    assert sorted(p.name for p in trained) == sorted(["hr-shared-s0", "hr-coa-residual-fit-random-s0",
                                                      "hr-shared-residual-random-s0", *per_config])
    assert all(p.parent == full for p in trained) and (full / "headroom-s0.json").is_file()
    # Finals: 14 per-config adapters + 3 others × (seen, unseen); curves: 3 snapshots of each (every method
    # here is one of HEADROOM_CURVES). With --jobs 2 every one ran in the pool, none after it.
    assert [c for c, _, _ in commands].count("evaluate") == (14 + 3 * 2) * 4
    assert all(main for _, main, _ in commands) if jobs == 1 else not any(main for _, main, _ in commands)
    # Each unit's evaluations follow its own training (with one job, before the next training starts).
    logs = [log for _, _, log in commands]
    assert logs.index("eval-hr-shared-s0-unseen-step90.log") < logs.index("train-hr-per-config-b2.75-s0.log") or jobs > 1
    assert json.loads((full / "headroom-seen-1.json").read_text()) == [["b1"]]  # per-config's 3-bit adapter's
    assert logs.index("train-hr-coa-residual-fit-random-s0.log") < logs.index(
        "eval-hr-coa-residual-fit-random-s0-seen.log")
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
    pairs = common.read_csv(st.results / "headroom-full-pairs.csv")
    assert [(r["set"], r["configs"], r["difference"]) for r in pairs] == [("seen", 4, pytest.approx(-0.3)),
                                                                         ("unseen", 8, pytest.approx(-0.3))]
    curves = {(r["method"], r["set"], r["step"]): r for r in common.read_csv(st.results / "headroom-full-curves.csv")}
    assert curves[("shared", "seen", 30)]["mean_loss"] == pytest.approx(5.9)
    assert curves[("coa-residual-fit-random", "seen", 30)]["gap_closed"] == pytest.approx(0.5)
    assert (st.results / "headroom-full-curves.png").is_file()
    (st.results / "report-template.md").write_text("{{headroom-full}}\n\n{{headroom-full-curves}}\n")
    text = report.render_report(st.results, tmp_path / "r.md")
    line = next(x for x in text.splitlines() if x.startswith("| coa-residual-fit-random "))
    assert "0.50" in line and "0.30" in line and "4.500" in line, line
    line = next(x for x in text.splitlines() if x.startswith("| shared | seen |"))
    assert line.split(" | ")[2:] == ["5.900", "5.600", "5.300", "5.000 |"], line

def test_a_full_size_pass_stopped_midway_resumes_on_another_machine_from_what_it_kept(tmp_path, monkeypatch):
    """A seed of the full pass is hours; the machine may go before it ends, taking ``runs/`` with it. Each
    finished unit (a training and every evaluation of it) is kept, without its weights, in
    ``benchmarks/results/study/headroom-full-runs/``, which is committed. A later call on a machine with no
    runs at all restores those units and runs only the rest; the tables are those of an unbroken pass."""

    from coalora.pipeline.methods import snapshot_dir

    variants = ["coa-residual-fit-random", "shared-residual-random"]
    st = study_in(tmp_path)
    trained, _ = _answer_the_full_pass(st, monkeypatch, fail=("eval-hr-per-config-residual-b3-s0-step60.log",))
    st.variants = variants
    with pytest.raises(SystemExit, match="eval-hr-per-config-residual-b3-s0-step60"):
        headroom.headroom_full(st, [0])
    keep = st.results / "headroom-full-runs"
    # One job: shared, per-config's 7 adapters and per-config-residual's first finished before the
    # evaluation of its second failed, and nothing started after it.
    first = ["hr-shared-s0", *(f"hr-per-config-{c}-s0" for c in ("b2.75", "b3", "b3.25", "b3.5", "unseen0",
                                                                "unseen1", "unseen2")), "hr-per-config-residual-b2.75-s0"]
    assert sorted(p.name for p in keep.iterdir() if p.name.startswith("hr-")) == sorted(first)
    assert len(trained) == 10 and not list(keep.rglob("*.safetensors"))
    assert (keep / "hr-shared-s0" / "meta.json").is_file() and snapshot_dir(keep / "hr-shared-s0", 90).is_dir()
    assert len(list(keep.glob("eval-*.json"))) == 8 + 8 * 4  # shared: 2 sets × 4 steps; a per-config adapter: 4
    assert (keep / "logs" / "train-hr-shared-s0.log").is_file() and (keep / "logs" / "eval-hr-shared-s0-seen.log").is_file()
    assert not (keep / "eval-hr-per-config-residual-b3-s0.json").exists()  # its unit did not finish
    # Another machine: a clone holds the kept directory and nothing of runs/ or of the user's cache.
    shutil.rmtree(tmp_path / "runs")
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    st = study_in(tmp_path)
    trained, commands = _answer_the_full_pass(st, monkeypatch)
    st.variants = variants
    summary = headroom.headroom_full(st, [0])["headroom-full"]
    assert sorted(p.name for p in trained) == sorted([
        "hr-coa-residual-fit-random-s0", "hr-shared-residual-random-s0",
        *(f"hr-per-config-residual-{c}-s0" for c in ("b3", "b3.25", "b3.5", "unseen0", "unseen1", "unseen2"))])
    ran = [log for _, _, log in commands]
    assert not any(f"-{u}." in log or f"-{u}-" in log for log in ran for u in first)
    assert len(ran) == 8 + 6 * 4 + 2 * 8  # the 8 trainings left and their evaluations
    got = {(r["method"], r["set"]): r for r in summary}
    for set_name in ("seen", "unseen"):  # as in an unbroken pass
        assert got[("coa-residual-fit-random", set_name)]["gap_closed"] == pytest.approx(0.5)
        assert got[("coa-residual-fit-random", set_name)]["gap_closed_match"] == pytest.approx(0.3)
    curves = {(r["method"], r["set"], r["step"]): r for r in common.read_csv(st.results / "headroom-full-curves.csv")}
    assert curves[("shared", "seen", 30)]["mean_loss"] == pytest.approx(5.9)
    assert len([p for p in keep.iterdir() if p.name.startswith("hr-")]) == 17
    assert json.loads((tmp_path / "cache" / "errors" / "SmolLM2-table.json").read_text()) == {"sha1": "..."}
    logged = {c["log"].rsplit("/", 1)[1] for c in st.manifest["commands"]}  # the restored commands too
    assert {"train-hr-shared-s0.log", "eval-hr-per-config-unseen2-s0-step90.log"} <= logged
    seconds = {r["method"]: r["train_seconds"] for r in common.read_csv(st.results / "headroom-full-seconds.csv")}
    # read from the restored metadata: per-config's is the sum over its 4 budgets' adapters
    assert seconds["shared"] == 10.0 and seconds["per-config"] == 40.0 and seconds["per-config-unseen"] == 30.0


def test_an_error_table_is_kept_with_its_sidecar_and_a_kept_one_is_left_alone(tmp_path):
    keep, cache = tmp_path / "keep", tmp_path / "cache"
    table = _json_file(cache / "m-abc.npy", "table")
    _json_file(cache / "m-abc.json", "sidecar")
    headroom.keep_error_table(keep, table)
    assert sorted(p.name for p in (keep / "errors").iterdir()) == ["m-abc.json", "m-abc.npy"]
    assert json.loads((keep / "errors" / "m-abc.json").read_text()) == "sidecar"
    _json_file(cache / "m-abc.json", "recomputed")
    headroom.keep_error_table(keep, table)  # what was kept stays: a table is kept once
    assert json.loads((keep / "errors" / "m-abc.json").read_text()) == "sidecar"
    with pytest.raises(FileNotFoundError):  # a table that is not there is a bug of the caller, not skipped
        headroom.keep_error_table(keep, cache / "other.npy")


def test_the_seen_allocations_keep_their_error_table_and_a_second_call_loads_no_model(tmp_path, monkeypatch):
    """The real ``_seen_configs`` on a tiny Llama: the error table it computed is kept beside the runs with its
    sidecar, byte for byte; once the file exists, a call (a resumed pass) neither loads the model nor keeps
    anything again."""
    from coalora.pipeline import experiment

    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    st, keep = study_in(tmp_path), tmp_path / "keep"
    st.runs.mkdir(parents=True, exist_ok=True)
    overrides = ["model.name=tiny-llama", "eval.budgets=[3.0, 3.5]"]
    path = headroom._seen_configs(st, overrides, keep)
    assert len(json.loads(path.read_text())) == 2  # an allocation per budget
    cached = sorted((tmp_path / "cache" / "errors").iterdir())
    assert [p.suffix for p in cached] == [".json", ".npy"] and cached[0].name.startswith("tiny-llama_")  # name@weights
    assert [(keep / "errors" / p.name).read_bytes() for p in cached] == [p.read_bytes() for p in cached]
    shutil.rmtree(keep)

    def no_model(cfg):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(experiment, "load_base", no_model)
    assert headroom._seen_configs(st, overrides, keep) == path and not keep.exists()


def test_kept_error_tables_go_into_the_cache_only_where_it_lacks_them(tmp_path, monkeypatch):
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path / "cache"))
    keep = tmp_path / "keep"
    assert headroom.restore_error_tables(keep) == []  # nothing kept yet
    _json_file(keep / "errors" / "a.json", "kept")
    _json_file(keep / "errors" / "b.json", "kept")
    _json_file(tmp_path / "cache" / "errors" / "b.json", "the user's")
    assert headroom.restore_error_tables(keep) == ["a.json"]
    assert json.loads((tmp_path / "cache" / "errors" / "a.json").read_text()) == "kept"
    assert json.loads((tmp_path / "cache" / "errors" / "b.json").read_text()) == "the user's"


def _answer_the_full_pass(st, monkeypatch, fail: tuple[str, ...] = ()) -> tuple[list[Path], list[tuple]]:
    """Answer the full-size pass's commands as SmolLM2 would in hours: every training writes what the tables
    read (with weights), every evaluation of a method returns its loss, falling by 0.01 nats a step to its
    final value; an evaluation whose log is in ``fail`` fails. Returns the trainings' outputs and the
    commands (name, run on the main thread?, log), as they ran."""
    import re
    import threading

    from coalora.pipeline.methods import snapshot_dir

    seen_ids, unseen_ids = [f"b{i}" for i in range(4)], [f"u{i}" for i in range(8)]
    monkeypatch.setattr(headroom, "_unseen_configs", lambda st, o: _json_file(st.runs / "headroom-unseen.json",
                                                                               [[c] for c in unseen_ids]))
    cache = st.runs.parent / "a-cache"  # where the real one finds SmolLM2's table: the user's cache

    def seen_configs(st, overrides, keep=None):  # as the real one: the table kept, then the file written, once
        path = st.runs / "headroom-seen.json"
        if not path.is_file():
            if keep is not None:
                _json_file(cache / "SmolLM2-table.npy", "the table")
                headroom.keep_error_table(keep, _json_file(cache / "SmolLM2-table.json", {"sha1": "..."}).with_suffix(".npy"))
            _json_file(path, [[c] for c in seen_ids])
        return path

    monkeypatch.setattr(headroom, "_seen_configs", seen_configs)
    monkeypatch.setattr(headroom, "trained_on", lambda outs, paths: {})
    loss = {"shared": 5.0, "per-config": 4.0, "per-config-residual": 3.8, "shared-residual-random": 4.8,
            "coa-residual-fit-random": 4.5}
    trained, commands = [], []

    def fake_coalora(*args, log, echo=False):
        commands.append((args[0], threading.current_thread() is threading.main_thread(), log))
        if log not in fail:  # as Study.sh leaves it
            (st.logs / log).write_text(f"$ coalora {' '.join(args)}\n# exit 0 after 60 s\n")
        a = dict(zip(args[1::2], args[2::2])) if args[0] == "evaluate" else {}
        if args[0] == "train":  # Study.trained's command: what it writes is what the tables read
            out = Path(args[args.index("--out") + 1])
            trained.append(out)
            for k in (30, 60, 90):  # train.snapshots of 120 steps
                snapshot_dir(out, k).mkdir(parents=True)
                (snapshot_dir(out, k) / "trainable.safetensors").write_bytes(b"weights")
            if "--configs" in args:  # per-config: one adapter, for the configuration in that file
                ids = [c[0] for c in json.loads(Path(args[args.index("--configs") + 1]).read_text())]
                _json_file(out / "per_config.json", {"checkpoints": ["c0"], "train_seconds": 10.0, "ids": ids})
            else:
                _json_file(out / "meta.json", {"train_seconds": 10.0, "trainset": []})
                (out / "trainable.safetensors").write_bytes(b"weights")
            return ""
        if log in fail:
            raise SystemExit(f"study: command failed ({log})")
        ckpt = Path(a["--checkpoint"])
        run = next(p for p in [ckpt, *ckpt.parents] if p.name.startswith("hr-"))
        assert run.parent == st.root / "runs" / "study-full", ckpt
        method = re.sub(r"-(b[\d.]+|unseen\d+)$", "", run.name.removeprefix("hr-").removesuffix("-s0"))
        step = int(ckpt.name.removeprefix("step-")) if ckpt != run else 120
        if "--config" in a:
            ids = seen_ids if a["--config"].endswith("headroom-seen.json") else unseen_ids
        else:  # a per-config directory: its own adapter's configuration
            ids = json.loads((run / "per_config.json").read_text())["ids"]
        # The loss falls by 0.01 nats a step to its final value, the same for every method.
        return json.dumps([{"config_id": c, "avg_bits": 3.0 + int(c[1:]) / 10,
                            "loss": loss[method] + (120 - step) / 100} for c in ids])

    monkeypatch.setattr(st, "coalora", fake_coalora)
    return trained, commands


def _json_file(path: Path, value) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))
    return path


def test_the_full_size_pass_refuses_a_set_that_changes_its_size(tmp_path):
    """``--parts headroom-full --set train.steps=60`` would write a mid-size pass into the full-size tables:
    refused before anything runs; a --set that leaves the size alone (the weight cache's cap) is taken."""
    st = study_in(tmp_path)
    st.overrides = ["model.cache_gib=1.5", "train.steps=60", "data.max_eval = 32"]
    with pytest.raises(SystemExit, match=r"--set train.steps=60 data.max_eval = 32 changes it"):
        headroom.headroom_full(st, [0])
    assert not (tmp_path / "runs" / "study-full").exists()
