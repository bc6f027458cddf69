"""What several parts share: reading a run's rounds and training time, per-config's configurations, the
accuracy hypervolume, which configurations a training set held, tables across calls, and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from coalora.pipeline.rundir import RunDir


def fmt(v: Any) -> Any:
    return round(v, 5) if isinstance(v, float) else v


def completed_rounds(run_dir: Path) -> int:
    from coalora.errors import CheckpointError
    from coalora.pipeline.rundir import last_round

    try:
        return last_round(run_dir) + 1
    except CheckpointError:
        return 0


def run_train_seconds(run_dir: Path) -> tuple[float, float]:
    """(training-loop seconds, whole-run seconds) summed over a run's rounds."""
    rows = RunDir(run_dir).read_rounds()
    # The training loop's own time (what `coalora train` reports for the baselines); Ray Train's start-up
    # per round is in the whole-run figure.
    train = sum(r.get("train_loop_seconds") or r["train_seconds"] for r in rows)
    return train, sum(r["train_seconds"] + r["eval_seconds"] + r["search_seconds"] for r in rows)


def accuracy_hypervolume(acc: np.ndarray, bits: np.ndarray, bits_range: tuple[float, float]) -> float:
    """Hypervolume of the (error = 1 − accuracy, bits) front, both minimised.

    Fixed normalisation for every method: error in [0, 0.5] (0.5 = chance on a balanced binary task),
    bits in ``bits_range``, reference point (1.1, 1.1) (:class:`coalora.core.pareto.ObjectiveBounds`).
    """
    from coalora.core.pareto import ObjectiveBounds

    return ObjectiveBounds((0.0, 0.5), bits_range, 0.1).hypervolume(1.0 - np.asarray(acc), np.asarray(bits))


def plot(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str,
          markers: dict[str, str] | None = None, hlines: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, (x, y) in series.items():
        order = np.argsort(x)
        style = (markers or {}).get(label, "o-")
        ax.plot(np.asarray(x)[order], np.asarray(y)[order], style, label=label, ms=5, lw=1.2)
    for label, y in (hlines or {}).items():
        ax.axhline(y, ls="--", lw=1, color="grey", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def per_config_configs(out: Path) -> Path:
    """The configurations a per-config directory's adapters were trained for, in budget order, as a
    JSON list that ``coalora evaluate --config`` takes: ``<out>/configs.json``."""
    index = json.loads((out / "per_config.json").read_text())
    configs = [json.loads((out / c / "meta.json").read_text())["trainset"][0] for c in index["checkpoints"]]
    path = out / "configs.json"
    path.write_text(json.dumps(configs))
    return path


def seed_sets(seed: int) -> list[str]:
    return [f"train.seed={seed}", f"search.seed={seed}"]


def aggregate(rows: list[dict[str, Any]], key: str, fields: list[str]) -> list[dict[str, Any]]:
    """Mean and spread (std over seeds, 0 for one seed) of ``fields`` per ``key``."""
    out = []
    for k in dict.fromkeys(r[key] for r in rows):
        mine = [r for r in rows if r[key] == k]
        row: dict[str, Any] = {key: k, "seeds": len(mine)}
        for f in fields:
            vals = [r[f] for r in mine if r.get(f) is not None]
            if vals:
                row[f] = float(np.mean(vals))
                row[f + "_std"] = float(np.std(vals))
        out.append(row)
    return out


def training_configs(out: Path) -> list[Any]:
    """Every configuration a trained output ever trained on, as JSON: a ``coalora train`` directory's
    ``meta.json`` trainset, or the union of an orchestrated run's rounds (each round's checkpoint records the
    set it trained on; the search changes it between rounds)."""
    if (out / "meta.json").is_file():
        return json.loads((out / "meta.json").read_text())["trainset"]
    metas = sorted((out / "checkpoints").glob("round_*/meta.json"))
    if not metas:
        raise SystemExit(f"study: {out} holds neither a checkpoint's meta.json nor a run's checkpoints")
    return [c for m in metas for c in json.loads(m.read_text())["trainset"]]


def trained_on(outs: dict[str, Path], evaluated: list[Path]) -> dict[str, list[int]]:
    """Fairness: the evaluated configurations that a shared or coa variant's training set holds (per-config's
    adapters are trained on theirs by definition). ``evaluated``: JSON lists of configurations (seen, then
    unseen). Returns variant → the positions (in ``evaluated`` order) of those it trained on; empty when fair.
    Configurations drawn per step (``train.random_configs``) never include the held-out ones by construction."""
    key = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    scored = [key(c) for path in evaluated for c in json.loads(path.read_text())]
    hits = {}
    for name, out in outs.items():
        if name.startswith("per-config"):
            continue
        mine = {key(c) for c in training_configs(out)}
        found = [i for i, k in enumerate(scored) if k in mine]
        if found:
            hits[name] = found
    return hits


_WHOLE = ("seed", "round", "rounds", "evaluations", "distinct_configs", "final_set_size")


def with_earlier(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` plus those of the CSV at ``path`` (an earlier call's) for every (seed, method) ``rows`` lacks:
    a part run one method per call still tabulates them all. Counts and seeds come back as whole numbers."""
    mine = {(r["seed"], r["method"]) for r in rows}
    earlier = read_csv(path) if path.is_file() else []
    for r in earlier:
        for k in _WHOLE:
            if isinstance(r.get(k), float):
                r[k] = int(r[k])
    return rows + [r for r in earlier if (r["seed"], r["method"]) not in mine]


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers as floats and empty cells as None."""
    def value(v: str) -> Any:
        if v == "":
            return None
        try:
            return float(v)
        except ValueError:
            return v
    with open(path, newline="") as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def search_run_row(run: Path, seed: int, method: str, scores: dict[str, float]) -> tuple[dict[str, Any], Any]:
    """One orchestrated run of a search ablation: its summary row (what the search did, its final
    hypervolume, the part's ``scores``, its seconds) and its hypervolume curve (rounds, hypervolume)."""
    rounds, archive = RunDir(run).read_rounds(), RunDir(run).read_archive()
    train_s, total_s = run_train_seconds(run)
    row = {"seed": seed, "method": method, "rounds": len(rounds),
           "evaluations": sum(1 for r in archive if r["status"] == "ok"),
           "distinct_configs": len({r["config_id"] for r in archive}),
           "final_hypervolume": rounds[-1]["hypervolume"], **scores,
           "final_set_size": rounds[-1]["set_size"], "train_seconds": train_s, "total_seconds": total_s}
    curve = (np.array([r["round"] for r in rounds], dtype=float), np.array([r["hypervolume"] for r in rounds]))
    return row, curve
