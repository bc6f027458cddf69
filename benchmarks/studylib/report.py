"""The report: ``docs/results.md`` rendered from the result tables into the prose of
``benchmarks/results/study/report-template.md``."""

from __future__ import annotations

import functools
import json
import os
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from coalora.io import atomic_write_text

from .common import read_csv
from .settings import ROOT, TEMPLATE

# Placeholders a template may use, each replaced by a table rendered from the result files.
_DEFAULT_TEMPLATE = """# Study results

{{provenance}}

## Table 2

{{table2}}

{{table2-budgets}}

{{plot:table2}}

## Seen against unseen configurations

{{seen-unseen}}

{{plot:seen-unseen}}

## Search ablation

{{search-ablation}}

{{plot:search-ablation}}

## Causal LM

{{causal-lm}}

{{plot:causal-lm}}

## Seed-to-seed spread

{{baseline-seeds}}
"""
_METHOD_ORDER = ("coa", "coa-warm", "shared", "per-config", "fp-lora", "gp", "nsga2", "random-extend", "frozen", "random")


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _signed(x: float, digits: int) -> str:
    """``+0.50`` / ``−0.93`` (a typographic minus), and ``0`` for zero."""
    text = _num(abs(x), digits)
    return "0" if float(text) == 0 else ("−" if x < 0 else "+") + text


def _num(x: float, digits: int) -> str:
    """``x`` rounded half up from its shortest decimal form (the CSV's 0.7915 is 0.792, not 0.791)."""
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:,.{digits}f}"


