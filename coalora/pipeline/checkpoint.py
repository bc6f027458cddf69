"""Checkpoints: safetensors for tensors, JSON for everything else; never pickles.

Layout of a checkpoint directory::

    meta.json                 model, task, space signature, LoRA/U_θ settings, method, step, versions,
                              base_dtype (the frozen base's dtype during training)
    trainable.safetensors     LoRA A/B, task head, U_θ (by parameter name), float32
    optimizer.safetensors     AdamW moments (optional; for resuming), float32
    optimizer.json            AdamW step counts and the fp16 gradient scaler's state (optional)

Trainables and moments are float32 whatever the base's dtype (docs/architecture.md §5), so a checkpoint of a bf16
run loads into a float32, bf16 or fp16 base alike.

A checkpoint is written into a temporary sibling directory and renamed into place, so a crash never
leaves a half-written checkpoint under the final name. ``meta.json`` is written last and records the
SHA-256 of every other file (``checksums``), so a file damaged later (truncated, bit-flipped) is found
before anything loads it (:func:`check_checkpoint_files`): a damaged checkpoint is one
:class:`CheckpointError` naming the file and what is wrong, never a traceback or a silent ``nan``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from coalora.core.space import QuantSpace
from coalora.errors import CheckpointError, CheckpointMismatchError, CoaloraError
from coalora.io import atomic_dir
from coalora.model.lora import CoaModel
from coalora.pipeline.config import METHODS, ExperimentConfig

FORMAT_VERSION = 1
META = "meta.json"
TRAINABLE = "trainable.safetensors"
OPTIMIZER = "optimizer.safetensors"
OPTIMIZER_META = "optimizer.json"
# What loading a checkpoint needs from meta.json, with the JSON type each must have.
REQUIRED_META: dict[str, type] = {"method": str, "experiment": dict, "space": dict}


def versions() -> dict[str, str]:
    import transformers

    import coalora

    return {
        "coalora": coalora.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def training_meta(
    cfg: ExperimentConfig,
    task: str,
    method: str,
    space: QuantSpace,
    trainset: np.ndarray | None,
    *,
    step: int,
    train_loss: float,
    **extra: Any,
) -> dict[str, Any]:
    """What ``meta.json`` records about a training, for :func:`save_checkpoint`'s ``meta`` (which adds
    the model's own facts: space, LoRA and U_θ settings, dtype, versions, checksums).

    Args:
        cfg: the experiment (recorded whole, so that loading rebuilds the same model).
        task: ``"classification"`` or ``"causal_lm"`` (the loaded model's).
        method: one of :data:`coalora.pipeline.config.METHODS`.
        space: the configuration space ``trainset`` lives in.
        trainset: ``(T, N, 5)`` configurations trained on; None for ``fp-lora`` (the unquantized base).
        step: optimizer steps done in all (a resumed run counts the earlier rounds' too).
        train_loss: the final training loss.
        extra: further fields, recorded as given (``train_seconds``, ``round``, ``budget``).
    """
    return {
        "method": method,
        "model": {"name": cfg.model.name, "task": task, "num_labels": cfg.model.num_labels},
        "experiment": cfg.to_dict(),
        "step": step,
        "train_loss": train_loss,
        "trainset": None if trainset is None else [space.to_json(c) for c in trainset],
        **extra,
    }


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
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model``'s trainable state (or ``state``, an earlier copy of it: a snapshot), ``meta`` and
    optionally the optimizer (with the fp16 gradient scaler's state, when given); atomic per directory (an
    older checkpoint at ``out_dir`` is replaced only once the new one is complete:
    :func:`coalora.io.atomic_dir`)."""
    final = Path(out_dir)
    with atomic_dir(final) as tmp:
        state = {k: _fp32(v) for k, v in (model.trainable_state() if state is None else state).items()}
        save_file(state, str(tmp / TRAINABLE))
        if optimizer is not None:
            _save_optimizer(tmp, model, optimizer, scaler)
        # meta.json last: it vouches for the files written before it.
        checksums = {f.name: _sha256(f.read_bytes()) for f in sorted(tmp.iterdir())}
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
                "bank": model.lora_settings.bank,
            },
            "hypernet": None if model.hypernet is None else vars(model.hypernet.cfg),
            "base_dtype": str(model.compute_dtype).removeprefix("torch."),
            **meta,
            "checksums": checksums,
        }
        (tmp / META).write_text(json.dumps(full_meta, indent=1))
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


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _parse_meta(blob: bytes, where: str) -> dict[str, Any]:
    """``meta.json``'s bytes → a dict of this checkpoint format; a :class:`CheckpointError` otherwise."""
    try:
        meta = json.loads(blob.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{where}/{META} is corrupt: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}/{META} is corrupt: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}/{META} is corrupt: it holds a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: checkpoint format {meta.get('format')} is not {FORMAT_VERSION}")
    return meta


