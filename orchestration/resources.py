"""The run's resource plan, checked against the cluster before round 0.

A run holds three kinds of Ray processes: ``ray.num_workers`` training workers (Ray Train, one
placement group per round), ``ray.evaluators`` evaluator actors and one search actor. Training and
evaluation alternate, so the evaluators either keep their resources while training runs (they keep
their weight caches) or give them back and are restarted after it. A plan that cannot fit waits
forever in Ray's scheduler, so it is checked first, against the nodes the cluster has now and the
ones its autoscaler may add (``ray._private.state`` exposes the autoscaler's node groups and their
maximum counts; there is no public API for it in Ray 2.60).

The check packs bundles first-fit-decreasing onto node shapes. Ray's scheduler may place them
differently, so "fits" is what the cluster could hold, not a placement Ray promises; ``release``
never needs training and evaluation to fit at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from coalora.errors import PlanError
from coalora.pipeline.config import RaySection

UNLIMITED_NODES = 1024  # an autoscaler node group with max_count -1: as many nodes as any plan asks


@dataclass(frozen=True)
class Bundle:
    """``count`` processes of one kind, each needing ``cpu`` CPUs and ``gpu`` GPUs on one node."""

    what: str
    count: int
    cpu: float
    gpu: float

    def __str__(self) -> str:
        gpu = f" + {self.gpu:g} GPU" if self.gpu else ""
        return f"{self.count} {self.what} × ({self.cpu:g} CPU{gpu})"


@dataclass(frozen=True)
class ResourcePlan:
    """The processes of a run (see the module docstring)."""

    train: Bundle
    evaluate: Bundle
    search: Bundle

    @classmethod
    def of(cls, r: RaySection) -> "ResourcePlan":
        return cls(
            train=Bundle("training worker(s)", r.num_workers, r.cpus_per_worker, r.gpus_per_worker if r.use_gpu else 0.0),
            evaluate=Bundle("evaluator(s)", r.evaluators, r.cpus_per_evaluator, r.gpus_per_evaluator),
            search=Bundle("search actor", 1, r.search_cpus, 0.0),
        )

    @property
    def uses_gpus(self) -> bool:
        return self.train.gpu > 0 or self.evaluate.gpu > 0

    def total(self, bundles: Iterable[Bundle]) -> dict[str, float]:
        out = {"CPU": 0.0, "GPU": 0.0}
        for b in bundles:
            out["CPU"] += b.count * b.cpu
            out["GPU"] += b.count * b.gpu
        return out


@dataclass
class Capacity:
    """What a cluster has now and what its autoscaler may add.

    Attributes:
        nodes: total resources of each alive node (``{"CPU": 8, "GPU": 1, ...}``).
        groups: autoscaler node groups as ``(resources of one node, maximum count)``; empty without an
            autoscaler.
    """

    nodes: list[dict[str, float]] = field(default_factory=list)
    groups: list[tuple[dict[str, float], int]] = field(default_factory=list)

    def shapes(self) -> list[dict[str, float]]:
        """Every node the cluster could have at once (alive ones plus each group's maximum)."""
        out = [dict(n) for n in self.nodes]
        for res, count in self.groups:
            out += [dict(res) for _ in range(count)]
        return out

    def describe(self) -> str:
        now = {k: sum(n.get(k, 0.0) for n in self.nodes) for k in ("CPU", "GPU")}
        text = f"{len(self.nodes)} node(s) with {now['CPU']:g} CPU, {now['GPU']:g} GPU"
        if self.groups:
            most = {k: now[k] + sum(r.get(k, 0.0) * c for r, c in self.groups) for k in ("CPU", "GPU")}
            text += f" (autoscaler maximum {most['CPU']:g} CPU, {most['GPU']:g} GPU)"
        return text


def _fits(bundles: Sequence[Bundle], shapes: list[dict[str, float]]) -> bool:
    """First-fit-decreasing: can every process of ``bundles`` be placed on the node ``shapes``?"""
    free = [{"CPU": s.get("CPU", 0.0), "GPU": s.get("GPU", 0.0)} for s in shapes]
    items = sorted(((b.gpu, b.cpu) for b in bundles for _ in range(b.count)), reverse=True)
    eps = 1e-9
    for gpu, cpu in items:
        for node in free:
            if node["GPU"] + eps >= gpu and node["CPU"] + eps >= cpu:
                node["GPU"] -= gpu
                node["CPU"] -= cpu
                break
        else:
            return False
    return True


def check_plan(plan: ResourcePlan, cap: Capacity, mode: str = "auto") -> bool:
    """Whether the evaluators keep their resources while training runs.

    Args:
        mode: ``ray.evaluators_during_training``: auto, keep or release.
    Raises:
        PlanError: a process no node can hold, or a phase that never fits (one line naming both).
    """
    shapes = cap.shapes()
    for b in (plan.train, plan.evaluate, plan.search):
        if b.count and not _fits([Bundle(b.what, 1, b.cpu, b.gpu)], shapes):
            raise PlanError(f"one of the {b.what} needs {b.cpu:g} CPU + {b.gpu:g} GPU on one node, but no node of "
                            f"the cluster has that much: {cap.describe()}")
    training = [plan.train, plan.search]
    evaluation = [plan.evaluate, plan.search]
    for phase, bundles in (("training", training), ("evaluation", evaluation)):
        if not _fits(bundles, shapes):
            need = plan.total(bundles)
            raise PlanError(f"the {phase} phase needs {need['CPU']:g} CPU + {need['GPU']:g} GPU "
                            f"({', '.join(str(b) for b in bundles if b.count)}) but the cluster can never hold it: "
                            f"{cap.describe()}")
    together = _fits([plan.train, plan.evaluate, plan.search], shapes)
    if mode == "keep" and not together:
        need = plan.total([plan.train, plan.evaluate, plan.search])
        raise PlanError(f"ray.evaluators_during_training is keep, but training and evaluation together need "
                        f"{need['CPU']:g} CPU + {need['GPU']:g} GPU and the cluster can never hold both: "
                        f"{cap.describe()}; use auto or release")
    return mode == "keep" or (mode == "auto" and together)


def cluster_capacity() -> Capacity:
    """The connected cluster's alive nodes and its autoscaler's node groups."""
    import ray
    import ray._private.state

    nodes = [{k: float(v) for k, v in n["Resources"].items()} for n in ray.nodes() if n.get("Alive")]
    groups: list[tuple[dict[str, float], int]] = []
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler state in this cluster (a local one, or an older GCS)
        config = None
    for g in getattr(config, "node_group_configs", None) or []:
        res = {k: float(v) for k, v in g.resources.items()}
        if not res or g.max_count == 0:
            continue
        groups.append((res, UNLIMITED_NODES if g.max_count < 0 else int(g.max_count)))
    return Capacity(nodes=nodes, groups=groups)


def local_cluster_cpus(r: RaySection, available: int) -> int:
    """CPUs to declare for a local cluster that run.py starts: enough for the larger phase's request."""
    plan = ResourcePlan.of(r)
    # Logical CPUs: the phases never compute at the same time, so covering both at once does not
    # oversubscribe the cores, and it lets the evaluators keep their caches through training.
    need = plan.total([plan.train, plan.evaluate, plan.search])["CPU"]
    return r.local_cpus or max(available, math.ceil(need))


def describe(plan: ResourcePlan, keep: bool) -> str:
    """One line for the console: who holds what, and whether evaluators stay up during training."""
    what = "stay up during training" if keep else "are stopped during training and restarted after it"
    return f"resources: {plan.train}, {plan.evaluate}, {plan.search}; evaluators {what}"
