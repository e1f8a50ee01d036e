"""Shared helpers of the spectrum package: argument checks and random probes."""

from __future__ import annotations

from typing import Any

import torch

from hesse._blocks import probe_block
from hesse._memory import guard_bytes
from hesse._validation import check_choice
from hesse.operators import CurvatureOperator


def check_operator(op, name: str = "op") -> CurvatureOperator:
    """Raise a clear TypeError unless ``op`` is a :class:`CurvatureOperator`."""
    if not isinstance(op, CurvatureOperator):
        raise TypeError(
            f"{name} must be a hesse CurvatureOperator (e.g. hesse.HessianOperator(model, loss_fn, data) "
            f"or hesse.DenseOperator(matrix)), got {type(op).__name__}. Wrap a symmetric matrix M with "
            f"hesse.DenseOperator(M)."
        )
    return op


def generator(seed: int) -> torch.Generator:
    """A torch generator seeded with ``seed`` (a CPU generator, so that a seed gives the same draws on every device; tensors are moved afterwards)."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}.")
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return g


def rademacher(n: int, k: int, gen: torch.Generator, dtype, device) -> torch.Tensor:
    """An ``(n, k)`` block of independent ±1 entries (:func:`hesse._blocks.probe_block`)."""
    return probe_block(n, k, "rademacher", gen, dtype, device)


def gaussian(n: int, k: int, gen: torch.Generator, dtype, device) -> torch.Tensor:
    """An ``(n, k)`` block of standard normal entries (:func:`hesse._blocks.probe_block`)."""
    return probe_block(n, k, "gaussian", gen, dtype, device)


def check_budget(op: Any, method: str, methods: tuple[str, ...], num_matvecs: Any,
                 minimum: dict[str, int]) -> tuple[CurvatureOperator, str, bool]:
    """Checked ``(op, method, exact)`` of a trace or diagonal estimator: ``exact`` when the method
    is ``"exact"`` or the budget reaches ``n`` (then ``n`` unit-vector products are the cheapest
    way to the exact answer)."""
    op = check_operator(op)
    method = check_choice(method, "method", methods)
    if method != "exact":
        least = minimum[method]
        if not isinstance(num_matvecs, int) or isinstance(num_matvecs, bool) or num_matvecs < least:
            raise ValueError(f"num_matvecs must be an int >= {least} for method={method!r}, got {num_matvecs!r}.")
    return op, method, method == "exact" or num_matvecs >= op.shape[0]


def guard_probe_blocks(n: int, columns: int, dtype: torch.dtype, max_memory: int | None, what: str) -> None:
    """Refuse (``ValueError``, before allocating) an estimator holding ``columns`` vectors of ``n``
    entries in ``dtype`` at once over ``max_memory`` (default 4 GiB or ``HESSE_MAX_MEMORY``)."""
    need = columns * n * torch.empty((), dtype=dtype).element_size()
    guard_bytes(need, max_memory, f"{what} ({columns} vectors of n={n} in {dtype} at once)",
                alternative="a smaller num_matvecs")
