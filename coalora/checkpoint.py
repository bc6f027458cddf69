"""Checkpoints: safetensors for tensors, JSON for everything else; never pickles.

Layout of a checkpoint directory::

    meta.json                 model, task, space signature, LoRA/U_θ settings, method, step, versions,
                              base_dtype (the frozen base's dtype during training)
    trainable.safetensors     LoRA A/B, task head, U_θ (by parameter name), float32
    optimizer.safetensors     AdamW moments (optional; for resuming), float32
    optimizer.json            AdamW step counts and the fp16 gradient scaler's state (optional)

Trainables and moments are float32 whatever the base's dtype (DESIGN §5), so a checkpoint of a bf16
run loads into a float32, bf16 or fp16 base alike.

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from coalora.lora import CoaModel

FORMAT_VERSION = 1
META = "meta.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"


class CheckpointError(ValueError):
    """A path that is not a readable coalora checkpoint."""


def versions() -> dict[str, str]:
    import transformers

    import coalora

    return {
        "coalora": coalora.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move ``tmp`` to ``final``, replacing an older checkpoint there only after the new one is complete."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy, float32 when floating (a no-op cast for the float32 trainables)."""
    t = t.detach()
    if t.is_floating_point():
        t = t.float()
    return t.contiguous().cpu()


def save_checkpoint(
    out_dir: str | os.PathLike,
    model: CoaModel,
    meta: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write ``model``'s trainable state, ``meta`` and optionally the optimizer (with the fp16 gradient
    scaler's state, when given); atomic per directory."""
    final = Path(out_dir)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        state = {k: _fp32(v) for k, v in model.trainable_state().items()}
        save_file(state, str(tmp / TRAINABLE))
        full_meta = {
            "format": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
            "space": model.space.signature(),
            "space_fingerprint": model.space.fingerprint(),
            "lora": {
                "rank": model.lora_settings.rank,
                "alpha": model.lora_settings.alpha,
                "dropout": model.lora_settings.dropout,
            },
            "hypernet": None if model.hypernet is None else vars(model.hypernet.cfg),
            "base_dtype": str(model.compute_dtype).removeprefix("torch."),
            **meta,
        }
        (tmp / META).write_text(json.dumps(full_meta, indent=1))
        if optimizer is not None:
            _save_optimizer(tmp, model, optimizer, scaler)
        _replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _save_optimizer(path: Path, model: CoaModel, optimizer: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None) -> None:
    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    tensors: dict[str, torch.Tensor] = {}
    steps: dict[str, float] = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if not st:
                continue
            n = names[id(p)]
            for key, val in st.items():
                if key == "step":
                    steps[n] = float(val)
                elif torch.is_tensor(val):
                    tensors[f"{n}::{key}"] = _fp32(val)
    save_file(tensors, str(path / OPTIMIZER))
    info: dict[str, Any] = {"steps": steps}
    if scaler is not None and scaler.is_enabled():
        # Plain floats and ints: the scale, its growth tracker and the growth/backoff settings.
        info["grad_scaler"] = dict(scaler.state_dict())
    (path / OPTIMIZER_META).write_text(json.dumps(info))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta.json``; a clear error if ``path`` is not a checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not (p / META).is_file() or not (p / TRAINABLE).is_file():
        raise CheckpointError(f"{path} is not a coalora checkpoint (expected {META} and {TRAINABLE})")
    try:
        meta = json.loads((p / META).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}/{META} is corrupt: {e}") from None
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}")
    return meta


def load_trainable(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    read_meta(path)
    return load_file(str(Path(path) / TRAINABLE), device=str(device))


def load_optimizer(path: str | os.PathLike, model: CoaModel, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> bool:
    """Restore AdamW moments saved by :func:`save_checkpoint`; False when the checkpoint has none.

    The learning-rate schedule is not stored: it is a function of the step (see ``make_scheduler``).
    ``scaler`` (fp16 runs) gets the saved gradient-scaler state when the checkpoint has one.
    """
    p = Path(path)
    if not (p / OPTIMIZER).is_file():
        return False
    tensors = load_file(str(p / OPTIMIZER), device=str(model.device))
    info = json.loads((p / OPTIMIZER_META).read_text())
    for n, param in model.named_parameters():
        if not param.requires_grad or n not in info["steps"]:
            continue
        st = optimizer.state[param]
        st["step"] = torch.tensor(info["steps"][n])
        for key in ("exp_avg", "exp_avg_sq"):
            st[key] = tensors[f"{n}::{key}"].to(param.dtype)
    if scaler is not None and scaler.is_enabled() and "grad_scaler" in info:
        scaler.load_state_dict(info["grad_scaler"])
    return True
