"""Shared plumbing for benchmark scripts: argument parsing, timing medians, table/JSON output.

Every benchmark prints one table of medians and ratios measured side by side in one run. ``--quick``
runs a smaller version with the same table shape (under a minute); ``--json`` prints the same figures
as JSON instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small version, same table shape (< 1 minute)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p


def setup_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median times of several functions measured round-robin, so drift hits them all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-markdown table (pastes straight into the README)."""
    if not rows:
        return "(no rows)"
    cols = list(columns or dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells]
    return "\n".join(out)


def emit(title: str, rows: Sequence[dict[str, Any]], as_json: bool, meta: dict[str, Any] | None = None) -> None:
    """Print the result table (or JSON) with the machine and the exact command that made it."""
    info = {
        "command": "python " + " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **(meta or {}),
    }
    if as_json:
        print(json.dumps({"title": title, "meta": info, "rows": list(rows)}, indent=2, default=str))
        return
    print(f"## {title}\n")
    print(format_table(rows))
    print("\n" + "  ".join(f"{k}={v}" for k, v in info.items()))


# ---------------------------------------------------------------------- additions: devices and memory
def write_json(path: str, title: str, rows: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None) -> None:
    """Write the figures that :func:`emit` prints with ``--json`` to ``path`` (rewritten whole each call,
    so a run cut short still leaves the rows it finished; all-or-nothing, so never half a file)."""
    from coalora.io import atomic_write_text

    info = {
        "command": "python " + " ".join(sys.argv),
        "cpu_count": os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        **(meta or {}),
    }
    atomic_write_text(path, json.dumps({"title": title, "meta": info, "rows": list(rows)}, indent=2, default=str))


def synced(fn: Callable[[], Any], device: Any) -> Callable[[], Any]:
    """``fn`` followed by a device synchronisation on CUDA, so that wall time covers the kernels it
    queued (CUDA calls return before their kernels finish); ``fn`` itself on other devices."""
    import torch

    dev = torch.device(device)
    if dev.type != "cuda":
        return fn

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize(dev)
        return out

    return run


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory that a call adds on top of what was allocated just before it (bytes).

    - CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
      ``memory_allocated`` before (tensor bytes; the caching allocator's reserve is not counted).
    - CPU (Linux): the process's peak resident set (``VmHWM`` in ``/proc/self/status``, reset by
      writing ``5`` to ``/proc/self/clear_refs``) minus its resident set before the call, after
      ``malloc_trim(0)``, which hands the heap's free pages back so that memory freed by an earlier
      call counts again when this one reuses it. Page-granular and includes allocator slack, so it
      reads a little above the tensor bytes.
    - Elsewhere: unavailable (:attr:`method` says why; :meth:`measure` returns None).
    """

    def __init__(self, device: Any) -> None:
        import torch

        self.device = torch.device(device)
        self._trim: Callable[[], Any] | None = None
        if self.device.type == "cuda":
            self.method = "cuda max_memory_allocated - memory_allocated before (tensor bytes)"
            return
        if self.device.type != "cpu":
            self.method = f"unavailable on {self.device.type}"
            return
        if _proc_status_kib("VmHWM") is None or not os.access("/proc/self/clear_refs", os.W_OK):
            self.method = "unavailable (no /proc/self/status VmHWM or clear_refs)"
            return
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            self._trim = lambda: libc.malloc_trim(0)
            trim = "after malloc_trim"
        except (OSError, AttributeError):
            trim = "no malloc_trim (not glibc): freed heap memory may be reused unseen"
        self.method = f"cpu peak RSS: VmHWM (reset via clear_refs) - VmRSS before, {trim}"

    @property
    def available(self) -> bool:
        return not self.method.startswith("unavailable")

    def measure(self, fn: Callable[[], Any]) -> int | None:
        """Run ``fn()`` once and return the extra peak bytes it needed (None if unavailable)."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            fn()
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - before)
        if not self.available:
            fn()
            return None
        if self._trim is not None:
            self._trim()
        before = _proc_status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        fn()
        peak = _proc_status_kib("VmHWM")
        if before is None or peak is None:
            return None
        return max(0, peak - before) * 1024


def tensor_bytes(tensors: Any) -> int:
    """Bytes of an iterable of tensors (nested dicts/lists allowed; storages counted once)."""
    import torch

    seen: set[int] = set()
    total = 0

    def walk(x: Any) -> None:
        nonlocal total
        if isinstance(x, torch.Tensor):
            if x.device.type == "meta":
                return
            key = x.untyped_storage().data_ptr()
            if key not in seen:
                seen.add(key)
                total += x.untyped_storage().nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(list(tensors) if not isinstance(tensors, (dict, list, tuple)) else tensors)
    return total
