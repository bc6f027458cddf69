"""Plots and the Markdown report of a run (regenerated after every round)."""

from __future__ import annotations

import io
import json
from typing import Any, Sequence

import numpy as np

from coalora.core.pareto import non_dominated_mask
from coalora.pipeline.rundir import (FRONT_PLOT, HYPERVOLUME_PLOT, ArchiveRow, RoundRow, best_row_under, evaluated_ok,
                                     knobs_of)
from coalora.storage import Location
from orchestration.store import RunStore


def _save_figure(fig: Any, path: Location) -> None:
    """Render ``fig`` to PNG bytes and write them (all-or-nothing, any storage); close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def front_rows(rows: Sequence[ArchiveRow]) -> list[ArchiveRow]:
    """The non-dominated rows in (loss, bits), both minimised, in increasing bits."""
    if not rows:
        return []
    y = np.array([[r["loss"], r["avg_bits"]] for r in rows])
    mask = non_dominated_mask(y)
    return sorted((r for r, m in zip(rows, mask) if m), key=lambda r: r["avg_bits"])


def plot_front(archive: Sequence[ArchiveRow], path: Location) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = sorted({r["round"] for r in archive})
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("viridis")
    for i, k in enumerate(rounds):
        ok = evaluated_ok(archive, k)
        if not ok:
            continue
        color = cmap(i / max(1, len(rounds) - 1))
        ax.scatter([r["avg_bits"] for r in ok], [r["loss"] for r in ok], s=10, color=color, alpha=0.35)
        f = front_rows(ok)
        ax.plot([r["avg_bits"] for r in f], [r["loss"] for r in f], "-o", ms=3, color=color, label=f"round {k}")
    ax.set_xlabel("average bits per weight")
    ax.set_ylabel("validation loss")
    ax.set_title("Pareto front per round (loss vs. bits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_hypervolume(rounds: Sequence[RoundRow], path: Location) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ks = [r["round"] for r in rounds]
    ax.plot(ks, [r["hypervolume"] for r in rounds], "-o", label="archive")
    ax.plot(ks, [r["hv_train"] for r in rounds], "-s", label="training set")
    ax.set_xlabel("round")
    ax.set_ylabel("normalised hypervolume")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def best_per_budget(rows: Sequence[ArchiveRow], budgets: Sequence[float]) -> list[ArchiveRow | None]:
    """For each budget, the lowest-loss row whose average bits fit under it (None if none does)."""
    return [best_row_under(rows, b) for b in budgets]


def write_report(store: RunStore, cfg: Any, space: Any, run_name: str) -> None:
    """``front.png``, ``hypervolume.png``, ``front/<id>.json`` and ``report.md`` from the stored tables."""
    archive = store.read_archive()
    rounds = store.read_rounds()
    if not rounds:
        return
    last = rounds[-1]["round"]
    plot_front(archive, store.front_plot_path)
    plot_hypervolume(rounds, store.hypervolume_plot_path)
    final = evaluated_ok(archive, last)
    front = front_rows(final)
    metric = "accuracy" if any(r.get("accuracy") is not None for r in final) else "perplexity"
    ck = store.checkpoint_dir(last)
    for r in front:
        store.front_config_path(r["config_id"]).write_text(json.dumps(space.to_json(knobs_of(r, space)), indent=1))
    lines = [
        f"# Run `{run_name}`",
        "",
        f"Model `{cfg.model.name}`, data `{cfg.data.name}`, {len(rounds)} round(s), search `{cfg.search.method}`"
        f" ({cfg.search.n_segments} segments). Final hypervolume {rounds[-1]['hypervolume']:.4f}.",
        "",
        f"![front]({FRONT_PLOT}) ![hypervolume]({HYPERVOLUME_PLOT})",
        "",
        "## Rounds",
        "",
        "| round | hypervolume | hv (training set) | set size | evaluated | failed | train loss | train s | eval s | search s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rounds:
        lines.append(
            f"| {r['round']} | {r['hypervolume']:.4f} | {r['hv_train']:.4f} | {r['set_size']} | {r['evaluated']} | "
            f"{r['failed']} | {r['train_loss']:.4f} | {r['train_seconds']:.1f} | {r['eval_seconds']:.1f} | "
            f"{r['search_seconds']:.1f} |"
        )
    lines += ["", f"## Front of the last round ({len(front)} configurations)", "",
              f"| config | avg bits | loss | {metric} |", "|---|---|---|---|"]
    for r in front:
        m = r.get(metric)
        lines.append(f"| `{r['config_id']}` | {r['avg_bits']:.4f} | {r['loss']:.4f} | "
                     f"{'' if m is None else f'{m:.4f}'} |")
    lines += ["", "## Best configuration per budget", "",
              f"| budget | config | avg bits | loss | {metric} | deploy |", "|---|---|---|---|---|---|"]
    budgets = sorted(set(cfg.eval.budgets))
    for b, r in zip(budgets, best_per_budget(final, budgets)):
        if r is None:
            lines.append(f"| {b:g} | (none evaluated) | | | | `coalora adapt --checkpoint {ck} --budget {b:g} "
                         f"--out adapters/{b:g}bit` |")
            continue
        path = store.front_config_path(r["config_id"])
        if not path.is_file():
            path.write_text(json.dumps(space.to_json(knobs_of(r, space)), indent=1))
        m = r.get(metric)
        lines.append(
            f"| {b:g} | `{r['config_id']}` | {r['avg_bits']:.4f} | {r['loss']:.4f} | "
            f"{'' if m is None else f'{m:.4f}'} | `coalora adapt --checkpoint {ck} --config {path} "
            f"--out adapters/{b:g}bit` |"
        )
    lines += ["", "Any other budget: `coalora adapt --run " + str(store.root) + " --budget B --out DIR` "
              "(best evaluated configuration under B, else the allocation).", ""]
    store.report_path.write_text("\n".join(lines))
