"""One training round on Ray Train: a ``TorchTrainer`` running ``coalora.pipeline.train.train`` on every worker.

Each worker builds the same model (seeded), restores the previous round's checkpoint (shipped to the
workers as an ObjectRef, so no shared file system is needed for it), trains on its shard of the data
with its own configuration-sampling stream, and averages gradients with the other workers (gloo on
CPU, NCCL on GPU) before each optimizer step. Rank 0 reports the new checkpoint together with the
metrics, which is what Ray Train V2 needs to hand metrics back. Ray Train persists that checkpoint to
the run's storage (``<run>/ray_train``: a local path, a shared mount or an object store); the driver
copies it into ``<run>/checkpoints/round_<k>`` on the same storage.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from coalora.pipeline.config import ExperimentConfig
from coalora.pipeline.rundir import ray_train_name
from coalora.storage import Location
from orchestration.console import MARK


def on_this_node() -> NodeAffinitySchedulingStrategy:
    """Schedule an actor on the driver's node: it lives as long as the driver, whatever other node dies
    (Ray Train puts its controller there too)."""
    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point. ``config``: experiment dict, trainset, steps, previous checkpoint ref."""
    import torch

    from coalora.pipeline.checkpoint import load_optimizer, load_trainable, save_checkpoint, training_meta
    from coalora.pipeline.config import config_from_dict
    from coalora.pipeline.experiment import build_adapted, init_lora, load_base, load_data, training_sampler
    from coalora.model.memory import host_share
    from coalora.pipeline.train import make_grad_scaler, make_optimizer, train
    from orchestration.devices import local_device

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if rank == 0 and config.get("attempts_dir"):
        # One marker per start of the training function: the driver counts them (Ray Train restarts
        # the worker group after a worker or its node dies). No actor: a file costs no process.
        import uuid

        from coalora.storage import open_location

        (open_location(config["attempts_dir"]) / uuid.uuid4().hex).write_text(f"{time.time()}\n")
    cfg = config_from_dict(config["experiment"])
    device = torch.device(local_device(train_worker=True).device)
    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    loaded = load_base(cfg)
    loaded.model.to(device)
    r = cfg.ray
    share = min(1.0, r.gpus_per_worker) if device.type == "cuda" else host_share(r.cpus_per_worker)
    errors = config.get("errors")  # hypernet.damage: the driver's error table, not recomputed per node
    model = build_adapted(cfg, loaded, "coa", share=share, training=True,
                          errors=None if errors is None else ray.get(errors[0]))
    model.to(device)
    label = f"[round {config['round']}] train"
    # The plan goes to the console once per session (the first round it trains), to the log after that.
    plan = f"{label} worker {rank}: {model.memory_plan.describe()}"
    print(f"{MARK}{plan}" if config["announce"] else plan, flush=True)
    opt = make_optimizer(model, cfg.train)
    scaler = make_grad_scaler(model)  # fp16 only: its loss scale carries over from round to round
    prev = config.get("previous")
    if prev is not None:
        files = ray.get(prev[0])
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp) / "prev"
            d.mkdir()
            for name, blob in files.items():
                (d / name).write_bytes(blob)
            model.load_trainable_state(load_trainable(d, device=device))
            load_optimizer(d, model, opt, scaler=scaler)
    data = load_data(cfg, loaded.tokenizer, loaded.task)
    start, steps = int(config["start_step"]), int(config["steps"])
    batches = data.train_batches(cfg, rank=rank, world_size=world, start_step=start)
    trainset = np.asarray(config["trainset"], dtype=np.int64)
    if prev is None:
        # The first round starts from lora.init (every worker computes the same factors from the same
        # configurations, and calibrates on the same batches: rank 0's); later rounds continue from the
        # previous round's checkpoint.
        init_lora(cfg, model, trainset, batches=data.train_batches(cfg))
    log_every = max(1, cfg.train.log_every)

    def on_step(step: int, loss: float) -> None:
        if rank == 0 and (step - start) % log_every == 0:
            print(f"{MARK}{label} step {step - start}/{steps} loss {loss:.4f}", flush=True)

    res = train(model, batches, trainset, cfg.train, steps=steps, total_steps=int(config["total_steps"]),
                optimizer=opt, scaler=scaler, rank=rank, start_step=start, progress=False, on_step=on_step,
                sampler=training_sampler(cfg, model.space))
    # Average the reported loss over workers so the number does not depend on who reports it.
    loss = torch.tensor([res.final_loss], device=device)
    if world > 1:
        torch.distributed.all_reduce(loss)
        loss /= world
    metrics = {"train_loss": float(loss.item()), "train_steps": res.steps, "train_seconds": res.seconds,
               "skipped_steps": res.skipped_steps, "device": str(device)}
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            meta = training_meta(cfg, loaded.task, "coa", model.space, trainset, step=start + steps,
                                 train_loss=metrics["train_loss"], round=config["round"])
            path = save_checkpoint(Path(tmp) / "ckpt", model, meta, optimizer=opt, scaler=scaler)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(path)))
    else:
        ray.train.report(metrics)


