"""The study (issue #6): the paper's claims at CPU scale, run through the product's own commands.

Every number comes from ``python orchestration/run.py`` (coa with its search, and the search ablation)
or ``coalora train`` / ``coalora evaluate`` (the baselines and all final scores), called as a user would
call them; this script only sequences the commands, skips what is already done (it is resumable: rerun
it after an interruption), and turns the JSON the commands print into tables and plots.

Parts (``--parts``, comma-separated; default all):

- ``table2``: Table 2 at CPU scale (configs/study/minilm-rt.yaml). ``coa`` (4 orchestrated rounds with the
  GP search), ``shared``, ``per-config`` (one adapter per budget of ``eval.budgets``) and ``fp-lora``, each
  scored on the test split under the allocation configuration of every budget. Reports mean accuracy,
  the paired gap to per-config, the hypervolume of the accuracy-vs-bits front and the training time.
- ``seen-unseen``: coa's accuracy against bits on its last training set and on ``eval.random`` random
  configurations it never saw (shared on the same unseen ones, for reference).
- ``search-ablation``: the same orchestrated run with ``search.method`` = gp, nsga2, random-extend and
  frozen: hypervolume per round, and the final checkpoint's test accuracy on the random held-out
  configurations and on Table 2's allocation configurations.
- ``baseline-seeds``: table2's shared and per-config only, at several seeds: the seed-to-seed spread
  that coa's gap must beat (cheaper than all of table2 at a new seed; table2 reuses these runs).
- ``causal-lm``: SmolLM2-135M on the Wikipedia sample (configs/study/smollm2-wiki.yaml): coa, shared and
  per-config at the budgets of ``eval.budgets``, perplexity on held-out text.
- ``table2-options``: issue #15's options (``TABLE2_OPTIONS``) on Table 2's seeds, against Table 2's own
  runs (needs ``table2`` of the same seeds): no regression where quantization costs little.
- ``headroom``: the testbed where quantization hurts (configs/study/smollm2-lowbit.yaml): shared,
  per-config and coa's variants (``HEADROOM_VARIANTS``), test loss at the evaluated budgets and on random
  unseen configurations, and the gap each variant closes; learning curves from snapshots.
- ``headroom-full``: the same at the testbed configuration's own size (120 steps, 64 test blocks: about an
  hour per method on one core), beside the ``headroom`` tables: runs under ``runs/study-full/``, tables
  ``headroom-full*.csv``. (``headroom`` itself is published as a mid-size pass: ``--set train.steps=60
  --set train.warmup_steps=6 --set data.max_eval=32``.)
- ``headroom-search``: the search ablation on that testbed (gp, frozen, random-extend), orchestrated.
- ``headroom-span``: how much of each configuration's quantization residual the LoRA's directions can
  reach (benchmarks/residual_span.py).

Outputs: runs under ``runs/study/`` (checkpoints, archives, logs of every command), the small tables
and plots under ``benchmarks/results/study/`` (with ``manifest.json``: commands, commit, hardware), and
the report ``docs/results.md``, rendered from those tables (:func:`render_report`) into the prose of
``benchmarks/results/study/report-template.md``.

    python benchmarks/study.py [--parts table2,seen-unseen,...] [--seeds 0,1] [--quick] [--set KEY=VALUE ...]
                               [--variants NAME,...] [--exclude-trained] [--jobs N] [--report-only]

``--quick`` shrinks every part (2 rounds of 4 steps, 64 evaluation sentences) to check the pipeline
in a few minutes; its results and report go to ``benchmarks/results/study-quick/``. ``--report-only``
rewrites the report from the result files already there and runs nothing. ``--variants`` runs only the
named variants of ``headroom`` and ``table2-options`` and the named search methods of ``headroom-search``;
their tables keep what earlier calls recorded for the others. ``--jobs 2`` runs the headroom parts'
trainings of a seed two at a time, then their evaluations (each command is one process on one core).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from coalora.io import atomic_write_text
from coalora.pipeline.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]

TEMPLATE = "report-template.md"  # in the results directory: the prose around the generated tables
PARTS = ("table2", "table2-options", "seen-unseen", "search-ablation", "causal-lm", "baseline-seeds", "headroom", "headroom-full",
         "headroom-search", "headroom-span")
MINILM = "configs/study/minilm-rt.yaml"
SMOLLM = "configs/study/smollm2-wiki.yaml"
LOWBIT = "configs/study/smollm2-lowbit.yaml"  # the headroom testbed (issue #15)
# The variants on the testbed beside the plain shared and per-config baselines: name -> (method, the --set
# values that make it), one per option of issue #15. A shared-* variant gives shared the same change, to tell
# whether it helps coa more than shared. The -random ones swap one of the two configurations of each step
# for a fresh random one, so every method keeps the same compute per step.
RANDOM_ONE = ["train.configs_per_step=1", "train.random_configs=1"]
HEADROOM_VARIANTS: dict[str, tuple[str, list[str]]] = {
    "coa": ("coa", []),
    "coa-warm": ("coa", ["hypernet.warm_start=0.5"]),
    "coa-damage": ("coa", ["hypernet.damage=true"]),
    "coa-residual": ("coa", ["lora.init=residual"]),
    "shared-residual": ("shared", ["lora.init=residual"]),
    "coa-random": ("coa", RANDOM_ONE),
    "shared-random": ("shared", RANDOM_ONE),
    "coa-distill": ("coa", ["train.distill=0.5"]),
    "shared-distill": ("shared", ["train.distill=0.5"]),
    # The structured core at 4 × the rank (issue #15, option 4): a rank-64 LoRA in 4 gated blocks of 16,
    # against shared at the same rank (shared-residual-r64); both start from the residual.
    "coa-gates": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "lora.rank=64", "lora.alpha=128",
                          "hypernet.gates=4"]),
    "shared-residual-r64": ("shared", ["lora.init=residual", "lora.rank=64", "lora.alpha=128"]),
    # Distillation on top of the best start (issue #15, option 5), against shared with the same two options.
    "coa-residual-fit-distill": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "train.distill=0.5"]),
    "shared-residual-distill": ("shared", ["lora.init=residual", "train.distill=0.5"]),
    # U_θ fitted, before any data, to each configuration's own residual within the residual-initialised LoRA.
    "coa-residual-fit": ("coa", ["lora.init=residual", "hypernet.residual_fit=200"]),
    # That fit within a trust region (hypernet.residual_fit_radius): each target core at most 0.5 or 1 × ‖I‖
    # from the identity. Unbounded, the lowest budgets' targets reach 8 × ‖I‖ on MiniLM and stopped it learning.
    "coa-residual-fit-r05": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "hypernet.residual_fit_radius=0.5"]),
    "coa-residual-fit-r1": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "hypernet.residual_fit_radius=1"]),
    # Both that fit and the random configurations (which help every method on the unseen set).
    "coa-residual-fit-random": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", *RANDOM_ONE]),
    # The fit weighed by the inputs of 8 training batches (the output error rather than the weight error).
    "coa-residual-fit-x": ("coa", ["lora.init=residual", "hypernet.residual_fit=200",
                                   "hypernet.residual_fit_calibration=8"]),
    "coa-residual-fit-x-random": ("coa", ["lora.init=residual", "hypernet.residual_fit=200",
                                          "hypernet.residual_fit_calibration=8", *RANDOM_ONE]),
    # The fit kept: U_θ then trains at a tenth of the learning rate, so the data moves A and B more than
    # the configuration-aware cores fitted to every option (the unseen configurations' only knowledge).
    "coa-residual-fit-slow": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "train.hypernet_lr_scale=0.1"]),
    # Its matching shared: both options a shared LoRA can take.
    "shared-residual-random": ("shared", ["lora.init=residual", *RANDOM_ONE]),
    # A configuration-dependent direction (lora.bank): a rank-16 pair per (matrix, weight bit width), from the
    # residual. With a bank shared is configuration-aware too (by each matrix's width), so the pair is matched.
    "coa-bank": ("coa", ["lora.init=residual", "hypernet.residual_fit=200", "lora.bank=16", *RANDOM_ONE]),
    "shared-bank": ("shared", ["lora.init=residual", "lora.bank=16", *RANDOM_ONE]),
}
# per-config's variants (one adapter per evaluated configuration, each with the option): name -> --set values.
HEADROOM_PER_CONFIG: dict[str, list[str]] = {"per-config": [], "per-config-residual": ["lora.init=residual"]}
# A coa variant whose option the baselines take too is also scored against those (G_match: the gap between
# shared and per-config with the option that it closes): coa variant -> (shared variant, per-config variant).
HEADROOM_MATCH: dict[str, tuple[str, str]] = {
    "coa-residual": ("shared-residual", "per-config-residual"),
    "coa-residual-fit": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-r05": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-r1": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-random": ("shared-residual-random", "per-config-residual"),
    "coa-residual-fit-x": ("shared-residual", "per-config-residual"),
    "coa-residual-fit-slow": ("shared-residual", "per-config-residual"),
    "coa-gates": ("shared-residual-r64", "per-config-residual"),  # per-config stays at rank 16
    "coa-residual-fit-distill": ("shared-residual-distill", "per-config-residual"),
    "coa-residual-fit-x-random": ("shared-residual-random", "per-config-residual"),
    "coa-bank": ("shared-bank", "per-config-residual"),  # per-config keeps rank 16 and no bank
    "coa-random": ("shared-random", "per-config"),
    "coa-distill": ("shared-distill", "per-config"),
}
HEADROOM_UNSEEN_PER_CONFIG = 3  # unseen configurations that per-config also trains an adapter for
# Learning curves (train.snapshots at a quarter, half and three quarters of the steps, and the end) for the
# baselines and the variant pair that decides; the others' snapshots are kept but not evaluated.
HEADROOM_CURVES = ("shared", "per-config", "per-config-residual", "shared-residual-random", "coa-residual-fit-random")
# --quick for the headroom part: minutes, not hours (the signal is weak at this size; it checks the pipeline).
QUICK_HEADROOM = ["train.steps=12", "train.warmup_steps=2", "data.max_eval=16", "data.max_train=256", "eval.random=4"]
SEARCH_METHODS = ("gp", "nsga2", "random-extend", "frozen")
# The search ablation on the headroom testbed (issue #15): the orchestrated coa with the options of this
# variant, in 4 rounds of a quarter of train.steps each, 4 candidates a round, segments across the
# training range. The one evaluator and one training worker fit the 2-core machine.
HEADROOM_SEARCH_METHODS = ("gp", "frozen", "random-extend")
HEADROOM_SEARCH_VARIANT = "coa-residual-fit"
HEADROOM_SEARCH_SETS = ["run.rounds=4", "search.candidates=4", "search.n_segments=8", "search.bits_range=[2.7, 4.5]",
                        "ray.num_workers=1", "ray.evaluators=1", "ray.search_cpus=0"]
UNSEEN_SEED = 4321  # seed of the random held-out configurations (never a training configuration)
QUICK = ["train.steps=4", "run.rounds=2", "data.max_eval=64", "data.max_train=512", "eval.random=3",
         "search.candidates=4"]
QUICK_LM = ["train.steps=3", "data.max_eval=8", "data.max_train=64"]


class _NotStarted(Exception):
    """A call of :meth:`Study.run_all` skipped because another had failed."""


class Study:
    """Runs commands (skipping finished ones), keeps their logs and the manifest."""

    def __init__(self, quick: bool, overrides: list[str], variants: list[str] | None = None) -> None:
        self.quick = quick
        self.overrides = overrides
        self.variants = variants  # the headroom part's coa/shared variants to run (None: all)
        # Commands run at once where a part has independent ones (--jobs): each is one process with one
        # thread (OMP_NUM_THREADS=1), so one job leaves all but one core idle.
        self.jobs = 1
        self._manifest_lock = threading.Lock()
        self.exclude_trained = False  # headroom: drop evaluated configurations a training set holds, not stop
        self.excluded: dict[str, list[str]] = {}  # config id -> the variants that trained on it
        self.runs = ROOT / "runs" / ("study-quick" if quick else "study")
        self.results = results_dir(quick)
        self.logs = self.runs / "logs"
        for d in (self.runs, self.results, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.results / "manifest.json"
        self.manifest: dict[str, Any] = (
            json.loads(self.manifest_path.read_text()) if self.manifest_path.is_file() else {"commands": []}
        )
        self.manifest.update({
            "commit": _git("rev-parse", "HEAD"), "dirty": bool(_git("status", "--porcelain")),
            "hardware": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU",
            "python": platform.python_version(), "study_command": " ".join(["python"] + sys.argv),
        })

    # ------------------------------------------------------------------ plumbing
    def sets(self, base: Sequence[str] = (), lm: bool = False) -> list[str]:
        """``--set`` arguments: --quick's, then the user's, then the part's own (last wins: seeds, and the
        baselines' step count, which is derived from the run's rounds × steps after the user's overrides)."""
        extra = (QUICK_LM if lm else QUICK) if self.quick else []
        return [a for kv in [*extra, *self.overrides, *base] for a in ("--set", kv)]

    def overrides_for(self, lm: bool = False) -> list[str]:
        """The KEY=VALUE list of :meth:`sets` (for reading a part's configuration here)."""
        return [a for a in self.sets(lm=lm) if a != "--set"]

    def sh(self, cmd: list[str], log: str, echo: bool = False) -> str:
        """Run ``cmd`` in the repository root and return its stdout.

        Both streams go to ``logs/<log>`` as they come (``tail -f`` it to follow a long run); with ``echo``
        they are also shown here, indented.
        """
        shown = " ".join(shlex.quote(c) for c in cmd)
        print(f"$ {shown}", flush=True)
        # Side by side, two commands' progress bars would interleave line by line: the logs have them.
        if echo and self.jobs > 1:
            print(f"   its progress: tail -f {self.logs / log}", flush=True)
        echo = echo and self.jobs <= 1
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        out: list[str] = []
        with open(self.logs / log, "w") as f:
            f.write(f"$ {shown}\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, bufsize=1)

            def pump(stream: Any, keep: bool) -> None:
                for line in stream:
                    if keep:
                        out.append(line)
                    f.write(line)
                    f.flush()
                    if echo:
                        print("    " + line, end="", flush=True)

            err = threading.Thread(target=pump, args=(proc.stderr, False), daemon=True)
            err.start()
            pump(proc.stdout, True)
            err.join()
            code = proc.wait()
            seconds = time.perf_counter() - t0
            f.write(f"# exit {code} after {seconds:.0f} s\n")
        if code != 0:
            tail = "\n".join((self.logs / log).read_text().strip().splitlines()[-15:])
            raise SystemExit(f"study: command failed (exit {code}; log {self.logs / log}):\n{shown}\n{tail}")
        if self.jobs > 1:
            print(f"   done in {seconds:.0f} s: {log}", flush=True)
        with self._manifest_lock:
            self.manifest["commands"].append({"command": shown.replace(str(ROOT) + "/", ""),
                                              "seconds": round(seconds, 1),
                                              "log": str((self.logs / log).relative_to(ROOT))})
            self.save_manifest()
        return "".join(out)

    def run_all(self, calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
        """Every call of ``calls`` (name → a function of no arguments that runs study commands), up to
        :attr:`jobs` at once; name → what it returned. After a failure no further call starts; the calls
        under way finish (their commands are hours of work that a rerun reuses), then the failure is raised."""
        if self.jobs <= 1 or len(calls) <= 1:
            return {name: call() for name, call in calls.items()}
        failed = threading.Event()

        def guarded(call: Callable[[], Any]) -> Any:
            if failed.is_set():
                raise _NotStarted
            try:
                return call()
            except BaseException:
                failed.set()  # before this call's future ends, so the pool's next call sees it
                raise

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:  # leaving it waits for every call
            futures = {name: pool.submit(guarded, call) for name, call in calls.items()}
        errors = [f.exception() for f in futures.values() if not isinstance(f.exception(), (_NotStarted, type(None)))]
        if errors:
            raise errors[0]
        return {name: f.result() for name, f in futures.items()}

    def save_manifest(self) -> None:
        self.manifest_path.write_text(json.dumps(self.manifest, indent=1))

    def reuse(self, log: str) -> None:
        """Record a finished command that is being skipped (run earlier, perhaps by hand with the same
        command line and log) in the manifest, from the first and last lines of its log."""
        with self._manifest_lock:  # calls of run_all record side by side
            self._reuse(log)

    def _reuse(self, log: str) -> None:
        path = self.logs / log
        if not path.is_file():
            return
        lines = path.read_text().strip().splitlines()
        last = re.match(r"# exit 0 after (\d+) s", lines[-1]) if lines else None
        if not lines or not lines[0].startswith("$ ") or last is None:
            return
        shown = lines[0][2:].replace(str(ROOT) + "/", "")
        if any(c["command"] == shown for c in self.manifest["commands"]):
            return
        self.manifest["commands"].append({"command": shown, "seconds": float(last.group(1)),
                                          "log": str(path.relative_to(ROOT))})
        self.save_manifest()

    def coalora(self, *args: str, log: str, echo: bool = False) -> str:
        return self.sh([sys.executable, "-m", "coalora.cli", *args], log, echo)

    def evaluate(self, name: str, *args: str) -> list[dict[str, Any]]:
        """``coalora evaluate ... --split test --json``, cached in ``runs/.../eval-<name>.json``."""
        path = self.runs / f"eval-{name}.json"
        if path.is_file():
            self.reuse(f"eval-{name}.log")
            return json.loads(path.read_text())
        out = self.coalora("evaluate", *args, "--split", "test", "--json", "--quiet", log=f"eval-{name}.log")
        rows = json.loads(out)
        path.write_text(json.dumps(rows, indent=1))
        return rows

    def orchestrated(self, name: str, config: str, sets: list[str], lm: bool = False) -> Path:
        """``python orchestration/run.py`` into ``runs/<study>/<name>``; resumed if it stopped midway."""
        from coalora.pipeline.config import load_config

        run_dir = self.runs / name
        args = self.sets(sets, lm) + ["--set", f"run.name={name}", "--set", f"run.out_dir={self.runs}"]
        rounds = load_config(ROOT / config, [a for a in args if a != "--set"]).run.rounds
        done = _completed_rounds(run_dir)
        if done >= rounds:
            self.reuse(f"run-{name}.log")
            return run_dir
        cmd = [sys.executable, "orchestration/run.py"]
        cmd += ["--resume", str(run_dir)] if done > 0 else ["--config", config, *args, "--overwrite"]
        self.sh(cmd, f"run-{name}.log", echo=True)
        return run_dir

    def trained(self, name: str, config: str, method: str, sets: list[str], lm: bool = False) -> Path:
        """``coalora train --method M`` into ``runs/<study>/<name>`` (skipped when it is there)."""
        out = self.runs / name
        if (out / "meta.json").is_file() or (out / "per_config.json").is_file():
            self.reuse(f"train-{name}.log")
            return out
        self.coalora("train", "--config", config, "--method", method, "--out", str(out), "--overwrite",
                     "--json", *self.sets(sets, lm), log=f"train-{name}.log", echo=True)
        return out

    def write_csv(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.results / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
        print(f"wrote {self.results / name}")


# ---------------------------------------------------------------------- helpers
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _fmt(v: Any) -> Any:
    return round(v, 5) if isinstance(v, float) else v


def _completed_rounds(run_dir: Path) -> int:
    from coalora.errors import CheckpointError
    from coalora.pipeline.rundir import last_round

    try:
        return last_round(run_dir) + 1
    except CheckpointError:
        return 0


def _run_train_seconds(run_dir: Path) -> tuple[float, float]:
    """(training-loop seconds, whole-run seconds) summed over a run's rounds."""
    rows = RunDir(run_dir).read_rounds()
    # The training loop's own time (what `coalora train` reports for the baselines); Ray Train's start-up
    # per round is in the whole-run figure.
    train = sum(r.get("train_loop_seconds") or r["train_seconds"] for r in rows)
    return train, sum(r["train_seconds"] + r["eval_seconds"] + r["search_seconds"] for r in rows)


def accuracy_hypervolume(acc: np.ndarray, bits: np.ndarray, bits_range: tuple[float, float]) -> float:
    """Hypervolume of the (error = 1 − accuracy, bits) front, both minimised.

    Fixed normalisation for every method: error in [0, 0.5] (0.5 = chance on a balanced binary task),
    bits in ``bits_range``, reference point (1.1, 1.1) (:class:`coalora.core.pareto.ObjectiveBounds`).
    """
    from coalora.core.pareto import ObjectiveBounds

    return ObjectiveBounds((0.0, 0.5), bits_range, 0.1).hypervolume(1.0 - np.asarray(acc), np.asarray(bits))


def _plot(path: Path, series: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ylabel: str, title: str,
          markers: dict[str, str] | None = None, hlines: dict[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for label, (x, y) in series.items():
        order = np.argsort(x)
        style = (markers or {}).get(label, "o-")
        ax.plot(np.asarray(x)[order], np.asarray(y)[order], style, label=label, ms=5, lw=1.2)
    for label, y in (hlines or {}).items():
        ax.axhline(y, ls="--", lw=1, color="grey", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def _per_config_configs(out: Path) -> Path:
    """The configurations a per-config directory's adapters were trained for, in budget order, as a
    JSON list that ``coalora evaluate --config`` takes: ``<out>/configs.json``."""
    index = json.loads((out / "per_config.json").read_text())
    configs = [json.loads((out / c / "meta.json").read_text())["trainset"][0] for c in index["checkpoints"]]
    path = out / "configs.json"
    path.write_text(json.dumps(configs))
    return path


def _seed_sets(seed: int) -> list[str]:
    return [f"train.seed={seed}", f"search.seed={seed}"]


def _table2_args(st: Study) -> tuple[Any, list[str], list[str]]:
    """MiniLM's config, the baselines' step override and the evaluation budgets, shared by ``table2``
    and ``baseline_seeds`` so both train and score the very same runs.

    A baseline trains as many steps as coa does over all its rounds (``run.rounds × steps per round``)."""
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / MINILM, st.overrides_for())
    steps = cfg.run.rounds * (cfg.run.steps_per_round or cfg.train.steps)
    return cfg, [f"train.steps={steps}"], [str(b) for b in cfg.eval.budgets]


# ---------------------------------------------------------------------- parts
def table2(st: Study, seeds: list[int]) -> dict[str, Any]:
    cfg, total, budgets = _table2_args(st)
    per_config_rows: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for seed in seeds:
        s = _seed_sets(seed)
        run = st.orchestrated(f"coa-s{seed}", MINILM, s)
        scores = {"coa": st.evaluate(f"coa-s{seed}-budgets", "--run", str(run), "--budget", *budgets)}
        seconds = {"coa": _run_train_seconds(run)}
        for method in ("shared", "fp-lora", "per-config"):  # per-config last: the longest
            out = st.trained(f"{method}-s{seed}", MINILM, method, s + total)
            if method == "per-config":
                scores[method] = st.evaluate(f"{method}-s{seed}", "--checkpoint", str(out))
                seconds[method] = (json.loads((out / "per_config.json").read_text())["train_seconds"],) * 2
            else:
                args = ["--checkpoint", str(out)] + ([] if method == "fp-lora" else ["--budget", *budgets])
                scores[method] = st.evaluate(f"{method}-s{seed}", *args)
                t = json.loads((out / "meta.json").read_text())["train_seconds"]
                seconds[method] = (t, t)
        ref = np.array([r["accuracy"] for r in scores["per-config"]])
        ids = {m: [r["config_id"] for r in scores[m]] for m in ("coa", "shared", "per-config")}
        if not ids["coa"] == ids["shared"] == ids["per-config"]:
            raise SystemExit(f"study: methods were scored on different configurations: {ids}")
        # Fairness (issue #15): no method but per-config may have trained on an evaluated allocation.
        hits = trained_on({"coa": run, "shared": st.runs / f"shared-s{seed}"},
                          [_per_config_configs(st.runs / f"per-config-s{seed}")])
        if hits:
            raise SystemExit(f"study: Table 2's evaluated allocations (positions {hits}) are in a training set: "
                             f"an unfair comparison; move train.init_budgets off eval.budgets in {MINILM}")
        lo = min(cfg.eval.budgets) - 0.25  # the hypervolume's bits axis: a quarter bit around the budgets
        for method, rows in scores.items():
            acc = np.array([r["accuracy"] for r in rows])
            bits = np.array([r["avg_bits"] for r in rows])
            row = {"seed": seed, "method": method, "mean_accuracy": float(acc.mean()),
                   "min_accuracy": float(acc.min()), "configs": len(acc),
                   "train_seconds": seconds[method][0], "total_seconds": seconds[method][1],
                   "adapters": len(acc) if method == "per-config" else 1}
            if method != "fp-lora":
                row["gap_to_per_config_pt"] = float((acc - ref).mean() * 100)
                row["hypervolume"] = accuracy_hypervolume(acc, bits, (lo, max(cfg.eval.budgets) + 0.25))
            summary.append(row)
            for r, b in zip(rows, cfg.eval.budgets if method != "fp-lora" else [None]):
                per_config_rows.append({"seed": seed, "method": method, "budget": b, "config_id": r["config_id"],
                                        "avg_bits": r["avg_bits"], "accuracy": r["accuracy"], "loss": r["loss"]})
    agg = _aggregate(summary, "method", ["mean_accuracy", "gap_to_per_config_pt", "hypervolume", "train_seconds"])
    st.write_csv("table2-per-config.csv", per_config_rows)
    st.write_csv("table2-seeds.csv", summary)
    st.write_csv("table2.csv", agg)
    series = {}
    for method in ("coa", "shared", "per-config"):
        rows = [r for r in per_config_rows if r["method"] == method and r["seed"] == seeds[0]]
        series[method] = (np.array([r["avg_bits"] for r in rows]), np.array([r["accuracy"] for r in rows]))
    fp = [r["accuracy"] for r in per_config_rows if r["method"] == "fp-lora" and r["seed"] == seeds[0]]
    _plot(st.results / "table2.png", series, "average bits", "test accuracy",
          f"MiniLM-L6 / Rotten Tomatoes, allocation configurations (seed {seeds[0]})",
          hlines={"fp-lora (unquantized)": fp[0]} if fp else None)
    return {"table2": agg}


# Issue #15's options on Table 2 (MiniLM, where quantization costs little): the options that lead on the
# headroom testbed, for coa (orchestrated) and shared, against Table 2's plain runs of the same seeds. Each
# is the headroom variant of that name (``--variants`` picks some of them). The -random pair tells the bank's
# cost on MiniLM from that of its random training configurations (drawn across eval.random_bits).
TABLE2_OPTIONS: dict[str, tuple[str, list[str]]] = {
    name: HEADROOM_VARIANTS[name] for name in ("coa-residual-fit", "shared-residual", "coa-residual-fit-random",
                                               "shared-residual-random", "coa-bank", "shared-bank",
                                               "coa-residual-fit-r05", "coa-residual-fit-r1")}


def table2_options(st: Study, seeds: list[int]) -> dict[str, Any]:
    """:data:`TABLE2_OPTIONS` on Table 2's budgets and seeds, beside Table 2's own coa and shared: mean test
    accuracy, the gap to per-config and to the plain shared of the same seed (points). Needs ``table2``'s
    runs of those seeds (it reuses their evaluations)."""
    cfg, total, budgets = _table2_args(st)
    options = {m: v for m, v in TABLE2_OPTIONS.items() if st.variants is None or m in st.variants}
    if not options:
        raise SystemExit(f"study: --variants names none of table2-options' options {list(TABLE2_OPTIONS)}")
    summary: list[dict[str, Any]] = []
    for seed in seeds:
        s = _seed_sets(seed)
        if not all((st.runs / f"eval-{m}-s{seed}{tail}.json").is_file()
                   for m, tail in (("coa", "-budgets"), ("shared", ""), ("per-config", ""))):
            raise SystemExit(f"study: table2-options compares with Table 2's runs of seed {seed}: "
                             f"run `--parts table2 --seeds {seed}` first")
        scores = {"coa": st.evaluate(f"coa-s{seed}-budgets"), "shared": st.evaluate(f"shared-s{seed}"),
                  "per-config": st.evaluate(f"per-config-s{seed}")}
        outs = {}
        for name, (method, sets) in options.items():
            if method == "coa":
                outs[name] = st.orchestrated(f"{name}-s{seed}", MINILM, s + sets)
                scores[name] = st.evaluate(f"{name}-s{seed}-budgets", "--run", str(outs[name]), "--budget", *budgets)
            else:
                outs[name] = st.trained(f"{name}-s{seed}", MINILM, method, s + total + sets)
                scores[name] = st.evaluate(f"{name}-s{seed}", "--checkpoint", str(outs[name]), "--budget", *budgets)
        hits = trained_on(outs, [_per_config_configs(st.runs / f"per-config-s{seed}")])
        if hits:
            raise SystemExit(f"study: Table 2's evaluated allocations (positions {hits}) are in a training set")
        ids = {m: [r["config_id"] for r in rows] for m, rows in scores.items()}
        if len({tuple(v) for v in ids.values()}) != 1:
            raise SystemExit(f"study: methods were scored on different configurations: {ids}")
        acc = {m: np.array([r["accuracy"] for r in rows]) for m, rows in scores.items()}
        for m in ("coa", "shared", *options):
            out = outs.get(m, st.runs / f"{m}-s{seed}")
            seconds = (_run_train_seconds(out)[0] if (out / "rounds.parquet").is_file()
                       else json.loads((out / "meta.json").read_text())["train_seconds"])
            summary.append({"seed": seed, "method": m, "mean_accuracy": float(acc[m].mean()),
                            "gap_to_per_config_pt": float((acc[m] - acc["per-config"]).mean() * 100),
                            "gap_to_shared_pt": float((acc[m] - acc["shared"]).mean() * 100),
                            "train_seconds": seconds})
    summary = _with_earlier(st.results / "table2-options-seeds.csv", summary)  # --variants: keep the others
    st.write_csv("table2-options-seeds.csv", summary)
    agg = _aggregate(summary, "method", ["mean_accuracy", "gap_to_per_config_pt", "gap_to_shared_pt", "train_seconds"])
    st.write_csv("table2-options.csv", agg)
    return {"table2_options": agg}


def _aggregate(rows: list[dict[str, Any]], key: str, fields: list[str]) -> list[dict[str, Any]]:
    """Mean and spread (std over seeds, 0 for one seed) of ``fields`` per ``key``."""
    out = []
    for k in dict.fromkeys(r[key] for r in rows):
        mine = [r for r in rows if r[key] == k]
        row: dict[str, Any] = {key: k, "seeds": len(mine)}
        for f in fields:
            vals = [r[f] for r in mine if r.get(f) is not None]
            if vals:
                row[f] = float(np.mean(vals))
                row[f + "_std"] = float(np.std(vals))
        out.append(row)
    return out


def baseline_seeds(st: Study, seeds: list[int]) -> dict[str, Any]:
    """Table 2's shared and per-config alone at several seeds (a subset of ``table2``'s runs, which it
    reuses): how far a method's mean accuracy moves with the seed, the yardstick for coa's gap."""
    _, total, budgets = _table2_args(st)
    rows = []
    for seed in seeds:
        for method in ("shared", "per-config"):
            out = st.trained(f"{method}-s{seed}", MINILM, method, _seed_sets(seed) + total)
            args = ["--checkpoint", str(out)] + (["--budget", *budgets] if method == "shared" else [])
            acc = [r["accuracy"] for r in st.evaluate(f"{method}-s{seed}", *args)]
            rows.append({"seed": seed, "method": method, "mean_accuracy": float(np.mean(acc)), **{
                f"acc_{b}": a for b, a in zip(budgets, acc)}})
    st.write_csv("baseline-seeds.csv", rows)
    agg = _aggregate(rows, "method", ["mean_accuracy"])
    for row in agg:  # the seed-to-seed range of the mean, in points
        mine = [r["mean_accuracy"] for r in rows if r["method"] == row["method"]]
        row["range_pt"] = (max(mine) - min(mine)) * 100
    return {"baseline_seeds": agg}


def seen_unseen(st: Study, seeds: list[int]) -> dict[str, Any]:
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / MINILM, st.overrides_for())
    rows_out, summary = [], []
    for seed in seeds:
        run = st.orchestrated(f"coa-s{seed}", MINILM, _seed_sets(seed))
        seen = st.evaluate(f"coa-s{seed}-seen", "--run", str(run))  # the set its last round trained on
        unseen = st.evaluate(f"coa-s{seed}-unseen", "--run", str(run), "--random", str(cfg.eval.random),
                             "--seed", str(UNSEEN_SEED))
        overlap = {r["config_id"] for r in seen} & {r["config_id"] for r in unseen}
        if overlap:
            raise SystemExit(f"study: 'unseen' configurations {sorted(overlap)} are in the training set")
        shared_run = st.runs / f"shared-s{seed}"
        shared = (st.evaluate(f"shared-s{seed}-unseen", "--checkpoint", str(shared_run), "--random",
                              str(cfg.eval.random), "--seed", str(UNSEEN_SEED))
                  if (shared_run / "meta.json").is_file() else [])
        for label, rows in (("coa seen", seen), ("coa unseen", unseen), ("shared unseen", shared)):
            for r in rows:
                rows_out.append({"seed": seed, "set": label, "config_id": r["config_id"], "avg_bits": r["avg_bits"],
                                 "accuracy": r["accuracy"], "loss": r["loss"]})
        # Does coa generalise? Compare the unseen accuracies with a line fitted to the seen ones over the
        # same bit range (the seen set spans 2.25-7 bits, the unseen 2.5-4).
        sb = np.array([r["avg_bits"] for r in seen])
        sa = np.array([r["accuracy"] for r in seen])
        ub = np.array([r["avg_bits"] for r in unseen])
        ua = np.array([r["accuracy"] for r in unseen])
        in_range = (sb >= ub.min() - 0.25) & (sb <= ub.max() + 0.25)
        fit = np.polyfit(sb, sa, 1) if len(sb) > 1 else np.array([0.0, sa.mean()])
        summary.append({
            "seed": seed, "seen_configs": len(sb), "seen_mean_accuracy_all": float(sa.mean()),
            "seen_mean_accuracy_in_unseen_range": float(sa[in_range].mean()) if in_range.any() else None,
            "unseen_configs": len(ub), "unseen_mean_accuracy": float(ua.mean()),
            "unseen_minus_seen_fit_pt": float((ua - np.polyval(fit, ub)).mean() * 100),
            "shared_unseen_mean_accuracy": float(np.mean([r["accuracy"] for r in shared])) if shared else None,
        })
    st.write_csv("seen-unseen.csv", rows_out)
    st.write_csv("seen-unseen-summary.csv", summary)
    series = {}
    for label in ("coa seen", "coa unseen", "shared unseen"):
        rows = [r for r in rows_out if r["set"] == label and r["seed"] == seeds[0]]
        if rows:
            series[label] = (np.array([r["avg_bits"] for r in rows]), np.array([r["accuracy"] for r in rows]))
    _plot(st.results / "seen-unseen.png", series, "average bits", "test accuracy",
          f"coa on configurations it trained on vs never saw (seed {seeds[0]})",
          markers={"coa seen": "o", "coa unseen": "x", "shared unseen": "+"})
    return {"seen_unseen": summary}


def _search_run_row(run: Path, seed: int, method: str, scores: dict[str, float]) -> tuple[dict[str, Any], Any]:
    """One orchestrated run of a search ablation: its summary row (what the search did, its final
    hypervolume, the part's ``scores``, its seconds) and its hypervolume curve (rounds, hypervolume)."""
    rounds, archive = RunDir(run).read_rounds(), RunDir(run).read_archive()
    train_s, total_s = _run_train_seconds(run)
    row = {"seed": seed, "method": method, "rounds": len(rounds),
           "evaluations": sum(1 for r in archive if r["status"] == "ok"),
           "distinct_configs": len({r["config_id"] for r in archive}),
           "final_hypervolume": rounds[-1]["hypervolume"], **scores,
           "final_set_size": rounds[-1]["set_size"], "train_seconds": train_s, "total_seconds": total_s}
    curve = (np.array([r["round"] for r in rounds], dtype=float), np.array([r["hypervolume"] for r in rounds]))
    return row, curve


def search_ablation(st: Study, seeds: list[int]) -> dict[str, Any]:
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / MINILM, st.overrides_for())
    summary, curves = [], {}
    for seed in seeds:
        for method in SEARCH_METHODS:
            name = f"coa-s{seed}" if method == "gp" else f"search-{method}-s{seed}"
            run = st.orchestrated(name, MINILM, _seed_sets(seed) + [f"search.method={method}"])
            held = st.evaluate(f"{name}-unseen", "--run", str(run), "--random", str(cfg.eval.random),
                               "--seed", str(UNSEEN_SEED))
            # Table 2's six allocation configurations: the same configurations for every method.
            at_budgets = st.evaluate(f"{name}-budgets", "--run", str(run), "--budget",
                                     *[str(b) for b in cfg.eval.budgets])
            row, curve = _search_run_row(run, seed, method, {
                "heldout_mean_accuracy": float(np.mean([r["accuracy"] for r in held])),
                "budgets_mean_accuracy": float(np.mean([r["accuracy"] for r in at_budgets]))})
            summary.append(row)
            if seed == seeds[0]:
                curves[method] = curve
    st.write_csv("search-ablation-seeds.csv", summary)
    agg = _aggregate(summary, "method", ["final_hypervolume", "heldout_mean_accuracy", "budgets_mean_accuracy",
                                       "evaluations", "total_seconds"])
    st.write_csv("search-ablation.csv", agg)
    _plot(st.results / "search-ablation.png", curves, "round", "hypervolume (validation loss vs bits)",
          f"Search ablation, MiniLM-L6 / Rotten Tomatoes (seed {seeds[0]})")
    return {"search_ablation": agg}


def causal_lm(st: Study, seeds: list[int]) -> dict[str, Any]:
    from coalora.pipeline.config import load_config

    cfg = load_config(ROOT / SMOLLM, st.overrides_for(lm=True))
    rows_out, summary = [], []
    for seed in seeds:
        s = [f"train.seed={seed}"]
        scores, seconds = {}, {}
        outs = {m: st.trained(f"lm-{m}-s{seed}", SMOLLM, m, s, lm=True) for m in ("coa", "shared", "per-config")}
        scores["per-config"] = st.evaluate(f"lm-per-config-s{seed}", "--checkpoint", str(outs["per-config"]))
        seconds["per-config"] = json.loads((outs["per-config"] / "per_config.json").read_text())["train_seconds"]
        # coa and shared are scored on the very configurations per-config trained for, read from its
        # checkpoints rather than allocated again: runs made before allocate's node limit (when only a
        # time limit bounded SmolLM2's MILP) may hold other allocations than today's code gives.
        at = _per_config_configs(outs["per-config"])
        for method in ("coa", "shared"):
            scores[method] = st.evaluate(f"lm-{method}-s{seed}-at-per-config", "--checkpoint", str(outs[method]),
                                         "--config", str(at))
            seconds[method] = json.loads((outs[method] / "meta.json").read_text())["train_seconds"]
        ids = {m: [r["config_id"] for r in rows] for m, rows in scores.items()}
        if not ids["coa"] == ids["shared"] == ids["per-config"]:
            raise SystemExit(f"study: methods were scored on different configurations: {ids}")
        ref = np.array([r["perplexity"] for r in scores["per-config"]])
        for method, rows in scores.items():
            ppl = np.array([r["perplexity"] for r in rows])
            tokens = cfg.train.steps * cfg.data.batch_size * cfg.data.block_size * (len(rows) if method == "per-config" else 1)
            summary.append({"seed": seed, "method": method, "mean_perplexity": float(ppl.mean()),
                            "ratio_to_per_config": float((ppl / ref).mean()), "steps": cfg.train.steps,
                            "adapters": len(rows) if method == "per-config" else 1, "train_tokens": tokens,
                            "train_seconds": seconds[method]})
            for r, b in zip(rows, cfg.eval.budgets):
                rows_out.append({"seed": seed, "method": method, "budget": b, "config_id": r["config_id"],
                                 "avg_bits": r["avg_bits"], "perplexity": r["perplexity"], "loss": r["loss"]})
    st.write_csv("causal-lm-per-config.csv", rows_out)
    agg = _aggregate(summary, "method", ["mean_perplexity", "ratio_to_per_config", "train_seconds"])
    st.write_csv("causal-lm.csv", agg)
    series = {m: (np.array([r["avg_bits"] for r in rows_out if r["method"] == m and r["seed"] == seeds[0]]),
                  np.array([r["perplexity"] for r in rows_out if r["method"] == m and r["seed"] == seeds[0]]))
              for m in ("coa", "shared", "per-config")}
    _plot(st.results / "causal-lm.png", series, "average bits", "test perplexity",
          f"SmolLM2-135M / Wikipedia sample, {cfg.train.steps} steps (seed {seeds[0]})")
    return {"causal_lm": agg}


def gap_closed(shared: float, coa: float, per_config: float) -> float | None:
    """G = (L_shared − L_coa) / (L_shared − L_per-config): the share of the shared → per-config gap that coa
    closes (1: as good as per-config; 0: no better than shared; < 0: worse). None without a gap."""
    gap = shared - per_config
    return None if gap <= 0 else (shared - coa) / gap


def headroom_rows(seed: int, losses: dict[str, dict[str, dict[str, Any]]], seen: list[str],
                  budgets: list[float], unseen: list[str], match: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per method and evaluated configuration of one seed (``headroom.csv``).

    Args:
        losses: method → config id → evaluation row (``loss``, ``avg_bits``); per-config has only the
            configurations it trained an adapter for.
        seen: the ids of the allocations at ``budgets`` (in that order); unseen: the random held-out ids.
        match: coa variant → (shared variant, per-config variant) with the same option; its rows get
            ``gap_closed_match``, G with those in place of shared and per-config (``HEADROOM_MATCH``).
    """
    match = match or {}
    rows = []
    for method, mine in losses.items():
        for set_name, ids in (("seen", seen), ("unseen", unseen)):
            for i, cid in enumerate(ids):
                if cid not in mine:
                    continue
                r = mine[cid]
                g = g_match = None
                baseline = method == "shared" or method.startswith("per-config")
                if not baseline and cid in losses["per-config"]:
                    g = gap_closed(losses["shared"][cid]["loss"], r["loss"], losses["per-config"][cid]["loss"])
                sh, pc = match.get(method, (None, None))
                if not baseline and sh in losses and cid in losses.get(pc, {}):
                    g_match = gap_closed(losses[sh][cid]["loss"], r["loss"], losses[pc][cid]["loss"])
                rows.append({"method": method, "seed": seed, "set": set_name,
                             "budget": budgets[i] if set_name == "seen" else None, "config_id": cid,
                             "avg_bits": r["avg_bits"], "loss": r["loss"], "gap_closed": g,
                             "gap_closed_match": g_match})
    return rows


def snapshot_steps(steps: int) -> list[int]:
    """The learning curve's intermediate points: a quarter, half and three quarters of ``steps``."""
    return sorted({steps * q // 4 for q in (1, 2, 3)} - {0})


def headroom_curves(seed: int, by_step: dict[int, dict[str, dict[str, dict[str, Any]]]], seen: list[str],
                    budgets: list[float], unseen: list[str]) -> list[dict[str, Any]]:
    """``headroom-curves.csv``'s rows for one seed: per step, method and set, the mean loss and mean G (and
    G_match) over the configurations per-config trained for, as :func:`headroom_summary` computes them.

    Args:
        by_step: step → method → config id → evaluation row, as ``losses`` of :func:`headroom_rows`.
    """
    out = []
    for step, losses in sorted(by_step.items()):
        pc = losses["per-config"]
        rows = headroom_rows(seed, losses, [c for c in seen if c in pc], [b for c, b in zip(seen, budgets) if c in pc],
                             [c for c in unseen if c in pc], HEADROOM_MATCH)
        out += [{"seed": seed, "step": step, **r} for r in headroom_summary(rows)]
    return out


def headroom_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method and set: mean loss over the set, mean G where per-config was trained, training seconds."""
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        for set_name in ("seen", "unseen"):
            mine = [r for r in rows if r["method"] == method and r["set"] == set_name]
            if not mine:
                continue
            seeds = sorted({r["seed"] for r in mine})
            row = {"method": method, "set": set_name, "seeds": len(seeds), "configs": len(mine) // len(seeds),
                   "mean_loss": float(np.mean([r["loss"] for r in mine]))}
            for key in ("gap_closed", "gap_closed_match"):
                gs = [r[key] for r in mine if r.get(key) is not None]
                per_seed = [float(np.mean([r[key] for r in mine if r["seed"] == s and r.get(key) is not None]))
                            for s in seeds if any(r["seed"] == s and r.get(key) is not None for r in mine)]
                row[key] = float(np.mean(gs)) if gs else None
                row[f"{key}_std"] = float(np.std(per_seed)) if per_seed else None
            if set_name == "unseen":
                row["unseen_vs_seen_line_pct"] = _unseen_vs_seen_line(
                    [r for r in rows if r["method"] == method and r["set"] == "seen"], mine)
            out.append(row)
    return out


def _unseen_vs_seen_line(seen: list[dict[str, Any]], unseen: list[dict[str, Any]]) -> float | None:
    """Seen against unseen (issue #15's third target): per seed, a least-squares line of loss against average
    bits through the seen configurations, and the unseen ones' mean relative excess over it, in percent
    (positive: worse than the line), averaged over seeds. None without two seen bit widths in a seed."""
    per_seed = []
    for seed in sorted({r["seed"] for r in unseen}):
        sb = np.array([r["avg_bits"] for r in seen if r["seed"] == seed])
        sl = np.array([r["loss"] for r in seen if r["seed"] == seed])
        if len(np.unique(sb)) < 2:
            continue
        line = np.polyfit(sb, sl, 1)
        mine = [r for r in unseen if r["seed"] == seed]
        pred = np.polyval(line, [r["avg_bits"] for r in mine])
        per_seed.append(float(np.mean((np.array([r["loss"] for r in mine]) - pred) / pred) * 100))
    return float(np.mean(per_seed)) if per_seed else None


def headroom_pairs(evals: dict[tuple[str, int, str], list[dict[str, Any]]],
                   pairs: dict[str, str], exclude: set[str] = frozenset()) -> list[dict[str, Any]]:
    """A coa variant against its matching shared variant, seed by seed: does it help on every seed?

    Args:
        evals: (method, seed, set) → that evaluation's rows (``loss`` per configuration, the same
            configurations in the same order for every method of a set).
        pairs: coa variant → shared variant.
        exclude: configuration ids left out (``--exclude-trained``).
    Returns one row per pair, seed and set: both mean losses, their difference and on how many of the
    configurations the coa variant's loss is the lower.
    """
    out = []
    for coa, shared in pairs.items():
        for (method, seed, set_name), rows in sorted(evals.items(), key=lambda kv: (kv[0][1], kv[0][2])):
            other = evals.get((shared, seed, set_name))
            if method != coa or other is None:
                continue
            keep = [r.get("config_id") not in exclude for r in rows]
            a = np.array([r["loss"] for r, k in zip(rows, keep) if k])
            b = np.array([r["loss"] for r, k in zip(other, keep) if k])
            out.append({"variant": coa, "against": shared, "seed": seed, "set": set_name, "configs": len(a),
                        "loss": float(a.mean()), "loss_against": float(b.mean()), "difference": float((a - b).mean()),
                        "lower_on": int((a < b).sum())})
    return out


def _pair_evals(st: Study, methods: list[str]) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
    """Every headroom evaluation of ``methods`` in the runs directory, whatever the seed (some seeds may have
    only the variants that decide: ``eval-hr-<method>-s<seed>-<set>.json``)."""
    found = {}
    for m in methods:
        for path in st.runs.glob(f"eval-hr-{m}-s*-*.json"):
            got = re.fullmatch(rf"eval-hr-{re.escape(m)}-s(\d+)-(seen|unseen)\.json", path.name)
            if got:
                found[(m, int(got.group(1)), got.group(2))] = json.loads(path.read_text())
    return found


def training_configs(out: Path) -> list[Any]:
    """Every configuration a trained output ever trained on, as JSON: a ``coalora train`` directory's
    ``meta.json`` trainset, or the union of an orchestrated run's rounds (each round's checkpoint records the
    set it trained on; the search changes it between rounds)."""
    if (out / "meta.json").is_file():
        return json.loads((out / "meta.json").read_text())["trainset"]
    metas = sorted((out / "checkpoints").glob("round_*/meta.json"))
    if not metas:
        raise SystemExit(f"study: {out} holds neither a checkpoint's meta.json nor a run's checkpoints")
    return [c for m in metas for c in json.loads(m.read_text())["trainset"]]


def trained_on(outs: dict[str, Path], evaluated: list[Path]) -> dict[str, list[int]]:
    """Fairness: the evaluated configurations that a shared or coa variant's training set holds (per-config's
    adapters are trained on theirs by definition). ``evaluated``: JSON lists of configurations (seen, then
    unseen). Returns variant → the positions (in ``evaluated`` order) of those it trained on; empty when fair.
    Configurations drawn per step (``train.random_configs``) never include the held-out ones by construction."""
    key = lambda c: json.dumps(c, sort_keys=True)  # noqa: E731
    scored = [key(c) for path in evaluated for c in json.loads(path.read_text())]
    hits = {}
    for name, out in outs.items():
        if name.startswith("per-config"):
            continue
        mine = {key(c) for c in training_configs(out)}
        found = [i for i, k in enumerate(scored) if k in mine]
        if found:
            hits[name] = found
    return hits


def kept_configs(hits: dict[str, list[int]], seen: list[str], budgets: list[float],
                 unseen: list[str]) -> tuple[list[str], list[float], list[str], dict[str, list[str]]]:
    """What ``--exclude-trained`` keeps of ``seen`` (with its ``budgets``) and ``unseen`` config ids: all but
    those at the positions of :func:`trained_on`'s ``hits`` (variant → positions, ``seen`` then ``unseen``).

    Returns the kept seen ids, their budgets, the kept unseen ids, and each dropped id → the variants that
    trained on it (in position order).
    """
    every = seen + unseen
    drop: dict[str, list[str]] = {}
    for i in sorted({i for found in hits.values() for i in found}):
        drop[every[i]] = sorted(v for v, found in hits.items() if i in found)
    return ([c for c in seen if c not in drop], [b for c, b in zip(seen, budgets) if c not in drop],
            [c for c in unseen if c not in drop], drop)


def record_seed(path: Path, tables: dict[str, list[dict[str, Any]]], drop: dict[str, list[str]]) -> None:
    """Add one headroom call's results of one seed to that seed's record (``runs/<study>/headroom-s<seed>.json``).

    A call may run only some variants (``--variants``); the record keeps every method any call gave that
    seed, so the tables show them all. A method's rows from this call replace its earlier ones.

    Args:
        tables: table name (``rows``, ``curves``, ``seconds``) → rows, each with a ``method``.
        drop: configuration id → the variants that trained on it (``--exclude-trained``), added to the
            seed's earlier list: those leave every method's rows of the seed (see :func:`seed_records`).
    """
    rec = json.loads(path.read_text()) if path.is_file() else {}
    for name, rows in tables.items():
        mine = rec.setdefault(name, {})
        for method in dict.fromkeys(r["method"] for r in rows):
            mine[method] = [r for r in rows if r["method"] == method]
    excluded = rec.setdefault("excluded", {})
    for cid, by in drop.items():
        excluded[cid] = sorted({*excluded.get(cid, []), *by})
    path.write_text(json.dumps(rec, indent=1))


def seed_records(runs: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[str]]]:
    """Every seed's record in ``runs`` (:func:`record_seed`), in seed order: table name → rows of all
    seeds and methods, with each seed's excluded configurations left out of its ``rows``; and every
    excluded id → the variants that trained on it, over all seeds."""
    tables: dict[str, list[dict[str, Any]]] = {}
    excluded: dict[str, list[str]] = {}
    paths = [p for p in runs.glob("headroom-s*.json") if re.fullmatch(r"headroom-s\d+\.json", p.name)]
    for path in sorted(paths, key=lambda p: int(p.stem[len("headroom-s"):])):
        rec = json.loads(path.read_text())
        drop = rec.get("excluded", {})
        for name in ("rows", "curves", "seconds"):
            rows = [r for method_rows in rec.get(name, {}).values() for r in method_rows]
            tables.setdefault(name, []).extend(r for r in rows if name != "rows" or r["config_id"] not in drop)
        for cid, by in drop.items():
            excluded[cid] = sorted({*excluded.get(cid, []), *by})
    return tables, excluded


def _unseen_configs(st: Study, overrides: list[str]) -> Path:
    """The testbed's random held-out configurations (``eval.random`` of them, every matrix at
    ``eval.random_min_bits`` weight bits or more, seeded by ``eval.seed``) as a JSON list of configurations:
    ``runs/<study>/headroom-unseen.json``. The same for every seed and method; never trained on except by
    per-config, which trains one adapter for each of the first few."""
    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import build_space, load_base, random_configs

    path = st.runs / "headroom-unseen.json"
    if not path.is_file():
        cfg = load_config(ROOT / LOWBIT, overrides)
        space = build_space(cfg, load_base(cfg).model)
        path.write_text(json.dumps([space.to_json(c) for c in random_configs(cfg, space)]))
    return path


def _train_unseen_per_config(st: Study, name: str, sets: list[str], configs: Path) -> Path:
    """Per-config's adapters for the first :data:`HEADROOM_UNSEEN_PER_CONFIG` unseen configurations
    (``configs``) into ``runs/<study>/<name>`` (skipped when it is there)."""
    out = st.runs / name
    if (out / "per_config.json").is_file():
        st.reuse(f"train-{name}.log")
        return out
    st.coalora("train", "--config", LOWBIT, "--method", "per-config", "--configs", str(configs), "--out", str(out),
               "--overwrite", "--json", *st.sets(sets, lm=True), log=f"train-{name}.log", echo=True)
    return out


def _headroom_evaluations(st: Study, seed: int, outs: dict[str, Path], per_configs: list[str], snaps: list[int],
                          seen_path: Path, unseen_path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Every ``coalora evaluate`` the headroom part makes for one seed, as (cache name, arguments): the
    finals of :func:`headroom` and the snapshots of :func:`_headroom_curve`, which make the same calls."""
    calls: list[tuple[str, tuple[str, ...]]] = []

    def of(m: str, path: Path, suffix: str = "") -> None:
        if m in per_configs:  # its adapters, on their own configurations
            calls.append((f"hr-{m}-s{seed}{suffix}", ("--checkpoint", str(path))))
            unseen = st.runs / f"hr-{m}-unseen-s{seed}"
            if suffix:
                unseen = snapshot_dir(unseen, int(suffix.removeprefix("-step")))
            calls.append((f"hr-{m}-unseen-s{seed}{suffix}", ("--checkpoint", str(unseen))))
        else:
            calls.extend((f"hr-{m}-s{seed}-{set_name}{suffix}", ("--checkpoint", str(path), "--config", str(c)))
                         for set_name, c in (("seen", seen_path), ("unseen", unseen_path)))

    from coalora.pipeline.methods import snapshot_dir

    for m, out in outs.items():
        of(m, out)
    curves = [m for m in HEADROOM_CURVES if m in outs]
    if all(snapshot_dir(outs[m], k).is_dir() for m in curves for k in snaps):  # else no curve at all
        for m in curves:
            for k in snaps:
                of(m, snapshot_dir(outs[m], k), f"-step{k}")
    return calls


def _headroom_curve(st: Study, seed: int, outs: dict[str, Path], snaps: list[int], steps: int,
                    final: dict[str, dict[str, dict[str, Any]]], seen_ids: list[str], budgets: list[float],
                    unseen_ids: list[str], seen_path: Path, unseen_path: Path) -> list[dict[str, Any]]:
    """One seed's learning curves: the snapshots of :data:`HEADROOM_CURVES` evaluated like the finals (a
    per-config snapshot on its adapters' own configurations, seen and unseen). Runs made without
    snapshots (before ``train.snapshots`` existed) give no curve, and the log says so."""
    from coalora.pipeline.methods import snapshot_dir

    methods = [m for m in HEADROOM_CURVES if m in outs]
    by_step: dict[int, dict[str, dict[str, dict[str, Any]]]] = {steps: {m: final[m] for m in methods}}
    # Checked before any is evaluated: a curve with a method missing is no curve (and no wasted evaluation).
    missing = [(m, k) for m in methods for k in snaps if not snapshot_dir(outs[m], k).is_dir()]
    if missing:
        m, k = missing[0]
        print(f"   {outs[m].name}: no snapshot at step {k} (made without train.snapshots): no curve", flush=True)
        return []
    for m in methods:
        for k in snaps:
            snap = snapshot_dir(outs[m], k)
            if m.startswith("per-config"):
                got = st.evaluate(f"hr-{m}-s{seed}-step{k}", "--checkpoint", str(snap))
                got += st.evaluate(f"hr-{m}-unseen-s{seed}-step{k}", "--checkpoint",
                                   str(snapshot_dir(st.runs / f"hr-{m}-unseen-s{seed}", k)))
            else:
                got = [r for set_name, path in (("seen", seen_path), ("unseen", unseen_path))
                       for r in st.evaluate(f"hr-{m}-s{seed}-{set_name}-step{k}", "--checkpoint", str(snap),
                                            "--config", str(path))]
            by_step.setdefault(k, {})[m] = {r["config_id"]: r for r in got}
    return headroom_curves(seed, by_step, seen_ids, budgets, unseen_ids)


def headroom(st: Study, seeds: list[int], tables: str = "headroom") -> dict[str, Any]:
    """The testbed where quantization hurts (issue #15): shared, per-config and coa's variants on SmolLM2 at
    2.75–3.5 bits; the gap closed per budget and on random unseen configurations.

    ``tables`` names the result files (``<tables>.csv``, ``<tables>-summary.csv``, ..., ``<tables>.png``)
    and the returned table, so that another pass (:func:`headroom_full`) stands beside this one."""
    from coalora.pipeline.config import load_config

    variants = {m: HEADROOM_VARIANTS[m] for m in (st.variants or HEADROOM_VARIANTS) if m in HEADROOM_VARIANTS}
    if not variants:
        raise SystemExit(f"study: --variants names none of headroom's variants {list(HEADROOM_VARIANTS)}")
    quick = QUICK_HEADROOM if st.quick else []
    overrides = st.overrides_for(lm=True) + quick
    cfg = load_config(ROOT / LOWBIT, overrides)
    unseen_path = _unseen_configs(st, overrides)
    unseen_some = st.runs / "headroom-unseen-per-config.json"
    unseen_some.write_text(json.dumps(json.loads(unseen_path.read_text())[:HEADROOM_UNSEEN_PER_CONFIG]))
    per_configs = {m: sets for m, sets in HEADROOM_PER_CONFIG.items() if m == "per-config" or any(
        pc == m for v, (_, pc) in HEADROOM_MATCH.items() if v in variants)}
    snaps = snapshot_steps(cfg.train.steps)
    for seed in seeds:
        base = quick + [f"train.seed={seed}", f"train.snapshots=[{', '.join(map(str, snaps))}]"]
        plan = {"shared": ("shared", []), **{m: ("per-config", sets) for m, sets in per_configs.items()}, **variants}
        # Every training of the seed is independent of the others: --jobs runs them side by side.
        trained = st.run_all({
            **{m: functools.partial(st.trained, f"hr-{m}-s{seed}", LOWBIT, method, base + sets, lm=True)
               for m, (method, sets) in plan.items()},
            **{f"{m}-unseen": functools.partial(_train_unseen_per_config, st, f"hr-{m}-unseen-s{seed}",
                                                base + sets, unseen_some) for m, sets in per_configs.items()}})
        outs = {m: trained[m] for m in plan}
        seen_path = _per_config_configs(outs["per-config"])  # the allocations at eval.budgets, in order
        # So are the evaluations: made here side by side, then read back from their cache below.
        st.run_all({name: functools.partial(st.evaluate, name, *args) for name, args in _headroom_evaluations(
            st, seed, outs, list(per_configs), snaps, seen_path, unseen_path)})
        losses = {}
        seconds: list[dict[str, Any]] = []  # this seed's training times (its record holds them)
        for m, sets in per_configs.items():
            unseen_out = trained[f"{m}-unseen"]
            rows_pc = st.evaluate(f"hr-{m}-s{seed}", "--checkpoint", str(outs[m]))
            rows_pc += st.evaluate(f"hr-{m}-unseen-s{seed}", "--checkpoint", str(unseen_out))
            losses[m] = {r["config_id"]: r for r in rows_pc}
            seconds.append({"method": f"{m}-unseen", "seed": seed,
                            "train_seconds": json.loads((unseen_out / "per_config.json").read_text())["train_seconds"]})
        ids: dict[str, list[str]] = {}
        for m in ("shared", *variants):
            losses[m] = {}
            for set_name, path in (("seen", seen_path), ("unseen", unseen_path)):
                got = st.evaluate(f"hr-{m}-s{seed}-{set_name}", "--checkpoint", str(outs[m]), "--config", str(path))
                ids[set_name] = [r["config_id"] for r in got]  # the same for every method: one file each
                losses[m].update({r["config_id"]: r for r in got})
        hits = trained_on(outs, [seen_path, unseen_path])
        if hits and not st.exclude_trained:
            raise SystemExit(f"study: evaluated configurations are in training sets (positions, seen then unseen: "
                             f"{hits}): an unfair comparison; fix train.init_budgets, or pass --exclude-trained")
        # --exclude-trained: those configurations leave every method's rows and curves; the report says so.
        seen_ids, budgets, unseen_ids, drop = kept_configs(hits, ids["seen"], list(cfg.eval.budgets), ids["unseen"])
        curves = _headroom_curve(st, seed, outs, snaps, cfg.train.steps, losses, seen_ids, budgets,
                                 unseen_ids, seen_path, unseen_path)
        # Every configuration's row; the seed's record leaves out the excluded ones (of this call and earlier).
        rows = headroom_rows(seed, losses, ids["seen"], list(cfg.eval.budgets), ids["unseen"], HEADROOM_MATCH)
        for m, out in outs.items():
            meta = out / ("per_config.json" if m in per_configs else "meta.json")
            seconds.append({"method": m, "seed": seed, "train_seconds": json.loads(meta.read_text())["train_seconds"]})
        record_seed(st.runs / f"headroom-s{seed}.json", {"rows": rows, "curves": curves, "seconds": seconds}, drop)
    # The tables hold every seed and method recorded in the runs directory, this call's and earlier calls'.
    records, st.excluded = seed_records(st.runs)
    rows, curves, seconds = records.get("rows", []), records.get("curves", []), records.get("seconds", [])
    print(f"   headroom tables: seeds {sorted({r['seed'] for r in rows})}, "
          f"{len({r['method'] for r in rows})} methods (this call's and earlier calls' records)", flush=True)
    st.write_csv(f"{tables}.csv", rows)
    # Always rewritten (header only when nothing was excluded), so the report never shows a stale list.
    with open(st.results / f"{tables}-excluded.csv", "w") as f:
        f.write("config_id,trained_on_by\n" + "".join(f"{c},{' '.join(v)}\n" for c, v in st.excluded.items()))
    recorded = {r["method"] for r in rows}
    pairs = {v: sh for v, (sh, _) in HEADROOM_MATCH.items() if v in recorded and sh in recorded}
    st.write_csv(f"{tables}-pairs.csv", headroom_pairs(_pair_evals(st, [*pairs, *pairs.values()]), pairs,
                                                      set(st.excluded)))
    summary = headroom_summary(rows)
    st.write_csv(f"{tables}-summary.csv", summary)
    st.write_csv(f"{tables}-curves.csv", curves)
    # The plots show the first seed on record (the one every variant has).
    if curves:
        first = [r for r in curves if r["seed"] == curves[0]["seed"] and r["set"] == "seen"]
        _plot(st.results / f"{tables}-curves.png",
              {m: (np.array([r["step"] for r in first if r["method"] == m]),
                   np.array([r["mean_loss"] for r in first if r["method"] == m]))
               for m in dict.fromkeys(r["method"] for r in first)},
              "training steps", "test loss at the evaluated budgets (nats)",
              f"SmolLM2-135M, learning curves at the evaluated budgets (seed {curves[0]['seed']})")
    st.write_csv(f"{tables}-seconds.csv", _aggregate(seconds, "method", ["train_seconds"]))
    first = [r for r in rows if r["seed"] == rows[0]["seed"]]
    series = {m: (np.array([r["avg_bits"] for r in first if r["method"] == m]),
                  np.array([r["loss"] for r in first if r["method"] == m]))
              for m in dict.fromkeys(r["method"] for r in first)}
    _plot(st.results / f"{tables}.png", series, "average bits", "test loss (nats)",
          f"SmolLM2-135M / Wikipedia sample, {cfg.train.steps} steps, seen and unseen (seed {rows[0]['seed']})",
          markers={m: "o" for m in series})
    return {tables: summary}


def headroom_full(st: Study, seeds: list[int]) -> dict[str, Any]:
    """:func:`headroom` at the testbed configuration's own size, kept apart from the mid-size pass: its runs
    (same names) under ``runs/study-full/`` (``runs/study-quick-full/`` with ``--quick``) and its tables
    ``headroom-full*.csv`` beside ``headroom*.csv``. ``--set`` values still apply (``model.cache_gib``, say);
    one that changes the size makes it another pass than the one the report calls full."""
    saved = st.runs, st.logs, st.excluded
    st.runs = st.runs.with_name(st.runs.name + "-full")
    st.logs = st.runs / "logs"
    st.logs.mkdir(parents=True, exist_ok=True)
    try:
        return headroom(st, seeds, tables="headroom-full")
    finally:
        st.runs, st.logs, st.excluded = saved


def _seen_configs(st: Study, overrides: list[str]) -> Path:
    """The testbed's allocations at ``eval.budgets`` as a JSON list of configurations:
    ``runs/<study>/headroom-seen.json`` (the configurations per-config trains for)."""
    from coalora.pipeline.config import load_config
    from coalora.pipeline.experiment import budget_configs, build_space, error_table_for, load_base

    path = st.runs / "headroom-seen.json"
    if not path.is_file():
        cfg = load_config(ROOT / LOWBIT, overrides)
        model = load_base(cfg).model
        space = build_space(cfg, model)
        configs = budget_configs(cfg, space, error_table_for(cfg, model, space, progress=False))
        path.write_text(json.dumps([space.to_json(c) for c in configs]))
    return path


def headroom_search(st: Study, seeds: list[int]) -> dict[str, Any]:
    """The search ablation on the headroom testbed: the orchestrated coa (the options of
    :data:`HEADROOM_SEARCH_VARIANT`) with the GP search, a frozen training set and random extension, each
    scored on the testbed's evaluated budgets and unseen configurations (test loss, nats).

    ``--variants`` may name some of :data:`HEADROOM_SEARCH_METHODS` (an orchestrated SmolLM2 run is about
    an hour on 2 cores): the tables keep the rows and curves of earlier calls for every (seed, method) this
    call does not run, so the methods can be run in separate calls."""
    from coalora.pipeline.config import load_config

    methods = [m for m in HEADROOM_SEARCH_METHODS if st.variants is None or m in st.variants]
    if not methods:
        raise SystemExit(f"study: --variants names none of headroom-search's methods {list(HEADROOM_SEARCH_METHODS)}")
    quick = QUICK_HEADROOM if st.quick else []
    overrides = st.overrides_for(lm=True) + quick
    cfg = load_config(ROOT / LOWBIT, overrides + HEADROOM_SEARCH_SETS)
    seen_path, unseen_path = _seen_configs(st, overrides), _unseen_configs(st, overrides)
    per_round = max(1, cfg.train.steps // cfg.run.rounds)
    summary, curves = [], []
    for seed in seeds:
        for method in methods:
            name = f"hrs-{method}-s{seed}"
            run = st.orchestrated(name, LOWBIT, quick + HEADROOM_SEARCH_SETS + HEADROOM_VARIANTS[HEADROOM_SEARCH_VARIANT][1]
                                  + _seed_sets(seed) + [f"search.method={method}", f"run.steps_per_round={per_round}"],
                                  lm=True)
            hits = trained_on({name: run}, [seen_path, unseen_path])
            if hits:
                raise SystemExit(f"study: {name} trained on evaluated configurations (positions {hits[name]}, "
                                 "seen then unseen): an unfair comparison")
            losses = {set_name: [r["loss"] for r in st.evaluate(f"{name}-{set_name}", "--run", str(run), "--config",
                                                               str(path))]
                      for set_name, path in (("seen", seen_path), ("unseen", unseen_path))}
            row, (rounds, hv) = _search_run_row(run, seed, method, {
                "seen_mean_loss": float(np.mean(losses["seen"])), "unseen_mean_loss": float(np.mean(losses["unseen"]))})
            summary.append(row)
            curves += [{"seed": seed, "method": method, "round": int(k), "hypervolume": float(h)}
                       for k, h in zip(rounds, hv)]
    summary = _with_earlier(st.results / "headroom-search-seeds.csv", summary)
    curves = _with_earlier(st.results / "headroom-search-curves.csv", curves)
    order = {m: i for i, m in enumerate(HEADROOM_SEARCH_METHODS)}
    summary.sort(key=lambda r: (r["seed"], order.get(r["method"], len(order))))
    st.write_csv("headroom-search-seeds.csv", summary)
    st.write_csv("headroom-search-curves.csv", curves)
    agg = _aggregate(summary, "method", ["seen_mean_loss", "unseen_mean_loss", "final_hypervolume", "evaluations",
                                       "total_seconds"])
    st.write_csv("headroom-search.csv", agg)
    first = min(r["seed"] for r in curves)
    _plot(st.results / "headroom-search.png",
          {m: (np.array([r["round"] for r in curves if r["seed"] == first and r["method"] == m], dtype=float),
               np.array([r["hypervolume"] for r in curves if r["seed"] == first and r["method"] == m]))
           for m in sorted({r["method"] for r in summary if r["seed"] == first}, key=lambda m: order.get(m, 99))},
          "round", "hypervolume (validation loss vs bits)",
          f"Search ablation on the headroom testbed, SmolLM2-135M (seed {first})")
    return {"headroom_search": agg}


_WHOLE = ("seed", "round", "rounds", "evaluations", "distinct_configs", "final_set_size")


def _with_earlier(path: Path, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` plus those of the CSV at ``path`` (an earlier call's) for every (seed, method) ``rows`` lacks:
    a part run one method per call still tabulates them all. Counts and seeds come back as whole numbers."""
    mine = {(r["seed"], r["method"]) for r in rows}
    earlier = _read_csv(path) if path.is_file() else []
    for r in earlier:
        for k in _WHOLE:
            if isinstance(r.get(k), float):
                r[k] = int(r[k])
    return rows + [r for r in earlier if (r["seed"], r["method"]) not in mine]


# The residual-span analyses: name -> residual_span.py arguments. The bank run measures lora.bank's reach.
HEADROOM_SPAN_RUNS: dict[str, list[str]] = {"r16": ["--rank", "16"], "r64": ["--rank", "64"],
                                            "bank16": ["--rank", "16", "--bank", "16"]}


def headroom_span(st: Study, seeds: list[int]) -> dict[str, Any]:
    """How much of each evaluated configuration's quantization residual the shared B·A, the best in-span
    core and the configuration's own top-r directions remove, at rank 16 and 64, and what a rank-16 bank
    per bit width adds (``benchmarks/residual_span.py``; exact, seed-independent, no training; each run's
    table kept in ``runs/<study>/headroom-span-<name>.csv`` and skipped once there):
    ``headroom-span.csv`` (the ranks) and ``headroom-span-bank.csv``."""
    tables = {}
    for name, args in HEADROOM_SPAN_RUNS.items():
        path = st.runs / f"headroom-span-{name}.csv"
        if path.is_file():
            st.reuse(f"headroom-span-{name}.log")
        else:
            partial = st.runs / f"headroom-span-{name}.partial.csv"  # the script appends: start empty
            partial.unlink(missing_ok=True)
            st.sh([sys.executable, "benchmarks/residual_span.py", *args, "--unseen", str(HEADROOM_UNSEEN_PER_CONFIG),
                   "--csv", str(partial)], f"headroom-span-{name}.log", echo=True)
            partial.rename(path)
        with open(path, newline="") as f:  # as written (the script's own number format)
            tables[name] = list(csv.DictReader(f))
    st.write_csv("headroom-span.csv", tables["r16"] + tables["r64"])
    st.write_csv("headroom-span-bank.csv", tables["bank16"])
    return {"headroom_span": tables["r16"] + tables["r64"] + tables["bank16"]}


# ---------------------------------------------------------------------- the report
def results_dir(quick: bool) -> Path:
    """Where a study's tables, plots and manifest go."""
    return ROOT / "benchmarks" / "results" / ("study-quick" if quick else "study")


def report_path(quick: bool) -> Path:
    """The study's report: ``docs/results.md``; a quick check's stays beside its results."""
    return results_dir(True) / "results.md" if quick else ROOT / "docs" / "results.md"


# Placeholders a template may use, each replaced by a table rendered from the result files.
_DEFAULT_TEMPLATE = """# Study results

{{provenance}}

## Table 2

{{table2}}

{{table2-budgets}}

{{plot:table2}}

## Seen against unseen configurations

{{seen-unseen}}

{{plot:seen-unseen}}

## Search ablation

{{search-ablation}}

{{plot:search-ablation}}

## Causal LM

{{causal-lm}}

{{plot:causal-lm}}

## Seed-to-seed spread

{{baseline-seeds}}
"""
_METHOD_ORDER = ("coa", "coa-warm", "shared", "per-config", "fp-lora", "gp", "nsga2", "random-extend", "frozen", "random")


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers as floats and empty cells as None."""
    def value(v: str) -> Any:
        if v == "":
            return None
        try:
            return float(v)
        except ValueError:
            return v
    with open(path, newline="") as f:
        return [{k: value(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _signed(x: float, digits: int) -> str:
    """``+0.50`` / ``−0.93`` (a typographic minus), and ``0`` for zero."""
    text = _num(abs(x), digits)
    return "0" if float(text) == 0 else ("−" if x < 0 else "+") + text


def _num(x: float, digits: int) -> str:
    """``x`` rounded half up from its shortest decimal form (the CSV's 0.7915 is 0.792, not 0.791)."""
    q = Decimal(repr(float(x))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:,.{digits}f}"


def _bits(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _by_method(rows: list[dict[str, Any]], key: str = "method") -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by method, in the order of :data:`_METHOD_ORDER` (others after, as they come)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    rank = {m: i for i, m in enumerate(_METHOD_ORDER)}
    return dict(sorted(groups.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _seeds(rows: list[dict[str, Any]]) -> list[int]:
    return sorted({int(r["seed"]) for r in rows})


def _per_seed(mine: list[dict[str, Any]], field: str, digits: int) -> str:
    """One value per seed, in seed order: ``0.7917 / 0.7792``."""
    return " / ".join(_num(r[field], digits) for r in sorted(mine, key=lambda r: r["seed"]))


def _mean_std(row: dict[str, Any], field: str, digits: int, unit: str = "") -> str:
    if row.get(field) is None:
        return ""
    return f"{_num(row[field], digits)} ± {_num(row[field + '_std'], digits)}{unit}"


def _report_table2(results: Path) -> str:
    seeds_rows = _read_csv(results / "table2-seeds.csv")
    agg = {r["method"]: r for r in _read_csv(results / "table2.csv")}
    seeds = _seeds(seeds_rows)
    rows = []
    for method, mine in _by_method(seeds_rows).items():
        a = agg[method]
        gap = ("" if a.get("gap_to_per_config_pt") is None else
               f"{_signed(a['gap_to_per_config_pt'], 2)} ± {_num(a['gap_to_per_config_pt_std'], 2)} pt"
               if a["gap_to_per_config_pt"] or a["gap_to_per_config_pt_std"] else "0")
        seconds = _per_seed(mine, "train_seconds", 0)
        if any(r["total_seconds"] != r["train_seconds"] for r in mine):  # an orchestrated run
            seconds += f" (whole run {_per_seed(mine, 'total_seconds', 0)})"
        rows.append([method, _num(mine[0]["adapters"], 0), _per_seed(mine, "mean_accuracy", 4),
                     _mean_std(a, "mean_accuracy", 3), gap, _mean_std(a, "hypervolume", 3), seconds])
    label = " / ".join(f"seed {s}" for s in seeds)
    return _table(["method", "adapters", f"mean accuracy, {label}", "mean ± std", "gap to per-config", "HV",
                   f"training s, {label}"], rows)


def _report_table2_options(results: Path) -> str:
    seeds_rows = _read_csv(results / "table2-options-seeds.csv")
    agg = {r["method"]: r for r in _read_csv(results / "table2-options.csv")}
    label = " / ".join(f"seed {s}" for s in _seeds(seeds_rows))
    rows = []
    for method, mine in _by_method(seeds_rows).items():
        a = agg[method]
        rows.append([method, _per_seed(mine, "mean_accuracy", 4), _mean_std(a, "mean_accuracy", 3),
                     f"{_signed(a['gap_to_per_config_pt'], 2)} ± {_num(a['gap_to_per_config_pt_std'], 2)} pt",
                     f"{_signed(a['gap_to_shared_pt'], 2)} ± {_num(a['gap_to_shared_pt_std'], 2)} pt",
                     _per_seed(mine, "train_seconds", 0)])
    return _table(["method", f"mean accuracy, {label}", "mean ± std", "gap to per-config", "gap to shared",
                   f"training s, {label}"], rows)


def _report_table2_budgets(results: Path) -> str:
    rows = [r for r in _read_csv(results / "table2-per-config.csv") if r["budget"] is not None]
    budgets = sorted({r["budget"] for r in rows})
    out = []
    for method, mine in _by_method(rows).items():
        out.append([method] + [_num(float(np.mean([r["accuracy"] for r in mine if r["budget"] == b])), 3)
                               for b in budgets])
    n = len(_seeds(rows))
    return (f"Mean test accuracy per budget, over {n} seed{'s' if n > 1 else ''}:\n\n"
            + _table(["bits"] + [f"{b:g}" for b in budgets], out))


def _report_seen_unseen(results: Path) -> str:
    summary = sorted(_read_csv(results / "seen-unseen-summary.csv"), key=lambda r: r["seed"])
    detail = results / "seen-unseen.csv"
    spans = {}
    if detail.is_file():
        for label in ("coa seen", "coa unseen"):
            bits = [r["avg_bits"] for r in _read_csv(detail) if r["set"] == label]
            spans[label] = f" ({_bits(min(bits))}–{_bits(max(bits))} bits)" if bits else ""

    def line(label: str, field: str, digits: int, count: str | None = None, pt: bool = False) -> list[str]:
        vals = [r[field] for r in summary]
        if any(v is None for v in vals):
            return []
        cells = [(f"{r[count]:.0f} / " if count else "") + (_signed(v, digits) + " pt" if pt else _num(v, digits))
                 for r, v in zip(summary, vals)]
        mean = float(np.mean(vals))
        return [label, *cells, _signed(mean, digits) + " pt" if pt else _num(mean, digits)]

    rows = [line(f"coa, seen{spans.get('coa seen', '')}: configurations / mean accuracy",
                 "seen_mean_accuracy_all", 3, "seen_configs"),
            line("coa, seen within the unseen bit range", "seen_mean_accuracy_in_unseen_range", 3),
            line(f"coa, unseen random{spans.get('coa unseen', '')}: configurations / mean accuracy",
                 "unseen_mean_accuracy", 3, "unseen_configs"),
            line("shared, the same unseen", "shared_unseen_mean_accuracy", 3),
            line("coa unseen minus a line fitted to coa seen", "unseen_minus_seen_fit_pt", 1, pt=True)]
    return _table(["set", *[f"seed {r['seed']:.0f}" for r in summary], "mean"], [r for r in rows if r])


def _search_table(results: Path, name: str, fields: tuple[str, ...], headers: list[str]) -> str:
    """A search ablation's table (``<name>-seeds.csv``, ``<name>.csv``): per search method, each of ``fields``
    per seed with its mean ± std, then the evaluations, the last training set and the whole run's seconds."""
    seeds_rows = _read_csv(results / f"{name}-seeds.csv")
    agg = {r["method"]: r for r in _read_csv(results / f"{name}.csv")}
    rows = []
    for method, mine in _by_method(seeds_rows).items():
        cells = [f"{_per_seed(mine, f, 3)}, {_mean_std(agg[method], f, 3)}" for f in fields]
        rows.append([method, *cells, _per_seed(mine, "evaluations", 0), _per_seed(mine, "final_set_size", 0),
                     _per_seed(mine, "total_seconds", 0)])
    return _table(["search", *headers, "evaluations", "last training set", "whole run s"], rows)


def _report_search_ablation(results: Path) -> str:
    return _search_table(results, "search-ablation",
                         ("final_hypervolume", "heldout_mean_accuracy", "budgets_mean_accuracy"),
                         ["final HV", "held-out accuracy (random unseen)", "accuracy at Table 2's configurations"])


def _report_headroom_search(results: Path) -> str:
    return _search_table(results, "headroom-search", ("seen_mean_loss", "unseen_mean_loss", "final_hypervolume"),
                         ["loss at the budgets", "loss on unseen", "final HV"])


def _report_headroom_span(results: Path) -> str:
    rows = [[str(int(r["rank"])), r["set"], _num(r["avg_bits"], 2), *(f"{100 * (1 - r[k]):.1f} %" for k in
             ("shared", "best_core", "own_top_r", "own_top_4r")), _num(r["reach"], 2)]
            for r in _read_csv(results / "headroom-span.csv")]
    return _table(["rank", "set", "bits", "removed by shared B·A", "by the best core", "by its own top-r",
                   "by its own top-4r", "reach"], rows)


def _report_headroom_span_bank(results: Path) -> str:
    rows = [[str(int(r["rank"])), r["set"], _num(r["avg_bits"], 2), *(f"{100 * (1 - r[k]):.1f} %" for k in
             ("shared", "best_core", "shared_bank", "best_core_bank", "own_top_r")), _num(r["reach"], 2),
             _num(r["reach_bank"], 2)]
            for r in _read_csv(results / "headroom-span-bank.csv")]
    return _table(["rank", "set", "bits", "removed by shared B·A", "by the best core", "by B·A + bank",
                   "by the best core + bank", "by its own top-r", "reach", "reach with the bank"], rows)


def _report_causal_lm(results: Path) -> str:
    detail = _read_csv(results / "causal-lm-per-config.csv")
    agg = {r["method"]: r for r in _read_csv(results / "causal-lm.csv")}
    budgets = sorted({r["budget"] for r in detail})
    rows = []
    for method, mine in _by_method(detail).items():
        a = agg[method]
        ppl = [float(np.mean([r["perplexity"] for r in mine if r["budget"] == b])) for b in budgets]
        rows.append([method, str(len(budgets)) if method == "per-config" else "1",
                     " / ".join(_num(x, 1) for x in ppl), _num(a["mean_perplexity"], 1),
                     "1" if method == "per-config" else _num(a["ratio_to_per_config"], 2),
                     _num(a["train_seconds"], 0)])
    bits = " / ".join(f"{b:g}" for b in budgets)
    return _table(["method", "adapters", f"perplexity at {bits} bits", "mean perplexity",
                   "mean ratio to per-config", "training s"], rows)


def _report_baseline_seeds(results: Path) -> str:
    """Each method's mean accuracy per seed: coa and fp-lora from table2's runs, shared and per-config
    from ``baseline-seeds`` (the same runs where both exist)."""
    by = {(r["method"], int(r["seed"])): r["mean_accuracy"] for r in _read_csv(results / "baseline-seeds.csv")}
    if (results / "table2-seeds.csv").is_file():
        by = {(r["method"], int(r["seed"])): r["mean_accuracy"] for r in _read_csv(results / "table2-seeds.csv")} | by
    seeds = sorted({s for _, s in by})
    rows = []
    for method in _by_method([{"method": m} for m, _ in by]):
        vals = [by.get((method, s)) for s in seeds]
        have = [v for v in vals if v is not None]
        rows.append([method, *["" if v is None else _num(v, 4) for v in vals],
                     f"{_num((max(have) - min(have)) * 100, 2)} pt"])
    return _table(["method", *[f"mean accuracy, seed {s}" for s in seeds], "range across seeds"], rows)


def _report_provenance(results: Path) -> str:
    m = json.loads((results / "manifest.json").read_text())
    hours = sum(c["seconds"] for c in m["commands"]) / 3600
    return (f"Measured on {m['hardware']}, Python {m['python']}, at commit `{m['commit'][:10]}`"
            f"{' (uncommitted changes)' if m.get('dirty') else ''}: {len(m['commands'])} commands, "
            f"{hours:.1f} hours of command time in all (each command, its time and log: "
            f"`{results.relative_to(ROOT) if results.is_relative_to(ROOT) else results}/manifest.json`).")


def _report_headroom(results: Path, tables: str = "headroom") -> str:
    """Per method: mean test loss on the evaluated budgets and on the unseen configurations, the gap closed
    G on each (mean over seeds ± std across seeds), and the training seconds (of the pass ``tables``)."""
    summary = _read_csv(results / f"{tables}-summary.csv")
    secs = {r["method"]: r for r in _read_csv(results / f"{tables}-seconds.csv")}
    rows = []
    for method, mine in _by_method(summary).items():
        by_set = {r["set"]: r for r in mine}
        cells = []
        for set_name in ("seen", "unseen"):
            r = by_set.get(set_name)
            cells.append("" if r is None else _num(r["mean_loss"], 3))
            for key in ("gap_closed", "gap_closed_match"):
                if r is None or r.get(key) in (None, ""):  # shared and per-config have no G
                    cells.append("")
                    continue
                # "±" is the spread across seeds: with one seed there is none to show.
                std = r.get(f"{key}_std")
                one = r.get("seeds") in (None, 1.0) or std in (None, "")
                cells.append(f"{_num(r[key], 2)}{'' if one else f' ± {_num(std, 2)}'}")
        t = secs.get(method)
        line = (by_set.get("unseen") or {}).get("unseen_vs_seen_line_pct")
        rows.append([method, *cells, "" if line is None else f"{_num(line, 1)} %",
                     "" if t is None else _num(t["train_seconds"], 0)])
    return _table(["method", "loss at the budgets", "G at the budgets", "G_match at the budgets", "loss on unseen",
                   "G on unseen", "G_match on unseen", "unseen vs the seen line", "training s"], rows)


def _report_headroom_excluded(results: Path, tables: str = "headroom") -> str:
    """The evaluated configurations left out because a training set held them (``--exclude-trained``)."""
    rows = _read_csv(results / f"{tables}-excluded.csv")
    if not rows:
        return "No evaluated configuration is in any method's training set."
    return "Left out of every table because a training set held them (`--exclude-trained`): " + "; ".join(
        f"{r['config_id']} (trained on by {r['trained_on_by'].replace(' ', ', ')})" for r in rows) + "."


def _report_headroom_pairs(results: Path, tables: str = "headroom") -> str:
    """Each coa variant against the shared variant with its option, seed by seed."""
    rows = [[r["variant"], r["against"], str(int(r["seed"])), r["set"], _num(r["loss"], 3), _num(r["loss_against"], 3),
             _num(r["difference"], 3), f"{int(r['lower_on'])} of {int(r['configs'])}"]
            for r in _read_csv(results / f"{tables}-pairs.csv")]
    return _table(["variant", "against", "seed", "set", "loss", "loss (against)", "difference",
                   "lower on"], rows)


def _report_headroom_curves(results: Path, tables: str = "headroom") -> str:
    """Learning curves: per method and set, the mean loss after each step count (mean over seeds), with G
    where the method is neither baseline."""
    rows = _read_csv(results / f"{tables}-curves.csv")
    steps = sorted({int(r["step"]) for r in rows})
    out = []
    for method, mine in _by_method(rows).items():
        for set_name in ("seen", "unseen"):
            cells = []
            for k in steps:
                at = [r for r in mine if r["set"] == set_name and int(r["step"]) == k]
                loss = _num(float(np.mean([r["mean_loss"] for r in at])), 3) if at else ""
                gs = [r["gap_closed"] for r in at if r.get("gap_closed") is not None]
                cells.append(f"{loss} (G {_num(float(np.mean(gs)), 2)})" if gs else loss)
            if any(cells):
                out.append([method, set_name, *cells])
    return _table(["method", "set", *[f"step {k}" for k in steps]], out)


_TABLES = {"table2": (_report_table2, ("table2-seeds.csv", "table2.csv")),
           "table2-budgets": (_report_table2_budgets, ("table2-per-config.csv",)),
           "table2-options": (_report_table2_options, ("table2-options-seeds.csv", "table2-options.csv")),
           "seen-unseen": (_report_seen_unseen, ("seen-unseen-summary.csv",)),
           "search-ablation": (_report_search_ablation, ("search-ablation-seeds.csv", "search-ablation.csv")),
           "causal-lm": (_report_causal_lm, ("causal-lm-per-config.csv", "causal-lm.csv")),
           "baseline-seeds": (_report_baseline_seeds, ("baseline-seeds.csv",)),
           "headroom": (_report_headroom, ("headroom-summary.csv", "headroom-seconds.csv")),
           "headroom-pairs": (_report_headroom_pairs, ("headroom-pairs.csv",)),
           "headroom-curves": (_report_headroom_curves, ("headroom-curves.csv",)),
           "headroom-search": (_report_headroom_search, ("headroom-search-seeds.csv", "headroom-search.csv")),
           "headroom-span": (_report_headroom_span, ("headroom-span.csv",)),
           "headroom-span-bank": (_report_headroom_span_bank, ("headroom-span-bank.csv",)),
           "headroom-excluded": (_report_headroom_excluded, ("headroom-excluded.csv",)),
           # The full-size pass (headroom_full): the same tables from its own files.
           "headroom-full": (functools.partial(_report_headroom, tables="headroom-full"),
                             ("headroom-full-summary.csv", "headroom-full-seconds.csv")),
           "headroom-full-pairs": (functools.partial(_report_headroom_pairs, tables="headroom-full"),
                                   ("headroom-full-pairs.csv",)),
           "headroom-full-curves": (functools.partial(_report_headroom_curves, tables="headroom-full"),
                                    ("headroom-full-curves.csv",)),
           "headroom-full-excluded": (functools.partial(_report_headroom_excluded, tables="headroom-full"),
                                      ("headroom-full-excluded.csv",)),
           "provenance": (_report_provenance, ("manifest.json",))}


# The part that writes a table's files, where the placeholder is not named after it.
_PART_OF = {"table2-budgets": "table2", "headroom-pairs": "headroom", "headroom-excluded": "headroom",
            "headroom-curves": "headroom", "headroom-span-bank": "headroom-span", "provenance": "<any>",
            "headroom-full-pairs": "headroom-full", "headroom-full-curves": "headroom-full",
            "headroom-full-excluded": "headroom-full"}


def render_report(results: Path, out: Path) -> str:
    """The report of the result files under ``results``, to be written at ``out``.

    The prose comes from ``results/report-template.md`` (a short default without it; its ``<!-- -->``
    comments are dropped); each ``{{name}}`` placeholder there becomes a table rendered from the CSV files (see ``_TABLES``), and
    ``{{plot:name}}`` the image ``results/name.png``, linked relative to ``out``. A table whose files
    are missing says which ``--parts`` would make it.
    """
    template = results / TEMPLATE
    # The template's comments are notes to its editors, not part of the report.
    text = re.sub(r"<!--.*?-->\n?", "", template.read_text() if template.is_file() else _DEFAULT_TEMPLATE,
                  flags=re.S)

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name.startswith("plot:"):
            png = results / f"{name[5:]}.png"
            return f"![{name[5:]}]({os.path.relpath(png, out.parent)})" if png.is_file() else ""
        if name not in _TABLES:
            raise SystemExit(f"study: {template}: unknown placeholder {{{{{name}}}}}; known: {sorted(_TABLES)}")
        fn, files = _TABLES[name]
        if not all((results / f).is_file() for f in files):
            part = _PART_OF.get(name, name)
            return f"_Not run yet: `python benchmarks/study.py --parts {part}`._"
        return fn(results)

    return re.sub(r"\{\{([a-z0-9:-]+)\}\}", fill, text)


def write_report(results: Path, out: Path) -> None:
    """Render :func:`render_report` and write it to ``out`` (all at once: a temporary file renamed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render_report(results, out))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed and search.seed)")
    p.add_argument("--quick", action="store_true", help="a tiny version of every part, to check the pipeline")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every command")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the result files already there; run nothing")
    p.add_argument("--variants", default=None,
                   help=f"headroom, headroom-full and table2-options parts: the comma-separated variants to run "
                        f"(default all: {','.join(HEADROOM_VARIANTS)}); on the testbed shared and per-config always run, and the "
                        f"baselines a chosen variant is matched with; table2-options runs those of "
                        f"{','.join(TABLE2_OPTIONS)} named; headroom-search those of "
                        f"{','.join(HEADROOM_SEARCH_METHODS)} named (earlier calls' rows stay in its tables)")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="headroom parts: run up to N of a seed's trainings (then its evaluations) at once; each "
                        "uses one core, so 2 on a 2-core machine halves the wall time (default 1)")
    p.add_argument("--exclude-trained", action="store_true",
                   help="headroom parts: score without the evaluated configurations that a shared or coa training "
                        "set holds (listed in headroom-excluded.csv and the report) instead of stopping")
    args = p.parse_args(argv)
    results = results_dir(args.quick)
    if args.report_only:
        write_report(results, report_path(args.quick))
        return 0
    parts = args.parts.split(",")
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = None if args.variants is None else args.variants.split(",")
    wrong = [v for v in variants or [] if v not in HEADROOM_VARIANTS and v not in HEADROOM_SEARCH_METHODS]
    if wrong:
        p.error(f"unknown variant(s) {wrong}; choose from {list(HEADROOM_VARIANTS)} (headroom-search: "
                f"{list(HEADROOM_SEARCH_METHODS)})")
    st = Study(args.quick, args.set, variants)
    st.exclude_trained = args.exclude_trained
    if args.jobs < 1:
        p.error(f"--jobs must be 1 or more, not {args.jobs}")
    st.jobs = args.jobs
    fns = {"table2": table2, "table2-options": table2_options, "seen-unseen": seen_unseen, "search-ablation": search_ablation, "causal-lm": causal_lm,
           "baseline-seeds": baseline_seeds, "headroom": headroom, "headroom-full": headroom_full,
           "headroom-search": headroom_search,
           "headroom-span": headroom_span}
    for part in parts:
        t0 = time.perf_counter()
        print(f"== {part} (seeds {seeds})", flush=True)
        result = fns[part](st, seeds)
        # Wall time of this call only (a resumed call reuses finished commands); each command's own
        # time is in manifest["commands"].
        st.manifest.setdefault("parts", {})[part] = {"seeds": seeds,
                                                     "last_call_seconds": round(time.perf_counter() - t0, 1)}
        st.save_manifest()
        for name, table in result.items():
            print(f"-- {name}")
            for row in table:
                print("   " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    write_report(results, report_path(args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