def _bits(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _by_method(rows: list[dict[str, Any]], key: str = "method") -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by method, in the order of :data:`_METHOD_ORDER` (others after, as they come)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _seeds(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({int(r["seed"]) for r in rows})


def _per_seed(mine: list[dict[str, Any]], field: str, digits: int) -> str:
    """One value per seed, in seed order: ``0.7917 / 0.7792``."""
    return " / ".join(_num(r[field], digits) for r in sorted(mine, key=lambda r: r["seed"]))


def _mean_std(row: dict[str, Any], field: str, digits: int, unit: str = "") -> str:
    if row.get(field) is None:
        return ""
    return f"{_num(row[field], digits)} ± {_num(row[field + '_std'], digits)}{unit}"


def _report_table2(results: Path) -> str:
    seeds_rows = read_csv(results / "table2-seeds.csv")
    agg = {r["method"]: r for r in read_csv(results / "table2.csv")}
    seeds = _seeds(seeds_rows)
    rows = []
    for method, mine in _by_method(seeds_rows).items():
        a = agg[method]
        gap = ("" if a.get("gap_to_per_config_pt") is None else
               f"{_signed(a['gap_to_per_config_pt'], 2)} ± {_num(a['gap_to_per_config_pt_std'], 2)} pt"
               if a["gap_to_per_config_pt"] or a["gap_to_per_config_pt_std"] else "0")
        seconds = _per_seed(mine, "train_seconds", 0)
        if any(r["total_seconds"] != r["train_seconds"] for r in mine):  # an orchestrated run
            seconds += f" (whole run {_per_seed(mine, 'total_seconds', 0)})"
        rows.append([method, _num(mine[0]["adapters"], 0), _per_seed(mine, "mean_accuracy", 4),
                     _mean_std(a, "mean_accuracy", 3), gap, _mean_std(a, "hypervolume", 3), seconds])
    label = " / ".join(f"seed {s}" for s in seeds)
    return _table(["method", "adapters", f"mean accuracy, {label}", "mean ± std", "gap to per-config", "HV",
                   f"training s, {label}"], rows)


def _report_table2_options(results: Path) -> str:
    seeds_rows = read_csv(results / "table2-options-seeds.csv")
    agg = {r["method"]: r for r in read_csv(results / "table2-options.csv")}
    label = " / ".join(f"seed {s}" for s in _seeds(seeds_rows))
    rows = []
    for method, mine in _by_method(seeds_rows).items():
        a = agg[method]
        rows.append([method, _per_seed(mine, "mean_accuracy", 4), _mean_std(a, "mean_accuracy", 3),
                     f"{_signed(a['gap_to_per_config_pt'], 2)} ± {_num(a['gap_to_per_config_pt_std'], 2)} pt",
                     f"{_signed(a['gap_to_shared_pt'], 2)} ± {_num(a['gap_to_shared_pt_std'], 2)} pt",
                     _per_seed(mine, "train_seconds", 0)])
    return _table(["method", f"mean accuracy, {label}", "mean ± std", "gap to per-config", "gap to shared",
                   f"training s, {label}"], rows)


def _report_table2_budgets(results: Path) -> str:
    rows = [r for r in read_csv(results / "table2-per-config.csv") if r["budget"] is not None]
    budgets = sorted({r["budget"] for r in rows})
    out = []
    for method, mine in _by_method(rows).items():
        out.append([method] + [_num(float(np.mean([r["accuracy"] for r in mine if r["budget"] == b])), 3)
                               for b in budgets])
    n = len(_seeds(rows))
    return (f"Mean test accuracy per budget, over {n} seed{'s' if n > 1 else ''}:\n\n"
            + _table(["bits"] + [f"{b:g}" for b in budgets], out))


def _report_seen_unseen(results: Path) -> str:
    summary = sorted(read_csv(results / "seen-unseen-summary.csv"), key=lambda r: r["seed"])
    detail = results / "seen-unseen.csv"
    spans = {}
    if detail.is_file():
        for label in ("coa seen", "coa unseen"):
            bits = [r["avg_bits"] for r in read_csv(detail) if r["set"] == label]
            spans[label] = f" ({_bits(min(bits))}–{_bits(max(bits))} bits)" if bits else ""

    def line(label: str, field: str, digits: int, count: str | None = None, pt: bool = False) -> list[str]:
        vals = [r[field] for r in summary]
        if any(v is None for v in vals):
            return []
        cells = [(f"{r[count]:.0f} / " if count else "") + (_signed(v, digits) + " pt" if pt else _num(v, digits))
                 for r, v in zip(summary, vals)]
        mean = float(np.mean(vals))
        return [label, *cells, _signed(mean, digits) + " pt" if pt else _num(mean, digits)]

    rows = [line(f"coa, seen{spans.get('coa seen', '')}: configurations / mean accuracy",
                 "seen_mean_accuracy_all", 3, "seen_configs"),
            line("coa, seen within the unseen bit range", "seen_mean_accuracy_in_unseen_range", 3),
            line(f"coa, unseen random{spans.get('coa unseen', '')}: configurations / mean accuracy",
                 "unseen_mean_accuracy", 3, "unseen_configs"),
            line("shared, the same unseen", "shared_unseen_mean_accuracy", 3),
            line("coa unseen minus a line fitted to coa seen", "unseen_minus_seen_fit_pt", 1, pt=True)]
    return _table(["set", *[f"seed {r['seed']:.0f}" for r in summary], "mean"], [r for r in rows if r])


def _search_table(results: Path, name: str, fields: tuple[str, ...], headers: list[str]) -> str:
    """A search ablation's table (``<name>-seeds.csv``, ``<name>.csv``): per search method, each of ``fields``
    per seed with its mean ± std, then the evaluations, the last training set and the whole run's seconds."""
    seeds_rows = read_csv(results / f"{name}-seeds.csv")
    agg = {r["method"]: r for r in read_csv(results / f"{name}.csv")}
    rows = []
    for method, mine in _by_method(seeds_rows).items():
        cells = [f"{_per_seed(mine, f, 3)}, {_mean_std(agg[method], f, 3)}" for f in fields]
        rows.append([method, *cells, _per_seed(mine, "evaluations", 0), _per_seed(mine, "final_set_size", 0),
                     _per_seed(mine, "total_seconds", 0)])
    return _table(["search", *headers, "evaluations", "last training set", "whole run s"], rows)


def _report_search_ablation(results: Path) -> str:
    return _search_table(results, "search-ablation",
                         ("final_hypervolume", "heldout_mean_accuracy", "budgets_mean_accuracy"),
                         ["final HV", "held-out accuracy (random unseen)", "accuracy at Table 2's configurations"])


def _report_headroom_search(results: Path) -> str:
    return _search_table(results, "headroom-search", ("seen_mean_loss", "unseen_mean_loss", "final_hypervolume"),
                         ["loss at the budgets", "loss on unseen", "final HV"])


def _report_headroom_span(results: Path) -> str:
    rows = [[str(int(r["rank"])), r["set"], _num(r["avg_bits"], 2), *(f"{100 * (1 - r[k]):.1f} %" for k in
             ("shared", "best_core", "own_top_r", "own_top_4r")), _num(r["reach"], 2)]
            for r in read_csv(results / "headroom-span.csv")]
    return _table(["rank", "set", "bits", "removed by shared B·A", "by the best core", "by its own top-r",
                   "by its own top-4r", "reach"], rows)


def _report_headroom_span_bank(results: Path) -> str:
    rows = [[str(int(r["rank"])), r["set"], _num(r["avg_bits"], 2), *(f"{100 * (1 - r[k]):.1f} %" for k in
             ("shared", "best_core", "shared_bank", "best_core_bank", "own_top_r")), _num(r["reach"], 2),
             _num(r["reach_bank"], 2)]
            for r in read_csv(results / "headroom-span-bank.csv")]
    return _table(["rank", "set", "bits", "removed by shared B·A", "by the best core", "by B·A + bank",
                   "by the best core + bank", "by its own top-r", "reach", "reach with the bank"], rows)


def _report_causal_lm(results: Path) -> str:
    detail = read_csv(results / "causal-lm-per-config.csv")
    agg = {r["method"]: r for r in read_csv(results / "causal-lm.csv")}
    budgets = sorted({r["budget"] for r in detail})
    rows = []
    for method, mine in _by_method(detail).items():
        a = agg[method]
        ppl = [float(np.mean([r["perplexity"] for r in mine if r["budget"] == b])) for b in budgets]
        rows.append([method, str(len(budgets)) if method == "per-config" else "1",
                     " / ".join(_num(x, 1) for x in ppl), _num(a["mean_perplexity"], 1),
                     "1" if method == "per-config" else _num(a["ratio_to_per_config"], 2),
                     _num(a["train_seconds"], 0)])
    bits = " / ".join(f"{b:g}" for b in budgets)
    return _table(["method", "adapters", f"perplexity at {bits} bits", "mean perplexity",
                   "mean ratio to per-config", "training s"], rows)


def _report_baseline_seeds(results: Path) -> str:
    """Each method's mean accuracy per seed: coa and fp-lora from table2's runs, shared and per-config
    from ``baseline-seeds`` (the same runs where both exist)."""
    by = {(r["method"], int(r["seed"])): r["mean_accuracy"] for r in read_csv(results / "baseline-seeds.csv")}
    if (results / "table2-seeds.csv").is_file():
        by = {(r["method"], int(r["seed"])): r["mean_accuracy"] for r in read_csv(results / "table2-seeds.csv")} | by
    seeds = sorted({s for _, s in by})
    rows = []
    for method in _by_method([{"method": m} for m, _ in by]):
        vals = [by.get((method, s)) for s in seeds]
        have = [v for v in vals if v is not None]
        rows.append([method, *["" if v is None else _num(v, 4) for v in vals],
                     f"{_num((max(have) - min(have)) * 100, 2)} pt"])
    return _table(["method", *[f"mean accuracy, seed {s}" for s in seeds], "range across seeds"], rows)


def _report_provenance(results: Path) -> str:
    m = json.loads((results / "manifest.json").read_text())
    hours = sum(c["seconds"] for c in m["commands"]) / 3600
    return (f"Measured on {m['hardware']}, Python {m['python']}, at commit `{m['commit'][:10]}`"
            f"{' (uncommitted changes)' if m.get('dirty') else ''}: {len(m['commands'])} commands, "
            f"{hours:.1f} hours of command time in all (each command, its time and log: "
            f"`{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}/manifest.json`).")


def _report_headroom(results: Path, tables: str = "headroom") -> str:
    """Per method: mean test loss on the evaluated budgets and on the unseen configurations, the gap closed
    G on each (mean over seeds ± std across seeds), and the training seconds (of the pass ``tables``)."""
    summary = read_csv(results / f"{tables}-summary.csv")
    secs = {r["method"]: r for r in read_csv(results / f"{tables}-seconds.csv")}
    rows = []
    for method, mine in _by_method(summary).items():
        by_set = {r["set"]: r for r in mine}
        cells = []
        for set_name in ("seen", "unseen"):
            r = by_set.get(set_name)
            cells.append("" if r is None else _num(r["mean_loss"], 3))
            for key in ("gap_closed", "gap_closed_match"):
                if r is None or r.get(key) in (None, ""):  # shared and per-config have no G
                    cells.append("")
                    continue
                # "±" is the spread across seeds: with one seed there is none to show.
                std = r.get(f"{key}_std")
                one = r.get("seeds") in (None, 1.0) or std in (None, "")
                cells.append(f"{_num(r[key], 2)}{'' if one else f' ± {_num(std, 2)}'}")
        t = secs.get(method)
        line = (by_set.get("unseen") or {}).get("unseen_vs_seen_line_pct")
        rows.append([method, *cells, "" if line is None else f"{_num(line, 1)} %",
                     "" if t is None else _num(t["train_seconds"], 0)])
    return _table(["method", "loss at the budgets", "G at the budgets", "G_match at the budgets", "loss on unseen",
                   "G on unseen", "G_match on unseen", "unseen vs the seen line", "training s"], rows)


def _report_headroom_excluded(results: Path, tables: str = "headroom") -> str:
    """The evaluated configurations left out because a training set held them (``--exclude-trained``)."""
    rows = read_csv(results / f"{tables}-excluded.csv")
    if not rows:
        return "No evaluated configuration is in any method's training set."
    return "Left out of every table because a training set held them (`--exclude-trained`): " + "; ".join(
        f"{r['config_id']} (trained on by {r['trained_on_by'].replace(' ', ', ')})" for r in rows) + "."


def _report_headroom_pairs(results: Path, tables: str = "headroom") -> str:
    """Each coa variant against the shared variant with its option, seed by seed."""
    rows = [[r["variant"], r["against"], str(int(r["seed"])), r["set"], _num(r["loss"], 3), _num(r["loss_against"], 3),
             _num(r["difference"], 3), f"{int(r['lower_on'])} of {int(r['configs'])}"]
            for r in read_csv(results / f"{tables}-pairs.csv")]
    return _table(["variant", "against", "seed", "set", "loss", "loss (against)", "difference",
                   "lower on"], rows)


def _report_headroom_curves(results: Path, tables: str = "headroom") -> str:
    """Learning curves: per method and set, the mean loss after each step count (mean over seeds), with G
    where the method is neither baseline."""
    rows = read_csv(results / f"{tables}-curves.csv")
    steps = sorted({int(r["step"]) for r in rows})
    out = []
    for method, mine in _by_method(rows).items():
        for set_name in ("seen", "unseen"):
            cells = []
            for k in steps:
                at = [r for r in mine if r["set"] == set_name and int(r["step"]) == k]
                loss = _num(float(np.mean([r["mean_loss"] for r in at])), 3) if at else ""
                gs = [r["gap_closed"] for r in at if r.get("gap_closed") is not None]
                cells.append(f"{loss} (G {_num(float(np.mean(gs)), 2)})" if gs else loss)
            if any(cells):
                out.append([method, set_name, *cells])
    return _table(["method", "set", *[f"step {k}" for k in steps]], out)


_TABLES = {"table2": (_report_table2, ("table2-seeds.csv", "table2.csv")),
           "table2-budgets": (_report_table2_budgets, ("table2-per-config.csv",)),
           "table2-options": (_report_table2_options, ("table2-options-seeds.csv", "table2-options.csv")),
           "seen-unseen": (_report_seen_unseen, ("seen-unseen-summary.csv",)),
           "search-ablation": (_report_search_ablation, ("search-ablation-seeds.csv", "search-ablation.csv")),
           "causal-lm": (_report_causal_lm, ("causal-lm-per-config.csv", "causal-lm.csv")),
           "baseline-seeds": (_report_baseline_seeds, ("baseline-seeds.csv",)),
           "headroom": (_report_headroom, ("headroom-summary.csv", "headroom-seconds.csv")),
           "headroom-pairs": (_report_headroom_pairs, ("headroom-pairs.csv",)),
           "headroom-curves": (_report_headroom_curves, ("headroom-curves.csv",)),
           "headroom-search": (_report_headroom_search, ("headroom-search-seeds.csv", "headroom-search.csv")),
           "headroom-span": (_report_headroom_span, ("headroom-span.csv",)),
           "headroom-span-bank": (_report_headroom_span_bank, ("headroom-span-bank.csv",)),
           "headroom-excluded": (_report_headroom_excluded, ("headroom-excluded.csv",)),
           # The full-size pass (headroom_full): the same tables from its own files.
           "headroom-full": (functools.partial(_report_headroom, tables="headroom-full"),
                             ("headroom-full-summary.csv", "headroom-full-seconds.csv")),
           "headroom-full-pairs": (functools.partial(_report_headroom_pairs, tables="headroom-full"),
                                   ("headroom-full-pairs.csv",)),
           "headroom-full-curves": (functools.partial(_report_headroom_curves, tables="headroom-full"),
                                    ("headroom-full-curves.csv",)),
           "headroom-full-excluded": (functools.partial(_report_headroom_excluded, tables="headroom-full"),
                                      ("headroom-full-excluded.csv",)),
           "provenance": (_report_provenance, ("manifest.json",))}


# The part that writes a table's files, where the placeholder is not named after it.
_PART_OF = {"table2-budgets": "table2", "headroom-pairs": "headroom", "headroom-excluded": "headroom",
            "headroom-curves": "headroom", "headroom-span-bank": "headroom-span", "provenance": "<any>",
            "headroom-full-pairs": "headroom-full", "headroom-full-curves": "headroom-full",
            "headroom-full-excluded": "headroom-full"}


def render_report(results: Path, out: Path) -> str:
    """The report of the result files under ``results``, to be written at ``out``.

    The prose comes from ``results/report-template.md`` (a short default without it; its ``<!-- -->``
    comments are dropped); each ``{{name}}`` placeholder there becomes a table rendered from the CSV files (see ``_TABLES``), and
    ``{{plot:name}}`` the image ``results/name.png``, linked relative to ``out``. A table whose files
    are missing says which ``--parts`` would make it.
    """
    template = results / TEMPLATE
    # The template's comments are notes to its editors, not part of the report.
    text = re.sub(r"<!--.*?-->\n?", "", template.read_text() if template.is_file() else _DEFAULT_TEMPLATE,
                  flags=re.S)

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("plot:"):
            png = results / f"{name[5:]}.png"
            return f"![{name[5:]}]({os.path.relpath(png, out.parent)})" if png.is_file() else ""
        if name not in _TABLES:
            raise SystemExit(f"study: {template}: unknown placeholder {{{{{name}}}}}; known: {sorted(_TABLES)}")
        fn, files = _TABLES[name]
        if not all((results / f).is_file() for f in files):
            part = _PART_OF.get(name, name)
            return f"_Not run yet: `python benchmarks/study.py --parts {part}`._"
        return fn(results)

    return re.sub(r"\{\{([a-z0-9:-]+)\}\}", fill, text)


def write_report(results: Path, out: Path) -> None:
    """Render :func:`render_report` and write it to ``out`` (all at once: a temporary file renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_report(results, out))
    print(f"wrote {out}")
