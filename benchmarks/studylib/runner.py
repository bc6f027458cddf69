"""Running the study's commands: :class:`Study` calls the product's own CLIs (``coalora train``/``evaluate``,
``orchestration/run.py``), skips what is already done, logs every command and keeps the manifest."""

from __future__ import annotations

import csv
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
from pathlib import Path
from typing import Any, Callable, Sequence

from .common import completed_rounds, fmt
from .settings import QUICK, QUICK_LM, ROOT, results_dir


class _NotStarted(Exception):
    """A call of :meth:`Study.run_all` skipped because another had failed."""


class Study:
    """Runs commands (skipping finished ones), keeps their logs and the manifest."""

    def __init__(self, quick: bool, overrides: list[str], variants: list[str] | None = None,
                 root: Path = ROOT) -> None:
        """``root`` holds the runs (``runs/study*/``) and results (``benchmarks/results/study*/``): the
        repository, or a test's temporary directory. Commands always run in the repository."""
        self.quick = quick
        self.root = root
        self.overrides = overrides
        self.variants = variants  # the headroom part's coa/shared variants to run (None: all)
        # Commands run at once where a part has independent ones (--jobs): each is one process with one
        # thread (OMP_NUM_THREADS=1), so one job leaves all but one core idle.
        self.jobs = 1
        self._manifest_lock = threading.Lock()
        self.exclude_trained = False  # headroom: drop evaluated configurations a training set holds, not stop
        self.excluded: dict[str, list[str]] = {}  # config id -> the variants that trained on it
        self.runs = root / "runs" / ("study-quick" if quick else "study")
        self.results = results_dir(quick, root)
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
            self.manifest["commands"].append({"command": shown.replace(str(self.root) + "/", ""),
                                              "seconds": round(seconds, 1),
                                              "log": str((self.logs / log).relative_to(self.root))})
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
        shown = lines[0][2:].replace(str(self.root) + "/", "")
        if any(c["command"] == shown for c in self.manifest["commands"]):
            return
        self.manifest["commands"].append({"command": shown, "seconds": float(last.group(1)),
                                          "log": str(path.relative_to(self.root))})
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
        done = completed_rounds(run_dir)
        if done >= rounds:
            self.reuse(f"run-{name}.log")
            return run_dir
        cmd = [sys.executable, "orchestration/run.py"]
        cmd += ["--resume", str(run_dir)] if done > 0 else ["--config", config, *args, "--overwrite"]
        self.sh(cmd, f"run-{name}.log", echo=True)
        return run_dir

    def trained(self, name: str, config: str, method: str, sets: list[str], lm: bool = False,
                extra: Sequence[str] = ()) -> Path:
        """``coalora train --method M [extra]`` into ``runs/<study>/<name>`` (skipped when it is there)."""
        out = self.runs / name
        if (out / "meta.json").is_file() or (out / "per_config.json").is_file():
            self.reuse(f"train-{name}.log")
            return out
        self.coalora("train", "--config", config, "--method", method, *extra, "--out", str(out), "--overwrite",
                     "--json", *self.sets(sets, lm), log=f"train-{name}.log", echo=True)
        return out

    def write_csv(self, name: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(self.results / name, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows({k: fmt(v) for k, v in r.items()} for r in rows)
        print(f"wrote {self.results / name}")


# ---------------------------------------------------------------------- helpers
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
