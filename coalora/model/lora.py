"""The adapted model: quantized frozen base + one shared LoRA per matrix + per-configuration cores.

Per target matrix i under configuration C (docs/architecture.md §2.3):

    y = x Ŵ_i(C)ᵀ + bias + (α/r) · ((dropout(x) A_iᵀ) M_i(C)ᵀ) B_iᵀ

``Ŵ_i(C)`` comes from a (matrix, option)-keyed cache; ``M_i(C)`` from :class:`ConfigHypernet` in one
batched call per forward (or ``None`` in plain-LoRA mode, used by the ``shared`` and ``per-config``
baselines). ``set_config(None)`` runs the unquantized base (the ``fp-lora`` ceiling).

Precision (docs/architecture.md §5): the frozen base weights and the cached dequantized weights stay in the base's
dtype (the *compute dtype*: float32, bfloat16 or float16); everything trainable (LoRA A/B, U_θ and its
scale, the task head) is float32, so optimizer states are float32 too. With a bf16/fp16 base,
:meth:`CoaModel.forward` runs the wrapped model under ``torch.autocast`` in the compute dtype, and each
:class:`CoaLinear` casts A, B and its core to the activation dtype (differentiable casts: gradients
reach the float32 parameters). A float32 base runs with no autocast at all, exactly as before.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, ContextManager, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from coalora.core.quant import fake_quantize
from coalora.core.space import QuantSpace
from coalora.errors import CheckpointMismatchError, ConfigError
from coalora.model.hypernet import ConfigHypernet, HypernetConfig, as_index_tensor
from coalora.model.memory import MemoryPlan
from coalora.model.settings import LoraSettings  # the `lora:` section; also imported from here
from coalora.model.weight_cache import WeightCache

# Task heads created fresh for fine-tuning (transformers' names); trained alongside the LoRA.
DEFAULT_HEAD_MODULES: tuple[str, ...] = ("classifier", "score")


# Base dtypes that run the forward under autocast; anything else (float32, float64) runs as is.
LOW_PRECISION: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float16)


def autocast_for(device: torch.device | str, dtype: torch.dtype) -> ContextManager[Any]:
    """``torch.autocast`` in ``dtype`` on ``device``'s type when ``dtype`` is bf16/fp16, else a no-op.

    A float32 model gets no autocast context at all (not even a disabled one), so its numerics stay
    bit for bit what they were before mixed precision existed.
    """
    if dtype in LOW_PRECISION:
        return torch.autocast(device_type=torch.device(device).type, dtype=dtype)
    return contextlib.nullcontext()


def check_rank(rank: int, space: QuantSpace, key: str = "lora.rank") -> None:
    """A LoRA of rank ``r`` on an ``(out, in)`` matrix needs ``r <= min(out, in)``: beyond that the
    product ``B·A`` cannot have rank ``r``, and the factors only waste memory (a huge rank would try to
    allocate gigabytes). Checked before anything is allocated; the message names the tightest matrix.
    """
    if not space.matrices:
        return
    tight = min(space.matrices, key=lambda m: min(m.shape))
    limit = min(tight.shape)
    if rank > limit:
        raise ConfigError(
            f"{key}: {rank} is larger than the smaller side of target matrix {tight.name} (shape "
            f"{tight.shape[0]} x {tight.shape[1]}, out x in); set {key} to at most {limit}"
        )


def check_lora_shape(lora: LoraSettings, space: QuantSpace) -> None:
    """:func:`check_rank` for ``lora.rank`` and, when on, ``lora.bank``."""
    check_rank(lora.rank, space)
    if lora.bank:
        check_rank(lora.bank, space, key="lora.bank")


class CoaLinear(nn.Module):
    """A target linear layer: frozen full-precision weight, swappable quantized weight, LoRA A/B, core.

    Shapes: ``weight`` (out, in), ``lora_A`` (r, in), ``lora_B`` (out, r), ``core`` (r, r) or None; with
    ``lora.bank`` R > 0 also ``bank_A`` (n_bits, R, in) and ``bank_B`` (n_bits, out, R), one pair per weight
    bit width, of which ``bank_slot`` (set by :meth:`CoaModel.set_config`) is added. Input ``(..., in)`` →
    output ``(..., out)``.

    ``weight``/``qweight`` keep the base's dtype; ``lora_A``/``lora_B`` are float32 whatever the base.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, lora: LoraSettings, n_bits: int = 0) -> None:
        super().__init__()
        out_f, in_f = weight.shape
        self.in_features, self.out_features = in_f, out_f
        # Frozen base weights are buffers, not parameters: they never reach the optimizer or checkpoints.
        self.register_buffer("weight", weight.detach(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach(), persistent=False)
        # Trainables are float32 on any base: AdamW moments of bf16 parameters lose the small updates.
        self.lora_A = nn.Parameter(torch.empty(lora.rank, in_f, dtype=torch.float32, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(out_f, lora.rank, dtype=torch.float32, device=weight.device))
        # PEFT's default: Kaiming-uniform A, zero B, so the adapted model starts as the base.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = lora.alpha / lora.rank
        self.dropout = nn.Dropout(lora.dropout) if lora.dropout > 0 else nn.Identity()
        self.qweight: torch.Tensor = self.weight
        self.core: torch.Tensor | None = None
        self.adapter_on = True  # False inside CoaModel.unadapted(): the plain base layer
        # The bank (lora.bank): like A and B, Kaiming A_b and zero B_b, so a bank adds nothing at start.
        self.bank_A: nn.Parameter | None = None
        self.bank_B: nn.Parameter | None = None
        if lora.bank and n_bits:
            self.bank_A = nn.Parameter(torch.empty(n_bits, lora.bank, in_f, dtype=torch.float32, device=weight.device))
            self.bank_B = nn.Parameter(torch.zeros(n_bits, out_f, lora.bank, dtype=torch.float32, device=weight.device))
            for a in self.bank_A.data:
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.bank_slot: int | None = None  # the weight bit-width index of the configuration; None: no bank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.qweight, self.bias)
        if not self.adapter_on:
            return y
        # The LoRA product and the core run in the activation dtype. The casts are differentiable, so
        # gradients land in float32 on the parameters; for float32 activations they are no-ops (the same
        # tensors), which keeps the float32 path unchanged. Under autocast F.linear casts once more to
        # the autocast dtype, which agrees with these casts.
        x = self.dropout(x)
        h = F.linear(x, self.lora_A.to(x.dtype))
        if self.core is not None:
            h = F.linear(h, self.core.to(h.dtype))
        out = F.linear(h, self.lora_B.to(h.dtype))
        if self.bank_A is not None and self.bank_B is not None and self.bank_slot is not None:
            # Indexing a slot keeps the gradient to that slot's rows only: other bit widths are untouched.
            g = F.linear(x, self.bank_A[self.bank_slot].to(x.dtype))
            out = out + F.linear(g, self.bank_B[self.bank_slot].to(g.dtype))
        return y + self.scaling * out

    def extra_repr(self) -> str:
        bank = "" if self.bank_A is None else f", bank={tuple(self.bank_A.shape[:2])}"
        return f"in={self.in_features}, out={self.out_features}, r={self.lora_A.shape[0]}{bank}"


class CoaModel(nn.Module):
    """A transformers model with every target matrix replaced by :class:`CoaLinear`.

    Args:
        model: the base model (modified in place: target layers replaced, backbone frozen).
        space: its configuration space (built from the same model before wrapping).
        lora: LoRA shape.
        hypernet: U_θ settings, or None for plain LoRA (``shared``, ``per-config``, ``fp-lora``).
        cache_bytes: bound of the dequantized-weight cache.
        head_modules: module names (last path component) trained alongside the LoRA; their parameters
            are converted to float32 (the rest of the base keeps its dtype).
        errors: ``(N, K)`` quantization-error table ``‖W_i − Q_k(W_i)‖²`` of this space (the allocation's,
            :func:`coalora.allocation.error_tables.error_table`); needed only by ``hypernet.damage``,
            which reads it relative to each matrix's ``‖W_i‖²``.

    Attributes:
        memory_plan: the process's memory plan, set by whoever sized the cache (None otherwise).
    """

    def __init__(
        self,
        model: nn.Module,
        space: QuantSpace,
        lora: LoraSettings,
        hypernet: HypernetConfig | None = None,
        cache_bytes: int = 2 * 1024**3,
        head_modules: Sequence[str] = DEFAULT_HEAD_MODULES,
        errors: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        check_lora_shape(lora, space)  # before any factor is allocated
        self.model = model
        self.space = space
        self.lora_settings = lora
        for p in model.parameters():
            p.requires_grad_(False)
        layers = []
        for m in space.matrices:
            try:
                old = model.get_submodule(m.name)
            except AttributeError:
                raise CheckpointMismatchError(f"model has no module {m.name!r} from the space") from None
            w = old.weight.detach()
            w = w.t().contiguous() if m.transposed else w
            if tuple(w.shape) != m.shape:
                raise CheckpointMismatchError(f"{m.name}: weight shape {tuple(w.shape)} != space's {m.shape}")
            new = CoaLinear(w, getattr(old, "bias", None), lora, n_bits=len(space.options["bits"]))
            model.set_submodule(m.name, new)
            layers.append(new)
        self._layers = layers  # plain list: the modules are registered under self.model already
        heads = set(head_modules)
        for name, mod in model.named_modules():
            if name.split(".")[-1] in heads and not isinstance(mod, CoaLinear):
                for p in mod.parameters():
                    # The head is part of the base, loaded in its dtype: train it in float32 like the
                    # LoRA (autocast casts it down for the matmul; outside autocast the base is float32).
                    if p.is_floating_point() and p.dtype != torch.float32:
                        p.data = p.data.float()
                    p.requires_grad_(True)
        self.hypernet = None
        if hypernet is not None:
            rel = norms = None
            if hypernet.damage:
                if errors is None:
                    raise ValueError("hypernet.damage needs the error table (errors=...)")
                norms = np.array([float(layer.weight.float().square().sum()) for layer in layers])
                rel = np.asarray(errors, dtype=np.float64) / norms[:, None]
            self.hypernet = ConfigHypernet(space, lora.rank, hypernet, rel_errors=rel, norms_sq=norms)
        self.cache = WeightCache(cache_bytes)
        self.memory_plan: MemoryPlan | None = None
        self.config: np.ndarray | None = None
        self._config_t: torch.Tensor | None = None
        self._eval_cores: torch.Tensor | None = None
        # Warm start (``hypernet.warm_start``): while True, U_θ runs without gradients, so it stays at
        # its exact-identity start and only the shared LoRA (and head) train. The training loop sets it.
        self.hypernet_frozen = False

    # ------------------------------------------------------------------ configuration
    @property
    def layers(self) -> list[CoaLinear]:
        return self._layers

    @property
    def device(self) -> torch.device:
        return self._layers[0].lora_A.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The frozen base's dtype, in which the forward computes (float32, bfloat16 or float16)."""
        return self._layers[0].weight.dtype

    def autocast(self) -> ContextManager[Any]:
        """The autocast context of this model's forward (a no-op for a float32 base).

        :meth:`forward` enters it itself; it is public for code that runs parts of the wrapped model
        (``self.model``) directly.
        """
        return autocast_for(self.device, self.compute_dtype)

    def set_config(self, idx: np.ndarray | None) -> None:
        """Switch the quantized base to configuration ``idx`` ``(N, 5)``; None = full precision."""
        self._eval_cores = None
        if idx is None:
            if self.hypernet is not None:
                raise ValueError("a configuration-aware model needs a configuration (got None)")
            self.config, self._config_t = None, None
            for layer in self._layers:
                layer.qweight, layer.bank_slot = layer.weight, None
            return
        idx = self.space.validate(idx)
        flat = self.space.flat_option(idx)
        for i, layer in enumerate(self._layers):
            layer.qweight = self.quantized(i, int(flat[i]))
            layer.bank_slot = int(idx[i, 0])  # the weight bit-width index (knob "bits")
        self.config = idx
        self._config_t = as_index_tensor(idx, self.device)

    def quantized(self, i: int, k: int) -> torch.Tensor:
        """Matrix i's weight under flat option k (the base's dtype), through the (matrix, option) cache that
        :meth:`set_config` uses: the residual start, the residual fit and training quantize each pair once."""
        option = self.space.option(self.space.option_table[k])
        return self.cache.get((i, int(k)), lambda w=self._layers[i].weight: _quantize(w, option, self.space.family))

    def cores(self) -> torch.Tensor | None:
        """``(N, r, r)`` cores of the current configuration (None in plain-LoRA mode)."""
        if self.hypernet is None:
            return None
        if self._config_t is None:
            raise RuntimeError("call set_config(...) before running a configuration-aware model")
        if self.hypernet_frozen:
            with torch.no_grad():
                return self.hypernet(self._config_t)
        return self.hypernet(self._config_t)

    def warm_switch_step(self, total_steps: int) -> int:
        """The step of a ``total_steps`` schedule at which U_θ starts training (0: from the start)."""
        if self.hypernet is None:
            return 0
        return int(round(self.hypernet.cfg.warm_start * total_steps))

    def _install_cores(self) -> None:
        if self.hypernet is None:
            return
        if torch.is_grad_enabled() or self._eval_cores is None:
            cores = self.cores()
            # Under no_grad the cores of a configuration do not change: compute them once per switch.
            self._eval_cores = None if torch.is_grad_enabled() else cores
        else:
            cores = self._eval_cores
        for layer, core in zip(self._layers, cores):
            layer.core = core

    @contextlib.contextmanager
    def unadapted(self) -> Iterator[None]:
        """Run the unquantized base with no LoRA and no core inside this block (the distillation
        teacher); the configuration and adapters come back on exit."""
        saved = [(layer.qweight, layer.adapter_on) for layer in self._layers]
        for layer in self._layers:
            layer.qweight, layer.adapter_on = layer.weight, False
        try:
            yield
        finally:
            for layer, (q, on) in zip(self._layers, saved):
                layer.qweight, layer.adapter_on = q, on

    def base_output(self, **batch: Any) -> Any:
        """The unquantized base's output on ``batch``, without gradients (the distillation teacher)."""
        with torch.no_grad(), self.unadapted(), self.autocast():
            return self.model(**batch)

    def forward(self, **batch: Any) -> Any:
        """The wrapped model's output under the current configuration, computed in :attr:`compute_dtype`.

        Cores are computed in float32 (U_θ disables autocast); the model runs under :meth:`autocast`.
        Call ``backward`` outside (as PyTorch recommends): this method leaves autocast on return.
        """
        self._install_cores()
        with self.autocast():
            return self.model(**batch)

    # ------------------------------------------------------------------ state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything that training changes (LoRA A/B, head, U_θ), by parameter name."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load :meth:`trainable_state` output; any missing, extra or mis-shaped key is an error."""
        own = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
            raise CheckpointMismatchError(f"checkpoint does not fit this model: {what}")
        with torch.no_grad():
            for n, p in own.items():
                t = state[n]
                if t.shape != p.shape:
                    raise CheckpointMismatchError(
                        f"checkpoint tensor {n} has shape {tuple(t.shape)}, model expects {tuple(p.shape)}"
                    )
                p.copy_(t.to(p.dtype))

    def init_lora_from_residual(self, configs: np.ndarray) -> None:
        """``lora.init: residual``: set every matrix's A and B from the mean quantization residual.

        For matrix i, ``R_i = W_i − mean_c Q_c(W_i)`` over ``configs`` ``(S, N, 5)`` (each distinct option
        quantized once, weighted by how many configurations use it); then ``(α/r)·B_i·A_i`` is the top-r
        part of ``R_i`` (:func:`residual_factors`). With ``lora.bank`` R, each bit width b that ``configs``
        give matrix i gets ``(α/r)·B_b·A_b`` = the top-R part of ``R_{i,b} − (α/r)·B_i·A_i``, ``R_{i,b}`` the
        mean residual over the configurations giving it b; the other widths keep their zero start.
        Computed in float32 whatever the base's dtype. Every data-parallel worker computes the same
        factors from the same configurations.
        """
        configs = np.asarray(configs)
        if configs.ndim != 3 or len(configs) == 0:
            raise ValueError(f"configs must be a non-empty (S, N, 5) array, got shape {configs.shape}")
        flat = np.stack([self.space.flat_option(self.space.validate(c)) for c in configs])  # (S, N)
        with torch.no_grad():
            for i, layer in enumerate(self._layers):
                w = layer.weight.float()
                options, counts = np.unique(flat[:, i], return_counts=True)
                mean_q = torch.zeros_like(w)
                by_bits: dict[int, list[Any]] = {}  # bit-width index -> [sum of n·Q, n]
                for k, n in zip(options, counts):
                    row = self.space.option_table[k]
                    q = self.quantized(i, k).float()
                    mean_q += q * (n / len(configs))
                    if layer.bank_A is not None:
                        acc = by_bits.setdefault(int(row[0]), [torch.zeros_like(w), 0])
                        acc[0] += q * float(n)
                        acc[1] += int(n)
                a, b = residual_factors(w - mean_q, layer.lora_A.shape[0], layer.scaling)
                layer.lora_A.copy_(a)
                layer.lora_B.copy_(b)
                if layer.bank_A is not None and layer.bank_B is not None:
                    shared = layer.scaling * (b @ a)
                    for slot, (total_q, n) in by_bits.items():
                        a_b, b_b = residual_factors(w - total_q / n - shared, layer.bank_A.shape[1], layer.scaling)
                        layer.bank_A[slot] = a_b
                        layer.bank_B[slot] = b_b

    def input_statistics(self, batches: Iterable[dict[str, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """What the residual fit needs of each matrix's inputs, from the unquantized base's forward passes.

        With X_i ``(T, in)`` the inputs of matrix i over ``batches`` (every token; where a batch has an
        ``attention_mask`` of the inputs' leading shape, its padding is left out), returns per matrix
        ``(P_i, w_i)``: ``P_i = X_iᵀ X_i A_iᵀ`` ``(in, r)`` with the current A_i, and ``w_i = ‖X_i W_iᵀ‖²``
        (0-d), float32 on the model's device. Only these are kept, never X_i or XᵀX (in × in): they are
        all :meth:`residual_core_targets` needs while A stays put.
        """
        stats = [(torch.zeros(layer.in_features, layer.lora_A.shape[0], device=self.device),
                  torch.zeros((), device=self.device)) for layer in self._layers]
        mask: list[torch.Tensor | None] = [None]

        def hook(i: int) -> Any:
            def record(module: CoaLinear, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0].detach().float().reshape(-1, module.in_features)
                if mask[0] is not None and mask[0].numel() == len(x):
                    x = x[mask[0].reshape(-1).bool()]
                p, w = stats[i]
                # The sums are float32 even where the base runs under bf16/fp16 autocast.
                with torch.autocast(device_type=x.device.type, enabled=False):
                    p += x.T @ (x @ module.lora_A.detach().float().T)
                    w += F.linear(x, module.weight.float()).square().sum()
            return record

        handles = [layer.register_forward_pre_hook(hook(i)) for i, layer in enumerate(self._layers)]
        try:
            with torch.no_grad(), self.unadapted(), self.autocast():
                for batch in batches:
                    batch = {k: v.to(self.device) for k, v in batch.items()}
                    mask[0] = batch.get("attention_mask")
                    self.model(**batch)
        finally:
            for h in handles:
                h.remove()
        return stats

    def residual_core_targets(
        self, configs: np.ndarray, inputs: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The cores that best correct each configuration's own quantization residual with the current A, B.

        For matrix i under option k, ``R = W_i − Q_k(W_i)`` and ``M* = (1/s)·B⁺ R A⁺`` minimises
        ``‖R − s·B M A‖_F`` (``B⁺ = (BᵀB)⁻¹Bᵀ``, ``A⁺ = Aᵀ(AAᵀ)⁻¹``). With ``inputs`` (per matrix
        ``(P_i, w_i)`` of :meth:`input_statistics`) the error is measured on the inputs X instead,
        ``‖X (R − s·B M A)ᵀ‖``, whose minimiser has ``A⁺ = P (A P)⁻¹`` (``P = XᵀX Aᵀ``). Each distinct
        (matrix, option) of ``configs`` ``(C, N, 5)`` is quantized once.

        Returns:
            ``targets (C, N, r, r)``; ``gram_b (N, r, r)`` = s²·BᵀB/‖W_i‖² and ``gram_a (N, r, r)`` = AAᵀ
            (with inputs: s²·BᵀB/w_i and A P), with which ``tr(Dᵀ gram_b D gram_a)`` is the relative error
            ``‖s·B D A‖²/‖W_i‖²`` (with inputs: ``‖X (s·B D A)ᵀ‖²/‖X Wᵀ‖²``) a core error ``D`` leaves.
            float32.
        """
        configs = np.asarray(configs)
        flat = np.stack([self.space.flat_option(self.space.validate(c)) for c in configs])  # (C, N)
        r = self._layers[0].lora_A.shape[0]
        targets = torch.empty(len(configs), len(self._layers), r, r)
        gram_b, gram_a = torch.empty(len(self._layers), r, r), torch.empty(len(self._layers), r, r)
        with torch.no_grad():
            for i, layer in enumerate(self._layers):
                w = layer.weight.float()
                a, b, s = layer.lora_A.float(), layer.lora_B.float(), layer.scaling
                gb = b.T @ b
                b_pinv = torch.linalg.solve(_ridged(gb), b.T)  # (r, out)
                if inputs is None:
                    ga, norm = a @ a.T, w.square().sum()
                    a_pinv = torch.linalg.solve(_ridged(ga), a).T  # (in, r); ga is symmetric
                else:
                    p, norm = (t.float().to(a.device) for t in inputs[i])
                    ga = a @ p
                    ga = (ga + ga.T) / 2  # A XᵀX Aᵀ, symmetric up to rounding
                    a_pinv = torch.linalg.solve(_ridged(ga), p.T).T  # P (A P)⁻¹, (in, r)
                for k in np.unique(flat[:, i]):
                    row = self.space.option_table[k]
                    left = w - self.quantized(i, k).float()
                    if layer.bank_A is not None and layer.bank_B is not None:
                        # The core corrects what the bank entry of this bit width leaves.
                        left = left - s * (layer.bank_B[int(row[0])].float() @ layer.bank_A[int(row[0])].float())
                    targets[flat[:, i] == k, i] = (b_pinv @ left @ a_pinv) / s
                # A matrix with no weight (or no input) has nothing to correct: its error counts 0, not NaN.
                gram_b[i] = gb * (s * s) / norm if norm > 0 else torch.zeros_like(gb)
                gram_a[i] = ga
        return targets, gram_b, gram_a

    def fit_cores_to_residuals(self, configs: np.ndarray, steps: int, lr: float = 1e-3,
                               inputs: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                               radius: float = 0.0) -> list[float]:
        """``hypernet.residual_fit``: fit U_θ so that each configuration's cores correct its own residual.

        Full-batch Adam on ``mean over (config, matrix) of ‖s·B_i (M_i(C) − M*_i(C)) A_i‖²/‖W_i‖²`` (with
        ``inputs``, on the inputs: see :meth:`residual_core_targets`) with the targets of
        :meth:`residual_core_targets`, bounded by ``radius`` (> 0: :func:`within_radius`); only U_θ moves.
        Deterministic for given weights and ``configs`` ``(C, N, 5)``. Returns the loss before each step and
        after the last.
        """
        if self.hypernet is None:
            raise ValueError("fitting cores needs a configuration-aware model (hypernet)")
        targets, gram_b, gram_a = self.residual_core_targets(configs, inputs)
        if radius > 0:
            targets = within_radius(targets, radius)
        device = self.device
        targets, gram_b, gram_a = targets.to(device), gram_b.to(device), gram_a.to(device)
        idx = as_index_tensor(configs, device)
        opt = torch.optim.Adam(self.hypernet.parameters(), lr=lr)

        def loss_fn() -> torch.Tensor:
            d = self.hypernet(idx) - targets  # (C, N, r, r)
            # tr(Dᵀ Gb D Ga) per (config, matrix): the relative weight error the core leaves.
            return torch.einsum("knab,nae,knef,nfb->kn", d, gram_b, d, gram_a).mean()

        losses = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            losses.append(float(loss_fn()))
        return losses

    def folded_lora(self, idx: np.ndarray | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Plain LoRA factors for one configuration: ``{name: (A (r',in), B' (out,r'))}``, float32, with the
        same scaling α/r as the model.

        Without a bank r' = r and B' = B·M (the fold). With ``lora.bank`` R, r' = r + R: A stacked on the
        configuration's bank entry A_b, B·M beside B_b (no entry in fp mode, ``idx`` None: zeros). The fold is
        computed in float32 from float32 factors and float32 cores, whatever the base's dtype.
        """
        cores = None
        if self.hypernet is not None:
            with torch.no_grad():
                cores = self.hypernet(as_index_tensor(self.space.validate(idx), self.device))
        rows = None if idx is None else self.space.validate(idx)
        out = {}
        for i, (m, layer) in enumerate(zip(self.space.matrices, self._layers)):
            a, b = layer.lora_A.detach(), layer.lora_B.detach()
            if cores is not None:
                b = b @ cores[i]
            if layer.bank_A is not None and layer.bank_B is not None:
                if rows is None:
                    a_b, b_b = torch.zeros_like(layer.bank_A[0]), torch.zeros_like(layer.bank_B[0])
                else:
                    a_b, b_b = layer.bank_A[int(rows[i, 0])].detach(), layer.bank_B[int(rows[i, 0])].detach()
                a, b = torch.cat([a, a_b], dim=0), torch.cat([b, b_b], dim=1)
            out[m.name] = (a.clone(), b.clone())
        return out

    @property
    def folded_rank(self) -> int:
        """The rank of :meth:`folded_lora`'s factors: r, plus R with ``lora.bank``."""
        return self.lora_settings.rank + self.lora_settings.bank


def within_radius(cores: torch.Tensor, radius: float) -> torch.Tensor:
    """``cores`` ``(..., r, r)`` each pulled towards the identity until ``‖M − I‖_F ≤ radius·√r``.

    A core outside that ball becomes ``I + (M − I)·radius·√r/‖M − I‖_F``, the point where the segment from
    I to M leaves the ball; one inside is unchanged. On that segment a convex quadratic error with its
    minimum at M is never above its value at I, so the bounded target still improves on the identity.
    """
    r = cores.shape[-1]
    eye = torch.eye(r, dtype=cores.dtype, device=cores.device)
    step = cores - eye
    norm = step.flatten(-2).norm(dim=-1)[..., None, None]  # (..., 1, 1)
    shrink = torch.clamp(radius * r ** 0.5 / norm.clamp_min(1e-30), max=1.0)
    return eye + step * shrink


def _ridged(gram: torch.Tensor) -> torch.Tensor:
    """``gram`` ``(r, r)`` (symmetric, PSD) plus a ridge of 1e-6 of its mean eigenvalue (and a floor), so that
    solving with it stays finite where the LoRA's directions are fewer than r: a residual of rank below r
    leaves zero singular values in B and A. A no-op in practice for well-conditioned grams."""
    r = gram.shape[0]
    eps = 1e-6 * float(torch.trace(gram)) / r + 1e-30
    return gram + eps * torch.eye(r, dtype=gram.dtype, device=gram.device)


def residual_factors(residual: torch.Tensor, rank: int, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA factors whose update is the top-``rank`` part of ``residual`` ``(out, in)``.

    With ``R = U S Vᵀ`` (singular values in decreasing order): ``B = U_r √(S_r/scaling)`` ``(out, r)`` and
    ``A = √(S_r/scaling) V_rᵀ`` ``(r, in)``, so ``scaling · B · A = U_r S_r V_rᵀ``, the best rank-r
    approximation of ``R`` (Eckart–Young); the square roots split the scale evenly between the factors,
    as LoftQ does, so neither starts tiny. float32.
    """
    u, s, vh = torch.linalg.svd(residual.float(), full_matrices=False)
    root = (s[:rank] / scaling).sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def _quantize(w: torch.Tensor, option: Any, family: str) -> torch.Tensor:
    with torch.no_grad():
        return fake_quantize(w, option, family=family, dtype=w.dtype)
