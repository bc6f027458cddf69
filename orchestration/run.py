"""Run the CoA-LoRA search-and-train loop on a Ray cluster (or a local one).

    python orchestration/run.py [--config configs/default.yaml] [--set key=value ...]
                                [--resume RUN_DIR_OR_URI] [--smoke-test] [--overwrite] [--verbose] [--check]

On a cluster: ``ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- python
orchestration/run.py --config configs/roberta-large-sst2.yaml --set run.out_dir=s3://bucket/runs``. It
joins the cluster it runs on (``RAY_ADDRESS``, set by ``ray job submit``); otherwise it starts a local Ray.

The console shows the run's progress and its warnings; everything Ray prints goes to the driver's log
(its path is the first line; a copy goes to ``<run>/logs/`` after every round). ``--verbose`` shows it all.

Everything that can be checked is checked before Ray starts (``orchestration/prepare.py``; ``--check``
stops there). ``--overwrite`` replaces only a coalora run (a directory with its ``coalora-run.json``
marker and nothing a run does not write). ``--resume`` keeps the run's configuration; ``--set`` may
change only what a run can change half-way (``run.rounds``, memory and cluster settings).

Exit status: 0 on success; 2 for bad input (a bad configuration, run directory, storage, model, data
or resource plan, also when only the cluster reveals it: one line on stderr); 1 for a failure of the
run itself (its traceback, then one line on stderr saying what the run directory keeps and how to
continue); 130 when Ctrl-C (SIGINT) stopped it: the complete rounds are kept, and one line on stderr
says how to continue (``--resume``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
    p.add_argument("--check", action="store_true", help="check the configuration, the run directory and the "
                                                         "model, print what would run, and exit (no Ray)")
    return p.parse_args(argv)


def _fail(message: str) -> int:
    message = " ".join(line.strip() for line in message.splitlines()) or "failed"  # one line, always
    print(f"orchestration/run.py: error: {message}", file=sys.stderr)
    return 2


def _kept(run_dir, rounds: int) -> str | None:  # noqa: ANN001
    """What a stopped run's directory keeps, in words; None when round 0 wrote nothing (no run to resume)."""
    from orchestration.store import RunStore

    try:
        store = RunStore(run_dir)
        if not store.config_path.is_file():
            return None
        return f"keeps {store.completed_rounds()} of {rounds} round(s)"
    except Exception:  # noqa: BLE001 (storage unreachable now: the message still says how to continue)
        return "keeps its complete rounds"


def _interrupted(run_dir, rounds: int) -> int:  # noqa: ANN001
    """Ctrl-C: one line saying what the run directory keeps and how to continue; exit status 130 (128 +
    SIGINT, as a shell reports a process that SIGINT ended)."""
    kept = _kept(run_dir, rounds)
    if kept is None:  # stopped before round 0 wrote anything: nothing to resume
        print(f"orchestration/run.py: interrupted before {run_dir} was written; nothing was kept", file=sys.stderr)
        return 130
    print(f"orchestration/run.py: interrupted: {run_dir} {kept}; continue with: "
          f"python orchestration/run.py --resume {run_dir}", file=sys.stderr)
    return 130


def _failed(run_dir, rounds: int, error: BaseException) -> int:  # noqa: ANN001
    """The run failed after it began: one last line on stderr, under the traceback, saying what the run
    directory keeps and how to continue once the cause is dealt with; exit status 1. When Ray's memory
    monitor ended the workers, the line says so and names the settings a resumed run may lower."""
    from orchestration.prepare import killed_for_memory

    why = ""
    if killed_for_memory(error):
        why = ("Ray's memory monitor ended its workers: the node ran out of memory (every process on it counts, "
               "other runs too); a resumed run may set a lower model.cache_gib or ray.evaluators_during_training="
               "release; ")
    kept = _kept(run_dir, rounds)
    if kept is None:  # failed before round 0 wrote anything: nothing to resume
        print(f"orchestration/run.py: the run failed: {why}before {run_dir} was written; nothing was kept",
              file=sys.stderr)
        return 1
    print(f"orchestration/run.py: the run failed: {why}{run_dir} {kept}; continue with: "
          f"python orchestration/run.py --resume {run_dir}", file=sys.stderr)
    return 1


