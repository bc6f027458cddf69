"""Helpers of the study driver's tests."""

from __future__ import annotations

from pathlib import Path

from benchmarks.studylib.runner import Study


def study_in(tmp_path: Path) -> Study:
    """A Study whose runs and results are under ``tmp_path`` (its commands still run in the repository)."""
    return Study(quick=False, overrides=[], root=tmp_path)


def write_csv(path: Path, header: str, *rows: str) -> None:
    path.write_text("\n".join([header, *rows]) + "\n")
