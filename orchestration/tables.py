"""Quantization-error tables computed in parallel: one Ray task per target matrix, cached on disk."""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
from tqdm.auto import tqdm

from coalora.allocate import ErrorTableCache, matrix_errors, target_weights
from coalora.space import QuantSpace


@ray.remote(num_cpus=1)
def _matrix_errors(weight: Any, space: QuantSpace) -> np.ndarray:
    import torch

    torch.set_num_threads(1)
    return matrix_errors(weight, space)


def error_table_parallel(model_key: str, model: Any, space: QuantSpace, progress: bool = True) -> np.ndarray:
    """The ``(N, K)`` error table of ``model``'s target weights (see :func:`coalora.allocate.error_table`).

    Reads the on-disk cache first; otherwise every matrix is a Ray task (its weight shipped once
    through the object store) and the result is cached for every later run.
    """
    cache = ErrorTableCache()
    hit = cache.load(model_key, space)
    if hit is not None:
        return hit
    space_ref = ray.put(space)
    refs = [_matrix_errors.remote(ray.put(w.contiguous()), space_ref) for w in target_weights(model, space)]
    index = {r: i for i, r in enumerate(refs)}
    err = np.empty((space.n_matrices, space.n_options))
    pending = list(refs)
    with tqdm(total=len(refs), desc="error table (matrices)", disable=not progress) as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                err[index[r]] = ray.get(r)
                bar.update(1)
    cache.save(model_key, space, err)
    return err
