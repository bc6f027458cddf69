"""The per-process memory plan: exact arithmetic on a known model, and what counts as out of memory."""

from __future__ import annotations

import pytest
import torch

from coalora.model.memory import GIB, MIB, host_share, is_out_of_memory, module_bytes, plan_memory, trainable_bytes


def _model() -> torch.nn.Module:
    m = torch.nn.Sequential(torch.nn.Linear(256, 256, bias=False), torch.nn.Linear(256, 4))
    m[0].weight.requires_grad_(False)  # a frozen 256×256 fp32 base: 256 KiB
    m.register_buffer("table", torch.zeros(1024))  # 4 KiB of buffers
    return m


def test_bytes_of_base_and_trainables():
    m = _model()
    assert trainable_bytes(m) == (256 * 4 + 4) * 4
    assert module_bytes(m) == 256 * 256 * 4 + (256 * 4 + 4) * 4 + 1024 * 4
    tied = torch.nn.Linear(8, 8)
    tied.other = tied.weight  # a shared storage counts once
    assert module_bytes(tied) == (64 + 8) * 4


def test_cache_is_a_fraction_of_the_share_of_free_memory_capped():
    m = _model()
    free = 16 * GIB
    plan = plan_memory(m, "cpu", fraction=0.5, share=0.25, free=free)
    assert plan.cache == 2 * GIB and plan.optimizer == 0
    assert plan.headroom == 4 * GIB - 2 * GIB
    capped = plan_memory(m, "cpu", fraction=0.5, cap_gib=1.5, share=0.25, training=True, free=free)
    assert capped.cache == int(1.5 * GIB) and capped.optimizer == 3 * trainable_bytes(m)
    assert capped.base == module_bytes(m) - trainable_bytes(m)
    line = capped.describe()
    assert line.startswith("memory plan (cpu, share 0.25 of 16.0 GiB free): base 260 KiB, cache <= 1.5 GiB")
    assert plan_memory(m, "cpu", fraction=0.0, free=free).cache == 0
    with pytest.raises(ValueError, match="share must be in"):
        plan_memory(m, "cpu", fraction=0.5, share=0.0, free=free)


def test_free_memory_is_measured_when_not_given():
    plan = plan_memory(_model(), "cpu", fraction=0.5)
    assert plan.free > 64 * MIB and plan.cache == int(0.5 * plan.free)


def test_host_share(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert host_share(2) == 0.25 and host_share(16) == 1.0 and host_share(0) == 1 / 8


def test_what_counts_as_out_of_memory():
    with pytest.raises(RuntimeError) as e:
        torch.empty(2**50, dtype=torch.uint8)  # a real failure of torch's CPU allocator
    assert is_out_of_memory(e.value)
    assert is_out_of_memory(MemoryError()) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not is_out_of_memory(ValueError("out of memory"))  # not an allocation failure type
