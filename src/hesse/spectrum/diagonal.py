"""Randomized estimation of ``diag(A)`` from matrix-vector products, with standard errors.

- ``"hutchinson"`` (Bekas, Kokiopoulou & Saad 2007, Appl. Numer. Math. 57): with Rademacher
  probes, ``diag(A) ~ (1/m) sum_i w_i * (A w_i)`` (elementwise); per-entry standard error =
  sample standard deviation / sqrt(m). This is what AdaHessian uses.
- ``"diag++"`` (Baston & Nakatsukasa 2022, "Stochastic diagonal estimation", sec. 3): sketch
  ``Q = orth(A S)`` with ``m/3`` products, take ``diag(Q (Q^T A Q) Q^T)`` exactly with ``m/3`` more,
  and run the Hutchinson estimator on the deflated remainder ``A - Q Q^T A Q Q^T`` with the rest
  (``m/3`` products); strong on operators with a few large eigenvalues.
- ``"exact"``: ``n`` products with unit vectors, in blocks.

A budget ``num_matvecs >= n`` buys the exact diagonal (``n`` unit-vector products cost no more than
the budget and have no error), so every method returns it then, reported as ``method="exact"``
with zero standard error; the sketching methods could not run anyway (a sketch of more than ``n``
columns has no orthonormal basis).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hesse._blocks import (
    DEFAULT_CHUNK,
    apply_in_chunks,
    probe_block,
    products,
    unit_block,
)
from hesse._progress import Progress
from hesse._result import Result
from hesse.operators import CurvatureOperator

from ._common import check_budget, generator, guard_probe_blocks

__all__ = ["DiagonalEstimate", "diagonal", "exact_diagonal"]

_METHODS = ("hutchinson", "diag++", "exact")

#: Fewest products per method: two Hutchinson samples give a standard error; Diag++ splits its
#: budget in three parts and its Hutchinson part needs two samples as well.
_MIN_MATVECS = {"hutchinson": 2, "diag++": 6}


@dataclass(repr=False)
class DiagonalEstimate(Result):
    """An estimate of ``diag(A)`` (``value``, shape (n,)) with per-entry standard errors."""

    value: torch.Tensor
    stderr: torch.Tensor
    num_matvecs: int
    method: str

    def __repr__(self) -> str:
        return (f"DiagonalEstimate(n={self.value.numel()}, method={self.method!r}, "
                f"num_matvecs={self.num_matvecs}, mean stderr={float(self.stderr.mean()):.2g})")


def exact_diagonal(op: CurvatureOperator, progress: bool = False, label: str = "diagonal (exact)") -> torch.Tensor:
    """``diag(op)`` from ``n`` products with unit vectors ``e_i`` (``A e_i`` read at row ``i``), in blocks."""
    n = op.shape[0]
    out = torch.empty(n, dtype=op.dtype, device=op.device)
    with Progress(n, label, progress) as bar:
        blocks = apply_in_chunks(op, lambda a, b: unit_block(n, a, b, op.dtype, op.device), n,
                                 min(n, DEFAULT_CHUNK), bar)
        for a, b, _, AE in blocks:
            out[a:b] = AE[torch.arange(a, b), torch.arange(b - a)]
    return out


def diagonal(op: CurvatureOperator, method: str = "hutchinson", num_matvecs: int = 100, seed: int = 0,
             progress: bool = False, max_memory: int | None = None) -> DiagonalEstimate:
    """Estimate ``diag(op)`` with ``num_matvecs`` products (see module docs).

    ``num_matvecs >= n`` returns the exact diagonal (``n`` products, ``method="exact"``).

    Parameters
    ----------
    op
        any symmetric hesse operator (``HessianOperator``, ``GGNOperator``, ``DenseOperator``...).
    method
        ``"hutchinson"`` (default), ``"diag++"`` or ``"exact"``.
    num_matvecs
        operator-vector products to spend (default 100).
    seed
        seed of the Rademacher probes.
    progress
        show a bar (stderr) over the products.
    max_memory
        bounds the probe blocks held at once (about ``3 num_matvecs`` vectors; default 4 GiB or
        ``HESSE_MAX_MEMORY``): a larger estimate is refused with a ``ValueError`` first.
    """
    op, method, exact = check_budget(op, method, _METHODS, num_matvecs, _MIN_MATVECS)
    n = op.shape[0]
    start = op.num_matvecs
    if exact:
        out = exact_diagonal(op, progress)
        return DiagonalEstimate(out, torch.zeros_like(out), op.num_matvecs - start, "exact")
    # the probes, their products and their elementwise products (Diag++: its sketch and basis fewer)
    guard_probe_blocks(n, 3 * num_matvecs, op.dtype, max_memory,
                       f"diagonal ({method}, num_matvecs={num_matvecs})")
    gen = generator(seed)
    with Progress(num_matvecs, f"diagonal ({method})", progress) as bar:
        low = torch.zeros(n, dtype=op.dtype, device=op.device)
        r = num_matvecs
        Q = None
        if method == "diag++":
            s = num_matvecs // 3
            r = num_matvecs - 2 * s
            Q, _ = torch.linalg.qr(products(op, probe_block(n, s, "rademacher", gen, op.dtype, op.device), bar))
            AQ = products(op, Q, bar)
            low = ((Q @ (Q.T @ AQ)) * Q).sum(1)
        W = probe_block(n, r, "rademacher", gen, op.dtype, op.device)
        AW = products(op, W, bar)
        if Q is not None:
            # (A - Q Q^T A Q Q^T) W
            AW = AW - Q @ ((Q.T @ AQ) @ (Q.T @ W))
        samples = W * AW
        value = low + samples.mean(1)
        err = samples.std(1, unbiased=True) / math.sqrt(r)
    return DiagonalEstimate(value, err, op.num_matvecs - start, method)
