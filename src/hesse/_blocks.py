"""Blocks of unit vectors and random probes, multiplied by an operator a chunk at a time.

Dense matrices (``to_dense``), exact diagonals and traces multiply ``A`` by the unit vectors
``e_1 .. e_n``; randomized estimators (Hutchinson 1989, Hutch++, XTrace, Diag++) multiply it by
Rademacher or Gaussian probes. Both are products with an ``n x m`` block whose columns are
independent, done in chunks of columns so that one product never holds more than
``chunk x n`` entries while ``matmat`` still batches the work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from hesse._validation import check_positive_int

__all__ = ["DEFAULT_CHUNK", "unit_block", "unit_blocks", "probe_block", "apply_in_chunks", "products",
           "PROBE_KINDS", "check_chunk"]

#: Columns per product when the caller gives no chunk size: large enough that ``matmat`` batches
#: the work (a vmap over 256 columns amortises its per-call overhead), small enough that the
#: ``n x 256`` block and its product fit next to a large model (256 columns of a 10^7-parameter
#: model in float32 are 10 GB).
DEFAULT_CHUNK = 256

#: Probe distributions: ``"rademacher"`` (independent ±1, the minimum-variance Hutchinson probe
#: for real matrices, Hutchinson 1989) and ``"gaussian"`` (standard normal).
PROBE_KINDS = ("rademacher", "gaussian")


class _Bar(Protocol):
    def update(self, n: int = 1, info: str = "") -> None: ...


def check_chunk(chunk: Any, name: str = "chunk_size") -> int | None:
    """``None`` or a positive integer: a chunk of ``0`` or fewer columns would cover nothing, and
    a block left uncovered would be returned uninitialized."""
    return None if chunk is None else check_positive_int(chunk, name)


def unit_block(n: int, start: int, stop: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """The ``n x (stop - start)`` block ``[e_start, ..., e_{stop-1}]`` of unit vectors."""
    E = torch.zeros((n, stop - start), dtype=dtype, device=device)
    E[torch.arange(start, stop), torch.arange(stop - start)] = 1
    return E


def unit_blocks(n: int, chunk: int | None, dtype: torch.dtype, device: Any
                ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, [e_start .. e_{stop-1}])`` for consecutive chunks covering ``e_1 .. e_n``
    (``chunk=None``: :data:`DEFAULT_CHUNK` columns)."""
    chunk = check_chunk(chunk) or min(n, DEFAULT_CHUNK)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        yield start, stop, unit_block(n, start, stop, dtype, device)


def probe_block(n: int, s: int, kind: str, generator: torch.Generator, dtype: torch.dtype,
                device: Any) -> torch.Tensor:
    """An ``n x s`` block of independent random probes drawn from ``generator`` (a CPU generator).

    ``"rademacher"``: ±1 entries (drawn as int8 bits, exact in every dtype). ``"gaussian"``:
    standard normal entries drawn in float64 and cast to ``dtype``, so the same seed gives the same
    probes (to rounding) in every precision. The whole block is drawn at once: the probes of a seed
    do not depend on the chunk size of the products.
    """
    if kind == "rademacher":
        bits = torch.randint(0, 2, (n, s), generator=generator, dtype=torch.int8)
        return (2 * bits.to(dtype) - 1).to(device)
    if kind == "gaussian":
        return torch.randn((n, s), generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    raise ValueError(f"probe kind must be one of {', '.join(PROBE_KINDS)}, got {kind!r}.")


def apply_in_chunks(op: Any, make_block: Callable[[int, int], torch.Tensor], total: int,
                    chunk: int | None = None, progress: _Bar | None = None
                    ) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor]]:
    """Yield ``(start, stop, V, op.matmat(V))`` for ``V = make_block(start, stop)`` over ``[0, total)``.

    ``chunk=None`` multiplies the whole block at once. ``progress`` (a :class:`hesse._progress.Progress`)
    is advanced by the number of columns of each product.
    """
    chunk = check_chunk(chunk) or max(total, 1)
    for start in range(0, total, chunk):
        stop = min(total, start + chunk)
        V = make_block(start, stop)
        AV = op.matmat(V)
        if progress is not None:
            progress.update(stop - start)
        yield start, stop, V, AV


def products(op: Any, V: torch.Tensor, progress: _Bar | None = None, chunk: int | None = None) -> torch.Tensor:
    """``op.matmat(V)``, ``chunk`` columns at a time (``None``: all at once), advancing ``progress``."""
    parts = [AV for *_, AV in apply_in_chunks(op, lambda a, b: V[:, a:b], V.shape[1], chunk, progress)]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
