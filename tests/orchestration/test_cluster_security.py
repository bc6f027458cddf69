"""Who can reach a cluster started from `cluster/aws.yaml` or `cluster/gcp.yaml`.

Offline, on the files: every `ray start` runs with ``RAY_AUTH_MODE=token`` and a token path that Ray
can read (absolute, since Ray does not expand ``~``) inside a file mount, so that the autoscaler
copies it from the head to each worker; the head's setup makes that token; nothing listens on every
interface. Each check is a function that returns the problems it finds, shown to fail on a broken
copy. (KubeRay's token mode is checked in ``test_cluster.py``, ``kuberay_scaling_problems``.)

Then a head started the way the file starts it: the file's ``head_setup_commands`` make the token in
a temporary ``HOME`` that stands for the container's (with the mounted ``~/coalora-cluster`` in it),
and the file's own `ray start --head` line runs, as the launcher runs it (its node type's resources
exported in ``RAY_OVERRIDE_RESOURCES``), with only its ports changed to free ones on loopback, no
autoscaler and its own ``--temp-dir``. Its dashboard listens on loopback only; a job submitted with
the token runs; without it, or with another token, the job API refuses it. Only that head's processes
are stopped at the end (found by its temp dir), never with `ray stop`.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

from tests.conftest import free_port
from tests.orchestration.test_job_submit import _clean_env, _stop_head

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
BIN = Path(sys.executable).parent
LOOPBACK = {"127.0.0.1", "localhost"}


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def _commands(cfg: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every shell command of a launcher config, with the key it is under (node types included)."""
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            path = f"{where}.{k}" if where else str(k)
            if str(k).endswith("_commands") and isinstance(v, list):
                yield from ((path, c) for c in v)
            else:
                yield from _commands(v, path)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _commands(v, where)


def _strings(cfg: Any) -> Iterator[str]:
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from _strings(v)
    elif isinstance(cfg, str):
        yield cfg


