"""End-to-end CLI on tiny models: train → evaluate → adapt, PEFT reproduces our logits, bad input."""

from __future__ import annotations

import csv
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from coalora.cli import main
from coalora.pipeline.config import load_config
from coalora.pipeline.methods import load_adapted, per_config_checkpoints

POS = "great wonderful superb moving brilliant fun".split()
NEG = "awful boring dull terrible weak bad".split()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    rnd = random.Random(0)
    with open(d / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(240):
            y = rnd.randint(0, 1)
            words = rnd.choices(POS if y else NEG, k=3) + rnd.choices(POS + NEG, k=2)
            rnd.shuffle(words)
            w.writerow([" ".join(words), y])
    (d / "tiny.yaml").write_text(
        f"model: {{name: tiny-bert}}\n"
        f"data: {{name: {d / 'reviews.csv'}, max_length: 12, batch_size: 16, eval_batch_size: 32}}\n"
        "space: {preset: full}\n"
        "lora: {rank: 4, alpha: 8}\n"
        "train: {steps: 12, lr: 0.005, warmup_steps: 0, init_budgets: [2.5, 3.0, 4.0]}\n"
        "eval: {budgets: [3.0, 4.0], random: 2, random_bits: [2.5, 3.5]}\n"
    )
    assert main(["train", "--config", str(d / "tiny.yaml"), "--out", str(d / "coa"), "--quiet"]) == 0
    return d


def test_ctrl_c_ends_a_training_with_one_line_and_leaves_no_half_written_checkpoint(workdir, tmp_path, capsys, ctrl_c):
    # SIGINT delivered to this process while `coalora train` runs in it (a training far too long to end first).
    import signal
    import threading

    out = tmp_path / "coa"
    timer = threading.Timer(2.0, signal.raise_signal, (signal.SIGINT,))
    timer.start()
    try:
        rc = main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(out), "--quiet",
                   "--set", "train.steps=1000000"])
    finally:
        timer.cancel()
    assert rc == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "coalora: interrupted"
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no checkpoint, no temporary beside it


def test_train_writes_checkpoint_with_trainset(workdir):
    meta = json.loads((workdir / "coa" / "meta.json").read_text())
    assert meta["method"] == "coa" and meta["step"] == 12
    assert len(meta["trainset"]) == 3
    assert (workdir / "coa" / "trainable.safetensors").is_file()


