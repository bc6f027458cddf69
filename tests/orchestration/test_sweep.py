"""A Ray Tune sweep over the per-config baseline at two budgets: one combined Parquet and a plot."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from coalora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_expand_grid_and_overrides():
    from orchestration.sweep import expand_grid, overrides

    grid = expand_grid({"a.b": [1, 2], "c": [[3.0], [4.0]]})
    assert grid == [{"a.b": 1, "c": [3.0]}, {"a.b": 1, "c": [4.0]}, {"a.b": 2, "c": [3.0]}, {"a.b": 2, "c": [4.0]}]
    assert overrides({"eval.budgets": [3.0], "train.method": "coa"}) == ['eval.budgets=[3.0]', 'train.method="coa"']


def test_bad_sweep_is_one_message(tmp_path):
    from orchestration.sweep import load_sweep

    (tmp_path / "s.yaml").write_text(f"base: {ROOT / 'configs/smoke.yaml'}\ngrid:\n  lora.rank: [0]\n")
    with pytest.raises(ConfigError, match="lora.rank: must be a positive integer"):
        load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("base: configs/nope.yaml\n")
    with pytest.raises(ConfigError, match="base: experiment file not found"):
        load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text(f"base: {ROOT / 'configs/smoke.yaml'}\ngridd: {{}}\n")
    with pytest.raises(ConfigError, match="gridd: unknown key"):
        load_sweep(tmp_path / "s.yaml")
    # The same YAML rules as a run's file: a repeated key, an empty file.
    (tmp_path / "s.yaml").write_text(f"base: {ROOT / 'configs/smoke.yaml'}\nbase: other.yaml\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'base' \(lines 1 and 2\)"):
        load_sweep(tmp_path / "s.yaml")
    (tmp_path / "s.yaml").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="s.yaml is empty"):
        load_sweep(tmp_path / "s.yaml")


def test_per_config_sweep_writes_combined_parquet_and_plot(ray_local, tmp_path, monkeypatch):
    from orchestration.sweep import load_sweep, run_sweep

    monkeypatch.chdir(ROOT)
    cfg = load_sweep(ROOT / "configs" / "sweep-smoke.yaml")
    cfg.out_dir = str(tmp_path)
    out = run_sweep(cfg, str(ROOT / "configs" / "smoke.yaml"))
    rows = pq.read_table(out / "sweep.parquet").to_pylist()
    # Two trials (budgets 3.0 and 4.0), one adapter each, each scored on its own configuration.
    assert len(rows) == 2
    assert {r["method"] for r in rows} == {"per-config"}
    assert sorted(r["eval.budgets"] for r in rows) == ["[3.0]", "[4.0]"]
    for r in rows:
        assert r["avg_bits"] <= float(r["eval.budgets"].strip("[]")) + 1e-9
        assert 0.0 <= r["accuracy"] <= 1.0
    assert (out / "sweep.png").stat().st_size > 1000
