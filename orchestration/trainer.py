"""One training round on Ray Train: a ``TorchTrainer`` running ``coalora.train.train`` on every worker.

Each worker builds the same model (seeded), restores the previous round's checkpoint (shipped to the
workers as an ObjectRef, so no shared file system is needed), trains on its shard of the data with its
own configuration-sampling stream, and averages gradients with the other workers (gloo on CPU, NCCL on
GPU) before each optimizer step. Rank 0 reports the new checkpoint together with the metrics, which is
what Ray Train V2 needs to hand metrics back.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from coalora.config import ExperimentConfig


def read_checkpoint_files(path: str | os.PathLike) -> dict[str, bytes]:
    """A checkpoint directory as ``{file name: bytes}`` (it is small: LoRA, U_θ, head, AdamW moments)."""
    return {p.name: p.read_bytes() for p in Path(path).iterdir() if p.is_file()}


def _write_files(files: dict[str, bytes], d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name, blob in files.items():
        (d / name).write_bytes(blob)
    return d


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: experiment dict, trainset, steps, previous checkpoint ref."""
    import torch

    from coalora.checkpoint import load_optimizer, load_trainable, save_checkpoint
    from coalora.config import config_from_dict
    from coalora.experiment import build_adapted, load_base, load_data
    from coalora.train import make_optimizer, train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    cfg = config_from_dict(config["experiment"])
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    loaded = load_base(cfg)
    loaded.model.to(device)
    model = build_adapted(cfg, loaded, "coa")
    model.to(device)
    opt = make_optimizer(model, cfg.train)
    prev = config.get("previous")
    if prev is not None:
        files = ray.get(prev[0])
        with tempfile.TemporaryDirectory() as tmp:
            d = _write_files(files, Path(tmp) / "prev")
            model.load_trainable_state(load_trainable(d, device=device))
            load_optimizer(d, model, opt)
    data = load_data(cfg, loaded.tokenizer, loaded.task)
    start, steps = int(config["start_step"]), int(config["steps"])
    batches = data.train_batches(cfg, rank=rank, world_size=world, start_step=start)
    trainset = np.asarray(config["trainset"], dtype=np.int64)
    log_every = max(1, cfg.train.log_every)
    label = f"[round {config['round']}] train"

    def on_step(step: int, loss: float) -> None:
        if rank == 0 and (step - start) % log_every == 0:
            print(f"{label} step {step - start}/{steps} loss {loss:.4f}", flush=True)

    res = train(model, batches, trainset, cfg.train, steps=steps, total_steps=int(config["total_steps"]),
                optimizer=opt, rank=rank, start_step=start, progress=False, on_step=on_step)
    # Average the reported loss over workers so the number does not depend on who reports it.
    loss = torch.tensor([res.final_loss], device=device)
    if world > 1:
        torch.distributed.all_reduce(loss)
        loss /= world
    metrics = {"train_loss": float(loss.item()), "train_steps": res.steps, "train_seconds": res.seconds}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            meta = {
                "method": "coa",
                "model": {"name": cfg.model.name, "task": loaded.task, "num_labels": cfg.model.num_labels},
                "experiment": config["experiment"],
                "step": start + steps,
                "round": config["round"],
                "train_loss": metrics["train_loss"],
                "trainset": [model.space.to_json(c) for c in trainset],
            }
            path = save_checkpoint(Path(tmp) / "ckpt", model, meta, optimizer=opt)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)))
    else:
        ray.train.report(metrics)


def train_round(
    cfg: ExperimentConfig,
    round_k: int,
    trainset: np.ndarray,
    previous_checkpoint: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    storage_path: str,
    run_name: str,
) -> dict[str, Any]:
    """Fit one round and copy its checkpoint to ``out_dir``. Returns the round's training metrics."""
    steps = cfg.run.steps_per_round or cfg.train.steps
    prev_ref = None
    if previous_checkpoint is not None:
        prev_ref = [ray.put(read_checkpoint_files(previous_checkpoint))]
    r = cfg.ray
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "experiment": cfg.to_dict(),
            "trainset": np.asarray(trainset).tolist(),
            "round": round_k,
            "start_step": round_k * steps,
            "steps": steps,
            "total_steps": cfg.run.rounds * steps,
            "previous": prev_ref,
            "threads": max(1, int(r.cpus_per_worker)),
        },
        scaling_config=ScalingConfig(
            num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker={"CPU": r.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=f"{run_name}-round{round_k}",
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"round {round_k}: training finished without a checkpoint")
    result.checkpoint.to_directory(str(out_dir))
    metrics = dict(result.metrics or {})
    metrics["train_wall_seconds"] = time.perf_counter() - t0
    return metrics
