"""Block-wise NormalFloat / integer quantizer with double-quantized scales (docs/architecture.md §2.2).

One weight matrix ``W`` of shape ``(out, in)`` and one :class:`~coalora.core.space.QuantOption`
``(bits, scale_bits, scale2_dtype, block, block2)`` give:

1. ``W`` flattened row-major and cut into blocks of ``block`` consecutive weights; first-level scale
   ``s0`` = absmax of each block, shape ``(n_blocks,)``.
2. ``off = min(s0)`` (one fp32 scalar per matrix, not counted in the storage formula).
3. The shifted scales ``s0 - off >= 0`` in groups of ``block2``; group scale ``s1 = max`` of the
   group, stored in ``scale2_dtype`` (bf16/fp16/fp32), shape ``(n_groups,)``.
4. Scale codes ``q0 = clamp(round((s0 - off)·L/s1), 0, L)`` with ``L = 2**scale_bits - 1``
   (unsigned, ``scale_bits`` wide); the dequantized scale is ``ŝ0 = off + q0·(s1/L)``.
5. Weight codes: the nearest codebook level of ``W/ŝ0``, i.e. ``torch.bucketize`` on the level
   midpoints (computed by an exact, faster equivalent: :func:`_nearest_codes`; never a dense argmin).
   Because ``ŝ0`` is rounded, ``|W/ŝ0|`` may exceed 1; such values get the end codes.
6. ``Ŵ = level[code]·ŝ0``.

What is stored (``bits`` per weight, ``scale_bits`` per block, one ``scale2_dtype`` value per group)
is exactly ``option.storage_bits × numel`` when ``numel`` is a multiple of ``block·block2``.

Padding (numel not a multiple of ``block·block2``, e.g. SmolLM2's 192×576): the flattened weight is
padded with zeros up to the next multiple of ``block·block2``. Zeros in the last partial block do not
change its absmax. Blocks made *only* of padding are left out of the offset (the minimum over real
blocks), so they neither lower the offset nor raise any group scale; their codes are stored
(packing needs whole groups) and counted by :meth:`QuantizedMatrix.storage_bits`. Dequantizing drops
the padding.

Codebooks (``family``):

- ``"nf"``: QLoRA's asymmetric NormalFloat construction generalised to any ``k`` in 1..8
  (:func:`nf_codebook`); NF4 equals bitsandbytes' NF4 table.
- ``"int"``: ``2**k`` levels evenly spaced on ``[-1, 1]`` (:func:`int_codebook`). Symmetric, every
  code used and the block absmax lands exactly on an end level; the price is no exact zero (the
  levels nearest 0 are ``±1/(2**k - 1)``).

All compute is float32; dequantized weights are cast to the requested dtype at the end.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from scipy.special import ndtri

from coalora.core.space import DTYPE_BITS, FAMILIES, QuantOption
from coalora.errors import QuantError

__all__ = [
    "NF_OFFSET",
    "SCALE2_DTYPES",
    "QuantError",
    "QuantizedMatrix",
    "codebook",
    "fake_quantize",
    "int_codebook",
    "nf_codebook",
    "pack_codes",
    "quantization_error",
    "quantize",
    "unpack_codes",
]

# QLoRA's quantile range: the outermost NF levels are the 1-0.9677083 and 0.9677083 quantiles of N(0,1).
NF_OFFSET = 0.9677083
SCALE2_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_PACK_FORMAT_VERSION = 1
_META_FIELDS = (
    "version", "out", "in", "bits", "scale_bits", "scale2_dtype", "block", "block2", "family", "pad",
)
_PACK_KEYS = ("codes", "scale_codes", "offset", "s1", "meta")


# ---------------------------------------------------------------------- codebooks
def _check_code_bits(k: object, what: str = "bits") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= int(k) <= 8:
        raise QuantError(f"{what} must be an integer between 1 and 8, got {k!r}")
    return int(k)


@functools.lru_cache(maxsize=None)
def _nf_levels(k: int) -> torch.Tensor:
    half = 2 ** (k - 1)
    # Negative side: 2^(k-1) quantiles on [1-offset, 0.5] (ends with the 0.5 quantile, the exact 0).
    # Positive side: 2^(k-1)+1 quantiles on [0.5, offset]; its 0.5 duplicates the zero and is dropped.
    # For k=1 the negative side is the single point 1-offset, so NF1 = [-1, 1] (no zero level).
    neg = ndtri(np.linspace(1.0 - NF_OFFSET, 0.5, half))
    pos = ndtri(np.linspace(0.5, NF_OFFSET, half + 1))[1:]
    v = np.concatenate([neg, pos])
    v = v / v.max()  # ppf(1-offset) = -ppf(offset): the extremes become -1 and 1 (float64 compute)
    return torch.from_numpy(np.sort(v)).to(torch.float32)


@functools.lru_cache(maxsize=None)
def _int_levels(k: int) -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 2**k, dtype=torch.float64).to(torch.float32)


def nf_codebook(k: int) -> torch.Tensor:
    """NormalFloat-k levels, shape ``(2**k,)``, float32, sorted, extremes exactly -1 and 1.

    For ``k >= 2``: ``2**(k-1) - 1`` negative levels, an exact 0, ``2**(k-1)`` positive levels
    (QLoRA's asymmetric layout). ``nf_codebook(4)`` is bitsandbytes' NF4 table.
    """
    return _nf_levels(_check_code_bits(k, "codebook bits")).clone()


def int_codebook(k: int) -> torch.Tensor:
    """Uniform integer levels, shape ``(2**k,)``: ``2**k`` points evenly spaced on ``[-1, 1]``."""
    return _int_levels(_check_code_bits(k, "codebook bits")).clone()


def _check_family(family: object) -> str:
    if family not in FAMILIES:
        raise QuantError(f"quantizer family {family!r} is not one of {list(FAMILIES)}")
    return str(family)


def codebook(bits: int, family: str = "nf") -> torch.Tensor:
    """The ``(2**bits,)`` levels of ``family`` (``"nf"`` or ``"int"``)."""
    return nf_codebook(bits) if _check_family(family) == "nf" else int_codebook(bits)


@functools.lru_cache(maxsize=None)
def _grid(family: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels ``(2**bits,)``, midpoints ``(2**bits - 1,)``), cached: built once per process."""
    levels = _nf_levels(bits) if family == "nf" else _int_levels(bits)
    return levels, (levels[1:] + levels[:-1]) * 0.5


# ---------------------------------------------------------------------- validation and layout
def _check_option(option: object) -> QuantOption:
    if not isinstance(option, QuantOption):
        raise QuantError(f"option must be a coalora.core.space.QuantOption, got {type(option).__name__}")
    _check_code_bits(option.bits, "bits")
    _check_code_bits(option.scale_bits, "scale_bits")
    if option.scale2_dtype not in SCALE2_DTYPES:
        raise QuantError(f"scale2_dtype {option.scale2_dtype!r} is not one of {sorted(SCALE2_DTYPES)}")
    for knob in ("block", "block2"):
        v = getattr(option, knob)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise QuantError(f"{knob} must be a positive integer, got {v!r}")
    return option


def _check_weight(w: object) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise QuantError(f"weight must be a torch.Tensor, got {type(w).__name__}")
    if w.ndim != 2:
        raise QuantError(f"weight must be 2-D (out_features, in_features), got shape {tuple(w.shape)}")
    if not w.is_floating_point():
        raise QuantError(f"weight must be a floating-point tensor, got {w.dtype}")
    if w.numel() == 0:
        raise QuantError(f"weight is empty (shape {tuple(w.shape)})")
    return w


@dataclass(frozen=True)
class _Layout:
    """Sizes of one quantized matrix: ``n`` real weights padded to ``n_pad = n_groups·block2·block``."""

    n: int
    block: int
    block2: int
    n_pad: int
    n_blocks: int
    n_real_blocks: int
    n_groups: int

    @classmethod
    def of(cls, n: int, option: QuantOption) -> "_Layout":
        per_group = option.block * option.block2
        n_groups = -(-n // per_group)
        return cls(
            n=n,
            block=option.block,
            block2=option.block2,
            n_pad=n_groups * per_group,
            n_blocks=n_groups * option.block2,
            n_real_blocks=-(-n // option.block),
            n_groups=n_groups,
        )


# ---------------------------------------------------------------------- the quantizer core
def _as_blocks(w: torch.Tensor, lay: _Layout) -> torch.Tensor:
    """``(out, in)`` → float32 ``(n_blocks, block)``; a view when no padding or cast is needed."""
    flat = w.detach().reshape(-1).to(torch.float32)
    if lay.n_pad != lay.n:
        flat = torch.nn.functional.pad(flat, (0, lay.n_pad - lay.n))
    return flat.view(lay.n_blocks, lay.block)


def _scale_step(s1: torch.Tensor, scale_bits: int) -> torch.Tensor:
    """Value of one scale-code step per group: ``s1/(2**scale_bits - 1)``, float32 ``(n_groups,)``."""
    # The divisor is a tensor on s1's device, not a Python number: CUDA turns division by a CPU scalar
    # into a multiplication by its reciprocal, which can be one bit off and would make GPU and CPU
    # scales differ. Every other op here is exact or correctly rounded on both.
    steps = torch.full((), float(2**scale_bits - 1), dtype=torch.float32, device=s1.device)
    return s1.to(torch.float32) / steps


def _dequantize_scales(
    q0: torch.Tensor, s1: torch.Tensor, offset: torch.Tensor, option: QuantOption
) -> torch.Tensor:
    """``ŝ0 = off + q0·s1/L``: codes ``(n_blocks,)``, s1 ``(n_groups,)`` → float32 ``(n_blocks,)``."""
    step = _scale_step(s1, option.scale_bits)
    s_hat = q0.view(step.numel(), -1).to(torch.float32) * step[:, None]
    return s_hat.add_(offset).view(-1)


def _double_quantize(
    s0: torch.Tensor, lay: _Layout, option: QuantOption
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-level scales ``(n_blocks,)`` → (scale codes uint8 ``(n_blocks,)``,
    s1 ``(n_groups,)`` in ``scale2_dtype``, offset fp32 0-d)."""
    if not bool(torch.isfinite(s0).all()):
        # A NaN/inf weight makes its block's absmax non-finite: checking the scales is a cheap proxy.
        raise QuantError("weight contains NaN or infinite values")
    # The offset ignores pure-padding blocks (absmax 0): their shifted scale is then negative, which
    # leaves every group max s1 alone (each group holds a real block) and clamps to scale code 0.
    offset = s0[: lay.n_real_blocks].min()
    shifted = (s0 - offset).view(lay.n_groups, lay.block2)
    s1 = shifted.amax(dim=1).to(SCALE2_DTYPES[option.scale2_dtype])
    if not bool(torch.isfinite(s1).all()):
        raise QuantError(
            f"a second-level scale ({float(shifted.max()):.4g}) overflows {option.scale2_dtype}; "
            "use a wider scale2_dtype"
        )
    # q0 is computed against the *stored* (rounded) s1, so that dequantizing reproduces ŝ0 exactly.
    step = _scale_step(s1, option.scale_bits)
    # A zero step means the group's shifted scales are all <= 0 or so small that s1 underflowed in
    # scale2_dtype (< 1e-7): dividing them by 1 instead of 0 rounds them to code 0, as it should.
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q0 = torch.round(shifted / safe[:, None]).clamp_(0, 2**option.scale_bits - 1).to(torch.uint8)
    return q0.view(-1), s1, offset


@dataclass(frozen=True)
class _Tables:
    """One codebook's lookup tensors on one device.

    ``levels``: float32 ``(2**bits,)``. The rest is an exact accelerated ``bucketize`` (see
    :func:`_nearest_codes`): ``cells`` (a power of two) equal cells cover ``[-1, 1]``; ``start[j]``
    (int32 ``(cells,)``) is the number of midpoints below every ``x`` that can land in cell ``j``;
    ``mid_ext`` (float32 ``(2**bits,)``) is the midpoints followed by ``+inf``.
    """

    levels: torch.Tensor
    cells: int
    start: torch.Tensor
    mid_ext: torch.Tensor


# Slack on the cell bounds, far above the fp32 rounding of ``(x + 1)·cells/2`` (<= 2**-23 in x units).
_CELL_SLACK = 1e-6
_CPU = torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _tables(family: str, bits: int, device: torch.device = _CPU) -> _Tables:
    if device != _CPU:
        cpu = _tables(family, bits, _CPU)
        return _Tables(cpu.levels.to(device), cpu.cells, cpu.start.to(device), cpu.mid_ext.to(device))
    levels, midpoints = _grid(family, bits)
    m = midpoints.double().numpy()
    cells = 256
    while True:
        j = np.arange(cells, dtype=np.float64)
        lo = -1.0 + j * (2.0 / cells) - _CELL_SLACK
        hi = -1.0 + (j + 1.0) * (2.0 / cells) + _CELL_SLACK
        lo[0], hi[-1] = -np.inf, np.inf  # the end cells also take everything beyond ±1 (clamped)
        start = np.searchsorted(m, lo, side="left")  # midpoints < lo
        # One correction step is exact iff no cell's x-range holds two midpoints.
        if int((np.searchsorted(m, hi, side="left") - start).max()) <= 1:
            break
        cells *= 2
        if cells > 2**20:  # unreachable for NF/INT codebooks of 1..8 bits (NF8 needs 512 cells)
            raise QuantError(f"{family}{bits} codebook levels are too close for the search table")
    mid_ext = torch.cat([midpoints, torch.tensor([float("inf")])])
    return _Tables(levels, cells, torch.from_numpy(start.astype(np.int32)), mid_ext)


def _nearest_codes(x: torch.Tensor, family: str, bits: int) -> torch.Tensor:
    """``torch.bucketize(x, midpoints, out_int32=True)`` (codes of the nearest levels), 2-4× faster.

    ``x``: float32, any shape → int32 codes of the same shape. A cell lookup gives the number of
    midpoints surely below ``x``; one comparison against the next midpoint finishes the count. Ties
    (``x`` exactly on a midpoint) go to the lower code, as in ``bucketize``. torch's ``bucketize``
    is a scalar binary search (about 30 ns per weight for 16 levels, 65 ns for 256 on our CPUs),
    whereas these are five vectorised passes whatever the width.
    """
    t = _tables(family, bits, x.device)
    half = t.cells / 2
    # (x + 1)·cells/2 as one pass; cells is a power of two, so only the add rounds.
    base = torch.full((), half, dtype=x.dtype, device=x.device)
    cell = torch.add(base, x, alpha=half).clamp_(0, t.cells - 1)
    codes = t.start.index_select(0, cell.to(torch.int32).reshape(-1))
    upper = t.mid_ext.index_select(0, codes)
    return codes.add_(torch.gt(x.reshape(-1), upper)).view(x.shape)


# Weights per chunk of the element-wise passes on CPU. Whole-matrix passes allocate a fresh tensor
# each (page faults) and stream it through memory ten times; 64K-weight chunks keep the intermediates
# in L2 and reuse allocations, which measured ~1.7x faster on a 1024x4096 matrix. Every op is
# element-wise, so chunking does not change a single bit of the result (whatever the chunk size).
_CHUNK = 1 << 16
# On a GPU the same chunks cost ~10 kernel launches per 64K weights (about half a million for one
# configuration of a 3B model), each far shorter than its launch. There a chunk is the whole matrix,
# capped at 16M weights (each pass then runs ~tens of µs, long enough to hide the next launch) and
# at a share of the free device memory, so that a huge matrix never runs out of memory.
_DEVICE_CHUNK_MAX = 1 << 24
# Device bytes one weight of a chunk holds at the peak of the passes, in _nearest_codes when
# torch.gt runs: x = W/ŝ0 (fp32, 4), cell (fp32, 4), codes (int32, 4), upper (fp32, 4) and the bool
# comparison (1). The int32 cell index (4) is freed before `upper` is made. Decoding stored codes
# needs less (int32 codes, 4). The whole-matrix buffers (float32 blocks, the output) are already
# allocated when the chunk size is chosen, so the free-memory reading accounts for them. Outside the
# chunks, the absmax in _prepare makes one float32 copy of the matrix (4 bytes per weight) and
# quantization_error one float64 copy (8, or 16 with a Fisher weight).
_PEAK_BYTES_PER_WEIGHT = 17
# Share of the free device memory one chunk may use: the caching allocator rounds and fragments,
# and error-table tasks share a GPU in fractions (several processes reading the same free memory).
_DEVICE_MEMORY_SHARE = 0.25


def _free_device_bytes(device: torch.device) -> int | None:
    """Bytes this process can still allocate on ``device`` (None if torch cannot tell): the driver's
    free memory plus what torch's caching allocator holds reserved but unused."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def _rows_within(lay: _Layout, max_weights: int) -> int:
    """Block rows per chunk so that a chunk holds at most ``max_weights`` weights (at least one row)."""
    return max(1, min(lay.n_blocks, max_weights // lay.block))


def _chunk_rows(lay: _Layout, device: torch.device) -> int:
    """Block rows per chunk of the element-wise passes on ``device`` (tests force sizes through here).

    CPU: ``_CHUNK`` weights (cache-sized). Other devices: the whole matrix, at most
    ``_DEVICE_CHUNK_MAX`` weights and ``_DEVICE_MEMORY_SHARE`` of the free memory (CUDA).
    """
    if device.type == "cpu":
        return _rows_within(lay, _CHUNK)
    limit = _DEVICE_CHUNK_MAX
    free = _free_device_bytes(device)
    if free is not None:
        limit = min(limit, int(free * _DEVICE_MEMORY_SHARE) // _PEAK_BYTES_PER_WEIGHT)
    return _rows_within(lay, limit)


@dataclass(frozen=True)
class _Prepared:
    """Everything but the weight codes: float32 blocks ``(n_blocks, block)``, ŝ0 ``(n_blocks,)``,
    scale codes uint8 ``(n_blocks,)``, s1 ``(n_groups,)`` in ``scale2_dtype``, offset fp32 0-d."""

    lay: _Layout
    blocks: torch.Tensor
    s_hat: torch.Tensor
    q0: torch.Tensor
    s1: torch.Tensor
    offset: torch.Tensor


def _prepare(w: torch.Tensor, option: QuantOption, family: str) -> _Prepared:
    w = _check_weight(w)
    option = _check_option(option)
    _check_family(family)
    lay = _Layout.of(w.numel(), option)
    blocks = _as_blocks(w, lay)
    s0 = blocks.abs().amax(dim=1)
    q0, s1, offset = _double_quantize(s0, lay, option)
    s_hat = _dequantize_scales(q0, s1, offset, option)
    return _Prepared(lay, blocks, s_hat, q0, s1, offset)


def _chunks(lay: _Layout, device: torch.device) -> list[slice]:
    """Block-row slices of :func:`_chunk_rows` rows each (the last may be shorter), covering
    ``range(n_blocks)``."""
    rows = _chunk_rows(lay, device)
    return [slice(r, r + rows) for r in range(0, lay.n_blocks, rows)]


def _encode_chunk(blocks: torch.Tensor, s_hat: torch.Tensor, family: str, bits: int) -> torch.Tensor:
    """Nearest-level codes of ``blocks/ŝ0``: ``(rows, block)``, ``(rows,)`` → int32 ``(rows, block)``."""
    # A zero scale means the whole block dequantizes to 0 whatever its codes; divide by 1 instead of 0.
    safe = torch.where(s_hat > 0, s_hat, torch.ones_like(s_hat))
    # Codes = number of midpoints strictly below W/ŝ0: the nearest level, end codes beyond ±1.
    return _nearest_codes(blocks / safe[:, None], family, bits)


def _decode_chunk(codes: torch.Tensor, s_hat: torch.Tensor, levels: torch.Tensor, out: torch.Tensor) -> None:
    """``out[r, j] = levels[codes[r, j]]·ŝ0[r]`` for int32 ``(rows, block)`` codes, in place."""
    # index_select is the fast gather for a tiny table (several times faster than levels[codes]).
    torch.index_select(levels, 0, codes.reshape(-1), out=out.view(-1))
    out.mul_(s_hat[:, None])


def _encode(p: _Prepared, family: str, bits: int) -> torch.Tensor:
    """uint8 codes ``(n_pad,)`` of the prepared blocks."""
    codes = torch.empty(p.lay.n_blocks, p.lay.block, dtype=torch.uint8, device=p.blocks.device)
    for c in _chunks(p.lay, p.blocks.device):
        codes[c] = _encode_chunk(p.blocks[c], p.s_hat[c], family, bits)
    return codes.view(-1)


def _fake(p: _Prepared, family: str, bits: int, shape: tuple[int, int]) -> torch.Tensor:
    """Dequantized float32 ``(out, in)`` straight from the prepared blocks (codes never stored)."""
    levels = _tables(family, bits, p.blocks.device).levels
    out = torch.empty(p.lay.n_blocks, p.lay.block, dtype=torch.float32, device=p.blocks.device)
    for c in _chunks(p.lay, p.blocks.device):
        _decode_chunk(_encode_chunk(p.blocks[c], p.s_hat[c], family, bits), p.s_hat[c], levels, out[c])
    return out.view(-1)[: p.lay.n].view(shape)


def _decode(
    codes: torch.Tensor, s_hat: torch.Tensor, levels: torch.Tensor, lay: _Layout, shape: tuple[int, int]
) -> torch.Tensor:
    """Stored uint8 codes ``(n_pad,)`` and ŝ0 ``(n_blocks,)`` → float32 ``(out, in)``."""
    codes = codes.view(lay.n_blocks, lay.block)
    out = torch.empty(lay.n_blocks, lay.block, dtype=torch.float32, device=codes.device)
    for c in _chunks(lay, codes.device):
        _decode_chunk(codes[c].to(torch.int32), s_hat[c], levels, out[c])
    return out.view(-1)[: lay.n].view(shape)


# ---------------------------------------------------------------------- public API
@dataclass
class QuantizedMatrix:
    """A quantized ``(out, in)`` matrix as stored.

    Attributes:
        codes: uint8 ``(n_pad,)``, one weight code (``< 2**bits``) per (padded) weight, row-major.
        scale_codes: uint8 ``(n_blocks,)``, one first-level scale code (``< 2**scale_bits``) per block.
        offset: float32 0-d tensor, the per-matrix scale offset ``min(s0)``.
        s1: ``(n_groups,)`` second-level scales in the option's ``scale2_dtype``.
        shape: ``(out, in)`` of the original matrix.
        option: the quantization option.
        family: ``"nf"`` or ``"int"``.
        pad: zeros appended to the flattened weight (``n_pad - out·in``).
    """

    codes: torch.Tensor
    scale_codes: torch.Tensor
    offset: torch.Tensor
    s1: torch.Tensor
    shape: tuple[int, int]
    option: QuantOption
    family: str
    pad: int

    @property
    def numel(self) -> int:
        return int(self.shape[0] * self.shape[1])

    @property
    def _layout(self) -> _Layout:
        return _Layout.of(self.numel, self.option)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The dequantized weight ``(out, in)`` in ``dtype`` (computed in float32)."""
        levels = _tables(self.family, self.option.bits, self.codes.device).levels
        s_hat = _dequantize_scales(self.scale_codes, self.s1, self.offset, self.option)
        return _decode(self.codes, s_hat, levels, self._layout, self.shape).to(dtype)

    def storage_bits(self) -> int:
        """Bits needed to store codes, scale codes and s1 (padding included, the fp32 offset not)."""
        return (
            self.codes.numel() * self.option.bits
            + self.scale_codes.numel() * self.option.scale_bits
            + self.s1.numel() * DTYPE_BITS[self.option.scale2_dtype]
        )

    def pack(self) -> dict[str, torch.Tensor]:
        """Bit-packed, self-describing tensors (safetensors-friendly, all contiguous).

        Keys: ``codes`` and ``scale_codes`` (uint8, see :func:`pack_codes`), ``offset`` (float32
        ``(1,)``), ``s1`` (``(n_groups,)`` in ``scale2_dtype``), ``meta`` (int64 ``(10,)``: format
        version, out, in, bits, scale_bits, scale2_dtype index, block, block2, family index, pad).
        """
        o = self.option
        meta = [
            _PACK_FORMAT_VERSION,
            self.shape[0],
            self.shape[1],
            o.bits,
            o.scale_bits,
            list(SCALE2_DTYPES).index(o.scale2_dtype),
            o.block,
            o.block2,
            FAMILIES.index(self.family),
            self.pad,
        ]
        return {
            "codes": pack_codes(self.codes, o.bits),
            "scale_codes": pack_codes(self.scale_codes, o.scale_bits),
            "offset": self.offset.reshape(1).to(torch.float32).contiguous(),
            "s1": self.s1.contiguous(),
            "meta": torch.tensor(meta, dtype=torch.int64),
        }

    @classmethod
    def from_packed(cls, tensors: Mapping[str, torch.Tensor]) -> "QuantizedMatrix":
        """Rebuild from :meth:`pack`'s output (e.g. read back with ``safetensors.torch.load_file``)."""
        missing = [k for k in _PACK_KEYS if k not in tensors]
        if missing:
            raise QuantError(
                f"packed quantized matrix lacks tensor(s) {missing}; expected {list(_PACK_KEYS)}"
            )
        meta = tensors["meta"]
        if meta.numel() != len(_META_FIELDS):
            raise QuantError(f"packed 'meta' has {meta.numel()} entries; expected {len(_META_FIELDS)}")
        m = dict(zip(_META_FIELDS, (int(v) for v in meta.tolist())))
        if m["version"] != _PACK_FORMAT_VERSION:
            raise QuantError(f"packed format version {m['version']} is not {_PACK_FORMAT_VERSION}")
        dtypes = list(SCALE2_DTYPES)
        if not 0 <= m["scale2_dtype"] < len(dtypes) or not 0 <= m["family"] < len(FAMILIES):
            raise QuantError(f"packed 'meta' has an unknown scale2_dtype or family index: {m}")
        option = _check_option(
            QuantOption(m["bits"], m["scale_bits"], dtypes[m["scale2_dtype"]], m["block"], m["block2"])
        )
        shape = (m["out"], m["in"])
        lay = _Layout.of(shape[0] * shape[1], option)
        if m["pad"] != lay.n_pad - lay.n:
            raise QuantError(f"packed pad {m['pad']} does not match shape {shape} and option {option}")
        s1 = tensors["s1"]
        if s1.dtype != SCALE2_DTYPES[option.scale2_dtype] or s1.numel() != lay.n_groups:
            raise QuantError(
                f"packed s1 is {s1.dtype} with {s1.numel()} values; expected "
                f"{SCALE2_DTYPES[option.scale2_dtype]} with {lay.n_groups}"
            )
        offset = tensors["offset"]
        if offset.numel() != 1:
            raise QuantError(f"packed offset must hold one value, got {offset.numel()}")
        return cls(
            codes=unpack_codes(tensors["codes"], option.bits, lay.n_pad),
            scale_codes=unpack_codes(tensors["scale_codes"], option.scale_bits, lay.n_blocks),
            offset=offset.reshape(()).to(torch.float32),
            s1=s1.reshape(-1),
            shape=shape,
            option=option,
            family=FAMILIES[m["family"]],
            pad=m["pad"],
        )


def quantize(w: torch.Tensor, option: QuantOption, family: str = "nf") -> QuantizedMatrix:
    """Quantize ``w`` ``(out, in)`` (any float dtype; computed in float32) with ``option``."""
    with torch.no_grad():
        p = _prepare(w, option, family)
        codes = _encode(p, family, option.bits)
    return QuantizedMatrix(
        codes=codes,
        scale_codes=p.q0,
        offset=p.offset.to(torch.float32),
        s1=p.s1,
        shape=(int(w.shape[0]), int(w.shape[1])),
        option=option,
        family=family,
        pad=p.lay.n_pad - p.lay.n,
    )


def fake_quantize(
    w: torch.Tensor, option: QuantOption, family: str = "nf", dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``quantize(w, option, family).dequantize(dtype)`` without building the stored form.

    ``w``: ``(out, in)``; returns ``(out, in)`` in ``dtype`` (default: ``w.dtype``), bit-identical to
    the stored path. No gradient flows (the backbone is frozen).
    """
    with torch.no_grad():
        p = _prepare(w, option, family)
        out = _fake(p, family, option.bits, (int(w.shape[0]), int(w.shape[1])))
    return out.to(w.dtype if dtype is None else dtype)


def quantization_error(
    w: torch.Tensor, option: QuantOption, family: str = "nf", weight: torch.Tensor | None = None
) -> float:
    """``‖W − Q(W)‖_F²`` (float64 sum), or ``Σ weight·(W − Q(W))²`` with a ``(out, in)``
    ``weight`` (e.g. a diagonal Fisher estimate)."""
    if weight is not None and (not isinstance(weight, torch.Tensor) or weight.shape != w.shape):
        got = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise QuantError(f"error weight must be a tensor of the weight's shape {tuple(w.shape)}, got {got}")
    q = fake_quantize(w, option, family, dtype=torch.float32)  # a fresh buffer: free to overwrite
    # (Q − W)² equals (W − Q)² bit for bit; in place, the peak is 12 bytes per weight (q and the
    # float64 squares; a Fisher weight adds its float64 copy) instead of 20, which matters for large
    # matrices on a shared GPU.
    sq = q.sub_(w.detach().to(torch.float32)).double().square_()
    return float(sq.sum() if weight is None else sq.mul_(weight.double()).sum())


# ---------------------------------------------------------------------- bit packing
def _packed_nbytes(n: int, bits: int) -> int:
    return bits * math.ceil(n / 8)


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``n`` codes (uint8, each ``< 2**bits``, any shape, read flattened) into bit planes.

    Layout: plane ``b`` (bit ``b`` of every code, least significant first) is ``ceil(n/8)`` bytes,
    little-endian within a byte; the ``bits`` planes are concatenated. Returns uint8
    ``(bits·ceil(n/8),)``: exactly ``n·bits/8`` bytes when ``n`` is a multiple of 8 (always the case
    for quantized matrices, whose code counts are multiples of ``block2 >= 8`` or ``block·block2``).
    Any width 1..8 works, 3-bit included.
    """
    bits = _check_code_bits(bits)
    if not isinstance(codes, torch.Tensor) or codes.dtype != torch.uint8:
        got = codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise QuantError(f"codes to pack must be a uint8 tensor, got {got}")
    flat = codes.detach().reshape(-1).cpu().numpy()
    if flat.size and int(flat.max()) >= 2**bits:
        raise QuantError(f"code {int(flat.max())} does not fit in {bits} bits")
    planes = [np.packbits((flat >> b) & 1, bitorder="little") for b in range(bits)]
    return torch.from_numpy(np.concatenate(planes))


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: uint8 ``(bits·ceil(n/8),)`` → uint8 codes ``(n,)``."""
    bits = _check_code_bits(bits)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, torch.Tensor) else type(packed).__name__
        raise QuantError(f"packed codes must be a uint8 tensor, got {got}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise QuantError(f"number of codes must be a non-negative integer, got {n!r}")
    expected = _packed_nbytes(int(n), bits)
    if packed.numel() != expected:
        raise QuantError(
            f"packed buffer has {packed.numel()} bytes; {n} codes of {bits} bits need {expected}"
        )
    planes = packed.detach().reshape(bits, expected // bits).cpu().numpy()
    out = np.zeros(int(n), dtype=np.uint8)
    for b in range(bits):
        out |= np.unpackbits(planes[b], count=int(n), bitorder="little") << np.uint8(b)
    return torch.from_numpy(out)
