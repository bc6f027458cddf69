"""Fuzz: mutated configuration JSON files and mutated checkpoints fed to ``coalora evaluate`` and ``adapt``.

Each case ends with exit 0 or 2 (one ``coalora: error:`` line), no traceback, and nothing changed
outside its output directory: not the checkpoint, not the configuration file (see conftest.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coalora.cli import main as cli_main
from coalora.core.space import QuantSpace
from tests.fuzz.conftest import (
    FUZZ,
    INPUTS,
    TinyWork,
    call,
    case_dir,
    examples,
    mutate_bytes,
    mutate_tree,
    untouched,
    values,
)


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cli")


@pytest.fixture(scope="module")
def space(tiny_work: TinyWork) -> QuantSpace:
    from coalora.pipeline.methods import load_adapted

    return load_adapted(tiny_work.checkpoint)[0].space


def _config(space: QuantSpace, seed: int) -> dict[str, Any]:
    return space.to_json(space.sample(np.random.default_rng(seed), 1)[0])


def _known(config: dict[str, Any]) -> dict[tuple, Any]:
    return {(m, k): v for m, knobs in config.items() for k, v in knobs.items()}


def _command(draw, checkpoint: Path, config: Path, out: Path) -> list[str]:  # noqa: ANN001
    if draw(st.booleans()):
        return ["evaluate", "--checkpoint", str(checkpoint), "--config", str(config), "--json", "--max-batches", "1",
                "--quiet"]
    return ["adapt", "--checkpoint", str(checkpoint), "--config", str(config), "--out", str(out)]


@settings(FUZZ, max_examples=examples(120))
@given(data=st.data())
def test_mutated_configuration_json(tiny_work: TinyWork, space: QuantSpace, cases: Path, data: st.DataObject) -> None:
    base = _config(space, data.draw(st.integers(0, 3)))
    tree = mutate_tree(data.draw, base, safe=False, known=_known(base))
    shape = data.draw(st.sampled_from(["one", "list", "trainset"]))
    if shape == "list":  # several configurations (evaluate takes a list; adapt refuses one)
        tree = [tree, base]
    elif shape == "trainset":  # a run's trainset/round_<k>.json
        tree = {"trainset": [tree], "candidates": []}
    blob = mutate_bytes(data.draw, json.dumps(tree).encode())
    d = case_dir(cases)
    config, out = d / "config.json", d / "out"
    config.write_bytes(blob)
    argv = _command(data.draw, tiny_work.checkpoint, config, out)
    INPUTS.clear()
    INPUTS["config.json"] = repr(blob[:2000])
    with untouched([d, tiny_work.root], exclude=[out]):
        call(cli_main, argv, "coalora", f"coalora {argv[0]}: mutated configuration JSON")


CHECKPOINT_FILES = ["meta.json", "trainable.safetensors", "optimizer.safetensors", "optimizer.json"]


def _mutate_checkpoint(draw, ckpt: Path) -> list[str]:  # noqa: ANN001
    """1-2 mutations of a copied checkpoint; returns what was done (for the record)."""
    done = []
    for _ in range(draw(st.integers(1, 2))):
        op = draw(st.sampled_from(["meta", "bytes", "meta", "bytes", "delete", "junk", "per-config", "dir"]))
        name = draw(st.sampled_from(CHECKPOINT_FILES))
        path = ckpt / name
        if op == "meta" and (ckpt / "meta.json").is_file():
            try:
                meta = json.loads((ckpt / "meta.json").read_text())
            except ValueError:
                continue
            # Small numbers only: the stored experiment is built (a rank of 10⁶ would allocate gigabytes).
            (ckpt / "meta.json").write_text(json.dumps(mutate_tree(draw, meta, safe=True)))
            done.append(f"meta.json: {(ckpt / 'meta.json').read_text()[:3000]}")
        elif op == "bytes" and path.is_file():
            path.write_bytes(mutate_bytes(draw, path.read_bytes(), unchanged=False))
            done.append(f"bytes of {name}: {path.stat().st_size} bytes now")
        elif op == "delete" and path.is_file():
            path.unlink()
            done.append(f"deleted {name}")
        elif op == "dir" and path.is_file():
            path.unlink()
            path.mkdir()
            done.append(f"{name} is a directory")
        elif op == "junk":
            (ckpt / draw(st.sampled_from(["junk.bin", ".hidden", "meta.json.bak"]))).write_bytes(draw(st.binary()))
            done.append("junk file")
        elif op == "per-config":  # an index that makes the directory look like a per-config one
            blob = json.dumps(draw(values())).encode()
            (ckpt / "per_config.json").write_bytes(blob)
            done.append(f"per_config.json: {blob[:300]!r}")
    return done


@settings(FUZZ, max_examples=examples(120))
@given(data=st.data())
def test_mutated_checkpoint(tiny_work: TinyWork, space: QuantSpace, cases: Path, data: st.DataObject) -> None:
    d = case_dir(cases)
    ckpt, out, config = d / "ckpt", d / "out", d / "config.json"
    shutil.copytree(tiny_work.checkpoint, ckpt)
    config.write_text(json.dumps(_config(space, 0)))
    INPUTS.clear()
    INPUTS["mutations"] = repr(_mutate_checkpoint(data.draw, ckpt))
    how = data.draw(st.sampled_from(["config", "trainset", "random", "budget"]))
    if how == "config":
        argv = _command(data.draw, ckpt, config, out)
    elif how == "trainset":  # evaluate the configurations the checkpoint was trained on (meta.json)
        argv = ["evaluate", "--checkpoint", str(ckpt), "--json", "--max-batches", "1", "--quiet"]
    elif how == "random":
        argv = ["evaluate", "--checkpoint", str(ckpt), "--random", "1", "--json", "--max-batches", "1", "--quiet"]
    else:
        argv = ["adapt", "--checkpoint", str(ckpt), "--budget", "3.0", "--out", str(out)]
    INPUTS["argv"] = repr(argv)
    with untouched([d, tiny_work.root], exclude=[out]):
        call(cli_main, argv, "coalora", f"coalora {argv[0]}: mutated checkpoint")


def _meta_edit(edit):  # noqa: ANN001, ANN202
    def apply(ckpt: Path) -> None:
        meta = json.loads((ckpt / "meta.json").read_text())
        edit(meta)
        (ckpt / "meta.json").write_text(json.dumps(meta))
    return apply


# Failures the fuzz found, as fixed checkpoint edits (each one a bug until the exit contract holds).
CHECKPOINT_REGRESSIONS = {
    # KeyError 'family' in QuantSpace.from_signature (load_adapted → check_same).
    "meta.json space without family": _meta_edit(lambda m: m["space"].pop("family")),
    # AttributeError: 'int' object has no attribute 'get' (checkpoint._check_checksum).
    "meta.json checksums is a number": _meta_edit(lambda m: m.update(checksums=1)),
    "meta.json space is a list": _meta_edit(lambda m: m.update(space=[])),
    "meta.json space matrices are numbers": _meta_edit(lambda m: m["space"].update(matrices=[1, 2])),
    "meta.json experiment is null": _meta_edit(lambda m: m.update(experiment=None)),
    "meta.json trainset is a mapping": _meta_edit(lambda m: m.update(trainset={"a": 1})),
}


@pytest.mark.parametrize("command", ["evaluate", "adapt"])
@pytest.mark.parametrize("name", sorted(CHECKPOINT_REGRESSIONS))
def test_checkpoint_regressions(tiny_work: TinyWork, cases: Path, name: str, command: str) -> None:
    INPUTS.clear()
    INPUTS["regression"] = name
    d = case_dir(cases)
    ckpt, out = d / "ckpt", d / "out"
    shutil.copytree(tiny_work.checkpoint, ckpt)
    CHECKPOINT_REGRESSIONS[name](ckpt)
    argv = (["evaluate", "--checkpoint", str(ckpt), "--json", "--max-batches", "1", "--quiet"] if command == "evaluate"
            else ["adapt", "--checkpoint", str(ckpt), "--budget", "3.0", "--out", str(out)])
    with untouched([d, tiny_work.root], exclude=[out]):
        res = call(cli_main, argv, "coalora", "regressions: checkpoint")
    assert res.rc == 2
