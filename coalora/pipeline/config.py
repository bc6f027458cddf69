"""The experiment schema: typed dataclasses loaded from YAML and validated before any work starts.

Sections: ``model``, ``data``, ``space``, ``lora``, ``hypernet``, ``train``, ``eval`` (the library), and
``search``, ``run``, ``ray`` (read by the orchestrator; plain data here, no Ray import). One YAML serves
both ``coalora train`` and ``orchestration/run.py``. :func:`load_config` validates any root dataclass.
Three sections are the library's own settings, defaults and checks included: ``lora`` is
:class:`~coalora.model.settings.LoraSettings`, ``hypernet`` is :class:`~coalora.model.settings.HypernetConfig`
and ``search`` is :class:`~coalora.search.settings.SearchSettings`; the loader builds them.
Every problem is one :class:`ConfigError` naming the key, e.g. ``train.steps: expected an integer, got 'ten'``.

YAML is read by :class:`ConfigLoader`: a key given twice is an error (with both lines), ``1e-3`` is a
number (YAML 1.2, where PyYAML's YAML 1.1 reads a string), ``.nan``/``.inf`` are refused, and settings in
bits are checked against the space's attainable range (:func:`check_bits_settings`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from coalora.core.space import BITS_ONLY_OPTIONS, DEFAULT_OPTIONS, FAMILIES, KNOBS, QuantSpace, TargetMatrix
from coalora.errors import ConfigError, SpaceError
from coalora.model.settings import HypernetConfig, LoraSettings
from coalora.search.settings import SearchSettings

METHODS: tuple[str, ...] = ("coa", "shared", "per-config", "fp-lora")
TASKS: tuple[str, ...] = ("classification", "causal-lm")
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")
SPACE_PRESETS: dict[str, dict[str, tuple[Any, ...]]] = {"full": DEFAULT_OPTIONS, "bits-only": BITS_ONLY_OPTIONS}


MAX_NUM_LABELS = 100_000


# ---------------------------------------------------------------------------------------------- YAML
class DuplicateKeyError(yaml.YAMLError):
    """A mapping that names one key twice (YAML would silently keep the last value)."""

    def __init__(self, key: str, first_line: int, second_line: int) -> None:
        super().__init__(f"duplicate key {key!r} (lines {first_line} and {second_line})")
        self.key, self.first_line, self.second_line = key, first_line, second_line


# YAML 1.2 core-schema floats with an exponent (``1e-3``, ``1E5``, ``2.5e+3``, ``.5e2``). YAML 1.1, which
# PyYAML implements, reads them as strings (it wants a dot and a signed exponent); the forms without an
# exponent (``1.``, ``.5``, ``-2.5``) are already floats there. Plain integers stay integers.
_FLOAT_WITH_EXPONENT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key named twice in one mapping is a :class:`DuplicateKeyError`
    (with both line numbers and the key's dotted path), and ``1e-3`` is the number 0.001."""

    _paths: dict[int, str]

    def construct_document(self, node: yaml.Node) -> Any:
        # Dotted paths of every mapping node, for the message (nested mappings are constructed lazily,
        # so construct_mapping cannot keep a stack of its own).
        self._paths = {}
        self._note_paths(node, "")
        return super().construct_document(node)

    def _note_paths(self, node: yaml.Node, path: str) -> None:
        if id(node) in self._paths:  # an alias of a node already seen
            return
        self._paths[id(node)] = path
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    self._note_paths(value_node, f"{path}.{key_node.value}" if path else str(key_node.value))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._note_paths(item, f"{path}[{i}]")

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # ``<<: *base`` then explicit keys: overriding merged keys is what merges are for
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key; SafeLoader reports it below
                continue
            if first is not None:
                parent = getattr(self, "_paths", {}).get(id(node), "")
                raise DuplicateKeyError(f"{parent}.{key}" if parent else str(key), first, line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        # YAML 1.2: ``012`` is twelve (octal is ``0o12``); YAML 1.1 would silently read ten.
        text = str(self.construct_scalar(node)).replace("_", "")
        digits = text.lstrip("+-")
        if len(digits) > 1 and digits.startswith("0") and digits.isdigit():
            return int(text, 10)
        return super().construct_yaml_int(node)


ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITH_EXPONENT, list("-+0123456789."))
# Decimal integers YAML 1.1 leaves as strings (``08``, ``09``); tried after 1.1's own int and float forms.
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^[-+]?[0-9][0-9_]*$"),
                                   list("-+0123456789"))


