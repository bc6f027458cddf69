"""Error tables: ``err[i, k]``, the (Fisher-weighted) quantization error of matrix ``i`` under option
``k``, and :class:`ErrorTableCache`, which keeps them on disk keyed by model (its name and a fingerprint
of its weights, :func:`table_key`), space and weighting.

Shapes: ``N`` target matrices, ``K`` options per matrix (``space.n_options``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from coalora.core import quant as _quant
from coalora.core.space import QuantSpace
from coalora.errors import SpaceError
from coalora.io import atomic_write, atomic_write_text, cache_root

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- error tables
def matrix_errors(w: torch.Tensor, space: QuantSpace, fisher: torch.Tensor | None = None) -> np.ndarray:
    """Quantization error of one matrix under every option of ``space``: ``(out, in)`` → ``(K,)``.

    ``err[k] = ‖W − Q_k(W)‖²_F``, or ``Σ F ⊙ (W − Q_k(W))²`` when ``fisher`` (same shape as ``w``) is
    given. The unit of work a parallel builder hands to one worker. With double quantization every
    one of the five knobs changes ``Q_k``, so each option is computed once and none is shared.
    """
    if w.ndim != 2:
        raise ValueError(f"weight must be a 2-D (out, in) matrix, got shape {tuple(w.shape)}")
    w = w.detach().float()
    if fisher is not None:
        if tuple(fisher.shape) != tuple(w.shape):
            raise ValueError(f"Fisher has shape {tuple(fisher.shape)}; the weight has {tuple(w.shape)}")
        fisher = fisher.detach().to(device=w.device, dtype=torch.float32)
    out = np.empty(space.n_options, dtype=np.float64)
    for k, row in enumerate(space.option_table):
        out[k] = _quant.quantization_error(w, space.option(row), space.family, weight=fisher)
    return out


def error_table(
    weights: Sequence[torch.Tensor],
    space: QuantSpace,
    fisher: Sequence[torch.Tensor] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The ``(N, K)`` error table of ``weights`` (``N`` tensors ``(out, in)`` in space order).

    ``fisher``, if given, holds one non-negative tensor per weight (same shapes): the table is then
    Fisher-weighted. A progress bar counts quantized (matrix, option) pairs.
    """
    if len(weights) != space.n_matrices:
        raise SpaceError(f"got {len(weights)} weights for a space of {space.n_matrices} target matrices")
    if fisher is not None and len(fisher) != space.n_matrices:
        raise SpaceError(f"got {len(fisher)} Fisher tensors for a space of {space.n_matrices} target matrices")
    for w, m in zip(weights, space.matrices):
        if tuple(w.shape) != m.shape:
            raise SpaceError(f"weight for {m.name!r} has shape {tuple(w.shape)}; the space expects {m.shape}")
    err = np.empty((space.n_matrices, space.n_options), dtype=np.float64)
    with tqdm(total=space.n_matrices * space.n_options, disable=not progress, desc="error table",
              unit="opt") as bar:
        for i, (w, m) in enumerate(zip(weights, space.matrices)):
            f = None if fisher is None else fisher[i]
            err[i] = matrix_errors(w, space, f)
            if not np.all(np.isfinite(err[i])):
                raise ValueError(f"quantization error of {m.name!r} is not finite (NaN/inf in its weights?)")
            bar.update(space.n_options)
    return err


def _quantizer_id() -> str:
    """A hash of the quantizer's source: a cached table made by another quantizer is not trusted."""
    return hashlib.sha1(Path(_quant.__file__).read_bytes()).hexdigest()[:12]


# Elements of each matrix that the fingerprint reads, evenly strided: a fine-tuned, merged or re-cast
# (bf16 against fp32) model differs in nearly every element, and the read stays cheap for a model on a GPU.
FINGERPRINT_SAMPLE = 65536