def test_evaluate_random_and_budget_json(workdir, capsys):
    assert main(["evaluate", "--checkpoint", str(workdir / "coa"), "--random", "2", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2
    assert all(2.45 <= r["avg_bits"] <= 3.55 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert main(["evaluate", "--checkpoint", str(workdir / "coa"), "--budget", "3.0", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "accuracy" in table.splitlines()[0] and len(table.splitlines()) == 2


def _assert_peft_reproduces(coa, idx, out: Path) -> None:
    """The exported ``out/base`` + ``out/adapter``, loaded by PEFT alone, gives our logits under ``idx``."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(out / "base")
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.randint(5, 100, (4, 9), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    coa.set_config(idx)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, coa(**batch).logits, atol=1e-4, rtol=0)


def test_adapt_budget_writes_peft_adapter_that_reproduces_logits(workdir):
    out = workdir / "adapter-3bit"
    assert main(["adapt", "--checkpoint", str(workdir / "coa"), "--budget", "3.0", "--out", str(out)]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert summary["avg_bits"] <= 3.0
    for f in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "base/config.json",
              "quantized.safetensors", "configuration.json"):
        assert (out / f).is_file(), f
    coa, _, _, loaded = load_adapted(workdir / "coa")
    space = coa.space
    idx = space.from_json(json.loads((out / "configuration.json").read_text()))
    assert space.config_id(idx) == summary["config_id"]
    _assert_peft_reproduces(coa, idx, out)


def test_adapt_config_json_and_quantized_round_trip(workdir):
    from safetensors.torch import load_file

    from coalora.core.quant import QuantizedMatrix

    coa, _, _, _ = load_adapted(workdir / "coa")
    space = coa.space
    cfg = space.sample(np.random.default_rng(5), 1)[0]
    (workdir / "cfg.json").write_text(json.dumps(space.to_json(cfg)))
    out = workdir / "adapter-json"
    assert main(["adapt", "--checkpoint", str(workdir / "coa"), "--config", str(workdir / "cfg.json"),
                 "--out", str(out)]) == 0
    packed = load_file(str(out / "quantized.safetensors"))
    name = space.matrices[0].name
    parts = {k[len(name) + 1:]: v for k, v in packed.items() if k.startswith(name + ".")}
    qm = QuantizedMatrix.from_packed(parts)
    coa.set_config(cfg)
    torch.testing.assert_close(qm.dequantize(), coa.layers[0].qweight, rtol=0, atol=0)


def test_per_config_and_shared_methods(workdir):
    cfg = load_config(workdir / "tiny.yaml", ["train.steps=3"])
    from coalora.pipeline.methods import train_method

    summary = train_method(cfg, workdir / "per", method="per-config", progress=False, say=lambda s: None)
    paths = per_config_checkpoints(workdir / "per")
    assert len(paths) == 2 and summary["steps"] == 6
    model, meta, _, _ = load_adapted(paths[0])
    assert meta["method"] == "per-config" and model.hypernet is None and meta["budget"] == 3.0
    summary = train_method(cfg, workdir / "shared", method="shared", progress=False, say=lambda s: None)
    model, meta, _, _ = load_adapted(workdir / "shared")
    assert meta["method"] == "shared" and model.hypernet is None and len(meta["trainset"]) == 3


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err


def test_bad_inputs_one_message_exit_2(workdir, tmp_path, capsys):
    ck = str(workdir / "coa")
    # Budget below the attainable range.
    assert main(["adapt", "--checkpoint", ck, "--budget", "1.0", "--out", str(tmp_path / "a")]) == 2
    assert "below this space's attainable range [2.0322265625, 8.625]" in _err(capsys)
    assert not (tmp_path / "a").exists()
    # A configuration naming a module the model lacks.
    bad = {"encoder.layer.99.attention.self.query": {}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert main(["adapt", "--checkpoint", ck, "--config", str(tmp_path / "bad.json"), "--out", str(tmp_path / "b")]) == 2
    assert "is not a target matrix" in _err(capsys)
    assert not (tmp_path / "b").exists()
    # An option outside its list.
    coa, _, _, _ = load_adapted(workdir / "coa")
    j = coa.space.to_json(coa.space.sample(np.random.default_rng(0), 1)[0])
    first = next(iter(j))
    j[first]["block"] = 128
    (tmp_path / "opt.json").write_text(json.dumps(j))
    assert main(["evaluate", "--checkpoint", ck, "--config", str(tmp_path / "opt.json")]) == 2
    assert "block=128" in _err(capsys)
    # Wrong path, not a checkpoint.
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope"), "--budget", "3"]) == 2
    assert "checkpoint not found" in _err(capsys)
    # Unknown method, rank <= 0, malformed YAML: nothing written.
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--set", "lora.rank=0", "--out", str(tmp_path / "c")]) == 2
    assert "lora.rank: must be a positive integer" in _err(capsys)
    (tmp_path / "m.yaml").write_text("train: {method: qlora}\n")
    assert main(["train", "--config", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "c")]) == 2
    assert "unknown method 'qlora'" in _err(capsys)
    assert not (tmp_path / "c").exists()
    # Existing output directory is never overwritten silently.
    assert main(["adapt", "--checkpoint", ck, "--budget", "3.0", "--out", str(workdir / "coa")]) == 2
    assert "exists and is not empty" in _err(capsys)
    assert (workdir / "coa" / "meta.json").is_file()


def test_checkpoint_from_another_model(workdir, capsys):
    """Loading a tiny-bert checkpoint into a tiny-llama experiment is one clear error."""
    from coalora.errors import SpaceError

    cfg = load_config(workdir / "tiny.yaml", ["model.name=tiny-llama", "model.task=classification"])
    with pytest.raises(SpaceError, match="made for another model"):
        load_adapted(workdir / "coa", cfg=cfg)
    cfg = load_config(workdir / "tiny.yaml", ["space.preset=bits-only"])
    with pytest.raises(SpaceError, match="another configuration space"):
        load_adapted(workdir / "coa", cfg=cfg)


def test_space_command(capsys):
    assert main(["space", "--model", "tiny-bert", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_matrices"] == 12 and info["options_per_matrix"] == 432
    assert info["min_bits"] == pytest.approx(2.0322265625)
    assert main(["space", "--model", "tiny-bert"]) == 0
    assert "attainable average bits: [2.0322265625, 8.625]\n" in capsys.readouterr().out  # exact, not 2.0322
    assert main(["space", "--model", "no-such-model"]) == 2
    assert "is not a known short name" in _err(capsys)


def test_evaluate_many_budgets_a_config_list_and_a_per_config_directory(workdir, capsys):
    ck = str(workdir / "coa")
    assert main(["evaluate", "--checkpoint", ck, "--budget", "3.0", "4.0", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["budget"] for r in rows] == [3.0, 4.0]
    assert rows[0]["avg_bits"] <= 3.0 < rows[1]["avg_bits"] <= 4.0
    # A list of configurations (here a run-style trainset file) evaluates each of them, in order.
    coa, _, _, _ = load_adapted(workdir / "coa")
    picked = coa.space.sample(np.random.default_rng(9), 3)
    (workdir / "three.json").write_text(json.dumps({"trainset": [coa.space.to_json(c) for c in picked]}))
    assert main(["evaluate", "--checkpoint", ck, "--config", str(workdir / "three.json"), "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["config_id"] for r in rows] == [coa.space.config_id(c) for c in picked]
    # adapt takes exactly one configuration.
    assert main(["adapt", "--checkpoint", ck, "--config", str(workdir / "three.json"),
                 "--out", str(workdir / "never")]) == 2
    assert "holds 3 configurations; this command takes one" in _err(capsys)
    assert not (workdir / "never").exists()
    # A per-config directory: every adapter on its own configuration.
    cfg = load_config(workdir / "tiny.yaml", ["train.steps=2"])
    from coalora.pipeline.methods import train_method

    train_method(cfg, workdir / "per-eval", method="per-config", progress=False, say=lambda s: None)
    assert main(["evaluate", "--checkpoint", str(workdir / "per-eval"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["budget"] for r in rows] == [3.0, 4.0]
    for r, path in zip(rows, per_config_checkpoints(workdir / "per-eval")):
        meta = json.loads((path / "meta.json").read_text())
        assert r["config_id"] == coa.space.config_id(coa.space.from_json(meta["trainset"][0]))
    assert main(["evaluate", "--checkpoint", str(workdir / "per-eval"), "--budget", "3.0"]) == 2
    assert "is a per-config directory" in _err(capsys)


def test_train_json_prints_only_json_on_stdout(workdir, tmp_path, capsys):
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--method", "shared", "--set", "train.steps=1",
                 "--out", str(tmp_path / "s"), "--json", "--quiet"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["method"] == "shared" and summary["steps"] == 1
    assert "shared: tiny-bert" in captured.err  # the progress note went to stderr


def test_bf16_run_trains_evaluates_and_adapts(workdir, capsys):
    """A bf16 base end to end: its checkpoint holds float32 trainables, `adapt` writes a bf16 base and a
    float32 PEFT adapter, and PEFT on the exported base reproduces our logits to bf16 rounding."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    ck = workdir / "coa-bf16"
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--set", "model.dtype=bfloat16",
                 "--out", str(ck), "--quiet"]) == 0
    capsys.readouterr()
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["base_dtype"] == "bfloat16" and np.isfinite(meta["train_loss"])
    assert {t.dtype for t in load_file(str(ck / "trainable.safetensors")).values()} == {torch.float32}
    assert main(["evaluate", "--checkpoint", str(ck), "--budget", "3.0", "--json", "--quiet"]) == 0
    row = json.loads(capsys.readouterr().out)[0]
    assert np.isfinite(row["loss"]) and 0 <= row["accuracy"] <= 1
    out = workdir / "adapter-bf16"
    assert main(["adapt", "--checkpoint", str(ck), "--budget", "3.0", "--out", str(out)]) == 0
    summary = json.loads((out / "export.json").read_text())
    assert (summary["base_dtype"], summary["adapter_dtype"]) == ("bfloat16", "float32")
    assert {t.dtype for t in load_file(str(out / "adapter" / "adapter_model.safetensors")).values()} == {torch.float32}
    base_tensors = load_file(str(out / "base" / "model.safetensors"))
    assert {t.dtype for t in base_tensors.values() if t.is_floating_point()} == {torch.bfloat16}
    coa, _, _, _ = load_adapted(ck)
    assert coa.compute_dtype == torch.bfloat16
    idx = coa.space.from_json(json.loads((out / "configuration.json").read_text()))
    base = AutoModelForSequenceClassification.from_pretrained(out / "base", dtype=torch.bfloat16)
    peft_model = PeftModel.from_pretrained(base, out / "adapter").eval()
    ids = torch.randint(5, 100, (8, 9), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    coa.set_config(idx)
    with torch.no_grad():
        ours = coa(**batch).logits.float()
        theirs = peft_model(**batch).logits.float()
        with peft_model.disable_adapter():
            untuned = peft_model(**batch).logits.float()
    gap = (theirs - ours).abs().max().item()
    # A few bf16 ulps of these ~0.1 logits (PEFT runs the LoRA path in float32, we in bf16; measured
    # 5e-4), far below the adapter's own effect (measured 0.09).
    assert gap < 5e-3, gap
    assert gap < 0.1 * (untuned - ours).abs().max().item()


# ---------------------------------------------------------------------- issue 13: nothing lost, nothing silent
def test_evaluate_json_stdout_is_one_document_when_highs_prints(workdir, capfd):
    """At this budget tiny-bert's allocation runs branch and bound, where HiGHS prints a line with C's
    printf (``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();``), past
    sys.stdout. stdout (the file descriptor) must still be exactly one JSON document."""
    import ctypes

    capfd.readouterr()
    assert main(["evaluate", "--checkpoint", str(workdir / "coa"), "--budget", "3.449999999999995",
                 "--json", "--quiet"]) == 0
    ctypes.CDLL(None).fflush(None)  # what the process's exit would flush
    out, err = capfd.readouterr()
    rows = json.loads(out)
    assert [r["budget"] for r in rows] == [3.449999999999995] and rows[0]["avg_bits"] <= 3.45
    # Measured here, HiGHS's line went to stderr; it is not asserted, since whether branch and bound
    # meets that line depends on the last bits of the error table (test_allocate.py checks a fixed table).


def _copy_checkpoint(workdir, tmp_path):
    import shutil

    return shutil.copytree(workdir / "coa", tmp_path / "ck")


def _nan_trainable(ck):
    """A diverged checkpoint: one nan in the LoRA factors, with meta's checksum updated to match (the
    file is what training wrote, not damaged later)."""
    import hashlib

    from safetensors.torch import load_file, save_file

    state = load_file(str(ck / "trainable.safetensors"))
    name = sorted(state)[0]
    state[name].view(-1)[0] = float("nan")
    save_file(state, str(ck / "trainable.safetensors"))
    meta = json.loads((ck / "meta.json").read_text())
    meta["checksums"]["trainable.safetensors"] = hashlib.sha256((ck / "trainable.safetensors").read_bytes()).hexdigest()
    (ck / "meta.json").write_text(json.dumps(meta))
    return name


def _truncate(p):
    p.write_bytes(p.read_bytes()[:100])


def _flip_last_byte(p):
    blob = bytearray(p.read_bytes())
    blob[-1] ^= 0x40
    p.write_bytes(bytes(blob))


DAMAGED = {
    "truncated": (lambda ck: _truncate(ck / "trainable.safetensors"),
                  "trainable.safetensors is damaged (truncated or corrupt)"),
    "bit flip": (lambda ck: _flip_last_byte(ck / "trainable.safetensors"),
                 "trainable.safetensors is damaged: its SHA-256 differs"),
    "meta not json": (lambda ck: (ck / "meta.json").write_text("{broken"), "meta.json is corrupt: not valid JSON"),
    "meta a list": (lambda ck: (ck / "meta.json").write_text("[1, 2]"),
                    "meta.json is corrupt: it holds a JSON list, not an object"),
    "meta without experiment": (
        lambda ck: (ck / "meta.json").write_text(json.dumps(
            {k: v for k, v in json.loads((ck / "meta.json").read_text()).items() if k != "experiment"})),
        "meta.json has no 'experiment'"),
    "nan": (_nan_trainable, "values that are not finite (nan/inf)"),
}


@pytest.mark.parametrize("what", list(DAMAGED))
def test_damaged_checkpoint_is_one_line_naming_the_file(workdir, tmp_path, capsys, what):
    ck = _copy_checkpoint(workdir, tmp_path)
    damage, message = DAMAGED[what]
    damage(ck)
    assert main(["evaluate", "--checkpoint", str(ck), "--budget", "3.0", "--json", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert err.startswith(f"coalora: error: {ck}") and message in err, err


def test_check_checkpoint_files_validates_bytes(workdir):
    from coalora.errors import CheckpointError
    from coalora.pipeline.checkpoint import check_checkpoint_files

    files = {p.name: p.read_bytes() for p in (workdir / "coa").iterdir()}
    meta = check_checkpoint_files(files, "s3://bucket/run/checkpoints/round_0")
    assert meta["method"] == "coa" and meta["experiment"]["model"]["name"] == "tiny-bert"
    with pytest.raises(CheckpointError, match=r"^s3://bucket/ck/trainable\.safetensors is damaged \(truncated"):
        check_checkpoint_files({**files, "trainable.safetensors": files["trainable.safetensors"][:50]},
                               "s3://bucket/ck")
    with pytest.raises(CheckpointError, match=r"^d is not a coalora checkpoint .*meta\.json missing"):
        check_checkpoint_files({"trainable.safetensors": files["trainable.safetensors"]}, "d")
    with pytest.raises(CheckpointError, match=r"^d/meta\.json is corrupt: not UTF-8"):
        check_checkpoint_files({**files, "meta.json": b"\xff\xfe{"}, "d")
    with pytest.raises(CheckpointError, match=r"^d/meta\.json: 'experiment' holds a JSON str, expected an object"):
        meta_bad = json.loads(files["meta.json"]) | {"experiment": "tiny.yaml"}
        check_checkpoint_files({**files, "meta.json": json.dumps(meta_bad).encode()}, "d")
    with pytest.raises(CheckpointError, match=r"^d has optimizer\.json but no optimizer\.safetensors"):
        check_checkpoint_files({**files, "optimizer.json": b'{"steps": {}}'}, "d")


def test_out_is_checked_before_any_work(workdir, tmp_path, capsys):
    """--out problems are found before the model or checkpoint is read (a model that does not exist and
    a checkpoint that does not exist are not what the message is about) and nothing is written."""
    a_file = tmp_path / "a-file"
    a_file.write_text("keep me")
    (tmp_path / "no-model.yaml").write_text((workdir / "tiny.yaml").read_text().replace("tiny-bert", "no-such-model"))
    for out, message in [(a_file, "exists and is not a directory"),
                         (a_file / "sub", f"cannot be created: {a_file} is a file, not a directory"),
                         (workdir, "exists and is not empty (pass --overwrite)")]:
        assert main(["train", "--config", str(tmp_path / "no-model.yaml"), "--out", str(out), "--quiet"]) == 2
        assert f"coalora: error: --out {out} " in (err := _err(capsys)) or "output directory" in err
        assert message in err, err
        assert main(["adapt", "--checkpoint", str(tmp_path / "none"), "--budget", "3", "--out", str(out)]) == 2
        assert message in _err(capsys)
    assert a_file.read_text() == "keep me"
    # --overwrite replaces an earlier coalora output only: not a directory of other files, nor the
    # checkpoint this command reads.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["adapt", "--checkpoint", str(workdir / "coa"), "--budget", "3", "--out", str(other),
                 "--overwrite"]) == 2
    assert "holds no earlier coalora output" in _err(capsys)
    assert main(["adapt", "--checkpoint", str(workdir / "coa"), "--budget", "3", "--out", str(workdir / "coa"),
                 "--overwrite"]) == 2
    assert "which this command reads" in _err(capsys)
    assert (other / "notes.txt").read_text() == "mine" and (workdir / "coa" / "meta.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "no-model.yaml", "other"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere: no permission to refuse")
def test_out_without_write_permission(workdir, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["adapt", "--checkpoint", str(workdir / "coa"), "--budget", "3", "--out", str(locked / "x")]) == 2
        assert f"cannot be written: Permission denied in {locked}" in _err(capsys)
    finally:
        locked.chmod(0o700)


def test_bad_labels_rank_and_random_are_one_line(workdir, tmp_path, capsys):
    rows = (workdir / "reviews.csv").read_text().splitlines()
    (tmp_path / "bad.csv").write_text("\n".join(rows[:5] + ["great fun,5"] + rows[5:]) + "\n")
    (tmp_path / "one.csv").write_text("\n".join([rows[0]] + [r[:-1] + "1" for r in rows[1:]]) + "\n")
    yaml = (workdir / "tiny.yaml").read_text()
    for name, message in [("bad.csv", "row 5: label 5 is not below model.num_labels=2; class ids run from 0 to "
                                      "num_labels - 1: set model.num_labels to 6"),
                          ("one.csv", "all 240 rows have label 1 in column 'label'; a classifier learns nothing")]:
        (tmp_path / "exp.yaml").write_text(yaml.replace(str(workdir / "reviews.csv"), str(tmp_path / name)))
        assert main(["train", "--config", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 2
        err = _err(capsys)
        assert str(tmp_path / name) in err and message in err, err
        assert not (tmp_path / "out").exists()
    # A rank no target matrix can hold fails at once, before anything of that size is allocated.
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--set", "lora.rank=1000000000",
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    assert _err(capsys) == ("coalora: error: lora.rank: 1000000000 is larger than the smaller side of target matrix "
                            "bert.encoder.layer.0.attention.self.query (shape 64 x 64, out x in); set lora.rank to "
                            "at most 64")
    assert not (tmp_path / "out").exists()
    # --random 0 would have evaluated the training set instead.
    for argv in (["--random", "0"], ["--random", "-2"], ["--max-batches", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["evaluate", "--checkpoint", str(workdir / "coa"), *argv])
        assert exit_.value.code == 2
        err = _err(capsys)
        assert len(err.splitlines()) == 1 and err.startswith("coalora: error: coalora evaluate: argument "), err
        assert "must be at least 1" in err


def test_a_bare_value_error_is_a_bug_with_its_traceback(monkeypatch):
    """Only our error classes are bad input; a ValueError from anywhere else propagates out of main."""
    import coalora.cli as cli

    def broken(args):
        raise ValueError("a bug")

    monkeypatch.setattr(cli, "cmd_space", broken)
    with pytest.raises(ValueError, match="a bug"):
        main(["space", "--model", "tiny-bert"])


def test_train_per_config_for_the_configurations_of_a_file(workdir, tmp_path, capsys):
    """``--configs``: one per-config adapter for each configuration in a JSON file (e.g. held-out ones),
    each trained on exactly that configuration."""
    coa_meta = json.loads((workdir / "coa" / "meta.json").read_text())
    wanted = coa_meta["trainset"][:2]
    (tmp_path / "two.json").write_text(json.dumps(wanted))
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--method", "per-config", "--configs",
                 str(tmp_path / "two.json"), "--set", "train.steps=1", "--out", str(tmp_path / "per"), "--quiet"]) == 0
    paths = per_config_checkpoints(tmp_path / "per")
    metas = [json.loads((Path(p) / "meta.json").read_text()) for p in paths]
    assert [m["trainset"] for m in metas] == [[c] for c in wanted]
    assert all(m["budget"] is None and Path(p).name.startswith("bits-") for m, p in zip(metas, paths))
    capsys.readouterr()
    # Another method, or a file that is not there: one line, exit 2, nothing written.
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--method", "coa", "--configs",
                 str(tmp_path / "two.json"), "--out", str(tmp_path / "x")]) == 2
    assert _err(capsys) == ("coalora: error: --configs trains one adapter per configuration: it needs --method "
                            "per-config, not coa")
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--method", "per-config", "--configs",
                 str(tmp_path / "none.json"), "--out", str(tmp_path / "x")]) == 2
    assert _err(capsys) == f"coalora: error: configuration file not found: {tmp_path / 'none.json'}"
    assert not (tmp_path / "x").exists()


def test_damage_inputs_train_load_back_and_adapt(workdir, tmp_path):
    """``hypernet.damage``: U_θ reads each matrix's error from the allocation's error table, relative to
    its ‖W‖²; the checkpoint loads back (its damage projection trained) and exports an adapter."""
    from coalora.allocation.sensitivity import target_weights
    from coalora.pipeline.experiment import build_adapted, error_table_for, load_base

    out = tmp_path / "damage"
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(out), "--quiet",
                 "--set", "hypernet.damage=true"]) == 0
    coa, meta, cfg, _ = load_adapted(out)
    assert meta["experiment"]["hypernet"]["damage"] is True
    base = load_base(cfg).model
    err = error_table_for(cfg, base, coa.space, progress=False)
    norms = np.array([float(w.float().square().sum()) for w in target_weights(base, coa.space)])
    np.testing.assert_allclose(coa.hypernet.rel_errors.numpy(), err / norms[:, None], rtol=1e-6)
    trained = coa.trainable_state()["hypernet.damage_proj.weight"]
    start = build_adapted(cfg, load_base(cfg), "coa").trainable_state()["hypernet.damage_proj.weight"]
    assert trained.shape == start.shape == (cfg.hypernet.embed_dim, 3)
    assert not torch.equal(trained, start)  # training moved it: the damage inputs reach the loss
    assert main(["adapt", "--checkpoint", str(out), "--budget", "3.0", "--out", str(tmp_path / "adapter")]) == 0
    assert (tmp_path / "adapter" / "adapter" / "adapter_model.safetensors").is_file()