def parse_yaml(text: str, source: str) -> Any:
    """Parse one YAML document with :class:`ConfigLoader`; ``source`` (a file name) starts every message.

    Raises:
        ConfigError: malformed YAML (with line and column) or a duplicate key (with both lines).
    """
    try:
        return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except DuplicateKeyError as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
    except ValueError as e:  # an explicit tag on a value it does not fit: ``!!int abc``, ``!!float 1e``
        raise ConfigError(f"{source}: malformed YAML: {e}") from None


@dataclass
class ModelSection:
    """Which model, by short name (``minilm-l6``, ``smollm2-135m``, ``tiny-bert`` ...), path or hub id."""

    name: str = "minilm-l6"
    task: str | None = None  # inferred from the model when None
    num_labels: int = 2
    targets: list[str] | None = None  # regexes on module types; None = every block linear
    # The dequantized-weight cache is sized per process from the free memory of its device (GPU memory,
    # or host memory on CPU), scaled by the share of the device the process holds: ``cache_fraction`` of
    # that, capped at ``cache_gib`` when set (see coalora.model.memory).
    cache_fraction: float = 0.5
    cache_gib: float | None = None
    # Frozen base weights: float32, bfloat16 or float16. With bf16/fp16 the forward runs under autocast;
    # everything trainable and the optimizer state stay float32 (fp16 adds a gradient scaler).
    dtype: str = "float32"

    def validate(self) -> None:
        _check(self.task is None or self.task in TASKS, "model.task", f"must be one of {list(TASKS)}")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype",
               "must be float32, bfloat16 or float16")
        # Bounded: the classifier head is num_labels × hidden, built before anything else could object.
        _check(2 <= self.num_labels <= MAX_NUM_LABELS, "model.num_labels", f"must be between 2 and {MAX_NUM_LABELS}")
        _check(0.0 <= self.cache_fraction <= 0.95, "model.cache_fraction", "must be in [0, 0.95]")
        _check(self.cache_gib is None or self.cache_gib >= 0, "model.cache_gib", "must be >= 0 or null")


@dataclass
class DataSection:
    """Dataset (short name or file), splits and batching."""

    name: str = "rotten-tomatoes"
    text_column: str = "text"
    label_column: str | None = "label"
    text_pair_column: str | None = None  # pair tasks (QNLI, MNLI, QQP): the second text
    split: str = "train"  # hub data sets: the split to load (we make our own train/validation/test)
    # Hub data sets at cluster scale: read only these files of the data set's repository (e.g. one C4
    # shard) instead of preparing the whole configuration, stream rows instead of preparing them on
    # disk, and stop after max_rows rows.
    data_files: list[str] | None = None
    streaming: bool = False
    max_rows: int | None = None
    max_length: int = 64  # classification: tokens per example
    block_size: int = 128  # causal LM: tokens per block
    validation: float = 0.1
    test: float = 0.1
    max_train: int | None = None  # cap on training examples (or LM blocks)
    max_eval: int | None = None  # cap on validation/test examples (or LM blocks)
    batch_size: int = 32
    eval_batch_size: int = 64
    seed: int = 0  # the split; the training order is seeded by this and train.seed together

    def validate(self) -> None:
        for key in ("max_length", "block_size", "batch_size", "eval_batch_size"):
            _check(getattr(self, key) > 0, f"data.{key}", "must be positive")
        for key in ("validation", "test"):
            _check(0.0 < getattr(self, key) < 1.0, f"data.{key}", "must be a fraction in (0, 1)")
        _check(self.validation + self.test < 1.0, "data.validation", "validation + test must leave training data")
        for key in ("max_train", "max_eval", "max_rows"):
            v = getattr(self, key)
            _check(v is None or v > 0, f"data.{key}", "must be positive or null")
        if _looks_like_path(self.name):
            _check(Path(self.name.split(":")[0]).expanduser().exists(), "data.name", f"file not found: {self.name}")
        from coalora.data.corpora import DATASET_REGISTRY
        from coalora.data.hub import hub_split_problem

        problem = hub_split_problem(self.split, self.streaming, self.data_files)
        _check(problem is None, "data.split", problem or "")
        if self.data_files is not None or self.streaming:
            _check(self.name not in DATASET_REGISTRY and not Path(self.name).expanduser().is_file(), "data.name",
                   "data_files and streaming apply to hub data sets (or a local copy of one), not to a short "
                   "name or a single file")


