"""Newton's method and its modified variants, on the dense Hessian (one loop, the direction rule
passed in).

* ``newton`` (pure): ``x_{k+1} = x_k - H_k^{-1} g_k`` with unit steps. Quadratically convergent
  near a nondegenerate critical point of any kind, and affine invariant (Nocedal & Wright 2006,
  Thm 3.5; Boyd & Vandenberghe 2004, Sec. 9.5.1) - it converges to saddles and maxima just as
  readily, which the result then reports (status 4), never as success.
* ``newton-damped``: strong Wolfe line search on the direction ``-(H + E)^{-1} g`` where ``E``
  makes the matrix positive definite: ``modification="lm"`` adds ``tau I`` (Levenberg-Marquardt
  shift by Cholesky with added multiple of the identity, N&W Alg. 3.3) or ``"eigen"`` replaces
  eigenvalues below ``delta`` by ``delta`` (N&W Sec. 3.4, eq. 3.41).
* ``saddle-free-newton``: ``-|H|^{-1} g`` with ``|H| = Q |Lambda| Q^T`` (Dauphin et al. 2014,
  "Identifying and attacking the saddle point problem"), eigenvalues floored at ``damping``;
  at a point with ``||g|| <= gtol`` and negative curvature it steps along the eigenvector of the
  most negative eigenvalue (backtracking until ``f`` decreases) instead of stopping.

Cost per iteration: one dense Hessian (``n`` HVPs), an ``O(n^3)`` factorization, and the line
search's value+gradient evaluations.
"""

from __future__ import annotations

import math

import torch

from hesse._linalg import newton_direction

from ._core import Objective, Run
from .line_search import MAX_HALVINGS, armijo, strong_wolfe
from .result import CONVERGED, NONFINITE, STEP_FAILURE, OptimizeResult

# The step along the most negative curvature direction out of a saddle starts at
# max(1, ||x||) (the scale of x) and is halved until f decreases, a non-finite trial of a unit
# Newton step is halved until finite: both at most MAX_HALVINGS times (then status 6 or 5).


# the modification (hesse._linalg.newton_direction) of each variant; newton-damped's option
# ``modification`` picks "lm" or "eigen"
VARIANT_MODIFICATION = {"newton": "none", "saddle-free-newton": "absolute"}


def _direction(H: torch.Tensor, g: torch.Tensor, spectrum: tuple[torch.Tensor, torch.Tensor] | None, *,
               variant: str, modification: str, damping: float) -> torch.Tensor | None:
    """The (modified) Newton direction of ``variant`` (module docstring); None when ``H`` is
    singular (pure Newton) or cannot be made positive definite."""
    p = newton_direction(H, g, VARIANT_MODIFICATION.get(variant, modification), spectrum=spectrum,
                         damping=damping)
    return p if bool(torch.isfinite(p).all()) else None


def minimize_newton(obj: Objective, x: torch.Tensor, run: Run, *, variant: str, modification: str = "lm",
                    damping: float = 1e-4, line_search: str = "strong-wolfe") -> OptimizeResult:
    f, g = obj.value_grad(x)
    status = run.start(x, f, float(g.norm()))
    saddle_free = variant == "saddle-free-newton"
    while True:
        H = obj.hessian(x)
        if not bool(torch.isfinite(H).all()):
            return run.finish(x, f, g, NONFINITE, "the Hessian is not finite at x")
        spectrum = torch.linalg.eigh(H) if status == CONVERGED or saddle_free else None
        if status == CONVERGED and spectrum is not None:
            lam, Q = spectrum
            lam_min = float(lam[0])
            run.min_eigenvalue = lam_min
            negative = lam_min < -run.curvature_tol * max(1.0, float(lam.abs().max()))
            if not (saddle_free and negative):
                run.hessian = H
                return run.finish(x, f, g, CONVERGED)
            # escape the saddle along the most negative curvature direction
            v = Q[:, 0]
            v = v if float(torch.dot(g, v)) <= 0 else -v
            alpha, accepted = max(1.0, float(x.norm())), False
            for _ in range(MAX_HALVINGS):
                x_try = x + alpha * v
                f_try, g_try = obj.value_grad(x_try)
                if math.isfinite(f_try) and f_try < f:
                    accepted = True
                    break
                alpha *= 0.5
            if not accepted:
                return run.finish(x, f, g, STEP_FAILURE, "could not decrease f along the negative curvature direction")
            run.min_eigenvalue = None
            status = run.step(x_try, f_try, float(g_try.norm()), alpha, f)
            x, f, g = x_try, f_try, g_try
            if status is not None and status != CONVERGED:
                return run.finish(x, f, g, status)
            continue
        if status is not None:
            return run.finish(x, f, g, status)

        p = _direction(H, g, spectrum, variant=variant, modification=modification, damping=damping)
        if p is None:
            return run.finish(x, f, g, STEP_FAILURE, "the Hessian is singular; use method='newton-damped'")

        if variant == "newton":
            alpha = 1.0
            for _ in range(MAX_HALVINGS + 1):
                x_new = x + alpha * p
                f_new, g_new = obj.value_grad(x_new)
                if math.isfinite(f_new) and bool(torch.isfinite(g_new).all()):
                    break
                alpha *= 0.5
            else:
                return run.finish(x, f, g, NONFINITE)
        elif line_search == "armijo" or saddle_free:
            ls = armijo(obj.value, x, p, f, float(torch.dot(g, p)))
            if not ls.success:
                return run.finish(x, f, g, STEP_FAILURE, f"line search: {ls.message}")
            x_new, f_new, alpha = ls.x, ls.fun, ls.alpha
            _, g_new = obj.value_grad(x_new)
            obj.nfev -= 1  # the value was already counted by the line search
        else:
            ls = strong_wolfe(obj.value_grad, x, p, f, g)
            if not ls.success or ls.jac is None:
                return run.finish(x, f, g, STEP_FAILURE, f"line search: {ls.message}")
            x_new, f_new, g_new, alpha = ls.x, ls.fun, ls.jac, ls.alpha
        status = run.step(x_new, f_new, float(g_new.norm()), alpha * float(p.norm()), f)
        x, f, g = x_new, f_new, g_new