def test_a_bank_trains_loads_back_and_exports_a_peft_adapter_of_rank_r_plus_R(workdir, tmp_path):
    """``lora.bank``: trained from the residual start with the residual fit, the checkpoint loads back with its
    bank, and ``adapt`` writes a PEFT adapter of rank r + R (α scaled with it) that reproduces our logits."""
    out = tmp_path / "bank"
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(out), "--quiet", "--set", "lora.bank=2",
                 "--set", "lora.init=residual", "--set", "hypernet.residual_fit=5"]) == 0
    coa, meta, _, _ = load_adapted(out)
    assert meta["lora"]["bank"] == 2 and coa.layers[0].bank_B.shape[2] == 2
    trainset = np.stack([coa.space.from_json(c) for c in meta["trainset"]])
    used = sorted({int(w) for w in trainset[:, 0, 0]})
    assert all(torch.count_nonzero(coa.layers[0].bank_B[k]) > 0 for k in used)
    adapter = tmp_path / "adapter"
    assert main(["adapt", "--checkpoint", str(out), "--budget", "3.0", "--out", str(adapter)]) == 0
    peft_cfg = json.loads((adapter / "adapter" / "adapter_config.json").read_text())
    assert (peft_cfg["r"], peft_cfg["lora_alpha"]) == (6, 12.0)  # r 4 + R 2; α/r stays 8/4
    assert json.loads((adapter / "export.json").read_text())["rank"] == 6
    idx = coa.space.from_json(json.loads((adapter / "configuration.json").read_text()))
    _assert_peft_reproduces(coa, idx, adapter)


