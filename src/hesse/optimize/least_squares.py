"""Nonlinear least squares ``min 1/2 ||r(x)||^2`` with the Jacobian from autodiff.

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

Cost per iteration: one residual+Jacobian evaluation (``jacrev``, ``m`` reverse passes vmapped),
an ``O(m n^2)`` factorization and the line search's residual evaluations (Gauss-Newton).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.func import jacrev

from hesse._memory import guard_bytes
from hesse._validation import (
    as_point,
    check_callable,
    check_connected,
    check_finite_point,
    check_nonempty,
    check_positive_float,
    check_positive_int,
)

from ._core import Objective, Run
from .line_search import armijo
from .result import CONVERGED, NONFINITE, STEP_FAILURE, OptimizeResult

LEAST_SQUARES_METHODS = ("gauss-newton", "lm")


def least_squares(
    residuals: Callable[[torch.Tensor], torch.Tensor],
    x0,
    method: str = "lm",
    *,
    gtol: float = 1e-8,
    ftol: float = 0.0,
    xtol: float = 0.0,
    max_iter: int = 200,
    max_time: float | None = None,
    callback: Callable | None = None,
    history: bool = True,
    progress: bool = False,
    check_curvature: bool = True,
    initial_radius_factor: float = 100.0,
    max_memory: int | None = None,
) -> OptimizeResult:
    """Minimize ``1/2 ||residuals(x)||^2``.

    ``residuals`` maps a tensor shaped like ``x0`` to a 1-D tensor of ``m`` residuals (torch ops).
    ``gtol`` is on ``||J^T r||_2``; the other stopping rules and the result are as in
    :func:`hesse.minimize` (``fun = 1/2 ||r||^2``, ``njev`` counts Jacobians). Success needs the
    gradient test and a Hessian of ``1/2||r||^2`` without negative eigenvalues at ``x``.

    Both methods form the dense ``m x n`` Jacobian; the call is refused before it is allocated
    when the estimate (see :func:`jacobian_bytes`) exceeds ``max_memory`` bytes (default 4 GiB or
    ``HESSE_MAX_MEMORY``). Without a Jacobian: ``hesse.minimize(lambda x: 0.5 * (r(x) ** 2).sum(),
    x0, method="lbfgs" or "newton-cg")``. Residuals not connected to ``x`` (``.item()``,
    ``torch.tensor(...)``, NumPy inside ``residuals``) are refused.
    """
    check_callable(residuals, "residuals")
    if method not in LEAST_SQUARES_METHODS:
        raise ValueError(f"method must be one of {LEAST_SQUARES_METHODS}; got {method!r}.")
    gtol = check_positive_float(gtol, "gtol", allow_zero=True)
    ftol = check_positive_float(ftol, "ftol", allow_zero=True)
    xtol = check_positive_float(xtol, "xtol", allow_zero=True)
    max_iter = check_positive_int(max_iter, "max_iter")
    initial_radius_factor = check_positive_float(initial_radius_factor, "initial_radius_factor")
    if max_memory is not None:
        max_memory = check_positive_int(max_memory, "max_memory")
    x0 = as_point(x0, "x0")
    check_nonempty(x0, "x0")
    check_finite_point(x0, "x0")
    shape = x0.shape

    def resid(x):
        r = residuals(x.reshape(shape))
        if not isinstance(r, torch.Tensor):
            raise TypeError(f"residuals(x) must return a torch.Tensor, got {type(r).__name__}.")
        return r.reshape(-1)

    def half_sq(x):
        r = resid(x)
        return 0.5 * torch.dot(r, r)

    r0 = check_connected(resid, x0.detach().reshape(-1), "residuals")
    if r0.ndim != 1 or r0.numel() == 0:
        raise ValueError("residuals(x) must return a non-empty vector of residuals.")
    m, n = r0.numel(), x0.numel()
    guard_bytes(jacobian_bytes(m, n, x0.element_size()), max_memory,
                f"least_squares(method={method!r}) with m = {m} residuals and n = {n} variables "
                f"(the {m} x {n} Jacobian, the {m}-square basis jacrev pushes through, and the "
                f"factorization)",
                alternative="hesse.minimize(lambda x: 0.5 * (residuals(x) ** 2).sum(), x0, "
                            "method='lbfgs' or 'newton-cg'), which never forms the Jacobian")
    obj = Objective(lambda z: half_sq(z.reshape(-1)), shape, max_memory=max_memory)
    run = Run(obj, method, gtol=gtol, ftol=ftol, xtol=xtol, max_iter=max_iter, max_time=max_time,
              callback=callback, history=history, progress=progress, check_curvature=check_curvature,
              n=x0.numel())

    def r_and_J(x):
        run.njev += 1
        obj.nfev += 1
        J, r = jacrev(lambda z: (resid(z), resid(z).detach()), has_aux=True)(x)
        return r, J

    x = x0.detach().reshape(-1).clone()
    r, J = r_and_J(x)
    if r.ndim != 1 or r.numel() == 0:
        raise ValueError("residuals(x) must return a non-empty vector of residuals.")
    f = 0.5 * float(torch.dot(r, r))
    g = J.T @ r
    status = run.start(x, f, float(g.norm()))
    if status is not None:
        return run.finish(x, f, g, status)
    D = J.norm(dim=0).clamp_min(torch.finfo(x.dtype).eps)
    radius = initial_radius_factor * float((D * x).norm()) or initial_radius_factor
    while True:
        if not (bool(torch.isfinite(J).all()) and bool(torch.isfinite(r).all())):
            return run.finish(x, f, g, NONFINITE)
        if method == "gauss-newton":
            p = -(torch.linalg.pinv(J) @ r)
            slope = float(torch.dot(g, p))
            ls = armijo(obj.value, x, p, f, slope)
            if not ls.success:
                return run.finish(x, f, g, STEP_FAILURE,
                                  f"Gauss-Newton line search failed ({ls.message}); J^T J is nearly "
                                  "singular here - use method='lm'")
            x_new, step = ls.x, ls.alpha * float(p.norm())
        else:
            D = torch.maximum(D, J.norm(dim=0))
            p, lam = _lm_step(J, r, D, radius)
            x_new, step = x + p, float(p.norm())
        r_new, J_new = r_and_J(x_new)
        f_new = 0.5 * float(torch.dot(r_new, r_new)) if bool(torch.isfinite(r_new).all()) else math.inf
        if method == "lm":
            Jp = J @ p
            predicted = -(float(torch.dot(r, Jp)) + 0.5 * float(torch.dot(Jp, Jp)))
            actual = f - f_new
            rho = actual / predicted if predicted > 0 and math.isfinite(f_new) else -math.inf
            dp = float((D * p).norm())
            if rho < 0.25:
                radius = 0.5 * min(radius, dp) if math.isfinite(f_new) else 0.25 * min(radius, dp)
            elif rho > 0.75 or lam == 0.0:
                radius = max(radius, 2.0 * dp)
            if not (rho > 1e-4):
                if radius <= 1e-15 * max(1.0, float((D * x).norm())):
                    if float(g.norm()) <= gtol:
                        return run.finish(x, f, g, CONVERGED)
                    return run.finish(x, f, g, STEP_FAILURE, "trust region collapsed; attainable accuracy reached")
                continue
        g_new = J_new.T @ r_new
        status = run.step(x_new, f_new, float(g_new.norm()), step, f)
        x, f, g, r, J = x_new, f_new, g_new, r_new, J_new
        if status is not None:
            return run.finish(x, f, g, status)


def jacobian_bytes(m: int, n: int, itemsize: int) -> int:
    """Bytes alive at the peak of one iteration, counted from the code (an estimate for the
    memory guard): the ``m x m`` identity ``jacrev`` vmaps over, the Jacobians at ``x`` and at
    the trial point, the scaled ``J D^{-1}`` (or the pseudo-inverse), and the thin SVD's
    ``U`` (``m x k``) and ``V^T`` (``k x n``), ``k = min(m, n)``."""
    k = min(m, n)
    return (m * m + 3 * m * n + k * (m + n)) * itemsize


def _lm_step(J, r, D, radius):
    """Solve ``min ||J p + r||, ||D p|| <= radius`` (Moré 1978) via the SVD of ``J D^{-1}``."""
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
    for _ in range(100):
        qn = float(q_of(lam).norm())
        if abs(qn - radius) <= 1e-3 * radius:
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