def _check_meta_keys(meta: Mapping[str, Any], where: str) -> None:
    """The keys that loading needs (:data:`REQUIRED_META`), each of its JSON type."""
    for key, kind in REQUIRED_META.items():
        if key not in meta:
            raise CheckpointError(f"{where}/{META} has no {key!r}: not a checkpoint this version can load")
        if not isinstance(meta[key], kind):
            raise CheckpointError(f"{where}/{META}: {key!r} holds a JSON {type(meta[key]).__name__}, "
                                  f"expected {'an object' if kind is dict else 'a string'}")
    if meta["method"] not in METHODS:
        raise CheckpointError(f"{where}/{META}: method {meta['method']!r} is not one of {list(METHODS)}")
    try:
        QuantSpace.from_signature(meta["space"])
    except (CoaloraError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:  # any malformed part
        raise CheckpointError(f"{where}/{META}: 'space' is not a configuration space's signature "
                              f"({type(e).__name__}: {e})") from None
    trainset = meta.get("trainset")
    if trainset is not None and not isinstance(trainset, list):
        raise CheckpointError(f"{where}/{META}: 'trainset' holds a JSON {type(trainset).__name__}, expected a list")


def _parse_tensors(blob: bytes, name: str, where: str, meta: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A safetensors file's bytes → its tensors, checked: readable, matching the checksum ``meta``
    records (checkpoints written before checksums have none) and finite."""
    try:
        tensors = load_safetensors_bytes(blob)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own Rust-side error type (and others)
        raise CheckpointError(f"{where}/{name} is damaged (truncated or corrupt): {e}") from None
    _check_checksum(blob, name, where, meta)
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(
                f"{where}/{name}: tensor {key!r} holds {bad} of {t.numel()} values that are not finite "
                f"(nan/inf): the training that wrote it diverged; train again (e.g. with a lower train.lr)"
            )
    return tensors


def _check_checksum(blob: bytes, name: str, where: str, meta: Mapping[str, Any]) -> None:
    """``blob`` against the SHA-256 ``meta.json`` recorded for ``name`` (checkpoints written before
    checksums have none: nothing to compare)."""
    sums = meta.get("checksums")
    if sums is None:
        return
    if not isinstance(sums, dict):
        raise CheckpointError(f"{where}/{META} is corrupt: 'checksums' holds a JSON {type(sums).__name__}, "
                              "expected an object")
    want = sums.get(name)
    if want is not None and _sha256(blob) != want:
        raise CheckpointError(f"{where}/{name} is damaged: its SHA-256 differs from the one {META} recorded "
                              f"when it was written ({len(blob)} bytes now)")


def check_checkpoint_files(files: Mapping[str, bytes], where: str) -> dict[str, Any]:
    """Validate a checkpoint given as ``{file name: bytes}`` and return its meta.

    Checked: ``meta.json`` parses to an object of this format with the keys loading needs
    (:data:`REQUIRED_META`); ``trainable.safetensors`` parses and every tensor is finite; the optimizer
    files, when present, come as a pair, parse, and hold finite moments; each file matches the checksum
    ``meta.json`` recorded. ``where`` (a directory or URI) starts every message.

    Raises:
        CheckpointError: one line naming the file and what is wrong with it.
    """
    missing = [n for n in (META, TRAINABLE) if n not in files]
    if missing:
        raise CheckpointError(f"{where} is not a coalora checkpoint (expected {META} and {TRAINABLE}; "
                              f"{' and '.join(missing)} missing)")
    meta = _parse_meta(files[META], where)
    _check_meta_keys(meta, where)
    _parse_tensors(files[TRAINABLE], TRAINABLE, where, meta)
    _check_optimizer_files(files, where, meta)
    return meta


def _check_optimizer_files(files: Mapping[str, bytes], where: str, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The parsed ``optimizer.json`` (None when the checkpoint has no optimizer state)."""
    if OPTIMIZER not in files and OPTIMIZER_META not in files:
        return None
    for a, b in ((OPTIMIZER, OPTIMIZER_META), (OPTIMIZER_META, OPTIMIZER)):
        if a in files and b not in files:
            raise CheckpointError(f"{where} has {a} but no {b}: its optimizer state is incomplete")
    _parse_tensors(files[OPTIMIZER], OPTIMIZER, where, meta)
    _check_checksum(files[OPTIMIZER_META], OPTIMIZER_META, where, meta)
    try:
        info = json.loads(files[OPTIMIZER_META].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{where}/{OPTIMIZER_META} is corrupt: {e}") from None
    if not isinstance(info, dict) or not isinstance(info.get("steps"), dict):
        raise CheckpointError(f"{where}/{OPTIMIZER_META} is corrupt: expected an object with 'steps'")
    return info


def _dir_files(path: str | os.PathLike, names: tuple[str, ...]) -> dict[str, bytes]:
    """The named files of checkpoint directory ``path`` that exist, as bytes; clear errors for a path
    that is missing or lacks the two files every checkpoint has."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not p.is_dir() or not (p / META).is_file() or not (p / TRAINABLE).is_file():
        raise CheckpointError(f"{path} is not a coalora checkpoint (expected {META} and {TRAINABLE})")
    out = {}
    for n in names:
        try:
            out[n] = (p / n).read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CheckpointError(f"{path}/{n} cannot be read: {e.strerror or e}") from None
    return out


def check_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """:func:`check_checkpoint_files` on checkpoint directory ``path``; returns its meta."""
    return check_checkpoint_files(_dir_files(path, (META, TRAINABLE, OPTIMIZER, OPTIMIZER_META)), str(path))


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``meta.json``; a clear error if ``path`` is not a checkpoint or the file is damaged.

    Only ``meta.json`` itself is checked (JSON object, format); :func:`check_checkpoint` checks the rest.
    """
    return _parse_meta(_dir_files(path, (META,))[META], str(path))


def load_trainable(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The trainable tensors of a checkpoint, checked (readable, checksum, finite) before use."""
    files = _dir_files(path, (META, TRAINABLE))
    meta = _parse_meta(files[META], str(path))
    tensors = _parse_tensors(files[TRAINABLE], TRAINABLE, str(path), meta)
    return {k: v.to(device) for k, v in tensors.items()}


def load_optimizer(path: str | os.PathLike, model: CoaModel, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler | None = None) -> bool:
    """Restore AdamW moments saved by :func:`save_checkpoint`; False when the checkpoint has none.

    The learning-rate schedule is not stored: it is a function of the step (see ``make_scheduler``).
    ``scaler`` (fp16 runs) gets the saved gradient-scaler state when the checkpoint has one.
    """
    files = _dir_files(path, (META, OPTIMIZER, OPTIMIZER_META))
    meta = _parse_meta(files[META], str(path))
    info = _check_optimizer_files(files, str(path), meta)
    if info is None:
        return False
    tensors = {k: v.to(model.device) for k, v in load_safetensors_bytes(files[OPTIMIZER]).items()}
    for n, param in model.named_parameters():
        if not param.requires_grad or n not in info["steps"]:
            continue
        moments = {}
        for key in ("exp_avg", "exp_avg_sq"):
            t = tensors.get(f"{n}::{key}")
            if t is None or t.shape != param.shape:
                got = "missing" if t is None else f"shaped {tuple(t.shape)}, the parameter {tuple(param.shape)}"
                raise CheckpointMismatchError(f"{path}/{OPTIMIZER}: moment {n}::{key} is {got}")
            moments[key] = t.to(param.dtype)
        st = optimizer.state[param]
        st["step"] = torch.tensor(info["steps"][n])
        st.update(moments)
    if scaler is not None and scaler.is_enabled() and "grad_scaler" in info:
        scaler.load_state_dict(info["grad_scaler"])
    return True