@pytest.mark.parametrize("method", ["shared", "per-config"])
def test_residual_init_starts_each_method_from_its_training_configurations(workdir, tmp_path, method):
    """``lora.init=residual``: after one step at a negligible learning rate, (α/r)·B·A is still the top-r
    part of the mean quantization residual over the checkpoint's own training configurations."""
    from coalora.core.quant import fake_quantize

    out = tmp_path / method
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--method", method, "--out", str(out), "--quiet",
                 "--set", "lora.init=residual", "--set", "train.steps=1", "--set", "train.lr=1e-12"]) == 0
    paths = per_config_checkpoints(out) if method == "per-config" else [out]
    assert len(paths) == (2 if method == "per-config" else 1)
    for path in paths:
        model, meta, _, _ = load_adapted(path)
        space = model.space
        trainset = np.stack([space.from_json(c) for c in meta["trainset"]])
        assert len(trainset) == (1 if method == "per-config" else 3)
        for i in (0, len(model.layers) - 1):
            layer = model.layers[i]
            q = sum(fake_quantize(layer.weight, space.option(c[i]), family=space.family) for c in trainset)
            u, s, vh = torch.linalg.svd(layer.weight - q / len(trainset))
            r = layer.lora_A.shape[0]
            torch.testing.assert_close(layer.scaling * layer.lora_B @ layer.lora_A, (u[:, :r] * s[:r]) @ vh[:r],
                                       atol=1e-5, rtol=1e-4)


