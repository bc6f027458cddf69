"""A pool of evaluator actors that score configurations with the current checkpoint.

Each actor loads the model and the held-out split once and keeps its quantized-weight cache for the
whole run. Once per round the trained weights reach it as an ObjectRef (boxed in a list so Ray does
not resolve it on every call; the actor fetches it when the round changes). Work goes out in small
batches of configurations with backpressure (at most ``2`` calls in flight per actor, ``ray.wait``).

Failures:
- a configuration whose evaluation raises is recorded with ``status="error"`` and its message: a
  deterministic failure must not stop the run;
- an actor that dies loses nothing: its calls are re-submitted to the other actors (up to
  ``max_retries`` times each) and a replacement actor is started.
"""

from __future__ import annotations

import collections
import time
import traceback
from typing import Any, Callable

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from coalora.config import ExperimentConfig

IN_FLIGHT_PER_ACTOR = 2


@ray.remote
class Evaluator:
    """Holds one model replica; ``evaluate`` scores configurations on the held-out split."""

    def __init__(self, experiment: dict[str, Any], name: str, threads: int = 1) -> None:
        import torch

        from coalora.config import config_from_dict
        from coalora.experiment import build_adapted, load_base, load_data

        torch.set_num_threads(max(1, threads))
        self.name = name
        self.cfg = config_from_dict(experiment)
        # CUDA when Ray gave this actor a GPU, else CPU: nothing assumes either.
        self.device = torch.device("cuda") if ray.get_gpu_ids() and torch.cuda.is_available() else torch.device("cpu")
        loaded = load_base(self.cfg)
        loaded.model.to(self.device)
        self.task = loaded.task
        self.model = build_adapted(self.cfg, loaded, "coa")
        self.model.to(self.device)
        data = load_data(self.cfg, loaded.tokenizer, loaded.task)
        self.batches = data.eval_batches(self.cfg, "validation")
        self.round = -1

    def evaluate(self, round_k: int, state_box: list, configs: np.ndarray) -> list[dict[str, Any]]:
        """Score ``configs`` ``(B, N, 5)`` with the weights of round ``round_k``: one row each."""
        from coalora.evaluate import evaluate_one

        if round_k != self.round:
            state = ray.get(state_box[0])
            self.model.load_trainable_state({k: v.to(self.device) for k, v in state.items()})
            self.round = round_k
        rows = []
        for cfg in configs:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"actor": self.name}
            try:
                self.model.set_config(cfg)
                m = evaluate_one(self.model, self.batches, self.task, self.cfg.eval.max_batches)
                row.update(status="ok", error=None, loss=m["loss"], accuracy=m.get("accuracy"),
                           perplexity=m.get("perplexity"))
            except Exception as e:  # a deterministic failure of this configuration: record it, go on
                row.update(status="error", error=f"{type(e).__name__}: {e}", loss=float("nan"),
                           accuracy=None, perplexity=None)
                traceback.print_exc()
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        return rows

    def ready(self) -> str:
        return self.name


class EvaluatorPool:
    """``n`` evaluator actors and the scheduling around them."""

    def __init__(self, cfg: ExperimentConfig, n: int | None = None) -> None:
        self.cfg = cfg
        r = cfg.ray
        self.options = dict(num_cpus=r.cpus_per_evaluator, num_gpus=r.gpus_per_evaluator, max_restarts=0)
        self.threads = max(1, int(r.cpus_per_evaluator))
        self.experiment = cfg.to_dict()
        self.actors: list[Any] = []
        self.names: list[str] = []
        self.spawned = 0
        for _ in range(n or r.evaluators):
            self._spawn()
        ray.get([a.ready.remote() for a in self.actors])

    def _spawn(self) -> int:
        name = f"evaluator-{self.spawned}"
        self.spawned += 1
        actor = Evaluator.options(**self.options).remote(self.experiment, name, self.threads)
        self.actors.append(actor)
        self.names.append(name)
        return len(self.actors) - 1

    def _replace(self, i: int) -> None:
        """Swap the dead actor in slot ``i`` for a fresh one."""
        name = f"evaluator-{self.spawned}"
        self.spawned += 1
        self.actors[i] = Evaluator.options(**self.options).remote(self.experiment, name, self.threads)
        self.names[i] = name

    def evaluate(
        self,
        round_k: int,
        state_ref: Any,
        configs: np.ndarray,
        on_done: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Score every configuration of ``configs`` ``(B, N, 5)``; rows come back in input order."""
        per = self.cfg.ray.configs_per_call
        chunks = [np.asarray(configs[i : i + per]) for i in range(0, len(configs), per)]
        results: list[list[dict[str, Any]] | None] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        queue = collections.deque(range(len(chunks)))
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (actor slot, chunk)
        load = [0] * len(self.actors)
        box = [state_ref]
        done = 0
        while queue or inflight:
            while queue:
                slot = int(np.argmin(load))
                if load[slot] >= IN_FLIGHT_PER_ACTOR:
                    break
                c = queue.popleft()
                ref = self.actors[slot].evaluate.remote(round_k, box, chunks[c])
                inflight[ref] = (slot, c)
                load[slot] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                slot, c = inflight.pop(ref)
                load[slot] -= 1
                try:
                    results[c] = ray.get(ref)
                    done += len(chunks[c])
                    if on_done is not None:
                        on_done(done, len(configs))
                except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                    attempts[c] += 1
                    if self.actors[slot] is not None and not self._alive(slot):
                        # Its other in-flight calls fail too and are re-queued as they come back.
                        self._replace(slot)
                        load[slot] = sum(1 for s, _ in inflight.values() if s == slot)
                    if attempts[c] > self.cfg.ray.max_retries:
                        results[c] = [{"actor": self.names[slot], "status": "error", "loss": float("nan"),
                                       "accuracy": None, "perplexity": None, "seconds": 0.0,
                                       "error": f"evaluator died {attempts[c]} times: {type(e).__name__}"}
                                      for _ in chunks[c]]
                        done += len(chunks[c])
                    else:
                        queue.appendleft(c)
        return [row for chunk in results for row in chunk]  # type: ignore[union-attr]

    def _alive(self, slot: int) -> bool:
        try:
            ray.get(self.actors[slot].ready.remote(), timeout=30)
            return True
        except Exception:
            return False

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []
