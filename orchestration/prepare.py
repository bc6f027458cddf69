"""Everything ``run.py`` checks before Ray starts, so that bad input costs seconds and writes nothing.

A new run: the configuration (every key, and every bit setting against the model's space), the run
name, the run directory (new, or a marked coalora run that ``--overwrite`` may replace; writable),
the model and, for a data file of the user's, the data. A resumed run: the stored configuration with
the few overrides a run can take half-way (:data:`RESUMABLE`), and the whole run directory (tables,
training sets, the last checkpoint and search state: :meth:`RunStore.validate`) before anything in it
is changed. No Ray here: this runs before the cluster is joined.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from coalora.core.space import QuantSpace
from coalora.errors import USER_ERRORS, ConfigError, InputError, RunDirError, StorageError
from coalora.model.loading import LoadedModel
from coalora.model.lora import check_lora_shape
from coalora.pipeline.config import ExperimentConfig, load_config
from coalora.storage import Location, is_uri, open_location
from orchestration.store import RunStore

# Settings a run may change when it resumes: how long it runs and what it runs on. Anything else
# (the model, the space, LoRA's shape, the data, the schedule's steps, the search) would make the
# stored rounds another experiment's, or crash the workers on the stored checkpoint.
RESUMABLE: frozenset[str] = frozenset({
    "run.rounds", "model.cache_fraction", "model.cache_gib",
    "ray.use_gpu", "ray.cpus_per_worker", "ray.gpus_per_worker", "ray.evaluators", "ray.cpus_per_evaluator",
    "ray.gpus_per_evaluator", "ray.evaluators_during_training", "ray.configs_per_call", "ray.max_failures",
    "ray.max_retries", "ray.search_cpus", "ray.local_cpus", "ray.object_store_mb",
})


def input_errors() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input (one line, exit 2), wherever in the run they surface."""
    return USER_ERRORS


@dataclass
class Prepared:
    """A run that passed every check: what to run, where, and the model the driver already loaded."""

    cfg: ExperimentConfig
    run_dir: Location
    resume: bool
    overwrite: bool
    loaded: LoadedModel
    space: QuantSpace
    completed: int = 0  # complete rounds of a resumed run
    overrides: list[str] = field(default_factory=list)  # --set values applied to a resumed run


def _job_working_dir() -> Path | None:
    """The unpacked ``working_dir`` of the Ray job this driver runs in (Ray deletes it with the job)."""
    cwd = Path.cwd()
    return cwd if "runtime_resources" in cwd.parts else None


def _check_new_location(run_dir: Location, out_dir: Location) -> None:
    """The run directory can be made: ``out_dir`` is not a file, and on a local disk the nearest
    existing ancestor is a directory this user may write."""
    if out_dir.is_file():
        raise StorageError(f"run.out_dir {out_dir} is a file, not a directory")
    if run_dir.is_file():
        raise StorageError(f"run directory {run_dir} is a file")
    if not run_dir.is_local:
        return
    anc = Path(run_dir.path)
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    if not anc.is_dir():
        raise StorageError(f"cannot make the run directory {run_dir}: {anc} is a file")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise StorageError(f"cannot make the run directory {run_dir}: {anc} is not writable")


def _resume_overrides(overrides: Sequence[str]) -> None:
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key not in RESUMABLE:
            raise InputError(f"--set {text}: {key} cannot change when a run resumes (its stored rounds were made "
                             f"with the stored value); a resumed run may change: {', '.join(sorted(RESUMABLE))}")


def load_run_config(config: str | None, overrides: Sequence[str], resume: str | None, smoke: bool,
                    default: Path, smoke_config: Path) -> tuple[ExperimentConfig, Location]:
    """The configuration and the run directory named by the flags (no model, nothing written)."""
    if resume:
        if config:
            raise InputError("--config cannot be combined with --resume: a run keeps the configuration it was "
                             "started with (its config.yaml); change what may change with --set")
        if smoke:
            raise InputError("--smoke-test cannot be combined with --resume")
        run_dir = open_location(resume)
        cfg_path = RunStore(run_dir).config_path
        if not cfg_path.is_file():
            raise RunDirError(f"--resume {resume}: not a run directory (no {cfg_path.name})")
        _resume_overrides(overrides)
        return load_config(cfg_path.uri, overrides), run_dir
    cfg = load_config(config or str(smoke_config if smoke else default), overrides)
    out = cfg.run.out_dir
    job_dir = _job_working_dir()
    if job_dir is not None and not is_uri(out) and not Path(out).expanduser().is_absolute():
        raise StorageError(f"run.out_dir={out} is relative, so the run would be written inside this job's "
                           f"working_dir ({job_dir}), which Ray deletes with the job: use an absolute path, "
                           "or s3://bucket/path, gs://bucket/path")
    return cfg, open_location(out) / cfg.run.name