def test_distill_and_random_configs_train_a_causal_lm_and_refuse_a_classifier(workdir, tmp_path, capsys):
    """``train.distill`` and ``train.random_configs`` through ``coalora train`` on a tiny causal LM (a CSV of
    text); distillation on a classifier is one line, exit 2, nothing written."""
    rnd = random.Random(1)
    with open(tmp_path / "text.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for _ in range(200):
            w.writerow([" ".join(rnd.choices(POS + NEG, k=12))])
    (tmp_path / "lm.yaml").write_text(
        f"model: {{name: tiny-llama}}\n"
        f"data: {{name: {tmp_path / 'text.csv'}, block_size: 32, batch_size: 4, eval_batch_size: 8, max_eval: 8}}\n"
        "lora: {rank: 4, alpha: 8}\n"
        "train: {steps: 6, lr: 0.005, warmup_steps: 0, init_budgets: [3.0, 4.0], distill: 0.5, random_configs: 1}\n"
        "eval: {budgets: [3.5], random: 2, random_bits: [3.2, 3.8], random_min_bits: 3}\n"
    )
    assert main(["train", "--config", str(tmp_path / "lm.yaml"), "--out", str(tmp_path / "lm"), "--quiet"]) == 0
    meta = json.loads((tmp_path / "lm" / "meta.json").read_text())
    assert meta["experiment"]["train"]["distill"] == 0.5 and meta["experiment"]["train"]["random_configs"] == 1
    assert np.isfinite(meta["train_loss"])
    capsys.readouterr()
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--set", "train.distill=0.5",
                 "--out", str(tmp_path / "cls")]) == 2
    assert _err(capsys) == ("coalora: error: train.distill: distillation matches the unquantized base's outputs, "
                            "which only a causal LM has before training (tiny-bert is a classification model); "
                            "set it to 0")
    assert not (tmp_path / "cls").exists()


