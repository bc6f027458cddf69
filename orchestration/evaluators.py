"""A pool of evaluator actors that score configurations with the current checkpoint.

Each actor loads the model and the held-out split once and keeps its quantized-weight cache for the
whole run. Once per round the trained weights reach it as an ObjectRef (boxed in a list so Ray does
not resolve it on every call; the actor fetches it when the round changes). Work goes out in small
batches of configurations with backpressure (at most ``2`` calls in flight per actor, ``ray.wait``).

Failures:
- a configuration whose evaluation raises is recorded with ``status="error"`` and its message: a
  deterministic failure must not stop the run;
- an actor that dies loses nothing: its calls are re-submitted to the other actors (up to
  ``max_retries`` times each) and a replacement actor is started;
- an actor that runs out of memory is a failure of that actor, never the configuration's result: it
  is replaced by one with half the evaluation batch and the work is redone (on any node). Out of
  memory at a batch of one is the run's failure (the cache or the model does not fit).
"""

from __future__ import annotations

import collections
import time
import traceback
from typing import Any, Callable

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from coalora.pipeline.config import ExperimentConfig
from orchestration.console import MARK

IN_FLIGHT_PER_ACTOR = 2


class EvaluatorOutOfMemory(RuntimeError):
    """An evaluator ran out of memory: the actor's failure, not the configuration's."""


