"""The central search actor: one :class:`coalora.search.ParetoSearch` behind a Ray actor.

All rounds' observations flow into it; it fits the GP, proposes candidates, selects the next
training set segment by segment and keeps the front and the hypervolume history. Its state is saved
after every round so that ``--resume`` continues with the same archive and random streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray


@ray.remote
class SearchActor:
    def __init__(self, space_signature: dict[str, Any], settings: Any, state_dir: str | None = None) -> None:
        import torch

        from coalora.search import ParetoSearch
        from coalora.space import QuantSpace

        torch.set_num_threads(1)
        space = QuantSpace.from_signature(space_signature)
        self.search = ParetoSearch.load(state_dir, space) if state_dir else ParetoSearch(space, settings)

    def observe(self, configs: np.ndarray, losses: np.ndarray, round_k: int) -> int:
        import warnings

        with warnings.catch_warnings():
            # NaN losses (failed evaluations) are dropped with a warning and recorded with a status.
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.search.observe(configs, losses, round=round_k)

    def select(self) -> np.ndarray:
        return self.search.select_training_set()

    def propose(self, k: int) -> np.ndarray:
        if k <= 0 or self.search.settings.method == "frozen":
            return np.zeros((0, self.search.space.n_matrices, 5), dtype=np.int64)
        return self.search.propose(k)

    def status(self) -> dict[str, Any]:
        hist = self.search.history
        return {"round": self.search.round, "hypervolume": self.search.hypervolume(),
                "last": hist[-1] if hist else None, "history": hist}

    def save(self, path: str) -> str:
        return str(self.search.save(path))
