"""The adapted model's settings: the ``lora:`` and ``hypernet:`` sections of the experiment YAML.

These dataclasses are the one definition of each setting: :mod:`coalora.pipeline.config` builds them
from the YAML, :class:`~coalora.model.lora.CoaModel` and :class:`~coalora.model.hypernet.ConfigHypernet`
read them. They live apart from those modules so that reading a configuration does not import torch.
Every check runs on construction and names the YAML key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from coalora.errors import ConfigError

LORA_INITS = ("default", "residual")  # lora.init: see LoraSettings


@dataclass
class LoraSettings:
    """LoRA shape (the ``lora:`` section). ``alpha / rank`` scales the update, as in PEFT.

    Attributes:
        rank: r, the inner width of each matrix's ``B (out, r) · A (r, in)``.
        alpha: the update is scaled by ``alpha / rank``.
        dropout: dropout on the LoRA branch's input, in [0, 1).
        init: ``default`` (PEFT's: Kaiming-uniform A, zero B, so training starts at the quantized base)
            or ``residual`` (LoftQ-style, the paper's choice): A and B from the top-r SVD of the mean
            quantization residual ``W − Q_c(W)`` over the training configurations, so that
            ``(α/r)·B·A`` starts as the best rank-r correction of the average quantization error.
            ``fp-lora`` (no quantization, no residual) keeps the default.
        bank: R > 0 adds a configuration-dependent direction (issue #15): per target matrix and per weight
            bit width of the space, a rank-R LoRA pair ``B_b (out, R) · A_b (R, in)`` (same scaling), used
            where the configuration gives that matrix that bit width. Every configuration, seen or not,
            draws its entries from widths the matrix trained at. Zero B_b at start (``residual``: the
            top-R part of the mean residual at that width left by B·A). 0: off.

    Raises:
        ConfigError: on construction, naming the key, e.g. ``lora.rank: must be a positive integer, got 0``.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.0
    init: str = "default"
    bank: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or int(self.rank) != self.rank or self.rank <= 0:
            raise ConfigError(f"lora.rank: must be a positive integer, got {self.rank}")
        if not self.alpha > 0:  # `not >` also refuses NaN
            raise ConfigError(f"lora.alpha: must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout: must be in [0, 1), got {self.dropout}")
        if isinstance(self.bank, bool) or int(self.bank) != self.bank or self.bank < 0:
            raise ConfigError(f"lora.bank: must be a non-negative integer (0: off), got {self.bank}")
        if self.init not in LORA_INITS:
            raise ConfigError(f"lora.init: must be one of {', '.join(LORA_INITS)}, got {self.init!r}")


@dataclass
class HypernetConfig:
    """Shape of U_θ (the ``hypernet:`` section).

    Attributes:
        embed_dim: width of each embedding (knob, layer, module type, context).
        hidden: width of the hidden layer.
        context: feed a global summary of the configuration (its average bits and the share of
            parameters at each weight bit width) to every matrix. The paper's model sees only each
            matrix's own knobs (context off).
        init_std: std of the last layer's weights (bias 0), so M ≈ I at the start.
        warm_start: share of the training schedule (in [0, 1]) that trains the shared LoRA alone before
            U_θ switches on. U_θ's last layer starts at exactly zero then, so every core is exactly
            the identity during the warm phase and at the switch: coa starts where shared stands.
            0 (the default) trains U_θ from the first step, as the paper does.
        damage: also feed U_θ what each configuration does to the weights, read from the error table
            the allocation computes: the relative quantization error ‖W_i − Q(W_i)‖²/‖W_i‖² of the
            matrix under its option, that of the whole configuration, and that of every matrix in the
            layers up to and including this one (the damage the signal has gathered there). Two options
            with the same bits can differ by half in error; the knobs alone cannot tell them apart.
        gates: 0 (the default, the paper's) makes each core a dense r×r matrix. K > 0 makes it K gates
            instead: the LoRA's r directions split into K blocks of r/K, and U_θ scales each block of each
            matrix, ``M = blockdiag((1 + s·u_1)·I, …, (1 + s·u_K)·I)``. A structured, much smaller
            adjustment (K numbers per matrix instead of r²) at the same LoRA rank. K must divide lora.rank.
        residual_fit: Adam steps (0: off) that fit U_θ, before any data, to each configuration's own
            quantization residual: with ``lora.init: residual`` the shared B·A corrects the mean residual,
            and the core that best corrects configuration C's is ``M*_i = (1/s)·B_i⁺ R_i(C) A_i⁺``
            (least squares within the LoRA's directions); U_θ is fitted to it, each matrix's error
            weighted as ``‖(α/r)·B_i (M − M*) A_i‖²/‖W_i‖²``. R_i(C) depends only on matrix i's own option,
            so the fit teaches U_θ what every option does to every matrix. Needs ``lora.init: residual``.
        residual_fit_configs: random configurations fitted on beside the training set (across its bit
            range, never a held-out evaluation configuration), so that U_θ sees many more options.
        residual_fit_calibration: training batches (0: none, the default) whose inputs weigh the fit. With
            them, each matrix's error is the error of its outputs on those inputs X_i rather than of its
            weights, ``‖X_i (s·B_i (M − M*) A_i)ᵀ‖²/‖X_i W_iᵀ‖²``, and M* is the least-squares core on them:
            directions the inputs never take cost nothing (as GPTQ weighs its rounding). Needs
            ``residual_fit``.
        residual_fit_radius: a trust region for the fit (0: none, the default). Each target core is pulled
            back towards the identity along the segment between them until ``‖M* − I‖_F ≤ radius·√r``
            (``√r`` = ‖I‖_F), which keeps every point of that segment at least as good as the identity (the
            fit's error is a convex quadratic with its minimum at M*). Why: at the lowest budgets M* can be
            many times the identity (MiniLM at 2.25 bits: ‖M*‖_F median 19 against ‖I‖_F = 4), and a core of
            gain g multiplies what each step of A and B does to that configuration by g, which at the usual
            learning rate stopped a classifier learning. ``1`` lets a core at most cancel or double the
            shared correction.
        residual_fit_lr: Adam's learning rate for the fit (default 3e-3: on SmolLM2 at 2.75-4.5 bits, 200
            steps cut the held-out configurations' in-span error 5.7x, 1e-3 only 3.8x; it is a smooth
            full-batch problem). Used only with ``residual_fit``.

    Raises:
        ConfigError: on construction, naming the key, e.g. ``hypernet.hidden: must be positive, got 0``.
    """

    embed_dim: int = 8
    hidden: int = 128
    context: bool = False
    init_std: float = 1e-3
    warm_start: float = 0.0
    damage: bool = False
    gates: int = 0
    residual_fit: int = 0
    residual_fit_configs: int = 32
    residual_fit_calibration: int = 0
    residual_fit_radius: float = 0.0
    residual_fit_lr: float = 3e-3

    def __post_init__(self) -> None:
        if isinstance(self.gates, bool) or int(self.gates) != self.gates or self.gates < 0:
            raise ConfigError(f"hypernet.gates: must be 0 (a dense core) or a positive number of gates, got {self.gates}")
        for key in ("residual_fit", "residual_fit_configs", "residual_fit_calibration"):
            v = getattr(self, key)
            if isinstance(v, bool) or int(v) != v or v < 0:
                raise ConfigError(f"hypernet.{key}: must be a whole number >= 0, got {v}")
        for key in ("embed_dim", "hidden"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"hypernet.{key}: must be positive, got {getattr(self, key)}")
        if isinstance(self.residual_fit_radius, bool) or not (
                math.isfinite(self.residual_fit_radius) and self.residual_fit_radius >= 0):
            raise ConfigError(f"hypernet.residual_fit_radius: must be >= 0 (0: no bound), got {self.residual_fit_radius}")
        if isinstance(self.residual_fit_lr, bool) or not (
                math.isfinite(self.residual_fit_lr) and self.residual_fit_lr > 0):
            raise ConfigError(f"hypernet.residual_fit_lr: must be positive, got {self.residual_fit_lr}")
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ConfigError(f"hypernet.init_std: must be >= 0, got {self.init_std}")
        if isinstance(self.warm_start, bool) or not 0.0 <= self.warm_start <= 1.0:  # `not <=` refuses NaN
            raise ConfigError(f"hypernet.warm_start: must be a share of the schedule in [0, 1], got {self.warm_start}")
