"""Randomized trace estimation from matrix-vector products, with standard errors.

Methods (``num_matvecs`` = ``m`` products in all):

- ``"hutchinson"`` (Hutchinson 1989; Girard 1989): ``tr(A) ~ (1/m) sum_i w_i^T A w_i`` with
  Rademacher probes ``w_i``; standard error = sample standard deviation / sqrt(m).
- ``"hutch++"`` (Meyer, Musco, Musco & Woodruff 2021, SOSA, Alg. 1): ``m/3`` products sketch the
  range ``Q = orth(A S)``, ``m/3`` give ``tr(Q^T A Q)`` exactly, the last ``m/3`` run Hutchinson on
  the deflated ``(I - QQ^T) A (I - QQ^T)``; the standard error is that of the Hutchinson part.
- ``"xtrace"`` (Epperly, Tropp & Webber 2024, SIAM J. Matrix Anal. Appl. 45(1), sec. 2): the
  exchangeable version of Hutch++. With ``s = m/2`` Rademacher probes ``Omega``, ``Y = A Omega``
  and ``Q = orth(Y)``, each estimate ``i`` deflates with the basis of ``Y`` *without* column ``i``
  (downdated in closed form: ``Q_(i) = Q (I - s_i s_i^T)``, ``s_i`` the normalised ``i``-th column of
  ``R^{-T}``) and uses probe ``i`` for the remainder:
  ``t_i = tr(Q_(i)^T A Q_(i)) + w_i^T (I - P_(i)) A (I - P_(i)) w_i``. The estimate is the mean of
  the ``t_i`` and the standard error their standard deviation / sqrt(s) (the leave-one-out error
  estimate of sec. 2.2). Cost ``2 s`` products plus ``O(n s^2)`` flops.
- ``"exact"``: ``sum_i e_i^T A e_i`` (``n`` products, in blocks).

A budget ``num_matvecs >= n`` buys the exact trace: ``n`` unit-vector products cost no more than the
budget and have no error, so every method returns it then, reported as ``method="exact"`` with
zero standard error. (The sketches of Hutch++ and XTrace could not be formed anyway: an
``n x s`` block with ``s > n`` has no orthonormal basis of ``s`` columns.)

Measured (README, ``benchmarks/bench_spectrum.py``): XTrace had the smallest error of the three at
48 and 198 products on digits MLP Hessians; it is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hesse._blocks import probe_block, products
from hesse._progress import Progress
from hesse._result import Result
from hesse.operators import CurvatureOperator

from ._common import check_budget, generator, guard_probe_blocks
from .diagonal import exact_diagonal

__all__ = ["TraceEstimate", "trace"]

_METHODS = ("xtrace", "hutch++", "hutchinson", "exact")

#: Fewest products per method: Hutchinson needs two samples for a standard error; Hutch++ splits
#: its budget in three parts (sketch, exact part, Hutchinson part) of at least one product each;
#: XTrace's leave-one-out error needs two probes, each used twice (``A Omega`` and ``A Q``).
_MIN_MATVECS = {"hutchinson": 2, "hutch++": 3, "xtrace": 4}


@dataclass(repr=False)
class TraceEstimate(Result):
    """An estimate of ``tr(A)`` with its Monte-Carlo standard error (``0`` for ``"exact"``)."""

    value: float
    stderr: float
    num_matvecs: int
    method: str
    samples: torch.Tensor | None = None

    def interval(self, num_stderr: float = 3.0) -> tuple[float, float]:
        """``value -/+ num_stderr * stderr``."""
        return self.value - num_stderr * self.stderr, self.value + num_stderr * self.stderr

    def __repr__(self) -> str:
        return (f"TraceEstimate(value={self.value:.6g}, stderr={self.stderr:.2g}, "
                f"method={self.method!r}, num_matvecs={self.num_matvecs})")


def _std_error(samples: torch.Tensor) -> float:
    if samples.numel() < 2:
        return float("inf")
    return float(samples.std(unbiased=True) / math.sqrt(samples.numel()))


#: Vectors of ``n`` entries each method holds at once, per product of its budget ``m``: Hutchinson
#: the probes and their products (``2 m``); Hutch++ the sketch, its basis, their products and the
#: deflated probes (about ``4 m / 3``); XTrace ``Omega``, ``Y``, ``Q``, ``Z``, ``U``, ``A U`` (``3 m``).
_VECTORS_PER_MATVEC = {"hutchinson": 2.0, "hutch++": 4 / 3, "xtrace": 3.0}


def trace(op: CurvatureOperator, method: str = "xtrace", num_matvecs: int = 198, seed: int = 0,
          progress: bool = False, max_memory: int | None = None) -> TraceEstimate:
    """Estimate ``tr(op)`` with ``num_matvecs`` products (see module docs for the methods).

    Returns a :class:`TraceEstimate` with ``.value`` and ``.stderr``. Probes are Rademacher
    (``seed`` makes them reproducible); products go through ``op.matmat`` in blocks.
    ``num_matvecs >= n`` returns the exact trace (``n`` products, ``method="exact"``, ``stderr=0``).

    Parameters
    ----------
    op
        any symmetric hesse operator (``HessianOperator``, ``GGNOperator``, ``DenseOperator``...).
    method
        ``"xtrace"`` (default), ``"hutch++"``, ``"hutchinson"`` or ``"exact"``.
    num_matvecs
        operator-vector products to spend (default 198).
    seed
        seed of the Rademacher probes.
    progress
        show a bar (stderr) over the products.
    max_memory
        bounds the probe blocks held at once (default 4 GiB or ``HESSE_MAX_MEMORY``): a larger
        estimate is refused with a ``ValueError`` before any product.
    """
    op, method, exact = check_budget(op, method, _METHODS, num_matvecs, _MIN_MATVECS)
    n = op.shape[0]
    start = op.num_matvecs
    if exact:
        total = float(exact_diagonal(op, progress, "trace (exact)").double().sum())
        return TraceEstimate(total, 0.0, op.num_matvecs - start, "exact")
    guard_probe_blocks(n, math.ceil(_VECTORS_PER_MATVEC[method] * num_matvecs), op.dtype, max_memory,
                       f"trace ({method}, num_matvecs={num_matvecs})")
    gen = generator(seed)
    with Progress(num_matvecs, f"trace ({method})", progress) as bar:
        if method == "hutchinson":
            W = probe_block(n, num_matvecs, "rademacher", gen, op.dtype, op.device)
            samples = (W * products(op, W, bar)).double().sum(0).cpu()
            value, err = float(samples.mean()), _std_error(samples)
        elif method == "hutch++":
            value, err, samples = _hutchpp(op, num_matvecs, gen, bar)
        else:
            value, err, samples = _xtrace(op, num_matvecs, gen, bar)
    return TraceEstimate(value, err, op.num_matvecs - start, method, samples)


def _hutchpp(op, m, gen, bar):
    n = op.shape[0]
    s = m // 3
    r = m - 2 * s
    S = probe_block(n, s, "rademacher", gen, op.dtype, op.device)
    G = probe_block(n, r, "rademacher", gen, op.dtype, op.device)
    Q, _ = torch.linalg.qr(products(op, S, bar))
    AQ = products(op, Q, bar)
    low = float((Q * AQ).double().sum())
    Gp = G - Q @ (Q.T @ G)
    samples = (Gp * products(op, Gp, bar)).double().sum(0).cpu()
    return low + float(samples.mean()), _std_error(samples), samples + low


def _xtrace(op, m, gen, bar):
    n = op.shape[0]
    s = m // 2
    Om = probe_block(n, s, "rademacher", gen, op.dtype, op.device)
    Y = products(op, Om, bar)
    Q, R = torch.linalg.qr(Y)
    Z = products(op, Q, bar)
    H = (Q.T @ Z).double()
    H = 0.5 * (H + H.T)
    R64 = R.double()
    # S = R^{-T}, columns normalised: Q_(i) = Q (I - s_i s_i^T) spans range(Y without column i)
    eye = torch.eye(s, dtype=torch.float64, device=R64.device)
    S = torch.linalg.solve_triangular(R64, eye, upper=True).T
    S = S / S.norm(dim=0, keepdim=True)
    W = (Q.T @ Om).double()                      # Q^T w_i
    c = (S * W).sum(0)                           # s_i^T W_i
    trH = torch.trace(H)
    sHs = (S * (H @ S)).sum(0)
    # u_i = (I - P_(i)) w_i = w_i - Q (W_i - s_i c_i);  A u_i = Y_i - Z (W_i - s_i c_i)
    D = (W - S * c[None, :]).to(op.dtype)
    U = Om - Q @ D
    AU = Y - Z @ D
    quad = (U * AU).double().sum(0)
    samples = (trH - sHs + quad).cpu()
    return float(samples.mean()), _std_error(samples), samples
