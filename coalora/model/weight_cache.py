"""A byte-bounded LRU cache of dequantized weights keyed by (matrix, option).

Quantizing a matrix costs milliseconds to seconds; a training run visits the same few hundred
(matrix, option) pairs over and over. Paying the quantizer once per distinct pair, not once per step,
is what makes switching configuration nearly free (docs/architecture.md §2.3).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable

import torch


class WeightCache:
    """LRU over tensors with a bound on their total bytes.

    Args:
        max_bytes: evict least-recently-used entries beyond this many bytes (0 disables caching).
    """

    def __init__(self, max_bytes: int = 2 * 1024**3) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._data: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def get(self, key: Hashable, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached tensor for ``key``, computing it with ``make()`` on a miss."""
        t = self._data.get(key)
        if t is not None:
            self._data.move_to_end(key)
            self.hits += 1
            return t
        self.misses += 1
        t = make()
        size = t.numel() * t.element_size()
        if size <= self.max_bytes:
            self._data[key] = t
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, old = self._data.popitem(last=False)
                self.bytes -= old.numel() * old.element_size()
        return t

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0
