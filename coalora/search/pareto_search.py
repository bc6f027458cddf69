"""Pareto-based configuration search: archive, GP proposals, baselines, training-set selection (DESIGN §2.5).

Both objectives are minimised: ``f1`` is a loss supplied by the caller, ``f2`` the exact average bits of
the configuration (computed here, never modelled). One :class:`ParetoSearch` holds

- the **archive**: one row per observation ``(round, config, loss, bits, status)``. A configuration may be
  observed again in a later round (the real loss changes as the model trains); every observation stays
  as a history row, and the latest finite value per configuration is what the GP and the filters use;
- the **training set**: the segment-wise Pareto filter (U equal bit segments, :mod:`coalora.core.pareto`) over
  the previous training set ∪ the configurations observed since the last selection.

A round, as the orchestrator drives it::

    search.observe(configs, losses)          # (B, N, 5), (B,): training set ∪ last candidates, re-scored
    train = search.select_training_set()     # (T, N, 5); closes the round, records its hypervolume
    cand = search.propose(k)                 # (k, N, 5) new configurations, spread over segments
    ... evaluate cand (and the next training set) ..., then observe again

Methods (``SearchSettings.method``): ``gp`` (BoTorch GP on f1 + qLogNEHVI with bits as a deterministic
objective), and the baselines ``random``, ``nsga2`` (Optuna NSGA-II), ``frozen`` (no proposals, the first
selected set is kept) and ``random-extend`` (random proposals, the set only grows; the paper's Fig. 8).
The GP's candidate generators (``SearchSettings.generator``): ``pool`` (default; acquisition-scored
mutations and crossovers of the segment fronts, then a (1 + λ) hill-climb on the acquisition from the best
candidates of 2k segments) and ``fd-walk`` (the paper's finite-difference coordinate walk on the
acquisition, with an acceptance test: :func:`fd_walk`).

Modules: this one (settings, archive, selection, proposals, NSGA-II adapter, state), :mod:`coalora.search.gp`
(encodings, the additive bits kernel, qLogNEHVI), :mod:`coalora.search.moves` (mutations, fd-walk, spread
selection) and :mod:`coalora.core.pareto` (fronts, hypervolume, segments); everything public is re-exported here.

Everything is seeded: call ``j`` of :meth:`ParetoSearch.propose` uses ``numpy.random.default_rng([seed, j])``
and a torch seed derived from it inside ``torch.random.fork_rng`` (the caller's torch RNG is untouched),
so two runs with the same seed and observations give the same proposals, also across save/load.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from coalora.core.pareto import ObjectiveBounds, non_dominated_mask, segment_edges, segment_filter, segment_index
from coalora.search.gp import ConfigEncoder, GPAcquisition, GPInputs
from coalora.errors import SearchError
from coalora.search.moves import WalkResult, config_keys, fd_walk, mutation_pool, spread_select
from coalora.core.space import KNOBS, QuantSpace
from coalora.errors import SpaceError
from coalora.search.nsga2 import _Nsga2
from coalora.search.settings import SearchSettings
STATE_VERSION = 1
_STATE_JSON = "search.json"
_ARCHIVE_PARQUET = "archive.parquet"


# ---------------------------------------------------------------------------------------------- the search
@dataclass
class _Row:
    row: int
    round: int
    key: bytes
    config_id: str
    loss: float
    bits: float
    status: str
    proposed: bool

    def public(self, config: np.ndarray) -> dict[str, Any]:
        return {
            "row": self.row, "round": self.round, "config_id": self.config_id, "loss": self.loss,
            "bits": self.bits, "status": self.status, "proposed": self.proposed, "config": config.tolist(),
        }


@dataclass
class ParetoSearch:
    """The configuration search over one :class:`~coalora.core.space.QuantSpace` (see the module docstring).

    Args:
        space: the configuration space.
        settings: :class:`SearchSettings` (validated on construction).
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
        self.encoder = ConfigEncoder(sp, s.encoding)
        self.round = 0
        self._calls = 0
        self._rows: list[_Row] = []
        self._configs: dict[bytes, np.ndarray] = {}
        self._latest: dict[bytes, int] = {}
        self._train: list[bytes] | None = None
        self._since_select: list[bytes] = []
        self._pending: set[bytes] = set()
        self._history: list[dict[str, Any]] = []
        self._nsga: _Nsga2 | None = None
        self.last_walks: list[WalkResult] = []

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
        bits = np.atleast_1d(self.space.average_bits(idx))
        for cfg, key, loss, b, ok in zip(idx, config_keys(idx), l, bits, finite):
            if key not in self._configs:
                self._configs[key] = cfg.copy()
            row = _Row(len(self._rows), self.round, key, self.space.config_id(cfg), float(loss), float(b),
                       "ok" if ok else "nonfinite", key in self._pending)
            self._pending.discard(key)
            self._rows.append(row)
            self._latest[key] = row.row
            self._since_select.append(key)
        return int(finite.sum())

    # ------------------------------------------------------------------------------------------ views
    def _finite_latest(self, keys: Sequence[bytes] | None = None) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """Configurations whose latest observation is finite: keys, losses ``(n,)``, bits ``(n,)``."""
        keys = list(self._latest) if keys is None else list(dict.fromkeys(keys))
        rows = [self._rows[self._latest[k]] for k in keys]
        ok = [r for r in rows if r.status == "ok"]
        return [r.key for r in ok], np.array([r.loss for r in ok]), np.array([r.bits for r in ok])

    def evaluated(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latest finite value per configuration: configs ``(n, N, 5)``, losses ``(n,)``, bits ``(n,)``."""
        keys, l, b = self._finite_latest()
        return self._stack(keys), l, b

    def _stack(self, keys: Sequence[bytes]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)
        return np.stack([self._configs[k] for k in keys])

    def training_set(self) -> np.ndarray:
        """The current training set ``(T, N, 5)``, in increasing bits (empty before the first selection)."""
        return self._stack(self._train or [])

    def training_set_ids(self) -> list[str]:
        return [self.space.config_id(self._configs[k]) for k in (self._train or [])]

    @property
    def history(self) -> list[dict[str, Any]]:
        """One dict per closed round: round, evaluations, hypervolumes of the archive and the set, sizes."""
        return [dict(h) for h in self._history]

    def hypervolume(self) -> float:
        """Normalised hypervolume (fixed bounds) of the latest finite values of the whole archive."""
        _, l, b = self._finite_latest()
        if self.bounds is None or len(l) == 0:
            return 0.0
        return self.bounds.hypervolume(l, b)

    def archive_rows(self) -> list[dict[str, Any]]:
        """Every observation as a dict (``config`` is the ``N × 5`` index list), in observation order."""
        return [r.public(self._configs[r.key]) for r in self._rows]

    def archive_table(self) -> Any:
        """The archive as a ``pyarrow.Table``; ``config`` is the flattened ``N·5`` index list."""
        import pyarrow as pa

        cols: dict[str, list[Any]] = {k: [] for k in
                                      ("row", "round", "config_id", "loss", "bits", "status", "proposed", "config")}
        for r in self._rows:
            for k in ("row", "round", "config_id", "loss", "bits", "status", "proposed"):
                cols[k].append(getattr(r, k))
            cols["config"].append(self._configs[r.key].reshape(-1).astype(np.int16).tolist())
        schema = pa.schema([
            ("row", pa.int64()), ("round", pa.int64()), ("config_id", pa.string()), ("loss", pa.float64()),
            ("bits", pa.float64()), ("status", pa.string()), ("proposed", pa.bool_()),
            ("config", pa.list_(pa.int16())),
        ])
        return pa.table(cols, schema=schema)

    # ------------------------------------------------------------------------------------------ selection
    def select_training_set(self) -> np.ndarray:
        """Close the round: filter (training set ∪ new observations) segment-wise and record hypervolumes.

        ``gp``, ``random`` and ``nsga2`` keep each segment's non-dominated members; ``frozen`` keeps the
        first selection forever; ``random-extend`` keeps everything finite (the set only grows).

        Returns:
            The new training set, ``(T, N, 5)`` in increasing bits.
        """
        pool = list(self._train or []) + self._since_select
        keys, l, b = self._finite_latest(pool)
        if not keys:
            raise SearchError(
                "no configuration with a finite loss to select from: observe() configurations "
                "(with finite losses) before select_training_set()"
            )
        method = self.settings.method
        seg = segment_index(b, self.edges)
        if method == "frozen" and self._train is not None:
            chosen = list(self._train)
        elif method in ("frozen", "random-extend"):
            chosen = keys
        else:
            outside = int((seg < 0).sum())
            if outside:
                warnings.warn(
                    f"{outside} configuration(s) lie outside the bit range [{self.edges[0]:.4f}, "
                    f"{self.edges[-1]:.4f}] and are left out of the training set", RuntimeWarning, stacklevel=2,
                )
            if outside == len(keys):
                raise SearchError(
                    f"every configuration lies outside the bit range [{self.edges[0]:.4f}, {self.edges[-1]:.4f}]; "
                    "widen SearchSettings.bits_range"
                )
            used = np.unique(seg[seg >= 0])
            if len(used) == 1 and len(self.edges) > 2 and len(keys) > 1:
                u = int(used[0])
                warnings.warn(
                    f"all {len(keys)} configurations lie in one bit segment [{self.edges[u]:.4f}, "
                    f"{self.edges[u + 1]:.4f}); the training set is that segment's front only. Spread the "
                    "initial configurations over the bit range (e.g. QuantSpace.sample_near)",
                    RuntimeWarning, stacklevel=2,
                )
            mask = segment_filter(l, b, self.edges)
            chosen = [k for k, m in zip(keys, mask) if m]
        bits_of = {k: self._rows[self._latest[k]].bits for k in chosen}
        self._train = sorted(chosen, key=lambda k: (bits_of[k], k))
        self._record_history()
        self._since_select = []
        self.round += 1
        return self.training_set()

    def _record_history(self) -> None:
        keys, l, b = self._finite_latest()
        tk, tl, tb = self._finite_latest(self._train or [])
        bounds = self.bounds
        seg = segment_index(tb, self.edges)
        self._history.append({
            "round": self.round,
            "n_evaluated": len(keys),
            "n_rows": len(self._rows),
            "n_train": len(self._train or []),
            "segments_covered": int(len(np.unique(seg[seg >= 0]))),
            "hv_archive": bounds.hypervolume(l, b) if bounds and len(l) else 0.0,
            "hv_train": bounds.hypervolume(tl, tb) if bounds and len(tl) else 0.0,
        })

    # ------------------------------------------------------------------------------------------ proposals
    def propose(self, k: int) -> np.ndarray:
        """``k`` new valid configurations (never in the archive, no duplicates), spread over segments.

        Returns:
            ``(k, N, 5)``; ``(0, N, 5)`` for ``frozen``. Fewer than ``k`` (with a warning) only when the
            generator cannot find ``k`` unseen configurations (a nearly exhausted space).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise SearchError(f"k must be a positive integer number of proposals; got {k!r}")
        k = int(k)
        method = self.settings.method
        call = self._calls
        self._calls += 1
        empty = np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)
        if method == "frozen":
            return empty
        rng = np.random.default_rng([self.settings.seed, call])
        avoid = set(self._configs)
        if method in ("random", "random-extend"):
            out = self._random_spread(k, rng, avoid)
        elif method == "nsga2":
            if self._nsga is None:
                self._nsga = _Nsga2(self.space, self.settings.nsga2_population)
            self._nsga.sync([asdict(r) for r in self._rows], self._configs)
            seed = int(rng.integers(2**31 - 1))
            fallback = self.evaluated()[0]
            out = self._nsga.propose(k, seed, avoid, rng, fallback if len(fallback) else self.space.sample(rng, 1))
        else:
            out = self._propose_gp(k, rng, avoid)
        if len(out) < k:
            warnings.warn(f"found only {len(out)} of {k} unseen configurations to propose", RuntimeWarning,
                          stacklevel=2)
        self._pending.update(config_keys(out))
        return out

    def _random_spread(self, k: int, rng: np.random.Generator, avoid: set[bytes]) -> np.ndarray:
        """Random configurations near random targets in distinct segments (segments cycle if k > U)."""
        U = len(self.edges) - 1
        lo_att, hi_att = self.space.min_bits, self.space.max_bits
        out: list[np.ndarray] = []
        order = rng.permutation(U)
        for attempt in range(50 * k):
            if len(out) == k:
                break
            u = int(order[attempt % U])
            a, c = self.edges[u], self.edges[u + 1]
            target = float(np.clip(rng.uniform(a, c), lo_att, hi_att))
            cfg = self.space.sample_near(target, rng, 1, tol=(c - a) / 2)[0]
            key = config_keys(cfg[None])[0]
            if key not in avoid:
                avoid.add(key)
                out.append(cfg)
        return np.stack(out) if out else np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)

    def _gp_training_keys(self) -> list[bytes]:
        """Training-set members first, then the newest observations, capped at ``max_gp_points``."""
        keys, _, _ = self._finite_latest()
        finite = set(keys)
        recency = sorted(keys, key=lambda k: -self._latest[k])
        ordered = list(dict.fromkeys([k for k in (self._train or []) if k in finite] + recency))
        return ordered[: self.settings.max_gp_points]

    def _parents(self) -> np.ndarray:
        """The segment fronts: the training set, or the filter over everything if none was selected."""
        if self._train:
            keys, _, _ = self._finite_latest(self._train)
            if keys:
                return self._stack(keys)
        keys, l, b = self._finite_latest()
        mask = segment_filter(l, b, self.edges)
        if not mask.any():
            mask = non_dominated_mask(np.stack([l, b], -1))
        return self._stack([k for k, m in zip(keys, mask) if m])

    def build_acquisition(self, seed: int = 0) -> GPAcquisition:
        """Fit the GP on the archive (latest finite values, capped) and build qLogNEHVI.

        Raises:
            SearchError: fewer than 2 configurations with finite losses.
        """
        keys = self._gp_training_keys()
        if len(keys) < 2:
            raise SearchError(
                f"the GP needs at least 2 configurations with finite losses; the archive has {len(keys)}. "
                "observe() an initial set (e.g. QuantSpace.sample_near over the bit range) first"
            )
        assert self.bounds is not None
        _, l, b = self._finite_latest(keys)
        pts = self.bounds.normalise(l, b)
        st = self.settings
        return GPAcquisition(GPInputs(self.encoder, st.kernel, st.n_basis), self._stack(keys), pts[:, 0], pts[:, 1],
                             self.bounds, st.fit_maxiter, st.mc_samples, seed, st.max_baseline)

    def _propose_gp(self, k: int, rng: np.random.Generator, avoid: set[bytes]) -> np.ndarray:
        import torch

        seed = int(rng.integers(2**31 - 1))
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            acq = self.build_acquisition(seed)
            parents = self._parents()
            if self.settings.generator == "fd-walk":
                return self._fd_walk_candidates(k, acq, parents, rng, avoid)
            return self._pool_candidates(k, acq, parents, rng, avoid)

    @staticmethod
    def _first_unseen(cands: np.ndarray, seen: set[bytes]) -> np.ndarray:
        """Indices of the first occurrence of every candidate not in ``seen``."""
        out, local = [], set()
        for i, key in enumerate(config_keys(cands)):
            if key not in seen and key not in local:
                local.add(key)
                out.append(i)
        return np.asarray(out, dtype=np.int64)

    def _dedup(self, cands: np.ndarray, avoid: set[bytes]) -> tuple[np.ndarray, list[bytes]]:
        """The candidates not in ``avoid`` (first occurrence of each) and their keys."""
        kept = cands[self._first_unseen(cands, avoid)]
        return kept, config_keys(kept)

    def _pool_candidates(
        self, k: int, acq: GPAcquisition, parents: np.ndarray, rng: np.random.Generator, avoid: set[bytes]
    ) -> np.ndarray:
        size = self.settings.pool_size
        U = len(self.edges) - 1
        # Generation 1: mutations and crossovers of the segment fronts, plus one random configuration per
        # segment so that empty segments get candidates too.
        explore = self._random_spread(U, rng, set(avoid))
        pool = np.concatenate([mutation_pool(self.space, parents, rng, size), explore])
        pool, keys = self._dedup(pool, avoid)
        vals = acq(pool)
        seen = avoid | set(keys)
        # Later generations: a (1 + λ) hill-climb on the acquisition from 2k lineages, started at the best
        # candidate of as many segments as possible; each generation scores `pool_children` mutants of every
        # lineage head in one batch and moves a head to its best child when that improves the acquisition.
        seg = segment_index(self.space.average_bits(pool), self.edges)
        heads = spread_select(vals, seg, 2 * k)
        head_cfg, head_val = pool[heads], vals[heads]
        lam = self.settings.pool_children
        for _ in range(self.settings.pool_generations - 1):
            kids, owner = [], []
            for h in range(len(head_cfg)):
                kids.append(mutation_pool(self.space, head_cfg[h : h + 1], rng, lam))
                owner.append(np.full(lam, h))
            children, owner_arr = np.concatenate(kids), np.concatenate(owner)
            first = self._first_unseen(children, seen)
            if not len(first):
                break
            children, owner_arr = children[first], owner_arr[first]
            seen |= set(config_keys(children))
            cvals = acq(children)
            pool = np.concatenate([pool, children])
            vals = np.concatenate([vals, cvals])
            for h in range(len(head_cfg)):
                mine = np.flatnonzero(owner_arr == h)
                if len(mine) and cvals[mine].max() > head_val[h]:
                    best = mine[np.argmax(cvals[mine])]
                    head_cfg[h], head_val[h] = children[best], cvals[best]
        seg = segment_index(self.space.average_bits(pool), self.edges)
        if (seg >= 0).sum() >= k:  # candidates outside a configured bit range would never be selected
            inside = np.flatnonzero(seg >= 0)
            pool, vals, seg = pool[inside], vals[inside], seg[inside]
        picked = spread_select(vals, seg, k)
        return pool[picked]

    def _fd_walk_candidates(
        self, k: int, acq: GPAcquisition, parents: np.ndarray, rng: np.random.Generator, avoid: set[bytes]
    ) -> np.ndarray:
        seg = segment_index(self.space.average_bits(parents), self.edges)
        # One start per segment (random segment order, random member), cycling when k exceeds them.
        by_seg = [rng.permutation(np.flatnonzero(seg == u)) for u in rng.permutation(np.unique(seg))]
        starts = []
        n_starts = k * self.settings.fd_starts_per_candidate
        for r in range(n_starts):
            group = by_seg[r % len(by_seg)]
            starts.append(parents[group[(r // len(by_seg)) % len(group)]])
        self.last_walks = []
        results = []
        for s in starts:
            w = fd_walk(self.space, acq, s, self.settings.fd_max_steps, avoid)
            self.last_walks.append(w)
            if w.best_new is not None:
                results.append((w.best_new_value, w.best_new))
        out: list[np.ndarray] = []
        for _, cfg in sorted(results, key=lambda t: -t[0]):
            key = config_keys(cfg[None])[0]
            if key not in avoid:
                avoid.add(key)
                out.append(cfg)
            if len(out) == k:
                break
        return np.stack(out) if out else np.zeros((0, self.space.n_matrices, len(KNOBS)), dtype=np.int64)

    # ------------------------------------------------------------------------------------------ state
    def save(self, path: str | Path) -> Path:
        """Write ``path/archive.parquet`` and ``path/search.json`` (settings, space, RNG counter, sets)."""
        import pyarrow.parquet as pq

        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.archive_table(), d / _ARCHIVE_PARQUET)
        ids = {k: self.space.config_id(v) for k, v in self._configs.items()}
        state = {
            "version": STATE_VERSION,
            "space": self.space.signature(),
            "settings": asdict(self.settings),
            "bounds": self.bounds.as_dict() if self.bounds else None,
            "round": self.round,
            "propose_calls": self._calls,
            "train": None if self._train is None else [ids[k] for k in self._train],
            "since_select": [ids[k] for k in self._since_select],
            "pending": [self._pending_config(k).reshape(-1).tolist() for k in sorted(self._pending)],
            "history": self._history,
        }
        (d / _STATE_JSON).write_text(json.dumps(state, indent=1))
        return d

    def _pending_config(self, key: bytes) -> np.ndarray:
        return np.frombuffer(key, dtype=np.int16).astype(np.int64).reshape(self.space.n_matrices, len(KNOBS))

    @classmethod
    def load(cls, path: str | Path, space: QuantSpace) -> "ParetoSearch":
        """Restore a search saved by :meth:`save`; ``space`` must be the space it was made for.

        Raises:
            SearchError: missing or unreadable files.
            SpaceError: the state belongs to another model or configuration space.
        """
        import pyarrow.parquet as pq

        d = Path(path)
        if not (d / _STATE_JSON).is_file() or not (d / _ARCHIVE_PARQUET).is_file():
            raise SearchError(f"no search state in {str(d)!r}: expected {_STATE_JSON} and {_ARCHIVE_PARQUET}")
        try:
            state = json.loads((d / _STATE_JSON).read_text())
        except json.JSONDecodeError as e:
            raise SearchError(f"search state {str(d / _STATE_JSON)!r} is not valid JSON: {e}") from None
        if not isinstance(state, dict):
            raise SearchError(f"search state {str(d / _STATE_JSON)!r} is not a JSON object")
        if state.get("version") != STATE_VERSION:
            raise SearchError(f"search state version {state.get('version')!r} is not {STATE_VERSION}")
        space.check_same(state["space"], what=f"search state {str(d)!r}")
        st = dict(state["settings"])
        for name in ("bits_range", "loss_range"):
            if st.get(name) is not None:
                st[name] = tuple(st[name])
        try:
            self = cls(space, SearchSettings(**st))
        except TypeError as e:
            raise SearchError(f"search state {str(d)!r} has settings this version does not know: {e}") from None
        if state["bounds"] is not None:
            self.bounds = ObjectiveBounds.from_dict(state["bounds"])
        table = pq.read_table(d / _ARCHIVE_PARQUET).to_pylist()
        by_id: dict[str, bytes] = {}
        for rec in table:
            cfg = space.validate(np.asarray(rec["config"], dtype=np.int64).reshape(space.n_matrices, len(KNOBS)))
            key = config_keys(cfg[None])[0]
            self._configs.setdefault(key, cfg)
            by_id[rec["config_id"]] = key
            self._rows.append(_Row(int(rec["row"]), int(rec["round"]), key, rec["config_id"], float(rec["loss"]),
                                   float(rec["bits"]), rec["status"], bool(rec["proposed"])))
            self._latest[key] = int(rec["row"])
        self.round = int(state["round"])
        self._calls = int(state["propose_calls"])
        self._train = None if state["train"] is None else [by_id[i] for i in state["train"]]
        self._since_select = [by_id[i] for i in state["since_select"]]
        self._pending = set(config_keys(np.asarray(state["pending"], dtype=np.int64).reshape(
            -1, space.n_matrices, len(KNOBS)))) if state["pending"] else set()
        self._history = list(state["history"])
        return self
