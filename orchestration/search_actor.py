"""The central search actor: one :class:`coalora.search.pareto_search.ParetoSearch` behind a Ray actor.

All rounds' observations flow into it; it fits the GP, proposes candidates, selects the next
training set segment by segment and keeps the front and the hypervolume history. Its state is saved
after every round so that ``--resume`` continues with the same archive and random streams. The state
travels as ``{file name: bytes}``: the actor may run on any node, and the driver writes the files to
the run directory wherever that lives.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import ray


@ray.remote
class SearchActor:
    def __init__(self, space_signature: dict[str, Any], settings: Any,
                 state_files: dict[str, bytes] | None = None) -> None:
        import torch

        from coalora.core.space import QuantSpace
        from coalora.search.pareto_search import ParetoSearch

        torch.set_num_threads(1)
        space = QuantSpace.from_signature(space_signature)
        if state_files is None:
            self.search = ParetoSearch(space, settings)
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name, blob in state_files.items():
                (Path(tmp) / name).write_bytes(blob)
            self.search = ParetoSearch.load(tmp, space)

    def observe(self, configs: np.ndarray, losses: np.ndarray, round_k: int) -> int:
        import warnings

        with warnings.catch_warnings():
            # NaN losses (failed evaluations) are dropped with a warning and recorded with a status.
            warnings.simplefilter("ignore", RuntimeWarning)
            return self.search.observe(configs, losses, round=round_k)

    def select(self) -> np.ndarray:
        return self.search.select_training_set()

    def propose(self, k: int) -> np.ndarray:
        from coalora.search.archive import empty_configs

        if k <= 0 or not self.search.proposes:  # the last round asks for none; `frozen` never proposes
            return empty_configs(self.search.space)
        return self.search.propose(k)

    def status(self) -> dict[str, Any]:
        hist = self.search.history
        return {"round": self.search.round, "hypervolume": self.search.hypervolume(),
                "last": hist[-1] if hist else None, "history": hist}

    def state_files(self) -> dict[str, bytes]:
        """The search state as the files :meth:`ParetoSearch.save` writes."""
        with tempfile.TemporaryDirectory() as tmp:
            self.search.save(tmp)
            return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
