"""The configuration-aware network U_θ (docs/architecture.md §2.3).

One small network, shared by every target matrix, maps a matrix's quantization knobs (plus its layer
index and module type, optionally a summary of the whole configuration, and optionally the damage the
configuration does, read from the error table) to an r×r core:

    M_i(C) = I + s · U_θ(knobs of c_i, layer_i, type_i [, context(C)] [, damage_i(C)])

so that the LoRA update of matrix i under configuration C is ``(α/r) · B_i M_i(C) A_i``. The last layer
starts near zero, so M ≈ I and training starts from a plain LoRA. All N cores of a configuration come
from one batched call.

U_θ is float32 and computes in float32 even inside a caller's autocast region: it is tiny, and
M = I + s·U must keep its small adjustment before the adapted layer casts M to the activation dtype.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from coalora.core.space import KNOBS, QuantSpace
from coalora.model.settings import HypernetConfig  # the `hypernet:` section; also imported from here


class ConfigHypernet(nn.Module):
    """U_θ: configuration indices → one r×r core per target matrix.

    The layer-index and module-type tables are sized from the space, so any depth works.
    """

    def __init__(self, space: QuantSpace, rank: int, cfg: HypernetConfig | None = None,
                 rel_errors: np.ndarray | None = None, norms_sq: np.ndarray | None = None) -> None:
        """
        Args:
            space: the configuration space (sizes the embedding tables).
            rank: r.
            cfg: the ``hypernet:`` settings.
            rel_errors: ``(N, K)`` relative quantization error ``‖W_i − Q_k(W_i)‖²/‖W_i‖²`` of matrix ``i``
                under flat option ``k``; required when ``cfg.damage``.
            norms_sq: ``(N,)`` ``‖W_i‖²``, which weighs the matrices in the whole-configuration and
                accumulated errors; required when ``cfg.damage``.
        """
        super().__init__()
        cfg = cfg or HypernetConfig()
        if rank <= 0:
            raise ValueError(f"rank must be positive, got {rank}")
        if cfg.gates and rank % cfg.gates:
            raise ValueError(f"{cfg.gates} gates do not divide rank {rank}")
        self.rank = rank
        self.cfg = cfg
        e = cfg.embed_dim
        self.knob_embeddings = nn.ModuleList(nn.Embedding(int(c), e) for c in space.cardinalities)
        n_layers = max(m.layer for m in space.matrices) + 1
        self.layer_embedding = nn.Embedding(n_layers, e)
        self.type_embedding = nn.Embedding(len(space.module_types), e)
        type_id = {t: i for i, t in enumerate(space.module_types)}
        self.register_buffer("layer_ids", torch.tensor([m.layer for m in space.matrices]), persistent=False)
        self.register_buffer(
            "type_ids", torch.tensor([type_id[m.module_type] for m in space.matrices]), persistent=False
        )
        n_in = e * (len(KNOBS) + 2)
        if cfg.context:
            bits_opts = space.options["bits"]
            # Context features: normalised average bits + parameter share per weight bit width.
            self.context_proj = nn.Linear(1 + len(bits_opts), e)
            bits_per_option = torch.tensor(
                [space.option(r).storage_bits for r in space.option_table], dtype=torch.float32
            )
            self.register_buffer("option_bits", bits_per_option, persistent=False)
            self.register_buffer("strides", torch.as_tensor(space.strides), persistent=False)
            self.register_buffer(
                "weights", torch.as_tensor(space.numels / space.numels.sum(), dtype=torch.float32),
                persistent=False,
            )
            self._bits_range = (space.min_bits, space.max_bits)
            self._n_bits_opts = len(bits_opts)
            n_in += e
        if cfg.damage:
            self._init_damage(space, rel_errors, norms_sq)
            self.damage_proj = nn.Linear(3, e)
            n_in += e
        self.norm = nn.LayerNorm(n_in)
        self.fc1 = nn.Linear(n_in, cfg.hidden)
        self.act = nn.SiLU()
        # A dense core needs r² outputs per matrix; a gated one K (cfg.gates).
        self.fc2 = nn.Linear(cfg.hidden, cfg.gates or rank * rank)
        nn.init.normal_(self.fc2.weight, std=cfg.init_std)
        nn.init.zeros_(self.fc2.bias)
        if cfg.warm_start > 0:
            # Warm start: U = 0 exactly, so M = I exactly until training switches U_θ on. Drawn first
            # and then zeroed, so that the random stream (and every later initialisation) is unchanged.
            nn.init.zeros_(self.fc2.weight)
        # Learnable scale s on the adjustment (init 1).
        self.scale = nn.Parameter(torch.ones(()))
        self.register_buffer("eye", torch.eye(rank), persistent=False)

    def _context(self, idx: torch.Tensor) -> torch.Tensor:
        """Global features of each configuration: ``(B, N, 5)`` → ``(B, 1 + n_bits_options)``."""
        flat = (idx * self.strides).sum(-1)  # (B, N)
        avg = (self.option_bits[flat] * self.weights).sum(-1, keepdim=True)
        lo, hi = self._bits_range
        avg = (avg - lo) / max(hi - lo, 1e-9)
        share = torch.zeros(idx.shape[0], self._n_bits_opts, device=idx.device)
        share.scatter_add_(1, idx[..., 0], self.weights.expand(idx.shape[0], -1))
        return torch.cat([avg, share], dim=-1)

    def _init_damage(self, space: QuantSpace, rel_errors: np.ndarray | None, norms_sq: np.ndarray | None) -> None:
        if rel_errors is None or norms_sq is None:
            raise ValueError("hypernet.damage needs the relative error table and the squared weight norms")
        n, k = len(space.matrices), space.n_options
        rel = np.asarray(rel_errors, dtype=np.float64)
        sq = np.asarray(norms_sq, dtype=np.float64)
        if rel.shape != (n, k) or sq.shape != (n,):
            raise ValueError(f"damage tables must be ({n}, {k}) and ({n},), got {rel.shape} and {sq.shape}")
        if not (np.all(np.isfinite(rel)) and np.all(rel >= 0) and np.all(sq > 0)):
            raise ValueError("damage tables must hold finite non-negative errors and positive norms")
        # An exact option (zero error) would be log 0: floor the errors far below any real one.
        rel = np.maximum(rel, 1e-12)
        log_rel = np.log(rel)
        # Every log-error is standardised by the table's own spread, so the three features share one
        # scale whatever the model (LayerNorm then mixes them with the embeddings).
        self._log_mu, self._log_sd = float(log_rel.mean()), float(max(log_rel.std(), 1e-6))
        self.register_buffer("rel_errors", torch.as_tensor(rel, dtype=torch.float32), persistent=False)
        self.register_buffer("norms_sq", torch.as_tensor(sq / sq.sum(), dtype=torch.float32), persistent=False)
        if not self.cfg.context:
            self.register_buffer("strides", torch.as_tensor(space.strides), persistent=False)
        layers = np.array([m.layer for m in space.matrices])
        # upto[l, j] = 1 when matrix j sits in layer l or an earlier one: one matmul gives, per matrix,
        # the weighted error of everything the signal has passed through by the end of its layer.
        upto = (layers[None, :] <= layers[:, None]).astype(np.float32)  # (N, N), row i: matrices up to layer_i
        self.register_buffer("upto", torch.as_tensor(upto), persistent=False)

    def damage(self, idx: torch.Tensor) -> torch.Tensor:
        """Standardised log relative errors of each matrix: ``(B, N, 5)`` → ``(B, N, 3)``.

        Features: the matrix's own error under its option; the whole configuration's (‖W‖²-weighted);
        that of all matrices in layers up to and including the matrix's own.
        """
        flat = (idx * self.strides).sum(-1)  # (B, N)
        own = self.rel_errors.gather(1, flat.t()).t()  # (B, N): rel_errors[i, flat[b, i]]
        abs_err = own * self.norms_sq  # (B, N), as shares of the total ‖W‖²
        total = abs_err.sum(-1, keepdim=True).expand_as(own)
        upto = (abs_err @ self.upto.t()) / (self.upto @ self.norms_sq)  # (B, N)
        feats = torch.stack([own, total, upto], dim=-1).clamp_min(1e-12).log()
        return (feats - self._log_mu) / self._log_sd

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Cores for one or many configurations.

        Args:
            idx: ``(N, 5)`` or ``(B, N, 5)`` long tensor of option indices.
        Returns:
            ``(N, r, r)`` or ``(B, N, r, r)``: M = I + s·U, float32.
        """
        if torch.is_autocast_enabled(idx.device.type):
            with torch.autocast(device_type=idx.device.type, enabled=False):
                return self._forward(idx)
        return self._forward(idx)

    def _forward(self, idx: torch.Tensor) -> torch.Tensor:
        single = idx.dim() == 2
        if single:
            idx = idx.unsqueeze(0)
        b, n, _ = idx.shape
        parts = [emb(idx[..., k]) for k, emb in enumerate(self.knob_embeddings)]
        parts.append(self.layer_embedding(self.layer_ids).expand(b, n, -1))
        parts.append(self.type_embedding(self.type_ids).expand(b, n, -1))
        if self.cfg.context:
            ctx = self.context_proj(self._context(idx))  # (B, e)
            parts.append(ctx.unsqueeze(1).expand(b, n, -1))
        if self.cfg.damage:
            parts.append(self.damage_proj(self.damage(idx)))
        h = self.fc2(self.act(self.fc1(self.norm(torch.cat(parts, dim=-1)))))
        if self.cfg.gates:
            # (B, N, K) gates → each repeated over its block of r/K directions → diagonal (B, N, r, r).
            u = h.repeat_interleave(self.rank // self.cfg.gates, dim=-1)
            cores = self.eye + torch.diag_embed(self.scale * u)
        else:
            cores = self.eye + self.scale * h.view(b, n, self.rank, self.rank)
        return cores[0] if single else cores


def as_index_tensor(idx: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """A configuration index array as a long tensor on ``device``."""
    return torch.as_tensor(np.asarray(idx), dtype=torch.long, device=device)
