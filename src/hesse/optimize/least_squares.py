"""The front door :func:`least_squares` for ``min 1/2 ||r(x)||^2``: validate, look the method up
in the registry (:data:`hesse.optimize.methods.LEAST_SQUARES_METHODS`), set up the residuals and
their counted objective, dispatch. The methods live in
:mod:`hesse.optimize.least_squares_methods`.

Cost per iteration: one residual+Jacobian evaluation (``jacrev``, ``m`` reverse passes vmapped),
an ``O(m n^2)`` factorization and the line search's residual evaluations (Gauss-Newton).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from hesse._memory import guard_bytes
from hesse._validation import (
    as_point,
    check_callable,
    check_connected,
    check_finite_point,
    check_nonempty,
    check_positive_float,
    check_positive_int,
    suggest,
    working_point,
)

from ._core import Objective, Run
from .least_squares_methods import Residuals
from .methods import LEAST_SQUARES_METHODS, MethodSpec, describe
from .result import OptimizeResult


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
    initial_radius_factor: float | None = None,
    max_memory: int | None = None,
) -> OptimizeResult:
    """Minimize ``1/2 ||residuals(x)||^2``.

    ``residuals`` maps a tensor shaped like ``x0`` to a 1-D tensor of ``m`` residuals (torch ops).
    ``gtol`` is on ``||J^T r||_2``; the other stopping rules and the result are as in
    :func:`hesse.minimize` (``fun = 1/2 ||r||^2``, ``njev`` counts Jacobians, as scipy's). Success needs the
    gradient test and a Hessian of ``1/2||r||^2`` without negative eigenvalues at ``x``.
    ``initial_radius_factor`` (``lm`` only, default 100): the first trust radius is this times
    ``||D x0||`` (Moré 1978).

    Both methods form the dense ``m x n`` Jacobian; the call is refused before it is allocated
    when the estimate (see :func:`jacobian_bytes`) exceeds ``max_memory`` bytes (default 4 GiB or
    ``HESSE_MAX_MEMORY``). Without a Jacobian: ``hesse.minimize(lambda x: 0.5 * (r(x) ** 2).sum(),
    x0, method="lbfgs" or "newton-cg")``. Residuals not connected to ``x`` (``.item()``,
    ``torch.tensor(...)``, NumPy inside ``residuals``) are refused.
    """
    check_callable(residuals, "residuals")
    spec = _least_squares_method(method)
    given = {} if initial_radius_factor is None else {"initial_radius_factor": initial_radius_factor}
    opts = spec.check_options(given)
    gtol = check_positive_float(gtol, "gtol", allow_zero=True)
    ftol = check_positive_float(ftol, "ftol", allow_zero=True)
    xtol = check_positive_float(xtol, "xtol", allow_zero=True)
    max_iter = check_positive_int(max_iter, "max_iter")
    if max_memory is not None:
        max_memory = check_positive_int(max_memory, "max_memory")
    x0 = working_point(as_point(x0, "x0"))
    check_nonempty(x0, "x0")
    check_finite_point(x0, "x0")
    problem = _setup(residuals, x0, spec.name, max_memory)
    run = Run(problem.obj, spec.name, gtol=gtol, ftol=ftol, xtol=xtol, max_iter=max_iter,
              max_time=max_time, callback=callback, history=history, progress=progress,
              check_curvature=check_curvature, n=x0.numel())
    return spec.run(problem, x0.detach().reshape(-1).clone(), run, **opts)


def _least_squares_method(method: Any) -> MethodSpec:
    if not isinstance(method, str) or method not in LEAST_SQUARES_METHODS:
        known = list(LEAST_SQUARES_METHODS)
        hint = suggest(method, known) if isinstance(method, str) else ""
        raise ValueError(f"method must be one of {tuple(known)} ({describe(LEAST_SQUARES_METHODS)}); "
                         f"got {method!r}.{hint}")
    return LEAST_SQUARES_METHODS[method]


def _setup(residuals: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, method: str,
           max_memory: int | None) -> Residuals:
    """The flat residual function and its counted objective ``1/2 ||r||^2``, after refusing
    residuals not connected to ``x`` and a Jacobian over the memory guard."""
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
    return Residuals(resid, Objective(lambda z: half_sq(z.reshape(-1)), shape, max_memory=max_memory))


def jacobian_bytes(m: int, n: int, itemsize: int) -> int:
    """Bytes alive at the peak of one iteration, counted from the code (an estimate for the
    memory guard): the ``m x m`` identity ``jacrev`` vmaps over, the Jacobians at ``x`` and at
    the trial point, the scaled ``J D^{-1}`` (or the pseudo-inverse), and the thin SVD's
    ``U`` (``m x k``) and ``V^T`` (``k x n``), ``k = min(m, n)``."""
    k = min(m, n)
    return (m * m + 3 * m * n + k * (m + n)) * itemsize
