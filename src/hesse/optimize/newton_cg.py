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

from collections.abc import Callable

import torch

from hesse.operators.solve import NegativeCurvature, ResidualTolerance, conjugate_gradient

from ._core import Objective, Run
from .line_search import strong_wolfe
from .result import STEP_FAILURE, OptimizeResult

# Without cg_max_iter: 2 * min(n, 200) CG steps. In exact arithmetic CG ends within n steps;
# twice that absorbs the loss of conjugacy in floating point, and the cap at 400 keeps one inner
# solve at large n to a bounded number of products (the outer line search makes up the rest).
CG_STEPS_PER_VARIABLE = 2
CG_MAX_ITER_CAP_N = 200


def truncated_cg(hvp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor,
                 max_iter: int) -> tuple[torch.Tensor, bool]:
    """Approximate Newton step ``H p = -g`` by the one CG kernel
    (:func:`hesse.operators.solve.conjugate_gradient`) with its rules for truncated Newton
    (N&W Alg. 7.1): the forcing tolerance (:meth:`ResidualTolerance.forcing`) and
    :class:`NegativeCurvature` at ``p^T H p <= eps ||p||^2``, returning ``-g`` when that happens
    at the first step. Returns ``(p, hit negative curvature)``. No final residual product: the
    outer line search judges the step."""
    rules = [NegativeCurvature(eps=torch.finfo(g.dtype).eps, steepest_descent=True),
             ResidualTolerance.forcing(float(g.norm()))]
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
