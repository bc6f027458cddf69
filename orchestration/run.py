"""Run the CoA-LoRA search-and-train loop on a Ray cluster (or a local one).

    python orchestration/run.py [--config configs/default.yaml] [--set key=value ...]
                                [--resume RUN_DIR_OR_URI] [--smoke-test] [--overwrite] [--verbose]

On a cluster: ``ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python
orchestration/run.py --config configs/roberta-large-sst2.yaml --set run.out_dir=s3://bucket/runs``. It
joins the cluster it runs on (``RAY_ADDRESS``, set by ``ray job submit``); otherwise it starts a local Ray.

The console shows the run's progress and its warnings; everything Ray prints goes to the driver's log
(its path is the first line; a copy goes to ``<run>/logs/`` after every round). ``--verbose`` shows it all.

Exit status: 0 on success, 2 for a bad configuration, run directory, storage or resource plan (one
line on stderr, nothing written), 1 for a failure during the run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python orchestration/run.py` puts only this folder on sys.path
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("OMP_NUM_THREADS", "1")
# Ray Train polls its workers every 2 s by default; a short round spends much of its time waiting.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"
SMOKE_CONFIG = ROOT / "configs" / "smoke.yaml"
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="orchestration/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help=f"experiment YAML (default {DEFAULT_CONFIG.relative_to(ROOT)})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a YAML key")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run (a path or a URI such as s3://...) "
                                                        "after its last complete round")
    p.add_argument("--smoke-test", action="store_true", help=f"tiny run ({SMOKE_CONFIG.relative_to(ROOT)})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--verbose", action="store_true", help="show Ray's own output on the console too")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"orchestration/run.py: error: {message}", file=sys.stderr)
    return 2


def init_ray(cfg) -> None:  # noqa: ANN001
    """Join the cluster named by ``RAY_ADDRESS`` or start a local one sized for the run's plan."""
    from orchestration.connect import connect
    from orchestration.resources import local_cluster_cpus

    connect(num_cpus=local_cluster_cpus(cfg.ray, os.cpu_count() or 1), object_store_mb=cfg.ray.object_store_mb)


def _job_working_dir() -> Path | None:
    """The unpacked ``working_dir`` of the Ray job this driver runs in (Ray deletes it with the job)."""
    cwd = Path.cwd()
    return cwd if "runtime_resources" in cwd.parts else None


def resolve_run_dir(args: argparse.Namespace, cfg):  # noqa: ANN001, ANN201
    """The run's location; raises StorageError for a location that cannot hold a run."""
    from coalora.storage import StorageError, is_uri, open_location

    if args.resume:
        return open_location(args.resume)
    out = cfg.run.out_dir
    job_dir = _job_working_dir()
    if job_dir is not None and not is_uri(out) and not Path(out).expanduser().is_absolute():
        raise StorageError(f"run.out_dir={out} is relative, so the run would be written inside this job's "
                           f"working_dir ({job_dir}), which Ray deletes with the job: use an absolute path, "
                           "or s3://bucket/path, gs://bucket/path")
    return open_location(out) / cfg.run.name


def _log_path(name: str) -> Path:
    from coalora.models import cache_root

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cache_root() / "logs" / f"{name}-{stamp}-{os.getpid()}.log"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from coalora.config import ConfigError, load_config
    from coalora.storage import StorageError, open_location

    try:
        if args.resume:
            cfg_path = open_location(args.resume) / "config.yaml"
            if not cfg_path.is_file():
                return _fail(f"--resume {args.resume}: not a run directory (no config.yaml)")
            config_file = cfg_path.uri
        else:
            config_file = args.config or str(SMOKE_CONFIG if args.smoke_test else DEFAULT_CONFIG)
        cfg = load_config(config_file, args.set)
        run_dir = resolve_run_dir(args, cfg)
        if not args.resume and run_dir.is_dir() and any(True for _ in run_dir.iterdir()) and not args.overwrite:
            return _fail(f"run directory {run_dir} exists; pass --resume {run_dir}, --overwrite, "
                         "or another --set run.name=...")
    except (ConfigError, StorageError) as e:
        return _fail(str(e))
    except OSError as e:  # the storage cannot be reached (a wrong endpoint, no network, no permission)
        return _fail(f"cannot reach the run's storage: {e}")

    from orchestration.console import Console
    from orchestration.resources import PlanError

    console = Console(_log_path(cfg.run.name), verbose=args.verbose)
    with console:
        console.say(f"log: {console.log_path}")
        init_ray(cfg)
        from orchestration.loop import Orchestrator

        orch = Orchestrator(cfg, run_dir, resume=bool(args.resume), say=console.say, log_file=console.log_path)
        try:
            orch.preflight()
        except (PlanError, StorageError) as e:
            failure = str(e)
        else:
            failure = None
            if args.overwrite and not args.resume:
                run_dir.rmtree()
            summary = orch.run()
        import ray

        # Disconnect while the console still routes output: Ray forwards its workers' last lines late.
        ray.shutdown()
    if failure is not None:
        return _fail(failure)
    orch.save_log()  # the whole session's log, now that the console has closed it
    print(f"done: {summary['rounds']} round(s), hypervolume {summary['hypervolume']:.4f}; "
          f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
