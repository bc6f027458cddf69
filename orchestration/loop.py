"""The round loop: train (Ray Train) → evaluate (actor pool) → search (GP actor) → store.

Round k:
  1. fine-tune U_θ + LoRA on the current training set, resuming from round k−1's checkpoint;
  2. score the training set ∪ the candidates proposed in round k−1 with the new checkpoint;
  3. the search actor observes the scores, selects the next training set segment by segment and
     proposes new candidates;
  4. the store appends the round (archive, rounds, training set, checkpoint, search state, plots).

Everything a round writes goes to the run's storage before ``rounds.parquet`` marks it complete, so
``--resume`` can always continue after the last complete round.

Before round 0 (:meth:`Orchestrator.preflight`), the run is checked against the cluster: the run
directory must be reachable from every node that will use it, and the resource plan must be able to
fit (:mod:`orchestration.resources`); a GPU plan is probed once for what the GPU nodes can compute on.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import ray
from safetensors.torch import load as load_safetensors

from coalora.pipeline.config import ExperimentConfig, dump_config
from coalora.pipeline.experiment import build_space, initial_trainset, load_base
from coalora.pipeline.rundir import (ROLE_CANDIDATE, ROLE_TRAIN, STATUS_OK, ArchiveRow, RoundRow, TrainsetFile,
                                     read_trainset)
from coalora.storage import Location
from coalora.errors import StorageError
from orchestration.devices import DeviceReport, collective_backend, probe_gpu_node
from orchestration.evaluators import EvaluatorPool
from orchestration.leftovers import ProcessRecord
from orchestration.report import write_report
from orchestration.resources import Capacity, ResourcePlan, check_plan, cluster_capacity, describe
from orchestration.search_actor import SearchActor
from orchestration.store import RunStore
from orchestration.tables import error_table_parallel
from orchestration.trainer import on_this_node, train_round


class Progress:
    """Line-based live progress: round, phase, steps, evaluations, hypervolume, time per phase."""

    def __init__(self, rounds: int, say: Callable[[str], None] = print) -> None:
        self.rounds = rounds
        self.say = say
        self.t0 = time.perf_counter()

    def __call__(self, k: int, msg: str) -> None:
        elapsed = time.perf_counter() - self.t0
        self.say(f"[{elapsed:7.1f}s] round {k + 1}/{self.rounds} | {msg}")


def _rows_for_archive(k: int, configs: np.ndarray, roles: list[str], results: list[dict[str, Any]],
                      space: Any) -> list[ArchiveRow]:
    """One archive row per scored configuration of ``configs`` ``(B, N, 5)`` (evaluator results in order)."""
    rows = []
    bits = space.average_bits(configs)
    for c, role, b, res in zip(configs, roles, np.atleast_1d(bits), results):
        rows.append(ArchiveRow(
            round=k, config_id=space.config_id(c), role=role, knobs=c.reshape(-1).astype(int).tolist(),
            avg_bits=float(b), loss=float(res["loss"]), accuracy=res.get("accuracy"),
            perplexity=res.get("perplexity"), status=res["status"], error=res.get("error"),
            seconds=float(res["seconds"]), actor=res["actor"],
        ))
    return rows


def check_storage(run_dir: Location, cfg: ExperimentConfig, cap: Capacity) -> None:
    """A run directory on this node's disk is for one machine only: stop before round 0 otherwise.

    Ray Train's rank 0 and the evaluators run on other nodes than the driver (the head of a cluster
    has no CPUs for them), so on a cluster of several nodes (or one an autoscaler will grow) they must
    reach the run directory too. An object store does; a mount every node shares does, when declared.
    """
    if not run_dir.is_local or cfg.run.shared_fs:
        return
    if len(cap.nodes) > 1 or cap.groups:
        grows = " and an autoscaler that adds more" if cap.groups else ""
        raise StorageError(
            f"run directory {run_dir} is on this node's disk, but the cluster has {len(cap.nodes)} node(s){grows} "
            "whose training workers and evaluators cannot reach it: set run.out_dir to s3://bucket/path or "
            "gs://bucket/path, or to a file system every node mounts and run.shared_fs=true")


class Orchestrator:
    """Drives one run (see the module docstring).

    Args:
        cfg: the validated experiment.
        run_dir: ``<out_dir>/<name>`` (a local path, a shared mount or a URI); must be new unless ``resume``.
        resume: continue after the last complete round stored in ``run_dir``.
        say: where progress lines go (the console's ``say`` in ``run.py``).
        log_file: the driver's local log, copied into ``<run>/logs/`` after every round.
        base: the model (``coalora.model.loading.LoadedModel``) if the caller loaded it already (run.py does,
            to check the run before Ray starts).
        resume_overrides: the ``--set`` values a resumed run applied; recorded in its ``config.yaml``.
        record_processes: keep ``<run>/ray_processes.json`` (:mod:`orchestration.leftovers`); only for a
            driver that started its own local Ray, since every process it started is recorded.
        validated_rounds: the complete rounds of a resumed run whose directory the caller has just
            validated (run.py does, before Ray starts); None validates it here.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | os.PathLike | Location, resume: bool = False,
                 say: Callable[[str], None] = print,
                 on_eval_progress: Callable[[int, int, int], None] | None = None,
                 log_file: Path | None = None, base: Any = None, resume_overrides: Sequence[str] = (),
                 record_processes: bool = False, validated_rounds: int | None = None) -> None:
        self.cfg = cfg
        self.store = RunStore(run_dir)
        self.resume = resume
        self.say = say
        self.on_eval_progress = on_eval_progress
        self.log_file = log_file
        self.base = base
        self.resume_overrides = list(resume_overrides)
        self.record_processes = record_processes
        self.validated_rounds = validated_rounds
        self.record: ProcessRecord | None = None
        self.progress = Progress(cfg.run.rounds, say)
        # Ray Train's own storage lives inside the run: a round name reused by another run (or by an
        # --overwrite) must never find an old round there, since Train V2 resumes a run it finds.
        self.storage = self.store.ray_train_dir
        self.pool: EvaluatorPool | None = None
        self.keep_evaluators = True
        self.backend = "gloo"
        self.gpu_report: DeviceReport | None = None
        self._checked = False

    def preflight(self) -> None:
        """Check storage and resources against the connected cluster; probe GPU nodes once.

        Raises:
            StorageError: a node-local run directory on a multi-node cluster.
            PlanError: a resource plan that can never fit.
        """
        if self._checked:
            return
        cfg = self.cfg
        cap = cluster_capacity()
        check_storage(self.store.root, cfg, cap)
        plan = ResourcePlan.of(cfg.ray)
        self.keep_evaluators = check_plan(plan, cap, cfg.ray.evaluators_during_training)
        self.say(describe(plan, self.keep_evaluators))
        if plan.uses_gpus:
            self.gpu_report = probe_gpu_node(min(g for g in (plan.train.gpu, plan.evaluate.gpu) if g > 0))
            if self.gpu_report.falls_back:
                self.say(f"note: {self.gpu_report.note()}")
        self.backend = collective_backend(self.gpu_report) if cfg.ray.use_gpu else "gloo"
        self._checked = True

    def run(self) -> dict[str, Any]:
        self.preflight()
        cfg, store = self.cfg, self.store
        # The model first: a run directory is made only once the run can start.
        loaded = self.base if self.base is not None else load_base(cfg)
        self.base = None
        space = build_space(cfg, loaded.model)  # checks every bits setting against the space
        start = 0
        if self.resume:
            # Everything a resume reads is whole before anything is deleted (once: run.py checked already).
            start = store.validate(space) if self.validated_rounds is None else self.validated_rounds
            store.truncate_to(start)
            if self.resume_overrides:
                self._record_overrides()
            self.say(f"resuming {store.root} after {start} complete round(s)")
        else:
            store.create(cfg.run.name, dump_config(cfg))
        if self.record_processes:
            self.record = ProcessRecord(store.root)
            self.record.update()
        if start == 0:
            self.say(f"{cfg.model.name}: {space.n_matrices} target matrices, {space.n_options} options each, "
                     f"attainable bits {space.attainable_range()}")

            def table_progress(done: int, total: int) -> None:
                if done == total or done % max(1, total // 4) == 0:
                    self.say(f"error table: {done}/{total} matrices")

            err = error_table_parallel(cfg.model.name, loaded.model, space, progress=table_progress)
            trainset = initial_trainset(cfg, space, err)
            candidates = np.zeros((0, space.n_matrices, 5), dtype=np.int64)
            search = SearchActor.options(num_cpus=cfg.ray.search_cpus, scheduling_strategy=on_this_node()).remote(
                space.signature(), cfg.search)
        elif start >= cfg.run.rounds:
            self.say(f"all {cfg.run.rounds} rounds are complete; nothing to do")
            return self._summary(space)
        else:
            trainset, candidates = read_trainset(store.trainset_path(start - 1), space)
            err = error_table_parallel(cfg.model.name, loaded.model, space) if cfg.hypernet.damage else None
            search = SearchActor.options(num_cpus=cfg.ray.search_cpus, scheduling_strategy=on_this_node()).remote(
                space.signature(), cfg.search, store.search_dir(start - 1).read_files())
        del loaded  # the driver only needed the shapes and the error table
        # hypernet.damage reads the error table: the workers get the driver's rather than computing it.
        self.errors = err if cfg.hypernet.damage else None
        self.pool = EvaluatorPool(cfg, say=self.say, errors=self.errors)
        if self.keep_evaluators:
            self.pool.start()
            self._record_processes()
        try:
            for k in range(start, cfg.run.rounds):
                trainset, candidates = self._round(k, trainset, candidates, space, search, first=k == start)
        finally:
            self.pool.shutdown()
            self.save_log()
        return self._summary(space)

    def _record_overrides(self) -> None:
        """Write the resumed run's effective configuration, with a comment saying what changed when."""
        import datetime as dt

        old = self.store.config_path.read_text()
        header = [line for line in old.splitlines() if line.startswith("#")]
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        header.append(f"# resumed {stamp} with --set {' --set '.join(self.resume_overrides)}")
        self.store.config_path.write_text("\n".join(header) + "\n" + dump_config(self.cfg))

    def save_log(self) -> None:
        """Copy the driver's log into ``<run>/logs/`` (best effort: a log is not worth a failed run)."""
        if self.log_file is None or not self.log_file.is_file():
            return
        try:
            (self.store.logs_dir / self.log_file.name).write_bytes(self.log_file.read_bytes())
        except (OSError, StorageError) as e:
            self.say(f"warning: could not copy the log to {self.store.logs_dir}: {e}")

    def _round(self, k: int, trainset: np.ndarray, candidates: np.ndarray, space: Any,
               search: Any, first: bool = False) -> tuple[np.ndarray, np.ndarray]:
        cfg, store = self.cfg, self.store
        bits = space.average_bits(trainset)
        self.progress(k, f"train: {len(trainset)} configurations ({bits.min():.2f}-{bits.max():.2f} bits), "
                         f"{cfg.ray.num_workers} worker(s)")
        t0 = time.perf_counter()
        prev = store.checkpoint_dir(k - 1) if k > 0 else None
        assert self.pool is not None
        if not self.keep_evaluators:
            self.pool.shutdown()  # their resources go to the training workers
        metrics = train_round(cfg, k, trainset, prev, store.checkpoint_dir(k), self.storage, cfg.run.name,
                              backend=self.backend, announce=first,
                              on_tick=self._record_processes if self.record is not None else None,
                              errors=self.errors)
        t_train = time.perf_counter() - t0
        attempts = int(metrics.get("train_attempts", 1))
        if attempts > 1:
            self.say(f"warning: round {k + 1}: training restarted {attempts - 1} time(s) after a worker failed")
        self.progress(k, f"train done: loss {metrics.get('train_loss', float('nan')):.4f} in {t_train:.1f}s")

        t0 = time.perf_counter()
        configs = np.concatenate([trainset, candidates]) if len(candidates) else trainset
        roles = [ROLE_TRAIN] * len(trainset) + [ROLE_CANDIDATE] * len(candidates)
        state_ref = ray.put(load_safetensors((store.checkpoint_dir(k) / "trainable.safetensors").read_bytes()))

        def on_done(done: int, total: int) -> None:
            if self.on_eval_progress is not None:
                self.on_eval_progress(k, done, total)
            if done == total or done % max(1, total // 4) < cfg.ray.configs_per_call:
                self.progress(k, f"evaluate: {done}/{total}")

        results = self.pool.evaluate(k, state_ref, configs, on_done)
        self._record_processes()
        rows = _rows_for_archive(k, configs, roles, results, space)
        t_eval = time.perf_counter() - t0

        t0 = time.perf_counter()
        losses = np.array([r["loss"] if r["status"] == STATUS_OK else math.nan for r in rows])
        ray.get(search.observe.remote(configs, losses, k))
        new_set = ray.get(search.select.remote())
        last_round = k == cfg.run.rounds - 1
        new_cands = ray.get(search.propose.remote(0 if last_round else cfg.search.candidates))
        status = ray.get(search.status.remote())
        store.search_dir(k).write_files(ray.get(search.state_files.remote()))
        t_search = time.perf_counter() - t0

        store.write_trainset(k, TrainsetFile(trainset=[space.to_json(c) for c in new_set],
                                             candidates=[space.to_json(c) for c in new_cands]))
        hist = status["last"] or {}
        failed = sum(r["status"] != STATUS_OK for r in rows)
        for r in rows:
            if r["status"] != STATUS_OK:
                self.say(f"warning: round {k + 1}: configuration {r['config_id']} failed: {r['error']}")
        round_row = RoundRow(
            round=k, hypervolume=float(hist.get("hv_archive", 0.0)), hv_train=float(hist.get("hv_train", 0.0)),
            set_size=len(new_set), evaluated=len(rows), failed=failed,
            train_loss=float(metrics.get("train_loss", math.nan)), train_steps=int(metrics.get("train_steps", 0)),
            train_seconds=t_train, train_loop_seconds=float(metrics.get("train_seconds", math.nan)),
            eval_seconds=t_eval, search_seconds=t_search,
            train_attempts=attempts, eval_retries=self.pool.stats["retries"],
            evaluators_replaced=self.pool.stats["replaced"],
        )
        self.save_log()  # before the round is marked complete: a driver killed after it leaves its log
        store.append_round(rows, round_row)
        write_report(store, cfg, space, cfg.run.name)
        self.progress(k, f"search: hypervolume {round_row['hypervolume']:.4f}, next set {len(new_set)}, "
                         f"{len(new_cands)} candidates, {failed} failed | train {t_train:.0f}s eval {t_eval:.0f}s "
                         f"search {t_search:.0f}s")
        return new_set, new_cands

    def _record_processes(self) -> None:
        if self.record is not None:
            self.record.update()

    def _summary(self, space: Any) -> dict[str, Any]:
        rounds = self.store.read_rounds()
        return {"run_dir": str(self.store.root), "rounds": len(rounds),
                "hypervolume": rounds[-1]["hypervolume"] if rounds else None,
                "report": str(self.store.report_path)}
