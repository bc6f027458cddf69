"""Fuzz: mutated experiment YAML files and ``--set`` overrides fed to ``run.py --check`` and ``coalora train``.

Each case ends with exit 0 or 2 (one ``error:`` line), no traceback, and nothing changed outside
its output directory (see conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from coalora.cli import main as cli_main
from coalora.core.space import DEFAULT_OPTIONS, KNOBS
from coalora.pipeline.config import ExperimentConfig
from orchestration.run import main as run_main
from tests.fuzz.conftest import (
    FUZZ,
    INPUTS,
    REPO,
    TinyWork,
    bounded,
    call,
    case_dir,
    examples,
    mutate_bytes,
    mutate_tree,
    typed_like,
    untouched,
    values,
)

SMOKE = REPO / "configs" / "smoke.yaml"


def _schema() -> dict[tuple[str, ...], object]:
    """Every key of the experiment schema (``section.field`` → its default) and every knob's option list."""
    known: dict[tuple[str, ...], object] = {}
    for section, fields in ExperimentConfig().to_dict().items():
        for name, default in fields.items():
            known[(section, name)] = default
    known.update({("space", "options", k): list(DEFAULT_OPTIONS[k]) for k in KNOBS})
    # Defaults of None say nothing about the type: these take numbers or lists of them.
    known.update({("model", "cache_gib"): 1.0, ("data", "max_train"): 1, ("data", "max_eval"): 1,
                  ("data", "max_rows"): 1, ("eval", "max_batches"): 1, ("search", "bits_range"): [2.5, 4.0],
                  ("search", "loss_range"): [0.1, 1.0], ("run", "steps_per_round"): 1, ("ray", "local_cpus"): 1,
                  ("model", "targets"): ["query"], ("data", "data_files"): ["x.csv"]})
    return known


SCHEMA = _schema()


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


def _base(tiny: TinyWork, which: str) -> dict:
    return yaml.safe_load((SMOKE if which == "smoke" else tiny.yaml).read_text())


def _mutated_yaml(draw, tiny: TinyWork) -> bytes:  # noqa: ANN001
    which = draw(st.sampled_from(["smoke", "tiny"]))
    tree = bounded(mutate_tree(draw, _base(tiny, which), safe=False, known=SCHEMA))
    text = yaml.safe_dump(tree, sort_keys=False, allow_unicode=draw(st.booleans()))
    return mutate_bytes(draw, text.encode("utf-8"))


@settings(FUZZ, max_examples=examples(250))
@given(data=st.data())
def test_run_check_mutated_yaml(tiny_work: TinyWork, cases: Path, data: st.DataObject) -> None:
    d = case_dir(cases)
    f, out = d / "exp.yaml", d / "out"
    f.write_bytes(_mutated_yaml(data.draw, tiny_work))
    INPUTS.clear()
    INPUTS["exp.yaml"] = repr(f.read_bytes()[:1500])
    with untouched([d, tiny_work.root], exclude=[out]):
        call(run_main, ["--config", str(f), "--set", f"run.out_dir={out}", "--check"], "orchestration/run.py",
             "run.py --check: mutated YAML")


def _override(draw) -> str:  # noqa: ANN001
    path = draw(st.sampled_from(sorted(SCHEMA)))
    key = draw(st.one_of(st.just(".".join(path)), st.text(max_size=12)))
    safe = path == ("model", "num_labels")  # see conftest.MAX_NUM_LABELS
    raw = typed_like(draw, SCHEMA[path], safe=safe) if draw(st.booleans()) else draw(values(safe))
    value = draw(st.one_of(st.just(yaml.safe_dump(raw, default_flow_style=True).strip().removesuffix("...").strip()),
                           st.text(max_size=12)))
    return f"{key}={value}" if draw(st.integers(0, 9)) else key  # sometimes no '=' at all


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_run_check_random_overrides(tiny_work: TinyWork, cases: Path, data: st.DataObject) -> None:
    which = data.draw(st.sampled_from([SMOKE, tiny_work.yaml]))
    sets = [_override(data.draw) for _ in range(data.draw(st.integers(1, 3)))]
    d = case_dir(cases)
    out = d / "out"
    argv = ["--config", str(which)]
    argv += [f"--set={s}" for s in sets]  # '--set=' keeps a value that starts with '-' a value
    INPUTS.clear()
    INPUTS["argv"] = repr(argv)
    with untouched([d, tiny_work.root], exclude=[out]):
        call(run_main, argv + ["--set", f"run.out_dir={out}", "--check"], "orchestration/run.py",
             "run.py --check: random --set")


