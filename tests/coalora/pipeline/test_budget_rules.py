"""One budget rule for every setting in bits: below the attainable range is an error that prints the range
exactly; a budget above it is the best configuration; a range of bits must lie inside it."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import pytest

from coalora.cli import main
from coalora.core.space import BITS_ONLY_OPTIONS, space_from_shapes
from coalora.errors import ConfigError, SearchError, SpaceError
from coalora.pipeline.config import ExperimentConfig, check_bits_settings, config_from_dict, load_config, options_space
from coalora.pipeline.experiment import build_space, initial_trainset, random_configs
from coalora.search.pareto_search import ParetoSearch
from coalora.search.settings import SearchSettings
from tests.coalora._tiny import tiny_bert

REPO = Path(__file__).resolve().parents[3]
FULL = "[2.0322265625, 8.625]"  # min: 2 + 2/64 + 16/(64·256); max: 8 + 8/16 + 32/(16·16)
BITS_ONLY = "[2.126953125, 8.126953125]"  # 2 or 8 bits + 8/64 + 32/(64·256)


def cfg_with(**sections) -> ExperimentConfig:
    """A valid configuration with ``sections``' settings put in afterwards, unchecked (load_config
    would refuse the bad ones first, see test_load_config_applies_the_rule)."""
    cfg = config_from_dict({"model": {"name": "tiny-bert"}})
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def small_space(options=None):
    return space_from_shapes(2, {"q": (64, 64), "up": (128, 64)}, options=options)


def test_defaults_pass_on_both_presets():
    check_bits_settings(ExperimentConfig(), small_space())
    check_bits_settings(ExperimentConfig(), small_space(BITS_ONLY_OPTIONS))
    assert small_space().attainable_range() == FULL
    assert small_space(BITS_ONLY_OPTIONS).attainable_range() == BITS_ONLY


@pytest.mark.parametrize(
    "sections, message",
    [
        ({"train": {"init_budgets": [1.0]}},
         f"train.init_budgets[0]: 1.0 bits is below this space's attainable range {FULL}"),
        ({"train": {"init_budgets": [3.0, 2.03]}},
         f"train.init_budgets[1]: 2.03 bits is below this space's attainable range {FULL}"),
        ({"eval": {"budgets": [3.0, 2.0]}},
         f"eval.budgets[1]: 2.0 bits is below this space's attainable range {FULL}"),
        ({"eval": {"random_bits": [2.0, 4.0]}},
         f"eval.random_bits: low end 2.0 bits is below this space's attainable range {FULL}"),
        ({"eval": {"random_bits": [2.5, 9.0]}},
         f"eval.random_bits: high end 9.0 bits is above this space's attainable range {FULL}"),
        ({"search": {"bits_range": [2.0, 7.25]}},
         f"search.bits_range: low end 2.0 bits is below this space's attainable range {FULL}"),
        ({"search": {"bits_range": [2.25, 8.7]}},
         f"search.bits_range: high end 8.7 bits is above this space's attainable range {FULL}"),
    ],
)
def test_every_bits_setting_names_its_key_and_the_exact_range(sections, message):
    with pytest.raises(SpaceError) as e:
        check_bits_settings(cfg_with(**sections), small_space())
    assert str(e.value) == message
    with pytest.raises(SpaceError) as e:  # no space: the range of cfg.space's option lists
        check_bits_settings(cfg_with(**sections))
    assert str(e.value) == message


def test_load_config_applies_the_rule(tmp_path):
    # Before any model loads: the attainable range depends only on the option lists.
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  init_budgets: [2.5, 1.0]\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"train.init_budgets[1]: 1.0 bits is below this space's attainable range {FULL}"
    with pytest.raises(ConfigError) as e:
        load_config(None, ["search.bits_range=[2.25, 9]"])
    assert str(e.value) == f"search.bits_range: high end 9.0 bits is above this space's attainable range {FULL}"
    # Narrower option lists narrow the range, and the default budgets (from 2.25 bits) fall below it.
    with pytest.raises(ConfigError) as e:
        load_config(None, ["space.options={bits: [3, 4]}"])
    assert str(e.value) == ("train.init_budgets[0]: 2.25 bits is below this space's attainable range "
                            "[3.0322265625, 4.625]")
    with pytest.raises(ConfigError, match=r"^space\.options: option 16 for 'bits' must be between 1 and 8 bits$"):
        load_config(None, ["space.options={bits: [16]}"])
    assert options_space(load_config(None)).attainable_range() == FULL


def test_bits_only_preset_has_its_own_range():
    cfg = cfg_with(space={"preset": "bits-only"}, eval={"budgets": [2.1]})
    with pytest.raises(SpaceError) as e:
        check_bits_settings(cfg, small_space(cfg.space.option_lists()))
    assert str(e.value) == f"eval.budgets[0]: 2.1 bits is below this space's attainable range {BITS_ONLY}"


def test_budgets_above_the_range_and_range_ends_on_it_are_fine():
    cfg = cfg_with(train={"init_budgets": [2.0322265625, 100.0]},
                   eval={"budgets": [9.0], "random_bits": [2.0322265625, 8.625]},
                   search={"bits_range": [2.0322265625, 8.625]})
    check_bits_settings(cfg, small_space())


def test_build_space_checks_the_settings():
    # Every process (CLI training, per-config, evaluator actors, Ray Train workers, the driver's loop)
    # builds its space here, so none of them can start on an impossible setting.
    with pytest.raises(SpaceError, match=r"^train\.init_budgets\[0\]: 1\.0 bits is below this space's attainable "
                                         r"range \[2\.0322265625, 8\.625\]$"):
        build_space(cfg_with(train={"init_budgets": [1.0]}), tiny_bert())
    assert build_space(cfg_with(), tiny_bert()).n_matrices == 12


def test_initial_trainset_refuses_instead_of_clipping():
    space = small_space(BITS_ONLY_OPTIONS)
    err = np.tile(2.0 ** -space.option_bits, (space.n_matrices, 1))  # more bits, less error
    with pytest.raises(SpaceError) as e:
        initial_trainset(cfg_with(train={"init_budgets": [3.0, 1.0]}), space, err)
    assert str(e.value) == f"train.init_budgets[1]: 1.0 bits is below this space's attainable range {BITS_ONLY}"
    # Above max_bits: the best configuration (here the widest one), not an error.
    top = initial_trainset(cfg_with(train={"init_budgets": [100.0]}), space, err)
    assert space.average_bits(top).tolist() == [8.126953125]


def test_random_configs_check_their_range():
    cfg = cfg_with(eval={"random": 2, "random_bits": [2.5, 9.0]})
    with pytest.raises(SpaceError, match=r"^eval\.random_bits: high end 9\.0 bits is above this space's attainable "
                                         r"range \[2\.0322265625, 8\.625\]$"):
        random_configs(cfg, small_space())


def test_search_bits_range_must_lie_in_the_space():
    with pytest.raises(SearchError) as e:
        ParetoSearch(small_space(), SearchSettings(bits_range=(2.25, 9.0)))
    assert str(e.value) == f"bits_range: high end 9.0 bits is above this space's attainable range {FULL}"
    assert ParetoSearch(small_space(), SearchSettings(bits_range=(2.25, 7.25))).bits_range == (2.25, 7.25)


def experiment_files() -> list[Path]:
    """The shipped experiment files (``sweep-*.yaml`` are sweeps over a base experiment, read by
    orchestration/sweep.py, which loads every trial with load_config)."""
    files = sorted((REPO / "configs").glob("*.yaml")) + sorted((REPO / "configs" / "study").glob("*.yaml"))
    return [p for p in files if not p.name.startswith("sweep-")]


@pytest.mark.parametrize("path", experiment_files(), ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_configs_fit_their_spaces(path):
    cfg = load_config(path)
    # The attainable range depends only on the option lists, not on the model's matrices.
    check_bits_settings(cfg, small_space(cfg.space.option_lists()))


@pytest.fixture(scope="module")
def reviews(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("budget_cli")
    rnd = random.Random(0)
    with open(d / "reviews.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(40):
            w.writerow([" ".join(rnd.choices("good bad fine dull".split(), k=4)), rnd.randint(0, 1)])
    (d / "tiny.yaml").write_text(
        f"model: {{name: tiny-bert}}\n"
        f"data: {{name: {d / 'reviews.csv'}, max_length: 8, batch_size: 8, eval_batch_size: 8}}\n"
        "lora: {rank: 2, alpha: 4}\n"
        "train: {steps: 1, warmup_steps: 0}\n"
    )
    return d


def test_cli_train_refuses_a_budget_below_the_range(reviews, tmp_path, capsys):
    out = tmp_path / "coa"
    assert main(["train", "--config", str(reviews / "tiny.yaml"), "--set", "train.init_budgets=[2.5, 1.0]",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"coalora: error: train.init_budgets[1]: 1.0 bits is below this space's attainable range {FULL}"
    assert not out.exists()


def test_cli_budget_uses_the_same_rule(reviews, tmp_path, capsys):
    ck = tmp_path / "fp"
    assert main(["train", "--config", str(reviews / "tiny.yaml"), "--method", "fp-lora", "--out", str(ck),
                 "--quiet"]) == 0
    capsys.readouterr()
    for argv in (["adapt", "--checkpoint", str(ck), "--budget", "1.0", "--out", str(tmp_path / "a")],
                 ["evaluate", "--checkpoint", str(ck), "--budget", "3.0", "1.0", "--quiet"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("coalora: error: ") and "Traceback" not in err
        assert err.endswith(f"1.0 bits is below this space's attainable range {FULL}")
    assert not (tmp_path / "a").exists()


def test_random_min_bits_floor_is_checked_against_the_range_and_used_for_the_held_out_set():
    cfg = config_from_dict({"eval": {"random": 4, "random_bits": [3.25, 4.0], "random_min_bits": 3}})
    check_bits_settings(cfg, small_space())
    cfgs = random_configs(cfg, small_space())
    space = small_space()
    assert np.asarray(space.options["bits"])[cfgs[..., 0]].min() >= 3
    assert np.all(np.abs(space.average_bits(cfgs) - np.linspace(3.25, 4.0, 4)) <= 0.05)
    # Loading the configuration checks it (against the options' range): one message naming both keys.
    with pytest.raises(ConfigError) as e:
        config_from_dict({"eval": {"random_bits": [2.5, 4.0], "random_min_bits": 3}})
    assert str(e.value) == ("eval.random_bits: low end 2.5 bits is below 3.0322265625, the fewest bits a configuration "
                            "with every matrix at >= 3.0 weight bits (eval.random_min_bits) can have")
    with pytest.raises(ConfigError, match=r"^eval\.random_min_bits: no option has 16\.0 or more weight bits"):
        config_from_dict({"eval": {"random_min_bits": 16}})
