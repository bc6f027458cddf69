"""Two runs started at once on one machine, each with its own local Ray, as two users (or a sweep and a
run) would: the reference run in the test process and, beside it, ``python orchestration/run.py
--smoke-test`` in a subprocess (tests/conftest.py's ``smoke_beside``). Both finish; the subprocess's
console shows the product's progress once per line and none of Ray's chatter, which goes to its log. That
run trains a bf16 base with two DDP workers and the issue-#15 options that touch the orchestrator (U_θ's
damage inputs from the driver's error table, the residual LoRA initialisation in round 0, a fresh random
configuration per step): its loss falls, its checkpoints load back, and ``coalora adapt`` exports from it.
(That an undisturbed fp32 run equals the reference is the job of ``test_job_submit.py``.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
CHATTER = ("Checkpoint successfully created", "Reporting training result", "core_worker.cc", "Requesting resources",
           "Found multiple active Ray instances", "Exception in thread", "Traceback")


@pytest.fixture(scope="module")
def beside(reference, smoke_beside):
    """The bf16 run, started beside the reference run (which is therefore finished too)."""
    return smoke_beside()


def test_both_finish_and_the_console_is_readable(beside, reference):
    run_dir, rc, out, err = beside
    assert reference[1]["rounds"] == 2
    assert rc == 0, out[-3000:] + err[-3000:]
    console = out + err
    for line in CHATTER:
        assert line not in console, f"{line!r} on the console:\n{console[-3000:]}"
    lines = console.splitlines()
    steps = [x for x in lines if re.fullmatch(r"\[round \d\] train step \d+/\d+ loss \d\.\d+", x)]
    assert len(steps) == 2 and len(set(steps)) == 2, lines  # one progress line per round, each once
    assert lines[-1].startswith("done: 2 round(s)")
    log = Path(lines[0].removeprefix("log: "))
    text = log.read_text()
    assert "Checkpoint successfully created" in text and "train step" in text  # Ray's chatter is kept, in the log
    assert (run_dir / "logs" / log.name).read_text() == text


def test_bf16_run_trains_loads_back_and_exports(beside, tmp_path):
    import torch

    from coalora.cli import main
    from coalora.pipeline.evaluate import evaluate_one
    from coalora.pipeline.experiment import load_data
    from coalora.pipeline.methods import load_adapted
    from orchestration.store import RunStore

    run_dir = beside[0]
    store = RunStore(run_dir)
    rounds = store.read_rounds()
    assert rounds[1]["train_loss"] < rounds[0]["train_loss"]
    model, meta, cfg, loaded = load_adapted(store.checkpoint_dir(1).path)
    assert cfg.model.dtype == "bfloat16" and meta["base_dtype"] == "bfloat16"
    assert cfg.hypernet.damage and cfg.lora.init == "residual" and cfg.train.random_configs == 1
    assert model.compute_dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    # The evaluator's score of a configuration is what the reloaded checkpoint gives in this process.
    row = next(r for r in store.read_archive() if r["round"] == 1 and r["role"] == "train")
    model.set_config(np.asarray(row["knobs"], dtype=np.int64).reshape(model.space.n_matrices, 5))
    batches = load_data(cfg, loaded.tokenizer, loaded.task).eval_batches(cfg, "validation")
    assert evaluate_one(model, batches, loaded.task)["loss"] == pytest.approx(row["loss"], abs=1e-5)
    assert main(["adapt", "--run", str(run_dir), "--budget", "4.0", "--out", str(tmp_path / "a")]) == 0
    export = json.loads((tmp_path / "a" / "export.json").read_text())
    assert export["base_dtype"] == "bfloat16"
    assert (tmp_path / "a" / "adapter" / "adapter_model.safetensors").is_file()
