"""The two nonlinear least-squares methods behind :func:`hesse.least_squares`, for
``min 1/2 ||r(x)||^2`` with the Jacobian ``J`` from autodiff (``g = J^T r``).

* ``gauss-newton``: ``J p = -r`` in the least-squares sense (minimum-norm solution via the
  pseudo-inverse when ``J`` is rank deficient), then Armijo backtracking on ``1/2 ||r||^2``
  (Nocedal & Wright 2006, Sec. 10.3). Quadratic convergence on zero-residual problems, fast
  linear (superlinear in the small-residual limit) otherwise; it can fail when ``J^T J`` is
  (nearly) singular along the path.
* ``lm``: Levenberg-Marquardt as a scaled trust region (Moré 1978, "The Levenberg-Marquardt
  algorithm: implementation and theory"; MINPACK ``lmder``): ``min ||J p + r||`` subject to
  ``||D p|| <= Delta`` with ``D = diag`` of the largest column norms of ``J`` seen so far; the
  Lagrange multiplier ``lambda`` (the damping) solves the secular equation
  ``||D p(lambda)|| = Delta`` (here via the SVD of ``J D^{-1}``), and ``Delta`` follows Moré's
  update: ``rho < 1/4`` halves it, ``rho > 3/4`` (or ``lambda = 0``) sets it to ``2 ||D p||``.
  It runs in the one trust-region loop
  (:func:`hesse.optimize.trust_region.minimize_levenberg_marquardt`, the subproblem
  :class:`hesse.optimize.trust_region.LevenbergMarquardtModel`).

Methods receive ``(problem, x0, run, **options)`` as the :func:`hesse.minimize` methods do, with a
:class:`Residuals` problem in place of the objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import jacrev

from ._core import Objective, Run
from .line_search import armijo
from .result import NONFINITE, STEP_FAILURE, OptimizeResult


class Residuals:
    """``r`` on flat vectors with its counted objective ``obj`` (``1/2 ||r||^2``). One
    residual+Jacobian evaluation counts one value and one gradient (``g = J^T r`` comes with it)."""

    def __init__(self, resid: Callable[[torch.Tensor], torch.Tensor], obj: Objective):
        self.resid, self.obj = resid, obj

    def residuals_and_jacobian(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.obj.njev += 1
        self.obj.nfev += 1
        J, r = jacrev(lambda z: (self.resid(z), self.resid(z).detach()), has_aux=True)(x)
        return r, J


def _half_square(r: torch.Tensor) -> float:
    return 0.5 * float(torch.dot(r, r)) if bool(torch.isfinite(r).all()) else math.inf


def _finite(r: torch.Tensor, J: torch.Tensor) -> bool:
    return bool(torch.isfinite(J).all()) and bool(torch.isfinite(r).all())


def _start(problem: Residuals, x: torch.Tensor, run: Run):
    """Residuals, Jacobian, ``f = ||r||²/2``, ``g = Jᵀ r`` at the start, and the run's verdict there."""
    r, J = problem.residuals_and_jacobian(x)
    f = 0.5 * float(torch.dot(r, r))
    g = J.T @ r
    return r, J, f, g, run.start(x, f, float(g.norm()))


def minimize_gauss_newton(problem: Residuals, x: torch.Tensor, run: Run) -> OptimizeResult:
    r, J, f, g, status = _start(problem, x, run)
    if status is not None:
        return run.finish(x, f, g, status)
    while True:
        if not _finite(r, J):
            return run.finish(x, f, g, NONFINITE)
        p = -(torch.linalg.pinv(J) @ r)
        ls = armijo(problem.obj.value, x, p, f, float(torch.dot(g, p)))
        if not ls.success:
            return run.finish(x, f, g, STEP_FAILURE,
                              f"Gauss-Newton line search failed ({ls.message}); J^T J is nearly "
                              "singular here - use method='lm'")
        x_new, step = ls.x, ls.alpha * float(p.norm())
        r_new, J_new = problem.residuals_and_jacobian(x_new)
        f_new = _half_square(r_new)
        g_new = J_new.T @ r_new
        status = run.step(x_new, f_new, float(g_new.norm()), step, f)
        x, f, g, r, J = x_new, f_new, g_new, r_new, J_new
        if status is not None:
            return run.finish(x, f, g, status)
