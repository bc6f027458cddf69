"""Train one method end to end in a single process, reload what it wrote, and score what it serves.

Methods (docs/architecture.md §2.4), all in the same framework so that comparisons are fair:

- ``coa``: U_θ + one shared LoRA, configurations sampled from the training set (allocations at
  ``train.init_budgets``);
- ``shared``: the same without U_θ (Shared-LoRA);
- ``per-config``: one plain LoRA per evaluation budget (QLoRA / LQ-LoRA style), each trained for
  ``train.steps`` steps, written as one checkpoint per configuration under the output directory;
- ``fp-lora``: the unquantized base + LoRA (the ceiling).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import torch

from coalora.core.space import QuantSpace
from coalora.data.batching import check_label_range
from coalora.errors import CheckpointError, ConfigError, DataError
from coalora.model.loading import LoadedModel
from coalora.model.lora import CoaModel, check_lora_shape
from coalora.pipeline.checkpoint import META, check_checkpoint, load_trainable, save_checkpoint, training_meta
from coalora.pipeline.config import ExperimentConfig, config_from_dict
from coalora.pipeline.evaluate import evaluate
from coalora.pipeline.experiment import (
    DataBundle,
    budget_configs,
    build_adapted,
    build_space,
    check_training_task,
    error_table_for,
    init_lora,
    initial_trainset,
    load_base,
    load_data,
    training_sampler,
)
from coalora.pipeline.train import TrainResult, train

PER_CONFIG_INDEX = "per_config.json"


def _meta(cfg: ExperimentConfig, loaded: LoadedModel, method: str, res: TrainResult,
          trainset: np.ndarray | None, space: QuantSpace, **extra: Any) -> dict[str, Any]:
    return training_meta(cfg, loaded.task, method, space, trainset, step=res.steps, train_loss=res.final_loss,
                         train_seconds=res.seconds, **extra)


def _snapshot_meta(cfg: ExperimentConfig, loaded: LoadedModel, method: str, trainset: np.ndarray | None,
                   space: QuantSpace, **extra: Any) -> Callable[..., dict[str, Any]]:
    return lambda **at: training_meta(cfg, loaded.task, method, space, trainset, **at, **extra)


SNAPSHOTS_DIR = "snapshots"  # train.snapshots: <out>/snapshots/step-<k>


def snapshot_dir(out: str | os.PathLike, step: int) -> Path:
    """``train.snapshots``: where ``coalora train --out out`` keeps its output as it stood after ``step``
    (a checkpoint; for per-config a per-config directory of its own)."""
    return Path(out) / SNAPSHOTS_DIR / f"step-{step}"


class _Snapshots:
    """``train.snapshots``: the trainable state after each listed step, kept in memory (LoRA-sized) and
    written once the final checkpoint is in place (written before, it would go with the old directory
    that the final checkpoint's atomic swap replaces)."""

    def __init__(self, steps: list[int], model: CoaModel) -> None:
        self.steps, self.model = set(steps), model
        self.t0 = time.perf_counter()
        self.kept: list[tuple[int, float, float, dict[str, torch.Tensor]]] = []

    def on_step(self, step: int, loss: float) -> None:
        if step in self.steps:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.trainable_state().items()}
            self.kept.append((step, loss, time.perf_counter() - self.t0, state))

    def write(self, where: Callable[[int], Path], meta: Callable[..., dict[str, Any]]) -> None:
        """Each snapshot to ``where(step)``; ``meta(step=, train_loss=, train_seconds=)`` gives its
        ``meta.json`` fields."""
        for step, loss, seconds, state in self.kept:
            save_checkpoint(where(step), self.model, meta(step=step, train_loss=loss, train_seconds=seconds),
                            state=state)


# Configurations for per-config: ``(B, N, 5)``, a function of the model's space giving them, or None.
Configs = Union[np.ndarray, Callable[[QuantSpace], np.ndarray], None]


