"""Classify a point of f (or a Hessian) by the second-derivative test, and beyond it.

At a point x with gradient g and Hessian H = Q diag(λ) Qᵀ (seed 002, Thm 2; Nocedal & Wright
2006, Thm 2.3-2.4):

* ‖g‖ > gradient_tol -> ``"not critical"`` (eigenvalues are still reported);
* all λ > eig_tol -> ``"minimum"``; all λ < -eig_tol -> ``"maximum"``;
* some λ > eig_tol and some λ < -eig_tol -> ``"saddle"`` (indefinite H proves it, zero
  eigenvalues or not);
* otherwise H is singular and semidefinite: the higher-order analysis of
  :mod:`hesse.geometry.higher_order` (splitting lemma + nested forward-mode derivatives) gives
  ``"degenerate minimum"``, ``"degenerate maximum"``, ``"degenerate saddle"`` or
  ``"inconclusive"`` with the reason.

Tolerances (stated in the result): eig_tol = sqrt(eps)·max(1, ‖H‖₂) and
gradient_tol = sqrt(eps)·max(1, |f(x)|, ‖H‖₂), i.e. relative to the problem's own scale with
an absolute floor; eps is the machine epsilon of x's dtype. A Hessian given alone (no f) uses
the numerical-rank tolerance max(n, 10)·eps·‖H‖₂ and cannot go beyond second order.

Cost with f: one gradient, one dense Hessian (n HVPs) and one eigendecomposition (O(n³)); the
degenerate branch adds the higher-order analysis. A large :class:`CurvatureOperator` (n >
``dense_limit``) is classified from its two extreme eigenvalues (ARPACK Lanczos, about 2·(20 + 2k)
products); index and nullity are then unknown and reported as None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from hesse._autodiff import gradient, hessian
from hesse._validation import as_point, check_callable, check_scalar_output
from hesse.geometry.definiteness import as_symmetric_matrix, default_matrix_tolerance
from hesse.operators import CurvatureOperator

__all__ = ["KINDS", "CriticalPoint", "classify"]

KINDS = ("minimum", "maximum", "saddle", "degenerate minimum", "degenerate maximum", "degenerate saddle",
         "inconclusive", "not critical")


@dataclass
class CriticalPoint:
    """A classified point. ``kind`` is one of :data:`KINDS`; ``index`` counts negative eigenvalues,
    ``nullity`` the eigenvalues within ``eigenvalue_tol`` of 0; ``condition_number`` is
    max|λ| / min|λ| (inf when singular); ``order`` is the order of the deciding term (2 for the
    second-derivative test, 3, 4, ... after higher-order analysis); ``found_by`` says which route
    of :func:`hesse.critical_points` found the point (None for :func:`classify`)."""

    x: torch.Tensor | None
    kind: str
    eigenvalues: torch.Tensor
    index: int | None
    nullity: int | None
    condition_number: float
    gradient_norm: float | None
    value: float | None
    eigenvalue_tol: float
    gradient_tol: float | None
    reason: str
    order: int | None = None
    found_by: str | None = None
    hessian: torch.Tensor | None = field(default=None, repr=False)
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)

    @property
    def is_critical(self) -> bool:
        return self.kind != "not critical"

    def as_dict(self) -> dict:
        """JSON-friendly dictionary (lists and floats)."""
        def num(v):
            return None if v is None else (v if math.isfinite(v) else str(v))

        return {
            "x": None if self.x is None else self.x.tolist(), "kind": self.kind,
            "value": self.value, "gradient_norm": self.gradient_norm,
            "eigenvalues": self.eigenvalues.tolist(), "index": self.index, "nullity": self.nullity,
            "condition_number": num(self.condition_number), "order": self.order,
            "eigenvalue_tol": self.eigenvalue_tol, "gradient_tol": self.gradient_tol,
            "reason": self.reason, "found_by": self.found_by,
            "hessian": None if self.hessian is None else self.hessian.tolist(),
        }

    def __repr__(self) -> str:
        def vec(t, k=6):
            vals = [f"{float(a):.6g}" for a in t.reshape(-1)[:k]]
            return "[" + ", ".join(vals) + (", ..." if t.numel() > k else "") + "]"

        parts = [f"kind={self.kind!r}"]
        if self.x is not None:
            parts.append(f"x={vec(self.x)}")
        if self.value is not None:
            parts.append(f"value={self.value:.6g}")
        parts.append(f"eigenvalues={vec(self.eigenvalues)}")
        parts.append(f"index={self.index}, nullity={self.nullity}, condition_number={self.condition_number:.6g}")
        if self.gradient_norm is not None:
            parts.append(f"gradient_norm={self.gradient_norm:.3g}")
        parts.append(f"eigenvalue_tol={self.eigenvalue_tol:.3g}")
        if self.gradient_tol is not None:
            parts.append(f"gradient_tol={self.gradient_tol:.3g}")
        if self.order is not None:
            parts.append(f"order={self.order}")
        if self.found_by:
            parts.append(f"found_by={self.found_by!r}")
        parts.append(f"reason={self.reason!r}")
        return "CriticalPoint(" + ", ".join(parts) + ")"


def _condition_number(lam: torch.Tensor, tol: float) -> float:
    a = lam.abs()
    if a.numel() == 0 or float(a.min()) <= tol:
        return math.inf
    return float(a.max() / a.min())


def _second_order_kind(lam: torch.Tensor, tol: float) -> tuple[str | None, int, int]:
    pos, neg = int((lam > tol).sum()), int((lam < -tol).sum())
    n = lam.numel()
    if pos == n:
        return "minimum", neg, 0
    if neg == n:
        return "maximum", neg, 0
    if pos and neg:
        return "saddle", neg, n - pos - neg
    return None, neg, n - pos - neg


def classify(f, x=None, tol: float | None = None, *, gradient_tol: float | None = None,
             higher_order: bool = True, max_order: int = 6, refine: bool = True,
             dense_limit: int = 2000) -> CriticalPoint:
    """Classify the point ``x`` of ``f`` (a callable of one tensor returning a scalar), or a Hessian.

    ``classify(f, x)``: gradient, Hessian, eigenvalues, index, nullity, κ and the verdict (module
    docstring). ``tol`` overrides the eigenvalue tolerance, ``gradient_tol`` the gradient one.
    When H is singular and semidefinite and ``higher_order`` is true, the point is decided by the
    splitting lemma and derivatives up to ``max_order``; with ``refine`` the analysis first
    polishes x by pseudo-inverse Newton steps (it moves at most 1e-3·(1 + ‖x‖); the reported
    ``x`` is the polished one and ``reason`` says so).

    ``classify(H)``: H a symmetric matrix (tensor, array, nested list) or a
    :class:`~hesse.operators.CurvatureOperator`, taken to be the Hessian at a critical point:
    second-order verdict only (a singular semidefinite H gives ``"inconclusive"``).
    """
    if x is None:
        if callable(f) and not isinstance(f, (CurvatureOperator, torch.Tensor, np.ndarray)):
            raise TypeError("classify(f, x): x is missing. Pass the point to classify, e.g. "
                            "hesse.classify(f, [0.0, 0.0]), or pass a Hessian matrix alone: hesse.classify(H).")
        return _classify_matrix(f, tol, dense_limit)
    check_callable(f, "f")
    x = as_point(x, "x")
    shape = x.shape
    xf = x.reshape(-1)

    def flat(z: torch.Tensor) -> torch.Tensor:
        return f(z.reshape(shape))

    n = xf.numel()
    if n > dense_limit:
        raise ValueError(f"x has {n} entries > dense_limit={dense_limit}: classify(f, x) forms the dense "
                         "Hessian. Build hesse.HessianOperator.from_function(f, x) and call "
                         "hesse.classify(op) (extreme eigenvalues by Lanczos), or raise dense_limit.")
    value = float(check_scalar_output(flat(xf)).detach())
    if not math.isfinite(value):
        raise ValueError(f"f(x) = {value} is not finite at x; classification needs a finite value.")
    g = gradient(flat, xf)
    H = hessian(flat, xf)
    lam, Q = torch.linalg.eigh(H)
    eps = torch.finfo(xf.dtype).eps
    hnorm = float(lam.abs().max()) if n else 0.0
    eig_tol = float(tol) if tol is not None else math.sqrt(eps) * max(1.0, hnorm)
    g_tol = float(gradient_tol) if gradient_tol is not None else math.sqrt(eps) * max(1.0, abs(value), hnorm)
    gnorm = float(g.norm())
    kappa = _condition_number(lam, eig_tol)
    kind, index, nullity = _second_order_kind(lam, eig_tol)
    common = dict(eigenvalues=lam, index=index, nullity=nullity, condition_number=kappa,
                  gradient_norm=gnorm, value=value, eigenvalue_tol=eig_tol, gradient_tol=g_tol,
                  hessian=H, eigenvectors=Q)
    if gnorm > g_tol:
        return CriticalPoint(x=x, kind="not critical", order=None,
                             reason=f"‖∇f(x)‖ = {gnorm:.3g} > gradient_tol = {g_tol:.3g}: x is not a critical "
                                    f"point (the eigenvalues describe the curvature there only)", **common)
    if kind is not None:
        desc = {"minimum": "all eigenvalues > eigenvalue_tol (positive definite)",
                "maximum": "all eigenvalues < -eigenvalue_tol (negative definite)",
                "saddle": "eigenvalues of both signs (indefinite)"}[kind]
        if kind == "saddle" and nullity:
            desc += f", {nullity} zero eigenvalue(s) do not change that"
        return CriticalPoint(x=x, kind=kind, order=2, reason=f"second-derivative test: {desc}", **common)
    if not higher_order:
        return CriticalPoint(x=x, kind="inconclusive", order=None,
                             reason=f"the Hessian is semidefinite with nullity {nullity}: the second-derivative "
                                    "test is inconclusive (higher_order=False)", **common)
    note = ""
    if refine and gnorm > 0:
        from hesse.geometry._newton import batched_newton

        xr, gr, _ = batched_newton(flat, xf[None].detach(), max_iter=200)
        moved = float((xr[0] - xf).norm())
        if float(gr[0]) < gnorm and moved <= 1e-3 * (1 + float(xf.norm())):
            xf = xr[0]
            H = hessian(flat, xf)
            lam, Q = torch.linalg.eigh(H)
            g = gradient(flat, xf)
            note = f" [x polished by pseudo-inverse Newton: moved {moved:.2g}, ‖∇f‖ {gnorm:.2g} -> {float(g.norm()):.2g}]"
            kind2, index, nullity = _second_order_kind(lam, eig_tol)
            if kind2 is not None:  # after polishing the point is non-degenerate after all
                common.update(eigenvalues=lam, index=index, nullity=nullity, hessian=H, eigenvectors=Q,
                              condition_number=_condition_number(lam, eig_tol), gradient_norm=float(g.norm()),
                              value=float(flat(xf)))
                return CriticalPoint(x=xf.reshape(shape), kind=kind2, order=2,
                                     reason="second-derivative test at the polished point" + note, **common)
            common.update(eigenvalues=lam, index=index, nullity=nullity, hessian=H, eigenvectors=Q,
                          gradient_norm=float(g.norm()), value=float(flat(xf)))
    from hesse.geometry.higher_order import higher_order_analysis

    res = higher_order_analysis(flat, xf.detach(), lam, Q, eig_tol, max_order=max_order)
    return CriticalPoint(x=xf.reshape(shape), kind=res.kind, order=res.order,
                         reason=f"Hessian singular (nullity {nullity}); {res.reason}" + note, **common)


def _classify_matrix(H, tol: float | None, dense_limit: int) -> CriticalPoint:
    if isinstance(H, CurvatureOperator) and H.shape[0] > dense_limit:
        return _classify_large_operator(H, tol)
    M = as_symmetric_matrix(H, "H")
    lam, Q = torch.linalg.eigh(M)
    eig_tol = float(tol) if tol is not None else default_matrix_tolerance(M)
    kind, index, nullity = _second_order_kind(lam, eig_tol)
    reason = "second-derivative test on the given Hessian (assumed to be at a critical point)"
    if kind is None:
        kind = "inconclusive"
        reason = (f"the Hessian is semidefinite with nullity {nullity}; deciding needs higher-order "
                  "derivatives: call hesse.classify(f, x) with the function")
    return CriticalPoint(x=None, kind=kind, eigenvalues=lam, index=index, nullity=nullity,
                         condition_number=_condition_number(lam, eig_tol), gradient_norm=None, value=None,
                         eigenvalue_tol=eig_tol, gradient_tol=None, reason=reason,
                         order=2 if kind != "inconclusive" else None, hessian=M, eigenvectors=Q)


def _classify_large_operator(op: CurvatureOperator, tol: float | None) -> CriticalPoint:
    from scipy.sparse.linalg import eigsh

    A = op.to_scipy()
    lo = float(eigsh(A, k=1, which="SA", tol=1e-8, return_eigenvectors=False)[0])
    hi = float(eigsh(A, k=1, which="LA", tol=1e-8, return_eigenvectors=False)[0])
    eps = torch.finfo(op.dtype).eps
    eig_tol = float(tol) if tol is not None else math.sqrt(eps) * max(1.0, abs(lo), abs(hi))
    lam = torch.tensor([lo, hi], dtype=torch.float64)
    if lo > eig_tol:
        kind = "minimum"
    elif hi < -eig_tol:
        kind = "maximum"
    elif lo < -eig_tol and hi > eig_tol:
        kind = "saddle"
    else:
        kind = "inconclusive"
    index = 0 if kind == "minimum" else op.shape[0] if kind == "maximum" else None
    nullity = 0 if kind in ("minimum", "maximum") else None
    kappa = (max(abs(lo), abs(hi)) / min(abs(lo), abs(hi))) if kind in ("minimum", "maximum") else math.inf
    reason = (f"operator of size {op.shape[0]}: classified from its extreme eigenvalues "
              f"λ_min = {lo:.6g}, λ_max = {hi:.6g} (ARPACK Lanczos); index and nullity not computed")
    if kind == "inconclusive":
        reason += "; an extreme eigenvalue is within tolerance of 0"
    if kind == "saddle":
        reason += "; the condition number of an indefinite operator needs min|λ|, not computed (inf)"
    return CriticalPoint(x=None, kind=kind, eigenvalues=lam, index=index, nullity=nullity, condition_number=kappa,
                         gradient_norm=None, value=None, eigenvalue_tol=eig_tol, gradient_tol=None, reason=reason,
                         order=2 if kind != "inconclusive" else None)