@dataclass
class SpaceSection:
    """The configuration space: a preset option list, overrides per knob, the quantizer family."""

    preset: str = "full"
    options: dict[str, list[Any]] | None = None
    family: str = "nf"

    def validate(self) -> None:
        _check(self.preset in SPACE_PRESETS, "space.preset", f"must be one of {list(SPACE_PRESETS)}")
        _check(self.family in FAMILIES, "space.family", f"must be one of {list(FAMILIES)}")
        for knob in self.options or {}:
            _check(knob in KNOBS, f"space.options.{knob}", f"unknown knob; knobs are {list(KNOBS)}")

    def option_lists(self) -> dict[str, tuple[Any, ...]]:
        out = dict(SPACE_PRESETS[self.preset])
        out.update({k: tuple(v) for k, v in (self.options or {}).items()})
        return out


@dataclass
class TrainSection:
    """Single-process training settings (also used inside each Ray Train worker)."""

    method: str = "coa"
    steps: int = 200
    lr: float = 5e-4
    hypernet_lr_scale: float = 1.0  # U_θ's learning rate = lr × this (coa only)
    weight_decay: float = 0.01
    schedule: str = "linear"
    warmup_steps: int = 10
    configs_per_step: int = 2
    grad_clip: float = 1.0
    seed: int = 0  # initialisation, configuration sampling, dropout and (with data.seed) the batch order
    # Budgets of the initial training set (one allocation per budget); see coalora.allocation.
    init_budgets: list[float] = field(default_factory=lambda: [2.25 + 0.25 * i for i in range(20)])
    log_every: int = 10
    # Extra configurations per step drawn fresh at random across the deployed range (eval.random_bits,
    # every matrix at eval.random_min_bits or more), never one of the held-out eval.random ones: the
    # training set's allocations alone leave most of that range unseen (issue #15, option 6).
    random_configs: int = 0
    # Weight λ of a distillation term: loss = (1 − λ)·task loss + λ·KL(unquantized base ‖ adapted model),
    # the teacher's outputs computed once per batch and shared by that step's configurations (causal LMs
    # only: a classifier's head is trained from scratch, so the base has no outputs worth matching).
    distill: float = 0.0
    # Steps (each in 1 … steps − 1, increasing) after which `coalora train` also writes its output as it
    # stands to <out>/snapshots/step-<k> (per-config: a per-config directory of every adapter at step k):
    # a learning curve from one run, in one learning-rate schedule. A run's rounds are its snapshots.
    snapshots: list[int] = field(default_factory=list)

    def validate(self) -> None:
        _check(self.method in METHODS, "train.method", f"unknown method {self.method!r}; one of {list(METHODS)}")
        _check(self.steps > 0, "train.steps", "must be positive")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(self.hypernet_lr_scale > 0, "train.hypernet_lr_scale", "must be positive")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.schedule in SCHEDULES, "train.schedule", f"must be one of {list(SCHEDULES)}")
        _check(0 <= self.warmup_steps, "train.warmup_steps", "must be >= 0")
        _check(self.configs_per_step > 0, "train.configs_per_step", "must be positive")
        _check(self.grad_clip > 0, "train.grad_clip", "must be positive")
        _check(len(self.init_budgets) > 0, "train.init_budgets", "must name at least one budget")
        _check(self.log_every > 0, "train.log_every", "must be positive")
        _check(self.random_configs >= 0, "train.random_configs", "must be >= 0")
        _check(0.0 <= self.distill <= 1.0, "train.distill", "must be a weight in [0, 1]")
        _check(all(isinstance(k, int) and not isinstance(k, bool) for k in self.snapshots), "train.snapshots",
               f"must be whole step counts, got {self.snapshots}")
        _check(all(0 < k < self.steps for k in self.snapshots), "train.snapshots",
               f"must lie between 1 and train.steps - 1 = {self.steps - 1} (the last step is the checkpoint "
               f"itself), got {self.snapshots}")
        _check(all(a < b for a, b in zip(self.snapshots, self.snapshots[1:])), "train.snapshots",
               f"must increase, got {self.snapshots}")


