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
  the ``t_i``. The ``t_i`` share most of their basis, so their spread / sqrt(s) (the error estimate
  of sec. 2.2) understates the error (measured: rms z 1.41 over 150 seeds on an indefinite
  spectrum); the standard error is instead the jackknife over probes,
  ``sqrt((s-1)/s sum_j (T_(-j) - mean T_(-))^2)`` with ``T_(-j)`` XTrace on the other ``s - 1``
  probes, computed without products from a two-column downdate of the basis. The jackknife
  overestimates the variance of a symmetric statistic of independent probes (Efron & Stein 1981,
  Ann. Statist. 9(3)): measured rms z 0.72-0.77, so its intervals cover at least as stated.
  Cost ``2 s`` products plus ``O(n s^2 + s^3)`` flops.
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
    S_unnormalised = torch.linalg.solve_triangular(R64, eye, upper=True).T
    S = S_unnormalised / S_unnormalised.norm(dim=0, keepdim=True)
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
    T = (Z.T @ Om).double()
    jack = _xtrace_leave_one_probe_out(Om, Y, R64, H, S_unnormalised, W, T)
    s_ = jack.numel()
    err = math.sqrt((s_ - 1) / s_ * float(((jack - jack.mean()) ** 2).sum()))
    return float(samples.mean()), err, samples


def _xtrace_leave_one_probe_out(Om, Y, R, H, A_, W, T):
    """The XTrace estimates ``T_(-j)`` from the ``s - 1`` probes other than ``j``, for every ``j``,
    without products: their estimate ``i`` deflates with the basis of ``Y`` without columns ``i`` and
    ``j``, ``Q (I - P_ij)`` with ``P_ij`` the projector onto ``span{a_i, a_j}``, ``a_k = R^{-T} e_k``
    (the directions of ``range(R)`` only column ``k`` reaches). With ``d = (I - P_ij) W_i``,
    ``t_i^(-j) = tr(H) - tr(P_ij H) + w_i^T y_i - T_i^T d - d^T R_i + d^T H d`` (``T = Z^T Omega``,
    ``a_i^T R_i = 1``, ``a_j^T R_i = 0``), every term from ``s x s`` matrices: ``O(s^3)`` flops."""
    s = Om.shape[1]
    C, M = A_.T @ A_, A_.T @ H @ A_
    B, E, K = A_.T @ W, A_.T @ T, A_.T @ (H @ W)
    HW = H @ W
    dOmY = (Om * Y).double().sum(0).to(C.device)
    TW, WR, WHW = (T * W).sum(0), (W * R).sum(0), (W * HW).sum(0)
    ii = torch.arange(s, device=C.device)
    # entry [i, j] of every (s, s) array below belongs to estimate i with probe j left out
    c11, c22, m11, m22 = C[ii, ii][:, None], C[ii, ii][None, :], M[ii, ii][:, None], M[ii, ii][None, :]
    off = ~torch.eye(s, dtype=torch.bool, device=C.device)
    det = torch.where(off, c11 * c22 - C**2, 1.0)
    g11, g22, g12 = c22 / det, c11 / det, -C / det  # inverse Gram matrix of (a_i, a_j)
    trPH = g11 * m11 + 2 * g12 * M + g22 * m22
    b1, b2 = B[ii, ii][:, None], B.T
    k1, k2 = g11 * b1 + g12 * b2, g12 * b1 + g22 * b2  # P_ij W_i = k1 a_i + k2 a_j
    Td = TW[:, None] - k1 * E[ii, ii][:, None] - k2 * E.T
    dR = WR[:, None] - k1
    dHd = (WHW[:, None] - 2 * k1 * K[ii, ii][:, None] - 2 * k2 * K.T
           + k1 * k1 * m11 + 2 * k1 * k2 * M + k2 * k2 * m22)
    t = torch.trace(H) - trPH + dOmY[:, None] - Td - dR + dHd
    return (torch.where(off, t, 0.0).sum(0) / (s - 1)).cpu()
