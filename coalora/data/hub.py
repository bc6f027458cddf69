"""Hugging Face hub data sets (GLUE, C4 on a cluster), read with ``datasets``; needs the hub."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from coalora.data.example import Example
from coalora.data.registry import DATASET_REGISTRY
from coalora.data.tables import _rows_to_examples
from coalora.errors import DataError
from coalora.io import install_command

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
