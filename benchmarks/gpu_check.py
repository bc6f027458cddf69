"""Proof on a GPU: quantizer parity, whole-model quantization, bf16 train and eval steps against PEFT.

One run, one table (issue 12 §10). On a CUDA device, with the real shapes of RoBERTa-large and
Qwen2.5-3B (random weights from ``transformers`` configs: no download, no network):

- ``bit_exact``: ``fake_quantize`` and ``quantize`` (codes, scale codes, s1, offset) on the device equal
  the CPU's bit for bit, over every option of the default space (bits 2/3/4/8 × scale bits 2/3/4/8 ×
  scale2 dtype bf16/fp16/fp32 × block 16/32/64 × block2 16/64/256) × both codebook families (nf, int),
  on a float32 matrix, a float32 matrix whose size needs padding (192×576) and a bfloat16 matrix.
  Without CUDA this row says "skipped: no CUDA".
- ``quantize_config``: seconds to fake-quantize one whole configuration (about 3 bits, every matrix its
  own option) of a Qwen2.5-3B-shaped model: shapes from the model built on the ``meta`` device, random
  bf16 matrices of those shapes made on the device one at a time and freed after use.
- ``set_config/<model>``: the same through :class:`coalora.model.lora.CoaModel` (cold cache: every matrix
  quantized into the weight cache).
- ``train/<model>/{coa,peft}``: one bf16 training step (forward under autocast, backward, clip, AdamW;
  one configuration per step) of coalora's ``coa`` model (U_θ, the paper config's rank 64) against a
  PEFT LoRA model (same rank and alpha, same target modules) on the same bf16 base, fake-quantized
  with the same configuration, on the same batch: median step time, measured round-robin, and ratio
  coa/peft; memory: what the model holds (weights, coalora's dequantized-weight cache, optimizer
  state) plus the extra peak of one step (activations, gradients, temporaries).
- ``eval/<model>/{coa,peft}``: one no_grad forward of an evaluation batch under the configuration.

Columns: ``seconds`` is the median of round-robin repeats for train/eval rows and the one measured run
for the one-off rows (bit_exact, quantize_config, set_config); ``ratio`` is coa/peft on the same
batch; ``resident_MiB`` what the model holds between steps, ``extra_MiB`` one step's peak on top of
it, ``peak_MiB`` their sum (what the arm would need alone); ``n`` counts cases or matrices.

Batches: RoBERTa-large 16×128 (train), 128×128 (eval), as configs/roberta-large-*.yaml; Qwen2.5-3B
1×1024 (train), 2×1024 (eval), as configs/qwen2.5-3b-c4.yaml. Memory is in MiB: on CUDA from the
caching allocator's counters (tensor bytes); on CPU from the process's peak resident set (see
``_bench.PeakMemory``). ``--device cpu --quick`` runs tiny shapes (a smoke check, under a minute);
``--device cpu`` without ``--quick`` would run the real shapes on the CPU (tens of GB, very slow).

Imports only torch, numpy, scipy, PyYAML, tqdm and coalora's library modules (no Ray); transformers
and peft where present: a missing one is one line on stderr and "skipped: ..." rows, never a crash.

    python benchmarks/gpu_check.py [--device cuda] [--quick] [--json] [--json-out FILE] [--models ...]
"""

from __future__ import annotations

import copy
import gc
import importlib.metadata
import importlib.util
import itertools
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


import _bench  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from coalora.core.quant import fake_quantize, quantize  # noqa: E402
from coalora.core.space import DEFAULT_OPTIONS, FAMILIES, KNOBS, QuantOption, QuantSpace, TargetMatrix  # noqa: E402

MIB = 1024**2
DTYPE = torch.bfloat16
TITLE = "GPU check: quantizer parity, whole-model quantization, bf16 coa vs PEFT LoRA steps"

