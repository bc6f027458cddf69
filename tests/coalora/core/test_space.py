"""Configuration space: discovery, exact bits accounting, representations, sampling, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn as nn

from coalora.core.space import (
    BITS_ONLY_OPTIONS,
    MINILM_L6_SHAPES,
    ROBERTA_LARGE_SHAPES,
    QuantOption,
    QuantSpace,
    TargetMatrix,
    find_target_matrices,
    option_storage_bits,
    parse_layer_index,
    space_from_shapes,
)
from coalora.errors import SpaceError

NF4_DQ = dict(bits=4, scale_bits=8, scale2_dtype="fp32", block=64, block2=256)
MIN_OPT = dict(bits=2, scale_bits=2, scale2_dtype="bf16", block=64, block2=256)


def minilm_like_space() -> QuantSpace:
    return space_from_shapes(6, MINILM_L6_SHAPES)


def test_nf4_double_quant_is_4127_bits():
    # 4 + 8/64 + 32/(64·256) = 4.126953125
    assert option_storage_bits(4, 8, "fp32", 64, 256) == pytest.approx(4.126953125, abs=0)
    assert QuantOption(**NF4_DQ).storage_bits == pytest.approx(4.127, abs=5e-4)


def test_attainable_range_of_default_space():
    s = minilm_like_space()
    # min: 2 + 2/64 + 16/(64·256); max: 8 + 8/16 + 32/(16·16)
    assert s.min_bits == 2 + 2 / 64 + 16 / (64 * 256) == 2.0322265625
    assert s.max_bits == 8.625
    assert s.n_options == 432


def test_hand_made_minilm_configuration_average_bits():
    s = minilm_like_space()
    cfg = s.from_json(
        {m.name: (NF4_DQ if m.module_type.startswith("attention") else MIN_OPT) for m in s.matrices}
    )
    # Per layer: 4 × 384² at 4.126953125 and 2 × 1536·384 (twice the size) at 2.0322265625 → (4.127 + 2·2.032)/3.
    assert s.average_bits(cfg) == pytest.approx((4.126953125 + 2 * 2.0322265625) / 3, abs=1e-12)
    assert s.average_bits(cfg) == pytest.approx(2.73046875, abs=1e-12)


def test_average_bits_batched_matches_single():
    s = minilm_like_space()
    batch = s.sample(np.random.default_rng(0), 7)
    got = s.average_bits(batch)
    assert got.shape == (7,)
    for b, c in zip(got, batch):
        assert b == pytest.approx(s.average_bits(c))


def test_roberta_large_shapes_total_params_and_dims():
    s = space_from_shapes(24, ROBERTA_LARGE_SHAPES)
    assert s.n_matrices == 144
    assert s.total_params == 301_989_888
    assert s.n_matrices * 5 == 720


def test_json_round_trip_and_stable_id():
    s = minilm_like_space()
    cfg = s.sample(np.random.default_rng(1), 1)[0]
    j = s.to_json(cfg)
    assert list(j) == [m.name for m in s.matrices]
    back = s.from_json(j)
    np.testing.assert_array_equal(back, cfg)
    assert s.config_id(cfg) == s.config_id(back)
    assert len(s.config_id(cfg)) == 12
    other = cfg.copy()
    other[0, 0] = (other[0, 0] + 1) % 4
    assert s.config_id(other) != s.config_id(cfg)
    # The id is stable across processes: it depends only on the space and the indices.
    fresh = minilm_like_space()
    assert fresh.config_id(cfg) == s.config_id(cfg)


def test_validation_messages():
    s = minilm_like_space()
    good = s.to_json(s.uniform(NF4_DQ))
    with pytest.raises(SpaceError, match="not a target matrix"):
        s.from_json({**good, "encoder.layer.9.attention.self.query": NF4_DQ})
    bad = dict(good)
    bad[s.matrices[3].name] = {**NF4_DQ, "bits": 5}
    with pytest.raises(SpaceError, match=r"bits=5 .* not in its option list \[2, 3, 4, 8\]"):
        s.from_json(bad)
    partial = dict(list(good.items())[:-1])
    with pytest.raises(SpaceError, match="names 35 of 36"):
        s.from_json(partial)
    with pytest.raises(SpaceError, match=r"shape \(35, 5\)"):
        s.validate(np.zeros((35, 5), dtype=int))
    arr = np.zeros((36, 5), dtype=int)
    arr[2, 2] = 3
    with pytest.raises(SpaceError, match="scale2_dtype"):
        s.validate(arr)
    with pytest.raises(SpaceError, match="unknown knob"):
        s.from_json({**good, s.matrices[0].name: {**NF4_DQ, "group": 3}})


def test_budget_check_names_range():
    s = minilm_like_space()
    # The range is printed exactly (repr): a rounded "2.0322" would look attainable and be refused.
    assert s.attainable_range() == "[2.0322265625, 8.625]"
    with pytest.raises(SpaceError) as e:
        s.check_budget(1.5)
    assert str(e.value) == "budget 1.5 bits is below this space's attainable range [2.0322265625, 8.625]"
    with pytest.raises(SpaceError) as e:
        s.check_budget(2.0322, key="--budget")
    assert str(e.value) == "--budget: 2.0322 bits is below this space's attainable range [2.0322265625, 8.625]"
    with pytest.raises(SpaceError, match=r"^budget nan bits is not a finite number"):
        s.check_budget(float("nan"))
    assert s.check_budget(3.0) == 3.0
    assert s.check_budget(float("2.0322265625")) == s.min_bits  # the printed lower end is attainable
    assert s.check_budget(20.0) == 20.0  # a budget is an upper bound: above max_bits is the best configuration


def test_bits_range_check_names_the_end_and_range():
    s = minilm_like_space()
    assert s.check_bits_range([2.5, 4]) == (2.5, 4.0)
    assert s.check_bits_range((2.0322265625, 8.625)) == (s.min_bits, s.max_bits)
    with pytest.raises(SpaceError) as e:
        s.check_bits_range([2.0, 4.0], key="eval.random_bits")
    assert str(e.value) == ("eval.random_bits: low end 2.0 bits is below this space's attainable range "
                            "[2.0322265625, 8.625]")
    with pytest.raises(SpaceError) as e:
        s.check_bits_range([2.5, 8.63], key="search.bits_range")
    assert str(e.value) == ("search.bits_range: high end 8.63 bits is above this space's attainable range "
                            "[2.0322265625, 8.625]")
    with pytest.raises(SpaceError, match=r"^bits range \[4\.0, 3\.0\] is not \[low, high\]"):
        s.check_bits_range([4.0, 3.0])


def test_restricted_bits_only_space():
    s = space_from_shapes(2, {"q": (64, 64)}, options=BITS_ONLY_OPTIONS)
    assert s.n_options == 4
    assert list(s.cardinalities) == [4, 1, 1, 1, 1]
    assert sorted(s.option_bits) == pytest.approx([b + 8 / 64 + 32 / (64 * 256) for b in (2, 3, 4, 8)])


def test_extra_widths_and_int_family():
    s = space_from_shapes(1, {"q": (64, 64)}, options={"bits": (2, 3, 4, 5, 6, 8)}, family="int")
    assert s.family == "int"
    assert s.cardinalities[0] == 6
    with pytest.raises(SpaceError, match="family"):
        space_from_shapes(1, {"q": (64, 64)}, family="fp")
    with pytest.raises(SpaceError, match="unknown knob"):
        space_from_shapes(1, {"q": (64, 64)}, options={"bitz": (2,)})
    with pytest.raises(SpaceError, match="between 1 and 8"):
        space_from_shapes(1, {"q": (64, 64)}, options={"bits": (16,)})


def test_sample_near_hits_target():
    s = minilm_like_space()
    rng = np.random.default_rng(0)
    for target in (2.5, 3.0, 4.0, 6.0):
        cfgs = s.sample_near(target, rng, n=4, tol=0.05)
        assert np.all(np.abs(s.average_bits(cfgs) - target) <= 0.05)
    with pytest.raises(SpaceError, match=r"^target 9\.0 bits is outside this space's attainable range "
                                         r"\[2\.0322265625, 8\.625\]$"):
        s.sample_near(9.0, rng)


def test_sample_near_with_a_weight_bits_floor_keeps_every_matrix_at_or_above_it():
    s = minilm_like_space()
    rng = np.random.default_rng(0)
    bits_of = np.asarray(s.options["bits"])
    for target in (3.25, 3.5, 4.0):
        cfgs = s.sample_near(target, rng, n=4, tol=0.05, min_weight_bits=3)
        assert np.all(np.abs(s.average_bits(cfgs) - target) <= 0.05)
        assert bits_of[cfgs[..., 0]].min() >= 3  # no matrix at 2 bits
    # Without the floor, the same targets do put some matrices at 2 bits (what the floor is for).
    free = s.sample_near(3.25, np.random.default_rng(0), n=4, tol=0.05)
    assert bits_of[free[..., 0]].min() == 2
    # The floor raises the attainable low end to 3 + 2/64 + 16/(64·256) bits; the message gives it.
    with pytest.raises(SpaceError, match=r"^target 3\.0 bits is outside this space's attainable range with every "
                                         r"matrix at >= 3 weight bits \[3\.0322265625, 8\.625\]$"):
        s.sample_near(3.0, rng, min_weight_bits=3)
    with pytest.raises(SpaceError, match=r"^no option has 16 or more weight bits \(bits options: \[2, 3, 4, 8\]\)$"):
        s.sample_near(5.0, rng, min_weight_bits=16)


def test_a_floor_below_every_option_changes_nothing():
    s = minilm_like_space()
    a = s.sample_near(3.0, np.random.default_rng(7), n=3)
    b = s.sample_near(3.0, np.random.default_rng(7), n=3, min_weight_bits=2)
    np.testing.assert_array_equal(a, b)


def test_sampling_is_seeded():
    s = minilm_like_space()
    a = s.sample_near(3.0, np.random.default_rng(7), n=3)
    b = s.sample_near(3.0, np.random.default_rng(7), n=3)
    np.testing.assert_array_equal(a, b)


def test_neighbours_are_single_knob_steps():
    s = space_from_shapes(1, {"q": (64, 64), "k": (64, 64)})
    cfg = s.from_json({"encoder.layer.0.q": NF4_DQ, "encoder.layer.0.k": MIN_OPT})
    nbs = s.neighbours(cfg)
    diffs = np.abs(nbs - cfg).sum(axis=(1, 2))
    assert np.all(diffs == 1)
    # q: bits idx 2 (±1), scale_bits idx 3 (−1), dtype idx 2 (−1), block idx 2 (−1), block2 idx 2 (−1) → 6
    # k: bits idx 0 (+1), scale_bits idx 0 (+1), dtype idx 0 (+1), block idx 2 (−1), block2 idx 2 (−1) → 5
    assert len(nbs) == 11


def test_layer_index_parsing_any_naming():
    assert parse_layer_index("bert.encoder.layer.11.attention.self.query") == 11
    assert parse_layer_index("model.layers.29.mlp.down_proj") == 29
    assert parse_layer_index("transformer.h.3.attn.c_attn") == 3
    assert parse_layer_index("classifier") is None
    assert parse_layer_index("model.layers_norm") is None


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 8)
        self.mlp = nn.Linear(8, 16)


class _Deep(nn.Module):
    """40 blocks: past any fixed-size table of 32 layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList([_Block() for _ in range(40)])
        self.lm_head = nn.Linear(8, 10)


