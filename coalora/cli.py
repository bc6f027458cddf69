"""The ``coalora`` command: inspect a space, train a method, evaluate configurations, export adapters.

    coalora space    --model minilm-l6 [--json]
    coalora train    --config configs/default.yaml [--method coa|shared|per-config|fp-lora] --out DIR
    coalora evaluate --checkpoint DIR (--config FILE | --budget B | --random N [--seed S]) [--json]
    coalora adapt    (--checkpoint DIR | --run RUN_DIR) (--budget B | --config FILE) --out DIR

(``--config`` of evaluate/adapt is a configuration JSON, module name → knobs, as written by adapt.)

Every expected failure (bad YAML, unknown module, impossible budget, wrong path, a checkpoint from
another model or a damaged one, an unusable ``--out``, bad data) prints one line ``coalora: error: ...``
and exits with status 2, having written nothing; ``--out`` is checked before any work starts. Anything
else is a bug and keeps its traceback. With ``--json`` stdout holds exactly one JSON document (progress
notes and native solver output go to stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from coalora.errors import USER_ERRORS, UsageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# What marks a directory as an earlier coalora output, which --overwrite may replace.
_OUTPUT_MARKERS = ("meta.json", "per_config.json", "export.json")


def _check_out(value: str, overwrite: bool, reads: Sequence[str | None] = ()) -> Path:
    """``--out`` checked before any work starts; returns it as an absolute path.

    An existing file, a directory that cannot be created (a file on the way, no permission) or written,
    a non-empty directory without ``--overwrite``, and with it a non-empty directory that is no earlier
    coalora output or that holds what this command reads (``reads``: its checkpoint), are errors.
    Nothing is created here: the probe of write permission is a temporary directory, removed at once.
    """
    import tempfile

    if not value.strip():
        raise UsageError("--out is empty: name the directory to write")
    out = Path(os.path.abspath(os.path.expanduser(value)))
    try:
        if out.exists():
            if not out.is_dir():
                raise UsageError(f"--out {value} exists and is not a directory")
            if any(out.iterdir()):
                if not overwrite:
                    raise UsageError(f"output directory {value} exists and is not empty (pass --overwrite)")
                if not any((out / m).is_file() for m in _OUTPUT_MARKERS):
                    raise UsageError(f"--out {value} is not empty and holds no earlier coalora output (no "
                                     f"{', '.join(_OUTPUT_MARKERS)}): --overwrite would delete it; choose another "
                                     "directory")
            for r in reads:
                src = Path(os.path.abspath(os.path.expanduser(r))) if r else None
                if src is not None and src.exists() and (src == out or out in src.parents):
                    raise UsageError(f"--out {value} holds {r}, which this command reads: choose another directory")
        existing = out.parent
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise UsageError(f"--out {value} cannot be created: {existing} is a file, not a directory")
        # A real write, not os.access: it also finds read-only file systems and works for root alike.
        # Checkpoints and exports are written next to ``out`` and renamed into place, so its parent (or
        # the nearest existing ancestor) must take new entries; an existing ``out`` is emptied on replace.
        for d in ([existing] if not out.exists() else [existing, out]):
            try:
                with tempfile.TemporaryDirectory(dir=d, prefix=".coalora-probe-"):
                    pass
            except OSError as e:
                raise UsageError(f"--out {value} cannot be written: {e.strerror or e} in {d}") from None
    except OSError as e:
        raise UsageError(f"--out {value} cannot be written: {e.strerror or e}"
                         f"{f' ({e.filename})' if e.filename else ''}") from None
    return out


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line, like every other error of the command."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        self.exit(2, f"coalora: error: {self.prog}: {message} (see {self.prog} --help)\n")


def _print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    def fmt(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


# ---------------------------------------------------------------------- space
def cmd_space(args: argparse.Namespace) -> int:
    from coalora.core.space import QuantSpace
    from coalora.model.loading import load_model
    from coalora.pipeline.config import SpaceSection

    sec = SpaceSection(preset=args.preset, family=args.family)
    sec.validate()
    loaded = load_model(args.model, task=args.task)
    space = QuantSpace.from_model(loaded.model, options=sec.option_lists(), family=sec.family)
    info = space.describe()
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"model {args.model}: {info['n_matrices']} target matrices, {info['total_params']:,} parameters")
    print(f"options per matrix: {info['options_per_matrix']}  (family {info['family']})")
    for knob, values in info["options"].items():
        print(f"  {knob:13s} {values}")
    print(f"attainable average bits: {space.attainable_range()}")  # exact, never rounded inside
    _print_table(info["matrices"], ["name", "layer", "module_type", "shape"])
    return 0


# ---------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    from coalora.pipeline.config import load_config
    from coalora.pipeline.methods import train_method

    overrides = list(args.set or [])
    if args.method:
        overrides.append(f"train.method={args.method}")
    try:
        cfg = load_config(args.config, overrides)
    except UnicodeDecodeError as e:  # a YAML file in another encoding: bad input, not a bug
        from coalora.errors import ConfigError

        raise ConfigError(f"{args.config} is not UTF-8 text ({e.reason} at byte {e.start + 1}); save it as UTF-8"
                          ) from None
    configs = None
    if args.configs is not None:
        if cfg.train.method != "per-config":
            raise UsageError(f"--configs trains one adapter per configuration: it needs --method per-config, "
                             f"not {cfg.train.method}")
        if not Path(args.configs).is_file():  # before the model loads, not after
            raise FileNotFoundError(f"configuration file not found: {args.configs}")
        configs = lambda space: _read_config_json(args.configs, space, many=True)  # noqa: E731
    out = _check_out(args.out, args.overwrite, reads=[args.config, cfg.data.name, args.configs])
    # With --json, stdout carries only the JSON summary; progress notes go to stderr.
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    summary = train_method(cfg, out, progress=not args.quiet, say=say, configs=configs)
    print(json.dumps(summary, indent=1) if args.json else f"wrote {', '.join(summary['checkpoints'])}")
    return 0


# ---------------------------------------------------------------------- evaluate / adapt helpers
def _read_config_json(path: str, space: Any, many: bool = False) -> Any:
    """A configuration JSON file → ``(N, 5)`` indices; with ``many``, a list of them → ``(B, N, 5)``.

    One configuration is a mapping module name → knobs; a file may also hold a list of such mappings
    (``many`` only), e.g. the ``trainset`` of ``runs/<name>/trainset/round_<k>.json``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"configuration file not found: {path}")
    try:
        data = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        from coalora.errors import SpaceError

        raise SpaceError(f"{path} is not valid JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("trainset"), list):
        data = data["trainset"]  # a run's trainset/round_<k>.json
    if isinstance(data, list):
        if not many:
            raise UsageError(f"{path} holds {len(data)} configurations; this command takes one")
        if not data:
            raise UsageError(f"{path} holds an empty list of configurations")
        import numpy as np

        return np.stack([space.from_json(c) for c in data])
    config = space.from_json(data)
    return config[None] if many else config


def _budget_config(model: Any, cfg: Any, budget: float) -> Any:
    from coalora.allocation.knapsack import allocate
    from coalora.pipeline.experiment import error_table_for

    model.space.check_budget(budget)
    err = error_table_for(cfg, model.model, model.space, progress=False)
    return allocate(err, model.space, budget)


def _local_checkpoint(args: argparse.Namespace) -> Path:
    """The directory of ``--checkpoint`` or of ``--run``'s last round; either may be a URI (``s3://...``),
    read through a local copy. ``args.checkpoint`` becomes the checkpoint's name as the user sees it."""
    from coalora.io import cache_root
    from coalora.storage import local_copy

    if getattr(args, "run", None):
        from coalora.pipeline.rundir import run_checkpoint

        args.checkpoint = str(_reading_run(args.run, lambda: run_checkpoint(args.run)))
    return local_copy(args.checkpoint, cache_root() / "checkpoints")


def _load(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any, Any]:
    """The model of :func:`_local_checkpoint`: ``(model, meta, cfg, loaded)``."""
    from coalora.pipeline.methods import load_adapted

    return load_adapted(_local_checkpoint(args))


def _reading_run(run: str, read: Any) -> Any:
    """``read()`` of run directory ``run``'s tables, with a damaged table as one :class:`CheckpointError`."""
    import pyarrow as pa

    from coalora.errors import CheckpointError

    try:
        return read()
    except (pa.ArrowException, OSError, KeyError) as e:
        raise CheckpointError(f"run {run}: a table of the run cannot be read ({type(e).__name__}: {e})") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from coalora.pipeline.evaluate import evaluate
    from coalora.pipeline.experiment import load_data, random_configs
    from coalora.pipeline.methods import PER_CONFIG_INDEX, evaluate_served

    per_config = bool(args.checkpoint) and (Path(args.checkpoint) / PER_CONFIG_INDEX).is_file()
    chosen = args.config_json or args.budget or args.random
    if per_config and chosen:
        raise UsageError(f"{args.checkpoint} is a per-config directory: each adapter is evaluated on its own "
                         "configuration; pass one adapter's directory to evaluate it elsewhere")
    if not chosen:
        # What the method serves: a per-config adapter its own configuration, fp-lora the unquantized
        # base, coa and shared their training set.
        rows, task = evaluate_served(args.checkpoint if per_config else _local_checkpoint(args), split=args.split,
                                     max_batches=args.max_batches, progress=not (args.quiet or per_config))
    else:
        model, _, cfg, loaded = _load(args)
        task = loaded.task
        space = model.space
        budgets: list[float | None] = []
        if args.config_json:
            configs = _read_config_json(args.config_json, space, many=True)
        elif args.budget:
            configs = np.stack([_budget_config(model, cfg, b) for b in args.budget])
            budgets = list(args.budget)
        else:
            if args.seed is not None:
                cfg.eval.seed = args.seed
            configs = random_configs(cfg, space, n=args.random)
        data = load_data(cfg, loaded.tokenizer, loaded.task)
        batches = data.eval_batches(cfg, args.split)
        rows = evaluate(model, configs, batches, loaded.task, max_batches=args.max_batches, progress=not args.quiet)
        for r, b in zip(rows, budgets):
            r["budget"] = b
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    metric = "accuracy" if task == "classification" else "perplexity"
    columns = ["config_id", "avg_bits", "loss", metric, "examples", "examples_per_s"]
    if any(r.get("budget") is not None for r in rows):
        columns.insert(1, "budget")
    _print_table(rows, columns)
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from coalora.pipeline.experiment import load_base
    from coalora.pipeline.export import export_adapter

    out = _check_out(args.out, args.overwrite, reads=[args.checkpoint, args.run])
    model, meta, cfg, _ = _load(args)
    if args.config_json:
        idx = _read_config_json(args.config_json, model.space)
        how = f"configuration {args.config_json}"
    else:
        model.space.check_budget(args.budget)
        best = None
        if args.run:
            from coalora.pipeline.rundir import best_under_budget

            best = _reading_run(args.run, lambda: best_under_budget(args.run, args.budget, model.space))
        if best is not None:
            idx, row = best
            how = f"best evaluated configuration under {args.budget} bits in {args.run} (loss {row['loss']:.4f})"
        else:
            idx = _budget_config(model, cfg, args.budget)
            how = f"allocation at {args.budget} bits"
    path = export_adapter(model, idx, load_base(cfg), out, overwrite=args.overwrite,
                          source={"checkpoint": str(args.checkpoint), "method": meta["method"], "chosen_by": how})
    summary = json.loads((path / "export.json").read_text())
    print(f"wrote {path}: {summary['avg_bits']:.4f} average bits, config {summary['config_id']} ({how})")
    return 0


# ---------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    from coalora.core.space import FAMILIES
    from coalora.model.registry import TASKS
    from coalora.pipeline.config import METHODS, SPACE_PRESETS, SpaceSection

    p = _Parser(prog="coalora", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("space", help="print a model's target matrices, options and attainable bits")
    s.add_argument("--model", required=True, help="short name (minilm-l6, smollm2-135m, tiny-bert ...) or path")
    s.add_argument("--task", choices=TASKS)
    s.add_argument("--preset", default=SpaceSection.preset, help=f"option preset: {' or '.join(SPACE_PRESETS)}")
    s.add_argument("--family", default=SpaceSection.family, help=f"quantizer family: {' or '.join(FAMILIES)}")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_space)

    t = sub.add_parser("train", help="train one method in this process (no Ray)")
    t.add_argument("--config", required=True, help="experiment YAML (configs/*.yaml)")
    t.add_argument("--method", choices=METHODS)
    t.add_argument("--out", required=True, help="checkpoint directory to write")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a YAML key, e.g. train.steps=50")
    t.add_argument("--configs", metavar="JSON", help="per-config only: train one adapter for each configuration "
                                                      "in this file (default: the allocations at eval.budgets)")
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("--json", action="store_true")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint under one or many configurations")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory (coalora train, a per-config directory, "
                                          "or runs/<name>/checkpoints/round_k)")
    src.add_argument("--run", help="an orchestrated run directory: its last checkpoint")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--config", dest="config_json",
                   help="a configuration JSON file (module name → knobs), or a list of them")
    g.add_argument("--budget", type=float, nargs="+",
                   help="average-bits budget(s); allocation picks one configuration per budget")
    g.add_argument("--random", type=_positive_int,
                   help="this many (>= 1) random configurations over eval.random_bits")
    e.add_argument("--seed", type=int, help="seed of --random (default: the experiment's eval.seed)")
    e.add_argument("--split", choices=["validation", "test"], default="validation")
    e.add_argument("--max-batches", type=_positive_int)
    e.add_argument("--quiet", action="store_true")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_evaluate)

    a = sub.add_parser("adapt", help="write a PEFT adapter for a budget or configuration (no training)")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory (coalora train, or runs/<name>/checkpoints/round_k)")
    src.add_argument("--run", help="an orchestrated run directory: its last checkpoint and its archive")
    g = a.add_mutually_exclusive_group(required=True)
    g.add_argument("--budget", type=float)
    g.add_argument("--config", dest="config_json", help="a configuration JSON file: module name → knobs")
    a.add_argument("--out", required=True)
    a.add_argument("--overwrite", action="store_true")
    a.set_defaults(fn=cmd_adapt)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    # Only our own error classes (and a missing file) are bad input; anything else, a bare ValueError
    # included, is a bug and keeps its traceback.
    except USER_ERRORS as e:
        if os.environ.get("COALORA_DEBUG"):
            raise
        # One line whatever the message holds (a value quoted from a damaged file may carry newlines).
        print(f"coalora: error: {' '.join(str(e).splitlines())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a line, not a traceback; 130 = 128 + SIGINT, as a shell reports it
        # Checkpoints and adapters are written whole or not at all (coalora.io.atomic_dir): what an
        # interrupted command was writing is not there; a per-config run keeps the adapters it finished.
        print("coalora: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
