"""hesse.distributed: process-group helpers for data-parallel curvature (user guide
page "Scale and torch.distributed", docs/guide/distributed.md).

Model operators (``HessianOperator``, ``GGNOperator``, ``FisherOperator``) are data-parallel when a
default ``torch.distributed`` group is initialized (``distributed=None``, the default), local with
``distributed=False``, and reduce over a given group with ``distributed=<group>``. This package
holds what they use: choosing the group (:func:`resolve_group`), the all-reduce of partial sums
that carries an error flag (:func:`all_reduce_sum`, :class:`DistributedError`), and helpers for
scripts and the CLI launched by ``torchrun`` (:func:`is_main_process`, :func:`print_once`,
:func:`init_from_env`, :func:`shard`). It imports only torch.
"""

from .collectives import DistributedError, all_reduce_sum, sync_errors
from .group import (
    announce_once,
    get_rank,
    get_world_size,
    init_from_env,
    is_initialized,
    is_main_process,
    launched_by_torchrun,
    print_once,
    resolve_group,
    shard,
    torchrun_session,
)

__all__ = [
    "announce_once",
    "DistributedError",
    "DataParallelNotice",
    "all_reduce_sum",
    "sync_errors",
    "get_rank",
    "get_world_size",
    "init_from_env",
    "is_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "print_once",
    "resolve_group",
    "shard",
    "torchrun_session",
]


class DataParallelNotice(UserWarning):
    """Issued once (rank 0) when a model operator is data-parallel. Silence it with
    ``warnings.filterwarnings("ignore", category=hesse.distributed.DataParallelNotice)``."""
