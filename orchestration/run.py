"""Run the CoA-LoRA search-and-train loop on a Ray cluster (or a local one).

    python orchestration/run.py [--config configs/default.yaml] [--set key=value ...]
                                [--resume RUN_DIR] [--smoke-test]

On a cluster: ``ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml --
python orchestration/run.py --config configs/roberta-large-sst2.yaml``. It joins the cluster it runs
on (``RAY_ADDRESS``, set by ``ray job submit``); otherwise it starts a local Ray.

Exit status: 0 on success, 2 for a bad configuration or run directory (one line on stderr, nothing
written), 1 for a failure during the run.
"""

from __future__ import annotations

import argparse
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
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last complete round")
    p.add_argument("--smoke-test", action="store_true", help=f"tiny run ({SMOKE_CONFIG.relative_to(ROOT)})")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    print(f"orchestration/run.py: error: {message}", file=sys.stderr)
    return 2


def init_ray(cfg) -> None:  # noqa: ANN001
    import ray

    if ray.is_initialized():
        return
    # Ray's own INFO/WARNING chatter (e.g. Train's placement-group cleaner polling the state API,
    # which needs the dashboard) drowns the progress lines; our workers print, they do not log.
    quiet = ray.LoggingConfig(log_level="ERROR")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(logging_config=quiet)  # the cluster this job runs on
        return
    # A local cluster. Offline settings travel to every worker; the logical CPU count covers the
    # phases' peak request (they never run at the same time, so this does not oversubscribe).
    r = cfg.ray
    need = r.num_workers * r.cpus_per_worker + r.evaluators * r.cpus_per_evaluator + r.search_cpus
    cpus = r.local_cpus or max(os.cpu_count() or 1, int(-(-need // 1)))
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "COALORA_CACHE", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    env = {k: os.environ[k] for k in keys if k in os.environ}
    env["OMP_NUM_THREADS"] = "1"
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_config=quiet,
             object_store_memory=r.object_store_mb * 1024**2, runtime_env={"env_vars": env})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from coalora.config import ConfigError, load_config

    if args.resume:
        run_dir = Path(args.resume)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            return _fail(f"--resume {args.resume}: not a run directory (no config.yaml)")
        config_file = str(cfg_path)
    else:
        config_file = args.config or str(SMOKE_CONFIG if args.smoke_test else DEFAULT_CONFIG)
    try:
        cfg = load_config(config_file, args.set)
    except ConfigError as e:
        return _fail(str(e))
    if not args.resume:
        run_dir = Path(cfg.run.out_dir) / cfg.run.name
        if run_dir.exists() and any(run_dir.iterdir()):
            if not args.overwrite:
                return _fail(f"run directory {run_dir} exists; pass --resume {run_dir}, --overwrite, "
                             "or another --set run.name=...")
            import shutil

            shutil.rmtree(run_dir)
    init_ray(cfg)
    from orchestration.loop import Orchestrator

    summary = Orchestrator(cfg, run_dir, resume=bool(args.resume)).run()
    print(f"done: {summary['rounds']} round(s), hypervolume {summary['hypervolume']:.4f}; "
          f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
