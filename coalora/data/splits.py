"""Seeded train/validation/test splits of a list of examples."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, Sequence

import numpy as np

from coalora.data.example import T
from coalora.errors import DataError


# ---------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits(Generic[T]):
    """Disjoint train / validation / test parts, each in the original order."""

    train: list[T]
    validation: list[T]
    test: list[T]


def _split_size(value: float | int, n: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{what} must be a fraction in [0, 1) or a count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise DataError(f"{what} count must be >= 0, got {value}")
        return value
    if not 0.0 <= value < 1.0:
        raise DataError(f"{what} fraction must be in [0, 1), got {value}")
    # The tolerance keeps products like 0.29 * 100 = 28.999999999999996 at 29.
    return math.floor(value * n + 1e-9)


def split(
    examples: Sequence[T], seed: int, validation: float | int = 0.1, test: float | int = 0.1
) -> Splits[T]:
    """Split examples into disjoint train / validation / test parts, deterministically by seed.

    Sizes: a float is a fraction of ``n = len(examples)`` rounded down (``floor(f·n)``), an int is
    an exact count; train gets the rest and must not be empty. A seeded permutation assigns the
    first ``n_test`` positions to test and the next ``n_val`` to validation, so the test part does
    not change when only the validation size does. Each part keeps the input order.

    Raises:
        DataError: bad fraction or count, or nothing left for training.
    """
    n = len(examples)
    n_test = _split_size(test, n, "test")
    n_val = _split_size(validation, n, "validation")
    if n_test + n_val >= n:
        raise DataError(
            f"validation ({n_val}) + test ({n_test}) examples leave none of the {n} examples for training"
        )
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.split(perm, [n_test, n_test + n_val])
    test_idx, val_idx, train_idx = (np.sort(p) for p in parts)
    return Splits(
        train=[examples[i] for i in train_idx],
        validation=[examples[i] for i in val_idx],
        test=[examples[i] for i in test_idx],
    )