def test_residual_fit_runs_before_coa_trains(workdir, tmp_path, capsys):
    """``hypernet.residual_fit``: U_θ is fitted to the training set and the extra random configurations,
    before the first step; the fitted error falls and is said."""

    def fit(name: str, *sets: str, said: str) -> re.Match:
        """Train 2 steps after a 50-step fit with ``sets``; the fit's line must read ``said`` then
        ``<error before> -> <error after>``."""
        args = ["lora.init=residual", "hypernet.residual_fit=50", "hypernet.residual_fit_configs=5",
                *sets, "train.steps=2"]
        assert main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(tmp_path / name),
                     *[x for a in args for x in ("--set", a)]]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("residual fit of U_θ"))
        m = re.fullmatch(r"residual fit of U_θ: 8 configurations, 50 steps, " + re.escape(said) + r" (\S+) -> (\S+)",
                         line)
        assert m, line
        return m

    m = fit("fit", said="relative error of the weights")
    assert float(m.group(2)) < float(m.group(1))
    # Weighed by the inputs of two training batches: a different error, measured on the outputs.
    m2 = fit("fit-x", "hypernet.residual_fit_calibration=2", said="relative error on 2 batches' inputs")
    assert float(m2.group(2)) < float(m2.group(1)) and m2.group(1) != m.group(1)
    # Within a trust region: the targets sit nearer the identity U_θ starts at, so the starting error is lower.
    m3 = fit("fit-r", "hypernet.residual_fit_radius=0.01",
             said="cores within 0.01·‖I‖ of I, relative error of the weights")
    assert float(m3.group(1)) < float(m.group(1))
    # hypernet.residual_fit_lr is the fit's rate: the same start, and at a vanishing rate U_θ stays put.
    m4 = fit("fit-lr", "hypernet.residual_fit_lr=1e-9", said="relative error of the weights")
    assert m4.group(1) == m.group(1) and float(m4.group(2)) > 0.999 * float(m4.group(1)) > float(m.group(2))


