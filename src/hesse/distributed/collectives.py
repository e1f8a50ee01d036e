"""Collectives for data-parallel curvature: sums of partial products that carry an error flag.

Data-parallel operators (Dean et al. 2012; the same scheme as PyTorch's DistributedDataParallel)
hold one shard ``D_r`` of the data per rank. The curvature of the mean loss over ``D = ∪ D_r`` is

    C = (1/N) Σ_r Σ_{b ∈ D_r} w_b C_b,     N = Σ_r |D_r|,

so each rank computes its partial sum and one all-reduce (sum) gives ``C v`` on every rank; the
weights use the *global* ``N``, which is why the sample count is all-reduced once at construction.

A failure on one rank must not leave the others waiting forever inside a collective. Every
collective here therefore carries one extra element, an error flag: a rank whose local work raised
contributes zeros and the flag 1 instead of its partial sum. After the reduction every rank sees
the flag; the ranks then exchange their messages (``all_gather_object``) and raise on all ranks —
the failing rank its own exception (with a note naming the rank), the others a
:class:`DistributedError` carrying the failing rank's message. Cost: one extra scalar per
all-reduce, and the message exchange only on failure.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .group import get_rank, get_world_size

__all__ = ["DistributedError", "all_reduce_sum", "sync_errors"]


class DistributedError(RuntimeError):
    """Another rank failed; the message is that rank's error. Raised on the ranks that did not fail."""


def all_reduce_sum(tensor: torch.Tensor | None, group: Any, error: BaseException | None = None,
                   like: torch.Tensor | None = None) -> torch.Tensor:
    """Sum ``tensor`` over the ranks of ``group`` and raise on every rank if any rank failed.

    ``error`` is this rank's exception, if its local work raised (then ``tensor`` may be ``None``
    and ``like`` gives the shape, dtype and device the other ranks use). One collective of
    ``tensor.numel() + 1`` elements.
    """
    ref = tensor if tensor is not None else like
    if ref is None:
        raise TypeError("all_reduce_sum needs tensor or like (shape, dtype and device of the sum).")
    buf = torch.zeros(ref.numel() + 1, dtype=ref.dtype, device=ref.device)
    if error is None:
        if tensor is None:
            raise TypeError("all_reduce_sum needs tensor when this rank has no error to report.")
        buf[:-1] = tensor.reshape(-1)
    else:
        buf[-1] = 1
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    if float(buf[-1]) != 0.0:
        _raise_collected(error, group)
    return buf[:-1].reshape(ref.shape)


def sync_errors(error: BaseException | None, group: Any) -> None:
    """Raise on every rank if any rank passes an ``error`` (one scalar all-reduce otherwise)."""
    flag = torch.tensor([0.0 if error is None else 1.0], dtype=torch.float64, device=_device(group))
    dist.all_reduce(flag, op=dist.ReduceOp.SUM, group=group)
    if float(flag[0]) != 0.0:
        _raise_collected(error, group)


def _device(group: Any) -> torch.device:
    backend = dist.get_backend(group)
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _raise_collected(error: BaseException | None, group: Any) -> None:
    rank, world = get_rank(group), get_world_size(group)
    text = None if error is None else f"{type(error).__name__}: {error}"
    messages: list[Any] = [None] * world
    dist.all_gather_object(messages, text, group=group)
    failed = [(r, m) for r, m in enumerate(messages) if m is not None]
    if error is not None:
        others = [r for r, _ in failed if r != rank]
        note = f"(raised on rank {rank} of {world}"
        note += f"; ranks {others} failed too)" if others else ")"
        if hasattr(error, "add_note"):
            error.add_note(note)
        raise error
    first_rank, first_message = failed[0] if failed else (-1, "unknown error")
    ranks = ", ".join(str(r) for r, _ in failed)
    raise DistributedError(
        f"rank {first_rank} of {world} failed (failing ranks: {ranks}); stopping rank {rank} "
        f"too. Its error: {first_message}"
    )
