"""Shared fixtures. Thread and network settings must be in place before torch is imported."""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# Ray Train's preemption watcher (an actor per fit that polls the cluster for draining nodes) is Ray's
# feature, not the product's, and no test drains a node; without it each fit starts one process fewer,
# about 4 CPU-seconds of imports, and the suite makes a dozen orchestrated runs of two fits each.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")

import sys  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402


# ---------------------------------------------------------------------- two workers (pytest-xdist)
# `make test TEST_WORKERS=2` runs the suite in two xdist workers. The Ray tests must stay in one process: they
# share the session's Ray cluster and reference run (session fixtures are per worker), and Ray tests on two
# workers starve each other: measured, with only the modules on the session's cluster grouped and the
# own-cluster ones (several nodes, a `ray start` head) sent to the other worker, an evaluator-replacement test
# and the multi-node resume test failed. So a custom scheduler sends every Ray module, as one unit, to the
# first worker that asks, and the other modules, whole, to whichever worker is free. (xdist's own
# `--dist loadgroup` does not group on pytest 9.2: pytest-xdist issue #1386.) Nor does it help to hold the
# own-cluster modules back until the reference run is done and then run them on the free worker: measured,
# 868 s against 867 s. With two workers the machine's 2 cores are busy all the way (vmstat), so only less
# work makes the suite shorter; each orchestrated smoke run is about 100 CPU-seconds, most of it starting
# processes (torch and transformers imports, Ray Train's helper actors).
RAY_MODULES = ("tests/orchestration/", "tests/fuzz/test_fuzz_run_dir.py")
# fuzz_run_dir (tests/fuzz/conftest.py) asks for `reference` at run time, so pytest's static fixture list
# does not show it: it is named here.
RAY_FIXTURES = frozenset({"ray_local", "reference", "smoke_beside", "smoke_runs", "fuzz_run_dir"})


def _ray_module(nodeid: str) -> bool:
    return nodeid.startswith(RAY_MODULES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test on the session's Ray cluster must be in :data:`RAY_MODULES` (the scheduler only sees node
    ids). (The converse, that every module there uses it, is not checked here: a run of a few tests of such a
    module may well not use it.)"""
    uses = {it.nodeid.split("::", 1)[0] for it in items if RAY_FIXTURES & set(getattr(it, "fixturenames", ()))}
    stray = sorted(m for m in uses if not _ray_module(m))
    if stray:
        raise pytest.UsageError(f"modules outside RAY_MODULES use the session's Ray fixtures (add them): {stray[:3]}")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class RayTogether(LoadScopeScheduling):
        """Scopes: all of :data:`RAY_MODULES` as one ("ray"), every other module alone. The Ray unit is the
        longest (most of the suite's time), so it goes first; the rest follow largest first (xdist's
        --loadscope-reorder default)."""

        def _split_scope(self, nodeid: str) -> str:
            return "ray" if _ray_module(nodeid) else nodeid.split("::", 1)[0]

        def _assign_work_unit(self, node: Any) -> None:
            if "ray" in self.workqueue:
                self.workqueue.move_to_end("ray", last=False)
            super()._assign_work_unit(node)

    return RayTogether(config, log)


# The fuzz suite counts its cases (tests/fuzz/conftest.py CASES); under xdist each worker hands its counts to
# the controller, which prints the total.
_WORKER_FUZZ_CASES: Counter[str] = Counter()


def _fuzz_cases() -> Counter[str]:
    fuzz = sys.modules.get("tests.fuzz.conftest")
    return Counter(fuzz.CASES) if fuzz is not None else Counter()


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = getattr(session.config, "workeroutput", None)  # set in an xdist worker only
    if out is not None:
        out["fuzz_cases"] = dict(_fuzz_cases())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _WORKER_FUZZ_CASES.update(getattr(node, "workeroutput", {}).get("fuzz_cases", {}))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    cases = _fuzz_cases() + _WORKER_FUZZ_CASES
    if cases:
        terminalreporter.write_sep("-", f"fuzz: {sum(cases.values())} cases")
        for name, n in sorted(cases.items()):
            terminalreporter.write_line(f"{n:6d}  {name}")


@pytest.fixture
def ctrl_c():
    """SIGINT raises KeyboardInterrupt in this process during the test, and takes its default action in the
    processes the test starts, as in a terminal, whatever the suite inherited. A suite started in the
    background by a non-interactive shell (``cmd &``, as a CI runner may) inherits SIGINT *ignored*; Python
    then never installs its handler, and an ignored signal stays ignored across exec, so a Ctrl-C test would
    test nothing. A signal with a handler is reset to its default in an exec'd child."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray cluster for the whole session (``address="local"`` never joins a stale cluster)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            object_store_memory=200 * 1024**2,
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_models():
    """Tiny random BERT-, Llama- and GPT-2-shaped models (built in code, no files)."""
    from coalora.model.tiny import build_tiny_model

    return {kind: build_tiny_model(kind) for kind in ("bert", "llama", "gpt2")}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# moto accepts any credentials; they only have to be the same in every process of a test.
