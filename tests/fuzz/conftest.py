"""The fuzz suite's harness: in-process calls with the exit contract, tree hashes, mutation strategies.

Every case calls a command's ``main`` in this process (a subprocess costs seconds of imports) and
holds it to the contract of bad input: exit status 0 or 2, on 2 exactly one stderr line
``<prog>: error: ...``, no traceback (an exception escaping ``main`` fails the case with its
traceback), and nothing outside the case's output directory created, changed or deleted.

Cases are counted per test; the count is printed in pytest's terminal summary (the closing note of
issue 13 quotes it).
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]

# Reproducible in CI: the same examples every run, no example database between runs, no deadline
# (the first case of a module pays for imports and model loads). No shrinking by default: a failing
# case is reported as found, with its inputs (shrinking one can take minutes of make test); the
# minimal inputs of the failures found so far are the regression tests of each module. When hunting:
# FUZZ_SHRINK=1 shrinks failures, FUZZ_RANDOM=1 draws new examples each run, FUZZ_SCALE=k runs k times
# as many (see examples()), FUZZ_COLLECT (below) lists every failure instead of stopping at the first.
_PHASES = list(Phase) if os.environ.get("FUZZ_SHRINK") else [Phase.explicit, Phase.generate]
FUZZ = settings(derandomize=not os.environ.get("FUZZ_RANDOM"), database=None, deadline=None, print_blob=True,
                phases=_PHASES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                       HealthCheck.filter_too_much])

CASES: Counter[str] = Counter()


def examples(n: int) -> int:
    """``n`` examples, times ``FUZZ_SCALE`` when set."""
    return max(1, int(n * float(os.environ.get("FUZZ_SCALE", "1"))))


# ----------------------------------------------------------------------------------- the contract
# Hunting mode: FUZZ_COLLECT=file.jsonl records each failing case (its command, inputs and traceback)
# and goes on, so that one pass lists every distinct failure instead of stopping at the first.
_COLLECT = os.environ.get("FUZZ_COLLECT")
INPUTS: dict[str, str] = {}  # what the current case fed in (file name → a short repr), for the record


@dataclass
class Outcome:
    rc: int
    out: str
    err: str


def call(main: Callable[[Sequence[str]], int], argv: Sequence[str], prog: str, case: str) -> Outcome:
    """Run ``main(argv)`` in this process and check the exit contract; count the case under ``case``.

    An exception other than ``SystemExit`` propagates: it is a bug, and its traceback is the report.
    """
    CASES[case] += 1
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with _collecting(f"{prog} {list(argv)}"):
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(list(argv))
            except SystemExit as e:  # argparse's own errors
                rc = e.code if isinstance(e.code, int) else 1
            except Exception as e:  # a bug: its traceback, with what the case fed in
                e.add_note(f"fuzz case: {prog} {list(argv)}\ninputs: {INPUTS}")
                raise
        res = Outcome(int(rc), out.getvalue(), err.getvalue())
        if _COLLECT:  # every outcome, to see how deep the cases get
            with open(_COLLECT + ".all", "a") as fh:
                fh.write(f"{case}\t{res.rc}\t{time.perf_counter() - start:.2f}\t{res.err.strip()[:160]!r}\t{INPUTS}\n")
        assert res.rc in (0, 2), f"{prog} {argv}: exit {res.rc}\nstdout: {res.out[-2000:]}\nstderr: {res.err[-2000:]}" \
            f"\ninputs: {INPUTS}"
        assert "Traceback" not in res.err, f"{prog} {argv}: traceback on stderr\n{res.err[-4000:]}\ninputs: {INPUTS}"
        if res.rc == 2:
            lines = [line for line in res.err.split("\n") if line.strip()]  # "\n" ends a line on any terminal
            assert len(lines) == 1 and lines[0].startswith(f"{prog}") and ": error: " in lines[0], \
                f"{prog} {argv}: exit 2 with {len(lines)} stderr lines, not one error line:\n{res.err[-2000:]}" \
                f"\ninputs: {INPUTS}"
        return res
    return Outcome(-1, out.getvalue(), err.getvalue())  # collecting (FUZZ_COLLECT): recorded, not raised


@contextlib.contextmanager
def _collecting(what: str) -> Iterator[None]:
    if not _COLLECT:
        yield
        return
    try:
        yield
    except Exception as e:  # noqa: BLE001 (recorded for the hunt)
        import json
        import traceback

        tb = traceback.extract_tb(e.__traceback__)
        own = [f for f in tb if f.filename.startswith(str(REPO)) and "/tests/" not in f.filename
               and "/.venv/" not in f.filename]
        where = own[-1] if own else tb[-1]
        if isinstance(e, AssertionError):
            import re

            head, _, body = str(e).partition("\n")
            head = head[head.rfind("]: ") + 3:] if "]: " in head else head
            body = re.sub(r"/tmp/\S+", "<tmp>", body.split("\n")[0])
            key = f"contract: {head} | {body[:70]}"
        else:
            key = f"{type(e).__name__} at {os.path.relpath(where.filename, REPO)}:{where.lineno}"
        with open(_COLLECT, "a") as fh:
            fh.write(json.dumps({"key": key, "what": what, "inputs": dict(INPUTS),
                                 "error": "".join(traceback.format_exception(e))[-3000:]}) + "\n")


def tree_state(root: Path, exclude: Sequence[Path] = ()) -> dict[str, str]:
    """Every entry under ``root`` (except ``exclude``): relative path → content hash, ``dir`` or link target."""
    state: dict[str, str] = {}
    skip = {os.path.abspath(p) for p in exclude}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) not in skip]
        rel = os.path.relpath(dirpath, root)
        state[rel] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.abspath(p) in skip:
                continue
            if os.path.islink(p):
                state[os.path.join(rel, f)] = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as fh:
                    state[os.path.join(rel, f)] = hashlib.sha256(fh.read()).hexdigest()
    return state


def _diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return ([f"created {p}" for p in sorted(set(after) - set(before))]
            + [f"deleted {p}" for p in sorted(set(before) - set(after))]
            + [f"changed {p}" for p in sorted(set(before) & set(after)) if before[p] != after[p]])


@contextlib.contextmanager
def untouched(roots: Sequence[Path], exclude: Sequence[Path] = ()) -> Iterator[None]:
    """Fail if anything under ``roots`` (other than ``exclude``), or the repository's top level, changes."""
    before = [tree_state(r, exclude) for r in roots]
    top = sorted(os.listdir(REPO))
    yield
    with _collecting(f"untouched {list(map(str, roots))}"):
        for r, b in zip(roots, before):
            changes = _diff(b, tree_state(r, exclude))
            assert not changes, f"outside the output directory:\nchanged under {r}: {changes[:10]}"
        assert sorted(os.listdir(REPO)) == top, f"outside the output directory:\ncreated or deleted in {REPO}: " \
            f"{sorted(set(os.listdir(REPO)) ^ set(top))}"