class EvaluatorActor:
    """Holds one model replica; ``evaluate`` scores configurations on the held-out split.

    A plain class so that it can be subclassed; :data:`Evaluator` is its Ray actor.
    """

    def __init__(self, experiment: dict[str, Any], name: str, threads: int = 1, announce: bool = True,
                 errors: np.ndarray | None = None) -> None:
        import torch

        from coalora.pipeline.config import config_from_dict
        from coalora.pipeline.experiment import build_adapted, load_base, load_data
        from coalora.model.memory import host_share
        from orchestration.devices import local_device

        torch.set_num_threads(max(1, threads))
        self.name = name
        self.cfg = config_from_dict(experiment)
        # CUDA when Ray gave this actor a GPU and torch here can use it, else CPU.
        self.device = torch.device(local_device().device)
        loaded = load_base(self.cfg)
        loaded.model.to(self.device)
        self.task = loaded.task
        r = self.cfg.ray
        share = min(1.0, r.gpus_per_evaluator) if self.device.type == "cuda" else host_share(r.cpus_per_evaluator)
        self.model = build_adapted(self.cfg, loaded, "coa", share=share, errors=errors)
        self.model.to(self.device)
        plan = f"{name}: batch {self.cfg.data.eval_batch_size}, {self.model.memory_plan.describe()}"
        print(f"{MARK}{plan}" if announce else plan, flush=True)
        data = load_data(self.cfg, loaded.tokenizer, loaded.task)
        self.batches = data.eval_batches(self.cfg, "validation")
        self.round = -1

    def evaluate(self, round_k: int, state_box: list, configs: np.ndarray) -> list[dict[str, Any]]:
        """Score ``configs`` ``(B, N, 5)`` with the weights of round ``round_k``: one row each."""
        from coalora.pipeline.evaluate import evaluate_one

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
                from coalora.model.memory import is_out_of_memory

                if is_out_of_memory(e):
                    raise EvaluatorOutOfMemory(
                        f"{self.name} ran out of memory at evaluation batch {self.cfg.data.eval_batch_size}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
                row.update(status="error", error=f"{type(e).__name__}: {e}", loss=float("nan"),
                           accuracy=None, perplexity=None)
                traceback.print_exc()
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
        return rows

    def ready(self) -> str:
        return self.name


Evaluator = ray.remote(EvaluatorActor)


class EvaluatorPool:
    """``n`` evaluator actors and the scheduling around them.

    The actors start on first use and live until :meth:`shutdown`; a pool that gives its resources
    back while training runs is shut down after each evaluation and starts again on the next one.
    """

    def __init__(self, cfg: ExperimentConfig, n: int | None = None, say: Callable[[str], None] | None = None,
                 actor_class: Any = Evaluator, errors: np.ndarray | None = None) -> None:
        self.cfg = cfg
        # hypernet.damage: the driver's error table, once in the object store for every actor.
        self.errors = None if errors is None else ray.put(np.asarray(errors))
        self.actor_class = actor_class
        r = cfg.ray
        self.n = n or r.evaluators
        self.options = dict(num_cpus=r.cpus_per_evaluator, num_gpus=r.gpus_per_evaluator, max_restarts=0)
        self.threads = max(1, int(r.cpus_per_evaluator))
        self.batch_size = cfg.data.eval_batch_size  # halved for every replacement after an out-of-memory
        self.say = say or (lambda s: None)
        self.actors: list[Any] = []
        self.names: list[str] = []
        self.spawned = 0
        # Of the last evaluate(): calls re-submitted after their actor died, and actors replaced.
        self.stats = {"retries": 0, "replaced": 0}

    def _new_actor(self) -> tuple[Any, str]:
        name = f"evaluator-{self.spawned}"
        experiment = self.cfg.to_dict()
        experiment["data"]["eval_batch_size"] = self.batch_size
        # Each evaluator prints its memory plan to the console the first time the pool starts.
        announce = self.spawned < self.n
        self.spawned += 1
        actor = self.actor_class.options(**self.options).remote(experiment, name, self.threads, announce, self.errors)
        return actor, name

    def start(self) -> None:
        """Start the actors (a no-op while they run) and wait until each has its model loaded."""
        if self.actors:
            return
        for _ in range(self.n):
            actor, name = self._new_actor()
            self.actors.append(actor)
            self.names.append(name)
        ray.get([a.ready.remote() for a in self.actors])

    def _replace(self, i: int) -> None:
        """Swap the actor in slot ``i`` (dead, or killed by us) for a fresh one."""
        self.actors[i], self.names[i] = self._new_actor()
        self.stats["replaced"] += 1

    def evaluate(
        self,
        round_k: int,
        state_ref: Any,
        configs: np.ndarray,
        on_done: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Score every configuration of ``configs`` ``(B, N, 5)``; rows come back in input order."""
        self.stats = {"retries": 0, "replaced": 0}
        self.start()
        per = self.cfg.ray.configs_per_call
        chunks = [np.asarray(configs[i : i + per]) for i in range(0, len(configs), per)]
        results: list[list[dict[str, Any]] | None] = [None] * len(chunks)
        attempts = [0] * len(chunks)
        queue = collections.deque(range(len(chunks)))
        # ref -> (actor slot, chunk, the actor it went to): a slot's actor changes when it is replaced.
        inflight: dict[Any, tuple[int, int, Any]] = {}
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
                inflight[ref] = (slot, c, self.actors[slot])
                load[slot] += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                slot, c, actor = inflight.pop(ref)
                load[slot] -= 1
                try:
                    results[c] = ray.get(ref)
                    done += len(chunks[c])
                    if on_done is not None:
                        on_done(done, len(configs))
                except EvaluatorOutOfMemory as e:
                    self._out_of_memory(slot, e)
                    load[slot] = sum(1 for s, _, _ in inflight.values() if s == slot)
                    queue.appendleft(c)  # the configuration did nothing wrong: redo it, no attempt counted
                except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                    attempts[c] += 1
                    # Only the actor this call went to is in question. Its other in-flight calls fail too
                    # and come back after it was replaced: they are re-queued, and the replacement, which
                    # may still be starting (a ready() past _alive's timeout on a busy machine), is kept.
                    if self.actors[slot] is actor and not self._alive(slot):
                        self._replace(slot)
                        load[slot] = sum(1 for s, _, _ in inflight.values() if s == slot)
                    if attempts[c] > self.cfg.ray.max_retries:
                        results[c] = [{"actor": self.names[slot], "status": "error", "loss": float("nan"),
                                       "accuracy": None, "perplexity": None, "seconds": 0.0,
                                       "error": f"evaluator died {attempts[c]} times: {type(e).__name__}"}
                                      for _ in chunks[c]]
                        done += len(chunks[c])
                    else:
                        self.stats["retries"] += 1
                        queue.appendleft(c)
        return [row for chunk in results for row in chunk]  # type: ignore[union-attr]

    def _out_of_memory(self, slot: int, error: Exception) -> None:
        """Replace the actor of ``slot`` by one with half the batch (it may land on another node)."""
        # Ray wraps the actor's exception; its own message is on the cause.
        message = str(getattr(error, "cause", None) or error).splitlines()[0]
        if self.batch_size <= 1:
            raise RuntimeError(f"evaluation does not fit in memory even one example at a time ({message}); "
                               "lower model.cache_fraction or use a device with more memory")
        # Its other in-flight calls come back as actor errors and are re-queued like any lost work.
        ray.kill(self.actors[slot])
        self.batch_size = max(1, self.batch_size // 2)
        self.say(f"{message}; retrying on a new evaluator with batch {self.batch_size}")
        self._replace(slot)

    def _alive(self, slot: int) -> bool:
        try:
            ray.get(self.actors[slot].ready.remote(), timeout=30)
            return True
        except Exception:
            return False

    def shutdown(self) -> None:
        """Stop every actor (their resources go back to the cluster); :meth:`start` brings them back."""
        for a in self.actors:
            ray.kill(a)
        self.actors = []
        self.names = []