def test_snapshots_are_the_model_after_their_step(workdir, tmp_path):
    """``train.snapshots``: <out>/snapshots/step-<k> holds the model exactly as it stood after step k. Under
    a constant learning rate a k-step training is the same k steps, so its checkpoint is that snapshot."""
    from safetensors.torch import load_file

    sets = ["--set", "train.schedule=constant", "--quiet"]
    out = tmp_path / "coa"
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(out),
                 "--set", "train.snapshots=[4, 8]", *sets]) == 0
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step-4", "step-8"]
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(tmp_path / "four"),
                 "--set", "train.steps=4", *sets]) == 0
    snap, four = load_file(out / "snapshots" / "step-4" / "trainable.safetensors"), load_file(
        tmp_path / "four" / "trainable.safetensors")
    assert snap.keys() == four.keys() and all(torch.equal(snap[k], four[k]) for k in snap)
    final = load_file(out / "trainable.safetensors")
    assert not all(torch.equal(snap[k], final[k]) for k in snap)
    meta = json.loads((out / "snapshots" / "step-8" / "meta.json").read_text())
    assert meta["step"] == 8 and meta["method"] == "coa" and json.loads((out / "meta.json").read_text())["step"] == 12
    # A snapshot is a checkpoint like any other: it evaluates.
    assert main(["evaluate", "--checkpoint", str(out / "snapshots" / "step-4"), "--budget", "3.0", "--quiet"]) == 0