# The secret is distinctive so a test can search files and logs for it.
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key", "AWS_SECRET_ACCESS_KEY": "coalora-test-secret-5b1e9f",
                  "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server (moto's standalone server) on a free loopback port, for the whole session.

    Yields ``make_bucket(name) -> "s3://name/runs?endpoint_override=...&region=us-east-1"``. The
    credentials are set in this process's environment, so Ray nodes and drivers started later inherit them.
    """
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in S3_CREDENTIALS}
    os.environ.update(S3_CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"

    def make_bucket(name: str) -> str:
        pafs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", allow_bucket_creation=True).create_dir(name)
        return f"s3://{name}/runs?endpoint_override={endpoint}&region=us-east-1"

    try:
        yield make_bucket
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------- the reference smoke run
ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def smoke_config(out_dir, name: str, *extra: str):
    from coalora.pipeline.config import load_config

    return load_config(SMOKE, [f"run.out_dir={out_dir}", f"run.name={name}", *extra])


@pytest.fixture(scope="session")
def smoke_runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


# The run of test_concurrent.py that runs beside the reference run: `python orchestration/run.py --smoke-test`
# with its own local Ray, a bf16 base and the issue-#15 options that reach the orchestrator. It passes
# --overwrite for a name that does not exist yet (that once failed: nothing to replace).
BESIDE = ["--overwrite", "--set", "model.dtype=bfloat16", "--set", "train.steps=8", "--set", "train.lr=0.01",
          "--set", "hypernet.damage=true", "--set", "lora.init=residual", "--set", "train.random_configs=1",
          "--set", "hypernet.residual_fit=20", "--set", "hypernet.residual_fit_calibration=2"]


@pytest.fixture(scope="session")
def smoke_beside(tmp_path_factory):
    """Starts the bf16 smoke run of ``test_concurrent.py`` (a subprocess with its own local Ray) and yields
    ``wait() -> (run_dir, returncode, stdout, stderr)``.

    :func:`reference` starts it before its own run (in this process, on another local Ray) and waits for it
    after: two runs on one machine at once, each with its own Ray, as two users would start them, and they
    share the machine's idle time instead of taking turns. Nothing else runs beside them.
    """
    import subprocess
    import sys

    tmp = tmp_path_factory.mktemp("beside")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"
    # Files, not pipes: nobody reads the output until the run ends, and a full pipe would block it.
    out, err = open(tmp / "bf16.out", "w"), open(tmp / "bf16.err", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "orchestration" / "run.py"), "--smoke-test",
                             "--set", f"run.out_dir={tmp / 'runs'}", "--set", "run.name=bf16", *BESIDE],
                            cwd=tmp, env=env, stdout=out, stderr=err, text=True)

    def wait():
        if not out.closed:
            proc.wait(timeout=900)
            out.close()
            err.close()
        return tmp / "runs" / "bf16", proc.returncode, (tmp / "bf16.out").read_text(), (tmp / "bf16.err").read_text()

    try:
        yield wait
    finally:
        if proc.poll() is None:  # a failed session: end only what this fixture started
            proc.kill()
            proc.wait()
        out.close()
        err.close()


@pytest.fixture(scope="session")
def reference(ray_local, smoke_runs, smoke_beside):
    """The smoke run (2 rounds, 2 Ray Train workers, 2 evaluators) on the local Ray, with a fault: one
    evaluator is killed half-way through round 1's evaluation. Returns ``(run_dir, summary, fault)``.

    Everything is seeded, so every other run of this configuration (undisturbed, resumed after a killed
    driver, on several nodes) must end with the same archive; an undisturbed one equal to this is what
    shows the killed evaluator lost nothing (the job of ``test_job_submit.py``). The bf16 run of
    ``test_concurrent.py`` runs beside it (:func:`smoke_beside`).
    """
    import ray

    from orchestration.loop import Orchestrator

    fault: dict = {"killed_at": None}
    orch = None

    def kill_one(k, done, total):
        if k == 1 and fault["killed_at"] is None and done < total:
            ray.kill(orch.pool.actors[0])
            fault["killed_at"] = done

    cfg = smoke_config(smoke_runs, "ref")
    orch = Orchestrator(cfg, smoke_runs / "ref", say=lambda s: None, on_eval_progress=kill_one)
    summary = orch.run()
    fault["spawned"] = orch.pool.spawned
    smoke_beside()  # the run beside it ends here, before any other test runs beside it
    return smoke_runs / "ref", summary, fault
