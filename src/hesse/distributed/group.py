"""Process groups: which group an operator reduces over, this process's rank, printing once.

hesse scales over ``torch.distributed`` (any backend: ``gloo`` on CPU, ``nccl`` on GPU) and never
starts processes itself: the user (or ``torchrun``) does, and initializes the default group.
A model operator built while a default group is initialized is data-parallel unless built with
``distributed=False``; ``distributed=<group>`` picks another group.

Layering: this package imports only torch, so ``hesse.operators`` may import it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "resolve_group",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "is_main_process",
    "print_once",
    "launched_by_torchrun",
    "init_from_env",
    "shard",
    "torchrun_session",
    "announce_once",
]

# groups already announced in this process (ids): "says so once" per group, not per operator, so
# a monitor that builds an operator every few steps does not repeat it
_ANNOUNCED: set[int] = set()


def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and a default process group is initialized."""
    return bool(dist.is_available() and dist.is_initialized())


def resolve_group(distributed: Any) -> Any:
    """The process group an operator reduces over, or ``None`` for a local operator.

    ``distributed``: ``None`` (auto: the default group when one is initialized, else local),
    ``False`` (local even on an initialized group), ``True`` (the default group; it must be
    initialized) or a ``torch.distributed.ProcessGroup``.
    """
    if distributed is None:
        return dist.group.WORLD if is_initialized() else None
    if distributed is False:
        return None
    if distributed is True:
        if not is_initialized():
            raise ValueError(
                "distributed=True but no default process group is initialized; call "
                "torch.distributed.init_process_group(...) first (torchrun sets the environment), "
                "or leave distributed=None to decide automatically."
            )
        return dist.group.WORLD
    if dist.is_available() and isinstance(distributed, dist.ProcessGroup):
        return distributed
    raise TypeError(
        f"distributed must be None (auto), True, False or a torch.distributed.ProcessGroup; "
        f"got {type(distributed).__name__}."
    )


def get_rank(group: Any = None) -> int:
    """This process's rank in ``group`` (default group); 0 when not distributed.

    Before a group is initialized, the ``RANK`` variable set by ``torchrun`` is used, so that
    output can be silenced on other ranks from the start.
    """
    if is_initialized():
        return int(dist.get_rank(group))
    return int(os.environ.get("RANK", "0") or 0)


def get_world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (default group); 1 when not distributed (or the
    ``WORLD_SIZE`` set by ``torchrun`` before the group is initialized)."""
    if is_initialized():
        return int(dist.get_world_size(group))
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main_process(group: Any = None) -> bool:
    """True on rank 0 (and in a plain single process): the one that prints and writes files."""
    return get_rank(group) == 0


def print_once(*args: Any, group: Any = None, **kwargs: Any) -> None:
    """``print`` on rank 0 only (every process prints when not distributed)."""
    if is_main_process(group):
        print(*args, **kwargs)


def launched_by_torchrun() -> bool:
    """True when the environment of ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``) is set
    with more than one process."""
    env = os.environ
    return all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR")) and int(env["WORLD_SIZE"]) > 1


def init_from_env(backend: str | None = None, timeout_s: float = 600.0) -> bool:
    """Initialize the default group from ``torchrun``'s environment if needed.

    Returns True when a default group is initialized afterwards. ``backend`` defaults to ``nccl``
    when CUDA is available and ``gloo`` otherwise. ``timeout_s`` bounds how long a collective waits
    for a rank that died outside hesse's own error handling.
    """
    if is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    import datetime

    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return True


def shard(*tensors: torch.Tensor, group: Any = None) -> tuple[torch.Tensor, ...]:
    """This rank's contiguous share of tensors with a common leading (sample) dimension.

    ``X_local, y_local = shard(X, y)``: rank ``r`` of ``w`` gets rows ``[r N / w, (r+1) N / w)``
    (sizes differ by at most one). Not distributed: the tensors unchanged. The union of the
    shards is the whole data set, so a data-parallel operator equals the single-process one.
    """
    if not tensors:
        raise TypeError("shard needs at least one tensor.")
    leading = [int(t.shape[0]) if isinstance(t, torch.Tensor) and t.ndim >= 1 else None for t in tensors]
    sizes = {s for s in leading if s is not None}
    if None in leading or len(sizes) != 1:
        raise ValueError(f"shard needs tensors with one common leading dimension; got leading sizes {sorted(sizes)} "
                         f"(or a tensor without a leading dimension).")
    num = sizes.pop()
    rank, world = get_rank(group), get_world_size(group)
    if world == 1:
        return tuple(tensors)
    lo, hi = rank * num // world, (rank + 1) * num // world
    return tuple(t[lo:hi] for t in tensors)


@contextlib.contextmanager
def torchrun_session(backend: str | None = None):
    """Context for a command launched by ``torchrun``: initializes the default group from the
    environment (and destroys it on exit if it created it) and sends stdout of ranks other than 0
    to ``os.devnull``, so results print once. Without ``torchrun`` it does nothing.

    The ``hesse`` CLI wraps each verb in it; scripts may too::

        with hesse.distributed.torchrun_session():
            main()
    """
    created = False
    if launched_by_torchrun() and not is_initialized():
        created = init_from_env(backend)
    failed = True
    try:
        if is_main_process():
            yield
        else:
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                yield
        failed = False
    finally:
        if created and is_initialized():
            if not failed:
                # every rank reaches this point before any tears its group down: destroying a gloo
                # group while a peer still uses it aborts the process ("terminate called ...")
                with contextlib.suppress(Exception):
                    dist.barrier()
            dist.destroy_process_group()


def announce_once(group: Any, text: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> bool:
    """Warn ``text`` on rank 0 the first time it is called for ``group`` in this process; returns
    whether it warned."""
    key = id(group)
    if key in _ANNOUNCED or not is_main_process(group):
        return False
    _ANNOUNCED.add(key)
    import warnings

    warnings.warn(text, category, stacklevel=stacklevel + 1)
    return True
