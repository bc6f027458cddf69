"""The quantization configuration space of a model (docs/architecture.md §2.1).

A *configuration* assigns one option to every target matrix of a model. An option is five knobs:

    bits          weight code width (NF-k or INT-k codebook)
    scale_bits    width of the unsigned codes of the first-level (per-block absmax) scales
    scale2_dtype  float type of the second-level scale (one per group of ``block2`` first-level scales)
    block         weights per first-level block
    block2        first-level scales per second-level group

Three representations of one configuration:

- ``idx``: an int array of shape ``(N, 5)`` of indices into the per-knob option lists (machines);
- JSON: ``{module name: {knob: value}}`` (people, files);
- a short stable hash id (de-duplication, file names).

Batches of configurations are arrays of shape ``(B, N, 5)``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from coalora.errors import SpaceError

KNOBS: tuple[str, ...] = ("bits", "scale_bits", "scale2_dtype", "block", "block2")
DTYPE_BITS: dict[str, int] = {"bf16": 16, "fp16": 16, "fp32": 32}
FAMILIES: tuple[str, ...] = ("nf", "int")
DEFAULT_OPTIONS: dict[str, tuple[Any, ...]] = {
    "bits": (2, 3, 4, 8),
    "scale_bits": (2, 3, 4, 8),
    "scale2_dtype": ("bf16", "fp16", "fp32"),
    "block": (16, 32, 64),
    "block2": (16, 64, 256),
}
# Bits-only space: the other knobs fixed at QLoRA's double-quantization defaults (NF4 → 4.127 bits).
BITS_ONLY_OPTIONS: dict[str, tuple[Any, ...]] = {
    "bits": (2, 3, 4, 8),
    "scale_bits": (8,),
    "scale2_dtype": ("fp32",),
    "block": (64,),
    "block2": (256,),
}

# A transformer block is recognised by a numbered container in the module path: ``layer.3``,
# ``layers.3``, ``h.3``, ``blocks.3`` ... The *last* such match wins, so nested numbering works.
_LAYER_RE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks|decoder_layers|encoder_layers)\.(\d+)(?:\.|$)")
# Never quantized, wherever they sit: heads, embeddings, pooler, routers.
DEFAULT_EXCLUDE: tuple[str, ...] = (
    r"embed", r"lm_head", r"classifier", r"pooler", r"score", r"wte", r"wpe", r"router", r"gate$",
)


def option_storage_bits(bits: int, scale_bits: int, scale2_dtype: str, block: int, block2: int) -> float:
    """Storage cost of one option in bits per weight: ``bits + scale_bits/block + w/(block·block2)``."""
    return bits + scale_bits / block + DTYPE_BITS[scale2_dtype] / (block * block2)


@dataclass(frozen=True)
class TargetMatrix:
    """One quantizable weight matrix.

    ``shape`` is ``(out_features, in_features)`` whatever the module stores (GPT-2's ``Conv1D`` keeps
    the transpose; ``transposed`` records that).
    """

    name: str
    layer: int
    module_type: str
    shape: tuple[int, int]
    transposed: bool = False

    @property
    def numel(self) -> int:
        return int(self.shape[0] * self.shape[1])


@dataclass(frozen=True)
class QuantOption:
    """The five knob values of one matrix, by value (not index)."""

    bits: int
    scale_bits: int
    scale2_dtype: str
    block: int
    block2: int

    @property
    def storage_bits(self) -> float:
        return option_storage_bits(self.bits, self.scale_bits, self.scale2_dtype, self.block, self.block2)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in KNOBS}


def _normalise_options(options: Mapping[str, Sequence[Any]] | None) -> dict[str, tuple[Any, ...]]:
    if options is None:
        return dict(DEFAULT_OPTIONS)
    unknown = set(options) - set(KNOBS)
    if unknown:
        raise SpaceError(f"unknown knob(s) {sorted(unknown)} in option lists; knobs are {list(KNOBS)}")
    out: dict[str, tuple[Any, ...]] = {}
    for knob in KNOBS:
        values = tuple(options.get(knob, DEFAULT_OPTIONS[knob]))
        if not values:
            raise SpaceError(f"option list for '{knob}' is empty")
        for v in values:  # each value first: a list or mapping among them cannot even be compared
            if knob == "scale2_dtype":
                if not isinstance(v, str) or v not in DTYPE_BITS:
                    raise SpaceError(f"scale2_dtype option {v!r} is not one of {sorted(DTYPE_BITS)}")
            elif isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise SpaceError(f"option {v!r} for '{knob}' must be a positive integer")
            elif knob in ("bits", "scale_bits") and not 1 <= v <= 8:
                raise SpaceError(f"option {v} for '{knob}' must be between 1 and 8 bits")
        if len(set(values)) != len(values):
            raise SpaceError(f"option list for '{knob}' has duplicates: {list(values)}")
        out[knob] = tuple(int(v) if knob != "scale2_dtype" else str(v) for v in values)
    return out


@dataclass
class QuantSpace:
    """The configuration space over an ordered list of target matrices.

    Attributes:
        matrices: target matrices in a stable order (layer index, then module type order).
        options: per-knob option lists (``KNOBS`` order).
        family: quantizer codebook family, ``"nf"`` (NormalFloat) or ``"int"`` (uniform integer).
    """

    matrices: list[TargetMatrix]
    options: dict[str, tuple[Any, ...]] = field(default_factory=lambda: dict(DEFAULT_OPTIONS))
    family: str = "nf"

    def __post_init__(self) -> None:
        self.options = _normalise_options(self.options)
        if self.family not in FAMILIES:
            raise SpaceError(f"quantizer family {self.family!r} is not one of {list(FAMILIES)}")
        if not self.matrices:
            raise SpaceError("the space has no target matrices (no module matched the target patterns)")
        names = [m.name for m in self.matrices]
        if len(set(names)) != len(names):
            raise SpaceError("duplicate target matrix names")
        self._index = {n: i for i, n in enumerate(names)}
        self.module_types: list[str] = list(dict.fromkeys(m.module_type for m in self.matrices))
        self.cardinalities = np.array([len(self.options[k]) for k in KNOBS], dtype=np.int64)
        self.numels = np.array([m.numel for m in self.matrices], dtype=np.float64)
        self._weights = self.numels / self.numels.sum()
        # Every option combination, its index row and its storage cost: (K, 5) and (K,).
        self.option_table = np.array(
            list(itertools.product(*[range(c) for c in self.cardinalities])), dtype=np.int64
        )
        self.option_bits = np.array([self._bits_of_row(r) for r in self.option_table])
        # Row-major flat index of an option row: sum(idx * stride).
        self.strides = np.array(
            [int(np.prod(self.cardinalities[i + 1 :])) for i in range(len(KNOBS))], dtype=np.int64
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(
        cls,
        model: Any,
        target_patterns: Sequence[str] | None = None,
        exclude_patterns: Sequence[str] | None = None,
        options: Mapping[str, Sequence[Any]] | None = None,
        family: str = "nf",
    ) -> "QuantSpace":
        """Discover the target matrices of a torch model (see :func:`find_target_matrices`)."""
        mats = find_target_matrices(model, target_patterns, exclude_patterns)
        return cls(mats, options=options, family=family)

    # ------------------------------------------------------------------ basic facts
    @property
    def n_matrices(self) -> int:
        return len(self.matrices)

    @property
    def n_options(self) -> int:
        return int(len(self.option_table))

    @property
    def total_params(self) -> int:
        return int(self.numels.sum())

    def index_of(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise SpaceError(f"module {name!r} is not a target matrix of this model") from None

    def option(self, row: Sequence[int]) -> QuantOption:
        """The knob values of one ``(5,)`` index row."""
        return QuantOption(*(self.options[k][int(i)] for k, i in zip(KNOBS, row)))

    def _bits_of_row(self, row: Sequence[int]) -> float:
        return self.option(row).storage_bits

    def flat_option(self, idx: np.ndarray) -> np.ndarray:
        """Flat option number in ``[0, n_options)`` of index rows: ``(..., 5)`` → ``(...)``."""
        return (np.asarray(idx, dtype=np.int64) * self.strides).sum(-1)

    # ------------------------------------------------------------------ bits accounting
    def matrix_bits(self, idx: np.ndarray) -> np.ndarray:
        """Storage bits per weight of each matrix: ``(..., N, 5)`` → ``(..., N)``."""
        return self.option_bits[self.flat_option(idx)]

    def average_bits(self, idx: np.ndarray) -> float | np.ndarray:
        """Numel-weighted mean storage bits: ``(N, 5)`` → float, ``(B, N, 5)`` → ``(B,)``."""
        out = self.matrix_bits(idx) @ self._weights
        return float(out) if np.ndim(out) == 0 else out

    @property
    def min_bits(self) -> float:
        return float(self.option_bits.min())

    @property
    def max_bits(self) -> float:
        return float(self.option_bits.max())

    def attainable_range(self) -> str:
        """``[min_bits, max_bits]`` as people read it in messages: each end exactly (``repr`` of the float,
        which reads back as the same number), never rounded to something inside or outside the range."""
        return f"[{self.min_bits!r}, {self.max_bits!r}]"

    def check_budget(self, budget: float, key: str | None = None) -> float:
        """Return ``budget`` as a float if some configuration fits under it, else raise naming the range.

        A budget is an upper bound on the average bits: anything at or above ``min_bits`` is attainable
        (above ``max_bits`` the allocation simply takes the best configuration). ``key`` (a setting's
        name, e.g. ``train.init_budgets[0]``) starts the message.
        """
        where = f"{key}: " if key else "budget "
        try:
            b = float(budget)
        except (TypeError, ValueError):
            raise SpaceError(f"{where}{budget!r} is not a number of bits") from None
        if not np.isfinite(b):
            raise SpaceError(f"{where}{b!r} bits is not a finite number; this space's attainable range is "
                             f"{self.attainable_range()}")
        if b < self.min_bits:
            raise SpaceError(f"{where}{b!r} bits is below this space's attainable range {self.attainable_range()}")
        return b

    def check_bits_range(self, bits_range: Sequence[float], key: str | None = None) -> tuple[float, float]:
        """Return ``(lo, hi)`` if ``lo <= hi`` and both ends lie within ``[min_bits, max_bits]``, else raise.

        A range of bits (where random configurations are drawn, the search's segments) must lie inside
        the attainable range: outside it there are no configurations. ``key`` starts the message.
        """
        where = f"{key}: " if key else "bits range "
        values = list(bits_range)
        try:
            lo, hi = (float(v) for v in values)
        except (TypeError, ValueError):
            raise SpaceError(f"{where}{values!r} is not [low, high] in bits") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
            raise SpaceError(f"{where}[{lo!r}, {hi!r}] is not [low, high] with finite low <= high")
        if lo < self.min_bits:
            raise SpaceError(f"{where}low end {lo!r} bits is below this space's attainable range "
                             f"{self.attainable_range()}")
        if hi > self.max_bits:
            raise SpaceError(f"{where}high end {hi!r} bits is above this space's attainable range "
                             f"{self.attainable_range()}")
        return lo, hi

    # ------------------------------------------------------------------ validation and conversion
    def validate(self, idx: Any) -> np.ndarray:
        """Check an index array of shape ``(N, 5)`` (or ``(B, N, 5)``) and return it as int64."""
        arr = np.asarray(idx)
        if arr.ndim not in (2, 3) or arr.shape[-2:] != (self.n_matrices, len(KNOBS)):
            raise SpaceError(
                f"configuration has shape {arr.shape}; expected ({self.n_matrices}, {len(KNOBS)}) "
                f"for {self.n_matrices} target matrices × {len(KNOBS)} knobs"
            )
        if not np.issubdtype(arr.dtype, np.integer):
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
                raise SpaceError("configuration indices must be integers")
        arr = arr.astype(np.int64)
        bad = (arr < 0) | (arr >= self.cardinalities)
        if bad.any():
            pos = tuple(np.argwhere(bad)[0])
            m, k = pos[-2], pos[-1]
            raise SpaceError(
                f"option index {arr[pos]} for knob '{KNOBS[k]}' of {self.matrices[m].name!r} is out of "
                f"range [0, {self.cardinalities[k]})"
            )
        return arr

    def to_json(self, idx: np.ndarray) -> dict[str, dict[str, Any]]:
        """``(N, 5)`` indices → ``{module name: {knob: value}}`` in matrix order."""
        idx = self.validate(idx)
        return {m.name: self.option(row).as_dict() for m, row in zip(self.matrices, idx)}

    def from_json(self, mapping: Mapping[str, Any]) -> np.ndarray:
        """``{module name: {knob: value}}`` → ``(N, 5)`` indices. Every matrix must be named once."""
        if not isinstance(mapping, Mapping):
            raise SpaceError("a configuration must be a mapping of module name → knobs")
        unknown = [n for n in mapping if n not in self._index]
        if unknown:
            raise SpaceError(f"module {unknown[0]!r} is not a target matrix of this model")
        missing = [m.name for m in self.matrices if m.name not in mapping]
        if missing:
            raise SpaceError(
                f"configuration names {len(mapping)} of {self.n_matrices} target matrices; "
                f"missing e.g. {missing[0]!r}"
            )
        out = np.zeros((self.n_matrices, len(KNOBS)), dtype=np.int64)
        for name, knobs in mapping.items():
            i = self._index[name]
            if not isinstance(knobs, Mapping):
                raise SpaceError(f"knobs of {name!r} must be a mapping, got {type(knobs).__name__}")
            extra = set(knobs) - set(KNOBS)
            if extra:
                raise SpaceError(f"unknown knob {sorted(extra)[0]!r} for {name!r}; knobs are {list(KNOBS)}")
            for k, knob in enumerate(KNOBS):
                if knob not in knobs:
                    raise SpaceError(f"knob '{knob}' missing for {name!r}")
                value = knobs[knob]
                try:
                    out[i, k] = self.options[knob].index(value)
                except ValueError:
                    raise SpaceError(
                        f"{knob}={value!r} for {name!r} is not in its option list {list(self.options[knob])}"
                    ) from None
        return out

    def config_id(self, idx: np.ndarray) -> str:
        """A 12-hex-digit id, stable across runs and machines, unique per (space, configuration)."""
        idx = self.validate(idx)
        h = hashlib.sha1(self.fingerprint().encode())
        h.update(idx.astype("<i1").tobytes())
        return h.hexdigest()[:12]

    def uniform(self, option: Mapping[str, Any]) -> np.ndarray:
        """The configuration that gives every matrix the same option (by knob values)."""
        return self.from_json({m.name: dict(option) for m in self.matrices})

    # ------------------------------------------------------------------ identity
    def signature(self) -> dict[str, Any]:
        """Everything that defines the space, JSON-serialisable (for checkpoints and state files)."""
        return {
            "family": self.family,
            "options": {k: list(v) for k, v in self.options.items()},
            "matrices": [[m.name, m.layer, m.module_type, list(m.shape)] for m in self.matrices],
        }

    def fingerprint(self) -> str:
        """A short hash of :meth:`signature`: two spaces are interchangeable iff fingerprints match."""
        blob = json.dumps(self.signature(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_signature(cls, sig: Mapping[str, Any]) -> "QuantSpace":
        mats = [TargetMatrix(n, int(l), t, (int(s[0]), int(s[1]))) for n, l, t, s in sig["matrices"]]
        return cls(mats, options={k: tuple(v) for k, v in sig["options"].items()}, family=sig["family"])

    def check_same(self, sig: Mapping[str, Any], what: str = "file") -> None:
        """Raise a clear error if a saved signature belongs to another model or space."""
        other = QuantSpace.from_signature(sig)
        if other.fingerprint() == self.fingerprint():
            return
        if [m.name for m in other.matrices] != [m.name for m in self.matrices]:
            raise SpaceError(
                f"{what} was made for another model: {other.n_matrices} target matrices "
                f"(first {other.matrices[0].name!r}) against this model's {self.n_matrices} "
                f"(first {self.matrices[0].name!r})"
            )
        raise SpaceError(
            f"{what} was made for another configuration space (options {other.options}, family "
            f"{other.family!r}) than this one (options {self.options}, family {self.family!r})"
        )

    # ------------------------------------------------------------------ sampling
    def sample(self, rng: np.random.Generator, n: int = 1) -> np.ndarray:
        """Uniformly random configurations: ``(n, N, 5)``."""
        return rng.integers(0, self.cardinalities, size=(n, self.n_matrices, len(KNOBS)))

    def floor_mask(self, min_weight_bits: float | None) -> np.ndarray:
        """``(K,)`` bool: the options whose weight bit width is at least ``min_weight_bits`` (all for None)."""
        if min_weight_bits is None:
            return np.ones(self.n_options, dtype=bool)
        weight_bits = np.asarray(self.options["bits"], dtype=np.float64)[self.option_table[:, 0]]
        return weight_bits >= float(min_weight_bits)

    def floor_min_bits(self, min_weight_bits: float | None, key: str | None = None) -> float:
        """The fewest average bits of a configuration with every matrix at ``min_weight_bits`` weight bits or
        more (``min_bits`` for None). ``key`` (the setting's name) starts the message of the error.

        Raises:
            SpaceError: no option has that many weight bits.
        """
        allowed = self.floor_mask(min_weight_bits)
        if not allowed.any():
            raise SpaceError(f"{key + ': ' if key else ''}no option has {min_weight_bits} or more weight bits "
                             f"(bits options: {list(self.options['bits'])})")
        return float(self.option_bits[allowed].min())

    def sample_near(
        self, target_bits: float, rng: np.random.Generator, n: int = 1, tol: float = 0.05,
        min_weight_bits: float | None = None,
    ) -> np.ndarray:
        """Random configurations whose average bits lie within ``tol`` of ``target_bits``: ``(n, N, 5)``.

        Options are drawn per matrix from a tilted distribution ``p_k ∝ exp(-λ·bits_k)`` whose mean
        equals the target (λ by bisection), then single-matrix moves repair the remaining gap. The
        knobs that do not move bits much (dtype, block2) stay uniformly spread. ``min_weight_bits``
        keeps every matrix at that weight bit width or more (no matrix gets the 2 bits that destroy a
        small model), so the draws are damaged but not destroyed.
        """
        target = float(target_bits)
        lowest = self.floor_min_bits(min_weight_bits)
        allowed = self.floor_mask(min_weight_bits)
        b = self.option_bits
        if not lowest <= target <= self.max_bits:
            floor = "" if min_weight_bits is None else f" with every matrix at >= {min_weight_bits} weight bits"
            raise SpaceError(
                f"target {target!r} bits is outside this space's attainable range{floor} "
                f"{[lowest, self.max_bits] if min_weight_bits is not None else self.attainable_range()}"
            )

        def tilted(lam: float) -> np.ndarray:
            z = -lam * (b - b.mean())
            return np.where(allowed, np.exp(z - z[allowed].max()), 0.0)

        def mean_bits(lam: float) -> float:
            p = tilted(lam)
            return float((p * b).sum() / p.sum())

        lo, hi = -60.0, 60.0
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            if mean_bits(mid) > target:
                lo = mid
            else:
                hi = mid
        p = tilted(0.5 * (lo + hi))
        p /= p.sum()
        out = np.empty((n, self.n_matrices, len(KNOBS)), dtype=np.int64)
        for s in range(n):
            flat = rng.choice(self.n_options, size=self.n_matrices, p=p)
            flat = self._repair(flat, target, tol, rng, allowed)
            out[s] = self.option_table[flat]
        return out

    def _repair(
        self, flat: np.ndarray, target: float, tol: float, rng: np.random.Generator, allowed: np.ndarray
    ) -> np.ndarray:
        """Move single matrices to other ``allowed`` options until the average bits is within ``tol`` of target."""
        b = np.where(allowed, self.option_bits, np.inf)  # an option below the floor is never the nearest
        w = self._weights
        flat = flat.copy()
        for _ in range(20 * self.n_matrices + 100):
            avg = float(b[flat] @ w)
            gap = target - avg
            if abs(gap) <= tol:
                break
            i = int(rng.integers(self.n_matrices))
            # The option that brings this matrix's contribution closest to closing the gap.
            wanted = b[flat[i]] + gap / w[i]
            j = int(np.argmin(np.abs(b - wanted)))
            flat[i] = j
        return flat

    def neighbours(self, idx: np.ndarray) -> np.ndarray:
        """All configurations one ±1 step away on a single knob of a single matrix: ``(M, N, 5)``."""
        idx = self.validate(idx)
        out = []
        for i in range(self.n_matrices):
            for k in range(len(KNOBS)):
                for d in (-1, 1):
                    v = idx[i, k] + d
                    if 0 <= v < self.cardinalities[k]:
                        nb = idx.copy()
                        nb[i, k] = v
                        out.append(nb)
        if not out:
            return np.zeros((0, self.n_matrices, len(KNOBS)), dtype=np.int64)
        return np.stack(out)

    def describe(self) -> dict[str, Any]:
        """A summary for people: matrices, options per matrix, attainable bits range."""
        return {
            "family": self.family,
            "n_matrices": self.n_matrices,
            "total_params": self.total_params,
            "options": {k: list(v) for k, v in self.options.items()},
            "options_per_matrix": self.n_options,
            "min_bits": self.min_bits,
            "max_bits": self.max_bits,
            "fingerprint": self.fingerprint(),
            "matrices": [
                {"name": m.name, "layer": m.layer, "module_type": m.module_type, "shape": list(m.shape)}
                for m in self.matrices
            ],
        }


# ---------------------------------------------------------------------- discovery
def parse_layer_index(name: str) -> int | None:
    """The transformer-block index in a module path (``encoder.layer.3.…`` → 3), or None."""
    matches = list(_LAYER_RE.finditer(name))
    return int(matches[-1].group(1)) if matches else None


def _module_type(name: str) -> str:
    """The path after the block index: ``model.layers.3.self_attn.q_proj`` → ``self_attn.q_proj``."""
    matches = list(_LAYER_RE.finditer(name))
    return name[matches[-1].end() :] if matches else name


def _is_linear(module: Any) -> tuple[bool, bool]:
    """(is a quantizable linear layer, stores its weight transposed)."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return True, False
    # transformers' GPT-2 Conv1D: weight is (in, out). Matched by name to avoid importing transformers.
    if type(module).__name__ == "Conv1D" and hasattr(module, "weight") and module.weight.ndim == 2:
        return True, True
    return False, False


def find_target_matrices(
    model: Any,
    target_patterns: Sequence[str] | None = None,
    exclude_patterns: Sequence[str] | None = None,
) -> list[TargetMatrix]:
    """Find the linear weights inside numbered transformer blocks.

    Every ``nn.Linear`` (or GPT-2 ``Conv1D``) whose path has a block index and matches none of
    ``exclude_patterns`` is a target; ``target_patterns`` (regexes searched in the module type,
    i.e. the path after the block index) restricts them further. Order: block index, then the
    order in which module types first appear in the model.
    """
    excl = [re.compile(p) for p in (exclude_patterns if exclude_patterns is not None else DEFAULT_EXCLUDE)]
    incl = [re.compile(p) for p in target_patterns] if target_patterns else None
    found: list[TargetMatrix] = []
    type_order: dict[str, int] = {}
    for name, module in model.named_modules():
        ok, transposed = _is_linear(module)
        if not ok:
            continue
        layer = parse_layer_index(name)
        if layer is None:
            continue
        mtype = _module_type(name)
        if any(p.search(mtype) for p in excl):
            continue
        if incl is not None and not any(p.search(mtype) for p in incl):
            continue
        w = module.weight
        shape = (int(w.shape[1]), int(w.shape[0])) if transposed else (int(w.shape[0]), int(w.shape[1]))
        type_order.setdefault(mtype, len(type_order))
        found.append(TargetMatrix(name, layer, mtype, shape, transposed))
    found.sort(key=lambda m: (m.layer, type_order[m.module_type]))
    return found


def space_from_shapes(
    layers: int, shapes: Mapping[str, tuple[int, int]], prefix: str = "encoder.layer", **kwargs: Any
) -> QuantSpace:
    """A space over synthetic shapes (no model needed): ``layers`` blocks × ``shapes`` per block.

    Example: RoBERTa-large is ``space_from_shapes(24, {"attention.self.query": (1024, 1024), ...})``.
    """
    mats = [
        TargetMatrix(f"{prefix}.{l}.{t}", l, t, (int(s[0]), int(s[1])))
        for l in range(layers)
        for t, s in shapes.items()
    ]
    return QuantSpace(mats, **kwargs)


MINILM_L6_SHAPES: dict[str, tuple[int, int]] = {
    "attention.self.query": (384, 384),
    "attention.self.key": (384, 384),
    "attention.self.value": (384, 384),
    "attention.output.dense": (384, 384),
    "intermediate.dense": (1536, 384),
    "output.dense": (384, 1536),
}

ROBERTA_LARGE_SHAPES: dict[str, tuple[int, int]] = {
    "attention.self.query": (1024, 1024),
    "attention.self.key": (1024, 1024),
    "attention.self.value": (1024, 1024),
    "attention.output.dense": (1024, 1024),
    "intermediate.dense": (4096, 1024),
    "output.dense": (1024, 4096),
}
