"""The headroom testbed (issue #15, configs/study/smollm2-lowbit.yaml): shared, per-config and coa's variants
where quantization hurts, scored by the gap closed at the evaluated budgets and on unseen configurations,
with learning curves; its full-size pass, its search ablation and the residual-span analysis."""

from __future__ import annotations

import csv
import functools
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from .common import aggregate, plot, search_run_row, seed_sets, trained_on, with_earlier
from .runner import Study
from .settings import (
    HEADROOM_CURVES,
    HEADROOM_MATCH,
    HEADROOM_PER_CONFIG,
    HEADROOM_SEARCH_METHODS,
    HEADROOM_SEARCH_SETS,
    HEADROOM_SEARCH_VARIANT,
    HEADROOM_SPAN_RUNS,
    HEADROOM_UNSEEN_PER_CONFIG,
    HEADROOM_VARIANTS,
    LOWBIT,
    QUICK_HEADROOM,
    ROOT,
)


def gap_closed(shared: float, coa: float, per_config: float) -> float | None:
    """G = (L_shared − L_coa) / (L_shared − L_per-config): the share of the shared → per-config gap that coa
    closes (1: as good as per-config; 0: no better than shared; < 0: worse). None without a gap."""
    gap = shared - per_config
    return None if gap <= 0 else (shared - coa) / gap


