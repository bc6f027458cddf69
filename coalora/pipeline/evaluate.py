"""Score configurations of a trained model on held-out batches (loss, accuracy or perplexity).

Many configurations are evaluated in one call: the weight cache makes revisits cheap, and the cores of
each configuration are computed once (``no_grad``).

Precision: a bf16/fp16 model's forward runs under its own autocast (:meth:`CoaModel.autocast`, entered
by :meth:`CoaModel.forward`), exactly as in training; losses and metrics are computed from float32
logits, and summed in Python floats.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from coalora.data.batching import check_label_range
from coalora.errors import DataError
from coalora.model.lora import CoaModel


def _batch_sums(logits: torch.Tensor, batch: dict[str, torch.Tensor], task: str) -> tuple[float, float, int]:
    """(summed loss, summed correct, count) of one batch.

    Classification: ``logits`` (B, C), count = examples. Causal LM: ``logits`` (B, T, V), next-token
    loss over positions whose label is not -100 and whose attention mask is set; count = tokens.
    """
    labels = batch["labels"]
    if task == "classification":
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        correct = (logits.argmax(-1) == labels).sum()
        return float(loss), float(correct), int(labels.numel())
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:].clone()
    if "attention_mask" in batch:
        shift_labels[batch["attention_mask"][:, 1:] == 0] = -100
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=-100, reduction="sum")
    valid = shift_labels != -100
    correct = ((shift_logits.argmax(-1) == shift_labels) & valid).sum()
    return float(loss), float(correct), int(valid.sum())


def evaluate_one(
    model: CoaModel, batches: Sequence[dict[str, torch.Tensor]], task: str, max_batches: int | None = None
) -> dict[str, float]:
    """Metrics of the model's current configuration over ``batches``."""
    model.eval()
    device = model.device
    total_loss = total_correct = 0.0
    count = examples = 0
    classes = getattr(getattr(model.model, "config", None), "num_labels", None)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if task == "classification" and classes is not None:
                check_label_range(batch["labels"], int(classes), f"evaluation batch {i}")
            batch = {k: v.to(device) for k, v in batch.items()}
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            logits = model(**inputs).logits
            l, c, n = _batch_sums(logits, batch, task)
            total_loss += l
            total_correct += c
            count += n
            examples += int(batch["labels"].shape[0])
    seconds = time.perf_counter() - t0
    if count == 0:
        raise DataError("evaluation got no examples (an empty split, or max_batches=0)")
    loss = total_loss / count
    out: dict[str, float] = {"loss": loss, "examples": examples, "seconds": seconds,
                             "examples_per_s": examples / max(seconds, 1e-9)}
    if task == "classification":
        out["accuracy"] = total_correct / count
    else:
        out["perplexity"] = math.exp(min(loss, 50.0))
        out["token_accuracy"] = total_correct / count
    return out


def evaluate(
    model: CoaModel,
    configs: np.ndarray | Sequence[np.ndarray | None],
    batches: Sequence[dict[str, torch.Tensor]],
    task: str,
    max_batches: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Evaluate each configuration of ``configs`` (``(B, N, 5)``, or a list whose items may be None
    for the unquantized base). Returns one dict per configuration: config id, average bits, loss,
    accuracy (classification) or perplexity (causal LM), examples/s."""
    space = model.space
    rows = []
    for cfg in tqdm(list(configs), desc="evaluate", disable=not progress, leave=False):
        model.set_config(cfg)
        metrics = evaluate_one(model, batches, task, max_batches)
        if cfg is None:
            meta = {"config_id": "fp", "avg_bits": 32.0}
        else:
            meta = {"config_id": space.config_id(cfg), "avg_bits": float(space.average_bits(cfg))}
        rows.append({**meta, **metrics})
    return rows