def ray_start_env(cmd: str) -> dict[str, str] | None:
    """The variables a shell command exports (or prefixes) before its `ray start`; None without one."""
    lex = shlex.shlex(cmd, posix=True, punctuation_chars=True)  # quoted words stay whole
    lex.whitespace_split = True
    parts: list[list[str]] = [[]]
    for tok in lex:
        if tok and set(tok) <= set("();<>|&"):
            parts.append([])
        else:
            parts[-1].append(tok)
    env: dict[str, str] = {}
    for words in parts:
        if words[:1] == ["export"]:
            env.update(w.split("=", 1) for w in words[1:] if "=" in w)
            continue
        prefix = {}
        while words and re.match(r"[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            k, v = words.pop(0).split("=", 1)
            prefix[k] = v
        if words[:2] == ["ray", "start"]:
            return {**env, **prefix}
    return None


def launcher_security_problems(cfg: dict[str, Any]) -> list[str]:
    """Token authentication on every `ray start` with the one token the head makes; nothing bound to
    every interface."""
    problems: list[str] = []
    mounts = [m.rstrip("/") + "/" for m in cfg.get("file_mounts", {})]
    paths: dict[str, str] = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        if not any(ray_start_env(c) is not None for c in cfg.get(key, [])):
            problems.append(f"{key} has no `ray start`")
    for key, cmd in _commands(cfg):
        env = ray_start_env(cmd)
        if env is None:
            continue
        if env.get("RAY_AUTH_MODE") != "token":
            problems.append(f"{key}: `ray start` runs without RAY_AUTH_MODE=token")
        path = env.get("RAY_AUTH_TOKEN_PATH", "")
        if not path:
            problems.append(f"{key}: `ray start` names no token file (RAY_AUTH_TOKEN_PATH)")
            continue
        paths[key] = path
        if not path.startswith(("/", "$HOME/", "${HOME}/")):
            problems.append(f"{key}: RAY_AUTH_TOKEN_PATH={path} is not absolute (Ray does not expand ~)")
        home = re.sub(r"^\$\{?HOME\}?/", "~/", path)
        if not any(home.startswith(m) for m in mounts):
            problems.append(f"{key}: the token file {path} is in no file mount, so no worker receives it")
        elif not any(home in c or home.replace("~/", "$HOME/") in c for c in cfg.get("head_setup_commands", [])):
            problems.append(f"{key}: no head_setup_command makes the token file {home}")
    if len(set(paths.values())) > 1:
        problems.append(f"the head and the workers read different token files: {sorted(set(paths.values()))}")
    for s in _strings(cfg):
        if "0.0.0.0" in s:
            problems.append(f"binds every interface: {s}")
        for host in re.findall(r"--dashboard-host[= ](\S+)", s):
            if host not in LOOPBACK:
                problems.append(f"the dashboard listens on {host}, not on loopback")
    return problems


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_starts_ray_with_a_token_and_binds_loopback_only(name):
    assert launcher_security_problems(_yaml(name)) == []


def _edit_start(key: str, edit: Callable[[str], str]) -> Callable[[dict], None]:
    def brk(cfg: dict) -> None:
        cfg[key] = [edit(c) for c in cfg[key]]
    return brk


SECURITY_BREAKS: list[tuple[str, Callable[[dict], None], str]] = [
    ("workers without auth", _edit_start("worker_start_ray_commands", lambda c: c.replace("RAY_AUTH_MODE=token ", "")),
     "worker_start_ray_commands: `ray start` runs without RAY_AUTH_MODE=token"),
    ("head auth disabled", _edit_start("head_start_ray_commands", lambda c: c.replace("MODE=token", "MODE=disabled")),
     "head_start_ray_commands: `ray start` runs without RAY_AUTH_MODE=token"),
    ("dashboard on every interface",
     _edit_start("head_start_ray_commands", lambda c: c.replace("-host=127.0.0.1", "-host=0.0.0.0")),
     "binds every interface"),
    ("dashboard on ::", _edit_start("head_start_ray_commands", lambda c: c.replace("=127.0.0.1", "=::")),
     "the dashboard listens on ::, not on loopback"),
    ("token outside the mounts",
     lambda cfg: [_edit_start(k, lambda c: c.replace("$HOME/coalora-cluster/", "$HOME/.ray/"))(cfg)
                  for k in ("head_start_ray_commands", "worker_start_ray_commands")],
     "is in no file mount, so no worker receives it"),
    ("token path with ~", _edit_start("worker_start_ray_commands", lambda c: c.replace("$HOME/", "~/")),
     "is not absolute (Ray does not expand ~)"),
    ("two token files", _edit_start("worker_start_ray_commands", lambda c: c.replace("ray_auth_token", "other")),
     "the head and the workers read different token files"),
    ("no token made", lambda cfg: cfg.update(head_setup_commands=[]), "no head_setup_command makes the token file"),
    ("a worker type's own start", lambda cfg: next(iter(
        t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"])).update(
        worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]),
     "worker_start_ray_commands: `ray start` runs without RAY_AUTH_MODE=token"),
]


@pytest.mark.parametrize("name,brk,expected", SECURITY_BREAKS, ids=[b[0] for b in SECURITY_BREAKS])
def test_security_check_can_fail(name, brk, expected):
    cfg = _yaml("aws.yaml")
    brk(cfg)
    problems = launcher_security_problems(cfg)
    assert any(expected in p for p in problems), problems


def test_ray_start_env_reads_exports_and_prefixes():
    assert ray_start_env("ray stop") is None
    assert ray_start_env("export A=1 B=2; ulimit -n 9; C=3 ray start --head") == {"A": "1", "B": "2", "C": "3"}
    assert ray_start_env("ulimit -n 9 && ray start --address=x:1") == {}


# ------------------------------------------------------------------------- a head started as the file starts it
def _on_loopback(cmd: str, temp_dir: str, dashboard_port: int) -> str:
    """The launcher's `ray start --head` line with free ports on loopback, no autoscaler (there is no
    cloud to scale into) and its own temp dir; every other word as the file has it."""
    out = cmd
    for flag, new in (("--port", f"--port={free_port()}"),
                      ("--object-manager-port", f"--object-manager-port={free_port()}"),
                      ("--autoscaling-config", "")):
        out, n = re.subn(rf"{flag}=\S+", new, out)
        assert n == 1, f"{flag} is not in {cmd!r}: adapt this test to the file"
    return (f"{out} --node-ip-address=127.0.0.1 --temp-dir={temp_dir} --dashboard-port={dashboard_port} "
            f"--dashboard-agent-listen-port={free_port()} --ray-client-server-port={free_port()} "
            "--disable-usage-stats")


def _ray(args: list[str], env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _listening_hosts(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port}


@pytest.mark.slow
def test_a_head_started_as_the_launcher_starts_it_refuses_a_job_without_the_token(tmp_path):
    from ray.autoscaler._private.command_runner import _with_environment_variables

    cfg = _yaml("aws.yaml")
    home = tmp_path / "home"
    (home / "coalora-cluster").mkdir(parents=True)  # the file mount, as on the head
    env = _clean_env(home)
    token_file = home / "coalora-cluster" / "ray_auth_token"
    tokens = []
    for _ in range(2):  # a second `ray up` keeps the token the running workers hold
        for cmd in cfg["head_setup_commands"]:
            res = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
        tokens.append(token_file.read_text())
    assert tokens[0] == tokens[1] and re.fullmatch(r"[0-9a-f]{64}\n", tokens[0])
    assert token_file.stat().st_mode & 0o777 == 0o600

    start = next(c for c in cfg["head_start_ray_commands"] if ray_start_env(c) is not None)
    temp_dir = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    dash = free_port()
    head_type = cfg["available_node_types"][cfg["head_node_type"]]
    # As the launcher runs it: the node type's resources exported first (the head offers no CPU).
    cmd = _with_environment_variables(_on_loopback(start, temp_dir, dash),
                                      {"RAY_OVERRIDE_RESOURCES": head_type["resources"]})
    try:
        res = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        assert _listening_hosts(dash) == {"127.0.0.1"}
        address = f"http://127.0.0.1:{dash}"

        holder = dict(_clean_env(tmp_path / "client"), RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file))
        job = ["job", "submit", "--address", address, "--submission-id", "with-token", "--",
               "python", "-c", "print('ran with the token')"]
        for _ in range(40):  # right after `ray start` the head's job agent may not be up yet
            res = _ray(job, holder)
            if res.returncode == 0 or "No available agent" not in res.stdout + res.stderr:
                break
            time.sleep(3)
        said = res.stdout + res.stderr
        assert res.returncode == 0 and "ran with the token" in said and "succeeded" in said, said[-3000:]

        for who, extra in (("no token", {}), ("another token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64})):
            stranger = dict(_clean_env(tmp_path / "stranger"), **extra)
            res = _ray(["job", "submit", "--address", address, "--submission-id", f"stranger-{len(extra)}",
                        "--", "python", "-c", "print('ran without the token')"], stranger)
            said = (res.stdout + res.stderr).lower()
            assert res.returncode != 0 and "ran without the token" not in said, (who, said[-2000:])
            assert "401" in said or "403" in said or "authentication" in said, (who, said[-2000:])
        listed = _ray(["job", "list", "--address", address], holder)
        assert listed.returncode == 0 and "with-token" in listed.stdout and "stranger" not in listed.stdout, listed
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
