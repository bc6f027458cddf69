"""Quantization-error tables computed in parallel: one Ray task per target matrix, cached on disk.

When the cluster has GPUs, every task asks for a fraction of one (several tasks share a GPU; the
work is memory-bound element-wise passes, not enough to fill a GPU alone) and quantizes on CUDA.
A task that holds a GPU but finds no CUDA (a node that declares GPUs it does not have, or a CPU
build of torch) computes on its CPU and gives the same table.

Device and the cache: the quantized weights are bit-for-bit the same on CPU and CUDA, but each
error is a float64 sum whose order differs between the two, so the last bits of a table computed on
a GPU may differ from one computed on a CPU (relative differences near 1e-15). The cache key
(:class:`coalora.allocation.error_tables.ErrorTableCache`) leaves the device out on purpose: such differences are
far below what separates options in an allocation, recomputing a 3B model's table on CPU costs
about 10 core-hours, and every run reading the cache reads the same table, whichever device made it.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Any, NamedTuple, Sequence

import numpy as np
import ray
import torch

from coalora.allocation.error_tables import ErrorTableCache, matrix_errors, table_key
from coalora.allocation.sensitivity import target_weights
from coalora.core.space import QuantSpace

log = logging.getLogger(__name__)

# Share of one GPU each error-table task asks for: four tasks per GPU.
DEFAULT_GPU_FRACTION = 0.25


class _TaskResult(NamedTuple):
    """One matrix's errors ``(K,)``, the device they were computed on and the GPU ids Ray gave."""

    errors: np.ndarray
    device: str
    gpu_ids: tuple[str, ...]


@ray.remote(num_cpus=1)
def _matrix_errors(weight: torch.Tensor, space: QuantSpace) -> _TaskResult:
    """Errors of one ``(out, in)`` CPU weight under every option, on this task's GPU if it has one."""
    torch.set_num_threads(1)
    gpu_ids = tuple(str(g) for g in ray.get_gpu_ids())
    # Ray sets CUDA_VISIBLE_DEVICES to this task's GPU, so "cuda" is that one. A declared GPU without
    # CUDA (a CPU node declaring GPUs, a CPU build of torch) falls back to the CPU: same table.
    device = "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"
    errors = matrix_errors(weight.to(device), space)
    return _TaskResult(errors, device, gpu_ids)


def cluster_has_gpus() -> bool:
    """Whether the Ray cluster this process is connected to declares any GPU."""
    return ray.cluster_resources().get("GPU", 0) > 0


def _check_fraction(gpu_fraction: float) -> float:
    if not 0 <= gpu_fraction <= 1:
        raise ValueError(f"gpu_fraction must be in [0, 1] (one task's share of a GPU), got {gpu_fraction!r}")
    return float(gpu_fraction)


def _compute_table(
    weights: Sequence[torch.Tensor], space: QuantSpace, gpu_fraction: float,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[_TaskResult]]:
    """The ``(N, K)`` table of ``N`` weights ``(out, in)`` and every task's result, in space order.

    Tasks ask for ``gpu_fraction`` of a GPU each when the cluster has GPUs and the fraction is not 0.
    ``progress(done, total)`` is called as matrices finish.
    """
    gpu_fraction = _check_fraction(gpu_fraction)
    task = _matrix_errors
    if gpu_fraction > 0 and cluster_has_gpus():
        # Ray's default max_calls=1 for GPU tasks gives every matrix a fresh worker (a few seconds to
        # start, small beside one matrix's hundreds of options) and hands its GPU memory back before
        # the training that follows.
        task = _matrix_errors.options(num_gpus=gpu_fraction)
    space_ref = ray.put(space)
    # The weight travels as a CPU tensor (a CUDA one could not be read on a CPU-only worker); the task
    # moves it to its own device.
    refs = [task.remote(ray.put(w.detach().cpu().contiguous()), space_ref) for w in weights]
    index = {r: i for i, r in enumerate(refs)}
    err = np.empty((space.n_matrices, space.n_options))
    results: list[_TaskResult | None] = [None] * len(refs)
    pending = list(refs)
    finished_count = 0
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for r in done:
            res = ray.get(r)
            err[index[r]] = res.errors
            results[index[r]] = res
            finished_count += 1
            if progress is not None:
                progress(finished_count, len(refs))
    finished = [r for r in results if r is not None]
    devices = Counter(r.device for r in finished)
    log.info("error table: %s", ", ".join(f"{n} matrices on {d}" for d, n in sorted(devices.items())))
    if any(r.gpu_ids and r.device == "cpu" for r in finished):
        # INFO, not WARNING: run.py's probe of the GPU nodes already tells the person, once.
        log.info("error-table tasks were given GPUs but found no CUDA (a CPU build of torch, or a node "
                    "that declares GPUs it lacks); they computed on CPU")
    return err, finished


def error_table_parallel(
    model_name: str,
    model: Any,
    space: QuantSpace,
    progress: Callable[[int, int], None] | None = None,
    gpu_fraction: float = DEFAULT_GPU_FRACTION,
) -> np.ndarray:
    """The ``(N, K)`` error table of ``model``'s target weights (see :func:`coalora.allocation.error_tables.error_table`).

    Reads the on-disk cache first; otherwise every matrix is a Ray task (its weight shipped once
    through the object store) and the result is cached for every later run. When the cluster has
    GPUs each task asks for ``gpu_fraction`` of one and computes on CUDA (0: always on CPUs). The
    device is not part of the cache key (see the module docstring).
    """
    _check_fraction(gpu_fraction)
    cache, weights = ErrorTableCache(), target_weights(model, space)
    key = table_key(model_name, weights)  # the same key as coalora.pipeline.experiment.error_table_for's
    hit = cache.load(key, space)
    if hit is not None:
        return hit
    err, _ = _compute_table(weights, space, gpu_fraction, progress)
    cache.save(key, space, err)
    return err
