"""Classify a point of f (or a Hessian) by the second-derivative test, and beyond it.

At a point x with gradient g and Hessian H = Q diag(λ) Qᵀ (seed 002, Thm 2; Nocedal & Wright
2006, Thm 2.3-2.4):

* ‖g‖ > gradient_tol, or the Newton step ‖H⁺g‖ > step_tol -> ``"not critical"`` (eigenvalues
  are still reported). The second test makes the verdict independent of the scale of f: at
  x = -1.05, f = x**-1000 + y**2 has ‖g‖ ≈ 6e-19, far below any absolute tolerance, but the
  Newton step x/1001 ≈ 1e-3 shows the nearest critical point is not there (Dennis & Schnabel
  1996, sec. 7.2: stop on the step, relative to x, not on ‖g‖ alone). With ``refine``, a point
  that passes the gradient test but not the step test is first polished by Newton (at most
  1e-3·(1 + ‖x‖) away) and judged there;
* all λ > eig_tol -> ``"minimum"``; all λ < -eig_tol -> ``"maximum"``;
* some λ > eig_tol and some λ < -eig_tol -> ``"saddle"`` (indefinite H proves it, zero
  eigenvalues or not);
* otherwise H is singular and semidefinite: the higher-order analysis of
  :mod:`hesse.geometry.higher_order` (splitting lemma + nested forward-mode derivatives) gives
  ``"degenerate minimum"``, ``"degenerate maximum"``, ``"degenerate saddle"`` or
  ``"inconclusive"`` with the reason. Before that, a **non-isolated** critical set is
  recognised: from x ± h·v (h = 0.05·max(1, ‖x‖), v a null eigenvector of H) damped Newton
  converges to a critical point at distance >= h/2 with the same value of f, i.e. x lies on a
  valley, ridge or flat set of critical points (e.g. the line x = y of f = (x - y)**2); the kind
  is then ``"non-isolated"`` and ``reason`` gives the direction of the set. An isolated point is
  attracted back (Newton from x + h·v returns to x), so the test does not fire there. h is not
  tiny on purpose: x**8 + y**2 changes by only 1e-24 over a step of 1e-3 (flat to float64
  precision, and below the pseudo-inverse cut of Newton), but by 4e-11 over 0.05. Functions flat to
  float64 precision over 0.05 (x**12 and beyond) are reported as non-isolated; a valley curved
  more tightly than about h may be missed (then the higher-order analysis decides, or says why not).

Tolerances (stated in the result): eig_tol = sqrt(eps)·max(1, ‖H‖₂) and
gradient_tol = sqrt(eps)·max(1, |f(x)|, ‖H‖₂), i.e. relative to the problem's own scale with
an absolute floor; step_tol = sqrt(eps)·max(1, ‖x‖) (the accuracy to which a critical point
can be located); eps is the machine epsilon of x's dtype. A Hessian given alone (no f) uses
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
from torch.func import grad, vmap

from hesse._autodiff import gradient, hessian
from hesse._validation import as_point, check_callable, check_scalar_output
from hesse.geometry._newton import (
    batched_newton,
    newton_diagnostics,
    newton_step_lengths,
    step_tolerance,
)
from hesse.geometry.definiteness import as_symmetric_matrix, default_matrix_tolerance
from hesse.operators import CurvatureOperator

__all__ = ["KINDS", "CriticalPoint", "classify"]

KINDS = ("minimum", "maximum", "saddle", "degenerate minimum", "degenerate maximum", "degenerate saddle",
         "non-isolated", "inconclusive", "not critical")


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
    step = float(newton_step_lengths(g[None], lam[None], Q[None])[0])
    s_tol = float(step_tolerance(xf))
    note = ""
    if step > s_tol and refine:
        limit = 1e-3 * (1 + float(xf.norm()))
        xr, _, _ = batched_newton(flat, xf[None].detach(), max_iter=200, max_distance=limit)
        moved = float((xr[0] - xf).norm())
        if math.isfinite(moved) and moved <= limit:
            gr, Hr = gradient(flat, xr[0]), hessian(flat, xr[0])
            lr, Qr = torch.linalg.eigh(Hr)
            step_r = float(newton_step_lengths(gr[None], lr[None], Qr[None])[0])
            if step_r <= float(step_tolerance(xr[0])) and float(gr.norm()) <= g_tol:
                note = (f" [x polished by pseudo-inverse Newton: moved {moved:.2g}, Newton step {step:.2g} -> "
                        f"{step_r:.2g}]")
                xf, g, H, lam, Q, step = xr[0], gr, Hr, lr, Qr, step_r
                kind, index, nullity = _second_order_kind(lam, eig_tol)
                common.update(eigenvalues=lam, index=index, nullity=nullity, hessian=H, eigenvectors=Q,
                              condition_number=_condition_number(lam, eig_tol), gradient_norm=float(g.norm()),
                              value=float(flat(xf)))
                x = xf.reshape(shape)
    if step > s_tol:
        return CriticalPoint(x=x, kind="not critical", order=None,
                             reason=f"the Newton step ‖H⁺∇f‖ = {step:.3g} > step_tol = {s_tol:.3g}: the nearest "
                                    f"critical point is not at x, although ‖∇f(x)‖ = {gnorm:.3g} is small "
                                    "(f is flat here on its own scale)", **common)
    if kind is not None:
        desc = {"minimum": "all eigenvalues > eigenvalue_tol (positive definite)",
                "maximum": "all eigenvalues < -eigenvalue_tol (negative definite)",
                "saddle": "eigenvalues of both signs (indefinite)"}[kind]
        if kind == "saddle" and nullity:
            desc += f", {nullity} zero eigenvalue(s) do not change that"
        return CriticalPoint(x=x, kind=kind, order=2, reason=f"second-derivative test: {desc}" + note, **common)
    if not higher_order:
        return CriticalPoint(x=x, kind="inconclusive", order=None,
                             reason=f"the Hessian is semidefinite with nullity {nullity}: the second-derivative "
                                    "test is inconclusive (higher_order=False)", **common)
    valley = _non_isolated_direction(flat, xf.detach(), lam, Q, eig_tol, g_tol, value)
    if valley is not None:
        d, dist = valley
        nz = lam[lam.abs() > eig_tol]
        shape_word = ("a valley of non-strict minima" if bool((nz > 0).all()) and nz.numel() else
                      "a ridge of non-strict maxima" if bool((nz < 0).all()) and nz.numel() else
                      "a set of saddles" if nz.numel() else "a flat set")
        return CriticalPoint(
            x=x, kind="non-isolated", order=None,
            reason=f"Hessian singular (nullity {nullity}) and the critical point is not isolated: {shape_word} "
                   f"runs through x along the direction d = {_fmt_direction(d)}; from a step of {dist:.2g} along "
                   f"it, Newton converges to another critical point with the same value of f (to float64 "
                   f"precision)" + note, **common)
    if refine and gnorm > 0:
        xr, gr, _ = batched_newton(flat, xf[None].detach(), max_iter=200)
        moved = float((xr[0] - xf).norm())
        if float(gr[0]) < gnorm and moved <= 1e-3 * (1 + float(xf.norm())):
            xf = xr[0]
            H = hessian(flat, xf)
            lam, Q = torch.linalg.eigh(H)
            g = gradient(flat, xf)
            note += f" [x polished by pseudo-inverse Newton: moved {moved:.2g}, ‖∇f‖ {gnorm:.2g} -> {float(g.norm()):.2g}]"
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


PROBE_STEP = 0.05
"""Relative length of the probe step of the non-isolated test (module docstring)."""


def _non_isolated_direction(f, x: torch.Tensor, lam: torch.Tensor, Q: torch.Tensor, eig_tol: float,
                            g_tol: float, value: float) -> tuple[torch.Tensor, float] | None:
    """Direction d (unit) and distance of another critical point found by Newton from x ± h·v, v in
    the null space of H, if there is one with the same value of f; None for an isolated point.

    Newton iterates from an isolated degenerate point's neighbourhood return to it (for x**k the
    pseudo-inverse step contracts the distance by (k - 2)/(k - 1) per iteration), so landing at
    >= h/2 from x on a critical point at the same level means x lies on a set of critical points.
    Cost: one batched Newton run (at most 200 iterations) from 2·nullity starts.
    """
    null = lam.abs() <= eig_tol
    if not bool(null.any()):
        return None
    h = PROBE_STEP * max(1.0, float(x.norm()))
    V = Q[:, null].T
    starts = torch.cat([x + h * V, x - h * V])
    try:
        X, _, _ = batched_newton(f, starts, max_iter=200, max_step=h)
        vals, steps, _ = newton_diagnostics(f, X)
        G = vmap(grad(f))(X)
    except RuntimeError:  # data-dependent control flow: no vmap, no valley test
        return None
    dist = (X - x).norm(dim=1)
    eps = torch.finfo(x.dtype).eps
    # the value of f is constant on a connected set of critical points: equal up to rounding
    same_level = (vals - value).abs() <= 64 * eps * max(1.0, abs(value))
    ok = (dist >= h / 2) & (dist <= 4 * h) & (steps <= step_tolerance(X)) & (G.norm(dim=1) <= g_tol) & same_level
    if not bool(ok.any()):
        return None
    j = int(torch.nonzero(ok)[0])
    d = (X[j] - x) / dist[j]
    if float(d[int(d.abs().argmax())]) < 0:
        d = -d
    return d, float(dist[j])


def _fmt_direction(d: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(a):.3g}" for a in d) + ")"


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