def headroom_rows(seed: int, losses: dict[str, dict[str, dict[str, Any]]], seen: list[str],
                  budgets: list[float], unseen: list[str], match: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per method and evaluated configuration of one seed (``headroom.csv``).

    Args:
        losses: method → config id → evaluation row (``loss``, ``avg_bits``); per-config has only the
            configurations it trained an adapter for.
        seen: the ids of the allocations at ``budgets`` (in that order); unseen: the random held-out ids.
        match: coa variant → (shared variant, per-config variant) with the same option; its rows get
            ``gap_closed_match``, G with those in place of shared and per-config (``HEADROOM_MATCH``).
    """
    match = match or {}
    rows = []
    for method, mine in losses.items():
        for set_name, ids in (("seen", seen), ("unseen", unseen)):
            for i, cid in enumerate(ids):
                if cid not in mine:
                    continue
                r = mine[cid]
                g = g_match = None
                baseline = method == "shared" or method.startswith("per-config")
                if not baseline and cid in losses["per-config"]:
                    g = gap_closed(losses["shared"][cid]["loss"], r["loss"], losses["per-config"][cid]["loss"])
                sh, pc = match.get(method, (None, None))
                if not baseline and sh in losses and cid in losses.get(pc, {}):
                    g_match = gap_closed(losses[sh][cid]["loss"], r["loss"], losses[pc][cid]["loss"])
                rows.append({"method": method, "seed": seed, "set": set_name,
                             "budget": budgets[i] if set_name == "seen" else None, "config_id": cid,
                             "avg_bits": r["avg_bits"], "loss": r["loss"], "gap_closed": g,
                             "gap_closed_match": g_match})
    return rows


def snapshot_steps(steps: int) -> list[int]:
    """The learning curve's intermediate points: a quarter, half and three quarters of ``steps``."""
    return sorted({steps * q // 4 for q in (1, 2, 3)} - {0})


def headroom_curves(seed: int, by_step: dict[int, dict[str, dict[str, dict[str, Any]]]], seen: list[str],
                    budgets: list[float], unseen: list[str]) -> list[dict[str, Any]]:
    """``headroom-curves.csv``'s rows for one seed: per step, method and set, the mean loss and mean G (and
    G_match) over the configurations per-config trained for, as :func:`headroom_summary` computes them.

    Args:
        by_step: step → method → config id → evaluation row, as ``losses`` of :func:`headroom_rows`.
    """
    out = []
    for step, losses in sorted(by_step.items()):
        pc = losses["per-config"]
        rows = headroom_rows(seed, losses, [c for c in seen if c in pc], [b for c, b in zip(seen, budgets) if c in pc],
                             [c for c in unseen if c in pc], HEADROOM_MATCH)
        out += [{"seed": seed, "step": step, **r} for r in headroom_summary(rows)]
    return out


def headroom_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and set: mean loss over the set, mean G where per-config was trained, training seconds."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for set_name in ("seen", "unseen"):
            mine = [r for r in rows if r["method"] == method and r["set"] == set_name]
            if not mine:
                continue
            seeds = sorted({r["seed"] for r in mine})
            row = {"method": method, "set": set_name, "seeds": len(seeds), "configs": len(mine) // len(seeds),
                   "mean_loss": float(np.mean([r["loss"] for r in mine]))}
            for key in ("gap_closed", "gap_closed_match"):
                gs = [r[key] for r in mine if r.get(key) is not None]
                per_seed = [float(np.mean([r[key] for r in mine if r["seed"] == s and r.get(key) is not None]))
                            for s in seeds if any(r["seed"] == s and r.get(key) is not None for r in mine)]
                row[key] = float(np.mean(gs)) if gs else None
                row[f"{key}_std"] = float(np.std(per_seed)) if per_seed else None
            if set_name == "unseen":
                row["unseen_vs_seen_line_pct"] = _unseen_vs_seen_line(
                    [r for r in rows if r["method"] == method and r["set"] == "seen"], mine)
            out.append(row)
    return out


def _unseen_vs_seen_line(seen: list[dict[str, Any]], unseen: list[dict[str, Any]]) -> float | None:
    """Seen against unseen (issue #15's third target): per seed, a least-squares line of loss against average
    bits through the seen configurations, and the unseen ones' mean relative excess over it, in percent
    (positive: worse than the line), averaged over seeds. None without two seen bit widths in a seed."""
    per_seed = []
    for seed in sorted({r["seed"] for r in unseen}):
        sb = np.array([r["avg_bits"] for r in seen if r["seed"] == seed])
        sl = np.array([r["loss"] for r in seen if r["seed"] == seed])
        if len(np.unique(sb)) < 2:
            continue
        line = np.polyfit(sb, sl, 1)
        mine = [r for r in unseen if r["seed"] == seed]
        pred = np.polyval(line, [r["avg_bits"] for r in mine])
        per_seed.append(float(np.mean((np.array([r["loss"] for r in mine]) - pred) / pred) * 100))
    return float(np.mean(per_seed)) if per_seed else None


def headroom_pairs(evals: dict[tuple[str, int, str], list[dict[str, Any]]],
                   pairs: dict[str, str], exclude: set[str] = frozenset()) -> list[dict[str, Any]]:
    """A coa variant against its matching shared variant, seed by seed: does it help on every seed?

    Args:
        evals: (method, seed, set) → that evaluation's rows (``loss`` per configuration, the same
            configurations in the same order for every method of a set).
        pairs: coa variant → shared variant.
        exclude: configuration ids left out (``--exclude-trained``).
    Returns one row per pair, seed and set: both mean losses, their difference and on how many of the
    configurations the coa variant's loss is the lower.
    """
    out = []
    for coa, shared in pairs.items():
        for (method, seed, set_name), rows in sorted(evals.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            other = evals.get((shared, seed, set_name))
            if method != coa or other is None:
                continue
            keep = [r.get("config_id") not in exclude for r in rows]
            a = np.array([r["loss"] for r, k in zip(rows, keep) if k])
            b = np.array([r["loss"] for r, k in zip(other, keep) if k])
            out.append({"variant": coa, "against": shared, "seed": seed, "set": set_name, "configs": len(a),
                        "loss": float(a.mean()), "loss_against": float(b.mean()), "difference": float((a - b).mean()),
                        "lower_on": int((a < b).sum())})
    return out


def _pair_evals(st: Study, methods: list[str]) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
    """Every headroom evaluation of ``methods`` in the runs directory, whatever the seed (some seeds may have
    only the variants that decide: ``eval-hr-<method>-s<seed>-<set>.json``)."""
    found = {}
    for m in methods:
        for path in st.runs.glob(f"eval-hr-{m}-s*-*.json"):
            got = re.fullmatch(rf"eval-hr-{re.escape(m)}-s(\d+)-(seen|unseen)\.json", path.name)
            if got:
                found[(m, int(got.group(1)), got.group(2))] = json.loads(path.read_text())
    return found


def kept_configs(hits: dict[str, list[int]], seen: list[str], budgets: list[float],
                 unseen: list[str]) -> tuple[list[str], list[float], list[str], dict[str, list[str]]]:
    """What ``--exclude-trained`` keeps of ``seen`` (with its ``budgets``) and ``unseen`` config ids: all but
    those at the positions of :func:`trained_on`'s ``hits`` (variant → positions, ``seen`` then ``unseen``).

    Returns the kept seen ids, their budgets, the kept unseen ids, and each dropped id → the variants that
    trained on it (in position order).
    """
    every = seen + unseen
    drop: dict[str, list[str]] = {}
    for i in sorted({i for found in hits.values() for i in found}):
        drop[every[i]] = sorted(v for v, found in hits.items() if i in found)
    return ([c for c in seen if c not in drop], [b for c, b in zip(seen, budgets) if c not in drop],
            [c for c in unseen if c not in drop], drop)


def record_seed(path: Path, tables: dict[str, list[dict[str, Any]]], drop: dict[str, list[str]]) -> None:
    """Add one headroom call's results of one seed to that seed's record (``runs/<study>/headroom-s<seed>.json``).

    A call may run only some variants (``--variants``); the record keeps every method any call gave that
    seed, so the tables show them all. A method's rows from this call replace its earlier ones.

    Args:
        tables: table name (``rows``, ``curves``, ``seconds``) → rows, each with a ``method``.
        drop: configuration id → the variants that trained on it (``--exclude-trained``), added to the
            seed's earlier list: those leave every method's rows of the seed (see :func:`seed_records`).
    """
    rec = json.loads(path.read_text()) if path.is_file() else {}
    for name, rows in tables.items():
        mine = rec.setdefault(name, {})
        for method in dict.fromkeys(r["method"] for r in rows):
            mine[method] = [r for r in rows if r["method"] == method]
    excluded = rec.setdefault("excluded", {})
    for cid, by in drop.items():
        excluded[cid] = sorted({*excluded.get(cid, []), *by})
    path.write_text(json.dumps(rec, indent=1))


def seed_records(runs: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """Every seed's record in ``runs`` (:func:`record_seed`), in seed order: table name → rows of all
    seeds and methods, with each seed's excluded configurations left out of its ``rows``; and every
    excluded id → the variants that trained on it, over all seeds."""
    tables: dict[str, list[dict[str, Any]]] = {}
    excluded: dict[str, list[str]] = {}
    paths = [p for p in runs.glob("headroom-s*.json") if re.fullmatch(r"headroom-s\d+\.json", p.name)]
    for path in sorted(paths, key=lambda p: int(p.stem[len("headroom-s"):])):
        rec = json.loads(path.read_text())
        drop = rec.get("excluded", {})
        for name in ("rows", "curves", "seconds"):
            rows = [r for method_rows in rec.get(name, {}).values() for r in method_rows]
            tables.setdefault(name, []).extend(r for r in rows if name != "rows" or r["config_id"] not in drop)
        for cid, by in drop.items():
            excluded[cid] = sorted({*excluded.get(cid, []), *by})
    return tables, excluded


def _unseen_configs(st: Study, overrides: list[str]) -> Path:
    """The testbed's random held-out configurations (``eval.random`` of them, every matrix at
    ``eval.random_min_bits`` weight bits or more, seeded by ``eval.seed``) as a JSON list of configurations:
    ``runs/<study>/headroom-unseen.json``. The same for every seed and method; never trained on except by
    per-config, which trains one adapter for each of the first few."""
    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import build_space, load_base, random_configs

    path = st.runs / "headroom-unseen.json"
    if not path.is_file():
        cfg = load_config(ROOT / LOWBIT, overrides)
        space = build_space(cfg, load_base(cfg).model)
        path.write_text(json.dumps([space.to_json(c) for c in random_configs(cfg, space)]))
    return path


class Evaluation(NamedTuple):
    """One ``coalora evaluate`` of a headroom unit: at ``step`` (None: the final checkpoint), on the ``set``
    (``seen`` or ``unseen``) of configurations, cached as ``eval-<name>.json``."""

    step: int | None
    set: str
    name: str
    args: tuple[str, ...]


class Unit(NamedTuple):
    """A finished unit of a headroom seed: its training output and its evaluations' rows by (step, set)."""

    out: Path
    evals: dict[tuple[int | None, str], list[dict[str, Any]]]

    def rows(self, step: int | None = None) -> list[dict[str, Any]]:
        """Every row at ``step`` (None: the final), seen then unseen."""
        return [r for s in ("seen", "unseen") for r in self.evals.get((step, s), [])]


def _unit_evaluations(st: Study, unit: str, own: str | None, curve: bool, snaps: list[int], seen_path: Path,
                      unseen_path: Path) -> list[Evaluation]:
    """Every ``coalora evaluate`` of one training output ``runs/<study>/<unit>``: its final, then (``curve``:
    a method of :data:`HEADROOM_CURVES`) each snapshot, when it has them all (runs made before
    ``train.snapshots`` existed have none). A per-config output is evaluated on its own adapters'
    configurations, which are the ``own`` set (``<unit>[-step<k>]``); any other on the seen and the unseen
    files (``<unit>-<set>[-step<k>]``). The only place the cache names are made."""
    from coalora.pipeline.methods import snapshot_dir

    out = st.runs / unit
    steps: list[int | None] = [None]
    if curve and all(snapshot_dir(out, k).is_dir() for k in snaps):
        steps += snaps
    calls: list[Evaluation] = []
    for k in steps:
        ckpt, suffix = (out, "") if k is None else (snapshot_dir(out, k), f"-step{k}")
        if own is not None:
            calls.append(Evaluation(k, own, f"{unit}{suffix}", ("--checkpoint", str(ckpt))))
        else:
            calls += [Evaluation(k, set_name, f"{unit}-{set_name}{suffix}",
                                 ("--checkpoint", str(ckpt), "--config", str(path)))
                      for set_name, path in (("seen", seen_path), ("unseen", unseen_path))]
    return calls


def _train_and_evaluate(st: Study, unit: str, train: Callable[[], Path], evaluations: Callable[[], list[Evaluation]],
                        keep: Path | None) -> Unit:
    """One unit of a headroom seed: a training, then every evaluation of its output (listed once it is
    trained: the snapshots are looked for); with ``keep``, the finished unit is then kept there
    (:func:`keep_unit`), so a pass stopped later loses none of it."""
    out = train()
    calls = evaluations()
    evals = {(e.step, e.set): st.evaluate(e.name, *e.args) for e in calls}
    if keep is not None:
        keep_unit(st.runs, keep, unit, [e.name for e in calls])
    return Unit(out, evals)


# What a kept unit leaves out: the weights (a checkpoint's tensors, its snapshots', the optimizer's moments).
WEIGHTS = "*.safetensors"


def keep_unit(runs: Path, keep: Path, unit: str, evaluations: list[str]) -> None:
    """Copy a finished unit (a training output and its evaluations) from ``runs`` into ``keep``, a directory
    that is committed: everything of ``runs/<unit>`` but its weights (metadata, training sets, times,
    snapshot indexes), its evaluations' cached rows and the logs of its commands. A pass resumed on another
    machine (:func:`restore_units`) then needs neither its training nor its evaluations again.

    The unit's directory is renamed into place last: it is in ``keep`` only when all it needs is."""
    logs = keep / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name in evaluations:
        shutil.copy2(runs / f"eval-{name}.json", keep / f"eval-{name}.json")
    for log in [f"train-{unit}.log", *(f"eval-{name}.log" for name in evaluations)]:
        if (runs / "logs" / log).is_file():  # an evaluation cached by an earlier call may have no log here
            shutil.copy2(runs / "logs" / log, logs / log)
    for name in ("headroom-seen.json", "headroom-unseen.json"):
        if (runs / name).is_file() and not (keep / name).is_file():
            shutil.copy2(runs / name, keep / name)
    partial = keep / f".{unit}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(runs / unit, partial, ignore=shutil.ignore_patterns(WEIGHTS))
    shutil.rmtree(keep / unit, ignore_errors=True)
    partial.rename(keep / unit)
    print(f"   kept {unit} ({len(evaluations)} evaluations) in {keep}", flush=True)


def restore_units(keep: Path, runs: Path) -> list[str]:
    """Put what :func:`keep_unit` kept back into ``runs`` where ``runs`` lacks it (nothing there is
    overwritten); returns the units restored. A restored unit has no weights: its training and evaluations
    are skipped because their outputs are there."""
    if not keep.is_dir():
        return []
    restored = []
    for unit in sorted(p for p in keep.iterdir() if p.is_dir() and p.name.startswith("hr-")):
        if not (runs / unit.name).exists():
            shutil.copytree(unit, runs / unit.name)
            restored.append(unit.name)
    for path in [*keep.glob("*.json"), *(keep / "logs").glob("*.log")]:
        dest = runs / path.relative_to(keep)
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    return restored


def method_rows(units: dict[str, Unit], groups: dict[str, list[str]], method: str,
                step: int | None = None) -> list[dict[str, Any]]:
    """A method's evaluated rows at ``step`` (None: the final checkpoints), over all its units (``groups``:
    method → unit names); per-config's on the budgets' allocations, then (``<method>-unseen``) on the
    unseen configurations it has adapters for."""
    return [r for key in (method, f"{method}-unseen") for name in groups.get(key, []) for r in units[name].rows(step)]


def keep_error_table(keep: Path, table: Path) -> None:
    """Keep an error table (``table``, the ``.npy`` in the user's cache, and its ``.json`` sidecar; SmolLM2's
    is about 15 minutes of one core to compute) in ``keep/errors/``, so that :func:`restore_error_tables`
    spares a new machine that. A table already kept is left as it is."""
    for path in (table, table.with_suffix(".json")):
        dest = keep / "errors" / path.name
        if not dest.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)


def restore_error_tables(keep: Path) -> list[str]:
    """Copy the kept error tables into the user's cache where it lacks them (:func:`keep_error_table`).
    The cache checks each table's sidecar (model, space, quantizer source, checksum) before using it, so
    a table from another version of the quantizer is recomputed, never trusted."""
    from coalora.allocation.error_tables import ErrorTableCache

    root, copied = ErrorTableCache().root, []
    for path in sorted((keep / "errors").glob("*")):
        if not (root / path.name).exists():
            root.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, root / path.name)
            copied.append(path.name)
    return copied


def _headroom_curve(seed: int, rows_of: Callable[[str, int], list[dict[str, Any]]], methods: list[str],
                    snaps: list[int], steps: int, final: dict[str, dict[str, dict[str, Any]]], seen_ids: list[str],
                    budgets: list[float], unseen_ids: list[str]) -> list[dict[str, Any]]:
    """One seed's learning curves: the snapshots of ``methods`` (those of :data:`HEADROOM_CURVES` in the
    seed), evaluated like the finals; ``rows_of(method, step)`` gives a method's evaluated rows at a
    snapshot (per-config's: each adapter on its own configuration, seen and unseen). A method with no rows
    at a snapshot (a run made before ``train.snapshots`` existed) means no curve, and the log says so."""
    by_step: dict[int, dict[str, dict[str, dict[str, Any]]]] = {steps: {m: final[m] for m in methods}}
    for m in methods:
        for k in snaps:
            got = rows_of(m, k)
            if len(got) < len(final[m]):  # an evaluation per final one, or the curve would mix sets
                print(f"   {m}: no snapshot at step {k} (made without train.snapshots): no curve", flush=True)
                return []
            by_step.setdefault(k, {})[m] = {r["config_id"]: r for r in got}
    return headroom_curves(seed, by_step, seen_ids, budgets, unseen_ids)


def headroom(st: Study, seeds: list[int], tables: str = "headroom", keep: Path | None = None) -> dict[str, Any]:
    """The testbed where quantization hurts (issue #15): shared, per-config and coa's variants on SmolLM2 at
    2.75–3.5 bits; the gap closed per budget and on random unseen configurations.

    ``tables`` names the result files (``<tables>.csv``, ``<tables>-summary.csv``, ..., ``<tables>.png``)
    and the returned table, so that another pass (:func:`headroom_full`) stands beside this one."""
    from coalora.pipeline.config import load_config

    variants = {m: HEADROOM_VARIANTS[m] for m in (st.variants or HEADROOM_VARIANTS) if m in HEADROOM_VARIANTS}
    if not variants:
        raise SystemExit(f"study: --variants names none of headroom's variants {list(HEADROOM_VARIANTS)}")
    quick = QUICK_HEADROOM if st.quick else []
    overrides = st.overrides_for(lm=True) + quick
    cfg = load_config(ROOT / LOWBIT, overrides)
    if keep is not None:  # first: the kept runs hold the configurations they were evaluated on
        restored = restore_units(keep, st.runs)
        if restored:
            print(f"   restored {len(restored)} finished units from {keep}: {' '.join(restored)}", flush=True)
        if restore_error_tables(keep):
            print(f"   restored the error table from {keep / 'errors'}", flush=True)
    unseen_path = _unseen_configs(st, overrides)
    per_configs = {m: sets for m, sets in HEADROOM_PER_CONFIG.items() if m == "per-config" or any(
        pc == m for v, (_, pc) in HEADROOM_MATCH.items() if v in variants)}
    snaps = snapshot_steps(cfg.train.steps)
    # The allocations at eval.budgets, known before any training: each method's evaluations follow its own
    # training, and per-config trains an adapter for each of them.
    seen_path = _seen_configs(st, overrides, keep)  # computes the error table the trainings read (once, here)
    # Per-config's adapters: one for each budget's allocation and each of the first unseen configurations,
    # each from a file of its own configuration.
    unseen_some = json.loads(unseen_path.read_text())[:HEADROOM_UNSEEN_PER_CONFIG]
    per_config_files: dict[str, list[Path]] = {}
    for set_name, configs in (("seen", json.loads(seen_path.read_text())), ("unseen", unseen_some)):
        per_config_files[set_name] = [st.runs / f"headroom-{set_name}-{i}.json" for i in range(len(configs))]
        for path, c in zip(per_config_files[set_name], configs):
            text = json.dumps([c])
            if not path.is_file() or path.read_text() != text:  # a resumed pass leaves them as they were
                path.write_text(text)
    for seed in seeds:
        base = quick + [f"train.seed={seed}", f"train.snapshots=[{', '.join(map(str, snaps))}]"]
        plan = {"shared": ("shared", []), **{m: ("per-config", sets) for m, sets in per_configs.items()}, **variants}

        def unit(name: str, method: str, sets: list[str], own: str | None, curve: bool,
                 extra: tuple[str, ...] = (), base: list[str] = base) -> functools.partial:
            return functools.partial(
                _train_and_evaluate, st, name,
                functools.partial(st.trained, name, LOWBIT, method, base + sets, lm=True, extra=extra),
                functools.partial(_unit_evaluations, st, name, own, curve, snaps, seen_path, unseen_path),
                keep)

        # Units of the seed (a training, then its evaluations) are independent: --jobs runs them side by
        # side. Per-config trains one adapter a unit (each is seeded alike, whatever else a process
        # trains), so that a stopped pass loses at most one adapter's training and the pool stays full.
        todo: dict[str, functools.partial] = {}
        groups: dict[str, list[str]] = {}  # method (per-config: and <method>-unseen) -> its units, in order
        for m, (method, sets) in plan.items():
            if m not in per_configs:
                groups[m] = [f"hr-{m}-s{seed}"]
                todo[groups[m][0]] = unit(groups[m][0], method, sets, None, m in HEADROOM_CURVES)
                continue
            for key, set_name, configs in ((m, "seen", [f"b{b:g}" for b in cfg.eval.budgets]),
                                           (f"{m}-unseen", "unseen", [f"unseen{i}" for i in range(len(unseen_some))])):
                groups[key] = [f"hr-{m}-{c}-s{seed}" for c in configs]
                for name, config in zip(groups[key], per_config_files[set_name]):
                    todo[name] = unit(name, method, sets, set_name, m in HEADROOM_CURVES, ("--configs", str(config)))
        units: dict[str, Unit] = st.run_all(todo)
        rows_of = functools.partial(method_rows, units, groups)
        losses = {m: {r["config_id"]: r for r in rows_of(m)} for m in plan}
        # The same files for every method: the seen and unseen ids in the files' order.
        ids = {set_name: [r["config_id"] for r in units[f"hr-shared-s{seed}"].evals[(None, set_name)]]
               for set_name in ("seen", "unseen")}
        outs = {m: units[groups[m][0]].out for m in plan if m not in per_configs}
        hits = trained_on(outs, [seen_path, unseen_path])
        if hits and not st.exclude_trained:
            raise SystemExit(f"study: evaluated configurations are in training sets (positions, seen then unseen: "
                             f"{hits}): an unfair comparison; fix train.init_budgets, or pass --exclude-trained")
        # --exclude-trained: those configurations leave every method's rows and curves; the report says so.
        seen_ids, budgets, unseen_ids, drop = kept_configs(hits, ids["seen"], list(cfg.eval.budgets), ids["unseen"])
        curves = _headroom_curve(seed, rows_of, [m for m in HEADROOM_CURVES if m in plan], snaps, cfg.train.steps,
                                 losses, seen_ids, budgets, unseen_ids)
        # Every configuration's row; the seed's record leaves out the excluded ones (of this call and earlier).
        rows = headroom_rows(seed, losses, ids["seen"], list(cfg.eval.budgets), ids["unseen"], HEADROOM_MATCH)
        # A per-config unit records its time in per_config.json, any other in meta.json; `groups` keys a
        # per-config method's unseen adapters as "<method>-unseen".
        seconds = [{"method": key, "seed": seed, "train_seconds": sum(
            json.loads((units[name].out / ("per_config.json" if key.removesuffix("-unseen") in per_configs
                                           else "meta.json")).read_text())["train_seconds"] for name in names)}
                   for key, names in groups.items()]
        record_seed(st.runs / f"headroom-s{seed}.json", {"rows": rows, "curves": curves, "seconds": seconds}, drop)
    # The tables hold every seed and method recorded in the runs directory, this call's and earlier calls'.
    records, st.excluded = seed_records(st.runs)
    rows, curves, seconds = records.get("rows", []), records.get("curves", []), records.get("seconds", [])
    print(f"   headroom tables: seeds {sorted({r['seed'] for r in rows})}, "
          f"{len({r['method'] for r in rows})} methods (this call's and earlier calls' records)", flush=True)
    st.write_csv(f"{tables}.csv", rows)
    # Always rewritten (header only when nothing was excluded), so the report never shows a stale list.
    with open(st.results / f"{tables}-excluded.csv", "w") as f:
        f.write("config_id,trained_on_by\n" + "".join(f"{c},{' '.join(v)}\n" for c, v in st.excluded.items()))
    recorded = {r["method"] for r in rows}
    pairs = {v: sh for v, (sh, _) in HEADROOM_MATCH.items() if v in recorded and sh in recorded}
    st.write_csv(f"{tables}-pairs.csv", headroom_pairs(_pair_evals(st, [*pairs, *pairs.values()]), pairs,
                                                      set(st.excluded)))
    summary = headroom_summary(rows)
    st.write_csv(f"{tables}-summary.csv", summary)
    st.write_csv(f"{tables}-curves.csv", curves)
    # The plots show the first seed on record (the one every variant has).
    if curves:
        first = [r for r in curves if r["seed"] == curves[0]["seed"] and r["set"] == "seen"]
        plot(st.results / f"{tables}-curves.png",
              {m: (np.array([r["step"] for r in first if r["method"] == m]),
                   np.array([r["mean_loss"] for r in first if r["method"] == m]))
               for m in dict.fromkeys(r["method"] for r in first)},
              "training steps", "test loss at the evaluated budgets (nats)",
              f"SmolLM2-135M, learning curves at the evaluated budgets (seed {curves[0]['seed']})")
    st.write_csv(f"{tables}-seconds.csv", aggregate(seconds, "method", ["train_seconds"]))
    first = [r for r in rows if r["seed"] == rows[0]["seed"]]
    series = {m: (np.array([r["avg_bits"] for r in first if r["method"] == m]),
                  np.array([r["loss"] for r in first if r["method"] == m]))
              for m in dict.fromkeys(r["method"] for r in first)}
    plot(st.results / f"{tables}.png", series, "average bits", "test loss (nats)",
          f"SmolLM2-135M / Wikipedia sample, {cfg.train.steps} steps, seen and unseen (seed {rows[0]['seed']})",
          markers={m: "o" for m in series})
    return {tables: summary}


# What sets the size of a headroom pass (and so what headroom-full keeps at the configuration's values).
FULL_SIZE_KEYS = ("train.steps", "train.warmup_steps", "data.max_train", "data.max_eval", "eval.random",
                  "eval.budgets", "train.snapshots")


def headroom_full(st: Study, seeds: list[int]) -> dict[str, Any]:
    """:func:`headroom` at the testbed configuration's own size, kept apart from the mid-size pass: its runs
    (same names) under ``runs/study-full/`` (``runs/study-quick-full/`` with ``--quick``) and its tables
    ``headroom-full*.csv`` beside ``headroom*.csv``. ``--set`` values still apply (``model.cache_gib``, say),
    but not one that changes the size: the report calls these tables full-size."""
    resized = [kv for kv in st.overrides if kv.split("=", 1)[0].strip() in FULL_SIZE_KEYS]
    if resized:
        raise SystemExit(f"study: headroom-full runs the testbed at its configuration's own size; --set "
                         f"{' '.join(resized)} changes it (the headroom part takes a smaller size)")
    saved = st.runs, st.logs, st.excluded
    st.runs = st.runs.with_name(st.runs.name + "-full")
    st.logs = st.runs / "logs"
    st.logs.mkdir(parents=True, exist_ok=True)
    try:
        return headroom(st, seeds, tables="headroom-full", keep=st.results / "headroom-full-runs")
    finally:
        st.runs, st.logs, st.excluded = saved


def _seen_configs(st: Study, overrides: list[str], keep: Path | None = None) -> Path:
    """The testbed's allocations at ``eval.budgets`` as a JSON list of configurations:
    ``runs/<study>/headroom-seen.json`` (the configurations per-config trains for).

    With ``keep``, the error table they come from is kept there (:func:`keep_error_table`) before the file is
    written: a pass whose file exists has kept its table, and only a pass that computes the allocations loads
    the model (the table's name depends on the model's matrices)."""
    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import budget_configs, build_space, error_table_for, error_table_path, load_base

    path = st.runs / "headroom-seen.json"
    if not path.is_file():
        cfg = load_config(ROOT / LOWBIT, overrides)
        model = load_base(cfg).model
        space = build_space(cfg, model)
        configs = budget_configs(cfg, space, error_table_for(cfg, model, space, progress=False))
        if keep is not None:
            keep_error_table(keep, error_table_path(cfg, model, space))
        path.write_text(json.dumps([space.to_json(c) for c in configs]))
    return path


def headroom_search(st: Study, seeds: list[int]) -> dict[str, Any]:
    """The search ablation on the headroom testbed: the orchestrated coa (the options of
    :data:`HEADROOM_SEARCH_VARIANT`) with the GP search, a frozen training set and random extension, each
    scored on the testbed's evaluated budgets and unseen configurations (test loss, nats).

    ``--variants`` may name some of :data:`HEADROOM_SEARCH_METHODS` (an orchestrated SmolLM2 run is about
    an hour on 2 cores): the tables keep the rows and curves of earlier calls for every (seed, method) this
    call does not run, so the methods can be run in separate calls."""
    from coalora.pipeline.config import load_config

    methods = [m for m in HEADROOM_SEARCH_METHODS if st.variants is None or m in st.variants]
    if not methods:
        raise SystemExit(f"study: --variants names none of headroom-search's methods {list(HEADROOM_SEARCH_METHODS)}")
    quick = QUICK_HEADROOM if st.quick else []
    overrides = st.overrides_for(lm=True) + quick
    cfg = load_config(ROOT / LOWBIT, overrides + HEADROOM_SEARCH_SETS)
    seen_path, unseen_path = _seen_configs(st, overrides), _unseen_configs(st, overrides)
    per_round = max(1, cfg.train.steps // cfg.run.rounds)
    summary, curves = [], []
    for seed in seeds:
        for method in methods:
            name = f"hrs-{method}-s{seed}"
            run = st.orchestrated(name, LOWBIT, quick + HEADROOM_SEARCH_SETS + HEADROOM_VARIANTS[HEADROOM_SEARCH_VARIANT][1]
                                  + seed_sets(seed) + [f"search.method={method}", f"run.steps_per_round={per_round}"],
                                  lm=True)
            hits = trained_on({name: run}, [seen_path, unseen_path])
            if hits:
                raise SystemExit(f"study: {name} trained on evaluated configurations (positions {hits[name]}, "
                                 "seen then unseen): an unfair comparison")
            losses = {set_name: [r["loss"] for r in st.evaluate(f"{name}-{set_name}", "--run", str(run), "--config",
                                                               str(path))]
                      for set_name, path in (("seen", seen_path), ("unseen", unseen_path))}
            row, (rounds, hv) = search_run_row(run, seed, method, {
                "seen_mean_loss": float(np.mean(losses["seen"])), "unseen_mean_loss": float(np.mean(losses["unseen"]))})
            summary.append(row)
            curves += [{"seed": seed, "method": method, "round": int(k), "hypervolume": float(h)}
                       for k, h in zip(rounds, hv)]
    summary = with_earlier(st.results / "headroom-search-seeds.csv", summary)
    curves = with_earlier(st.results / "headroom-search-curves.csv", curves)
    order = {m: i for i, m in enumerate(HEADROOM_SEARCH_METHODS)}
    summary.sort(key=lambda r: (r["seed"], order.get(r["method"], len(order))))
    st.write_csv("headroom-search-seeds.csv", summary)
    st.write_csv("headroom-search-curves.csv", curves)
    agg = aggregate(summary, "method", ["seen_mean_loss", "unseen_mean_loss", "final_hypervolume", "evaluations",
                                       "total_seconds"])
    st.write_csv("headroom-search.csv", agg)
    first = min(r["seed"] for r in curves)
    plot(st.results / "headroom-search.png",
          {m: (np.array([r["round"] for r in curves if r["seed"] == first and r["method"] == m], dtype=float),
               np.array([r["hypervolume"] for r in curves if r["seed"] == first and r["method"] == m]))
           for m in sorted({r["method"] for r in summary if r["seed"] == first}, key=lambda m: order.get(m, 99))},
          "round", "hypervolume (validation loss vs bits)",
          f"Search ablation on the headroom testbed, SmolLM2-135M (seed {first})")
    return {"headroom_search": agg}


def headroom_span(st: Study, seeds: list[int]) -> dict[str, Any]:
    """How much of each evaluated configuration's quantization residual the shared B·A, the best in-span
    core and the configuration's own top-r directions remove, at rank 16 and 64, and what a rank-16 bank
    per bit width adds (``benchmarks/residual_span.py``; exact, seed-independent, no training; each run's
    table kept in ``runs/<study>/headroom-span-<name>.csv`` and skipped once there):
    ``headroom-span.csv`` (the ranks) and ``headroom-span-bank.csv``."""
    tables = {}
    for name, args in HEADROOM_SPAN_RUNS.items():
        path = st.runs / f"headroom-span-{name}.csv"
        if path.is_file():
            st.reuse(f"headroom-span-{name}.log")
        else:
            partial = st.runs / f"headroom-span-{name}.partial.csv"  # the script appends: start empty
            partial.unlink(missing_ok=True)
            st.sh([sys.executable, "benchmarks/residual_span.py", *args, "--unseen", str(HEADROOM_UNSEEN_PER_CONFIG),
                   "--csv", str(partial)], f"headroom-span-{name}.log", echo=True)
            partial.rename(path)
        with open(path, newline="") as f:  # as written (the script's own number format)
            tables[name] = list(csv.DictReader(f))
    st.write_csv("headroom-span.csv", tables["r16"] + tables["r64"])
    st.write_csv("headroom-span-bank.csv", tables["bank16"])
    return {"headroom_span": tables["r16"] + tables["r64"] + tables["bank16"]}