@dataclass
class EvalSection:
    """Evaluation configurations: allocations at ``budgets`` and ``random`` held-out random ones."""

    budgets: list[float] = field(default_factory=lambda: [2.5, 3.0, 3.5, 4.0])
    random: int = 8
    random_bits: list[float] = field(default_factory=lambda: [2.5, 4.0])
    # Every matrix of a random held-out configuration keeps at least this weight bit width (None: any).
    # A uniformly random configuration puts 2 bits where they destroy a small LM; a floor of 3 keeps the
    # held-out set damaged but recoverable.
    random_min_bits: float | None = None
    seed: int = 1234
    max_batches: int | None = None

    def validate(self) -> None:
        _check(self.random >= 0, "eval.random", "must be >= 0")
        _check(
            len(self.random_bits) == 2 and self.random_bits[0] <= self.random_bits[1],
            "eval.random_bits",
            "must be [low, high] with low <= high",
        )
        _check(self.max_batches is None or self.max_batches > 0, "eval.max_batches", "must be positive or null")


@dataclass
class RunSection:
    """The orchestrated run: where it writes and how many rounds it takes."""

    name: str = "default"
    # Where run directories go: a local path (one machine), a URI that every node reaches (s3://bucket/runs,
    # gs://bucket/runs; S3-compatible servers: s3://bucket/runs?endpoint_override=http://host:port), or a
    # path that every node mounts, declared with shared_fs. Ray Train's storage lives inside the run.
    out_dir: str = "runs"
    shared_fs: bool = False
    rounds: int = 3
    steps_per_round: int | None = None  # null = train.steps

    def validate(self) -> None:
        # The name becomes a directory, a Ray Train run name and part of object-store keys: one plain
        # path component, nothing a shell or a path join could read otherwise ('..', '/x', '-rf', ' a').
        _check(len(self.name) <= 100 and _RUN_NAME.fullmatch(self.name) is not None, "run.name",
               "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit, "
               f"got {self.name!r}")
        _check(self.rounds > 0, "run.rounds", "must be positive")
        _check(self.steps_per_round is None or self.steps_per_round > 0, "run.steps_per_round",
               "must be positive or null")


@dataclass
class RaySection:
    """How the orchestrator uses the Ray cluster (ignored by the single-process CLI)."""

    num_workers: int = 1  # Ray Train data-parallel workers
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # with use_gpu
    evaluators: int = 2  # evaluator actors
    cpus_per_evaluator: float = 1.0
    gpus_per_evaluator: float = 0.0
    # Whether evaluator actors keep their resources while training runs: keep (they keep their caches),
    # release (stopped before training, restarted after), or auto (keep when training and evaluation fit
    # in the cluster at once, else release).
    evaluators_during_training: str = "auto"
    configs_per_call: int = 2  # configurations per evaluator call (the unit of retry)
    max_failures: int = 2  # Ray Train worker failures tolerated per round
    max_retries: int = 3  # re-submissions of an evaluation whose actor died
    search_cpus: float = 1.0
    local_cpus: int | None = None  # size of a local cluster started by run.py (null = all cores)
    object_store_mb: int = 512

    def validate(self) -> None:
        _check(self.num_workers >= 1, "ray.num_workers", "must be >= 1")
        _check(self.evaluators >= 1, "ray.evaluators", "must be >= 1")
        for key in ("cpus_per_worker", "gpus_per_worker", "cpus_per_evaluator", "gpus_per_evaluator", "search_cpus"):
            _check(getattr(self, key) >= 0, f"ray.{key}", "must be >= 0")
        _check(not self.use_gpu or self.gpus_per_worker > 0, "ray.gpus_per_worker", "must be > 0 with use_gpu")
        _check(self.evaluators_during_training in ("auto", "keep", "release"), "ray.evaluators_during_training",
               "must be auto, keep or release")
        _check(self.configs_per_call >= 1, "ray.configs_per_call", "must be >= 1")
        _check(self.max_failures >= -1, "ray.max_failures", "must be >= -1 (-1 retries forever)")
        _check(self.max_retries >= 0, "ray.max_retries", "must be >= 0")
        _check(self.local_cpus is None or self.local_cpus >= 1, "ray.local_cpus", "must be >= 1 or null")
        _check(self.object_store_mb >= 64, "ray.object_store_mb", "must be at least 64")


