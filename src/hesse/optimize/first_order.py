"""First-order methods: gradient descent, heavy-ball momentum, Nesterov's accelerated gradient.

* ``gd``: ``x_{k+1} = x_k - lr g_k``. On a quadratic with Hessian eigenvalues in
  ``[mu, L]`` and ``lr = 1/L`` the error contracts per step by ``1 - 1/kappa``; with the optimal
  ``lr = 2/(L + mu)`` by ``(kappa - 1)/(kappa + 1)`` (Nocedal & Wright 2006, Thm 3.3; Boyd &
  Vandenberghe 2004, Sec. 9.3), so the iteration count grows like ``kappa``.
* ``momentum`` (Polyak 1964): ``v_{k+1} = beta v_k - lr g_k``, ``x_{k+1} = x_k + v_{k+1}``.
* ``nesterov`` (Nesterov 1983; Sutskever et al. 2013 form): gradient at the look-ahead point
  ``y_k = x_k + beta v_k``.

``lr="auto"`` takes ``1 / lambda_max`` of the Hessian at ``x0`` from Lanczos
(:func:`hesse.spectrum.eigsh`, a few dozen Hessian-vector products), the largest step that is
safe for the local quadratic model (``2/lambda_max`` is the stability limit).
Cost per iteration: one fused value+gradient (``nesterov``: two gradients).
A non-finite value halves ``lr`` (kept halved) and retries.
"""

from __future__ import annotations

import math
import warnings

import torch

from hesse.operators import HessianOperator
from hesse.spectrum import eigsh

from ._core import Objective, Run
from .line_search import MAX_HALVINGS
from .result import NONFINITE, OptimizeResult

# A non-finite trial halves the step size (kept halved) up to MAX_HALVINGS times before the run
# stops with status 5.


def auto_learning_rate(obj: Objective, x: torch.Tensor) -> float:
    """``1 / lambda_max(H(x))`` by Lanczos; ValueError when ``lambda_max <= 0``."""
    op = HessianOperator.from_function(obj.flat, x.detach())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = eigsh(op, k=1, which="largest", tol=1e-3)
    obj.num_matvecs += op.num_matvecs
    lam = float(res.values[0])
    if not lam > 0:
        raise ValueError(
            f"lr='auto' needs positive curvature at x0 (lambda_max = {lam:.4g}); pass a number, "
            "e.g. lr=1e-3, or use a line-search method such as method='bfgs'."
        )
    return 1.0 / lam


def minimize_first_order(obj: Objective, x: torch.Tensor, run: Run, *, variant: str,
                         lr: float | str = "auto", beta: float = 0.9) -> OptimizeResult:
    # the first gradient comes before lr="auto": it refuses an f not connected to x, which
    # would otherwise show up as "needs positive curvature" from a zero Hessian
    f, g = obj.value_grad(x)
    step_size = auto_learning_rate(obj, x) if lr == "auto" else float(lr)
    status = run.start(x, f, float(g.norm()))
    if status is not None:
        return run.finish(x, f, g, status)
    v = torch.zeros_like(x)
    use_beta = 0.0 if variant == "gd" else beta
    while True:
        for _ in range(MAX_HALVINGS + 1):
            if variant == "nesterov":
                y = x + use_beta * v
                _, gy = obj.value_grad(y)
                v_new = use_beta * v - step_size * gy
            else:
                v_new = use_beta * v - step_size * g
            x_new = x + v_new
            f_new, g_new = obj.value_grad(x_new)
            if math.isfinite(f_new) and bool(torch.isfinite(g_new).all()):
                break
            step_size *= 0.5
        else:
            return run.finish(x, f, g, NONFINITE)
        step = float(v_new.norm())
        v = v_new
        status = run.step(x_new, f_new, float(g_new.norm()), step, f)
        x, f, g = x_new, f_new, g_new
        if status is not None:
            return run.finish(x, f, g, status)
