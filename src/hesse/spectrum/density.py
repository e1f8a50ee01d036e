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

from hesse._progress import Progress
from hesse._result import Result
from hesse.operators import CurvatureOperator

from ._common import check_operator, generator, rademacher
from .lanczos import _lanczos_steps, _start

__all__ = ["SpectralDensity", "spectral_density", "slq_nodes"]

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


def slq_nodes(op: CurvatureOperator, num_probes: int, num_steps: int, seed: int = 0,
              progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-quadrature nodes and weights of ``num_probes`` Rademacher probes, ``(p, j)`` each.

    Runs ``num_steps`` Lanczos steps from each normalised probe (independent recurrences with full
    reorthogonalization, advanced together: one ``matmat`` of ``(n, p)`` per step). The rule of probe
    ``v`` is ``theta_l`` = eigenvalues of its ``T_j``, ``tau_l = (e_1^T s_l)^2`` (Golub & Meurant 2010,
    ch. 6). A probe whose Krylov space is invariant stops early: its ``T`` gets a zero trailing block,
    whose nodes carry zero weight (and the products stop once every probe has stopped).
    """
    n = op.shape[0]
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
                     num_grid: int = 1000) -> SpectralDensity:
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
    """
    op = check_operator(op)
    for name, val in (("num_probes", num_probes), ("num_steps", num_steps), ("num_grid", num_grid)):
        if not isinstance(val, int) or isinstance(val, bool) or val < 1:
            raise ValueError(f"{name} must be a positive int, got {val!r}.")
    if sigma is not None and (not isinstance(sigma, (int, float)) or not sigma > 0 or not math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive float (Gaussian smoothing width) or None, got {sigma!r}.")
    start = op.num_matvecs
    nodes, weights = slq_nodes(op, num_probes, num_steps, seed, progress)
    live = weights > 0
    lo, hi = float(nodes[live].min()), float(nodes[live].max())
    width = hi - lo if hi > lo else max(abs(hi), 1.0)
    sigma = float(sigma) if sigma is not None else _SIGMA_FRACTION * width
    if grid is None:
        margin = _GRID_MARGIN_SIGMAS * sigma
        grid = torch.linspace(lo - margin, hi + margin, num_grid, dtype=torch.float64)
    else:
        grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
        if grid.numel() < 2 or not torch.isfinite(grid).all():
            raise ValueError("grid must be a finite 1-D sequence of at least 2 points.")
    # per-probe densities (p, g)
    z = (grid[None, None, :] - nodes[:, :, None]) / sigma
    per_probe = (weights[:, :, None] * torch.exp(-0.5 * z**2)).sum(1) / (sigma * math.sqrt(2 * math.pi))
    density = per_probe.mean(0)
    stderr = (per_probe.std(0, unbiased=True) / math.sqrt(num_probes) if num_probes > 1
              else torch.full_like(density, float("nan")))
    return SpectralDensity(grid, density, stderr, nodes, weights, sigma, op.num_matvecs - start,
                           num_probes, nodes.shape[1])
