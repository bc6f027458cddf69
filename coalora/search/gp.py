"""The GP side of the configuration search: input encodings, the additive bits kernel, qLogNEHVI.

A BoTorch ``SingleTaskGP`` models the loss f1 of a configuration; the average bits f2 is exact and enters
the acquisition as a deterministic objective (it is affine in every input map here). Used by
:mod:`coalora.search`; BoTorch and GPyTorch are imported lazily, on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coalora.core.pareto import ObjectiveBounds, infer_reference_point
from coalora.core.space import KNOBS, QuantSpace
from coalora.errors import SearchError

ENCODINGS: tuple[str, ...] = ("full", "bits", "layer")
KERNELS: tuple[str, ...] = ("additive", "rbf", "additive+rbf")


def _use_pure_pytorch_log_ehvi() -> None:
    """Keep BoTorch on its pure-PyTorch qLog(N)EHVI path.

    BoTorch ≥ 0.17 JIT-compiles a C++ kernel (``-march=native``, via ``torch.utils.cpp_extension``)
    the first time a qLog(N)EHVI is built. That costs a minute of compilation in every fresh
    environment, builds binaries tied to one CPU model (clusters mix them), and waits forever on the
    build directory's lock file if an earlier process was killed mid-build (seen here: a search actor
    hung for good). The kernel only speeds up the acquisition's inner loop, which is not our
    bottleneck, so we mark it as already tried; BoTorch then uses its Python implementation.
    """
    try:
        from botorch.acquisition.multi_objective import logei
    except ImportError:  # pragma: no cover - botorch is a dependency
        return
    if getattr(logei, "_C", None) is None:
        logei._load_attempted = True


class ConfigEncoder:
    """Maps configurations to GP inputs in ``[0, 1]^d`` in which the average bits is affine.

    - ``full``: per matrix, every knob with more than one option as ``index / (cardinality − 1)``, then
      every matrix's storage bits scaled to ``[0, 1]`` by the space's bit range: ``d = N·K' + N``.
    - ``bits``: only the per-matrix storage bits: ``d = N``.
    - ``layer``: per-layer and per-module-type numel-weighted mean of the scaled bits: ``d = L + T``.

    ``avg_bits(C) = encode(C) @ a + b`` with ``(a, b) = bits_affine()``, which lets bits enter the
    acquisition exactly, as a deterministic objective. ``bits_columns`` lists the (scaled) bits features,
    on which the additive kernel acts.
    """

    def __init__(self, space: QuantSpace, kind: str) -> None:
        if kind not in ENCODINGS:
            raise SearchError(f"encoding {kind!r} is not one of {list(ENCODINGS)}")
        self.space, self.kind = space, kind
        self.lo = space.min_bits
        self.span = max(space.max_bits - space.min_bits, 1e-12)
        self.varying = [k for k in range(len(KNOBS)) if space.cardinalities[k] > 1]
        w = space.numels / space.numels.sum()
        n = space.n_matrices
        if kind == "full":
            self.dim = n * len(self.varying) + n
            self._a = np.concatenate([np.zeros(n * len(self.varying)), self.span * w])
            self.bits_columns = list(range(n * len(self.varying), self.dim))
        elif kind == "bits":
            self.dim = n
            self._a = self.span * w
            self.bits_columns = list(range(n))
        else:
            layers = sorted({m.layer for m in space.matrices})
            types = space.module_types
            # (N, L + T) averaging matrix: column g holds the numel weights of group g's matrices, summing to 1.
            G = np.zeros((n, len(layers) + len(types)))
            for i, m in enumerate(space.matrices):
                G[i, layers.index(m.layer)] = w[i]
                G[i, len(layers) + types.index(m.module_type)] = w[i]
            group_w = G.sum(0)
            self._G = G / group_w
            self.dim = G.shape[1]
            self._a = np.concatenate([self.span * group_w[: len(layers)], np.zeros(len(types))])
            self.bits_columns = list(range(self.dim))

    def encode(self, idx: np.ndarray) -> np.ndarray:
        """``(B, N, 5)`` index arrays → ``(B, d)`` float64 features in ``[0, 1]``."""
        idx = np.asarray(idx)
        z = (self.space.matrix_bits(idx) - self.lo) / self.span  # (B, N)
        if self.kind == "bits":
            return z
        if self.kind == "layer":
            return z @ self._G
        card = self.space.cardinalities[self.varying]
        knobs = idx[..., self.varying] / (card - 1)  # (B, N, K')
        return np.concatenate([knobs.reshape(len(idx), -1), z], axis=-1)

    def bits_affine(self) -> tuple[np.ndarray, float]:
        """``(a (d,), b)`` with ``average_bits = encode(C) @ a + b``."""
        return self._a.copy(), float(self.lo)

def bits_basis(z: np.ndarray, n_basis: int) -> np.ndarray:
    """Gaussian-bump features of scaled bits: ``(..., G)`` in ``[0, 1]`` → ``(..., G, n_basis)``.

    Centres evenly spaced on ``[0, 1]``, width equal to their spacing.
    """
    centres = np.linspace(0.0, 1.0, n_basis)
    width = 1.0 / max(n_basis - 1, 1)
    return np.exp(-0.5 * ((np.asarray(z)[..., None] - centres) / width) ** 2)


def additive_bits_kernel(n_groups: int, n_basis: int) -> Any:
    """A GPyTorch kernel for the additive model of :class:`GPInputs` (columns ``[Φ | ψ | …]``).

    With ``φ(z)`` the :func:`bits_basis` features of group ``g``'s scaled bits ``z_g``,

        k(x, x') = σ₁² · Σ_g φ(z_g)·φ(z'_g) / G  +  σ₂² · ψ(x)·ψ(x'),     ψ(x) = Σ_g w_g φ(z_g),

    i.e. a Bayesian additive model ``f1(C) = Σ_g f_g(z_g)`` whose per-matrix effects share a common shape
    (``w`` = numel shares) plus their own deviations. Additivity over matrices is the structure behind
    knapsack bit allocation (LQ-LoRA's ILP minimises a sum of per-matrix errors); the shared shape lets a few
    dozen points inform every matrix. Only ``σ₁², σ₂²`` are learned. The features ``Φ = [φ(z_g)]_g``
    (``G·R`` columns) and ``ψ`` (``R`` columns) are computed once per configuration by :class:`GPInputs`,
    so the kernel is one matmul on the first ``G·R + R`` input columns.

    Inputs ``(..., n, D)`` and ``(..., m, D)`` give ``(..., n, m)`` (``(..., n)`` with ``diag``).
    """
    import torch
    from gpytorch.constraints import Positive
    from gpytorch.kernels import Kernel

    width = n_groups * n_basis

    class AdditiveBitsKernel(Kernel):
        def __init__(self) -> None:
            super().__init__()
            self.register_parameter("raw_scales", torch.nn.Parameter(torch.zeros(2, dtype=torch.float64)))
            self.register_constraint("raw_scales", Positive())

        @property
        def scales(self) -> "torch.Tensor":
            """``(σ₁², σ₂²)``."""
            return self.raw_scales_constraint.transform(self.raw_scales)

        def forward(self, x1: "torch.Tensor", x2: "torch.Tensor", diag: bool = False, **params: Any) -> "torch.Tensor":
            # Views of the feature columns; the scales multiply the (small) products, not the inputs.
            p1, s1 = x1[..., :width], x1[..., width : width + n_basis]
            p2, s2 = x2[..., :width], x2[..., width : width + n_basis]
            sc = self.scales
            if diag:
                return sc[0] / n_groups * (p1 * p2).sum(-1) + sc[1] * (s1 * s2).sum(-1)
            return sc[0] / n_groups * (p1 @ p2.transpose(-1, -2)) + sc[1] * (s1 @ s2.transpose(-1, -2))

    return AdditiveBitsKernel()


class GPInputs:
    """GP inputs of configurations for one kernel, with the average bits affine in them.

    ``rbf``: the encoding itself. ``additive``: ``[Φ (G·R) | ψ (R) | z (G)]``, the basis features of
    :func:`additive_bits_kernel` precomputed (so the kernel is a matmul) and the scaled bits ``z`` (so the
    bits stay affine); ``additive+rbf``: ``[Φ | ψ | encoding (d)]``, the RBF acting on the encoding columns.
    """

    def __init__(self, encoder: ConfigEncoder, kernel: str, n_basis: int) -> None:
        self.encoder, self.kernel, self.n_basis = encoder, kernel, n_basis
        a, b = encoder.bits_affine()
        self.n_groups = len(encoder.bits_columns)
        w = a[encoder.bits_columns]
        self.weights = w / w.sum()
        self.offset = 0 if kernel == "rbf" else self.n_groups * n_basis + n_basis
        tail = encoder.bits_columns if kernel == "additive" else list(range(encoder.dim))
        self._tail = np.asarray(tail, dtype=np.int64)
        self.dim = self.offset + len(tail)
        self._a = np.concatenate([np.zeros(self.offset), a[self._tail]])
        self._b = b

    def __call__(self, configs: np.ndarray) -> np.ndarray:
        """``(B, N, 5)`` → ``(B, D)``."""
        X = self.encoder.encode(configs)
        if self.kernel == "rbf":
            return X
        phi = bits_basis(X[:, self.encoder.bits_columns], self.n_basis)  # (B, G, R)
        shared = np.einsum("bgr,g->br", phi, self.weights)
        return np.concatenate([phi.reshape(len(X), -1), shared, X[:, self._tail]], axis=1)

    def bits_affine(self) -> tuple[np.ndarray, float]:
        """``(a (D,), b)`` with ``average_bits = inputs @ a + b``."""
        return self._a.copy(), float(self._b)

    def covariance(self) -> Any:
        """The GPyTorch covariance module on these inputs."""
        from botorch.models.utils.gpytorch_modules import get_covar_module_with_dim_scaled_prior

        if self.kernel == "rbf":
            return get_covar_module_with_dim_scaled_prior(ard_num_dims=self.encoder.dim)
        additive = additive_bits_kernel(self.n_groups, self.n_basis)
        if self.kernel == "additive":
            return additive
        rbf = get_covar_module_with_dim_scaled_prior(
            ard_num_dims=self.encoder.dim, active_dims=list(range(self.offset, self.dim))
        )
        return additive + rbf


class GPAcquisition:
    """qLogNEHVI over (normalised loss, normalised bits) with a GP on the loss and exact bits.

    Fits ``SingleTaskGP(X, y, covar_module, Standardize)`` with ``fit_gpytorch_mll`` (L-BFGS capped at
    ``fit_maxiter``); inputs and covariance come from :class:`GPInputs`. The bits enter as a deterministic
    second objective computed from the inputs (they are affine in them: ``X @ a + b``), both objectives
    are negated for BoTorch's maximisation, and the reference point is one every observation dominates
    (:func:`~coalora.core.pareto.infer_reference_point`, 10 % margin). A single-output GP keeps BoTorch's
    cached-root fast path for the noisy baseline.

    Args:
        inputs: the GP input map.
        configs: ``(n, N, 5)`` observed configurations; ``y``: ``(n,)`` their normalised losses;
            ``bits_norm``: ``(n,)`` their normalised bits.
        bounds: the fixed normalisation (its bits range scales the deterministic objective).
        fit_maxiter, mc_samples, max_baseline: see :class:`SearchSettings`; ``seed`` seeds the QMC sampler.
    """

    def __init__(
        self, inputs: GPInputs, configs: np.ndarray, y: np.ndarray, bits_norm: np.ndarray,
        bounds: ObjectiveBounds, fit_maxiter: int, mc_samples: int, seed: int, max_baseline: int = 32,
    ) -> None:
        import torch
        from botorch.acquisition.multi_objective.logei import qLogNoisyExpectedHypervolumeImprovement
        from botorch.acquisition.multi_objective.objective import GenericMCMultiOutputObjective
        from botorch.acquisition.multi_objective.utils import prune_inferior_points_multi_objective
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from botorch.sampling import SobolQMCNormalSampler
        from gpytorch.mlls import ExactMarginalLogLikelihood

        self.inputs = inputs
        self._torch = torch
        dt = torch.float64
        tX = torch.as_tensor(inputs(configs), dtype=dt)
        ty = torch.as_tensor(y, dtype=dt).unsqueeze(-1)
        self.gp = SingleTaskGP(tX, ty, covar_module=inputs.covariance(), outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(self.gp.likelihood, self.gp)
        fit_gpytorch_mll(mll, optimizer_kwargs={"options": {"maxiter": int(fit_maxiter)}})
        a, b = inputs.bits_affine()
        span, lo = bounds.bits[1] - bounds.bits[0], bounds.bits[0]
        a_n = torch.as_tensor(a / span, dtype=dt)  # normalised bits = X @ a_n + b_n
        b_n = (b - lo) / span

        def objective(samples: "torch.Tensor", X: "torch.Tensor | None" = None) -> "torch.Tensor":
            # samples: (mc, batch, q, 1) loss draws; X: (batch, q, D) → (mc, batch, q, 2), both maximised.
            bits = (X @ a_n + b_n).unsqueeze(-1).expand(samples.shape)
            return torch.cat([-samples, -bits], dim=-1)

        ref = torch.as_tensor(-infer_reference_point(np.stack([y, bits_norm], axis=-1), scale=0.1), dtype=dt)
        mc_objective = GenericMCMultiOutputObjective(objective)
        # NEHVI re-evaluates the posterior of every baseline point jointly with each candidate, so its cost
        # grows with the baseline: keep the max_baseline points most likely to be Pareto-optimal.
        baseline = prune_inferior_points_multi_objective(
            self.gp, tX, ref, objective=mc_objective, max_frac=min(1.0, max_baseline / len(tX))
        )
        _use_pure_pytorch_log_ehvi()
        self.acqf = qLogNoisyExpectedHypervolumeImprovement(
            self.gp,
            ref_point=ref.tolist(),
            X_baseline=baseline,
            sampler=SobolQMCNormalSampler(torch.Size([mc_samples]), seed=seed),
            objective=mc_objective,
            prune_baseline=False,
            cache_root=True,
        )

    def __call__(self, configs: np.ndarray, batch: int = 256) -> np.ndarray:
        """``(B, N, 5)`` → ``(B,)`` log-EHVI values (q = 1 each)."""
        torch = self._torch
        X = torch.as_tensor(self.inputs(configs), dtype=torch.float64)
        out = []
        with torch.no_grad():
            for s in range(0, len(X), batch):
                out.append(self.acqf(X[s : s + batch].unsqueeze(1)))
        return torch.cat(out).numpy() if out else np.zeros(0)