def case_dir(base: Path) -> Path:
    """A fresh directory for one example (hypothesis reuses a test's fixtures across examples)."""
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=base))


# ----------------------------------------------------------------------------------- strategies
# Numbers where a value stops being sane: zero, negatives, the edges of int32/int64, far beyond.
EDGE_INTS = [0, -1, 1, 2, 2**31 - 1, 2**31, 2**63, -(2**63), 10**30]
EDGE_STRINGS = ["", " ", "tiny-bert", "nf", "int", "coa", "full", "bits-only", "1e-3", "null", "..", "/", ".",
                "~", "/dev/null", "/tmp", "s3://", "s3://b/x?endpoint_override=", "a" * 300, "x.csv",
                "\u00e9\u4e2d", "ray.evaluators", "--overwrite"]


def scalars(safe: bool) -> st.SearchStrategy[Any]:
    """Scalar values; ``safe`` keeps numbers small, for cases that build models or train (a rank of
    10⁶ would allocate gigabytes before any check could refuse it)."""
    ints = st.integers(-3, 64) if safe else st.one_of(st.integers(-10**4, 10**4), st.sampled_from(EDGE_INTS))
    floats = (st.one_of(st.floats(-10, 10), st.sampled_from([float("nan"), float("inf"), float("-inf")]))
              if safe else st.floats(allow_nan=True, allow_infinity=True))
    return st.one_of(st.none(), st.booleans(), ints, floats, st.text(max_size=12), st.sampled_from(EDGE_STRINGS))


def values(safe: bool = False) -> st.SearchStrategy[Any]:
    """JSON/YAML-like values: scalars, and small lists and mappings of them."""
    return st.recursive(scalars(safe), lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                               st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                        max_leaves=6)


