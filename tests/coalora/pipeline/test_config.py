"""Experiment schema: defaults, YAML round trip, overrides, one clear message per bad input."""

from __future__ import annotations

import pytest

from coalora.errors import ConfigError
from coalora.model.settings import HypernetConfig, LoraSettings
from coalora.pipeline.config import ExperimentConfig, config_from_dict, dump_config, load_config, parse_yaml
from coalora.search.settings import SearchSettings


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
        ("lora:\n  rank: !!int abc\n", r"c\.yaml: malformed YAML: invalid literal for int\(\)"),
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


def test_search_section_is_the_search_settings(tmp_path):
    cfg = load_config(write(tmp_path, "search:\n  kernel: rbf\n  encoding: full\n  n_segments: 7\n"))
    assert isinstance(cfg.search, SearchSettings)
    assert (cfg.search.kernel, cfg.search.encoding, cfg.search.n_segments) == ("rbf", "full", 7)
    assert load_config(None).search.kernel == "additive"


def test_library_sections_take_their_defaults_from_the_library(tmp_path):
    """``lora``, ``hypernet`` and ``search`` are the library's dataclasses: a YAML that omits them gets
    exactly their defaults, and there is no second copy of a default to drift."""
    cfg = load_config(write(tmp_path, "model:\n  name: tiny-bert\n"))
    for got, cls in ((cfg.lora, LoraSettings), (cfg.hypernet, HypernetConfig), (cfg.search, SearchSettings)):
        assert type(got) is cls and got == cls()
    assert load_config(None, ["lora.rank=4"]).lora == LoraSettings(rank=4)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lora.rank=0", "lora.rank: must be a positive integer, got 0"),
        ("lora.alpha=0", "lora.alpha: must be positive, got 0.0"),
        ("lora.dropout=1", "lora.dropout: must be in [0, 1), got 1.0"),
        ("hypernet.embed_dim=0", "hypernet.embed_dim: must be positive, got 0"),
        ("hypernet.hidden=-3", "hypernet.hidden: must be positive, got -3"),
        ("hypernet.init_std=-0.5", "hypernet.init_std: must be >= 0, got -0.5"),
        ("search.n_segments=0", "search: n_segments must be a positive integer; got 0"),
        ("search.candidates=-1", "search: candidates must be an integer >= 0; got -1"),
        ("search.pool_size=0", "search: pool_size must be a positive integer; got 0"),
        ("search.bits_range=[2.5, 4, 5]", "search.bits_range: expected a list of 2 items, got [2.5, 4, 5]"),
        ("search.loss_range=[1, 0.5]", "search: loss_range must be (lo, hi) with finite lo < hi; got (1.0, 0.5)"),
    ],
)
def test_a_bad_library_setting_names_its_yaml_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value) == message


def test_search_ranges_round_trip_as_yaml_lists(tmp_path):
    cfg = load_config(None, ["search.bits_range=[2.5, 4]", "search.loss_range=[0, 3]"])
    assert (cfg.search.bits_range, cfg.search.loss_range) == ((2.5, 4.0), (0.0, 3.0))
    text = dump_config(cfg)
    assert "bits_range:\n  - 2.5\n  - 4.0\n" in text  # a plain YAML list, as before
    assert load_config(write(tmp_path, text)) == cfg
    assert config_from_dict(cfg.to_dict()) == cfg  # a checkpoint's copy of the experiment


def test_search_section_lists_its_historical_keys_first():
    """A run's config.yaml keeps the keys (and order) it always had; the settings that became YAML keys
    when ``search`` turned into SearchSettings follow them."""
    keys = list(ExperimentConfig().to_dict()["search"])
    assert keys[:10] == ["method", "generator", "encoding", "kernel", "candidates", "n_segments", "bits_range",
                         "loss_range", "seed", "max_gp_points"]


