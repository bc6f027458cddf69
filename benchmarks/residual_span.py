"""How much of a configuration's quantization residual a configuration-aware core can reach (issue #15).

coa corrects configuration C with ``s·B·M(C)·A``: A and B are shared, only the r×r core M moves with C. So
whatever U_θ learns, the correction lives in the span of B's columns and A's rows. A per-config adapter
has its own A and B. For each matrix of the headroom testbed (SmolLM2-135M, ``configs/study/
smollm2-lowbit.yaml``) and each configuration this prints the share of the residual R(C) = W − Q_C(W)
that is left (‖R − correction‖²/‖R‖², summed over the model's target matrices) by:

- ``shared``: B·A of ``lora.init: residual`` (the top-r part of the mean residual over the training set),
  the same for every configuration (core I);
- ``best core``: the same A, B with the least-squares core M*(C) = (1/s)·B⁺R(C)A⁺, the best that any U_θ
  can give (what ``hypernet.residual_fit`` aims at);
- ``own top-r``: the configuration's own top-r SVD of R(C), the start ``lora.init: residual`` gives a
  per-config adapter;
- ``own top-4r``: the same at four times the rank (what ``coa-gates``' rank-64 LoRA could hold).

Configurations: the testbed's allocations at ``eval.budgets`` and its first random unseen ones, as the
study draws them. No training, no timing: the numbers are exact for the given weights.

The last column, ``reach``, is (1 − best core)/(1 − own top-r): the part of what the configuration's own
rank-r directions could remove that the best core removes, a weight-level ceiling on the gap a
configuration-aware core can close between shared and per-config at that rank.

With ``--bank R`` two more columns ask whether a configuration-dependent direction would reach further:
a rank-R correction per (matrix, bit width), learnt from the training set's residuals and picked by each
matrix's bit width in C (see :func:`residual_shares`), and ``reach bank``, the same ratio with it.

    python benchmarks/residual_span.py [--unseen 3] [--rank 16] [--bank 16] [--csv out.csv] [--json]
    python benchmarks/residual_span.py --quick      # the same table on a random tiny Llama (seconds)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bench import emit, parser, setup_threads  # noqa: E402

LOWBIT = ROOT / "configs" / "study" / "smollm2-lowbit.yaml"


def residual_shares(model, configs: np.ndarray, rank: int, trainset: np.ndarray | None = None,
                    bank_rank: int = 0) -> dict[str, np.ndarray]:
    """Per configuration ``(C,)``: the left-over share of ‖R(C)‖² under each correction (see the module
    docstring). ``model`` is a :class:`coalora.model.lora.CoaModel` whose A, B are already set by
    ``init_lora_from_residual``; ``configs`` ``(C, N, 5)``.

    With ``bank_rank`` r' > 0 and the ``trainset`` ``(S, N, 5)`` the LoRA was initialised from, two more
    columns measure a configuration-dependent direction: a bank of rank-r' corrections per (matrix, bit
    width), each the top-r' part of the mean training residual at that bit width minus B·A. ``shared+bank``
    adds the bank entry of the configuration's bit width at each matrix to B·A (no fitting); ``best core+bank``
    is the least-squares correction in the joint span of [B, bank] and [A, bank] (rank r + r'). A matrix whose
    bit width the training set never gave it has no bank entry there (only B·A and the core).
    """
    from coalora.core.quant import fake_quantize

    space = model.space
    flat = np.stack([space.flat_option(space.validate(c)) for c in configs])
    bits = np.asarray(configs)[:, :, 0]  # (C, N): each matrix's weight bit-width index
    names = ["shared", "best core", "own top-r", "own top-4r"]
    if bank_rank:
        if trainset is None:
            raise ValueError("a bank needs the training set")
        names += ["shared+bank", "best core+bank"]
        train_flat = np.stack([space.flat_option(space.validate(c)) for c in trainset])
    left = {k: np.zeros(len(configs)) for k in names}
    total = np.zeros(len(configs))

    def quantized_residual(i: int, k: int) -> torch.Tensor:
        layer = model.layers[i]
        q = fake_quantize(layer.weight, space.option(space.option_table[k]), family=space.family,
                          dtype=layer.weight.dtype)
        return layer.weight.float() - q.float()

    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            a, b, s = layer.lora_A.float(), layer.lora_B.float(), layer.scaling
            shared = s * b @ a
            # Orthonormal bases of B's columns and A's rows: the least-squares core's correction is the
            # projection of R onto them, P_B R P_A.
            qb, _ = torch.linalg.qr(b)
            qa, _ = torch.linalg.qr(a.T)
            bank: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
            if bank_rank:
                options, counts = np.unique(train_flat[:, i], return_counts=True)
                means: dict[int, list[Any]] = {}
                for k, n in zip(options, counts):
                    w_bits = int(np.asarray(space.option_table[k])[0])
                    acc = means.setdefault(w_bits, [torch.zeros_like(shared), 0])
                    acc[0] += quantized_residual(i, int(k)) * float(n)
                    acc[1] += int(n)
                for w_bits, (total_r, n) in means.items():
                    u, sv, vh = torch.linalg.svd(total_r / n - shared, full_matrices=False)
                    entry = (u[:, :bank_rank] * sv[:bank_rank]) @ vh[:bank_rank]
                    cols, _ = torch.linalg.qr(torch.cat([b, u[:, :bank_rank]], dim=1))
                    rows_, _ = torch.linalg.qr(torch.cat([a.T, vh[:bank_rank].T], dim=1))
                    bank[w_bits] = (entry, cols, rows_)
            for k in np.unique(flat[:, i]):
                r = quantized_residual(i, int(k))
                rows = np.flatnonzero(flat[:, i] == k)
                norm = float(r.square().sum())
                sv = torch.linalg.svdvals(r).square()
                in_span = qb @ (qb.T @ r @ qa) @ qa.T
                total[rows] += norm
                left["shared"][rows] += float((r - shared).square().sum())
                left["best core"][rows] += float((r - in_span).square().sum())
                left["own top-r"][rows] += norm - float(sv[:rank].sum())
                left["own top-4r"][rows] += norm - float(sv[: 4 * rank].sum())
                if bank_rank:
                    got = bank.get(int(bits[rows[0], i]))
                    if got is None:  # no training configuration put this bit width here: no bank entry
                        left["shared+bank"][rows] += float((r - shared).square().sum())
                        left["best core+bank"][rows] += float((r - in_span).square().sum())
                    else:
                        entry, cols, rows_ = got
                        left["shared+bank"][rows] += float((r - shared - entry).square().sum())
                        left["best core+bank"][rows] += float((r - cols @ (cols.T @ r @ rows_) @ rows_.T).square().sum())
    return {k: v / total for k, v in left.items()}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--unseen", type=int, default=3, help="random unseen configurations to include (first N)")
    p.add_argument("--rank", type=int, default=None, help="LoRA rank (default: the testbed's lora.rank)")
    p.add_argument("--csv", type=Path, default=None, help="also write the table here (appending to a file of it)")
    p.add_argument("--bank", type=int, default=0, metavar="R",
                   help="also measure a rank-R bank of corrections per (matrix, bit width) (see residual_shares)")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import (budget_configs, build_adapted, build_space, error_table_for,
                                             initial_trainset, load_base, random_configs)

    rank = args.rank or (4 if args.quick else None)
    sets = [] if rank is None else [f"lora.rank={rank}", f"lora.alpha={2 * rank}"]
    # --quick: the same table on a random tiny Llama (seconds), to check the script.
    quick = ["model.name=tiny-llama"] if args.quick else []
    cfg = load_config(LOWBIT, ["lora.init=residual", *quick, *sets])
    loaded = load_base(cfg)
    space = build_space(cfg, loaded.model)
    err = error_table_for(cfg, loaded.model, space, progress=False)
    trainset = initial_trainset(cfg, space, err)
    seen = budget_configs(cfg, space, err)
    unseen = random_configs(cfg, space)[: args.unseen]
    model = build_adapted(cfg, loaded, "shared")
    model.init_lora_from_residual(trainset)
    configs = np.concatenate([seen, unseen])
    shares = residual_shares(model, configs, cfg.lora.rank, trainset, args.bank)
    shares["reach"] = (1 - shares["best core"]) / (1 - shares["own top-r"])
    if args.bank:
        shares["reach bank"] = (1 - shares["best core+bank"]) / (1 - shares["own top-r"])
    rows = [{"rank": cfg.lora.rank, "set": "seen" if j < len(seen) else "unseen",
             "avg_bits": round(float(space.average_bits(c)), 4),
             **{k.replace(" ", "_").replace("-", "_").replace("+", "_"): round(float(v[j]), 5) for k, v in shares.items()}}
            for j, c in enumerate(configs)]
    emit(f"{cfg.model.name}, {space.n_matrices} matrices, rank {cfg.lora.rank}: share of ‖W − Q_C(W)‖² left "
         "(reach = (1 − best core) / (1 − own top-r))", rows, args.json)
    if args.csv is not None:
        import csv

        new = not args.csv.is_file()
        with open(args.csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