def init_ray(cfg) -> None:  # noqa: ANN001
    """Join the cluster named by ``RAY_ADDRESS`` or start a local one sized for the run's plan."""
    from orchestration.connect import connect
    from orchestration.resources import local_cluster_cpus

    connect(num_cpus=local_cluster_cpus(cfg.ray, os.cpu_count() or 1), object_store_mb=cfg.ray.object_store_mb)


def _log_path(name: str) -> Path:
    from coalora.io import cache_root

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return cache_root() / "logs" / f"{name}-{stamp}-{os.getpid()}.log"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return _main(args)
    except KeyboardInterrupt:  # Ctrl-C: Ray is shut down and the console closed on the way out (_main)
        started = getattr(args, "started", None)  # (run directory, rounds) once the run has begun
        if started is not None:
            return _interrupted(*started)
        print("orchestration/run.py: interrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    except Exception as e:
        started = getattr(args, "started", None)
        if started is None:
            raise
        traceback.print_exc()  # a failure of the run is its traceback, and then what is kept
        return _failed(*started, e)


def _main(args: argparse.Namespace) -> int:
    from orchestration.prepare import describe, expected_cause, input_errors, one_line, prepare

    # Everything that can be checked is checked before Ray starts; nothing is written until it passes.
    try:
        prep = prepare(args.config, args.set, resume=args.resume, overwrite=args.overwrite, smoke=args.smoke_test,
                       default=DEFAULT_CONFIG, smoke_config=SMOKE_CONFIG)
    except input_errors() as e:
        return _fail(str(e))
    except OSError as e:  # the storage cannot be reached (a wrong endpoint, no network, no permission)
        return _fail(f"cannot reach the run's storage: {e}")
    if args.check:
        print(describe(prep))
        return 0

    from orchestration.console import Console
    from orchestration.leftovers import end_leftovers

    cfg, run_dir = prep.cfg, prep.run_dir
    console = Console(_log_path(cfg.run.name), verbose=args.verbose)
    args.started = (run_dir, cfg.run.rounds)  # from here an interrupted run has a directory to resume
    failure = None
    with console:
        console.say(f"log: {console.log_path}")
        try:
            end_leftovers(run_dir, say=console.say)  # what a killed earlier session of this run left running
            own_ray = not os.environ.get("RAY_ADDRESS")  # a local Ray this driver starts (and must not leave behind)
            init_ray(cfg)
            from orchestration.loop import Orchestrator

            orch = Orchestrator(cfg, run_dir, resume=prep.resume, say=console.say, log_file=console.log_path,
                                base=prep.loaded, resume_overrides=prep.overrides, record_processes=own_ray,
                                validated_rounds=prep.completed if prep.resume else None)
            del prep
            orch.preflight()
            if args.overwrite and not args.resume and run_dir.is_dir():
                # A new name needs nothing replaced. An existing non-empty directory got here only as a
                # marked run (prepare checked); check again, it may have changed since.
                if any(True for _ in run_dir.iterdir()):
                    orch.store.check_replaceable()
                run_dir.rmtree()
            summary = orch.run()
        except Exception as e:  # bad input that only the cluster could reveal is one line; a bug is not
            cause = expected_cause(e)
            if cause is None:
                raise
            failure = one_line(cause)
        finally:
            # Disconnect while the console still routes output: Ray forwards its workers' last lines late.
            # Only a Ray that finished importing: a Ctrl-C during `import ray` leaves a half-imported
            # package behind, which a second import would trip over.
            ray = sys.modules.get("ray")
            if ray is not None and hasattr(ray, "shutdown"):
                ray.shutdown()
    if failure is not None:
        return _fail(failure)
    orch.save_log()  # the whole session's log, now that the console has closed it
    print(f"done: {summary['rounds']} round(s), hypervolume {summary['hypervolume']:.4f}; "
          f"report: {summary['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
