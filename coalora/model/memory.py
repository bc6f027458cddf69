"""Per-process memory plan: base weights, quantized-weight cache, trainable state, headroom.

The dequantized-weight cache (:class:`coalora.model.weight_cache.WeightCache`) is the one structure whose size we
choose. A fixed size is wrong everywhere but on the machine it was tuned on (20 GiB next to 5.7 GiB of
bf16 Qwen2.5-3B weights is out of memory on a 24 GB GPU), so it is sized from what the device has free
once the base weights are in place:

    cache = min(cache_gib, cache_fraction × free × share)

``share`` is the part of the device this process holds: its GPU fraction for a GPU actor (two
evaluators at ``num_gpus=0.5`` split one GPU), its CPUs over the node's CPUs on the host, 1 for a
single process. The rest of the share is headroom for activations and the optimizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

GIB = 1024**3
MIB = 1024**2


def device_free_bytes(device: torch.device | str) -> int:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on CUDA, available host memory otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (shared storages counted once)."""
    seen: set[int] = set()
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        key = t.untyped_storage().data_ptr()
        if key in seen or t.device.type == "meta":
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


def trainable_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters that require gradients."""
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)


def host_share(cpus: float) -> float:
    """The share of this host's memory that a process reserving ``cpus`` CPUs may plan with."""
    n = os.cpu_count() or 1
    return min(1.0, max(cpus, 1e-3) / n) if cpus > 0 else 1.0 / n


@dataclass(frozen=True)
class MemoryPlan:
    """What one process expects to hold on its device (bytes).

    Attributes:
        device: where the model computes.
        free: free device memory after the base weights were loaded.
        share: the fraction of ``free`` this process plans with.
        base: frozen weights and buffers of the model.
        trainable: trainable parameters (LoRA, U_θ, head), fp32.
        optimizer: AdamW moments plus gradients (3 × trainable) when training, else 0.
        cache: bound of the dequantized-weight cache.
    """

    device: str
    free: int
    share: float
    base: int
    trainable: int
    optimizer: int
    cache: int

    @property
    def headroom(self) -> int:
        """What the share leaves for activations once the cache is full and the optimizer allocated."""
        return int(self.free * self.share) - self.cache - self.optimizer

    def describe(self) -> str:
        """One line for people: ``memory plan (cpu, share 0.50): base 87 MiB, cache ≤ 1.2 GiB, ...``."""
        return (f"memory plan ({self.device}, share {self.share:.2f} of {_fmt(self.free)} free): "
                f"base {_fmt(self.base)}, cache <= {_fmt(self.cache)}, trainable {_fmt(self.trainable)}"
                f" + optimizer {_fmt(self.optimizer)}, headroom {_fmt(self.headroom)}")


def _fmt(n: int) -> str:
    if abs(n) >= GIB:
        return f"{n / GIB:.1f} GiB"
    return f"{n / MIB:.0f} MiB" if abs(n) >= MIB else f"{n / 1024:.0f} KiB"


def plan_memory(model: torch.nn.Module, device: torch.device | str, *, fraction: float,
                cap_gib: float | None = None, share: float = 1.0, training: bool = False,
                free: int | None = None) -> MemoryPlan:
    """Size the cache for ``model`` already placed on ``device`` (see the module docstring).

    Args:
        model: the adapted model (its base weights and trainable parameters already on ``device``).
        fraction: ``model.cache_fraction`` of the config.
        cap_gib: ``model.cache_gib`` (None: no fixed cap).
        share: the part of the device this process holds, in (0, 1].
        training: reserve room for gradients and AdamW moments.
        free: the device's free bytes (measured now when None).
    """
    if not 0.0 < share <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share}")
    free = device_free_bytes(device) if free is None else int(free)
    train_b = trainable_bytes(model)
    opt = 3 * train_b if training else 0
    cache = int(fraction * free * share)
    if cap_gib is not None:
        cache = min(cache, int(cap_gib * GIB))
    return MemoryPlan(device=str(torch.device(device)), free=free, share=share, base=module_bytes(model) - train_b,
                      trainable=train_b, optimizer=opt, cache=max(0, cache))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (CUDA or host), as opposed to a bug or bad input."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)