# Published dimensions (the models' config.json on the Hugging Face hub).
QWEN25_3B: dict[str, Any] = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
    num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=32768,
    tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6,
)
ROBERTA_LARGE: dict[str, Any] = dict(
    vocab_size=50265, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
    intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
    layer_norm_eps=1e-5,
)
# --quick: same architectures, tiny (the quantize_config row uses a scaled-down Qwen2 instead).
QWEN_TINY: dict[str, Any] = {**QWEN25_3B, "vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "max_position_embeddings": 256}
QWEN_SCALED: dict[str, Any] = {**QWEN25_3B, "vocab_size": 1024, "hidden_size": 256, "intermediate_size": 1376,
                               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1}
ROBERTA_TINY: dict[str, Any] = {**ROBERTA_LARGE, "vocab_size": 512, "hidden_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 130}

COLUMNS = ("id", "what", "seconds", "ratio", "resident_MiB", "extra_MiB", "peak_MiB", "n", "result")


def log(msg: str) -> None:
    """Progress on stderr (stdout carries only the table or the JSON)."""
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class ModelCase:
    """One model of the train/eval rows.

    ``arch``: ``"roberta"`` (sequence classifier, 2 labels) or ``"qwen2"`` (causal LM); ``hf``: the
    transformers config's keyword arguments; batches are ``(batch, length)`` token ids.
    """

    name: str
    arch: str
    hf: dict[str, Any]
    train_batch: tuple[int, int]
    eval_batch: tuple[int, int]
    rank: int
    alpha: float

    @property
    def task(self) -> str:
        return "classification" if self.arch == "roberta" else "causal-lm"


def model_cases(quick: bool) -> list[ModelCase]:
    if quick:
        return [
            ModelCase("roberta-large", "roberta", ROBERTA_TINY, (4, 32), (8, 32), 8, 16.0),
            ModelCase("qwen2.5-3b", "qwen2", QWEN_TINY, (1, 64), (2, 64), 8, 16.0),
        ]
    # Rank 64, alpha 16: configs/roberta-large-*.yaml and configs/qwen2.5-3b-c4.yaml.
    return [
        ModelCase("roberta-large", "roberta", ROBERTA_LARGE, (16, 128), (128, 128), 64, 16.0),
        ModelCase("qwen2.5-3b", "qwen2", QWEN25_3B, (1, 1024), (2, 1024), 64, 16.0),
    ]


def hf_config(arch: str, kwargs: dict[str, Any]) -> Any:
    from transformers import Qwen2Config, RobertaConfig

    if arch == "roberta":
        return RobertaConfig(num_labels=2, **kwargs)
    return Qwen2Config(**kwargs)


def build_model(arch: str, kwargs: dict[str, Any], device: torch.device | str, seed: int = 0) -> torch.nn.Module:
    """A random bf16 model built directly on ``device`` (``meta``: shapes only, no memory)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # no "initialised from scratch" notices: random weights are the point
    auto = AutoModelForSequenceClassification if arch == "roberta" else AutoModelForCausalLM
    torch.manual_seed(seed)
    with torch.device(device):
        model = auto.from_config(hf_config(arch, kwargs), dtype=DTYPE)
    return model.eval()


# ---------------------------------------------------------------------- 1. bit for bit
def bit_exact_matrices(quick: bool) -> list[tuple[str, torch.Tensor]]:
    """``(label, CPU weight)``: a plain float32 matrix, one whose size needs padding (not a multiple of
    ``block·block2`` = 64·256) and a bfloat16 one (the models' dtype)."""
    g = torch.Generator().manual_seed(0)
    shapes = [(128, 128), (24, 72), (128, 128)] if quick else [(256, 384), (192, 576), (256, 384)]
    out = []
    for (r, c), dtype in zip(shapes, (torch.float32, torch.float32, torch.bfloat16)):
        w = (torch.randn((r, c), generator=g) * 0.02).to(dtype)
        w[0, :5] = torch.tensor([0.0, -0.0, 1e-8, -0.3, 0.3])  # zeros, a denormal-ish value, outliers
        pad = (r * c) % (64 * 256) != 0
        out.append((f"{r}x{c} {str(dtype).removeprefix('torch.')}{' (padded)' if pad else ''}", w))
    return out


def all_options(options: dict[str, tuple[Any, ...]] | None = None) -> list[QuantOption]:
    opts = options or DEFAULT_OPTIONS
    return [QuantOption(*vals) for vals in itertools.product(*(opts[k] for k in KNOBS))]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtype, shape and bit pattern (so 0.0 ≠ -0.0 and NaN payloads count), on the CPU."""
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        a, b = a.view(as_int), b.view(as_int)
    return torch.equal(a, b)


def check_bit_exact(
    device: torch.device | str,
    matrices: Iterable[tuple[str, torch.Tensor]],
    families: Iterable[str] = FAMILIES,
    options: Iterable[QuantOption] | None = None,
) -> tuple[int, list[str]]:
    """Compare the quantizer on ``device`` with the CPU: ``(cases checked, mismatches)``.

    A case is one (matrix, family, option); it passes when ``fake_quantize`` (in the matrix's dtype)
    and every stored field of ``quantize`` are bit-identical. Mismatches are described in words.
    """
    device = torch.device(device)
    opts = list(options) if options is not None else all_options()
    n, bad = 0, []
    for label, w in matrices:
        w_dev = w.to(device)
        for family in families:
            for opt in opts:
                n += 1
                diffs = []
                if not same_bits(fake_quantize(w, opt, family), fake_quantize(w_dev, opt, family)):
                    diffs.append("fake_quantize")
                ref, got = quantize(w, opt, family), quantize(w_dev, opt, family)
                diffs += [f for f in ("codes", "scale_codes", "s1", "offset")
                          if not same_bits(getattr(ref, f), getattr(got, f))]
                if diffs:
                    bad.append(f"{label} {family} {opt.as_dict()}: {', '.join(diffs)} differ")
    return n, bad


def bit_exact_row(device: torch.device, quick: bool) -> dict[str, Any]:
    row: dict[str, Any] = {"id": "bit_exact", "what": "fake_quantize + quantize on the device == CPU, bit for bit"}
    if device.type != "cuda":
        return {**row, "result": "skipped: no CUDA"}
    mats = bit_exact_matrices(quick)
    t0 = time.perf_counter()
    n, bad = check_bit_exact(device, mats)
    row.update(seconds=time.perf_counter() - t0, n=n)
    if bad:
        for b in bad[:20]:
            log("mismatch: " + b)
        return {**row, "result": f"FAIL: {len(bad)} of {n} differ; first: {bad[0]}"}
    return {**row, "result": f"pass: {n} cases ({len(mats)} matrices x {len(FAMILIES)} families x "
                             f"{n // (len(mats) * len(FAMILIES))} options)"}


# ---------------------------------------------------------------------- 2. one whole configuration
def qwen_shapes(kwargs: dict[str, Any]) -> list[TargetMatrix]:
    """The target matrices of a Qwen2 model with these dimensions, found in the model itself (built on
    the ``meta`` device: shapes, no memory); the Qwen2 formula when transformers is missing."""
    if have("transformers"):
        return QuantSpace.from_model(build_model("qwen2", kwargs, "meta")).matrices
    log("transformers is not installed: Qwen2 shapes from the architecture's formula")
    h, i = kwargs["hidden_size"], kwargs["intermediate_size"]
    kv = kwargs["num_key_value_heads"] * (h // kwargs["num_attention_heads"])
    per_layer = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (kv, h), "self_attn.v_proj": (kv, h),
                 "self_attn.o_proj": (h, h), "mlp.gate_proj": (i, h), "mlp.up_proj": (i, h),
                 "mlp.down_proj": (h, i)}
    return [TargetMatrix(f"model.layers.{l}.{t}", l, t, s)
            for l in range(kwargs["num_hidden_layers"]) for t, s in per_layer.items()]


def quantize_config_row(device: torch.device, quick: bool) -> dict[str, Any]:
    kwargs = QWEN_SCALED if quick else QWEN25_3B
    space = QuantSpace(qwen_shapes(kwargs))
    cfg = space.sample_near(3.0, np.random.default_rng(0), 1)[0]
    g = torch.Generator(device=device).manual_seed(0)
    # Warm-up: CUDA context, kernels and every codebook's lookup tables on the device.
    warm = torch.randn((256, 256), device=device, dtype=DTYPE, generator=g)
    for b in space.options["bits"]:
        fake_quantize(warm, QuantOption(b, 8, "fp32", 64, 256), space.family)
    del warm
    sync = _bench.synced(lambda: None, device)
    total = 0.0
    for m, row in zip(space.matrices, cfg):
        w = torch.randn(m.shape, device=device, dtype=DTYPE, generator=g).mul_(0.02)
        option = space.option(row)
        sync()
        t0 = time.perf_counter()
        q = fake_quantize(w, option, space.family, dtype=DTYPE)
        sync()
        total += time.perf_counter() - t0
        del w, q  # one matrix at a time: the whole model never sits on the device
    mparams = space.total_params / 1e6
    label = "Qwen2.5-3B" if not quick else "a scaled-down Qwen2"
    return {"id": "quantize_config", "n": space.n_matrices, "seconds": total,
            "what": f"fake_quantize a {float(space.average_bits(cfg)):.2f}-bit configuration of {label}, "
                    f"{mparams:.0f} Mparams",
            "result": f"{mparams / total:.0f} Mparams/s"}


# ---------------------------------------------------------------------- 3-4. train and eval steps
@dataclass
class Arm:
    """One side of the comparison: a model, its train step and eval forward, its held memory."""

    name: str
    model: torch.nn.Module
    step: Callable[[], None]
    evaluate: Callable[[], None]
    held: Callable[[], int]
    extra: dict[str, Any] = field(default_factory=dict)


def make_batch(case: ModelCase, shape: tuple[int, int], device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, n = shape
    ids = torch.randint(3, case.hf["vocab_size"], (b, n), generator=g)  # 0-2: special tokens (pad 1)
    labels = torch.randint(0, 2, (b,), generator=g) if case.task == "classification" else ids
    return {k: v.to(device) for k, v in
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}.items()}


def make_step(model: torch.nn.Module, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
              batch: dict[str, torch.Tensor], autocast: Callable[[], Any]) -> Callable[[], None]:
    """One training step as coalora.pipeline.train runs it (float32 loss, backward outside autocast, clip 1.0)."""

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model(**batch).loss.float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return step


def make_eval(model: torch.nn.Module, batch: dict[str, torch.Tensor],
              autocast: Callable[[], Any]) -> Callable[[], None]:
    """One evaluation forward (no_grad, eval mode, loss included as the evaluators compute it)."""

    def evaluate() -> None:
        model.eval()
        with torch.no_grad(), autocast():
            model(**batch).loss.float()

    return evaluate


def coa_arm(base: torch.nn.Module, space: QuantSpace, cfg: np.ndarray, case: ModelCase, device: torch.device,
            train_batch: dict[str, torch.Tensor], eval_batch: dict[str, torch.Tensor]) -> Arm:
    import contextlib

    from coalora.pipeline.config import TrainSection
    from coalora.model.hypernet import HypernetConfig
    from coalora.model.lora import CoaModel, LoraSettings
    from coalora.model.memory import plan_memory
    from coalora.pipeline.train import make_optimizer, trainable_parameters

    torch.manual_seed(0)
    coa = CoaModel(base, space, LoraSettings(rank=case.rank, alpha=case.alpha), HypernetConfig(), cache_bytes=0)
    coa.to(device)  # never .to(dtype): the base stays bf16, trainables fp32
    try:
        coa.memory_plan = plan_memory(coa, device, fraction=0.5, training=True)
        coa.cache.max_bytes = coa.memory_plan.cache
        log(coa.memory_plan.describe())
    except ImportError as e:  # psutil (host memory) missing on a CPU run
        log(f"cannot plan memory ({e}); cache bounded at 2 GiB")
        coa.cache.max_bytes = 2 * 1024**3
    sync = _bench.synced(lambda: None, device)
    sync()
    t0 = time.perf_counter()
    coa.set_config(cfg)
    sync()
    cold = time.perf_counter() - t0
    opt = make_optimizer(coa, TrainSection(lr=1e-4))
    # CoaModel.forward enters its own autocast; a second, outer one would change nothing.
    step = make_step(coa, trainable_parameters(coa), opt, train_batch, contextlib.nullcontext)
    evaluate = make_eval(coa, eval_batch, contextlib.nullcontext)

    def held() -> int:
        return _bench.tensor_bytes([*coa.parameters(), *coa.buffers()]) + coa.cache.bytes + \
            _bench.tensor_bytes(list(opt.state.values()))

    return Arm("coa", coa, step, evaluate, held, {"set_config_s": cold, "cache_MiB": coa.cache.bytes / MIB})


def peft_arm(base: torch.nn.Module, space: QuantSpace, cfg: np.ndarray, case: ModelCase, device: torch.device,
             train_batch: dict[str, torch.Tensor], eval_batch: dict[str, torch.Tensor]) -> Arm:
    from peft import LoraConfig, get_peft_model

    from coalora.model.lora import autocast_for

    with torch.no_grad():  # the same quantized base as the coa model's cache holds, bit for bit
        for m, row in zip(space.matrices, cfg):
            mod = base.get_submodule(m.name)
            mod.weight.copy_(fake_quantize(mod.weight, space.option(row), space.family, dtype=mod.weight.dtype))
    torch.manual_seed(0)
    model = get_peft_model(base, LoraConfig(
        r=case.rank, lora_alpha=case.alpha, target_modules=[m.name for m in space.matrices],
        modules_to_save=["classifier"] if case.task == "classification" else None,
    ))
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # as coalora: every trainable in float32 (PEFT already keeps its LoRA in fp32)
        if p.dtype != torch.float32:
            p.data = p.data.float()
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    autocast = lambda: autocast_for(device, DTYPE)  # noqa: E731

    def held() -> int:
        return _bench.tensor_bytes([*model.parameters(), *model.buffers()]) + \
            _bench.tensor_bytes(list(opt.state.values()))

    return Arm("peft", model, make_step(model, params, opt, train_batch, autocast),
               make_eval(model, eval_batch, autocast), held)


def measure_arms(arms: list[Arm], what: str, device: torch.device, repeats: int, warmup: int,
                 probe: _bench.PeakMemory) -> dict[str, dict[str, float | None]]:
    """Round-robin medians of ``arm.step``/``arm.evaluate``, then one more call each for its peak."""
    fns = {a.name: _bench.synced(getattr(a, what), device) for a in arms}
    med = _bench.interleaved_medians(fns, repeats=repeats, warmup=warmup)
    out: dict[str, dict[str, float | None]] = {}
    for a in arms:
        extra = probe.measure(fns[a.name])
        held = a.held()
        out[a.name] = {"seconds": med[a.name], "resident_MiB": held / MIB,
                       "extra_MiB": None if extra is None else extra / MIB,
                       "peak_MiB": None if extra is None else (held + extra) / MIB}
    return out


def model_rows(case: ModelCase, device: torch.device, quick: bool, probe: _bench.PeakMemory) -> list[dict[str, Any]]:
    repeats, warmup = (3, 1) if quick else (10, 2)
    log(f"{case.name}: building the bf16 model on {device}")
    base = build_model(case.arch, case.hf, device)
    space = QuantSpace.from_model(base)
    cfg = space.sample_near(3.0, np.random.default_rng(1), 1)[0]
    train_batch = make_batch(case, case.train_batch, device, seed=1)
    eval_batch = make_batch(case, case.eval_batch, device, seed=2)
    with_peft = have("peft")
    peft_base = copy.deepcopy(base) if with_peft else None  # before wrapping: CoaModel edits in place
    arms = [coa_arm(base, space, cfg, case, device, train_batch, eval_batch)]
    if with_peft:
        arms.append(peft_arm(peft_base, space, cfg, case, device, train_batch, eval_batch))
    else:
        log("peft is not installed: PEFT rows skipped")
    del base, peft_base
    b, n = case.train_batch
    eb, en = case.eval_batch
    tiny = " (tiny shapes)" if quick else ""
    rows: list[dict[str, Any]] = [{
        "id": f"set_config/{case.name}", "seconds": arms[0].extra["set_config_s"], "n": space.n_matrices,
        "what": f"coa set_config, cold cache: {space.n_matrices} matrices, "
                f"{float(space.average_bits(cfg)):.2f} bits{tiny}",
        "result": f"cache {arms[0].extra['cache_MiB']:.3g} MiB",
    }]
    for what, label, shape in (("step", "train", f"{b}x{n}"), ("evaluate", "eval", f"{eb}x{en}")):
        log(f"{case.name}: {label} ({repeats} round-robin repeats)")
        res = measure_arms(arms, what, device, repeats, warmup, probe)
        for a in arms:
            r = res[a.name]
            ratio = r["seconds"] / res["peft"]["seconds"] if "peft" in res else ""
            kind = "coalora U_θ + LoRA" if a.name == "coa" else "PEFT LoRA"
            rows.append({"id": f"{label}/{case.name}/{a.name}", **r, "ratio": ratio,
                         "what": f"{label} {shape} bf16, {kind}, rank {case.rank}{tiny}"})
        if not with_peft:
            rows.append({"id": f"{label}/{case.name}/peft", "result": "skipped: peft not installed",
                         "what": f"{label} {shape} bf16, PEFT LoRA, rank {case.rank}{tiny}"})
    return rows


# ---------------------------------------------------------------------- driver
def guarded(ids: list[str], fn: Callable[[], list[dict[str, Any]]], device: torch.device) -> list[dict[str, Any]]:
    """``fn()``'s rows, or one error row per id: a failed part (out of memory, a library API that moved)
    must not cost the rest of a one-shot GPU run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - reported in the table and on stderr
        traceback.print_exc()
        msg = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        return [{"id": i, "what": "", "result": f"error: {msg}"} for i in ids]
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def meta_info(device: torch.device, probe: _bench.PeakMemory, started: float) -> dict[str, Any]:
    info: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "dtype": "bfloat16",
                            "memory": probe.method, "total_seconds": round(time.perf_counter() - started, 1)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_total_GiB"] = round(torch.cuda.get_device_properties(device).total_memory / 1024**3, 1)
    for dist in ("transformers", "peft"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = "not installed"
    if hasattr(os, "getloadavg"):
        info["loadavg"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return info


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = _bench.parser(TITLE)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda (default where available) or cpu")
    p.add_argument("--models", default="roberta-large,qwen2.5-3b",
                   help="comma-separated subset of the train/eval models (empty: none)")
    p.add_argument("--json-out", default=None, help="also write the JSON here, after every part")
    args = p.parse_args(argv)
    _bench.setup_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here (use --device cpu)")
    if device.type == "cpu" and not args.quick:
        log("warning: real model shapes on the CPU need tens of GB and hours; --quick runs tiny ones")
    started = time.perf_counter()
    probe = _bench.PeakMemory(device)
    rows: list[dict[str, Any]] = []

    def record(new: list[dict[str, Any]]) -> None:
        rows.extend(new)
        if args.json_out:
            _bench.write_json(args.json_out, TITLE, rows, meta_info(device, probe, started))

    log("bit_exact")
    record(guarded(["bit_exact"], lambda: [bit_exact_row(device, args.quick)], device))
    log("quantize_config")
    record(guarded(["quantize_config"], lambda: [quantize_config_row(device, args.quick)], device))
    wanted = [m for m in args.models.split(",") if m]
    for case in model_cases(args.quick):
        if case.name not in wanted:
            continue
        ids = [f"set_config/{case.name}"] + [f"{s}/{case.name}/{a}" for s in ("train", "eval") for a in ("coa", "peft")]
        if not have("transformers"):
            log("transformers is not installed: train/eval rows skipped")
            record([{"id": i, "what": "", "result": "skipped: transformers not installed"} for i in ids])
            continue
        record(guarded(ids, lambda c=case: model_rows(c, device, args.quick, probe), device))
    table = [{c: r.get(c, "") for c in COLUMNS} for r in rows]
    for r in table:  # None (no memory reading here) prints as "n/a", never as a number
        for c in ("extra_MiB", "peak_MiB"):
            if r[c] is None:
                r[c] = "n/a"
    title = f"{TITLE} ({'tiny shapes, ' if args.quick else ''}{device.type})"
    _bench.emit(title, table, args.json, meta_info(device, probe, started))
    return table


if __name__ == "__main__":
    main()