def weights_fingerprint(weights: Sequence[torch.Tensor]) -> str:
    """A short hash of ``weights`` (the ``N`` target matrices, any dtype and device): each one's dtype, shape
    and :data:`FINGERPRINT_SAMPLE` evenly strided elements (all of a smaller one) as float32.

    Two models under one name (the same checkpoint loaded in bf16 and in fp32, a local directory whose
    weights were replaced) have different tables; the fingerprint tells their caches apart. Matrices that
    differ only outside the sample are not told apart: the price of never hashing a 7B model whole."""
    h = hashlib.sha1()
    for w in weights:
        flat = w.detach().reshape(-1)
        step = max(1, flat.numel() // FINGERPRINT_SAMPLE)
        h.update(f"{w.dtype}{tuple(w.shape)}".encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def table_key(model_name: str, weights: Sequence[torch.Tensor]) -> str:
    """The cache key of the error table of ``weights`` (a model's target matrices, in space order):
    ``<model name>@<weights fingerprint>`` (:func:`weights_fingerprint`)."""
    if not model_name:
        raise ValueError("model_name must be a non-empty string (e.g. the model name)")
    return f"{model_name}@{weights_fingerprint(weights)}"


class ErrorTableCache:
    """Error tables on disk: ``<root>/<model key>-<space fingerprint>-<weighting>.npy`` + a JSON sidecar.

    The model key names the weights, not only the model (:func:`table_key`): a table belongs to the
    weights it was computed from, and a bf16 copy of a model does not read its fp32 copy's table.

    ``root`` defaults to ``<cache_root()>/errors`` (:func:`coalora.io.cache_root`). The sidecar records
    model key, space fingerprint, weighting, shape, the quantizer's source hash and the array's
    checksum; a table whose sidecar disagrees with any of them (another space, a changed quantizer, a
    half-written or mismatched pair) is recomputed, never trusted. Writes are
    :func:`coalora.io.atomic_write`, so a reader never sees a partial file.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = cache_root() / "errors" if root is None else Path(root)

    @staticmethod
    def _weighting(fisher: bool | str) -> str:
        if fisher is False:
            return "plain"
        if fisher is True:
            return "fisher"
        if isinstance(fisher, str) and fisher:
            return f"fisher-{fisher}"
        raise ValueError(f"fisher must be a bool or a non-empty string naming the Fisher data, got {fisher!r}")

    def path(self, model_key: str, space: QuantSpace, fisher: bool | str = False) -> Path:
        """Where the table lives (``.npy``; the sidecar is the same path with ``.json``)."""
        if not model_key:
            raise ValueError("model_key must be a non-empty string (e.g. the model name)")
        weighting = self._weighting(fisher)
        # Readable slug plus a hash of the raw strings, so "a/b" and "a_b" never collide.
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_key)[:80]
        tag = hashlib.sha1(f"{model_key}\0{weighting}".encode()).hexdigest()[:8]
        w_slug = re.sub(r"[^A-Za-z0-9._-]+", "_", weighting)[:40]
        return self.root / f"{slug}-{space.fingerprint()}-{w_slug}-{tag}.npy"

    def _meta(self, model_key: str, space: QuantSpace, fisher: bool | str) -> dict[str, Any]:
        return {
            "model_key": model_key,
            "space_fingerprint": space.fingerprint(),
            "weighting": self._weighting(fisher),
            "shape": [space.n_matrices, space.n_options],
            "quantizer": _quantizer_id(),
        }

    def load(self, model_key: str, space: QuantSpace, fisher: bool | str = False) -> np.ndarray | None:
        """The cached ``(N, K)`` table, or None if absent or not trustworthy for this space."""
        path = self.path(model_key, space, fisher)
        side = path.with_suffix(".json")
        if not path.exists() or not side.exists():
            return None
        try:
            meta = json.loads(side.read_text())
            err = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            log.warning("unreadable cached error table %s (%s); recomputing", path, e)
            return None
        want = self._meta(model_key, space, fisher)
        stale = [k for k, v in want.items() if meta.get(k) != v]
        if list(err.shape) != want["shape"]:
            stale.append("array shape")
        elif meta.get("sha1") != hashlib.sha1(np.ascontiguousarray(err).tobytes()).hexdigest():
            stale.append("checksum")
        if stale:
            log.warning("cached error table %s does not match (%s); recomputing", path, ", ".join(stale))
            return None
        return err

    def save(self, model_key: str, space: QuantSpace, err: np.ndarray, fisher: bool | str = False) -> Path:
        """Store a ``(N, K)`` table atomically and return its path."""
        err = np.ascontiguousarray(err, dtype=np.float64)
        if err.shape != (space.n_matrices, space.n_options):
            raise SpaceError(
                f"error table has shape {err.shape}; the space needs ({space.n_matrices}, {space.n_options})"
            )
        path = self.path(model_key, space, fisher)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self._meta(model_key, space, fisher) | {"sha1": hashlib.sha1(err.tobytes()).hexdigest()}
        atomic_write(path, lambda f: np.save(f, err, allow_pickle=False))
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1))
        return path

    def get_or_compute(
        self,
        model_key: str,
        space: QuantSpace,
        compute: Callable[[], np.ndarray],
        fisher: bool | str = False,
    ) -> np.ndarray:
        """The cached table if it is valid, else ``compute()`` (stored before it is returned)."""
        err = self.load(model_key, space, fisher)
        if err is None:
            t0 = time.perf_counter()
            err = np.asarray(compute(), dtype=np.float64)
            log.info("error table for %s computed in %.1f s", model_key, time.perf_counter() - t0)
            self.save(model_key, space, err, fisher)
        return err


# ---------------------------------------------------------------------- allocation
def _check_table(err: np.ndarray, space: QuantSpace) -> np.ndarray:
    err = np.asarray(err, dtype=np.float64)
    if err.shape != (space.n_matrices, space.n_options):
        raise SpaceError(
            f"error table has shape {err.shape}; the space needs ({space.n_matrices}, {space.n_options}) "
            f"= (matrices, options)"
        )
    if not np.all(np.isfinite(err)):
        raise ValueError("error table contains NaN or inf")
    return err


def total_error(err: np.ndarray, space: QuantSpace, cfg: np.ndarray) -> float | np.ndarray:
    """``Σ_i err[i, c_i]`` of a configuration: ``(N, 5)`` → float, ``(B, N, 5)`` → ``(B,)``."""
    err = _check_table(err, space)
    flat = space.flat_option(space.validate(cfg))
    s = err[np.arange(space.n_matrices), flat].sum(-1)
    return float(s) if np.ndim(s) == 0 else s
