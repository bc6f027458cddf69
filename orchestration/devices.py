"""Which device a Ray worker computes on, and what the cluster's GPU nodes can actually run.

Ray schedules ``num_gpus`` on any node that declares GPUs, whether or not torch there was built with
CUDA (a CPU wheel on a GPU node, or a test node that declares GPUs it does not have). A process that
holds GPU ids computes on CUDA when it can and on CPU otherwise; the driver finds out once, with a
probe task on a GPU node, so that it picks the collective backend that exists there and says once,
not in every worker, that the run computes on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray


@dataclass(frozen=True)
class DeviceReport:
    """What a process holding ``gpu_ids`` can compute on."""

    device: str  # "cuda:0", "cpu"
    gpu_ids: tuple[Any, ...]
    cuda: bool  # torch has CUDA and sees a device
    nccl: bool  # torch.distributed has NCCL built in
    torch_version: str
    node: str

    @property
    def falls_back(self) -> bool:
        """Holds GPUs but computes on CPU."""
        return bool(self.gpu_ids) and not self.cuda

    def note(self) -> str:
        return (f"Ray gave GPU(s) {list(self.gpu_ids)} on node {self.node} but torch {self.torch_version} there "
                "has no usable CUDA device: training and evaluation compute on CPU")


def local_device(train_worker: bool = False) -> DeviceReport:
    """The device of the calling Ray worker (actor, task or Ray Train worker)."""
    import torch
    import torch.distributed as dist

    gpu_ids = tuple(ray.get_gpu_ids())
    cuda = bool(gpu_ids) and torch.cuda.is_available()
    if cuda and train_worker:
        from ray.train.torch import get_device

        device = str(get_device())
    else:
        # Ray sets CUDA_VISIBLE_DEVICES to the ids it gave this process, so its first GPU is cuda:0.
        device = "cuda:0" if cuda else "cpu"
    return DeviceReport(device=device, gpu_ids=gpu_ids, cuda=cuda, nccl=dist.is_available() and dist.is_nccl_available(),
                        torch_version=torch.__version__, node=ray.get_runtime_context().get_node_id()[:8])


@ray.remote(max_retries=0)
def _probe() -> DeviceReport:
    return local_device()


def probe_gpu_node(num_gpus: float, timeout_s: float = 1800.0) -> DeviceReport:
    """Run one tiny task holding ``num_gpus`` GPUs (the autoscaler may start a node for it) and report
    what its process can compute on."""
    return ray.get(_probe.options(num_gpus=num_gpus, num_cpus=0).remote(), timeout=timeout_s)


def collective_backend(report: DeviceReport | None) -> str:
    """The torch.distributed backend for training workers: NCCL where GPU workers have it, else gloo."""
    return "nccl" if report is not None and report.cuda and report.nccl else "gloo"
