"""The saved state of a search: ``search.json`` (settings, space, counters, sets) beside ``archive.parquet``.

``archive.parquet`` is :meth:`coalora.search.archive.Archive.table` (the run directory's column names,
``avg_bits`` and ``knobs``). Version 1 states named those two columns ``bits`` and ``config``; they are
still read, with the columns renamed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coalora.errors import SearchError
from coalora.search.settings import SearchSettings

STATE_VERSION = 2
STATE_JSON = "search.json"
ARCHIVE_PARQUET = "archive.parquet"
# Version 1's archive column names → today's.
V1_COLUMNS: dict[str, str] = {"bits": "avg_bits", "config": "knobs"}


@dataclass
class SearchState:
    """What ``search.json`` holds besides the archive.

    Attributes:
        space: the space's signature (:meth:`QuantSpace.signature`).
        settings: :class:`SearchSettings` as a dict.
        bounds: :meth:`ObjectiveBounds.as_dict`, or None before the first finite observation.
        round: the current round.
        propose_calls: proposals made so far (call ``j`` uses ``default_rng([seed, j])``).
        train: config ids of the training set, in order (None before the first selection).
        since_select: config ids observed since the last selection, in order, with repeats.
        pending: proposals not observed yet, each the flattened ``N·5`` index list.
        history: one dict per closed round.
        version: the format version read (:data:`STATE_VERSION` when written).
    """

    space: dict[str, Any]
    settings: dict[str, Any]
    bounds: dict[str, Any] | None
    round: int
    propose_calls: int
    train: list[str] | None
    since_select: list[str]
    pending: list[list[int]]
    history: list[dict[str, Any]]
    version: int = STATE_VERSION

    def search_settings(self, where: str) -> SearchSettings:
        """The saved :class:`SearchSettings` (ranges back to tuples), not validated yet.

        Raises:
            SearchError: a setting this version does not know.
        """
        st = dict(self.settings)
        for name in ("bits_range", "loss_range"):
            if st.get(name) is not None:
                st[name] = tuple(st[name])
        try:
            return SearchSettings(**st)
        except TypeError as e:
            raise SearchError(f"search state {where!r} has settings this version does not know: {e}") from None


def write_state(path: str | Path, state: SearchState, archive: Any) -> Path:
    """Write ``path/archive.parquet`` (``archive``: a ``pyarrow.Table``) and ``path/search.json``."""
    import pyarrow.parquet as pq

    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    pq.write_table(archive, d / ARCHIVE_PARQUET)
    fields = asdict(state)
    version = fields.pop("version")
    (d / STATE_JSON).write_text(json.dumps({"version": version, **fields}, indent=1))
    return d


def read_state(path: str | Path) -> SearchState:
    """Read ``path/search.json`` (version 1 or 2).

    Raises:
        SearchError: missing files, invalid JSON, an unknown version.
        KeyError: a field missing.
    """
    d = Path(path)
    if not (d / STATE_JSON).is_file() or not (d / ARCHIVE_PARQUET).is_file():
        raise SearchError(f"no search state in {str(d)!r}: expected {STATE_JSON} and {ARCHIVE_PARQUET}")
    try:
        state = json.loads((d / STATE_JSON).read_text())
    except json.JSONDecodeError as e:
        raise SearchError(f"search state {str(d / STATE_JSON)!r} is not valid JSON: {e}") from None
    if not isinstance(state, dict):
        raise SearchError(f"search state {str(d / STATE_JSON)!r} is not a JSON object")
    version = state.get("version")
    if isinstance(version, bool) or version not in (1, STATE_VERSION):
        raise SearchError(f"search state version {version!r} is not 1 or {STATE_VERSION}")
    return SearchState(state["space"], state["settings"], state["bounds"], int(state["round"]),
                       int(state["propose_calls"]), state["train"], state["since_select"], state["pending"],
                       list(state["history"]), version)


def read_archive(path: str | Path, version: int) -> list[dict[str, Any]]:
    """The rows of ``path/archive.parquet`` as dicts with today's column names."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path) / ARCHIVE_PARQUET)
    if version == 1:
        table = table.rename_columns([V1_COLUMNS.get(c, c) for c in table.column_names])
    return table.to_pylist()
