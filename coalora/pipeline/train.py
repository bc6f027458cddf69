"""Single-process training loop for every method (docs/architecture.md §2.3, §2.4).

Each step samples ``configs_per_step`` configurations from the training set, runs the same batch under
each, averages the losses (one backward per configuration keeps peak memory at one graph), clips the
global gradient norm and takes an AdamW step.

The loop is written to run unchanged inside Ray Train's ``train_loop_per_worker``: the caller passes
``rank``/``world_size`` (configuration sampling is seeded per rank; data sharding is the batch
iterator's job) and, when ``torch.distributed`` is initialised, gradients are averaged across workers
before clipping, which is what DDP would do for these few trainable tensors.

Precision (docs/architecture.md §5): the model's forward autocasts itself to the base's dtype (see
:class:`coalora.model.lora.CoaModel`); losses are float32; parameters and AdamW moments are float32. An
fp16 base adds a gradient scaler (:func:`make_grad_scaler`): the loss is scaled before ``backward``,
gradients are averaged across workers while still scaled (so every worker sees the same inf/nan),
unscaled before clipping, and a step whose gradients are not finite is skipped. bf16 needs no scaler.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from coalora.data.batching import check_label_range
from coalora.model.lora import CoaModel
from coalora.pipeline.config import TrainSection


@dataclass
class TrainResult:
    """What a call to :func:`train` did."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped_steps: int = 0  # fp16: steps the gradient scaler skipped (inf/nan gradients)

    @property
    def final_loss(self) -> float:
        """Mean of the last 10% of step losses (at least one): less noisy than the last step."""
        if not self.losses:
            return float("nan")
        tail = max(1, len(self.losses) // 10)
        return float(np.mean(self.losses[-tail:]))


def trainable_parameters(model: CoaModel) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(model: CoaModel, cfg: TrainSection) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; U_θ's at ``lr × hypernet_lr_scale``.

    Always two parameter groups (LoRA, then U_θ; the second empty without a hypernetwork), so an
    optimizer state saved by one method loads into the same layout. U_θ gets its own learning rate
    because its gradient passes through B, which starts at zero: at the LoRA rate it barely moves in a
    short run (see benchmarks/quality.py).
    """
    lora, hyper = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (hyper if name.startswith("hypernet.") else lora).append(p)
    groups = [
        {"params": lora, "lr": cfg.lr},
        {"params": hyper, "lr": cfg.lr * cfg.hypernet_lr_scale},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(
    opt: torch.optim.Optimizer, cfg: TrainSection, total_steps: int, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then constant, linear decay to 0, or cosine decay to 0 over ``total_steps``.

    The factor is a pure function of the global step, so a resumed run needs only ``start_step``.
    """
    warm = min(cfg.warmup_steps, max(total_steps - 1, 0))

    def factor(local_step: int) -> float:
        step = local_step + start_step
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        if cfg.schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def make_grad_scaler(model: CoaModel) -> torch.amp.GradScaler | None:
    """A gradient scaler on the model's device type for an fp16 base; None otherwise.

    fp16 gradients underflow without loss scaling; bf16 has float32's exponent range and needs none.
    """
    if model.compute_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(model.device.type)


def sync_gradients(params: list[torch.nn.Parameter], group: dist.ProcessGroup | None = None) -> None:
    """Average gradients across data-parallel workers: one flat all-reduce per gradient dtype.

    A parameter without a gradient contributes zeros. Parameters are grouped by their gradient's dtype
    (concatenating float32 and bf16 gradients would upcast or fail), and each averaged gradient is
    assigned back in its parameter's dtype. No-op without an initialised process group of size > 1.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size(group)
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, g in enumerate(grads):
        by_dtype.setdefault(g.dtype, []).append(i)
    for members in by_dtype.values():
        flat = torch.cat([grads[i].reshape(-1) for i in members])
        dist.all_reduce(flat, group=group)
        flat /= world
        offset = 0
        for i in members:
            p = params[i]
            n = p.numel()
            # A fresh tensor per parameter (not a view of ``flat``) in the parameter's own dtype.
            p.grad = torch.empty_like(p).copy_(flat[offset : offset + n].view_as(p))
            offset += n


def _scaled_step(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer,
                 params: list[torch.nn.Parameter], clip: float) -> bool:
    """Unscale, clip and step through ``scaler``; False when it skipped the step (inf/nan gradients).

    The scaler backs its scale off exactly when it found a non-finite gradient, so comparing the scale
    before and after ``update`` tells a skipped step with public API only.
    """
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, clip)
    before = scaler.get_scale()
    scaler.step(opt)
    scaler.update()
    return scaler.get_scale() >= before


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher ‖ student) per position, averaged over the positions ``mask`` keeps (all without one).

    Shapes: ``logits`` and ``teacher`` ``(B, T, V)`` (or ``(B, V)``), ``mask`` ``(B, T)`` of 0/1. float32.
    """
    log_p = torch.log_softmax(teacher, dim=-1)
    kl = (log_p.exp() * (log_p - torch.log_softmax(logits, dim=-1))).sum(-1)  # (B, T) or (B,)
    if mask is None or kl.dim() != mask.dim():
        return kl.mean()
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp_min(1.0)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(
    model: CoaModel,
    batches: Iterator[dict[str, torch.Tensor]],
    trainset: np.ndarray | None,
    cfg: TrainSection,
    *,
    steps: int | None = None,
    total_steps: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rank: int = 0,
    start_step: int = 0,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    description: str = "train",
    scaler: torch.amp.GradScaler | None = None,
    sampler: Callable[[np.random.Generator], np.ndarray] | None = None,
) -> TrainResult:
    """Train ``model`` for ``steps`` steps (default ``cfg.steps``).

    Args:
        model: a :class:`CoaModel` (with U_θ for ``coa``, without for the plain-LoRA methods).
        batches: an endless iterator of batches (dicts of tensors with ``labels``).
        trainset: ``(S, N, 5)`` configurations to sample from; None trains the unquantized base
            (``fp-lora``).
        cfg: the ``train`` section (lr, clip, configs per step, seed ...).
        total_steps: length of the whole schedule when this call is one part of a longer run
            (default: ``start_step + steps``).
        optimizer: pass it to continue a run; made fresh otherwise.
        rank: data-parallel rank; seeds configuration sampling so workers see different ones.
        start_step: steps already taken (resume): keeps the sampling stream and schedule aligned.
        on_step: called as ``on_step(step, loss)`` after every step.
        scaler: fp16 only: the gradient scaler to continue with (its scale carries over between calls
            and checkpoints); made fresh by :func:`make_grad_scaler` when None.
        sampler: ``train.random_configs``: draws extra ``(n, N, 5)`` configurations for each step from
            the loop's generator (:func:`coalora.pipeline.experiment.training_sampler`), trained on
            beside the ``configs_per_step`` ones from ``trainset``.

    ``cfg.distill`` > 0 mixes in a distillation term: the unquantized base's outputs on each batch are
    computed once (no gradients) and every configuration of the step matches them (:func:`distill_loss`).
    """
    n_steps = cfg.steps if steps is None else steps
    params = trainable_parameters(model)
    opt = optimizer or make_optimizer(model, cfg)
    if scaler is None:
        scaler = make_grad_scaler(model)
    schedule = total_steps or start_step + n_steps
    sched = make_scheduler(opt, cfg, schedule, start_step)
    # Warm start: the shared LoRA trains alone until this step of the whole schedule, then U_θ joins.
    switch = model.warm_switch_step(schedule)
    frozen_ids = {id(q) for q in model.hypernet.parameters()} if switch > start_step else set()
    warm_params = [q for q in params if id(q) not in frozen_ids]  # what trains before the switch
    # One stream per (seed, rank), advanced past the steps already taken so a resumed run continues
    # the same sequence of configurations an uninterrupted run would have drawn.
    rng = np.random.default_rng([cfg.seed, rank, start_step])
    # Dropout draws from torch's global generator: seed it from the same stream so that a round
    # resumed from a checkpoint repeats the uninterrupted run exactly.
    torch.manual_seed(int(np.random.default_rng([cfg.seed, rank, start_step, 1]).integers(2**62)))
    device = model.device
    if trainset is None:
        model.set_config(None)
    else:
        trainset = np.asarray(trainset)
        if trainset.ndim != 3 or len(trainset) == 0:
            raise ValueError(f"trainset must be a non-empty (S, N, 5) array, got shape {trainset.shape}")
    k = 1 if trainset is None else min(cfg.configs_per_step, len(trainset))
    result = TrainResult(steps=0)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps, desc=description, disable=not progress or rank != 0, leave=False)
    # Classification heads: labels are checked on the host batch (no device sync) before the loss.
    classes = getattr(getattr(model.model, "config", None), "num_labels", None)
    for step in range(start_step, start_step + n_steps):
        host = next(batches)
        if classes is not None and "labels" in host:
            check_label_range(host["labels"], int(classes), f"the training batch of step {step}")
        batch = _to_device(host, device)
        opt.zero_grad(set_to_none=True)
        model.hypernet_frozen = step < switch
        total = 0.0
        chosen: list[np.ndarray | None] = [None]
        if trainset is not None:
            chosen = list(trainset[rng.choice(len(trainset), size=k, replace=False)])
            if sampler is not None:
                chosen += list(sampler(rng))
        teacher = model.base_output(**batch).logits.float() if cfg.distill > 0 else None
        for c in chosen:
            if c is not None:
                model.set_config(c)
            out = model(**batch)
            # float(): the loss of a low-precision forward is float32 already (transformers upcasts the
            # logits); a no-op then and for a float32 model.
            loss = out.loss.float()
            if teacher is not None:
                kl = distill_loss(out.logits.float(), teacher, batch.get("attention_mask"))
                loss = (1.0 - cfg.distill) * loss + cfg.distill * kl
            loss = loss / len(chosen)
            (loss if scaler is None else scaler.scale(loss)).backward()
            total += float(loss.detach())
            del out  # its logits, (B, T, V) for an LM, would otherwise stay alive through the next forward
        # A frozen U_θ has no gradients: leave it out of the all-reduce (which would hand it zeros, and
        # AdamW would then decay it and count its steps on one worker count but not another).
        live = warm_params if model.hypernet_frozen else params
        sync_gradients(live)
        if scaler is None:
            torch.nn.utils.clip_grad_norm_(live, cfg.grad_clip)
            opt.step()
            sched.step()
        elif not _scaled_step(scaler, opt, live, cfg.grad_clip):
            result.skipped_steps += 1
            with warnings.catch_warnings():
                # The schedule is a function of the global step, so it advances on a skipped step too;
                # torch warns when that happens before the first real optimizer step.
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                sched.step()
        else:
            sched.step()
        result.losses.append(total)
        result.steps += 1
        if on_step is not None:
            on_step(step + 1, total)
        if (step + 1) % cfg.log_every == 0:
            bar.set_postfix(loss=f"{np.mean(result.losses[-cfg.log_every:]):.4f}")
        bar.update(1)
    bar.close()
    model.hypernet_frozen = False
    result.seconds = time.perf_counter() - t0
    model.eval()
    return result
