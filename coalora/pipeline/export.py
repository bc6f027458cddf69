"""Turn a trained model and one configuration into a deployable artefact, with no training.

``export_adapter`` writes::

    <out>/adapter/            PEFT LoRA adapter (adapter_config.json, adapter_model.safetensors):
                              B' = B·M(C) folded, so it is a plain LoRA any PEFT user can load
    <out>/base/               the base model with its target weights dequantized under C
                              (Hugging Face format, safetensors) and its tokenizer
    <out>/quantized.safetensors   the packed quantized target weights (codes, scale codes, scales)
    <out>/configuration.json  the configuration, module name → knobs
    <out>/export.json         summary: average bits, config id, source checkpoint, how to load

Everything is written into a temporary sibling directory first and renamed into place: an error
leaves nothing behind, and an existing output directory is never overwritten unless asked.

Precision: the base is written in the model's dtype (a bf16 run gives a bf16 ``base/``); the adapter
is always float32: B' = B·M is folded in float32 from the float32 trainables, and the trained head is
stored as trained. float32 loses nothing, the adapter is small (r·(in+out) per matrix), and PEFT keeps
LoRA weights of a bf16/fp16 base in float32 anyway (``autocast_adapter_dtype``); loading the adapter
onto a bf16 base casts the head copy to the base's dtype, which is also what autocast does to it in
training.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from coalora.core.quant import quantize
from coalora.errors import ExportError
from coalora.io import atomic_dir
from coalora.model.loading import LoadedModel
from coalora.model.lora import DEFAULT_HEAD_MODULES, CoaLinear, CoaModel

PEFT_TASK = {"classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


def _head_names(model: torch.nn.Module) -> list[str]:
    heads = set(DEFAULT_HEAD_MODULES)
    return sorted({n.split(".")[-1] for n, m in model.named_modules()
                   if n.split(".")[-1] in heads and not isinstance(m, CoaLinear)})


def dequantized_base(coa: CoaModel, fresh: LoadedModel, idx: np.ndarray) -> torch.nn.Module:
    """``fresh.model`` (an unwrapped copy of the base) with its target weights set to Q_C(W)."""
    coa.set_config(idx)
    with torch.no_grad():
        for m, layer in zip(coa.space.matrices, coa.layers):
            mod = fresh.model.get_submodule(m.name)
            w = layer.qweight.t() if m.transposed else layer.qweight
            mod.weight.copy_(w.to(mod.weight.dtype))
    return fresh.model


def export_adapter(
    coa: CoaModel,
    idx: np.ndarray,
    fresh: LoadedModel,
    out: str | os.PathLike,
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the artefacts of configuration ``idx`` ``(N, 5)`` to ``out`` (see module docstring).

    Args:
        coa: the trained model.
        fresh: a freshly loaded, unwrapped copy of the same base model (modified: it becomes the
            dequantized base).
        source: extra fields for ``export.json`` (checkpoint path, method ...).
        overwrite: replace an existing ``out``.
    """
    from peft import LoraConfig, get_peft_model

    space = coa.space
    idx = space.validate(idx)
    final = Path(out)
    if final.exists() and any(final.iterdir()) and not overwrite:
        raise ExportError(f"output directory {final} exists and is not empty (pass --overwrite to replace it)")
    # All-or-nothing: an export that fails half-way leaves ``out`` as it was.
    with atomic_dir(final) as tmp:
        folded = coa.folded_lora(idx)
        base = dequantized_base(coa, fresh, idx)
        heads = _head_names(base) if fresh.task == "classification" else []
        base.save_pretrained(tmp / "base", safe_serialization=True)
        fresh.tokenizer.save_pretrained(tmp / "base")
        # Quantized storage: packed codes and scales per target matrix.
        packed: dict[str, torch.Tensor] = {}
        for m, layer, row in zip(space.matrices, coa.layers, idx):
            for k, v in quantize(layer.weight, space.option(row), family=space.family).pack().items():
                packed[f"{m.name}.{k}"] = v.contiguous()
        save_file(packed, str(tmp / "quantized.safetensors"))
        # A PEFT model around the dequantized base, holding the folded factors and the trained head.
        # With a bank the folded rank is r + R; alpha grows with it so that PEFT's alpha/rank stays the
        # model's α/r.
        rank = coa.folded_rank
        lcfg = LoraConfig(
            r=rank,
            lora_alpha=coa.lora_settings.alpha * rank / coa.lora_settings.rank,
            lora_dropout=0.0,
            target_modules=[m.name for m in space.matrices],
            modules_to_save=list(heads) or None,  # PEFT extends this list in place
            fan_in_fan_out=any(m.transposed for m in space.matrices),
            task_type=PEFT_TASK[fresh.task],
        )
        # autocast_adapter_dtype (PEFT's default) makes the LoRA weights float32 on a bf16/fp16 base.
        peft_model = get_peft_model(base, lcfg, autocast_adapter_dtype=True)
        with torch.no_grad():
            for m in space.matrices:
                a, b = folded[m.name]
                layer = peft_model.base_model.model.get_submodule(m.name)
                for adapter, value in ((layer.lora_A["default"], a), (layer.lora_B["default"], b)):
                    adapter.float()
                    adapter.weight.copy_(value)
            for h in heads:
                trained = coa.model.get_submodule(_find(coa.model, h))
                target = peft_model.base_model.model.get_submodule(_find(base, h))
                # PEFT's copy of the head has the base's dtype; store the trained float32 head as is.
                copy = target.modules_to_save["default"]
                copy.to(dtype=next(trained.parameters()).dtype)
                copy.load_state_dict(trained.state_dict())
        peft_model.save_pretrained(tmp / "adapter")
        (tmp / "configuration.json").write_text(json.dumps(space.to_json(idx), indent=1))
        summary = {
            "config_id": space.config_id(idx),
            "avg_bits": float(space.average_bits(idx)),
            "model": fresh.name,
            "task": fresh.task,
            "rank": rank,
            "base_dtype": str(coa.compute_dtype).removeprefix("torch."),
            "adapter_dtype": "float32",
            "load": "PeftModel.from_pretrained(AutoModel...from_pretrained('<out>/base'), '<out>/adapter')",
            **(source or {}),
        }
        (tmp / "export.json").write_text(json.dumps(summary, indent=1))
    return final


def _find(model: torch.nn.Module, last: str) -> str:
    """Full path of the first module whose last path component is ``last``."""
    for n, _ in model.named_modules():
        if n.split(".")[-1] == last:
            return n
    raise KeyError(last)
