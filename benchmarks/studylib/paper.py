"""The paper's claims at CPU scale on MiniLM / Rotten Tomatoes and SmolLM2: Table 2, the issue-#15 options on
Table 2, the seed-to-seed spread, seen against unseen configurations, the search ablation, the causal LM."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .common import (
    accuracy_hypervolume,
    aggregate,
    per_config_configs,
    plot,
    run_train_seconds,
    search_run_row,
    seed_sets,
    trained_on,
    with_earlier,
)
from .runner import Study
from .settings import MINILM, ROOT, SEARCH_METHODS, SMOLLM, TABLE2_OPTIONS, UNSEEN_SEED


def _table2_args(st: Study) -> tuple[Any, list[str], list[str]]:
    """MiniLM's config, the baselines' step override and the evaluation budgets, shared by ``table2``
    and ``baseline_seeds`` so both train and score the very same runs.

    A baseline trains as many steps as coa does over all its rounds (``run.rounds × steps per round``)."""
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / MINILM, st.overrides_for())
    steps = cfg.run.rounds * (cfg.run.steps_per_round or cfg.train.steps)
    return cfg, [f"train.steps={steps}"], [str(b) for b in cfg.eval.budgets]


# ---------------------------------------------------------------------- parts
def table2(st: Study, seeds: list[int]) -> dict[str, Any]:
    cfg, total, budgets = _table2_args(st)
    per_config_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for seed in seeds:
        s = seed_sets(seed)
        run = st.orchestrated(f"coa-s{seed}", MINILM, s)
        scores = {"coa": st.evaluate(f"coa-s{seed}-budgets", "--run", str(run), "--budget", *budgets)}
        seconds = {"coa": run_train_seconds(run)}
        for method in ("shared", "fp-lora", "per-config"):  # per-config last: the longest
            out = st.trained(f"{method}-s{seed}", MINILM, method, s + total)
            if method == "per-config":
                scores[method] = st.evaluate(f"{method}-s{seed}", "--checkpoint", str(out))
                seconds[method] = (json.loads((out / "per_config.json").read_text())["train_seconds"],) * 2
            else:
                args = ["--checkpoint", str(out)] + ([] if method == "fp-lora" else ["--budget", *budgets])
                scores[method] = st.evaluate(f"{method}-s{seed}", *args)
                t = json.loads((out / "meta.json").read_text())["train_seconds"]
                seconds[method] = (t, t)
        ref = np.array([r["accuracy"] for r in scores["per-config"]])
        ids = {m: [r["config_id"] for r in scores[m]] for m in ("coa", "shared", "per-config")}
        if not ids["coa"] == ids["shared"] == ids["per-config"]:
            raise SystemExit(f"study: methods were scored on different configurations: {ids}")
        # Fairness (issue #15): no method but per-config may have trained on an evaluated allocation.
        hits = trained_on({"coa": run, "shared": st.runs / f"shared-s{seed}"},
                          [per_config_configs(st.runs / f"per-config-s{seed}")])
        if hits:
            raise SystemExit(f"study: Table 2's evaluated allocations (positions {hits}) are in a training set: "
                             f"an unfair comparison; move train.init_budgets off eval.budgets in {MINILM}")
        lo = min(cfg.eval.budgets) - 0.25  # the hypervolume's bits axis: a quarter bit around the budgets
        for method, rows in scores.items():
            acc = np.array([r["accuracy"] for r in rows])
            bits = np.array([r["avg_bits"] for r in rows])
            row = {"seed": seed, "method": method, "mean_accuracy": float(acc.mean()),
                   "min_accuracy": float(acc.min()), "configs": len(acc),
                   "train_seconds": seconds[method][0], "total_seconds": seconds[method][1],
                   "adapters": len(acc) if method == "per-config" else 1}
            if method != "fp-lora":
                row["gap_to_per_config_pt"] = float((acc - ref).mean() * 100)
                row["hypervolume"] = accuracy_hypervolume(acc, bits, (lo, max(cfg.eval.budgets) + 0.25))
            summary.append(row)
            for r, b in zip(rows, cfg.eval.budgets if method != "fp-lora" else [None]):
                per_config_rows.append({"seed": seed, "method": method, "budget": b, "config_id": r["config_id"],
                                        "avg_bits": r["avg_bits"], "accuracy": r["accuracy"], "loss": r["loss"]})
    agg = aggregate(summary, "method", ["mean_accuracy", "gap_to_per_config_pt", "hypervolume", "train_seconds"])
    st.write_csv("table2-per-config.csv", per_config_rows)
    st.write_csv("table2-seeds.csv", summary)
    st.write_csv("table2.csv", agg)
    series = {}
    for method in ("coa", "shared", "per-config"):
        rows = [r for r in per_config_rows if r["method"] == method and r["seed"] == seeds[0]]
        series[method] = (np.array([r["avg_bits"] for r in rows]), np.array([r["accuracy"] for r in rows]))
    fp = [r["accuracy"] for r in per_config_rows if r["method"] == "fp-lora" and r["seed"] == seeds[0]]
    plot(st.results / "table2.png", series, "average bits", "test accuracy",
          f"MiniLM-L6 / Rotten Tomatoes, allocation configurations (seed {seeds[0]})",
          hlines={"fp-lora (unquantized)": fp[0]} if fp else None)
    return {"table2": agg}


def table2_options(st: Study, seeds: list[int]) -> dict[str, Any]:
    """:data:`TABLE2_OPTIONS` on Table 2's budgets and seeds, beside Table 2's own coa and shared: mean test
    accuracy, the gap to per-config and to the plain shared of the same seed (points). Needs ``table2``'s
    runs of those seeds (it reuses their evaluations)."""
    cfg, total, budgets = _table2_args(st)
    options = {m: v for m, v in TABLE2_OPTIONS.items() if st.variants is None or m in st.variants}
    if not options:
        raise SystemExit(f"study: --variants names none of table2-options' options {list(TABLE2_OPTIONS)}")
    summary: list[dict[str, Any]] = []
    for seed in seeds:
        s = seed_sets(seed)
        if not all((st.runs / f"eval-{m}-s{seed}{tail}.json").is_file()
                   for m, tail in (("coa", "-budgets"), ("shared", ""), ("per-config", ""))):
            raise SystemExit(f"study: table2-options compares with Table 2's runs of seed {seed}: "
                             f"run `--parts table2 --seeds {seed}` first")
        scores = {"coa": st.evaluate(f"coa-s{seed}-budgets"), "shared": st.evaluate(f"shared-s{seed}"),
                  "per-config": st.evaluate(f"per-config-s{seed}")}
        outs = {}
        for name, (method, sets) in options.items():
            if method == "coa":
                outs[name] = st.orchestrated(f"{name}-s{seed}", MINILM, s + sets)
                scores[name] = st.evaluate(f"{name}-s{seed}-budgets", "--run", str(outs[name]), "--budget", *budgets)
            else:
                outs[name] = st.trained(f"{name}-s{seed}", MINILM, method, s + total + sets)
                scores[name] = st.evaluate(f"{name}-s{seed}", "--checkpoint", str(outs[name]), "--budget", *budgets)
        hits = trained_on(outs, [per_config_configs(st.runs / f"per-config-s{seed}")])
        if hits:
            raise SystemExit(f"study: Table 2's evaluated allocations (positions {hits}) are in a training set")
        ids = {m: [r["config_id"] for r in rows] for m, rows in scores.items()}
        if len({tuple(v) for v in ids.values()}) != 1:
            raise SystemExit(f"study: methods were scored on different configurations: {ids}")
        acc = {m: np.array([r["accuracy"] for r in rows]) for m, rows in scores.items()}
        for m in ("coa", "shared", *options):
            out = outs.get(m, st.runs / f"{m}-s{seed}")
            seconds = (run_train_seconds(out)[0] if (out / "rounds.parquet").is_file()
                       else json.loads((out / "meta.json").read_text())["train_seconds"])
            summary.append({"seed": seed, "method": m, "mean_accuracy": float(acc[m].mean()),
                            "gap_to_per_config_pt": float((acc[m] - acc["per-config"]).mean() * 100),
                            "gap_to_shared_pt": float((acc[m] - acc["shared"]).mean() * 100),
                            "train_seconds": seconds})
    summary = with_earlier(st.results / "table2-options-seeds.csv", summary)  # --variants: keep the others
    st.write_csv("table2-options-seeds.csv", summary)
    agg = aggregate(summary, "method", ["mean_accuracy", "gap_to_per_config_pt", "gap_to_shared_pt", "train_seconds"])
    st.write_csv("table2-options.csv", agg)
    return {"table2_options": agg}


def baseline_seeds(st: Study, seeds: list[int]) -> dict[str, Any]:
    """Table 2's shared and per-config alone at several seeds (a subset of ``table2``'s runs, which it
    reuses): how far a method's mean accuracy moves with the seed, the yardstick for coa's gap."""
    _, total, budgets = _table2_args(st)
    rows = []
    for seed in seeds:
        for method in ("shared", "per-config"):
            out = st.trained(f"{method}-s{seed}", MINILM, method, seed_sets(seed) + total)
            args = ["--checkpoint", str(out)] + (["--budget", *budgets] if method == "shared" else [])
            acc = [r["accuracy"] for r in st.evaluate(f"{method}-s{seed}", *args)]
            rows.append({"seed": seed, "method": method, "mean_accuracy": float(np.mean(acc)), **{
                f"acc_{b}": a for b, a in zip(budgets, acc)}})
    st.write_csv("baseline-seeds.csv", rows)
    agg = aggregate(rows, "method", ["mean_accuracy"])
    for row in agg:  # the seed-to-seed range of the mean, in points
        mine = [r["mean_accuracy"] for r in rows if r["method"] == row["method"]]
        row["range_pt"] = (max(mine) - min(mine)) * 100
    return {"baseline_seeds": agg}


def seen_unseen(st: Study, seeds: list[int]) -> dict[str, Any]:
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / MINILM, st.overrides_for())
    rows_out, summary = [], []
    for seed in seeds:
        run = st.orchestrated(f"coa-s{seed}", MINILM, seed_sets(seed))
        seen = st.evaluate(f"coa-s{seed}-seen", "--run", str(run))  # the set its last round trained on
        unseen = st.evaluate(f"coa-s{seed}-unseen", "--run", str(run), "--random", str(cfg.eval.random),
                             "--seed", str(UNSEEN_SEED))
        overlap = {r["config_id"] for r in seen} & {r["config_id"] for r in unseen}
        if overlap:
            raise SystemExit(f"study: 'unseen' configurations {sorted(overlap)} are in the training set")
        shared_run = st.runs / f"shared-s{seed}"
        shared = (st.evaluate(f"shared-s{seed}-unseen", "--checkpoint", str(shared_run), "--random",
                              str(cfg.eval.random), "--seed", str(UNSEEN_SEED))
                  if (shared_run / "meta.json").is_file() else [])
        for label, rows in (("coa seen", seen), ("coa unseen", unseen), ("shared unseen", shared)):
            for r in rows:
                rows_out.append({"seed": seed, "set": label, "config_id": r["config_id"], "avg_bits": r["avg_bits"],
                                 "accuracy": r["accuracy"], "loss": r["loss"]})
        # Does coa generalise? Compare the unseen accuracies with a line fitted to the seen ones over the
        # same bit range (the seen set spans 2.25-7 bits, the unseen 2.5-4).
        sb = np.array([r["avg_bits"] for r in seen])
        sa = np.array([r["accuracy"] for r in seen])
        ub = np.array([r["avg_bits"] for r in unseen])
        ua = np.array([r["accuracy"] for r in unseen])
        in_range = (sb >= ub.min() - 0.25) & (sb <= ub.max() + 0.25)
        fit = np.polyfit(sb, sa, 1) if len(sb) > 1 else np.array([0.0, sa.mean()])
        summary.append({
            "seed": seed, "seen_configs": len(sb), "seen_mean_accuracy_all": float(sa.mean()),
            "seen_mean_accuracy_in_unseen_range": float(sa[in_range].mean()) if in_range.any() else None,
            "unseen_configs": len(ub), "unseen_mean_accuracy": float(ua.mean()),
            "unseen_minus_seen_fit_pt": float((ua - np.polyval(fit, ub)).mean() * 100),
            "shared_unseen_mean_accuracy": float(np.mean([r["accuracy"] for r in shared])) if shared else None,
        })
    st.write_csv("seen-unseen.csv", rows_out)
    st.write_csv("seen-unseen-summary.csv", summary)
    series = {}
    for label in ("coa seen", "coa unseen", "shared unseen"):
        rows = [r for r in rows_out if r["set"] == label and r["seed"] == seeds[0]]
        if rows:
            series[label] = (np.array([r["avg_bits"] for r in rows]), np.array([r["accuracy"] for r in rows]))
    plot(st.results / "seen-unseen.png", series, "average bits", "test accuracy",
          f"coa on configurations it trained on vs never saw (seed {seeds[0]})",
          markers={"coa seen": "o", "coa unseen": "x", "shared unseen": "+"})
    return {"seen_unseen": summary}


def search_ablation(st: Study, seeds: list[int]) -> dict[str, Any]:
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / MINILM, st.overrides_for())
    summary, curves = [], {}
    for seed in seeds:
        for method in SEARCH_METHODS:
            name = f"coa-s{seed}" if method == "gp" else f"search-{method}-s{seed}"
            run = st.orchestrated(name, MINILM, seed_sets(seed) + [f"search.method={method}"])
            held = st.evaluate(f"{name}-unseen", "--run", str(run), "--random", str(cfg.eval.random),
                               "--seed", str(UNSEEN_SEED))
            # Table 2's six allocation configurations: the same configurations for every method.
            at_budgets = st.evaluate(f"{name}-budgets", "--run", str(run), "--budget",
                                     *[str(b) for b in cfg.eval.budgets])
            row, curve = search_run_row(run, seed, method, {
                "heldout_mean_accuracy": float(np.mean([r["accuracy"] for r in held])),
                "budgets_mean_accuracy": float(np.mean([r["accuracy"] for r in at_budgets]))})
            summary.append(row)
            if seed == seeds[0]:
                curves[method] = curve
    st.write_csv("search-ablation-seeds.csv", summary)
    agg = aggregate(summary, "method", ["final_hypervolume", "heldout_mean_accuracy", "budgets_mean_accuracy",
                                       "evaluations", "total_seconds"])
    st.write_csv("search-ablation.csv", agg)
    plot(st.results / "search-ablation.png", curves, "round", "hypervolume (validation loss vs bits)",
          f"Search ablation, MiniLM-L6 / Rotten Tomatoes (seed {seeds[0]})")
    return {"search_ablation": agg}


def causal_lm(st: Study, seeds: list[int]) -> dict[str, Any]:
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / SMOLLM, st.overrides_for(lm=True))
    rows_out, summary = [], []
    for seed in seeds:
        s = [f"train.seed={seed}"]
        scores, seconds = {}, {}
        outs = {m: st.trained(f"lm-{m}-s{seed}", SMOLLM, m, s, lm=True) for m in ("coa", "shared", "per-config")}
        scores["per-config"] = st.evaluate(f"lm-per-config-s{seed}", "--checkpoint", str(outs["per-config"]))
        seconds["per-config"] = json.loads((outs["per-config"] / "per_config.json").read_text())["train_seconds"]
        # coa and shared are scored on the very configurations per-config trained for, read from its
        # checkpoints rather than allocated again: runs made before allocate's node limit (when only a
        # time limit bounded SmolLM2's MILP) may hold other allocations than today's code gives.
        at = per_config_configs(outs["per-config"])
        for method in ("coa", "shared"):
            scores[method] = st.evaluate(f"lm-{method}-s{seed}-at-per-config", "--checkpoint", str(outs[method]),
                                         "--config", str(at))
            seconds[method] = json.loads((outs[method] / "meta.json").read_text())["train_seconds"]
        ids = {m: [r["config_id"] for r in rows] for m, rows in scores.items()}
        if not ids["coa"] == ids["shared"] == ids["per-config"]:
            raise SystemExit(f"study: methods were scored on different configurations: {ids}")
        ref = np.array([r["perplexity"] for r in scores["per-config"]])
        for method, rows in scores.items():
            ppl = np.array([r["perplexity"] for r in rows])
            tokens = cfg.train.steps * cfg.data.batch_size * cfg.data.block_size * (len(rows) if method == "per-config" else 1)
            summary.append({"seed": seed, "method": method, "mean_perplexity": float(ppl.mean()),
                            "ratio_to_per_config": float((ppl / ref).mean()), "steps": cfg.train.steps,
                            "adapters": len(rows) if method == "per-config" else 1, "train_tokens": tokens,
                            "train_seconds": seconds[method]})
            for r, b in zip(rows, cfg.eval.budgets):
                rows_out.append({"seed": seed, "method": method, "budget": b, "config_id": r["config_id"],
                                 "avg_bits": r["avg_bits"], "perplexity": r["perplexity"], "loss": r["loss"]})
    st.write_csv("causal-lm-per-config.csv", rows_out)
    agg = aggregate(summary, "method", ["mean_perplexity", "ratio_to_per_config", "train_seconds"])
    st.write_csv("causal-lm.csv", agg)
    series = {m: (np.array([r["avg_bits"] for r in rows_out if r["method"] == m and r["seed"] == seeds[0]]),
                  np.array([r["perplexity"] for r in rows_out if r["method"] == m and r["seed"] == seeds[0]]))
              for m in ("coa", "shared", "per-config")}
    plot(st.results / "causal-lm.png", series, "average bits", "test perplexity",
          f"SmolLM2-135M / Wikipedia sample, {cfg.train.steps} steps (seed {seeds[0]})")
    return {"causal_lm": agg}
