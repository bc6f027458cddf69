"""The round loop: train (Ray Train) → evaluate (actor pool) → search (GP actor) → store.

Round k:
  1. fine-tune U_θ + LoRA on the current training set, resuming from round k−1's checkpoint;
  2. score the training set ∪ the candidates proposed in round k−1 with the new checkpoint;
  3. the search actor observes the scores, selects the next training set segment by segment and
     proposes new candidates;
  4. the store appends the round (archive, rounds, training set, checkpoint, search state, plots).

Everything a round writes goes to disk before ``rounds.parquet`` marks it complete, so ``--resume``
can always continue after the last complete round.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
from safetensors.torch import load_file

from coalora.config import ExperimentConfig, dump_config
from coalora.experiment import build_space, initial_trainset, load_base
from orchestration.evaluators import EvaluatorPool
from orchestration.report import write_report
from orchestration.search_actor import SearchActor
from orchestration.store import RunStore, write_text
from orchestration.tables import error_table_parallel
from orchestration.trainer import train_round


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
                      space: Any) -> list[dict[str, Any]]:
    rows = []
    bits = space.average_bits(configs)
    for c, role, b, res in zip(configs, roles, np.atleast_1d(bits), results):
        rows.append({
            "round": k, "config_id": space.config_id(c), "role": role,
            "knobs": c.reshape(-1).astype(int).tolist(), "avg_bits": float(b),
            "loss": float(res["loss"]), "accuracy": res.get("accuracy"), "perplexity": res.get("perplexity"),
            "status": res["status"], "error": res.get("error"), "seconds": float(res["seconds"]),
            "actor": res["actor"],
        })
    return rows


class Orchestrator:
    """Drives one run (see the module docstring).

    Args:
        cfg: the validated experiment.
        run_dir: ``runs/<name>``; must be new unless ``resume``.
        resume: continue after the last complete round stored in ``run_dir``.
        on_round: called with the round index after each completed round (tests use it to inject
            faults; the CLI does not).
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False,
                 say: Callable[[str], None] = print, on_round: Callable[[int], None] | None = None,
                 on_eval_progress: Callable[[int, int, int], None] | None = None) -> None:
        self.cfg = cfg
        self.store = RunStore(run_dir)
        self.resume = resume
        self.say = say
        self.on_round = on_round
        self.on_eval_progress = on_eval_progress
        self.progress = Progress(cfg.run.rounds, say)
        # Ray Train's own storage lives inside the run: a round name reused by another run (or by an
        # --overwrite) must never find an old round there, since Train V2 resumes a run it finds.
        self.storage_path = str(self.store.ray_train_dir.resolve())
        self.pool: EvaluatorPool | None = None

    def run(self) -> dict[str, Any]:
        cfg, store = self.cfg, self.store
        start = 0
        if self.resume:
            start = store.completed_rounds()
            store.truncate_to(start)
            self.say(f"resuming {store.root} after {start} complete round(s)")
        else:
            store.root.mkdir(parents=True, exist_ok=True)
            write_text(store.config_path, dump_config(cfg))
        loaded = load_base(cfg)
        space = build_space(cfg, loaded.model)
        settings = cfg.search.settings()
        if start == 0:
            self.say(f"{cfg.model.name}: {space.n_matrices} target matrices, {space.n_options} options each, "
                     f"{space.min_bits:.3f}-{space.max_bits:.3f} bits")
            err = error_table_parallel(cfg.model.name, loaded.model, space)
            trainset = initial_trainset(cfg, space, err)
            candidates = np.zeros((0, space.n_matrices, 5), dtype=np.int64)
            search = SearchActor.options(num_cpus=cfg.ray.search_cpus).remote(space.signature(), settings)
        elif start >= cfg.run.rounds:
            self.say(f"all {cfg.run.rounds} rounds are complete; nothing to do")
            return self._summary(space)
        else:
            saved = json.loads(store.trainset_path(start - 1).read_text())
            trainset = np.stack([space.from_json(c) for c in saved["trainset"]])
            cands = [space.from_json(c) for c in saved["candidates"]]
            candidates = np.stack(cands) if cands else np.zeros((0, space.n_matrices, 5), dtype=np.int64)
            search = SearchActor.options(num_cpus=cfg.ray.search_cpus).remote(
                space.signature(), settings, str(store.search_dir(start - 1)))
        del loaded  # the driver only needed the shapes and the error table
        self.pool = EvaluatorPool(cfg)
        try:
            for k in range(start, cfg.run.rounds):
                trainset, candidates = self._round(k, trainset, candidates, space, search)
                if self.on_round is not None:
                    self.on_round(k)
        finally:
            self.pool.shutdown()
        return self._summary(space)

    def _round(self, k: int, trainset: np.ndarray, candidates: np.ndarray, space: Any,
               search: Any) -> tuple[np.ndarray, np.ndarray]:
        cfg, store = self.cfg, self.store
        bits = space.average_bits(trainset)
        self.progress(k, f"train: {len(trainset)} configurations ({bits.min():.2f}-{bits.max():.2f} bits), "
                         f"{cfg.ray.num_workers} worker(s)")
        t0 = time.perf_counter()
        prev = store.checkpoint_dir(k - 1) if k > 0 else None
        metrics = train_round(cfg, k, trainset, prev, store.checkpoint_dir(k), self.storage_path, cfg.run.name)
        t_train = time.perf_counter() - t0
        self.progress(k, f"train done: loss {metrics.get('train_loss', float('nan')):.4f} in {t_train:.1f}s")

        t0 = time.perf_counter()
        configs = np.concatenate([trainset, candidates]) if len(candidates) else trainset
        roles = ["train"] * len(trainset) + ["candidate"] * len(candidates)
        state_ref = ray.put(load_file(str(store.checkpoint_dir(k) / "trainable.safetensors")))

        def on_done(done: int, total: int) -> None:
            if self.on_eval_progress is not None:
                self.on_eval_progress(k, done, total)
            if done == total or done % max(1, total // 4) < cfg.ray.configs_per_call:
                self.progress(k, f"evaluate: {done}/{total}")

        assert self.pool is not None
        results = self.pool.evaluate(k, state_ref, configs, on_done)
        rows = _rows_for_archive(k, configs, roles, results, space)
        t_eval = time.perf_counter() - t0

        t0 = time.perf_counter()
        losses = np.array([r["loss"] if r["status"] == "ok" else math.nan for r in rows])
        ray.get(search.observe.remote(configs, losses, k))
        new_set = ray.get(search.select.remote())
        last_round = k == cfg.run.rounds - 1
        new_cands = ray.get(search.propose.remote(0 if last_round else cfg.search.candidates))
        status = ray.get(search.status.remote())
        ray.get(search.save.remote(str(store.search_dir(k))))
        t_search = time.perf_counter() - t0

        store.write_trainset(k, {"trainset": [space.to_json(c) for c in new_set],
                                 "candidates": [space.to_json(c) for c in new_cands]})
        hist = status["last"] or {}
        failed = sum(r["status"] != "ok" for r in rows)
        round_row = {
            "round": k, "hypervolume": float(hist.get("hv_archive", 0.0)), "hv_train": float(hist.get("hv_train", 0.0)),
            "set_size": len(new_set), "evaluated": len(rows), "failed": failed,
            "train_loss": float(metrics.get("train_loss", math.nan)), "train_steps": int(metrics.get("train_steps", 0)),
            "train_seconds": t_train, "train_loop_seconds": float(metrics.get("train_seconds", math.nan)),
            "eval_seconds": t_eval, "search_seconds": t_search,
        }
        store.append_round(rows, round_row)
        write_report(store, cfg, space, cfg.run.name)
        self.progress(k, f"search: hypervolume {round_row['hypervolume']:.4f}, next set {len(new_set)}, "
                         f"{len(new_cands)} candidates, {failed} failed | train {t_train:.0f}s eval {t_eval:.0f}s "
                         f"search {t_search:.0f}s")
        return new_set, new_cands

    def _summary(self, space: Any) -> dict[str, Any]:
        rounds = self.store.read_rounds()
        return {"run_dir": str(self.store.root), "rounds": len(rounds),
                "hypervolume": rounds[-1]["hypervolume"] if rounds else None,
                "report": str(self.store.root / "report.md")}