def test_duplicate_keys_name_the_key_and_both_lines(tmp_path):
    p = write(tmp_path, "train:\n  steps: 3\nmodel:\n  name: tiny-bert\ntrain:\n  lr: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: duplicate key 'train' (lines 1 and 5)"
    p = write(tmp_path, "train:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: duplicate key 'train.lr' (lines 2 and 4)"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["space.options={bits: [2], bits: [4]}"])
    assert str(e.value) == "override 'space.options={bits: [2], bits: [4]}': duplicate key 'bits'"
    # A merge key followed by an explicit key is an override, not a duplicate.
    p = write(tmp_path, "lora:\n  <<: {rank: 4, alpha: 8.0}\n  rank: 2\n")
    assert (load_config(p).lora.rank, load_config(p).lora.alpha) == (2, 8.0)


@pytest.mark.parametrize("text", ["", "\n  \n", "# only a comment\n# and another\n"])
def test_empty_file_is_an_error(tmp_path, text):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=rf"^{p} is empty: "):
        load_config(p)
    assert load_config(None) == ExperimentConfig()  # no file at all: the defaults


@pytest.mark.parametrize(
    "written, number",
    [("1e-3", 0.001), ("1E5", 100000.0), ("+2", 2.0), ("-2.5E+3", -2500.0), (".5", 0.5), ("1.", 1.0),
     ("2.5e-4", 0.00025), ("1.e-2", 0.01)],
)
def test_every_written_number_is_a_number(tmp_path, written, number):
    assert parse_yaml(f"x: {written}\n", "t.yaml") == {"x": number}
    assert load_config(None, [f"train.lr={written.lstrip('-')}"]).train.lr == abs(number)


def test_lr_in_exponent_form_and_decimal_integers(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-3\n  steps: 010\n  log_every: 08\n"))
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert (cfg.train.steps, cfg.train.log_every) == (10, 8)  # YAML 1.2 decimals, not YAML 1.1 octal
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 0.001
    assert load_config(None, ["run.name=1e3x"]).run.name == "1e3x"  # not a number: stays a string


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", ".NaN"])
def test_non_finite_floats_are_refused_by_key(tmp_path, value):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"train:\n  lr: {value}\n"))
    assert str(e.value).startswith("train.lr: expected a finite number, got ")
    with pytest.raises(ConfigError, match=r"^eval\.budgets\[1\]: expected a finite number, got inf$"):
        load_config(None, ["eval.budgets=[3.0, .inf]"])
    with pytest.raises(ConfigError, match=r"^search\.loss_range\[1\]: expected a finite number, got nan$"):
        load_config(None, ["search.loss_range=[0, .nan]"])
    with pytest.raises(ConfigError, match=r"^model\.cache_gib: expected a finite number, got inf$"):
        load_config(None, ["model.cache_gib=.inf"])


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "-rf", " a", "a b", "a\x00b", "a\nb",
                                  "x" * 101, "_a", "ü"])
def test_run_name_must_be_one_plain_path_component(name):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"run": {"name": name}})
    assert str(e.value) == ("run.name: must be 1-100 letters, digits, '.', '_' or '-', starting with a letter "
                            f"or digit, got {name!r}")


@pytest.mark.parametrize("name", ["default", "study-minilm", "qwen2.5-3b-c4", "A_1", "x" * 100])
def test_plain_run_names_pass(name):
    assert config_from_dict({"run": {"name": name}}).run.name == name


def test_num_labels_is_bounded_before_a_head_of_that_size_is_built():
    """2**31 - 1 labels once filled 24 GB building the classifier head before anything objected."""
    from coalora.errors import ConfigError
    from coalora.pipeline.config import MAX_NUM_LABELS, load_config

    with pytest.raises(ConfigError, match=rf"model.num_labels: must be between 2 and {MAX_NUM_LABELS}"):
        load_config(None, ["model.num_labels=2147483647"])
    assert load_config(None, [f"model.num_labels={MAX_NUM_LABELS}"]).model.num_labels == MAX_NUM_LABELS
