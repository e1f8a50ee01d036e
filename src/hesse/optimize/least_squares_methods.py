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
from .result import CONVERGED, NONFINITE, STEP_FAILURE, OptimizeResult
from .trust_region import GROW_ABOVE, SHRINK_BELOW

# Moré's (1978) acceptance test: a step is taken when the actual reduction is at least 1e-4 of
# the predicted one; the radius shrinks below rho = 1/4 and grows above rho = 3/4 (the
# thresholds of N&W Alg. 4.1, shared with the trust-region loop).
ACCEPT_RATIO = 1e-4
# The region has collapsed when ||D x|| would not change in float64 by a step of this relative size.
COLLAPSED_RADIUS = 1e-15
# The secular equation is solved to 0.1 % of the radius (an approximate root is all the trust
# region needs), in at most 100 safeguarded Newton/bisection steps.
SECULAR_RTOL = 1e-3
SECULAR_MAX_ITER = 100


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


def minimize_levenberg_marquardt(problem: Residuals, x: torch.Tensor, run: Run, *,
                                 initial_radius_factor: float = 100.0) -> OptimizeResult:
    r, J, f, g, status = _start(problem, x, run)
    if status is not None:
        return run.finish(x, f, g, status)
    D = J.norm(dim=0).clamp_min(torch.finfo(x.dtype).eps)
    # Moré's initial radius: factor * ||D x0||, or the factor itself when x0 = 0
    radius = initial_radius_factor * float((D * x).norm()) or initial_radius_factor
    while True:
        if not _finite(r, J):
            return run.finish(x, f, g, NONFINITE)
        D = torch.maximum(D, J.norm(dim=0))
        p, lam = _lm_step(J, r, D, radius)
        x_new, step = x + p, float(p.norm())
        r_new, J_new = problem.residuals_and_jacobian(x_new)
        f_new = _half_square(r_new)
        Jp = J @ p
        predicted = -(float(torch.dot(r, Jp)) + 0.5 * float(torch.dot(Jp, Jp)))
        actual = f - f_new
        rho = actual / predicted if predicted > 0 and math.isfinite(f_new) else -math.inf
        dp = float((D * p).norm())
        if rho < SHRINK_BELOW:
            radius = 0.5 * min(radius, dp) if math.isfinite(f_new) else 0.25 * min(radius, dp)
        elif rho > GROW_ABOVE or lam == 0.0:
            radius = max(radius, 2.0 * dp)
        if not (rho > ACCEPT_RATIO):
            if radius <= COLLAPSED_RADIUS * max(1.0, float((D * x).norm())):
                if float(g.norm()) <= run.gtol:
                    return run.finish(x, f, g, CONVERGED)
                return run.finish(x, f, g, STEP_FAILURE, "trust region collapsed; attainable accuracy reached")
            continue
        g_new = J_new.T @ r_new
        status = run.step(x_new, f_new, float(g_new.norm()), step, f)
        x, f, g, r, J = x_new, f_new, g_new, r_new, J_new
        if status is not None:
            return run.finish(x, f, g, status)


def _lm_step(J: torch.Tensor, r: torch.Tensor, D: torch.Tensor, radius: float) -> tuple[torch.Tensor, float]:
    """Solve ``min ||J p + r||, ||D p|| <= radius`` (Moré 1978) via the SVD of ``J D^{-1}``.
    Returns ``(p, lambda)``, ``lambda = 0`` when the Gauss-Newton step fits."""
    A = J / D
    U, sig, Vh = torch.linalg.svd(A, full_matrices=False)
    c = U.T @ r
    keep = sig > sig.max() * torch.finfo(J.dtype).eps * max(J.shape) if sig.numel() else sig > 0

    def q_of(lam):
        coef = torch.where(keep, sig * c / (sig * sig + lam), torch.zeros_like(sig))
        return -(Vh.T @ coef)

    q = q_of(0.0)
    if float(q.norm()) <= radius:
        return q / D, 0.0
    lo, hi = 0.0, float((sig * c.abs()).max()) / radius + float(sig.max()) ** 2
    lam = 0.5 * (lo + hi) if hi > 0 else 1.0
    for _ in range(SECULAR_MAX_ITER):
        qn = float(q_of(lam).norm())
        if abs(qn - radius) <= SECULAR_RTOL * radius:
            break
        if qn > radius:
            lo = lam
        else:
            hi = lam
        # Newton step on 1/||q|| - 1/radius (Moré 1978, eq. 5.5), safeguarded by bisection
        coef = torch.where(keep, sig * c / (sig * sig + lam), torch.zeros_like(sig))
        dq2 = -2.0 * float(torch.sum(torch.where(keep, coef * coef / (sig * sig + lam), torch.zeros_like(sig))))
        lam_new = lam - (qn / radius - 1.0) * (qn * qn) / (0.5 * dq2) if dq2 != 0 else 0.5 * (lo + hi)
        lam = lam_new if lo < lam_new < hi else 0.5 * (lo + hi)
    return q_of(lam) / D, lam
