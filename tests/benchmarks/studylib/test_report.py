"""benchmarks/studylib/report.py: the report's tables, rendered from the result files the parts write."""

from __future__ import annotations

from pathlib import Path

from benchmarks.studylib import report, settings
from tests.benchmarks.studylib.conftest import write_csv

ROOT = Path(__file__).resolve().parents[3]


def test_report_renders_tables_from_the_result_files(tmp_path):
    # Two seeds of Table 2 and one of the causal LM, in the CSV format the parts write.
    res = tmp_path / "results"
    res.mkdir()
    write_csv(res / "table2-seeds.csv",
               "seed,method,mean_accuracy,min_accuracy,configs,train_seconds,total_seconds,adapters,"
               "gap_to_per_config_pt,hypervolume",
               "0,coa,0.79,0.78,2,500.0,1200.0,1,-0.5,0.67", "0,per-config,0.795,0.79,2,1400.0,1400.0,2,0.0,0.68",
               "1,coa,0.78,0.77,2,520.0,1300.0,1,-1.5,0.65", "1,per-config,0.795,0.79,2,1500.0,1500.0,2,0.0,0.68")
    write_csv(res / "table2.csv",
               "method,seeds,mean_accuracy,mean_accuracy_std,gap_to_per_config_pt,gap_to_per_config_pt_std,"
               "hypervolume,hypervolume_std,train_seconds,train_seconds_std",
               "coa,2,0.785,0.005,-1.0,0.5,0.66,0.01,510.0,10.0", "per-config,2,0.795,0.0,0.0,0.0,0.68,0.0,1450.0,50.0")
    write_csv(res / "causal-lm-per-config.csv", "seed,method,budget,config_id,avg_bits,perplexity,loss",
               "0,per-config,3.0,a,3.0,60.0,4.1", "0,per-config,4.0,b,4.0,30.0,3.4",
               "0,coa,3.0,a,3.0,120.0,4.8", "0,coa,4.0,b,4.0,36.0,3.58")
    write_csv(res / "causal-lm.csv", "method,seeds,mean_perplexity,mean_perplexity_std,ratio_to_per_config,"
               "ratio_to_per_config_std,train_seconds,train_seconds_std",
               "per-config,1,45.0,0.0,1.0,0.0,2600.0,0.0", "coa,1,78.0,0.0,1.6,0.0,1500.0,0.0")
    (res / "table2.png").write_bytes(b"")
    (res / "report-template.md").write_text("<!-- a note -->\n# R\n{{table2}}\n{{plot:table2}}\n{{causal-lm}}\n"
                                            "{{seen-unseen}}\n")
    lines = report.render_report(res, tmp_path / "docs" / "results.md").splitlines()
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

def test_the_headroom_table_shows_the_spread_of_g_where_there_is_a_g(tmp_path):
    # Two seeds of shared (no G), a coa variant with G and G_match, one seed of another: as headroom writes them.
    res = tmp_path / "results"
    res.mkdir()
    write_csv(res / "headroom-summary.csv",
               "method,set,seeds,configs,mean_loss,gap_closed,gap_closed_std,gap_closed_match,gap_closed_match_std,"
               "unseen_vs_seen_line_pct",
               "shared,seen,2,3,4.8297,,,,,", "shared,unseen,2,8,4.2188,,,,,-6.12907",
               "coa-bank,seen,2,3,3.95352,0.95846,0.02113,0.05415,0.01847,",
               "coa-bank,unseen,2,8,4.00629,0.64332,0.00262,0.01452,0.00339,2.72085",
               "coa,seen,1,3,6.04735,-0.29398,0.0,,,", "coa,unseen,1,8,4.1864,0.07221,0.0,,,-16.34288")
    write_csv(res / "headroom-seconds.csv", "method,seeds,train_seconds,train_seconds_std", "coa-bank,2,1365.0,10.0")
    (res / "report-template.md").write_text("{{headroom}}\n")
    lines = report.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[2:] == ["| coa | 6.047 | -0.29 |  | 4.186 | 0.07 |  | -16.3 % |  |",  # one seed: no spread
                         "| shared | 4.830 |  |  | 4.219 |  |  | -6.1 % |  |",
                         "| coa-bank | 3.954 | 0.96 ± 0.02 | 0.05 ± 0.02 | 4.006 | 0.64 ± 0.00 | 0.01 ± 0.00 | 2.7 % "
                         "| 1,365 |"]

def test_the_residual_span_table_shows_what_each_correction_removes(tmp_path):
    res = tmp_path / "results"
    res.mkdir()
    write_csv(res / "headroom-span.csv", "rank,set,avg_bits,shared,best_core,own_top_r,own_top_4r,reach",
               "16,seen,3.0012,0.97140,0.95740,0.89000,0.66830,0.38727")
    (res / "report-template.md").write_text("{{headroom-span}}\n")
    lines = report.render_report(res, tmp_path / "docs" / "results.md").splitlines()
    assert lines[2] == "| 16 | seen | 3.00 | 2.9 % | 4.3 % | 11.0 % | 33.2 % | 0.39 |"
    assert "headroom-span" in settings.PARTS