def _pick_path(draw: Callable[..., Any], tree: Any) -> tuple:
    """A path to some node of ``tree`` (a walk down from the root: cheap on large tables)."""
    path: tuple = ()
    node = tree
    while isinstance(node, (dict, list)) and node:
        key = draw(st.sampled_from(list(node.keys()) if isinstance(node, dict) else range(len(node))))
        path += (key,)
        node = node[key]
        if draw(st.booleans()):  # stop here (an inner node) rather than go on down
            break
    return path


def _parent(tree: Any, path: tuple) -> Any:
    for k in path[:-1]:
        tree = tree[k]
    return tree


def typed_like(draw: Callable[..., Any], like: Any, safe: bool) -> Any:
    """A value of ``like``'s type (the mutations that get past type checks to the range checks behind)."""
    if isinstance(like, bool) or like is None:
        return draw(scalars(safe))
    if isinstance(like, int):
        return draw(st.integers(-3, 64) if safe else st.one_of(st.integers(-10**4, 10**4), st.sampled_from(EDGE_INTS)))
    if isinstance(like, float):
        return draw(st.one_of(st.floats(-10, 10) if safe else st.floats(), st.sampled_from(
            [0.0, -0.0, 1e-300, float("nan"), float("inf"), float("-inf")])))
    if isinstance(like, str):
        return draw(st.one_of(st.text(max_size=12), st.sampled_from(EDGE_STRINGS)))
    if isinstance(like, list):
        item = like[0] if like else 0
        return [typed_like(draw, item, safe) for _ in range(draw(st.integers(0, 4)))]
    return draw(values(safe))


# Weighted towards values of the right type at real keys: those get past the type checks.
TREE_OPS = ("typed",) * 4 + ("set",) * 3 + ("delete", "replace", "rename", "duplicate", "root")


def mutate_tree(draw: Callable[..., Any], tree: Any, safe: bool, known: dict[tuple, Any] | None = None,
                max_ops: int = 3, ops: Sequence[str] = TREE_OPS) -> Any:
    """``tree`` after 1..``max_ops`` structural mutations (drawn from ``ops``): replace a node by a value
    of its own type (typed) or by any value (replace), delete, rename or duplicate a node, set a known key
    (``known``: path → a value of the right type, e.g. every field of the schema with its default), or
    replace the whole document (root)."""
    tree = copy.deepcopy(tree)
    known = known or {}
    for _ in range(draw(st.integers(1, max_ops))):
        path = _pick_path(draw, tree)
        op = draw(st.sampled_from(list(ops)))
        if op == "root" or (not path and op != "set"):
            tree = draw(values(safe))
            continue
        if op == "set":
            if not known or not isinstance(tree, dict):
                continue
            path = draw(st.sampled_from(sorted(known, key=repr)))
            node = tree
            for k in path[:-1]:
                nxt = node.setdefault(k, {})
                if not isinstance(nxt, dict):
                    break
                node = nxt
            else:
                node[path[-1]] = typed_like(draw, known[path], safe) if draw(st.integers(0, 3)) else draw(values(safe))
            continue
        parent, last = _parent(tree, path), path[-1]
        if op == "typed":
            parent[last] = typed_like(draw, parent[last], safe)
        elif op == "replace":
            parent[last] = draw(values(safe))
        elif op == "delete":
            del parent[last]
        elif op == "duplicate":
            if isinstance(parent, list):
                parent.insert(last, copy.deepcopy(parent[last]))
            else:
                parent[str(last) + draw(st.sampled_from(["", "_", " ", "2"]))] = copy.deepcopy(parent[last])
        elif op == "rename" and isinstance(parent, dict):
            others = [k for k in parent if isinstance(k, str)] + [p[-1] for p in known if isinstance(p[-1], str)]
            new = draw(st.one_of(st.text(max_size=8), st.sampled_from(others)))
            parent[new] = parent.pop(last)
    return tree


# model.num_labels sizes the classifier head (and its config lists every label). 2**31 - 1 once exhausted
# this machine's memory before anything refused it; the configuration now bounds it (coalora.pipeline.config.
# MAX_NUM_LABELS, tested in tests/coalora/test_config.py). The fuzz stays below a smaller bound so that
# no case spends seconds building a head of 10^5 labels.
MAX_NUM_LABELS = 10**4


