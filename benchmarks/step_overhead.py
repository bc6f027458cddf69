"""Cost of configuration awareness: a ``coa`` training step against a plain LoRA step.

Same model (MiniLM-L6 by default), same batch (32 × 64 tokens), same configuration, rank 16, one
thread. Measured side by side, round-robin, in one run:

- ``coa``: coalora's model with U_θ (cores computed in one batched call per step);
- ``plain``: coalora's model without U_θ (the ``shared`` / ``per-config`` baselines);
- ``peft``: a PEFT LoRA model on the same dequantized base (the reference implementation);
- ``qlora``: QLoRA as its users run it, the anchor users compare against: the model loaded through
  ``from_pretrained`` with ``BitsAndBytesConfig`` (NF4, double quantization, fp32 compute; heads and
  pooler left unquantized), ``prepare_model_for_kbit_training`` (no gradient checkpointing, so every
  arm runs the same graph), then PEFT LoRA on the same target modules. Its base is uniform NF4
  (4.127 bits), not the other arms' mixed configuration: it is a speed and memory anchor, and its
  rows say so. Skipped with one line when bitsandbytes is not installed;
- ``switch``: ``set_config`` to another configuration with a warm weight cache, plus the cores,
  as a fraction of a ``coa`` step.

Targets (issue #3): coa / plain ≤ 1.10; switch < 5 % of a step. ``ratio_to_coa`` is each step's median
over the ``coa`` step's. Memory (MiB): ``held`` is what the model keeps between steps (weights and
buffers, bitsandbytes' quantization state, coalora's dequantized-weight cache, AdamW state);
``step_extra`` is the extra peak of one step on top of it (see ``_bench.PeakMemory``: peak RSS on CPU).
The ``coa`` cache holds two configurations (the switch row's), ``plain``'s one.

    python benchmarks/step_overhead.py [--quick] [--json] [--model minilm-l6]
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from typing import Any, Callable


import _bench  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Modules QLoRA users keep out of 4-bit: task heads and the pooler (a head created fresh must not become
# an uninitialised Linear4bit: /work/shared/reference/environment.md §2). transformers 5 matches these
# as a prefix or a suffix of the full module name, so "pooler" alone misses "bert.pooler.dense":
# qlora_model adds every other linear layer outside the target matrices by its full name.
QLORA_SKIP = ["classifier", "pooler", "score", "lm_head"]


def qlora_model(base: torch.nn.Module, task: str, target_modules: list[str], rank: int) -> torch.nn.Module:
    """A PEFT LoRA model on a bitsandbytes NF4 base, loaded the way QLoRA users load one.

    ``base`` is saved and reloaded through ``from_pretrained(..., quantization_config=...)`` so that the
    weights (and a classification head) are the other arms' and the quantization is transformers' own.
    """
    import warnings

    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the save/load round trip's bars would only clutter the table
    targets = set(target_modules)
    others = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and n not in targets]
    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32, llm_int8_skip_modules=QLORA_SKIP + others,
    )
    auto = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    with tempfile.TemporaryDirectory(prefix="qlora-") as d:
        base.save_pretrained(d)
        model = auto.from_pretrained(d, quantization_config=bnb_config)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    if n4 != len(target_modules):  # the anchor must quantize exactly the matrices the other arms do
        raise RuntimeError(f"QLoRA base has {n4} Linear4bit layers, expected {len(target_modules)}")
    with warnings.catch_warnings():  # peft reads a transformers attribute that warns of its renaming
        warnings.simplefilter("ignore", FutureWarning)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return get_peft_model(model, LoraConfig(
            r=rank, lora_alpha=2 * rank, target_modules=target_modules,
            modules_to_save=["classifier"] if task == "classification" else None,
        ))


def held_bytes(model: torch.nn.Module, opt: torch.optim.Optimizer, extra: int = 0) -> int:
    """Bytes a model keeps between steps: parameters, buffers, bitsandbytes' quantization state
    (absmax, nested absmax, code tables: attributes of a 4-bit weight, not buffers), optimizer state."""
    tensors: list[Any] = [*model.parameters(), *model.buffers(), list(opt.state.values())]
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            tensors.append(qs.as_dict(packed=False))
    return _bench.tensor_bytes(tensors) + extra


def main() -> None:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    args = p.parse_args()
    _bench.setup_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    from coalora.model.hypernet import HypernetConfig
    from coalora.model.lora import CoaModel, LoraSettings
    from coalora.model.loading import load_model
    from coalora.core.quant import fake_quantize
    from coalora.core.space import QuantSpace

    repeats = 5 if args.quick else 20
    batch_size, length = (8, 32) if args.quick else (args.batch, args.length)

    def fresh():
        return load_model(args.model, seed=0)

    loaded = fresh()
    space = QuantSpace.from_model(loaded.model)
    rng = np.random.default_rng(0)
    cfg_a, cfg_b = space.sample_near(3.0, rng, 2)
    lora = LoraSettings(rank=args.rank, alpha=2 * args.rank)
    coa = CoaModel(loaded.model, space, lora, HypernetConfig())
    plain = CoaModel(fresh().model, space, lora, None)
    peft_base = fresh()
    with torch.no_grad():
        for m, row in zip(space.matrices, cfg_a):
            mod = peft_base.model.get_submodule(m.name)
            mod.weight.copy_(fake_quantize(mod.weight, space.option(row), family=space.family))
    peft_model = get_peft_model(
        peft_base.model,
        LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=[m.name for m in space.matrices],
                   modules_to_save=["classifier"] if loaded.task == "classification" else None),
    )
    with_bnb = importlib.util.find_spec("bitsandbytes") is not None
    qlora = None
    if with_bnb:
        qlora = qlora_model(fresh().model, loaded.task, [m.name for m in space.matrices], args.rank)
    else:
        print("bitsandbytes is not installed: the QLoRA row is skipped (pip install bitsandbytes)", file=sys.stderr)
    vocab = loaded.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(vocab, 20000), (batch_size, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = torch.randint(0, 2, (batch_size,), generator=g) if loaded.task == "classification" else ids

    def stepper(model: torch.nn.Module) -> tuple[Callable[[], None], torch.optim.Optimizer]:
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return step, opt

    coa.set_config(cfg_a)
    plain.set_config(cfg_a)
    coa.set_config(cfg_b)  # warm the cache for both configurations
    coa.set_config(cfg_a)
    state = {"cur": 0}
    cfgs = (cfg_a, cfg_b)

    def switch():
        state["cur"] ^= 1
        coa.set_config(cfgs[state["cur"]])
        with torch.no_grad():
            coa.cores()

    models: dict[str, torch.nn.Module] = {"coa": coa, "plain": plain, "peft": peft_model}
    if qlora is not None:
        models["qlora"] = qlora
    steps = {k: stepper(m) for k, m in models.items()}

    # All arms in one round-robin, so that load drift on a shared machine hits them alike.
    med = _bench.interleaved_medians({k: fn for k, (fn, _) in steps.items()}, repeats=repeats, warmup=2)
    sw = _bench.median_time(switch, repeats=max(repeats, 20), warmup=2)
    probe = _bench.PeakMemory("cpu")
    mib = 1024**2
    memory: dict[str, dict[str, Any]] = {}
    for k, (fn, opt) in steps.items():
        extra = probe.measure(fn)
        cache = models[k].cache.bytes if k in ("coa", "plain") else 0
        memory[k] = {"held_MiB": held_bytes(models[k], opt, cache) / mib,
                     "step_extra_MiB": "n/a" if extra is None else extra / mib}
    labels = {
        "coa": "coa step (U_θ, batched cores)",
        "plain": "plain LoRA step (coalora, no U_θ)",
        "peft": "PEFT LoRA step (same dequantized base)",
        "qlora": "QLoRA step (PEFT on bnb NF4 + double quant, 4.127 bits)",
    }
    rows: list[dict[str, Any]] = [
        {"what": labels[k], "median_s": med[k], "ratio_to_plain": med[k] / med["plain"],
         "ratio_to_coa": med[k] / med["coa"], **memory[k]}
        for k in models
    ]
    if qlora is None:
        rows.append({"what": labels["qlora"], "median_s": "skipped: bitsandbytes not installed"})
    rows.append({"what": "switch configuration (warm cache + cores)", "median_s": sw,
                 "ratio_to_plain": sw / med["plain"], "ratio_to_coa": sw / med["coa"]})
    _bench.emit(
        f"Step overhead: {args.model}, batch {batch_size}x{length}, rank {args.rank}, {args.threads} thread(s)",
        rows, args.json, {"repeats": repeats, "targets": "coa/plain <= 1.10; switch < 5% of a step",
                          "memory": probe.method},
    )


if __name__ == "__main__":
    main()
