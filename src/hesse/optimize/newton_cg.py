"""Line-search Newton-CG, Hessian-free (Nocedal & Wright 2006, Alg. 7.1; Martens 2010).

The Newton system ``H p = -g`` is solved approximately by the one CG kernel of hesse
(:func:`hesse.operators.solve.conjugate_gradient`) on Hessian-vector products, stopped
at the forcing tolerance ``||r|| <= min(0.5, sqrt(||g||)) ||g||`` (superlinear convergence, N&W
Thm 7.2) or when a direction of non-positive curvature ``d^T H d <= eps ||d||^2`` appears: then
the current CG iterate is returned (``-g`` if it happens at the first inner step). A strong Wolfe
line search (c2 = 0.9) follows. Never forms ``H``: memory is a few vectors of size ``n``, so
``n = 10^6`` works. Cost per outer iteration: one gradient with its graph kept, ``j`` HVPs
(``j`` the CG steps, capped by ``cg_max_iter``), and the line search's evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hesse.operators.solve import CGState, Stop, conjugate_gradient

from ._core import Objective, Run
from .line_search import strong_wolfe
from .result import STEP_FAILURE, OptimizeResult

# Without cg_max_iter: 2 * min(n, 200) CG steps. In exact arithmetic CG ends within n steps;
# twice that absorbs the loss of conjugacy in floating point, and the cap at 400 keeps one inner
# solve at large n to a bounded number of products (the outer line search makes up the rest).
CG_STEPS_PER_VARIABLE = 2
CG_MAX_ITER_CAP_N = 200


class ForcingTolerance:
    """CG stopping rule: the residual ``||r|| <= tol`` (``< tol`` when ``strict``), with ``tol``
    the forcing term ``min(0.5, sqrt(||g||)) ||g||`` of N&W Thm 7.2 (superlinear convergence)."""

    def __init__(self, tol: float, strict: bool = False):
        self.tol, self.strict = tol, strict

    def before_step(self, state: CGState) -> Stop | None:
        return None

    def after_step(self, state: CGState) -> Stop | None:
        r_norm = math.sqrt(float(torch.dot(state.r, state.r)))
        if (r_norm < self.tol) if self.strict else (r_norm <= self.tol):
            return Stop(state.x, "converged", "forcing tolerance met", converged=True)
        return None


def forcing_tolerance(g: torch.Tensor) -> float:
    gnorm = float(g.norm())
    return min(0.5, math.sqrt(gnorm)) * gnorm


class TruncateAtNegativeCurvature:
    """CG stopping rule of truncated Newton (N&W Alg. 7.1): a direction with
    ``p^T H p <= eps ||p||^2`` ends the solve at the current iterate, or at the steepest-descent
    direction ``-g`` (= ``b``) when it appears at the first step."""

    def __init__(self, eps: float):
        self.eps = eps

    def before_step(self, state: CGState) -> Stop | None:
        if state.pAp <= self.eps * float(torch.dot(state.p, state.p)):
            x = state.b.clone() if state.it == 1 else state.x
            return Stop(x, "negative_curvature", f"curvature p^T H p = {state.pAp:.3e} <= eps ||p||^2",
                        negative_curvature=state.p.clone())
        return None

    def after_step(self, state: CGState) -> Stop | None:
        return None


def truncated_cg(hvp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor,
                 max_iter: int) -> tuple[torch.Tensor, bool]:
    """Approximate Newton step ``H p = -g`` by the one CG kernel
    (:func:`hesse.operators.solve.conjugate_gradient`) with the rules above; returns ``(p, hit
    negative curvature)``. No final residual product: the outer line search judges the step."""
    rules = [TruncateAtNegativeCurvature(torch.finfo(g.dtype).eps), ForcingTolerance(forcing_tolerance(g))]
    res = conjugate_gradient(hvp, -g, rules=rules, max_iter=max_iter, true_residual=False)
    return res.x, res.status == "negative_curvature"


def minimize_newton_cg(obj: Objective, x: torch.Tensor, run: Run, *,
                       cg_max_iter: int | None = None) -> OptimizeResult:
    f, g, hvp = obj.hvp_at(x)
    status = run.start(x, f, float(g.norm()))
    if status is not None:
        return run.finish(x, f, g, status)
    cg_max_iter = cg_max_iter or min(x.numel(), CG_MAX_ITER_CAP_N) * CG_STEPS_PER_VARIABLE
    last = {}

    def value_grad_keep_graph(xa):
        # each trial keeps its gradient graph, so the accepted point's HVPs need no new pass
        fa, ga, h = obj.hvp_at(xa)
        last["x"], last["hvp"] = xa, h
        return fa, ga

    while True:
        p, _ = truncated_cg(hvp, g, cg_max_iter)
        ls = strong_wolfe(value_grad_keep_graph, x, p, f, g)
        if not ls.success or ls.jac is None:
            return run.finish(x, f, g, STEP_FAILURE, f"line search: {ls.message}")
        x_new = ls.x
        status = run.step(x_new, ls.fun, float(ls.jac.norm()), ls.alpha * float(p.norm()), f)
        if status is not None:
            return run.finish(x_new, ls.fun, ls.jac, status)
        if last.get("x") is x_new:
            f, g, hvp = ls.fun, ls.jac, last["hvp"]
        else:
            f, g, hvp = obj.hvp_at(x_new)
        last.clear()
        x = x_new