def bounded(tree: Any) -> Any:
    """``tree`` with an integer ``model.num_labels`` (experiment YAML, or a checkpoint's ``experiment``)
    capped at :data:`MAX_NUM_LABELS`."""
    for holder in (tree, tree.get("experiment") if isinstance(tree, dict) else None):
        model = holder.get("model") if isinstance(holder, dict) else None
        if isinstance(model, dict) and isinstance(model.get("num_labels"), int) \
                and model["num_labels"] > MAX_NUM_LABELS:
            model["num_labels"] = MAX_NUM_LABELS
    return tree


def mutate_bytes(draw: Callable[..., Any], blob: bytes, unchanged: bool = True) -> bytes:
    """``blob`` unchanged (if ``unchanged``), truncated, with random bytes inserted or overwritten, or made
    non-UTF-8."""
    ops = ["truncate", "insert", "overwrite", "flip", "latin1", "bom", "empty"]
    op = draw(st.sampled_from(["none"] * 6 + ops if unchanged else ops))
    if op == "none" or not blob:
        return blob
    i = draw(st.integers(0, len(blob) - 1))
    if op == "truncate":
        return blob[:max(i, 1)]
    if op == "insert":
        return blob[:i] + draw(st.binary(min_size=1, max_size=8)) + blob[i:]
    if op == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=8))
        return blob[:i] + junk + blob[i + len(junk):]
    if op == "flip":
        return blob[:i] + bytes([blob[i] ^ (1 << draw(st.integers(0, 7)))]) + blob[i + 1:]
    if op == "latin1":
        return blob[:i] + "\u00e9\u00ff".encode("latin-1") + blob[i:]
    if op == "bom":
        return b"\xef\xbb\xbf" + blob
    return b""


# ----------------------------------------------------------------------------------- shared inputs
POS = "great wonderful superb moving brilliant fun".split()
NEG = "awful boring dull terrible weak bad".split()


def write_reviews(path: Path, rows: int = 240) -> None:
    rnd = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(rows):
            y = rnd.randint(0, 1)
            words = rnd.choices(POS if y else NEG, k=3) + rnd.choices(POS + NEG, k=2)
            rnd.shuffle(words)
            w.writerow([" ".join(words), y])


def tiny_yaml(data_file: Path, steps: int = 12) -> str:
    """The tiny experiment of tests/coalora/test_cli.py: tiny-bert on a 240-row CSV."""
    return (f"model: {{name: tiny-bert}}\n"
            f"data: {{name: {data_file}, max_length: 12, batch_size: 16, eval_batch_size: 32}}\n"
            "space: {preset: full}\n"
            "lora: {rank: 4, alpha: 8}\n"
            f"train: {{steps: {steps}, lr: 0.005, warmup_steps: 0, init_budgets: [2.5, 3.0, 4.0]}}\n"
            "eval: {budgets: [3.0, 4.0], random: 2, random_bits: [2.5, 3.5]}\n")


@dataclass
class TinyWork:
    """Read-only inputs shared by the fuzz modules: the CSV, the tiny YAML and one trained checkpoint."""

    root: Path
    data: Path
    yaml: Path
    checkpoint: Path


@pytest.fixture(scope="session")
def tiny_work(tmp_path_factory: pytest.TempPathFactory) -> TinyWork:
    from coalora.cli import main

    d = tmp_path_factory.mktemp("fuzz-inputs")
    write_reviews(d / "reviews.csv")
    (d / "tiny.yaml").write_text(tiny_yaml(d / "reviews.csv", steps=4))
    assert main(["train", "--config", str(d / "tiny.yaml"), "--out", str(d / "coa"), "--quiet"]) == 0
    return TinyWork(d, d / "reviews.csv", d / "tiny.yaml", d / "coa")


@pytest.fixture(scope="session")
def fuzz_run_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run directory: the session's ``reference`` smoke run (tests/conftest.py), shared with
    the orchestration tests. ``FUZZ_RUN_DIR`` names an existing run directory to use instead (quicker
    when hunting)."""
    if os.environ.get("FUZZ_RUN_DIR"):
        return Path(os.environ["FUZZ_RUN_DIR"])
    return Path(request.getfixturevalue("reference")[0])
