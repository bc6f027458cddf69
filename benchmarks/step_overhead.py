"""Cost of configuration awareness: a ``coa`` training step against a plain LoRA step.

Same model (MiniLM-L6 by default), same batch (32 × 64 tokens), same configuration, rank 16, one
thread. Measured side by side, round-robin, in one run:

- ``coa``: coalora's model with U_θ (cores computed in one batched call per step);
- ``plain``: coalora's model without U_θ (the ``shared`` / ``per-config`` baselines);
- ``peft``: a PEFT LoRA model on the same dequantized base (the reference implementation);
- ``switch``: ``set_config`` to another configuration with a warm weight cache, plus the cores,
  as a fraction of a ``coa`` step.

Targets (issue #3): coa / plain ≤ 1.10; switch < 5 % of a step.

    python benchmarks/step_overhead.py [--quick] [--json] [--model minilm-l6]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    p = _bench.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm-l6")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=64)
    args = p.parse_args()
    _bench.setup_threads(args.threads)
    from peft import LoraConfig, get_peft_model

    from coalora.hypernet import HypernetConfig
    from coalora.lora import CoaModel, LoraSettings
    from coalora.models import load_model
    from coalora.quant import fake_quantize
    from coalora.space import QuantSpace

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
    vocab = loaded.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(vocab, 20000), (batch_size, length), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = torch.randint(0, 2, (batch_size,), generator=g) if loaded.task == "classification" else ids

    def stepper(model):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        model.train()

        def step():
            opt.zero_grad(set_to_none=True)
            model(**batch).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        return step

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

    steps = {"coa": stepper(coa), "plain": stepper(plain), "peft": stepper(peft_model)}

    med = _bench.interleaved_medians({"coa": steps["coa"], "plain": steps["plain"], "peft": steps["peft"]},
                                     repeats=repeats, warmup=2)
    sw = _bench.median_time(switch, repeats=max(repeats, 20), warmup=2)
    rows = [
        {"what": "coa step (U_θ, batched cores)", "median_s": med["coa"], "ratio_to_plain": med["coa"] / med["plain"]},
        {"what": "plain LoRA step (coalora, no U_θ)", "median_s": med["plain"], "ratio_to_plain": 1.0},
        {"what": "PEFT LoRA step (same dequantized base)", "median_s": med["peft"],
         "ratio_to_plain": med["peft"] / med["plain"]},
        {"what": "switch configuration (warm cache + cores)", "median_s": sw,
         "ratio_to_plain": sw / med["plain"], "fraction_of_coa_step": sw / med["coa"]},
    ]
    _bench.emit(
        f"Step overhead: {args.model}, batch {batch_size}x{length}, rank {args.rank}, {args.threads} thread(s)",
        rows, args.json, {"repeats": repeats, "targets": "coa/plain <= 1.10; switch < 5% of a step"},
    )


if __name__ == "__main__":
    main()