@dataclass
class ExperimentConfig:
    """The whole experiment: the library's sections plus the orchestrator's (search, run, ray)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    space: SpaceSection = field(default_factory=SpaceSection)
    lora: LoraSettings = field(default_factory=LoraSettings)
    hypernet: HypernetConfig = field(default_factory=HypernetConfig)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    search: SearchSettings = field(default_factory=SearchSettings)
    run: RunSection = field(default_factory=RunSection)
    ray: RaySection = field(default_factory=RaySection)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "validate"):
                section.validate()
        _check(self.hypernet.residual_fit == 0 or self.lora.init == "residual", "hypernet.residual_fit",
               "fits U_θ within the LoRA's directions, which only lora.init: residual sets before training; "
               "set lora.init: residual")
        _check(self.hypernet.residual_fit == 0 or self.hypernet.warm_start == 0, "hypernet.residual_fit",
               "moves U_θ away from the identity that hypernet.warm_start promises; use one of them")
        _check(self.hypernet.residual_fit_calibration == 0 or self.hypernet.residual_fit > 0,
               "hypernet.residual_fit_calibration", "weighs the residual fit, which is off; set "
               "hypernet.residual_fit to its steps")
        _check(self.hypernet.residual_fit_radius == 0 or self.hypernet.residual_fit > 0,
               "hypernet.residual_fit_radius", "bounds the residual fit, which is off; set "
               "hypernet.residual_fit to its steps")
        # The rate has a default, so only a changed one says the user meant a fit.
        _check(self.hypernet.residual_fit_lr == HypernetConfig.residual_fit_lr or self.hypernet.residual_fit > 0,
               "hypernet.residual_fit_lr", "sets the residual fit's learning rate, but the fit is off; set "
               "hypernet.residual_fit to its steps")
        gates = self.hypernet.gates
        _check(gates == 0 or self.lora.rank % gates == 0, "hypernet.gates",
               f"{gates} gates must divide lora.rank ({self.lora.rank}) into equal blocks")
        # Settings in bits against the space's attainable range, which depends only on the option lists:
        # known here, before any model is loaded or any Ray job starts.
        try:
            space = options_space(self)
        except SpaceError as e:
            raise ConfigError(f"space.options: {e}") from None
        try:
            check_bits_settings(self, space)
        except SpaceError as e:
            raise ConfigError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def options_space(cfg: ExperimentConfig) -> QuantSpace:
    """A one-matrix space with ``cfg.space``'s option lists and family: the attainable range of every
    model's space under ``cfg`` (``min_bits``/``max_bits`` are per option, not per matrix)."""
    return QuantSpace([TargetMatrix("range", 0, "range", (1, 1))], options=cfg.space.option_lists(),
                      family=cfg.space.family)


def check_bits_settings(cfg: ExperimentConfig, space: QuantSpace | None = None) -> None:
    """Check every setting of ``cfg`` that is a number of bits against ``space``, by one rule.

    Budgets (``train.init_budgets``, ``eval.budgets``) are upper bounds: below ``space.min_bits`` is
    an error, above ``space.max_bits`` is fine (the allocation takes the best configuration). Ranges
    (``eval.random_bits``, ``search.bits_range``) must lie within ``[min_bits, max_bits]``. ``space``
    None: :func:`options_space` of ``cfg`` (the same range as any model's space under ``cfg``).

    Raises:
        SpaceError: the first offending setting, named with its index, e.g.
            ``train.init_budgets[0]: 1.0 bits is below this space's attainable range [2.0322265625, 8.625]``.
    """
    space = options_space(cfg) if space is None else space
    for i, b in enumerate(cfg.train.init_budgets):
        space.check_budget(b, key=f"train.init_budgets[{i}]")
    for i, b in enumerate(cfg.eval.budgets):
        space.check_budget(b, key=f"eval.budgets[{i}]")
    # Random held-out configurations are drawn only when eval.random > 0, but the range is checked
    # anyway: `coalora evaluate --random N` reads it later from the checkpoint's configuration.
    space.check_bits_range(cfg.eval.random_bits, key="eval.random_bits")
    if cfg.eval.random_min_bits is not None:
        _check_floor(space, cfg.eval.random_min_bits, cfg.eval.random_bits)
    if cfg.search.bits_range is not None:
        space.check_bits_range(cfg.search.bits_range, key="search.bits_range")