def prepare(config: str | None, overrides: Sequence[str], *, resume: str | None = None, overwrite: bool = False,
            smoke: bool = False, default: Path, smoke_config: Path) -> Prepared:
    """Check a run before Ray starts (see the module docstring).

    Raises:
        one of :func:`input_errors`, with a one-line message naming the problem.
    """
    if resume and overwrite:
        raise InputError("--overwrite cannot be combined with --resume (a resumed run keeps its rounds)")
    cfg, run_dir = load_run_config(config, overrides, resume, smoke, default, smoke_config)
    if cfg.train.snapshots:
        raise ConfigError(f"train.snapshots: {cfg.train.snapshots} is for `coalora train`; a run keeps every "
                          "round's checkpoint (checkpoints/round_<k>), which are its snapshots: remove it")
    store = RunStore(run_dir)
    if not resume:
        _check_new_location(run_dir, open_location(cfg.run.out_dir))
        if run_dir.is_dir() and any(True for _ in run_dir.iterdir()):
            if not overwrite:
                marked = store.marker_path.is_file()
                raise RunDirError(f"run directory {run_dir} exists; " + (
                    f"pass --resume {run_dir} to continue it, --overwrite to replace it, or another --set run.name=..."
                    if marked else "it is not a coalora run: choose another run.name or run.out_dir"))
            store.check_replaceable()

    from coalora.pipeline.experiment import build_space, check_training_task, load_base

    loaded = load_base(cfg)
    space = build_space(cfg, loaded.model)  # checks every bits setting against the space
    check_lora_shape(cfg.lora, space)  # LoRA's rank (and bank) must fit every target matrix
    check_training_task(cfg, loaded.task)
    completed = store.validate(space) if resume else 0
    if resume and completed > cfg.run.rounds:
        raise InputError(f"run.rounds={cfg.run.rounds} is less than the {completed} round(s) this run completed")
    if _is_local_data_file(cfg):
        from coalora.pipeline.experiment import load_data

        load_data(cfg, loaded.tokenizer, loaded.task)  # a user's file: its problems are found here, not mid-round
    return Prepared(cfg, run_dir, bool(resume), overwrite, loaded, space, completed,
                    list(overrides) if resume else [])


def _is_local_data_file(cfg: ExperimentConfig) -> bool:
    name = cfg.data.name.split(":")[0]
    return not is_uri(name) and Path(name).expanduser().is_file()


def describe(prep: Prepared) -> str:
    """One line for ``--check``: what would run, where."""
    cfg, sp = prep.cfg, prep.space
    what = (f"resume {prep.run_dir} after {prep.completed} of {cfg.run.rounds} round(s)" if prep.resume
            else f"{'replace' if prep.overwrite and prep.run_dir.exists() else 'new run'} {prep.run_dir}: "
                 f"{cfg.run.rounds} round(s)")
    return (f"ok: {what}; {cfg.model.name}, {sp.n_matrices} target matrices, "
            f"{sp.min_bits!r}-{sp.max_bits!r} bits attainable")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception behind it: causes, contexts, a Ray task error's ``cause`` and
    Ray Train's ``worker_failures``, each once."""
    seen: set[int] = set()
    todo: list[Any] = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen or not isinstance(e, BaseException):
            continue
        seen.add(id(e))
        yield e
        todo.extend([e.__cause__, e.__context__, getattr(e, "cause", None)])
        failures = getattr(e, "worker_failures", None)
        if isinstance(failures, dict):
            todo.extend(failures.values())


def expected_cause(error: BaseException) -> BaseException | None:
    """The bad-input error behind ``error``, if any: Ray wraps a worker's exception (a task error is
    also an instance of its cause's class; Ray Train keeps each worker's in ``worker_failures``)."""
    for e in _chain(error):
        if isinstance(e, input_errors()):
            inner = getattr(e, "cause", None)  # a RayTaskError's cause is the worker's own exception
            return inner if isinstance(inner, input_errors()) else e
    return None


def killed_for_memory(error: BaseException) -> bool:
    """Whether Ray's memory monitor ended the processes behind ``error``: a task's or actor's
    ``OutOfMemoryError``, or Ray Train's controller error that says its workers were killed because
    the node ran low on memory (Ray 2.60 words it so and keeps no typed cause)."""
    for e in _chain(error):
        if type(e).__name__ == "OutOfMemoryError" or "running low on memory" in str(e):
            return True
    return False


def one_line(error: BaseException) -> str:
    """The first line of an error's own message (a Ray-wrapped one carries a traceback after it)."""
    text = str(error).strip()
    for line in text.splitlines():
        if line.strip() and not line.startswith(("Traceback", "ray::", "  ")):
            return line.strip()
    return text.splitlines()[0] if text else type(error).__name__
