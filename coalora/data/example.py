"""One example of text data, and exact de-duplication."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Example:
    """One text (or text pair, e.g. question + sentence) with an optional integer class label
    (None for language-modelling text)."""

    text: str
    label: int | None = None
    text_pair: str | None = None


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
