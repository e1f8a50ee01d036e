"""Line-search Newton-CG, Hessian-free (Nocedal & Wright 2006, Alg. 7.1; Martens 2010).

The Newton system ``H p = -g`` is solved approximately by CG on Hessian-vector products, stopped
at the forcing tolerance ``||r|| <= min(0.5, sqrt(||g||)) ||g||`` (superlinear convergence, N&W
Thm 7.2) or when a direction of non-positive curvature ``d^T H d <= eps ||d||^2`` appears: then
the current CG iterate is returned (``-g`` if it happens at the first inner step). A strong Wolfe
line search (c2 = 0.9) follows. Never forms ``H``: memory is a few vectors of size ``n``, so
``n = 10^6`` works. Cost per outer iteration: one gradient with its graph kept, ``j`` HVPs
(``j`` the CG steps, capped by ``cg_max_iter``), and the line search's evaluations.
"""

from __future__ import annotations

import math

import torch

from ._core import Objective, Run
from .line_search import strong_wolfe
from .result import STEP_FAILURE, OptimizeResult


def truncated_cg(hvp, g, max_iter: int):
    gnorm = float(g.norm())
    tol = min(0.5, math.sqrt(gnorm)) * gnorm
    z = torch.zeros_like(g)
    r = g.clone()
    d = -r
    rr = float(torch.dot(r, r))
    eps = torch.finfo(g.dtype).eps
    for j in range(max_iter):
        Hd = hvp(d)
        dHd = float(torch.dot(d, Hd))
        if dHd <= eps * float(torch.dot(d, d)):
            return (-g if j == 0 else z), True
        alpha = rr / dHd
        z = z + alpha * d
        r = r + alpha * Hd
        rr_next = float(torch.dot(r, r))
        if math.sqrt(rr_next) <= tol:
            return z, False
        d = -r + (rr_next / rr) * d
        rr = rr_next
    return z, False


def minimize_newton_cg(obj: Objective, x: torch.Tensor, run: Run, *,
                       cg_max_iter: int | None = None) -> OptimizeResult:
    f, g, hvp = obj.hvp_at(x)
    status = run.start(x, f, float(g.norm()))
    if status is not None:
        return run.finish(x, f, g, status)
    cg_max_iter = cg_max_iter or min(x.numel(), 200) * 2
    last = {}

    def value_grad_keep_graph(xa):
        # each trial keeps its gradient graph, so the accepted point's HVPs need no new pass
        fa, ga, h = obj.hvp_at(xa)
        last["x"], last["hvp"] = xa, h
        return fa, ga

    while True:
        p, _ = truncated_cg(hvp, g, cg_max_iter)
        ls = strong_wolfe(value_grad_keep_graph, x, p, f, g)
        if not ls.success or ls.g is None:
            return run.finish(x, f, g, STEP_FAILURE, f"line search: {ls.message}")
        x_new = ls.x
        status = run.step(x_new, ls.f, float(ls.g.norm()), ls.alpha * float(p.norm()), f)
        if status is not None:
            return run.finish(x_new, ls.f, ls.g, status)
        if last.get("x") is x_new:
            f, g, hvp = ls.f, ls.g, last["hvp"]
        else:
            f, g, hvp = obj.hvp_at(x_new)
        last.clear()
        x = x_new
