"""The NSGA-II baseline: Optuna's NSGA-II sampler asked for configurations, told their objectives."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from coalora.core.space import KNOBS, QuantSpace
from coalora.search.archive import NewConfigs, Observation
from coalora.search.moves import mutation_pool


# ---------------------------------------------------------------------------------------------- NSGA-II
class Nsga2Study:
    """Optuna NSGA-II over one categorical parameter per knob per matrix, driven by ask/tell.

    The study is rebuilt from the archive on demand (after a load) by replaying every finite row as an
    enqueued, asked and told trial; proposals are asked and then told FAIL at once (their values arrive
    later as ordinary archive rows). The generations therefore depend only on the archive order, so a
    resumed search proposes what an uninterrupted one would.
    """

    def __init__(self, space: QuantSpace, population: int) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna = optuna
        self.space, self.population = space, population
        self.names = [f"m{i}.{k}" for i in range(space.n_matrices) for k in KNOBS]
        self.dists = {
            f"m{i}.{k}": optuna.distributions.CategoricalDistribution(tuple(range(int(space.cardinalities[j]))))
            for i in range(space.n_matrices)
            for j, k in enumerate(KNOBS)
        }
        self.study = optuna.create_study(
            directions=["minimize", "minimize"],
            sampler=optuna.samplers.NSGAIISampler(population_size=population, seed=0),
        )
        self.told = 0  # archive rows replayed so far

    def _params(self, idx: np.ndarray) -> dict[str, int]:
        return {name: int(v) for name, v in zip(self.names, idx.reshape(-1))}

    def _config(self, params: dict[str, Any]) -> np.ndarray:
        return np.array([params[n] for n in self.names], dtype=np.int64).reshape(self.space.n_matrices, len(KNOBS))

    def sync(self, rows: Sequence[Observation], configs: dict[bytes, np.ndarray]) -> None:
        """Tell the study every finite archive row it has not seen (``configs``: key → ``(N, 5)``)."""
        self.study.sampler = self.optuna.samplers.NSGAIISampler(population_size=self.population, seed=0)
        for row in rows[self.told :]:
            if row.status == "ok":
                self.study.enqueue_trial(self._params(configs[row.key]))
                trial = self.study.ask(self.dists)
                # An enqueued trial's parameters are all fixed, so Optuna never asks the sampler for it and
                # NSGA-II never assigns it a generation (it would ignore it as a parent). Asking for the
                # relative parameters does both, without changing the fixed values.
                _ = trial.relative_params
                self.study.tell(trial, [row.loss, row.avg_bits])
        self.told = len(rows)

    def propose(
        self, k: int, seed: int, avoid: set[bytes], rng: np.random.Generator, fallback: np.ndarray
    ) -> np.ndarray:
        """Up to ``k`` configurations not in ``avoid`` (added to it): ``(m, N, 5)``.

        ``fallback`` (``(F, N, 5)``) are the parents mutated when NSGA-II keeps asking for known ones.
        """
        self.study.sampler = self.optuna.samplers.NSGAIISampler(population_size=self.population, seed=seed)
        new = NewConfigs(self.space, k, avoid)
        for _ in range(20 * k):
            if new.full:
                break
            trial = self.study.ask(self.dists)
            cfg = self._config(trial.params)
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
            new.offer(cfg)
        # NSGA-II kept repeating known configurations (a converged population): mutate archive members.
        tries = 0
        while not new.full and len(fallback) and tries < 50 * k:
            tries += 1
            new.offer(mutation_pool(self.space, fallback, rng, 1)[0])
        return new.configs()
