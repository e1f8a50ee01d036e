"""The memory guard for dense matrices: refuse what would not fit, and say what to do instead."""

from __future__ import annotations

import os

import torch

DEFAULT_MAX_MEMORY = 4 * 1024**3
"""Default ceiling (bytes) for a dense n x n matrix: 4 GiB, or HESSE_MAX_MEMORY if set."""


def default_max_memory() -> int:
    env = os.environ.get("HESSE_MAX_MEMORY")
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ValueError(
                f"HESSE_MAX_MEMORY must be a number of bytes, got {env!r}."
            ) from None
    return DEFAULT_MAX_MEMORY


def format_bytes(num: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.1f} {unit}" if unit != "B" else f"{int(num)} B"
        num /= 1024
    return f"{num:.1f} TiB"


MATRIX_FREE_ALTERNATIVE = "hesse.HessianOperator and op @ v, hesse.eigsh, hesse.trace"


def guard_bytes(need: int, max_memory: int | None, description: str,
                alternative: str = MATRIX_FREE_ALTERNATIVE) -> None:
    """Refuse (``ValueError``) an allocation estimated at ``need`` bytes over ``max_memory``.

    ``description`` says what would be allocated and how the estimate was made; the message
    names the limit, both ways to raise it (the ``max_memory`` argument, ``HESSE_MAX_MEMORY``)
    and the matrix-free ``alternative``. Call it before allocating: the point is to refuse while
    nothing has been touched.
    """
    limit = default_max_memory() if max_memory is None else int(max_memory)
    if need > limit:
        raise ValueError(
            f"{description} would need about {format_bytes(need)} ({need} bytes), over the "
            f"max_memory guard of {format_bytes(limit)}. Use the matrix-free path instead "
            f"({alternative}), or raise the guard (max_memory=... in bytes, or the environment "
            f"variable HESSE_MAX_MEMORY) if the machine really has room."
        )


def guard_dense(n: int, dtype: torch.dtype, max_memory: int | None, what: str = "dense Hessian",
                count: int = 1, alternative: str = MATRIX_FREE_ALTERNATIVE) -> None:
    """Refuse ``count`` n x n matrices of ``dtype`` over ``max_memory`` (see :func:`guard_bytes`)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = count * n * n * itemsize
    times = f"{count} x " if count != 1 else ""
    guard_bytes(need, max_memory, f"The {what} ({times}{n} x {n} {dtype})", alternative)
