"""Tokenisation and batching: token tensors built once, batches are indexing.

- classification: :func:`tokenize_classification` → :class:`ClassificationData`;
- causal LM: :func:`tokenize_lm` → :class:`LMData` (texts joined with EOS, cut into blocks);
- :class:`TrainBatches` (seeded, reshuffled per epoch, sharded by rank) and :func:`eval_batches`
  (deterministic, every example once) turn either into ``dict(input_ids, attention_mask, labels)``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Iterator, Protocol, Sequence

import numpy as np
import torch

from coalora.data.example import Example
from coalora.errors import DataError


# ---------------------------------------------------------------------- tokenisation
class Batchable(Protocol):
    """A pre-tokenised data set: ``len`` examples, ``gather(idx)`` builds one batch."""

    def __len__(self) -> int: ...

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class ClassificationData:
    """Tokenised classification examples.

    Attributes:
        input_ids: ``(N, L)`` int64, right-padded with ``pad_id``; ``L`` = longest example.
        lengths: ``(N,)`` int64, tokens per example (≤ max_length).
        labels: ``(N,)`` int64 class ids.
        pad_id: the tokenizer's pad token id.
        pad_to: if set, every batch is padded to this length (``padding="max_length"``);
            else to the longest example in the batch.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    pad_id: int
    pad_to: int | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch: ``input_ids``/``attention_mask`` ``(B, L_b)`` and ``labels`` ``(B,)``, B = len(idx)."""
        lengths = self.lengths[idx]
        width = self.pad_to if self.pad_to is not None else int(lengths.max())
        ids = self.input_ids[idx, : min(width, self.input_ids.shape[1])]
        if ids.shape[1] < width:
            ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=self.pad_id)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]}


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is None:
        raise DataError("the tokenizer has no pad token; set tokenizer.pad_token (load_model does)")
    return int(tokenizer.pad_token_id)


def tokenize_classification(
    examples: Sequence[Example], tokenizer: Any, max_length: int = 128, padding: str = "longest"
) -> ClassificationData:
    """Tokenise labelled examples once (with the tokenizer's special tokens, truncated to ``max_length``).

    Args:
        padding: ``"longest"`` pads each batch to its longest example, ``"max_length"`` to ``max_length``.
    """
    if padding not in ("longest", "max_length"):
        raise DataError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    if max_length < 1:
        raise DataError(f"max_length must be >= 1, got {max_length}")
    if not examples:
        raise DataError("no examples to tokenise")
    missing = [i for i, ex in enumerate(examples) if ex.label is None]
    if missing:
        raise DataError(f"example {missing[0]} has no label; classification needs labelled examples")
    pad = _pad_id(tokenizer)
    # Right padding whatever the tokenizer's default, so a batch can be cut to its longest example.
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples]
    has_pair = [p is not None for p in pairs]
    if any(has_pair) and not all(has_pair):
        raise DataError("some examples have a text pair and some do not")
    enc = tokenizer(
        texts, *([pairs] if all(has_pair) else []), truncation=True, max_length=max_length, padding="longest",
        padding_side="right", return_attention_mask=True, return_tensors="pt",
    )
    table = enc["input_ids"].to(torch.int64)
    lengths = enc["attention_mask"].sum(dim=1).to(torch.int64)
    labels = torch.tensor([ex.label for ex in examples], dtype=torch.int64)
    return ClassificationData(table, lengths, labels, pad, max_length if padding == "max_length" else None)


@dataclass
class LMData:
    """Causal-LM token blocks.

    Attributes:
        blocks: ``(B, T)`` int64, consecutive ``block_size`` pieces of the EOS-joined token stream.
    """

    blocks: torch.Tensor

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.blocks.numel())

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch: ``input_ids``, ``attention_mask``, ``labels`` all ``(B, T)``; labels = input_ids
        (the model shifts them by one inside its loss)."""
        ids = self.blocks[idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def tokenize_lm(
    texts: Sequence[str | Example], tokenizer: Any, block_size: int = 128, max_tokens: int | None = None
) -> LMData:
    """Tokenise texts (no special tokens), append EOS to each, concatenate, cut into blocks.

    The stream is cut to ``max_tokens`` (if given), then into ``len // block_size`` blocks; the
    remainder shorter than a block is dropped.
    """
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token to separate texts")
    strings = [t.text if isinstance(t, Example) else t for t in texts]
    # verbose=False: documents longer than the model's context are expected here (we cut blocks).
    pieces = tokenizer(strings, add_special_tokens=False, verbose=False)["input_ids"]
    stream = np.concatenate([np.asarray([*seq, eos], dtype=np.int64) for seq in pieces])
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise DataError(f"only {len(stream)} tokens, fewer than one block of {block_size}")
    return LMData(torch.from_numpy(stream[: n_blocks * block_size].reshape(n_blocks, block_size).copy()))


def check_label_range(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Class ids of a classification batch ``(B,)`` must lie in ``[0, num_classes)``.

    The last line of defence before the loss: out of range, ``cross_entropy`` fails with an index error
    on a CPU and a device-side assert (which ends the process's CUDA context) on a GPU. Files and hub
    data sets are checked row by row when loaded (``load_dataset(num_labels=...)``), with the row named.
    """
    if labels.ndim != 1 or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{what} holds label {bad}, outside the model's classes 0 .. {num_classes - 1} "
            f"(model.num_labels={num_classes}): "
            + (f"set model.num_labels to {hi + 1}, or fix the data set's labels" if lo >= 0
               else "class ids must be non-negative")
        )


# ---------------------------------------------------------------------- batching
def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")


class TrainBatches:
    """Seeded training batches, reshuffled every epoch, sharded for data-parallel training.

    Epoch ``e`` uses the permutation of ``numpy.random.default_rng([*seed, e])`` (``seed`` one integer or
    several: an experiment passes its data and training seeds, see ``DataBundle.train_batches``). Step ``s`` of an
    epoch takes the global batch ``perm[s·G : (s+1)·G]`` with ``G = batch_size · world_size`` and
    rank ``r`` gets its slice ``[r·batch_size : (r+1)·batch_size]``. Every rank therefore runs the
    same number of steps (``len(data) // G`` per epoch; the tail is left out of that epoch), the
    ranks of one step see disjoint examples, and their union equals the batch a single process
    with ``batch_size · world_size`` would see. ``batch(step)`` is random access, so resuming at a
    step needs no replay.
    """

    def __init__(
        self, data: Batchable, batch_size: int, seed: int | Sequence[int], rank: int = 0, world_size: int = 1
    ) -> None:
        _check_shard(rank, world_size)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size = data, batch_size
        # One integer of any kind (a NumPy integer from a sweep too) is one seed; anything else is several.
        self.seed: tuple[int, ...] = (int(seed),) if isinstance(seed, numbers.Integral) else tuple(int(s) for s in seed)
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(data) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{len(data)} examples are fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} × world_size {world_size})"
            )
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def indices(self, step: int) -> torch.Tensor:
        """Example indices of this rank's batch at global step ``step``: ``(batch_size,)``."""
        if step < 0:
            raise DataError(f"step must be >= 0, got {step}")
        epoch, s = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([*self.seed, epoch])
            self._perm = torch.from_numpy(rng.permutation(len(self.data)))
            self._epoch = epoch
        start = s * self.global_batch + self.rank * self.batch_size
        return self._perm[start : start + self.batch_size]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's batch at ``step`` (see the data set's ``gather`` for shapes)."""
        return self.data.gather(self.indices(step))

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from ``start_step`` on: ``num_steps`` of them, or endlessly if None."""
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()


def eval_batches(
    data: Batchable, batch_size: int, rank: int = 0, world_size: int = 1, sort_by_length: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Deterministic evaluation batches covering every example exactly once across ranks.

    Rank ``r`` takes the contiguous shard ``[r·n // world_size, (r+1)·n // world_size)`` in index
    order (or, with ``sort_by_length``, ordered by token count, which cuts padding for
    classification data); the last batch of a shard may be smaller than ``batch_size``.
    """
    _check_shard(rank, world_size)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    n = len(data)
    order = torch.arange(n)
    if sort_by_length:
        lengths = getattr(data, "lengths", None)
        if lengths is None:
            raise DataError(f"{type(data).__name__} has no per-example lengths to sort by")
        order = torch.argsort(lengths, stable=True)
    shard = order[rank * n // world_size : (rank + 1) * n // world_size]
    for start in range(0, len(shard), batch_size):
        yield data.gather(shard[start : start + batch_size])