def test_discovery_order_depth_and_exclusions():
    mats = find_target_matrices(_Deep())
    assert len(mats) == 80
    assert mats[0].name == "layers.0.attn" and mats[1].name == "layers.0.mlp"
    assert mats[-1].layer == 39 and mats[-1].shape == (16, 8)
    assert all("lm_head" not in m.name for m in mats)
    only_attn = find_target_matrices(_Deep(), target_patterns=[r"^attn$"])
    assert len(only_attn) == 40


def test_discovery_on_tiny_hf_models():
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    bert = BertForSequenceClassification(
        BertConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128, vocab_size=50)
    )
    s = QuantSpace.from_model(bert)
    assert s.n_matrices == 18  # 3 layers × 6; pooler and classifier excluded
    assert [m.module_type for m in s.matrices[:6]] == [
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    ]
    llama = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=50, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        )
    )
    s = QuantSpace.from_model(llama)
    assert s.n_matrices == 14
    assert s.matrices[1].shape == (32, 64)  # k_proj: 2 KV heads × 16
    assert s.matrices[7].layer == 1
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=50, bos_token_id=0, eos_token_id=0))
    s = QuantSpace.from_model(gpt2)
    assert s.n_matrices == 8
    c_attn = s.matrices[0]
    assert c_attn.transposed and c_attn.shape == (192, 64)  # Conv1D stores (in, out); we report (out, in)


def test_signature_round_trip_and_mismatch_messages():
    s = minilm_like_space()
    again = QuantSpace.from_signature(s.signature())
    assert again.fingerprint() == s.fingerprint()
    s.check_same(s.signature())
    other_model = space_from_shapes(2, {"q": (64, 64)})
    with pytest.raises(SpaceError, match="another model"):
        s.check_same(other_model.signature(), what="checkpoint")
    other_space = QuantSpace(s.matrices, options=BITS_ONLY_OPTIONS)
    with pytest.raises(SpaceError, match="another configuration space"):
        s.check_same(other_space.signature(), what="state file")


def test_empty_space_is_an_error():
    with pytest.raises(SpaceError, match="no target matrices"):
        QuantSpace([])
    with pytest.raises(SpaceError, match="duplicate"):
        QuantSpace([TargetMatrix("a", 0, "q", (4, 4)), TargetMatrix("a", 0, "q", (4, 4))])