def train_round(
    cfg: ExperimentConfig,
    round_k: int,
    trainset: np.ndarray,
    previous_checkpoint: Location | None,
    out: Location,
    storage: Location,
    run_name: str,
    *,
    backend: str = "gloo",
    announce: bool = False,
    on_tick: Callable[[], None] | None = None,
    errors: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit one round and copy its checkpoint to ``out``. Returns the round's training metrics.

    Args:
        storage: Ray Train's storage for this run (every node must reach it on a multi-node cluster).
        backend: torch.distributed backend of the workers (``orchestration.devices.collective_backend``).
        announce: print each worker's memory plan to the console (else only to the log).
        on_tick: called every few seconds while the round trains (the driver records its processes).
        errors: the ``(N, K)`` error table, for ``hypernet.damage`` (workers on other nodes would
            otherwise compute it again).

    The metrics include ``train_attempts``: how many times the training function started (1, plus
    one per restart of the worker group after a failure).
    """
    steps = cfg.run.steps_per_round or cfg.train.steps
    prev_ref = None
    if previous_checkpoint is not None:
        prev_ref = [ray.put(previous_checkpoint.read_files())]
    r = cfg.ray
    attempts = storage / ray_train_name(run_name, round_k) / "coalora_attempts"
    attempts.rmtree()  # a killed earlier try of this round is not this round's restart
    resources = {"CPU": r.cpus_per_worker}
    if r.use_gpu:
        resources["GPU"] = r.gpus_per_worker
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
            "announce": announce,
            "attempts_dir": attempts.uri,
            # In a list, so that Ray hands the worker the reference rather than resolving it first.
            "errors": None if errors is None else [ray.put(np.asarray(errors))],
        },
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=ray_train_name(run_name, round_k),
            # A local path goes as a path (Ray Train then treats it as local); anything else with its
            # file system object, which carries settings such as an S3 endpoint to every worker.
            storage_path=storage.path,
            storage_filesystem=None if storage.is_local else storage.fs,
            failure_config=FailureConfig(max_failures=r.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    # Never fit() in the main thread: see _fit_ticking (Ray Train would take over Ctrl-C).
    result = _fit_ticking(trainer, on_tick)
    metrics_extra = {"train_attempts": max(1, len(list(attempts.iterdir())))}
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError(f"round {round_k}: training finished without a checkpoint")
    out.rmtree()
    out.mkdir()
    pafs.copy_files(ckpt.path, out.path, source_filesystem=ckpt.filesystem, destination_filesystem=out.fs)
    metrics = dict(result.metrics or {})
    metrics.update(metrics_extra)
    return metrics


def _fit_ticking(trainer: TorchTrainer, on_tick: Callable[[], None] | None, every_s: float = 2.0) -> Any:
    """``trainer.fit()`` in a thread, calling ``on_tick`` every ``every_s`` seconds here until it returns.

    Why fit does not run in the main thread: there, Ray Train installs its own SIGINT handler and never
    restores the one it replaced. Measured on Ray 2.60: a Ctrl-C during training was swallowed (the run
    went on into the next round), and one after the first round's fit reached a handler bound to a dead
    controller, which exited with status 1 and no message. From another thread Ray installs nothing, so
    Ctrl-C stays Python's KeyboardInterrupt, raised here or wherever the driver is, and ``run.py`` ends
    the run cleanly. The thread is a daemon: an interrupted driver does not wait for it, and its Ray
    Train controller, owned by this driver, ends with the driver's Ray session.
    """
    import threading

    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # noqa: BLE001 (handed to the caller's thread below)
            outcome["error"] = e

    t = threading.Thread(target=fit, name="ray-train-fit", daemon=True)
    t.start()
    while True:
        t.join(every_s)
        if not t.is_alive():
            break
        if on_tick is not None:
            on_tick()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
