"""Data-parallel reduction of a model operator's sums over the ranks' data shards.

Each rank computes its partial sum (weighted with the global sample count); one all-reduce adds
them. An error on any rank is carried by the same collective (see
:mod:`hesse.distributed.collectives`), so every rank raises it and none waits forever.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch

from .. import distributed as _dist

T = TypeVar("T")


class DataParallelReduction:
    """Sums over the ranks of ``group`` (``None``: a local operator, sums are the local ones)."""

    def __init__(self, distributed: Any):
        self.group = _dist.resolve_group(distributed)

    @property
    def active(self) -> bool:
        return self.group is not None

    @property
    def world_size(self) -> int:
        return 1 if self.group is None else _dist.get_world_size(self.group)

    def run(self, compute: Callable[[], T], like: torch.Tensor) -> T:
        """``compute()`` on this rank; if it raises on a data-parallel operator, the error is sent
        through a collective shaped as ``like`` (the shape of the reduction that follows) so the
        other ranks raise too, then re-raised here."""
        if self.group is None:
            return compute()
        try:
            return compute()
        except Exception as err:
            _dist.all_reduce_sum(None, self.group, error=err, like=like)
            raise

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over the ranks (``tensor`` itself for a local operator)."""
        if self.group is None:
            return tensor
        return _dist.all_reduce_sum(tensor, self.group)

    def announce(self, text: str, stacklevel: int = 4) -> None:
        _dist.announce_once(self.group, text, _dist.DataParallelNotice, stacklevel=stacklevel)
