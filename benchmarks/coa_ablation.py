"""Why does (or doesn't) coa beat Shared-LoRA? Variants of coa against shared, side by side in one run.

Every variant trains with the same YAML plus its own overrides, on the same training set (allocations at
``train.init_budgets``), and is scored on the same held-out random configurations as
``benchmarks/quality.py`` (``eval.random`` of them over ``eval.random_bits``, never in the training set).
Besides accuracy it reports what U_θ learned, from its cores ``M(C) = I + s·U_θ(C)`` on the held-out
configurations (``r`` = rank):

- ``core_dev``: mean ``‖M − I‖_F / √r`` (how far the cores are from the identity, i.e. from shared);
- ``core_spread``: mean over matrices of ``‖M(C) − mean_C M(C)‖_F / √r`` (how much the core *varies* with
  the configuration: zero means U_θ adds one fixed adjustment, which shared's B can absorb);
- ``acc_vs_bits``: the slope of accuracy against average bits over the held-out set (points per bit).

Variants are ``NAME:key=value,key=value`` (``train.method=shared`` makes the Shared-LoRA reference)::

    python benchmarks/coa_ablation.py --config configs/quality.yaml \\
        --variant shared:train.method=shared --variant coa: \\
        --variant coa-lr10:train.hypernet_lr_scale=10 [--quick] [--json]
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

DEFAULT_VARIANTS = [
    "shared:train.method=shared",
    "coa:",
    "coa-lr10:train.hypernet_lr_scale=10",
    "coa-lr10-context:train.hypernet_lr_scale=10,hypernet.context=true",
]


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``NAME:k=v,k=v`` → (name, overrides)."""
    name, _, rest = text.partition(":")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME:key=value,...")
    return name, [kv for kv in rest.split(",") if kv]


def core_stats(model: Any, configs: np.ndarray) -> tuple[float, float]:
    """(mean ‖M − I‖_F/√r, mean ‖M − mean_C M‖_F/√r) of U_θ's cores on ``(B, N, 5)`` configurations."""
    import torch

    from coalora.model.hypernet import as_index_tensor

    if model.hypernet is None:
        return 0.0, 0.0
    with torch.no_grad():
        cores = model.hypernet(as_index_tensor(configs, model.device)).double()  # (B, N, r, r)
    r = cores.shape[-1]
    eye = torch.eye(r, dtype=cores.dtype)
    dev = torch.linalg.matrix_norm(cores - eye).mean() / r**0.5
    spread = torch.linalg.matrix_norm(cores - cores.mean(0, keepdim=True)).mean() / r**0.5
    return float(dev), float(spread)


def main() -> None:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/quality.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="applies to every variant")
    p.add_argument("--variant", action="append", default=None, metavar="NAME:KEY=VALUE,...")
    p.add_argument("--split", default="test", choices=["validation", "test"])
    p.add_argument("--results", default="benchmarks/results", help="where the CSV/JSON results go")
    args = p.parse_args()
    _bench.setup_threads(args.threads)
    from coalora.pipeline.config import load_config
    from coalora.pipeline.evaluate import evaluate
    from coalora.pipeline.experiment import load_data, random_configs
    from coalora.pipeline.methods import load_adapted, train_method

    base = list(args.set)
    if args.quick:
        base += ["train.steps=6", "eval.random=2", "data.max_eval=64", "data.max_train=512",
                 "train.init_budgets=[2.5,3.0,4.0,6.0]"]
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    out = Path(tempfile.mkdtemp(prefix="coalora-ablation-"))
    say = lambda s: print(s, file=sys.stderr)  # noqa: E731
    heldout = batches = task = None
    table, per_config = [], {}
    for name, overrides in variants:
        cfg = load_config(args.config, base + overrides)
        t0 = time.perf_counter()
        summary = train_method(cfg, out / name, progress=False, say=say)
        model, meta, _, loaded = load_adapted(out / name, cfg=cfg)
        if heldout is None:
            task = loaded.task
            batches = load_data(cfg, loaded.tokenizer, task).eval_batches(cfg, args.split)
            trainset = np.stack([model.space.from_json(c) for c in meta["trainset"]])
            heldout = random_configs(cfg, model.space, exclude=trainset)
        rows = evaluate(model, heldout, batches, task)
        metric = "accuracy" if task == "classification" else "perplexity"
        vals = np.array([r[metric] for r in rows])
        bits = np.array([r["avg_bits"] for r in rows])
        dev, spread = core_stats(model, heldout)
        per_config[name] = vals
        table.append({
            "variant": name, "overrides": " ".join(overrides) or "-", f"mean_{metric}": float(vals.mean()),
            "std": float(vals.std()), "acc_vs_bits": float(np.polyfit(bits, vals, 1)[0]) if len(vals) > 1 else 0.0,
            "core_dev": dev, "core_spread": spread, "train_loss": summary.get("train_loss", float("nan")),
            "train_seconds": summary["train_seconds"],
        })
        say(f"{name}: {vals.mean():.4f} in {time.perf_counter() - t0:.0f} s")
    if "shared" in per_config:
        for r in table:
            r["vs_shared"] = float(per_config[r["variant"]].mean() - per_config["shared"].mean())
            # Paired over the same held-out configurations: the mean difference over its standard error.
            d = per_config[r["variant"]] - per_config["shared"]
            r["paired_t"] = float(d.mean() / (d.std(ddof=1) / len(d) ** 0.5)) if len(d) > 1 and d.std() > 0 else 0.0
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    stem = "coa-ablation-quick" if args.quick else "coa-ablation"
    with open(res / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(table[0]))
        w.writeheader()
        w.writerows(table)
    (res / f"{stem}.json").write_text(json.dumps({"summary": table, "command": " ".join(sys.argv)}, indent=1))
    _bench.emit("coa ablation: held-out accuracy and what U_θ learned", table, args.json)


if __name__ == "__main__":
    main()