@settings(FUZZ, max_examples=examples(12))
@given(data=st.data())
def test_train_mutated_yaml(tiny_work: TinyWork, cases: Path, data: st.DataObject) -> None:
    """``coalora train`` really trains, so these values stay small (see ``values(safe=True)``), and the
    run is one step on a training set of one allocation (the default twenty take most of a minute)."""
    d = case_dir(cases)
    f, out = d / "exp.yaml", d / "out"
    # Values of the right type only: the bytes and shapes that fail before training are the --check cases'.
    tree = mutate_tree(data.draw, _base(tiny_work, "tiny"), safe=True, known=SCHEMA, max_ops=2,
                       ops=("typed", "typed", "set", "delete"))
    f.write_text(yaml.safe_dump(tree, sort_keys=False))
    INPUTS.clear()
    INPUTS["exp.yaml"] = repr(f.read_bytes()[:1500])
    with untouched([d, tiny_work.root], exclude=[out]):
        call(cli_main, ["train", "--config", str(f), "--out", str(out), "--set", "train.steps=1",
                        "--set", "train.init_budgets=[3.0]", "--quiet"], "coalora", "coalora train: mutated YAML")


# Failures the fuzz found, as fixed inputs (each one a bug until the exit contract holds for it).
YAML_REGRESSIONS: dict[str, bytes] = {
    # Not UTF-8: a UnicodeDecodeError escaped load_config (coalora/storage.py read_text).
    "latin-1 byte": b"model: {name: tiny-bert}\n# caf\xe9\n",
    # A character YAML refuses: PyYAML's reader error spans two lines ('\n  in "<unicode string>", position N').
    "NUL byte": b"model: {name: tiny-bert}\n\x00\n",
    # An unknown key is echoed raw: its newline splits the one error line in two.
    "newline in an unknown key": b'model: {name: tiny-bert}\n"da\\nta": {}\n',
}


@pytest.mark.parametrize("command", ["run.py --check", "coalora train"])
@pytest.mark.parametrize("name", sorted(YAML_REGRESSIONS))
def test_yaml_regressions(tiny_work: TinyWork, cases: Path, name: str, command: str) -> None:
    INPUTS.clear()
    INPUTS["regression"] = name
    d = case_dir(cases)
    f, out = d / "exp.yaml", d / "out"
    f.write_bytes(YAML_REGRESSIONS[name])
    with untouched([d, tiny_work.root], exclude=[out]):
        if command == "coalora train":
            res = call(cli_main, ["train", "--config", str(f), "--out", str(out), "--quiet"], "coalora",
                       "regressions: YAML")
        else:
            res = call(run_main, ["--config", str(f), "--set", f"run.out_dir={out}", "--check"],
                       "orchestration/run.py", "regressions: YAML")
    assert res.rc == 2


# "da\nta.x=1": the unknown key is echoed raw (two lines); "space.options.bits=[[2]]": TypeError
# (unhashable type: 'list') in coalora/space.py _normalise_options, reached from config validation.
@pytest.mark.parametrize("override", ["da\nta.x=1", "space.options.bits=[[2]]", "space.options.block=[{}]",
                                      "model.name=\udcff", "=1", "model..name=x", "model.name.x=1"])
def test_override_regressions(tiny_work: TinyWork, cases: Path, override: str) -> None:
    INPUTS.clear()
    d = case_dir(cases)
    with untouched([d, tiny_work.root], exclude=[d / "out"]):
        res = call(run_main, ["--config", str(SMOKE), f"--set={override}", f"--set=run.out_dir={d / 'out'}", "--check"],
                   "orchestration/run.py", "regressions: --set")
    assert res.rc == 2