def train_method(
    cfg: ExperimentConfig,
    out: str | os.PathLike,
    method: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    configs: Configs = None,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Train ``method`` (default ``cfg.train.method``) and write its checkpoint(s) to ``out``.

    Args:
        configs: ``per-config`` only: the ``(B, N, 5)`` configurations to train one adapter each
            for, or a function of the model's space that returns them (default: allocations at
            ``cfg.eval.budgets``).
        device: where the model computes (a sweep trial passes the GPU Ray gave it).
    Returns a summary: method, steps, seconds, final training loss, checkpoint paths.
    """
    method = method or cfg.train.method
    out = Path(out)
    t0 = time.perf_counter()
    loaded = _on(load_base(cfg), device)
    # Settings that depend on the model's shapes fail before the data is read or anything is allocated.
    check_lora_shape(cfg.lora, build_space(cfg, loaded.model))
    check_training_task(cfg, loaded.task)
    data = load_data(cfg, loaded.tokenizer, loaded.task)
    _check_training_classes(cfg, data)
    say(f"{method}: {cfg.model.name} ({loaded.task}), {len(data.train)} training examples on {device}")
    if method == "per-config":
        return _train_per_config(cfg, out, loaded, data, progress, say, t0, configs, device)
    model = build_adapted(cfg, loaded, method)
    trainset, sampler = None, None
    if method != "fp-lora":
        err = error_table_for(cfg, loaded.model, model.space, progress=progress)
        trainset = initial_trainset(cfg, model.space, err)
        bits = model.space.average_bits(trainset)
        say(f"training set: {len(trainset)} configurations, {bits.min():.2f}-{bits.max():.2f} bits")
        init_lora(cfg, model, trainset, say, batches=data.train_batches(cfg))
        sampler = training_sampler(cfg, model.space)
    snaps = _Snapshots(cfg.train.snapshots, model)
    res = train(model, data.train_batches(cfg), trainset, cfg.train, progress=progress, description=method,
                sampler=sampler, on_step=snaps.on_step)
    save_checkpoint(out, model, _meta(cfg, loaded, method, res, trainset, model.space))
    snaps.write(lambda k: snapshot_dir(out, k), _snapshot_meta(cfg, loaded, method, trainset, model.space))
    say(f"{method}: {res.steps} steps in {res.seconds:.1f} s, final loss {res.final_loss:.4f} -> {out}")
    return {"method": method, "steps": res.steps, "train_seconds": res.seconds,
            "total_seconds": time.perf_counter() - t0, "train_loss": res.final_loss, "checkpoints": [str(out)]}


def _check_training_classes(cfg: ExperimentConfig, data: DataBundle) -> None:
    """Every split's labels must be below ``model.num_labels`` and the training split must hold at least
    two classes (a file is checked row by row where it is read; this covers the splits actually used)."""
    if data.task != "classification":
        return
    for which in ("train", "validation", "test"):
        split_labels = getattr(getattr(data, which), "labels", None)
        if split_labels is not None:
            name = "training" if which == "train" else which
            check_label_range(split_labels, cfg.model.num_labels, f"the {name} split of {cfg.data.name}")
    labels = getattr(data.train, "labels", None)
    if labels is None or labels.numel() == 0:
        return
    classes = torch.unique(labels).tolist()
    if len(classes) < 2:
        raise DataError(
            f"the training split of {cfg.data.name} ({len(labels)} examples) has only label {classes[0]} in "
            f"column {cfg.data.label_column!r}; a classifier learns nothing from one class: check "
            "data.label_column, or add examples of the other classes"
        )


def _on(loaded: LoadedModel, device: str | torch.device) -> LoadedModel:
    """``loaded`` with its model moved to ``device`` (before wrapping: the cache is sized there)."""
    loaded.model.to(device)
    return loaded


def _train_per_config(cfg: ExperimentConfig, out: Path, loaded: LoadedModel, data: DataBundle,
                      progress: bool, say: Callable[[str], None], t0: float,
                      configs: Configs, device: str | torch.device = "cpu") -> dict[str, Any]:
    space = build_space(cfg, loaded.model)
    if callable(configs):  # read against the model's space (e.g. a JSON file of configurations)
        configs = configs(space)
    if configs is None:
        err = error_table_for(cfg, loaded.model, space, progress=progress)
        configs = budget_configs(cfg, space, err)
        budgets: list[float | None] = list(cfg.eval.budgets)
    else:
        configs = space.validate(configs)
        budgets = [None] * len(configs)
    paths, seconds, losses = [], 0.0, []
    snap_seconds: dict[int, float] = {}  # step -> training seconds of all adapters up to it
    for budget, c in zip(budgets, configs):
        bits = float(space.average_bits(c))
        # A fresh base per adapter: nothing learned for one configuration leaks into the next.
        fresh = _on(load_base(cfg), device) if paths else loaded
        model = build_adapted(cfg, fresh, "per-config")
        init_lora(cfg, model, c[None])
        snaps = _Snapshots(cfg.train.snapshots, model)
        res = train(model, data.train_batches(cfg), c[None], cfg.train, progress=progress,
                    description=f"per-config {bits:.3f} bits", on_step=snaps.on_step)
        tag = f"budget-{budget:g}" if budget is not None else f"bits-{bits:.3f}"
        path = out / f"{tag}-{space.config_id(c)}"
        save_checkpoint(path, model, _meta(cfg, fresh, "per-config", res, c[None], space, budget=budget))
        # Snapshot k is a per-config directory of its own: <out>/snapshots/step-<k>/<adapter>, indexed below.
        snaps.write(lambda k: snapshot_dir(out, k) / path.name,
                    _snapshot_meta(cfg, fresh, "per-config", c[None], space, budget=budget))
        for k, _, t, _ in snaps.kept:
            snap_seconds[k] = snap_seconds.get(k, 0.0) + t
        paths.append(str(path))
        seconds += res.seconds
        losses.append(res.final_loss)
        say(f"per-config {bits:.3f} bits: {res.seconds:.1f} s, loss {res.final_loss:.4f}")
    index = {"method": "per-config", "budgets": budgets,
             "checkpoints": [os.path.relpath(p, out) for p in paths], "train_seconds": seconds}
    (out / PER_CONFIG_INDEX).write_text(json.dumps(index, indent=1))
    for k in cfg.train.snapshots:
        (snapshot_dir(out, k) / PER_CONFIG_INDEX).write_text(
            json.dumps({**index, "step": k, "train_seconds": snap_seconds[k]}, indent=1))
    return {"method": "per-config", "steps": cfg.train.steps * len(paths), "train_seconds": seconds,
            "total_seconds": time.perf_counter() - t0, "train_loss": float(np.mean(losses)), "checkpoints": paths}


def load_adapted(
    path: str | os.PathLike, cfg: ExperimentConfig | None = None, loaded: LoadedModel | None = None,
    device: str | torch.device = "cpu",
) -> tuple[CoaModel, dict[str, Any], ExperimentConfig, LoadedModel]:
    """Rebuild the trained model of a checkpoint.

    Args:
        path: a checkpoint directory written by :func:`train_method` (or the orchestrator).
        cfg: the experiment to load it into (default: the one stored in the checkpoint). A
            checkpoint made for another model or space is a clear error.
        loaded: an already loaded base model to wrap (saves a reload).
        device: where a freshly loaded base goes (``loaded`` stays where it is).
    Returns:
        ``(model, meta, cfg, loaded)`` with the trained weights in place.
    """
    # The whole checkpoint is checked (meta keys, readable and finite tensors) before the base loads.
    meta = check_checkpoint(path)
    if cfg is None:
        try:
            cfg = config_from_dict(meta["experiment"])
        except ConfigError as e:
            raise CheckpointError(f"{path}/{META}: its experiment is not a valid configuration: {e}") from None
    loaded = loaded or _on(load_base(cfg), device)
    model = build_adapted(cfg, loaded, meta["method"])
    model.space.check_same(meta["space"], what=f"checkpoint {path}")
    model.load_trainable_state(load_trainable(path, device=model.device))
    return model, meta, cfg, loaded


def per_config_checkpoints(path: str | os.PathLike) -> list[Path]:
    """The adapters of a ``per-config`` output directory (in budget order)."""
    p = Path(path)
    index = p / PER_CONFIG_INDEX
    if not index.is_file():
        raise CheckpointError(f"{path} has no {PER_CONFIG_INDEX}: not a per-config output directory")
    try:
        data = json.loads(index.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{index} is corrupt: {e}") from None
    names = data.get("checkpoints") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise CheckpointError(f"{index} is corrupt: 'checkpoints' must be a list of directory names")
    return [p / c for c in names]


# Which configurations a coa/shared model is scored on: ``(model, meta, cfg)`` → ``(B, N, 5)``.
PickConfigs = Callable[[CoaModel, dict[str, Any], ExperimentConfig], np.ndarray]


def evaluate_served(
    path: str | os.PathLike,
    pick: PickConfigs | None = None,
    *,
    cfg: ExperimentConfig | None = None,
    split: str = "test",
    device: str | torch.device = "cpu",
    max_batches: int | None = None,
    progress: bool = False,
) -> tuple[list[dict[str, Any]], str]:
    """Score what the method trained into ``path`` (by :func:`train_method`) serves, on ``split``.

    - a ``per-config`` output directory: each adapter on the configuration it was trained for, its
      rows carrying the adapter's ``budget`` and ``checkpoint``;
    - an ``fp-lora`` checkpoint: the unquantized base with its adapter (one row, ``config_id`` ``fp``);
    - a ``coa`` or ``shared`` checkpoint: the configurations ``pick(model, meta, cfg)`` returns
      (default: the checkpoint's training set).

    Args:
        cfg: the experiment to load into (default: each checkpoint's own; see :func:`load_adapted`).
        device: where a checkpoint's base model is loaded.
        max_batches, progress: as for :func:`coalora.pipeline.evaluate.evaluate`.
    Returns:
        ``(rows, task)``: one row of :func:`coalora.pipeline.evaluate.evaluate` per configuration, and
        the model's task (which says whether the rows hold ``accuracy`` or ``perplexity``).

    Raises:
        CheckpointError: a checkpoint that names no configuration where one is needed (empty ``trainset``).
    """
    if (Path(path) / PER_CONFIG_INDEX).is_file():
        rows: list[dict[str, Any]] = []
        batches = None
        for ck in per_config_checkpoints(path):
            # A fresh base per adapter (wrapping replaces the base's target modules in place).
            model, meta, ck_cfg, loaded = load_adapted(ck, cfg=cfg, device=device)
            if batches is None:
                batches = load_data(ck_cfg, loaded.tokenizer, loaded.task).eval_batches(ck_cfg, split)
            own = _trainset(ck, meta, model.space, "the adapter's configuration is unknown")[:1]
            for r in evaluate(model, own, batches, loaded.task, max_batches=max_batches, progress=progress):
                rows.append({**r, "budget": meta.get("budget"), "checkpoint": str(ck)})
        if batches is None:
            raise CheckpointError(f"{path}/{PER_CONFIG_INDEX} lists no adapters")
        return rows, loaded.task
    model, meta, cfg, loaded = load_adapted(path, cfg=cfg, device=device)
    configs: np.ndarray | list[None]
    if meta["method"] == "fp-lora":
        configs = [None]
    elif pick is not None:
        configs = pick(model, meta, cfg)
    else:
        configs = _trainset(path, meta, model.space, "pass the configurations to evaluate")
    batches = load_data(cfg, loaded.tokenizer, loaded.task).eval_batches(cfg, split)
    return evaluate(model, configs, batches, loaded.task, max_batches=max_batches, progress=progress), loaded.task


def _trainset(path: str | os.PathLike, meta: dict[str, Any], space: QuantSpace, remedy: str) -> np.ndarray:
    """The ``(T, N, 5)`` training set ``meta.json`` records; a :class:`CheckpointError` when it is empty."""
    if not meta.get("trainset"):
        raise CheckpointError(f"{path}/{META} names no configuration (empty 'trainset'): {remedy}")
    return np.stack([space.from_json(c) for c in meta["trainset"]])