def test_a_per_config_snapshot_is_a_per_config_directory(workdir, tmp_path, capsys):
    """per-config's snapshot k holds every adapter after step k, indexed like the output itself, so that
    ``evaluate`` scores each on its own configuration in one call."""
    out = tmp_path / "pc"
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--method", "per-config", "--out", str(out),
                 "--set", "train.steps=3", "--set", "train.snapshots=[2]", "--quiet"]) == 0
    snap = out / "snapshots" / "step-2"
    finals = per_config_checkpoints(out)
    assert [p.name for p in per_config_checkpoints(snap)] == [p.name for p in finals] and len(finals) == 2
    for path in per_config_checkpoints(snap):
        meta = json.loads((path / "meta.json").read_text())
        assert meta["step"] == 2 and meta["trainset"] == json.loads((out / path.name / "meta.json").read_text())[
            "trainset"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(snap), "--json", "--quiet"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2


def test_snapshots_outside_the_training_are_refused(workdir, tmp_path, capsys):
    assert main(["train", "--config", str(workdir / "tiny.yaml"), "--out", str(tmp_path / "x"),
                 "--set", "train.snapshots=[12]"]) == 2
    assert _err(capsys) == ("coalora: error: train.snapshots: must lie between 1 and train.steps - 1 = 11 (the last "
                            "step is the checkpoint itself), got [12]")
    assert not (tmp_path / "x").exists()
