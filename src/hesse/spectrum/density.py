"""Spectral density by stochastic Lanczos quadrature (SLQ), probes batched through ``op.matmat``.

Math. For a unit probe ``v``, ``v^T f(A) v = sum_i f(lambda_i) (u_i^T v)^2``; ``j`` Lanczos steps
from ``v`` give the Gauss quadrature rule with nodes ``theta_l`` (eigenvalues of ``T_j``) and weights
``tau_l = (e_1^T s_l)^2`` that matches this measure on polynomials of degree ``2j - 1`` (Golub & Meurant
2010, *Matrices, Moments and Quadrature*, ch. 6). Averaging over random probes ``v`` (Rademacher,
normalised) gives an unbiased estimate of the spectral measure ``(1/n) sum_i delta(lambda_i)`` (Lin,
Saad & Yang 2016, SIAM Review 58(1), sec. 3.2; Ghorbani, Krishnan & Xiao 2019, ICML, sec. 2). The
smoothed density is ``phi(t) = (1/p) sum_probes sum_l tau_l N(t; theta_l, sigma^2)``: every Gaussian
is normalised, so ``phi`` integrates to 1 (up to the mass outside the grid, which extends 6 sigma
beyond the extreme nodes by default).

Batching: the ``p`` probes advance together through the shared Lanczos recurrence
(:func:`hesse.spectrum.lanczos._lanczos_steps`); each step is ONE ``op.matmat`` of an ``(n, p)`` block,
and each probe is fully reorthogonalised against its own basis (classical Gram-Schmidt twice, done
for all probes at once with batched products), so there are no ghost nodes. Memory:
``(num_steps + 1) * p`` parameter-sized vectors. Cost: ``num_steps * num_probes`` products.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hesse._memory import guard_bytes
from hesse._progress import Progress
from hesse._result import Result
from hesse.operators import CurvatureOperator

from ._common import check_operator, generator, rademacher
from .lanczos import _lanczos_steps, _start, _work_dtype

__all__ = ["SpectralDensity", "DensityEstimate", "spectral_density", "slq_nodes"]

#: The default grid extends this many smoothing widths beyond the extreme nodes, where a Gaussian
#: has under 1e-8 of its mass left, so ``phi`` integrates to 1 on the grid to that accuracy.
_GRID_MARGIN_SIGMAS = 6

#: Default smoothing width as a fraction of the spread of the nodes (the choice of Ghorbani et
#: al. 2019's code, scaled to the spectrum's width).
_SIGMA_FRACTION = 1e-2


@dataclass(repr=False)
class SpectralDensity(Result):
    """A smoothed spectral density with its raw Gauss-quadrature nodes and weights.

    ``grid`` and ``density`` (same length), ``stderr`` (pointwise Monte-Carlo standard error over
    probes), ``nodes`` and ``weights`` of shape ``(num_probes, num_steps)`` (each probe's weights sum
    to 1), ``sigma`` (Gaussian smoothing width), ``num_matvecs``.
    """

    grid: torch.Tensor
    density: torch.Tensor
    stderr: torch.Tensor
    nodes: torch.Tensor
    weights: torch.Tensor
    sigma: float
    num_matvecs: int
    num_probes: int
    num_steps: int

    def __repr__(self) -> str:
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        return (f"SpectralDensity(num_probes={self.num_probes}, num_steps={self.num_steps}, "
                f"nodes in [{lo:.4g}, {hi:.4g}], sigma={self.sigma:.3g}, grid={self.grid.numel()} points, "
                f"num_matvecs={self.num_matvecs})")

    def integral(self) -> float:
        """Trapezoid integral of ``density`` over ``grid`` (≈ 1)."""
        return float(torch.trapezoid(self.density, self.grid))

    def fraction_below(self, t: float) -> DensityEstimate:
        """The fraction of eigenvalues below ``t``, from the quadrature (not the smoothed curve).

        Each probe's Gauss rule bounds its spectral distribution function: with ``x_k < t <= x_{k+1}``
        its nodes around ``t`` and ``S`` the weight of the nodes below ``t``, the measure below ``t``
        lies in ``[S - w_k, S + w_{k+1}]`` (the Chebyshev-Markov-Stieltjes inequalities; Golub &
        Meurant 2010, Thm. 6.3). ``value`` is the probes' mean of ``S``, ``lower``/``upper`` their
        means of those bounds (the resolution of ``num_steps`` nodes), ``stderr`` the Monte-Carlo
        standard error over probes (nan for one probe).
        """
        t = _finite_float(t, "t")
        return _estimate(self, lambda nodes: _cdf_bounds(nodes, self.weights, t), f"fraction below {t:g}")

    def mass(self, a: float, b: float) -> DensityEstimate:
        """The fraction of eigenvalues in ``[a, b)``: ``fraction_below(b) - fraction_below(a)``
        with the bounds combined (lower = lower(b) - upper(a), clipped at 0)."""
        a, b = _finite_float(a, "a"), _finite_float(b, "b")
        if not a < b:
            raise ValueError(f"mass(a, b) needs a < b, got a={a!r}, b={b!r}.")

        def per_probe(nodes):
            va, la, ua = _cdf_bounds(nodes, self.weights, a)
            vb, lb, ub = _cdf_bounds(nodes, self.weights, b)
            return vb - va, (lb - ua).clamp_min(0), (ub - la).clamp_max(1)

        return _estimate(self, per_probe, f"mass in [{a:g}, {b:g})")

    def negative_mass(self) -> DensityEstimate:
        """``Σ_{λ<0} |λ| / Σ |λ|`` (the summary's ``negative_mass``; Ghorbani et al. 2019) from the
        quadrature, per probe and averaged. ``lower``/``upper`` move the nodes next to zero to the
        other side of it (what ``num_steps`` nodes cannot place); ``stderr`` over probes."""
        def per_probe(nodes):
            a = nodes.abs() * self.weights
            total = a.sum(1).clamp_min(torch.finfo(torch.float64).tiny)
            neg = nodes < 0
            value = (a * neg).sum(1) / total
            # the last node below zero and the first at or above it, per probe
            below = torch.where(neg, a, torch.zeros_like(a))
            last_neg = torch.where(neg, nodes, torch.full_like(nodes, -math.inf)).argmax(1)
            first_pos = torch.where(~neg, nodes, torch.full_like(nodes, math.inf)).argmin(1)
            rows = torch.arange(nodes.shape[0])
            w_neg = torch.where(neg.any(1), below[rows, last_neg], torch.zeros_like(value))
            w_pos = torch.where((~neg).any(1), a[rows, first_pos], torch.zeros_like(value))
            return value, (value - w_neg / total).clamp_min(0), (value + w_pos / total).clamp_max(1)

        return _estimate(self, per_probe, "negative mass")

    def resmooth(self, sigma: float | None = None, grid: Any = None, num_grid: int = 1000) -> SpectralDensity:
        """The same nodes and weights smoothed with width ``sigma`` on ``grid``: snapshots taken at
        different steps then share one grid and one width and can be compared point by point.
        ``None`` keeps this density's width / grid. Costs no products."""
        sigma = self.sigma if sigma is None else _check_sigma(sigma)
        if grid is None and sigma == self.sigma:
            grid = self.grid
        grid = _grid(self.nodes, self.weights, sigma, grid, num_grid)
        density, stderr = _smooth(self.nodes, self.weights, grid, sigma)
        return SpectralDensity(grid, density, stderr, self.nodes, self.weights, sigma, 0,
                               self.num_probes, self.num_steps)


@dataclass(repr=False)
class DensityEstimate(Result):
    """A spectral quantity read off SLQ's quadrature: ``value``, the quadrature's ``lower`` and
    ``upper`` bounds (its resolution at ``num_steps`` nodes), ``stderr`` over probes (nan for one
    probe) and what it is (``quantity``)."""

    value: float
    lower: float
    upper: float
    stderr: float
    quantity: str

    def __repr__(self) -> str:
        return (f"DensityEstimate({self.quantity}: {self.value:.4g} in [{self.lower:.4g}, {self.upper:.4g}] "
                f"(quadrature), stderr {self.stderr:.2g} (probes))")


def _finite_float(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}.")
    return float(x)


def _cdf_bounds(nodes: torch.Tensor, weights: torch.Tensor, t: float):
    """Per probe: the weight below ``t`` and its Chebyshev-Markov-Stieltjes bounds."""
    below = nodes < t
    S = (weights * below).sum(1)
    masked_below = torch.where(below, nodes, torch.full_like(nodes, -math.inf))
    masked_above = torch.where(~below, nodes, torch.full_like(nodes, math.inf))
    rows = torch.arange(nodes.shape[0])
    w_k = torch.where(below.any(1), weights[rows, masked_below.argmax(1)], torch.zeros_like(S))
    w_k1 = torch.where((~below).any(1), weights[rows, masked_above.argmin(1)], torch.zeros_like(S))
    return S, (S - w_k).clamp_min(0), (S + w_k1).clamp_max(1)


def _estimate(d: SpectralDensity, per_probe, quantity: str) -> DensityEstimate:
    value, lower, upper = per_probe(d.nodes)
    p = value.numel()
    stderr = float(value.std(unbiased=True) / math.sqrt(p)) if p > 1 else float("nan")
    return DensityEstimate(float(value.mean()), float(lower.mean()), float(upper.mean()), stderr, quantity)


def _check_sigma(sigma: Any) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a positive float (Gaussian smoothing width) or None, got {sigma!r}.")
    return float(sigma)


def _grid(nodes: torch.Tensor, weights: torch.Tensor, sigma: float, grid: Any, num_grid: int) -> torch.Tensor:
    """``grid`` as a float64 vector, or ``num_grid`` points spanning the nodes plus the margin."""
    if grid is None:
        live = weights > 0
        lo, hi = float(nodes[live].min()), float(nodes[live].max())
        margin = _GRID_MARGIN_SIGMAS * sigma
        return torch.linspace(lo - margin, hi + margin, num_grid, dtype=torch.float64)
    grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if grid.numel() < 2 or not torch.isfinite(grid).all():
        raise ValueError("grid must be a finite 1-D sequence of at least 2 points.")
    return grid


def _smooth(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``phi(t) = (1/p) Σ_probes Σ_l tau_l N(t; theta_l, sigma²)`` and its standard error over probes."""
    z = (grid[None, None, :] - nodes[:, :, None]) / sigma
    per_probe = (weights[:, :, None] * torch.exp(-0.5 * z**2)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    p = nodes.shape[0]
    density = per_probe.mean(0)
    stderr = (per_probe.std(0, unbiased=True) / math.sqrt(p) if p > 1
              else torch.full_like(density, float("nan")))
    return density, stderr


def slq_bytes(n: int, num_probes: int, num_steps: int, dtype: torch.dtype, num_grid: int = 0) -> int:
    """Bytes SLQ allocates for ``num_probes`` probes of ``num_steps`` steps on an ``n``-row operator.

    The stored bases ``(p, j + 1, n)`` in the basis dtype, the probes and two blocks of products
    ``(n, p)`` beside them, the projected matrices with their eigenvectors (``3 p j^2`` float64) and,
    with ``num_grid`` points, the smoothing array ``(p, j, num_grid)`` and its per-probe density
    (float64).
    """
    j = min(num_steps, n)
    item = torch.empty((), dtype=_work_dtype(dtype)).element_size()
    return (num_probes * (j + 1 + 3) * n * item + 3 * num_probes * (j + 1) ** 2 * 8
            + 2 * num_probes * j * num_grid * 8)


def _guard_slq(n: int, num_probes: int, num_steps: int, dtype: torch.dtype, num_grid: int,
               max_memory: int | None) -> None:
    need = slq_bytes(n, num_probes, num_steps, dtype, num_grid)
    guard_bytes(need, max_memory,
                f"SLQ with {num_probes} probes x {min(num_steps, n)} steps on n={n} "
                f"({num_probes} stored Krylov bases of {min(num_steps, n) + 1} vectors)",
                alternative="fewer probes (the standard error falls as 1/sqrt(probes); 4-100 are "
                "typical) or fewer steps")


def slq_nodes(op: CurvatureOperator, num_probes: int, num_steps: int, seed: int = 0,
              progress: bool = False, max_memory: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-quadrature nodes and weights of ``num_probes`` Rademacher probes, ``(p, j)`` each.

    Runs ``num_steps`` Lanczos steps from each normalised probe (independent recurrences with full
    reorthogonalization, advanced together: one ``matmat`` of ``(n, p)`` per step). The rule of probe
    ``v`` is ``theta_l`` = eigenvalues of its ``T_j``, ``tau_l = (e_1^T s_l)^2`` (Golub & Meurant 2010,
    ch. 6). A probe whose Krylov space is invariant stops early: its ``T`` gets a zero trailing block,
    whose nodes carry zero weight (and the products stop once every probe has stopped).

    Memory: :func:`slq_bytes`, refused with a ``ValueError`` before anything is allocated when over
    ``max_memory`` (default 4 GiB or ``HESSE_MAX_MEMORY``).
    """
    n = op.shape[0]
    _guard_slq(n, num_probes, num_steps, op.dtype, 0, max_memory)
    p, m = num_probes, min(num_steps, n)
    V = rademacher(n, p, generator(seed), op.dtype, op.device)
    kr = _start(op, V, m)
    with Progress(m * p, f"spectral density (SLQ, {p} probes x {m} steps)", progress) as bar:
        for _ in _lanczos_steps(op, kr, m):
            bar.update(p)
    # a probe that stopped early (or all, if the products stopped) has a zero trailing block
    T = torch.zeros((p, m, m), dtype=torch.float64)
    T[:, : kr.num_steps, : kr.num_steps] = kr.tridiagonal()
    nodes, S = torch.linalg.eigh(T)
    return nodes, S[:, 0, :] ** 2


def spectral_density(op: CurvatureOperator, num_probes: int = 4, num_steps: int = 80, grid: Any = None,
                     sigma: float | None = None, seed: int = 0, progress: bool = False,
                     num_grid: int = 1000, max_memory: int | None = None) -> SpectralDensity:
    """Spectral density of ``op`` by stochastic Lanczos quadrature (see module docs).

    Parameters
    ----------
    op
        any symmetric hesse operator (``HessianOperator``, ``GGNOperator``, ``DenseOperator``...).
    num_probes
        Rademacher probes ``p`` (advanced together, one ``matmat`` per step).
    num_steps
        Lanczos steps per probe (``num_probes * num_steps`` products in all).
    grid
        points where the smoothed density is evaluated (default ``num_grid`` points spanning the
        nodes plus 6 sigma).
    sigma
        Gaussian smoothing width (default ``1e-2 * (max node - min node)``, the choice of
        Ghorbani et al. 2019's code scaled to the spectrum's width).
    seed
        seed of the Rademacher probes.
    progress
        show a bar (stderr) over the Lanczos steps.
    num_grid
        number of grid points when ``grid`` is not given (default 1000).
    max_memory
        bytes SLQ may allocate (default 4 GiB or ``HESSE_MAX_MEMORY``); the estimate
        (:func:`slq_bytes`: the ``num_probes`` Krylov bases and the smoothing array) is checked
        before any product, and a larger one is refused with a ``ValueError`` naming the sizes.
    """
    op = check_operator(op)
    for name, val in (("num_probes", num_probes), ("num_steps", num_steps), ("num_grid", num_grid)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}.")
    if sigma is not None:
        sigma = _check_sigma(sigma)
    num_points = num_grid if grid is None else int(torch.as_tensor(grid).numel())
    _guard_slq(op.shape[0], num_probes, num_steps, op.dtype, num_points, max_memory)
    start = op.num_matvecs
    nodes, weights = slq_nodes(op, num_probes, num_steps, seed, progress, max_memory)
    live = weights > 0
    lo, hi = float(nodes[live].min()), float(nodes[live].max())
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = float(sigma) if sigma is not None else _SIGMA_FRACTION * width
    grid = _grid(nodes, weights, sigma, grid, num_grid)
    density, stderr = _smooth(nodes, weights, grid, sigma)
    return SpectralDensity(grid, density, stderr, nodes, weights, sigma, op.num_matvecs - start,
                           num_probes, nodes.shape[1])
