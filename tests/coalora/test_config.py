"""Experiment schema: defaults, YAML round trip, overrides, one clear message per bad input."""

from __future__ import annotations

import pytest

from coalora.config import ConfigError, ExperimentConfig, dump_config, load_config


def write(tmp_path, text: str):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_validate():
    cfg = load_config(None)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.train.method == "coa" and cfg.lora.rank == 16 and cfg.train.configs_per_step == 2


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "model:\n  name: tiny-bert\nlora:\n  rank: 8\ntrain:\n  lr: 1\n")
    cfg = load_config(p, ["train.steps=7", "eval.budgets=[3.0, 4.0]", "data.max_train=null"])
    assert cfg.model.name == "tiny-bert"
    assert cfg.lora.rank == 8
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # ints accepted where floats are expected
    assert cfg.train.steps == 7
    assert cfg.eval.budgets == [3.0, 4.0]
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize(
    "text, message",
    [
        ("lora:\n  rnak: 8\n", r"lora\.rnak: unknown key"),
        ("trian:\n  steps: 3\n", r"trian: unknown key"),
        ("train:\n  steps: ten\n", r"train\.steps: expected an integer, got 'ten'"),
        ("train:\n  steps: 2.5\n", r"train\.steps: expected an integer"),
        ("lora:\n  rank: 0\n", r"lora\.rank: must be a positive integer, got 0"),
        ("lora:\n  rank: -4\n", r"lora\.rank: must be a positive integer"),
        ("train:\n  method: qlora\n", r"train\.method: unknown method 'qlora'"),
        ("hypernet:\n  context: maybe\n", r"hypernet\.context: expected true/false"),
        ("data:\n  name: /no/such/file.csv\n", r"data\.name: file not found: /no/such/file\.csv"),
        ("space:\n  options:\n    bitz: [2]\n", r"space\.options\.bitz: unknown knob"),
        ("model: minilm\n", r"model: expected a mapping"),
        ("- a\n- b\n", r"top level must be a mapping"),
        ("lora: {rank: 8\n", r"malformed YAML \(line"),
        ("eval:\n  random_bits: [4.0, 2.5]\n", r"eval\.random_bits"),
        ("search:\n  kernel: matern\n", r"search: kernel='matern' is not one of"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match=r"train\.stepz: unknown key"):
        load_config(None, ["train.stepz=3"])


def test_search_section_reaches_the_search_settings(tmp_path):
    cfg = load_config(write(tmp_path, "search:\n  kernel: rbf\n  encoding: full\n  n_segments: 7\n"))
    settings = cfg.search.settings()
    assert (settings.kernel, settings.encoding, settings.n_segments) == ("rbf", "full", 7)
    assert load_config(None).search.settings().kernel == "additive"
