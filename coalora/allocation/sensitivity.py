"""Sensitivity of the loss to each target weight: the weights themselves and their diagonal Fisher."""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from coalora.core.space import QuantSpace
from coalora.errors import SpaceError


# ---------------------------------------------------------------------- target weights and Fisher
def _target_modules(model: torch.nn.Module, space: QuantSpace) -> list[torch.nn.Module]:
    out = []
    for m in space.matrices:
        try:
            out.append(model.get_submodule(m.name))
        except AttributeError:
            raise SpaceError(f"model has no module {m.name!r} named by the configuration space") from None
    return out


def target_weights(model: torch.nn.Module, space: QuantSpace) -> list[torch.Tensor]:
    """The target weights of ``model`` in space order, each detached and shaped ``(out, in)``.

    GPT-2's ``Conv1D`` stores ``(in, out)``; such matrices (``TargetMatrix.transposed``) come back
    transposed. Raises :class:`SpaceError` if a module is missing or its shape differs from the space.
    """
    out: list[torch.Tensor] = []
    for m, module in zip(space.matrices, _target_modules(model, space)):
        w = module.weight.detach()
        if m.transposed:
            w = w.t()
        if tuple(w.shape) != m.shape:
            raise SpaceError(
                f"weight of {m.name!r} has shape {tuple(w.shape)} (out, in); the space expects {m.shape}"
            )
        out.append(w)
    return out


def _default_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """``model(**batch).loss``: Hugging Face models return a loss when the batch carries labels."""
    out = model(**batch)
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    if loss is None:
        raise ValueError("the model returned no loss: put labels in the batches or pass loss_fn")
    return loss


def fisher_diagonal(
    model: torch.nn.Module,
    batches: Iterable[Any],
    space: QuantSpace,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Diagonal empirical Fisher of the target weights: ``N`` tensors shaped ``(out, in)``.

    ``F_i = Σ_batches (∂ loss / ∂ W_i)²``. This is the *batch-level* empirical Fisher: each batch's
    mean-loss gradient is squared, not each example's (per-example gradients cost one backward per
    example; for ranking matrices by sensitivity a few batches are enough). Only the relative scale
    between matrices matters to the allocation, so the sum is not normalised.

    Args:
        model: a torch model whose target modules are named as in ``space``.
        batches: an iterable of batches; with the default ``loss_fn`` each is a mapping of keyword
            arguments of ``model`` that includes labels (``model(**batch).loss``).
        loss_fn: ``(model, batch) -> scalar loss`` for models without a built-in loss.

    The model runs in eval mode (no dropout noise in the gradients) and its ``requires_grad`` flags
    and ``.grad`` fields are left as they were.
    """
    loss_fn = loss_fn or _default_loss
    params = [mod.weight for mod in _target_modules(model, space)]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    n = 0
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            if loss.ndim != 0:
                raise ValueError(f"loss_fn must return a scalar loss, got shape {tuple(loss.shape)}")
            # autograd.grad instead of backward(): no .grad field of the model is touched.
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.detach().float().square())
            n += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    if n == 0:
        raise ValueError("fisher_diagonal needs at least one batch; got none")
    return [f.t().contiguous() if m.transposed else f for f, m in zip(fisher, space.matrices)]
