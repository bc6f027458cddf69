"""User tables: CSV/TSV, JSONL (optionally compressed) and Parquet files read into examples."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import math
import zlib
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from coalora.data.example import Example
from coalora.errors import DataError

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
