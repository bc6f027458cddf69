"""Quality of one configuration-aware model against per-configuration and shared adapters.

Trains ``coa``, ``shared``, ``per-config`` (one adapter per evaluation configuration, each with as
many steps as ``coa`` takes in total) and ``fp-lora`` with the same YAML, then scores every method on
the same held-out random configurations (``eval.random`` of them over ``eval.random_bits``, never in
coa's training set) on the test split. Prints mean accuracy (or perplexity) per method, the gaps,
and the total training time of each method (per-config: the sum over its adapters).

    python benchmarks/quality.py --config configs/quality.yaml [--quick] [--json] [--out DIR]
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _bench  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/quality.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--methods", default="coa,shared,per-config,fp-lora")
    p.add_argument("--out", default=None, help="keep checkpoints here (default: a temporary directory)")
    p.add_argument("--results", default="benchmarks/results", help="where the CSV/JSON results go")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    args = p.parse_args()
    _bench.setup_threads(args.threads)
    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import random_configs
    from coalora.pipeline.methods import evaluate_served, train_method

    overrides = list(args.set)
    if args.quick:
        overrides += ["train.steps=6", "eval.random=2", "data.max_eval=64", "data.max_train=512",
                      "train.init_budgets=[2.5,3.0,4.0,6.0]"]
    cfg = load_config(args.config, overrides)
    methods = args.methods.split(",")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="coalora-quality-"))
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731

    # coa first: its training set defines what "held out" means for every method.
    summaries, scores = {}, {}
    heldout = None

    def held_out(model: Any, meta: dict[str, Any], exp: Any) -> np.ndarray:
        """coa's training set's complement (drawn once, when coa is scored), for coa and shared alike."""
        nonlocal heldout
        if heldout is None:
            trainset = np.stack([model.space.from_json(c) for c in meta["trainset"]])
            heldout = random_configs(exp, model.space, exclude=trainset)
        return heldout

    for method in ["coa"] + [m for m in methods if m != "coa"] if "coa" in methods else methods:
        path = out / method
        t0 = time.perf_counter()
        if method == "per-config" and heldout is None:
            raise SystemExit("per-config needs the held-out configurations: include coa in --methods")
        summaries[method] = train_method(cfg, path, method, progress=False, say=say,
                                         configs=heldout if method == "per-config" else None)
        # per-config: each adapter on its own held-out configuration; fp-lora: unquantized; else held_out.
        scores[method], task = evaluate_served(path, held_out, cfg=cfg, split=args.split)
        say(f"{method}: done in {time.perf_counter() - t0:.0f} s")

    metric = "accuracy" if task == "classification" else "perplexity"
    table = []
    ref = np.array([r[metric] for r in scores.get("per-config", [])]) if "per-config" in scores else None
    for method in methods:
        vals = np.array([r[metric] for r in scores[method]])
        row = {"method": method, f"mean_{metric}": float(vals.mean()), "std": float(vals.std()),
               "min": float(vals.min()), "max": float(vals.max()), "n_configs": len(vals),
               "train_seconds": summaries[method]["train_seconds"], "steps": summaries[method]["steps"]}
        if ref is not None and method != "fp-lora" and len(vals) == len(ref):
            row["gap_to_per_config"] = float((vals - ref).mean())
        table.append(row)
    per_config_rows = []
    if heldout is not None:
        for i in range(len(heldout)):
            r = {"avg_bits": scores["coa"][i]["avg_bits"], "config_id": scores["coa"][i]["config_id"]}
            for m in methods:
                if m != "fp-lora" and m in scores:
                    r[m] = scores[m][i][metric]
            per_config_rows.append(r)
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    stem = "quality-quick" if args.quick else "quality"
    with open(res_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in per_config_rows for k in r)))
        w.writeheader()
        w.writerows(per_config_rows)
    (res_dir / f"{stem}.json").write_text(json.dumps({"summary": table, "per_config": per_config_rows,
                                                       "config": cfg.to_dict()}, indent=1))
    _bench.emit(f"Quality: {cfg.model.name} on {cfg.data.name}, {args.split} split, "
                f"{cfg.train.steps} steps per method/adapter", table, args.json)
    if not args.json:
        print()
        print(_bench.format_table(per_config_rows))


if __name__ == "__main__":
    main()
