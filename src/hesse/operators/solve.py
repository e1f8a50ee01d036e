"""Linear solves ``A x = b`` with a curvature operator: conjugate gradients, MINRES, dense.

CG follows Hestenes & Stiefel (1952) / Nocedal & Wright (2006), Alg. 5.2: one product per
iteration, residual ``r = b - A x`` updated recursively and re-checked against the true residual
at the end. A non-positive curvature ``pᵀAp <= 0`` means ``A`` is not positive definite: CG stops
there and says so rather than returning a meaningless iterate as converged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import CurvatureOperator


@dataclass
class LinearSolveResult:
    """Result of ``op.solve(b)``: the solution and how far it is trusted."""

    x: torch.Tensor
    converged: bool
    residual_norm: float
    relative_residual: float
    num_iterations: int
    num_matvecs: int
    method: str
    message: str

    def __repr__(self) -> str:
        state = "converged" if self.converged else "NOT converged"
        return (
            f"LinearSolveResult({self.method}: {state} in {self.num_iterations} iterations, "
            f"‖b - Ax‖/‖b‖ = {self.relative_residual:.2e}; {self.message})"
        )


def solve(op: CurvatureOperator, b: Any, method: str = "cg", tol: float = 1e-8,
          max_iter: int | None = None, x0: Any = None) -> LinearSolveResult:
    """Solve ``op @ x = b``; see :meth:`CurvatureOperator.solve`."""
    n = op.shape[0]
    b = op._as_block(b, "b")
    if b.shape != (n,):
        raise ValueError(f"b must have shape ({n},), got {tuple(b.shape)}.")
    if not np.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}.")
    x0 = None if x0 is None else op._as_block(x0, "x0")
    if x0 is not None and x0.shape != (n,):
        raise ValueError(f"x0 must have shape ({n},), got {tuple(x0.shape)}.")
    if method == "cg":
        return _cg(op, b, tol, max_iter if max_iter is not None else 10 * n, x0)
    if method == "minres":
        return _minres(op, b, tol, max_iter if max_iter is not None else 10 * n, x0)
    if method == "direct":
        return _direct(op, b)
    raise ValueError(f"method must be 'cg', 'minres' or 'direct'; got {method!r}.")


def _finish(op, b, x, it, start_count, method, converged, message):
    r = b - op.matvec(x)
    bnorm = float(torch.linalg.vector_norm(b))
    rnorm = float(torch.linalg.vector_norm(r))
    rel = rnorm / bnorm if bnorm > 0 else rnorm
    return LinearSolveResult(x, converged, rnorm, rel, it, op.num_matvecs - start_count, method,
                             message)


def _cg(op, b, tol, max_iter, x0) -> LinearSolveResult:
    start = op.num_matvecs
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - op.matvec(x) if x0 is not None else b.clone()
    bnorm = float(torch.linalg.vector_norm(b))
    if bnorm == 0:
        return _finish(op, b, torch.zeros_like(b), 0, start, "cg", True, "b = 0, so x = 0")
    p = r.clone()
    rs = torch.dot(r, r)
    target = tol * bnorm
    for it in range(1, max_iter + 1):
        Ap = op.matvec(p)
        pAp = torch.dot(p, Ap)
        if not torch.isfinite(pAp):
            return _finish(op, b, x, it, start, "cg", False,
                           "a product was not finite; check the operator")
        if pAp <= 0:
            return _finish(op, b, x, it, start, "cg", False,
                           f"negative curvature pᵀAp = {float(pAp):.3e}: the operator is not positive "
                           "definite; add damping (op + sigma) or use method='minres'")
        alpha = rs / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        rs_new = torch.dot(r, r)
        if float(rs_new.sqrt()) <= target:
            res = _finish(op, b, x, it, start, "cg", True, "residual below tol")
            if res.relative_residual > 10 * tol:  # recursive residual drifted from the true one
                res.converged = False
                res.message = "recursive residual met tol but the true residual did not"
            return res
        p = r + (rs_new / rs) * p
        rs = rs_new
    return _finish(op, b, x, max_iter, start, "cg", False,
                   f"max_iter={max_iter} reached before the residual met tol")


def _minres(op, b, tol, max_iter, x0) -> LinearSolveResult:
    from scipy.sparse.linalg import minres

    start = op.num_matvecs
    A = op.to_scipy()
    b_np = b.detach().to("cpu", torch.float64).numpy()
    x0_np = None if x0 is None else x0.detach().to("cpu", torch.float64).numpy()
    x_np, info = minres(A, b_np, x0=x0_np, rtol=tol, maxiter=max_iter)
    x = torch.from_numpy(x_np).to(device=op.device, dtype=op.dtype)
    msg = "residual below tol" if info == 0 else f"scipy minres info={info}"
    res = _finish(op, b, x, -1, start, "minres", info == 0, msg)
    res.num_iterations = res.num_matvecs - 1
    return res


def _direct(op, b) -> LinearSolveResult:
    start = op.num_matvecs
    A = op.to_dense()
    try:
        x = torch.linalg.solve(A, b)
    except RuntimeError as err:
        raise ValueError(f"the operator is singular; the direct solve failed ({err}). "
                         "Add damping (op + sigma) or use method='minres'.") from None
    return _finish(op, b, x, 1, start, "direct", True, "dense LU solve")
