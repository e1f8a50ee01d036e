"""Autograd graphs kept between products, per batch, within one byte budget.

A model operator's product needs, per batch, an autograd graph: the first backward's graph for a
Hessian-vector product, the outputs and a dummy vector-Jacobian product for a Gauss-Newton product.
Building it is a forward (and a backward) pass; keeping it makes later products cheaper. The
:class:`GraphCache` holds these graphs, keyed by batch index, while their saved tensors fit in
``budget`` bytes (counted with ``torch.autograd.graph.saved_tensors_hooks``, each storage once).
Anything that changes how the graphs would be built (the attention fallback) clears it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

DEFAULT_GRAPH_MEMORY = 2 * 1024**3


class SavedBytes:
    """Counts the bytes autograd saves for backward (``torch.autograd.graph.saved_tensors_hooks``),
    each storage once."""

    def __init__(self) -> None:
        self.bytes = 0
        self._seen: set[int] = set()

    def hooks(self) -> Any:
        def pack(t: torch.Tensor) -> torch.Tensor:
            try:
                key = t.untyped_storage().data_ptr()
                if key not in self._seen:
                    self._seen.add(key)
                    self.bytes += t.untyped_storage().nbytes()
            except (RuntimeError, NotImplementedError):
                self.bytes += t.numel() * t.element_size()
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


class GraphCache:
    """Per-batch graphs within ``budget`` bytes (``None``: 2 GiB); ``enabled=False`` keeps none."""

    def __init__(self, budget: int | None = None, enabled: bool = True):
        self.budget = DEFAULT_GRAPH_MEMORY if budget is None else int(budget)
        if self.budget < 0:
            raise ValueError(f"graph_memory must be a number of bytes >= 0, got {budget!r}.")
        self.enabled = enabled
        self.bytes = 0
        self._entries: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, index: int) -> Any | None:
        return self._entries.get(index)

    def has_room(self) -> bool:
        """Worth building a graph to keep: enabled and the budget not yet used up."""
        return self.enabled and self.bytes < self.budget

    def offer(self, index: int, entry: Any, nbytes: int) -> bool:
        """Keep ``entry`` for batch ``index`` if it fits in the budget; True if kept."""
        if not self.enabled or self.bytes + nbytes > self.budget:
            return False
        self._entries[index] = entry
        self.bytes += nbytes
        return True

    def covers(self, indices: Iterable[int]) -> bool:
        """Every batch in ``indices`` has its graph (so a product need not touch the data)."""
        keys = list(indices)
        return bool(self._entries) and all(i in self._entries for i in keys)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Neither use nor keep graphs inside (each product rebuilds them); restored after."""
        entries, nbytes, enabled = self._entries, self.bytes, self.enabled
        self._entries, self.bytes, self.enabled = {}, 0, False
        try:
            yield
        finally:
            self._entries, self.bytes, self.enabled = entries, nbytes, enabled