def _check_floor(space: QuantSpace, floor: float, bits_range: Sequence[float]) -> None:
    """``eval.random_min_bits`` leaves options, and the low end of ``eval.random_bits`` is reachable with them."""
    lowest = space.floor_min_bits(floor, key="eval.random_min_bits")
    if bits_range[0] < lowest:
        raise SpaceError(f"eval.random_bits: low end {bits_range[0]} bits is below {lowest}, the fewest bits a "
                         f"configuration with every matrix at >= {floor} weight bits (eval.random_min_bits) can have")


C = TypeVar("C")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _looks_like_path(name: str) -> bool:
    """A data file (by extension or an explicit path), as opposed to a short or hub name like ``org/set``."""
    suffixes = {s.lower() for s in Path(name).suffixes}
    known = {".csv", ".tsv", ".jsonl", ".json", ".parquet", ".txt", ".gz", ".bz2", ".xz"}
    return bool(suffixes & known) or name.startswith(("/", ".", "~"))


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "list"
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _yaml_type(tp: Any) -> type | None:
    """The YAML container that holds a value of annotation ``tp`` (a tuple is written as a list)."""
    origin = typing.get_origin(tp)
    return list if origin is tuple else origin


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted where floats are expected)."""
    if isinstance(value, float) and not math.isfinite(value) and tp is not Any:
        # YAML's .nan / .inf: no setting means anything by them (null is the "no limit" of this schema).
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                # A list (or mapping) where one is allowed: the element at fault says more than the union.
                if isinstance(value, (list, dict)) and _yaml_type(arg) is type(value):
                    raise
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if tp is Any:
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:  # a fixed-length tuple, e.g. (lo, hi): a YAML list of that many items
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} items, got {value!r}")
        return tuple(_coerce(v, arg, f"{key}[{i}]") for i, (v, arg) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        k_tp, v_tp = typing.get_args(tp) or (Any, Any)
        return {_coerce(k, k_tp, key): _coerce(v, v_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type[C], data: Any, prefix: str = "") -> C:
    where = prefix or "the configuration"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"{full}: unknown key; known keys here: {sorted(names)}")
    kwargs = {
        k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()
    }
    return cls(**kwargs)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. train.steps=100")
    key, raw = text.split("=", 1)
    try:
        value = yaml.load(raw, Loader=ConfigLoader) if raw.strip() else None  # noqa: S506
    except DuplicateKeyError as e:
        raise ConfigError(f"override {text!r}: duplicate key {e.key!r}") from None
    except (yaml.YAMLError, ValueError):  # ValueError: an explicit tag that does not fit (``!!int abc``)
        value = raw  # not YAML: the text itself (e.g. a hub name like org/set:config)
    return key.strip().split("."), value


def config_from_dict(data: Mapping[str, Any], cls: type[C] = ExperimentConfig) -> C:  # type: ignore[assignment]
    """Build and validate a configuration from a plain mapping."""
    cfg = _build(cls, data)
    cfg.validate()  # type: ignore[attr-defined]
    return cfg


def load_config(
    path: str | os.PathLike | None,
    overrides: Sequence[str] = (),
    cls: type[C] = ExperimentConfig,  # type: ignore[assignment]
) -> C:
    """Read a YAML file (:class:`ConfigLoader`), apply ``key=value`` overrides, build and validate.

    ``path`` None means the defaults; an empty file is an error (it is more likely a mistake).

    Raises:
        ConfigError: a missing, empty or malformed file, a duplicate, unknown or non-finite key, a wrong
            type or an impossible value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        from coalora.errors import StorageError
        from coalora.storage import open_location

        try:
            p = open_location(path)  # a local file, or a run's config.yaml in an object store
            found = p.is_file()
        except (StorageError, OSError) as e:
            raise ConfigError(f"config file {path}: {e}") from None
        if not found:
            raise ConfigError(f"config file not found: {path}")
        try:
            text = p.read_text()
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        except (StorageError, OSError) as e:
            raise ConfigError(f"config file {path}: {e}") from None
        loaded = parse_yaml(text, str(path))
        if loaded is None:
            # An empty file (or only comments) is a mistake, not a request for the default experiment.
            raise ConfigError(f"{path} is empty: an experiment file sets at least one section "
                              "(model, data, train ...); pass no file for the defaults")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    for text in overrides:
        keys, value = _parse_override(text)
        node = data
        for k in keys[:-1]:
            nxt = node.setdefault(k, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
            node = nxt
        node[keys[-1]] = value
    return config_from_dict(data, cls)


def dump_config(cfg: Any) -> str:
    """The configuration as YAML (round-trips through :func:`load_config`)."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)
