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


def guard_dense(n: int, dtype: torch.dtype, max_memory: int | None, what: str = "dense Hessian") -> None:
    """Raise MemoryError-like ValueError if an n x n matrix of ``dtype`` exceeds ``max_memory``."""
    limit = default_max_memory() if max_memory is None else int(max_memory)
    itemsize = torch.empty((), dtype=dtype).element_size()
    need = n * n * itemsize
    if need > limit:
        raise ValueError(
            f"The {what} would be {n} x {n} {dtype} = {format_bytes(need)} ({need} bytes), over the "
            f"max_memory guard of {format_bytes(limit)}. Use the matrix-free path instead "
            f"(hesse.HessianOperator and op @ v, hesse.eigsh, hesse.trace), or raise max_memory "
            f"if the machine really has room."
        )
