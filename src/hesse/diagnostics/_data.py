"""Data read more than once by the diagnostics (monitor checks, landscape slices, reports)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def read_once(data: Any) -> Any:
    """A one-shot iterator (e.g. a generator) read into a list; anything else unchanged.

    The data protocol allows generators, and the operators read one into a list themselves, but
    the diagnostics build several operators (and loss evaluations) over the same data: each would
    start from the iterator's current position, the second one from an exhausted iterator.
    """
    if isinstance(data, Iterator):
        return list(data)
    return data
