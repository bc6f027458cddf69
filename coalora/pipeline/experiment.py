"""Glue from an :class:`ExperimentConfig` to the pieces: model, space, data, configuration sets.

Used by the CLI (single process) and by the orchestrator's actors and training workers, so every
process builds the same model, space and splits from the same YAML.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from coalora.allocation.error_tables import ErrorTableCache, error_table, table_key
from coalora.allocation.knapsack import initial_set
from coalora.allocation.sensitivity import target_weights
from coalora.core.space import QuantSpace
from coalora.data.batching import Batchable, TrainBatches, eval_batches, tokenize_classification, tokenize_lm
from coalora.data.corpora import load_dataset
from coalora.data.splits import split
from coalora.model.loading import LoadedModel, load_model
from coalora.model.lora import CoaModel
from coalora.model.memory import plan_memory
from coalora.errors import ConfigError
from coalora.pipeline.config import ExperimentConfig, check_bits_settings  # also importable from here

log = logging.getLogger(__name__)


def load_base(cfg: ExperimentConfig) -> LoadedModel:
    """The pretrained model and tokenizer named by ``cfg.model`` (offline for the short names)."""
    return load_model(cfg.model.name, task=cfg.model.task, num_labels=cfg.model.num_labels,
                      dtype=getattr(torch, cfg.model.dtype))


def build_space(cfg: ExperimentConfig, model: torch.nn.Module) -> QuantSpace:
    """The configuration space of ``model`` under ``cfg.space`` / ``cfg.model.targets``.

    Raises:
        SpaceError: a setting in bits of ``cfg`` that this space cannot meet (:func:`check_bits_settings`;
            :func:`~coalora.pipeline.config.load_config` runs it too, but a caller may have changed ``cfg`` since).
    """
    space = QuantSpace.from_model(
        model, target_patterns=cfg.model.targets, options=cfg.space.option_lists(), family=cfg.space.family
    )
    check_bits_settings(cfg, space)
    return space


def build_adapted(cfg: ExperimentConfig, loaded: LoadedModel, method: str | None = None, *,
                  share: float = 1.0, training: bool = False, errors: np.ndarray | None = None) -> CoaModel:
    """Wrap the base model for ``method`` (default ``cfg.train.method``): U_θ only for ``coa``.

    The base must already be on its compute device: the weight cache is sized from that device's free
    memory (``share`` of it, room for the optimizer when ``training``); ``model.memory_plan`` says how.
    ``errors``: the ``(N, K)`` error table, which ``hypernet.damage`` reads; looked up in (or added to) the
    on-disk cache when not given.
    """
    method = method or cfg.train.method
    space = build_space(cfg, loaded.model)
    hyper = cfg.hypernet if method == "coa" else None
    if hyper is not None and hyper.damage and errors is None:
        errors = error_table_for(cfg, loaded.model, space, progress=False)
    # Seeded initialisation: every data-parallel worker must start from identical LoRA and U_θ weights.
    torch.manual_seed(cfg.train.seed)
    model = CoaModel(loaded.model, space, cfg.lora, hyper, cache_bytes=0, errors=errors)
    model.memory_plan = plan_memory(model, model.device, fraction=cfg.model.cache_fraction,
                                    cap_gib=cfg.model.cache_gib, share=share, training=training)
    model.cache.max_bytes = model.memory_plan.cache
    return model


def init_lora(cfg: ExperimentConfig, model: CoaModel, trainset: np.ndarray,
              say: Callable[[str], None] = lambda s: None,
              batches: Iterable[dict[str, torch.Tensor]] | None = None) -> None:
    """Apply ``lora.init`` before the first step: ``residual`` sets A and B from the mean quantization
    residual over ``trainset`` ``(S, N, 5)``; ``default`` keeps PEFT's initialisation. Then, for a
    configuration-aware model with ``hypernet.residual_fit``, fit U_θ to each configuration's residual
    (:meth:`CoaModel.fit_cores_to_residuals`) over the training set and ``hypernet.residual_fit_configs``
    random configurations across its bit range (seeded by ``train.seed``; no held-out one), weighted by
    the inputs of the first ``hypernet.residual_fit_calibration`` of ``batches`` (training batches, the
    same on every data-parallel worker) when that is set."""
    if cfg.lora.init == "residual":
        model.init_lora_from_residual(trainset)
    h = cfg.hypernet
    if model.hypernet is None or h.residual_fit == 0:
        return
    space = model.space
    bits = space.average_bits(trainset)
    rng = np.random.default_rng([cfg.train.seed, 15])
    held_out = {space.config_id(c) for c in random_configs(cfg, space)}
    extra = draw_outside(space, rng, h.residual_fit_configs, (bits.min(), bits.max()), held_out)
    configs = np.concatenate([trainset, extra])
    inputs = None
    if h.residual_fit_calibration:
        if batches is None:
            raise ValueError("hypernet.residual_fit_calibration needs the training batches")
        inputs = model.input_statistics(itertools.islice(batches, h.residual_fit_calibration))
    losses = model.fit_cores_to_residuals(configs, h.residual_fit, lr=h.residual_fit_lr, inputs=inputs,
                                          radius=h.residual_fit_radius)
    on = f"on {h.residual_fit_calibration} batches' inputs" if inputs is not None else "of the weights"
    bound = f", cores within {h.residual_fit_radius:g}·‖I‖ of I" if h.residual_fit_radius else ""
    say(f"residual fit of U_θ: {len(configs)} configurations, {h.residual_fit} steps{bound}, "
        f"relative error {on} {losses[0]:.3g} -> {losses[-1]:.3g}")



@dataclass
class DataBundle:
    """Tokenised splits of the experiment's data set."""

    task: str
    train: Batchable
    validation: Batchable
    test: Batchable

    def train_batches(
        self, cfg: ExperimentConfig, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Endless seeded training batches for this rank, from ``start_step`` on.

        The order is seeded by ``data.seed`` and ``train.seed`` together: two seeds of a study then differ in
        the data they see first as well as in their initialisation, while ``data.seed`` alone fixes the split
        (every seed is scored on the same test set)."""
        tb = TrainBatches(self.train, cfg.data.batch_size, seed=(cfg.data.seed, cfg.train.seed), rank=rank,
                          world_size=world_size)
        return tb.iterate(start_step)

    def eval_batches(self, cfg: ExperimentConfig, which: str = "validation") -> list[dict[str, torch.Tensor]]:
        data = {"validation": self.validation, "test": self.test, "train": self.train}[which]
        sort = self.task == "classification"
        return list(eval_batches(data, cfg.data.eval_batch_size, sort_by_length=sort))


def _cap(items: list[Any], n: int | None) -> list[Any]:
    return items if n is None else items[:n]


def load_data(cfg: ExperimentConfig, tokenizer: Any, task: str) -> DataBundle:
    """Load, split (deterministic by ``cfg.data.seed``), cap and tokenise the experiment's data."""
    d = cfg.data
    # A language model reads text only: a file of plain text needs no label column.
    label_column = d.label_column if task == "classification" else None
    examples = load_dataset(d.name, text_column=d.text_column, label_column=label_column, split=d.split,
                            text_pair_column=d.text_pair_column, data_files=d.data_files, streaming=d.streaming,
                            max_rows=d.max_rows,
                            # a user's label outside the classifier's range is named with its file and row
                            num_labels=cfg.model.num_labels if task == "classification" else None)
    parts = split(examples, seed=d.seed, validation=d.validation, test=d.test)
    if task == "classification":
        def tok(xs: list[Any]) -> Batchable:
            return tokenize_classification(xs, tokenizer, max_length=d.max_length)

        return DataBundle(
            task,
            tok(_cap(parts.train, d.max_train)),
            tok(_cap(parts.validation, d.max_eval)),
            tok(_cap(parts.test, d.max_eval)),
        )

    # Causal LM: documents are split first (no text leaks across splits), then cut into blocks.
    def blocks(xs: list[Any], cap: int | None) -> Batchable:
        max_tokens = None if cap is None else cap * d.block_size
        return tokenize_lm(xs, tokenizer, block_size=d.block_size, max_tokens=max_tokens)

    return DataBundle(
        task,
        blocks(parts.train, d.max_train),
        blocks(parts.validation, d.max_eval),
        blocks(parts.test, d.max_eval),
    )


def error_table_for(cfg: ExperimentConfig, model: torch.nn.Module, space: QuantSpace,
                    progress: bool = True) -> np.ndarray:
    """The (cached) ``(N, K)`` quantization-error table of the model's target weights, keyed by the model's
    name and its weights (:func:`coalora.allocation.error_tables.table_key`)."""
    weights = target_weights(model, space)
    return ErrorTableCache().get_or_compute(table_key(cfg.model.name, weights), space,
                                            lambda: error_table(weights, space, progress=progress))


def error_table_path(cfg: ExperimentConfig, model: torch.nn.Module, space: QuantSpace) -> Path:
    """Where :func:`error_table_for` keeps the model's table (``.npy``; its sidecar: ``.json``)."""
    return ErrorTableCache().path(table_key(cfg.model.name, target_weights(model, space)), space)


def initial_trainset(cfg: ExperimentConfig, space: QuantSpace, err: np.ndarray) -> np.ndarray:
    """One allocation per ``cfg.train.init_budgets`` entry: ``(S, N, 5)``.

    Raises:
        SpaceError: a budget below the attainable range, named by its key (never clipped to the range).
    """
    for i, b in enumerate(cfg.train.init_budgets):
        space.check_budget(b, key=f"train.init_budgets[{i}]")
    # A budget above max_bits needs no clipping: the allocation there is the best configuration.
    budgets = list(cfg.train.init_budgets)
    # allocate's node limit (not a time limit) bounds each solve, so the starting set is the same on an
    # idle and on a busy machine. MiniLM's 36-matrix table solves in about a second per budget;
    # SmolLM2's 210 × 432 one in 5-80 s on a busy 2-core machine (its root relaxation is the slow part).
    return initial_set(err, space, budgets)


def budget_configs(cfg: ExperimentConfig, space: QuantSpace, err: np.ndarray) -> np.ndarray:
    """Allocations at ``cfg.eval.budgets`` (the per-budget evaluation points): ``(B, N, 5)``."""
    from coalora.allocation.knapsack import allocate

    for i, b in enumerate(cfg.eval.budgets):
        space.check_budget(b, key=f"eval.budgets[{i}]")
    return np.stack([allocate(err, space, b) for b in cfg.eval.budgets])


def random_configs(cfg: ExperimentConfig, space: QuantSpace, n: int | None = None,
                   exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` random configurations spread evenly over ``cfg.eval.random_bits``, none in ``exclude``:
    ``(n, N, 5)``, every matrix at ``cfg.eval.random_min_bits`` weight bits or more when that is set.
    Seeded by ``cfg.eval.seed``: every method sees the same held-out set."""
    n = cfg.eval.random if n is None else n
    if n == 0:
        return np.zeros((0, space.n_matrices, 5), dtype=np.int64)
    lo, hi = space.check_bits_range(cfg.eval.random_bits, key="eval.random_bits")
    rng = np.random.default_rng(cfg.eval.seed)
    taken = set() if exclude is None else {space.config_id(c) for c in exclude}
    out = []
    for target in np.linspace(lo, hi, n):
        while True:
            c = space.sample_near(float(target), rng, 1, tol=0.05, min_weight_bits=cfg.eval.random_min_bits)[0]
            cid = space.config_id(c)
            if cid not in taken:
                taken.add(cid)
                out.append(c)
                break
    return np.stack(out)


def training_sampler(cfg: ExperimentConfig, space: QuantSpace) -> Callable[[np.random.Generator], np.ndarray] | None:
    """``train.random_configs``: a function that draws that many fresh configurations ``(n, N, 5)`` per call
    from the training loop's generator, each near a bit width drawn uniformly over ``eval.random_bits``,
    every matrix at ``eval.random_min_bits`` or more, none of them a held-out evaluation configuration.
    None when ``train.random_configs`` is 0."""
    n = cfg.train.random_configs
    if n == 0:
        return None
    lo, hi = space.check_bits_range(cfg.eval.random_bits, key="eval.random_bits")
    held_out = {space.config_id(c) for c in random_configs(cfg, space)}
    floor = cfg.eval.random_min_bits

    def draw(rng: np.random.Generator) -> np.ndarray:
        return draw_outside(space, rng, n, (lo, hi), held_out, floor)

    return draw


def draw_outside(space: QuantSpace, rng: np.random.Generator, n: int, bits_range: tuple[float, float],
                 held_out: set[str], floor: float | None = None) -> np.ndarray:
    """``n`` random configurations ``(n, N, 5)``, each near a bit width drawn uniformly over ``bits_range``
    (every matrix at ``floor`` weight bits or more), none of them one whose id is in ``held_out``."""
    out: list[np.ndarray] = []
    while len(out) < n:
        c = space.sample_near(float(rng.uniform(*bits_range)), rng, 1, tol=0.05, min_weight_bits=floor)[0]
        if space.config_id(c) not in held_out:
            out.append(c)
    return np.stack(out) if out else np.zeros((0, space.n_matrices, 5), dtype=np.int64)


def check_training_task(cfg: ExperimentConfig, task: str) -> None:
    """Training settings that depend on the model's task, checked before anything trains.

    Raises:
        ConfigError: ``train.distill`` on a classifier (its head starts untrained: the base has no
            outputs worth matching).
    """
    if cfg.train.distill > 0 and task != "causal-lm":
        raise ConfigError(f"train.distill: distillation matches the unquantized base's outputs, which only a "
                          f"causal LM has before training ({cfg.model.name} is a {task} model); set it to 0")
