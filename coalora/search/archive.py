"""The observation archive of the search: every observation as a row, the latest finite value per configuration.

A configuration is an ``(N, 5)`` index array of a :class:`~coalora.core.space.QuantSpace`; its archive key is
:func:`config_keys` (its bytes as int16). One configuration may be observed in several rounds (the real loss
changes as the model trains): every observation stays a row, and the latest one is what the search uses.

Column vocabulary (the run directory's, :mod:`orchestration.store`): ``avg_bits`` is the exact average bits,
``knobs`` the option indices (``N × 5`` in :meth:`Archive.records`, flattened in :meth:`Archive.table`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from coalora.core.space import KNOBS, QuantSpace

COLUMNS: tuple[str, ...] = ("row", "round", "config_id", "loss", "avg_bits", "status", "proposed", "knobs")


def config_keys(idx: np.ndarray) -> list[bytes]:
    """Exact de-duplication keys of ``(B, N, 5)`` index arrays (none for ``B = 0``)."""
    arr = np.ascontiguousarray(np.asarray(idx, dtype=np.int16))
    # reshape(0, -1) is ambiguous for an empty batch, and an exhausted proposer returns one.
    return [row.tobytes() for row in arr.reshape(len(arr), -1)] if len(arr) else []


def first_unseen(cands: np.ndarray, seen: set[bytes]) -> np.ndarray:
    """Indices of the first occurrence of every candidate of ``(M, N, 5)`` not in ``seen`` (left unchanged)."""
    out, local = [], set()
    for i, key in enumerate(config_keys(cands)):
        if key not in seen and key not in local:
            local.add(key)
            out.append(i)
    return np.asarray(out, dtype=np.int64)


class NewConfigs:
    """Collects up to ``k`` configurations that are not in ``avoid`` and not collected yet.

    Every proposer de-duplicates this way: each accepted configuration is added to ``avoid`` (the caller's
    set, so that later collectors sharing it see it too) and kept in order of acceptance.
    """

    def __init__(self, space: QuantSpace, k: int, avoid: set[bytes]) -> None:
        self.space, self.k, self.avoid = space, k, avoid
        self._out: list[np.ndarray] = []

    def offer(self, cfg: np.ndarray) -> bool:
        """Keep the ``(N, 5)`` configuration ``cfg`` unless it is known; True when kept."""
        key = config_keys(cfg[None])[0]
        if key in self.avoid:
            return False
        self.avoid.add(key)
        self._out.append(cfg)
        return True

    @property
    def full(self) -> bool:
        return len(self._out) >= self.k

    def configs(self) -> np.ndarray:
        """The kept configurations, ``(m, N, 5)`` with ``m ≤ k``."""
        return np.stack(self._out) if self._out else empty_configs(self.space)


def empty_configs(space: QuantSpace) -> np.ndarray:
    """No configurations: ``(0, N, 5)`` int64."""
    return np.zeros((0, space.n_matrices, len(KNOBS)), dtype=np.int64)


@dataclass
class Observation:
    """One archive row: the ``round`` a configuration (``key``) was observed in, its loss and exact bits.

    ``status`` is ``"ok"`` or ``"nonfinite"``; ``proposed`` is True when the search proposed it.
    """

    row: int
    round: int
    key: bytes
    config_id: str
    loss: float
    avg_bits: float
    status: str
    proposed: bool


class Archive:
    """Every observation of one search, in order, and the latest observation of every configuration."""

    def __init__(self, space: QuantSpace) -> None:
        self.space = space
        self.rows: list[Observation] = []
        self.configs: dict[bytes, np.ndarray] = {}  # key → (N, 5)
        self.latest: dict[bytes, int] = {}  # key → index of its latest row
        self.pending: set[bytes] = set()  # proposed, not observed yet: their first row is marked `proposed`

    def add(self, idx: np.ndarray, losses: np.ndarray, round: int) -> list[bytes]:
        """Append one row per configuration; bits are computed exactly here.

        Args:
            idx: ``(B, N, 5)`` validated index arrays.
            losses: ``(B,)``; non-finite values get status ``"nonfinite"``.
            round: the round of these observations.

        Returns:
            The ``B`` keys, in order.
        """
        bits = np.atleast_1d(self.space.average_bits(idx))
        keys = config_keys(idx)
        for cfg, key, loss, b in zip(idx, keys, losses, bits):
            if key not in self.configs:
                self.configs[key] = cfg.copy()
            self._append(Observation(len(self.rows), round, key, self.space.config_id(cfg), float(loss), float(b),
                                     "ok" if np.isfinite(loss) else "nonfinite", key in self.pending))
            self.pending.discard(key)
        return keys

    def _append(self, row: Observation) -> None:
        self.rows.append(row)
        self.latest[row.key] = row.row

    def known(self) -> set[bytes]:
        """A new set of the keys of every configuration observed (what proposals must avoid)."""
        return set(self.configs)

    def mark_proposed(self, configs: np.ndarray) -> None:
        """Remember ``(k, N, 5)`` proposals, so that their first observation is marked ``proposed``."""
        self.pending.update(config_keys(configs))

    def pending_configs(self) -> np.ndarray:
        """The proposals not observed yet, ``(p, N, 5)`` in key order."""
        shape = (self.space.n_matrices, len(KNOBS))
        return np.stack([np.frombuffer(k, dtype=np.int16).astype(np.int64).reshape(shape)
                         for k in sorted(self.pending)]) if self.pending else empty_configs(self.space)

    def finite_latest(self, keys: Sequence[bytes] | None = None) -> tuple[list[bytes], np.ndarray, np.ndarray]:
        """Of ``keys`` (default: every configuration, first seen first, duplicates dropped), those whose latest
        observation is finite: keys, losses ``(n,)``, bits ``(n,)``."""
        keys = list(self.latest) if keys is None else list(dict.fromkeys(keys))
        rows = [self.rows[self.latest[k]] for k in keys]
        ok = [r for r in rows if r.status == "ok"]
        return [r.key for r in ok], np.array([r.loss for r in ok]), np.array([r.avg_bits for r in ok])

    def stack(self, keys: Sequence[bytes]) -> np.ndarray:
        """The configurations of ``keys``: ``(len(keys), N, 5)``."""
        if not keys:
            return empty_configs(self.space)
        return np.stack([self.configs[k] for k in keys])

    def records(self) -> list[dict[str, Any]]:
        """Every observation as a dict of :data:`COLUMNS` (``knobs`` the ``N × 5`` list), in order."""
        return [{"row": r.row, "round": r.round, "config_id": r.config_id, "loss": r.loss, "avg_bits": r.avg_bits,
                 "status": r.status, "proposed": r.proposed, "knobs": self.configs[r.key].tolist()} for r in self.rows]

    def table(self) -> Any:
        """The archive as a ``pyarrow.Table`` of :data:`COLUMNS`; ``knobs`` is the flattened ``N·5`` list."""
        import pyarrow as pa

        cols: dict[str, list[Any]] = {k: [] for k in COLUMNS}
        for r in self.rows:
            for k in COLUMNS[:-1]:
                cols[k].append(getattr(r, k))
            cols["knobs"].append(self.configs[r.key].reshape(-1).astype(np.int16).tolist())
        schema = pa.schema([
            ("row", pa.int64()), ("round", pa.int64()), ("config_id", pa.string()), ("loss", pa.float64()),
            ("avg_bits", pa.float64()), ("status", pa.string()), ("proposed", pa.bool_()),
            ("knobs", pa.list_(pa.int16())),
        ])
        return pa.table(cols, schema=schema)

    @classmethod
    def from_records(cls, space: QuantSpace, records: Sequence[dict[str, Any]]) -> tuple["Archive", dict[str, bytes]]:
        """Rebuild an archive from :meth:`table`'s rows (``knobs`` flattened); also returns config_id → key.

        Raises:
            SpaceError: a configuration that is not valid in ``space``.
        """
        archive = cls(space)
        by_id: dict[str, bytes] = {}
        shape = (space.n_matrices, len(KNOBS))
        for rec in records:
            cfg = space.validate(np.asarray(rec["knobs"], dtype=np.int64).reshape(shape))
            key = config_keys(cfg[None])[0]
            archive.configs.setdefault(key, cfg)
            by_id[rec["config_id"]] = key
            archive._append(Observation(int(rec["row"]), int(rec["round"]), key, rec["config_id"],
                                        float(rec["loss"]), float(rec["avg_bits"]), rec["status"],
                                        bool(rec["proposed"])))
        return archive, by_id
