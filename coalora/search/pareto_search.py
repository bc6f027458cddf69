"""Pareto-based configuration search: what a round calls (docs/architecture.md §2.5).

Both objectives are minimised: ``f1`` is a loss supplied by the caller, ``f2`` the exact average bits of
the configuration (computed here, never modelled). One :class:`ParetoSearch` coordinates

- the **archive** (:mod:`coalora.search.archive`): one row per observation ``(round, config, loss, bits,
  status)``. A configuration may be observed again in a later round (the real loss changes as the model
  trains); every observation stays as a history row, and the latest finite value per configuration is what
  the GP and the filters use;
- the **training set**, chosen by the method's selection policy (:mod:`coalora.search.selection`): by
  default the segment-wise Pareto filter (U equal bit segments, :mod:`coalora.core.pareto`) over the
  previous training set ∪ the configurations observed since the last selection;
- the **proposer** of the method (:mod:`coalora.search.proposers`), and the loss bounds of the hypervolume.

A round, as the orchestrator drives it::

    search.observe(configs, losses)          # (B, N, 5), (B,): training set ∪ last candidates, re-scored
    train = search.select_training_set()     # (T, N, 5); closes the round, records its hypervolume
    cand = search.propose(k)                 # (k, N, 5) new configurations, spread over segments
    ... evaluate cand (and the next training set) ..., then observe again

Methods (``SearchSettings.method``): ``gp`` (BoTorch GP on f1 + qLogNEHVI with bits as a deterministic
objective, :mod:`coalora.search.gp_proposer`), and the baselines ``random``, ``nsga2`` (Optuna NSGA-II),
``frozen`` (no proposals, the first selected set is kept) and ``random-extend`` (random proposals, the set
only grows; the paper's Fig. 8). The GP's candidate generators (``SearchSettings.generator``): ``pool``
(default; acquisition-scored mutations and crossovers of the segment fronts, then a (1 + λ) hill-climb on
the acquisition from the best candidates of 2k segments) and ``fd-walk`` (the paper's finite-difference
coordinate walk on the acquisition, with an acceptance test: :func:`~coalora.search.moves.fd_walk`).
:meth:`ParetoSearch.save` and :meth:`ParetoSearch.load` go through :mod:`coalora.search.state`.

Everything is seeded: call ``j`` of :meth:`ParetoSearch.propose` uses ``numpy.random.default_rng([seed, j])``
and a torch seed derived from it inside ``torch.random.fork_rng`` (the caller's torch RNG is untouched),
so two runs with the same seed and observations give the same proposals, also across save/load.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from coalora.core.pareto import ObjectiveBounds, segment_edges, segment_index
from coalora.core.space import KNOBS, QuantSpace
from coalora.errors import SearchError, SpaceError
from coalora.search.archive import Archive, empty_configs
from coalora.search.gp import GPAcquisition
from coalora.search.gp_proposer import GPProposer, fit_acquisition
from coalora.search.moves import WalkResult
from coalora.search.proposers import Proposer, make_proposer
from coalora.search.selection import SelectionPolicy, make_policy
from coalora.search.settings import SearchSettings
from coalora.search.state import SearchState, read_archive, read_state, write_state


@dataclass
class ParetoSearch:
    """The configuration search over one :class:`~coalora.core.space.QuantSpace` (see the module docstring).

    Args:
        space: the configuration space.
        settings: :class:`SearchSettings` (validated on construction).

    Attributes:
        archive: the observations (:class:`~coalora.search.archive.Archive`).
        policy: how the training set is selected (:mod:`coalora.search.selection`).
        proposer: how new configurations are proposed (:mod:`coalora.search.proposers`).
        edges: ``(U + 1,)`` segment boundaries in bits.
        bounds: the objectives' normalisation (None until the first finite loss, unless ``loss_range``).
    """

    space: QuantSpace
    settings: SearchSettings = field(default_factory=SearchSettings)

    def __post_init__(self) -> None:
        self.settings.validate()
        s, sp = self.settings, self.space
        if s.bits_range is not None:
            # The same rule as every other range in bits (QuantSpace.check_bits_range): segments outside
            # the attainable range could never hold a configuration.
            try:
                sp.check_bits_range(s.bits_range, key="bits_range")
            except SpaceError as e:
                raise SearchError(str(e)) from None
        lo, hi = s.bits_range if s.bits_range is not None else (sp.min_bits, sp.max_bits)
        if not hi > lo:
            raise SearchError(
                f"the space's bit range [{lo!r}, {hi!r}] is empty: every configuration has the same bits, "
                "so there is nothing to trade off"
            )
        self.bits_range = (float(lo), float(hi))
        self.edges = segment_edges(lo, hi, s.n_segments)
        self.bounds: ObjectiveBounds | None = (
            ObjectiveBounds(s.loss_range, self.bits_range, s.hv_margin) if s.loss_range is not None else None
        )
        self.archive = Archive(sp)
        self.policy: SelectionPolicy = make_policy(s, self.edges)
        self.proposer: Proposer = make_proposer(sp, s, self.edges)
        self.round = 0
        self._calls = 0
        self._train: list[bytes] | None = None
        self._since_select: list[bytes] = []
        self._history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------ observe
    def observe(self, configs: Any, losses: Any, round: int | None = None) -> int:
        """Record losses of configurations; bits are computed exactly here.

        Args:
            configs: ``(B, N, 5)`` (or one ``(N, 5)``) index arrays; known configurations are re-observed
                (a new history row; the latest finite value is the one used).
            losses: ``(B,)`` f1 values. NaN or infinite values are recorded with status ``"nonfinite"``,
                left out of the GP and the filter, and reported in one warning.
            round: the round these values belong to; default the current round. Rounds never go back.

        Returns:
            The number of finite observations recorded.
        """
        idx = self.space.validate(configs)
        if idx.ndim == 2:
            idx = idx[None]
        l = np.asarray(losses, dtype=np.float64).reshape(-1)
        if l.shape != (len(idx),):
            raise SearchError(f"{len(idx)} configurations but {np.asarray(losses).size} losses")
        if round is not None:
            if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or round < self.round:
                raise SearchError(f"round {round!r} is before the current round {self.round}; rounds only go forward")
            self.round = int(round)
        finite = np.isfinite(l)
        if not finite.all():
            warnings.warn(
                f"{int((~finite).sum())} of {len(l)} losses are NaN or infinite; those configurations are "
                "recorded with status 'nonfinite' and left out of the search until observed again",
                RuntimeWarning,
                stacklevel=2,
            )
        if self.bounds is None and finite.any():
            # Frozen at the first observation: from 0 (the floor of a cross-entropy loss; lower if the
            # caller's losses go negative) to the worst first loss. A loss range taken as the first
            # round's min..max would be nearly empty when every configuration starts alike, and later
            # improvements would then blow the normalised hypervolume far past the reference box.
            lo, hi = min(0.0, float(l[finite].min())), float(l[finite].max())
            if not hi > lo:
                hi = lo + 0.1 * max(abs(lo), 1.0)
            self.bounds = ObjectiveBounds((lo, hi), self.bits_range, self.settings.hv_margin)
        self._since_select.extend(self.archive.add(idx, l, self.round))
        return int(finite.sum())

    # ------------------------------------------------------------------------------------------ views
    def evaluated(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latest finite value per configuration: configs ``(n, N, 5)``, losses ``(n,)``, bits ``(n,)``."""
        keys, l, b = self.archive.finite_latest()
        return self.archive.stack(keys), l, b

    def training_set(self) -> np.ndarray:
        """The current training set ``(T, N, 5)``, in increasing bits (empty before the first selection)."""
        return self.archive.stack(self._train or [])

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per closed round: round, evaluations, hypervolumes of the archive and the set, sizes."""
        return [dict(h) for h in self._history]

    @property
    def proposes(self) -> bool:
        """False for a method that never proposes (``frozen``): :meth:`propose` returns ``(0, N, 5)``."""
        return self.proposer.proposes

    @property
    def last_walks(self) -> list[WalkResult]:
        """The walks of the last ``fd-walk`` proposal of the ``gp`` method (else empty)."""
        return self.proposer.last_walks if isinstance(self.proposer, GPProposer) else []

    def hypervolume(self) -> float:
        """Normalised hypervolume (fixed bounds) of the latest finite values of the whole archive."""
        _, l, b = self.archive.finite_latest()
        if self.bounds is None or len(l) == 0:
            return 0.0
        return self.bounds.hypervolume(l, b)

    def archive_rows(self) -> list[dict[str, Any]]:
        """Every observation as a dict (``knobs`` is the ``N × 5`` index list), in observation order."""
        return self.archive.records()

    def archive_table(self) -> Any:
        """The archive as a ``pyarrow.Table``; ``knobs`` is the flattened ``N·5`` index list."""
        return self.archive.table()

    # ------------------------------------------------------------------------------------------ selection
    def select_training_set(self) -> np.ndarray:
        """Close the round: select from (training set ∪ new observations) and record hypervolumes.

        The selection policy (:mod:`coalora.search.selection`) of ``gp``, ``random`` and ``nsga2`` keeps each
        segment's non-dominated members; ``frozen`` keeps the first selection forever; ``random-extend``
        keeps everything finite (the set only grows).

        Returns:
            The new training set, ``(T, N, 5)`` in increasing bits.
        """
        pool = list(self._train or []) + self._since_select
        keys, l, b = self.archive.finite_latest(pool)
        if not keys:
            raise SearchError(
                "no configuration with a finite loss to select from: observe() configurations "
                "(with finite losses) before select_training_set()"
            )
        chosen = self.policy.select(self._train, keys, l, b)
        bits_of = {k: self.archive.rows[self.archive.latest[k]].avg_bits for k in chosen}
        self._train = sorted(chosen, key=lambda k: (bits_of[k], k))
        self._record_history()
        self._since_select = []
        self.round += 1
        return self.training_set()

    def _record_history(self) -> None:
        keys, l, b = self.archive.finite_latest()
        tk, tl, tb = self.archive.finite_latest(self._train or [])
        bounds = self.bounds
        seg = segment_index(tb, self.edges)
        self._history.append({
            "round": self.round,
            "n_evaluated": len(keys),
            "n_rows": len(self.archive.rows),
            "n_train": len(self._train or []),
            "segments_covered": int(len(np.unique(seg[seg >= 0]))),
            "hv_archive": bounds.hypervolume(l, b) if bounds and len(l) else 0.0,
            "hv_train": bounds.hypervolume(tl, tb) if bounds and len(tl) else 0.0,
        })

    # ------------------------------------------------------------------------------------------ proposals
    def propose(self, k: int) -> np.ndarray:
        """``k`` new valid configurations (never in the archive, no duplicates), spread over segments.

        Returns:
            ``(k, N, 5)``; ``(0, N, 5)`` when the method does not propose (:attr:`proposes`). Fewer than ``k``
            (with a warning) only when the generator cannot find ``k`` unseen configurations (a nearly
            exhausted space).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SearchError(f"k must be a positive integer number of proposals; got {k!r}")
        k = int(k)
        call = self._calls
        self._calls += 1
        if not self.proposes:
            return empty_configs(self.space)
        rng = np.random.default_rng([self.settings.seed, call])
        out = self.proposer.propose(k, rng, self.archive, self._train, self.bounds)
        if len(out) < k:
            warnings.warn(f"found only {len(out)} of {k} unseen configurations to propose", RuntimeWarning,
                          stacklevel=2)
        self.archive.mark_proposed(out)
        return out

    def build_acquisition(self, seed: int = 0) -> GPAcquisition:
        """Fit the GP on the archive (latest finite values, capped) and build qLogNEHVI, whatever the method.

        Raises:
            SearchError: fewer than 2 configurations with finite losses.
        """
        return fit_acquisition(self.space, self.settings, self.archive, self._train, self.bounds, seed)

    # ------------------------------------------------------------------------------------------ state
    def save(self, path: str | Path) -> Path:
        """Write ``path/archive.parquet`` and ``path/search.json`` (settings, space, RNG counter, sets)."""
        ids = {k: self.space.config_id(v) for k, v in self.archive.configs.items()}
        state = SearchState(
            space=self.space.signature(),
            settings=asdict(self.settings),
            bounds=self.bounds.as_dict() if self.bounds else None,
            round=self.round,
            propose_calls=self._calls,
            train=None if self._train is None else [ids[k] for k in self._train],
            since_select=[ids[k] for k in self._since_select],
            pending=[c.reshape(-1).tolist() for c in self.archive.pending_configs()],
            history=self._history,
        )
        return write_state(path, state, self.archive_table())

    @classmethod
    def load(cls, path: str | Path, space: QuantSpace) -> "ParetoSearch":
        """Restore a search saved by :meth:`save` (state version 1 or 2); ``space`` must be the one it was made for.

        Raises:
            SearchError: missing or unreadable files.
            SpaceError: the state belongs to another model or configuration space.
        """
        d = Path(path)
        state = read_state(d)
        space.check_same(state.space, what=f"search state {str(d)!r}")
        self = cls(space, state.search_settings(str(d)))
        if state.bounds is not None:
            self.bounds = ObjectiveBounds.from_dict(state.bounds)
        self.archive, by_id = Archive.from_records(space, read_archive(d, state.version))
        self.round = state.round
        self._calls = state.propose_calls
        self._train = None if state.train is None else [by_id[i] for i in state.train]
        self._since_select = [by_id[i] for i in state.since_select]
        if state.pending:
            self.archive.mark_proposed(np.asarray(state.pending, dtype=np.int64).reshape(
                -1, space.n_matrices, len(KNOBS)))
        self._history = list(state.history)
        return self
