"""Sweeps with Ray Tune: many single-process trainings (methods, budgets, seeds, ranks) in parallel.

    python orchestration/sweep.py --config configs/sweep-per-config.yaml [--smoke-test]

A sweep YAML names a base experiment, a grid over its keys (every combination is one trial) and,
optionally, an Optuna search over hyper-parameters. Each trial trains with ``coalora.pipeline.methods`` in its
own Ray worker, evaluates the configurations its method serves (``per-config``: its own; the others:
the allocations at ``eval.budgets`` plus ``eval.random`` held-out random ones) and reports one row per
configuration. The sweep writes ``<out_dir>/<name>/sweep.parquet`` (all rows of all trials) and
``sweep.png`` (accuracy or perplexity against bits, one series per method).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "1")


from coalora.errors import ConfigError  # noqa: E402
from coalora.pipeline.config import _build, parse_yaml  # noqa: E402
from coalora.pipeline.rundir import SWEEP_PLOT, SWEEP_TABLE, TUNE_DIR  # noqa: E402


@dataclass
class OptunaSection:
    """Optional Optuna search (Ray Tune's ``OptunaSearch``) over ``space`` on top of the grid."""

    num_samples: int = 8
    metric: str = "mean_metric"
    mode: str = "max"
    space: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # key: {loguniform|uniform|choice: [...]}


@dataclass
class SweepConfig:
    base: str = "configs/smoke.yaml"
    name: str = "sweep"
    out_dir: str = "runs"
    grid: dict[str, list[Any]] = field(default_factory=dict)
    set: list[str] = field(default_factory=list)  # fixed overrides for every trial
    optuna: OptunaSection | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 2

    def validate(self) -> None:
        from coalora.pipeline.config import load_config

        if not (ROOT / self.base).is_file() and not Path(self.base).is_file():
            raise ConfigError(f"base: experiment file not found: {self.base}")
        base = self.base if Path(self.base).is_file() else str(ROOT / self.base)
        for trial in expand_grid(self.grid) or [{}]:
            load_config(base, [*self.set, *overrides(trial)])  # every trial must be a valid experiment
        if self.max_concurrent < 1:
            raise ConfigError("max_concurrent: must be >= 1")
        if self.optuna is not None:
            if self.optuna.mode not in ("max", "min"):
                raise ConfigError("optuna.mode: must be max or min")
            for key, dist in self.optuna.space.items():
                if len(dist) != 1 or next(iter(dist)) not in ("loguniform", "uniform", "choice"):
                    raise ConfigError(f"optuna.space.{key}: one of loguniform/uniform/choice: [values]")


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values: ``{"a": [1, 2], "b": [3]}`` → ``[{a:1,b:3}, {a:2,b:3}]``."""
    if not grid:
        return []
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


def overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in params.items()]


def load_sweep(path: str | os.PathLike, extra: list[str] = ()) -> SweepConfig:  # type: ignore[assignment]
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"sweep file not found: {path}")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"sweep file {path}: cannot be read as text ({e})") from None
    data = parse_yaml(text, str(path))  # the same rules as a run's YAML: duplicate keys, 1e-3, ...
    if data is None:
        raise ConfigError(f"{path} is empty: a sweep needs at least a base configuration and a search space")
    cfg = _build(SweepConfig, data)
    cfg.set = [*cfg.set, *extra]
    cfg.validate()
    return cfg


def run_trial(params: dict[str, Any]) -> None:
    """One Tune trial: train a method, evaluate its configurations, report the mean and the rows."""
    import numpy as np
    from ray import tune

    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import budget_configs, error_table_for, random_configs
    from coalora.pipeline.methods import evaluate_served, train_method

    from orchestration.devices import local_device

    base, fixed = params.pop("__base"), params.pop("__set")
    cfg = load_config(base, [*fixed, *overrides(params)])
    # A trial that reserved a GPU computes on it (CPU only where torch there has no CUDA).
    where = local_device()
    device = where.device

    def budgets_and_random(model: Any, meta: dict[str, Any], exp: Any) -> np.ndarray:
        """coa and shared: the allocations at ``eval.budgets`` and ``eval.random`` random configurations."""
        err = error_table_for(exp, model.model, model.space, progress=False)
        return np.concatenate([budget_configs(exp, model.space, err), random_configs(exp, model.space)])

    with tempfile.TemporaryDirectory() as tmp:
        summary = train_method(cfg, Path(tmp) / "ck", progress=False, say=lambda s: None, device=device)
        method = cfg.train.method
        rows, task = evaluate_served(Path(tmp) / "ck", budgets_and_random, cfg=cfg, device=device)
    metric = "accuracy" if task == "classification" else "perplexity"
    for r in rows:
        r.pop("checkpoint", None)  # a per-config adapter's directory: temporary, gone with the trial
        r.update(method=method, device=device, gpu_ids=",".join(str(g) for g in where.gpu_ids),
                 **{k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()})
    tune.report({"mean_metric": float(np.mean([r[metric] for r in rows])), "metric_name": metric,
                 "train_seconds": summary["train_seconds"], "rows": json.dumps(rows)})


def run_sweep(cfg: SweepConfig, base_path: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray import tune

    out = Path(cfg.out_dir) / cfg.name
    out.mkdir(parents=True, exist_ok=True)
    space: dict[str, Any] = {"__base": base_path, "__set": cfg.set}
    grid = cfg.grid
    for k, values in grid.items():
        space[k] = tune.grid_search(values)
    tune_config = tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent)
    if cfg.optuna is not None:
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        dists = {"loguniform": tune.loguniform, "uniform": tune.uniform}
        for key, dist in cfg.optuna.space.items():
            (kind, values), = dist.items()
            space[key] = tune.choice(values) if kind == "choice" else dists[kind](*values)
        searcher = ConcurrencyLimiter(OptunaSearch(metric=cfg.optuna.metric, mode=cfg.optuna.mode),
                                      max_concurrent=cfg.max_concurrent)
        tune_config = tune.TuneConfig(search_alg=searcher, num_samples=cfg.optuna.num_samples,
                                      metric=cfg.optuna.metric, mode=cfg.optuna.mode)
    trainable = tune.with_resources(run_trial, {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial})
    tuner = tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                       run_config=tune.RunConfig(name=cfg.name, storage_path=str((out / TUNE_DIR).resolve()),
                                                 verbose=1))
    results = tuner.fit()
    rows: list[dict[str, Any]] = []
    errors = []
    for res in results:
        if res.error is not None:
            errors.append(str(res.error).splitlines()[0])
            continue
        rows += json.loads(res.metrics["rows"])
    if not rows:
        raise RuntimeError(f"every trial failed: {errors[:3]}")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    table = pa.table({c: [r.get(c) for r in rows] for c in cols})
    pq.write_table(table, out / SWEEP_TABLE)
    plot_sweep(rows, out / SWEEP_PLOT)
    if errors:
        print(f"{len(errors)} trial(s) failed: {errors[:3]}", file=sys.stderr)
    return out


def plot_sweep(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "accuracy" if any("accuracy" in r for r in rows) else "perplexity"
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((r["avg_bits"], r[metric]) for r in rows if r["method"] == method and r["avg_bits"] < 32)
        if pts:
            ax.plot(*zip(*pts), "o", label=method, alpha=0.8)
        fp = [r[metric] for r in rows if r["method"] == method and r["avg_bits"] >= 32]
        if fp:
            ax.axhline(float(sum(fp) / len(fp)), ls="--", lw=1, label=f"{method} (unquantized)")
    ax.set_xlabel("average bits per weight")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="orchestration/sweep.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="sweep YAML (configs/sweep-*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every trial")
    p.add_argument("--out-dir", help="where <name>/ goes (default: the YAML's out_dir)")
    args = p.parse_args(argv)
    try:
        cfg = load_sweep(args.config, args.set)
    except ConfigError as e:
        print(f"orchestration/sweep.py: error: {e}", file=sys.stderr)
        return 2
    if args.out_dir:
        cfg.out_dir = args.out_dir
    from orchestration.connect import connect

    connect()
    base = cfg.base if Path(cfg.base).is_file() else str(ROOT / cfg.base)
    out = run_sweep(cfg, str(Path(base).resolve()))
    print(f"done: {out / SWEEP_TABLE}, {out / SWEEP_PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
