"""Classify a point of f (or a Hessian) by the second-derivative test, and beyond it.

At a point x with gradient g and Hessian H = Q diag(λ) Qᵀ (Nocedal & Wright 2006,
Thm 2.3-2.4):

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import eigsh
from torch.func import grad, vmap

from hesse._autodiff import gradient, hessian
from hesse._result import Result
from hesse._validation import as_point, check_callable, check_scalar_output, working_point
from hesse.geometry._newton import (
    batched_newton,
    newton_diagnostics,
    newton_step_lengths,
    step_tolerance,
)
from hesse.geometry.definiteness import as_symmetric_matrix, default_matrix_tolerance
from hesse.geometry.higher_order import higher_order_analysis
from hesse.operators import CurvatureOperator

__all__ = ["KINDS", "CriticalPoint", "classify"]

KINDS = ("minimum", "maximum", "saddle", "degenerate minimum", "degenerate maximum", "degenerate saddle",
         "non-isolated", "inconclusive", "not critical")

POLISH_RADIUS = 1e-3
"""Polishing by Newton may move x by at most POLISH_RADIUS·(1 + ‖x‖): far enough to cross the
distance sqrt(eps)-accurate input usually carries, near enough that the verdict still describes
the point the caller asked about."""

POLISH_MAX_ITER = 200
"""Newton iterations allowed when polishing x or probing for a non-isolated set: Newton converges
only linearly (rate (k - 2)/(k - 1) for x**k) towards degenerate points, so it needs more than the
handful of iterations of the quadratic case."""

PROBE_STEP = 0.05
"""Relative length of the probe step of the non-isolated test (module docstring)."""

SAME_LEVEL_ULPS = 64
"""Two critical points lie on one connected set only if f has the same value there; "the same" is
up to SAME_LEVEL_ULPS·eps·max(1, |f|), the rounding of a few dozen operations evaluating f."""

PROBE_TIME_LIMIT = 10.0
"""Seconds the non-isolated test's Newton runs may take together: from 2·nullity starts with n x n
Hessians each it grows like nullity·n³ per iteration, (x**4).sum() in 60 variables took a minute.
Past the limit the test stops, and the verdict says it was cut short."""

PROBE_CHUNK_BYTES = 256 * 1024**2
"""The starts of the non-isolated test run in chunks whose batched Hessians (PROBE_MATRICES
buffers of chunk x n x n) take at most this many bytes (at least one start per chunk)."""

PROBE_MATRICES = 9
"""(B, n, n) buffers alive at the peak of a batched Newton iteration (the vmapped Hessian about
7, its eigenvectors and the scaled products; as hesse.optimize's batched Newton)."""

ARPACK_TOL = 1e-8
"""Relative accuracy asked of ARPACK for the extreme eigenvalues of a large operator: below the
sqrt(eps)·max(1, |λ|) tolerance the verdict uses, at a modest number of products."""

@dataclass(repr=False)
class CriticalPoint(Result):
    """A classified point. ``kind`` is one of :data:`KINDS`; ``index`` counts negative eigenvalues,
    ``nullity`` the eigenvalues within ``eigenvalue_tol`` of 0; ``condition_number`` is
    max|λ| / min|λ| (inf when singular); ``order`` is the order of the deciding term (2 for the
    second-derivative test, 3, 4, ... after higher-order analysis); ``found_by`` says which route
    of :func:`hesse.critical_points` found the point (None for :func:`classify`); ``reason`` says
    why, in words."""

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
    hessian: torch.Tensor | None = field(default=None)
    eigenvectors: torch.Tensor | None = field(default=None)

    @property
    def is_critical(self) -> bool:
        return self.kind != "not critical"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary: tensors as lists, a non-finite condition number as its string
        ("inf", which strict JSON cannot hold as a number); the eigenvectors are left out."""
        def num(v: float | None) -> float | str | None:
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
        # One line, the verdict first: points are printed in lists, where the base class's
        # one-field-per-line table (15 fields, a Hessian among them) would bury the kind.
        def vec(t: torch.Tensor, k: int = 6) -> str:
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
    """(kind or None when H is singular and semidefinite, index, nullity) from the eigenvalues."""
    pos, neg = int((lam > tol).sum()), int((lam < -tol).sum())
    n = lam.numel()
    if pos == n:
        return "minimum", neg, 0
    if neg == n:
        return "maximum", neg, 0
    if pos and neg:
        return "saddle", neg, n - pos - neg
    return None, neg, n - pos - neg


@dataclass
class _LocalModel:
    """f's value, gradient and Hessian eigendecomposition at a flat point ``x``."""

    x: torch.Tensor
    value: float
    gradient: torch.Tensor
    hessian: torch.Tensor
    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor

    def newton_step(self) -> float:
        """‖H⁺∇f‖, the estimated distance to the nearest critical point."""
        return float(newton_step_lengths(self.gradient[None], self.eigenvalues[None], self.eigenvectors[None])[0])


def _local_model(flat: Callable[[torch.Tensor], torch.Tensor], xf: torch.Tensor) -> _LocalModel:
    H = hessian(flat, xf)
    lam, Q = torch.linalg.eigh(H)
    return _LocalModel(xf, float(flat(xf)), gradient(flat, xf), H, lam, Q)


@dataclass
class _Tolerances:
    eigenvalue: float
    gradient: float
    step: float


def _fields(at: _LocalModel, tols: _Tolerances) -> dict[str, Any]:
    """The CriticalPoint fields that describe the local model ``at``."""
    _, index, nullity = _second_order_kind(at.eigenvalues, tols.eigenvalue)
    return dict(eigenvalues=at.eigenvalues, index=index, nullity=nullity,
                condition_number=_condition_number(at.eigenvalues, tols.eigenvalue),
                gradient_norm=float(at.gradient.norm()), value=at.value, eigenvalue_tol=tols.eigenvalue,
                gradient_tol=tols.gradient, hessian=at.hessian, eigenvectors=at.eigenvectors)


def classify(f: Any, x: Any = None, tol: float | None = None, *, gradient_tol: float | None = None,
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
    point = working_point(as_point(x, "x"), "x")
    shape = point.shape
    xf = point.reshape(-1)

    def flat(z: torch.Tensor) -> torch.Tensor:
        return f(z.reshape(shape))

    _check_dense_size(xf.numel(), dense_limit)
    _check_finite_value(flat, xf)
    at = _local_model(flat, xf)
    tols = _tolerances(at, tol, gradient_tol)
    return _classify_point(flat, shape, at, tols, higher_order=higher_order, max_order=max_order, refine=refine)


def _check_dense_size(n: int, dense_limit: int) -> None:
    if n > dense_limit:
        raise ValueError(f"x has {n} entries > dense_limit={dense_limit}: classify(f, x) forms the dense "
                         "Hessian. Build hesse.HessianOperator.from_function(f, x) and call "
                         "hesse.classify(op) (extreme eigenvalues by Lanczos), or raise dense_limit.")


def _check_finite_value(flat: Callable[[torch.Tensor], torch.Tensor], xf: torch.Tensor) -> None:
    value = float(check_scalar_output(flat(xf)).detach())
    if not math.isfinite(value):
        raise ValueError(f"f(x) = {value} is not finite at x; classification needs a finite value.")


def _tolerances(at: _LocalModel, tol: float | None, gradient_tol: float | None) -> _Tolerances:
    """The tolerances of the module docstring, relative to the scale of f and H with a floor of 1."""
    eps = torch.finfo(at.x.dtype).eps
    hnorm = float(at.eigenvalues.abs().max()) if at.x.numel() else 0.0
    eig_tol = float(tol) if tol is not None else math.sqrt(eps) * max(1.0, hnorm)
    g_tol = (float(gradient_tol) if gradient_tol is not None
             else math.sqrt(eps) * max(1.0, abs(at.value), hnorm))
    return _Tolerances(eig_tol, g_tol, float(step_tolerance(at.x)))


def _classify_point(flat: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size, at: _LocalModel,
                    tols: _Tolerances, *, higher_order: bool, max_order: int, refine: bool) -> CriticalPoint:
    """The verdict at a point whose value is finite: the steps of the module docstring in order."""
    given = at  # the point as given: its gradient norm and value are quoted in the messages below
    gnorm = float(given.gradient.norm())
    if gnorm > tols.gradient:
        return _point(at, shape, tols, "not critical", None,
                      f"‖∇f(x)‖ = {gnorm:.3g} > gradient_tol = {tols.gradient:.3g}: x is not a critical "
                      "point (the eigenvalues describe the curvature there only)")
    step, note = at.newton_step(), ""
    if step > tols.step and refine:
        polished = _polish_to_critical(flat, at, tols.gradient)
        if polished is not None:
            note = (f" [x polished by pseudo-inverse Newton: moved {float((polished.x - at.x).norm()):.2g}, "
                    f"Newton step {step:.2g} -> {polished.newton_step():.2g}]")
            at, step = polished, polished.newton_step()
    if step > tols.step:
        return _point(at, shape, tols, "not critical", None,
                      f"the Newton step ‖H⁺∇f‖ = {step:.3g} > step_tol = {tols.step:.3g}: the nearest "
                      f"critical point is not at x, although ‖∇f(x)‖ = {gnorm:.3g} is small "
                      "(f is flat here on its own scale)")
    kind, _, nullity = _second_order_kind(at.eigenvalues, tols.eigenvalue)
    if kind is not None:
        return _point(at, shape, tols, kind, 2, _second_order_reason(kind, nullity) + note)
    if not higher_order:
        return _point(at, shape, tols, "inconclusive", None,
                      f"the Hessian is semidefinite with nullity {nullity}: the second-derivative "
                      "test is inconclusive (higher_order=False)")
    valley, probe_note = _non_isolated_direction(flat, at.x.detach(), at.eigenvalues, at.eigenvectors,
                                                 tols.eigenvalue, tols.gradient, given.value)
    note += probe_note
    if valley is not None:
        return _point(at, shape, tols, "non-isolated", None, _non_isolated_reason(at, tols, *valley) + note)
    if refine and gnorm > 0:
        polished = _polish_degenerate(flat, at, gnorm)
        if polished is not None:
            moved = float((polished.x - at.x).norm())
            note += (f" [x polished by pseudo-inverse Newton: moved {moved:.2g}, ‖∇f‖ {gnorm:.2g} -> "
                     f"{float(polished.gradient.norm()):.2g}]")
            at = polished
            kind, _, nullity = _second_order_kind(at.eigenvalues, tols.eigenvalue)
            if kind is not None:  # after polishing the point is non-degenerate after all
                return _point(at, shape, tols, kind, 2, "second-derivative test at the polished point" + note)
    try:
        res = higher_order_analysis(flat, at.x.detach(), at.eigenvalues, at.eigenvectors,
                                    tols.eigenvalue, max_order=max_order)
    except RuntimeError as err:
        if not str(err).startswith("vmap:"):
            raise
        # the higher-order test batches f's derivatives over directions with torch.func.vmap
        raise ValueError(
            "f cannot be batched with torch.func.vmap, which the higher-order test at this "
            "degenerate point needs: it calls .item() (or float(), .tolist()) or branches in Python "
            "on a tensor's value. Write f with torch operations (torch.where for branches), or pass "
            "higher_order=False for the second-order verdict only.") from None
    return _point(at, shape, tols, res.kind, res.order,
                  f"Hessian singular (nullity {nullity}); {res.reason}" + note)


def _point(at: _LocalModel, shape: torch.Size, tols: _Tolerances, kind: str, order: int | None,
           reason: str) -> CriticalPoint:
    return CriticalPoint(x=at.x.reshape(shape), kind=kind, order=order, reason=reason, **_fields(at, tols))


def _second_order_reason(kind: str, nullity: int) -> str:
    desc = {"minimum": "all eigenvalues > eigenvalue_tol (positive definite)",
            "maximum": "all eigenvalues < -eigenvalue_tol (negative definite)",
            "saddle": "eigenvalues of both signs (indefinite)"}[kind]
    if kind == "saddle" and nullity:
        desc += f", {nullity} zero eigenvalue(s) do not change that"
    return f"second-derivative test: {desc}"


def _polish_to_critical(flat: Callable[[torch.Tensor], torch.Tensor], at: _LocalModel,
                        g_tol: float) -> _LocalModel | None:
    """The local model at the critical point Newton reaches within POLISH_RADIUS·(1 + ‖x‖) of x,
    if its Newton step is within the step tolerance and its gradient within ``g_tol``; else None."""
    limit = POLISH_RADIUS * (1 + float(at.x.norm()))
    xr, _, _ = batched_newton(flat, at.x[None].detach(), max_iter=POLISH_MAX_ITER, max_distance=limit)
    moved = float((xr[0] - at.x).norm())
    if not (math.isfinite(moved) and moved <= limit):
        return None
    polished = _local_model(flat, xr[0])
    if polished.newton_step() <= float(step_tolerance(xr[0])) and float(polished.gradient.norm()) <= g_tol:
        return polished
    return None


def _polish_degenerate(flat: Callable[[torch.Tensor], torch.Tensor], at: _LocalModel,
                       gnorm: float) -> _LocalModel | None:
    """The local model after Newton from a degenerate point, if it lowered ‖∇f‖ below ``gnorm``
    without moving more than POLISH_RADIUS·(1 + ‖x‖); else None. The higher-order analysis
    resolves a term only above the location error of x (see :mod:`hesse.geometry.higher_order`)."""
    xr, gr, _ = batched_newton(flat, at.x[None].detach(), max_iter=POLISH_MAX_ITER)
    moved = float((xr[0] - at.x).norm())
    if float(gr[0]) < gnorm and moved <= POLISH_RADIUS * (1 + float(at.x.norm())):
        return _local_model(flat, xr[0])
    return None


def _non_isolated_reason(at: _LocalModel, tols: _Tolerances, d: torch.Tensor, dist: float) -> str:
    lam = at.eigenvalues
    nz = lam[lam.abs() > tols.eigenvalue]
    shape_word = ("a valley of non-strict minima" if bool((nz > 0).all()) and nz.numel() else
                  "a ridge of non-strict maxima" if bool((nz < 0).all()) and nz.numel() else
                  "a set of saddles" if nz.numel() else "a flat set")
    _, _, nullity = _second_order_kind(lam, tols.eigenvalue)
    return (f"Hessian singular (nullity {nullity}) and the critical point is not isolated: {shape_word} "
            f"runs through x along the direction d = {_fmt_direction(d)}; from a step of {dist:.2g} along "
            "it, Newton converges to another critical point with the same value of f (to float64 precision)")


def _non_isolated_direction(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, lam: torch.Tensor,
                            Q: torch.Tensor, eig_tol: float, g_tol: float,
                            value: float) -> tuple[tuple[torch.Tensor, float] | None, str]:
    """Direction d (unit) and distance of another critical point found by Newton from x ± h·v, v in
    the null space of H, if there is one with the same value of f; None for an isolated point.
    Also a note for the verdict when the test was cut short (``""`` otherwise).

    Newton iterates from an isolated degenerate point's neighbourhood return to it (for x**k the
    pseudo-inverse step contracts the distance by (k - 2)/(k - 1) per iteration), so landing at
    >= h/2 from x on a critical point at the same level means x lies on a set of critical points.
    Cost: batched Newton runs (at most POLISH_MAX_ITER iterations) from 2·nullity starts, in
    chunks of at most PROBE_CHUNK_BYTES of Hessians, within PROBE_TIME_LIMIT seconds.
    """
    null = lam.abs() <= eig_tol
    if not bool(null.any()):
        return None, ""
    h = PROBE_STEP * max(1.0, float(x.norm()))
    V = Q[:, null].T
    starts = torch.cat([x + h * V, x - h * V])
    n = x.numel()
    chunk = max(1, PROBE_CHUNK_BYTES // (PROBE_MATRICES * n * n * x.element_size()))
    deadline = time.monotonic() + PROBE_TIME_LIMIT
    found, done = None, 0
    for lo in range(0, starts.shape[0], chunk):
        if time.monotonic() > deadline:
            break
        try:
            X, _, _ = batched_newton(f, starts[lo:lo + chunk], max_iter=POLISH_MAX_ITER, max_step=h,
                                     deadline=deadline)
            vals, steps, _ = newton_diagnostics(f, X)
            G = vmap(grad(f))(X)
        except RuntimeError as err:
            if "vmap" not in str(err) and "functorch" not in str(err):
                raise  # an allocation failure or a defect: never taken for "no valley"
            return None, ""  # data-dependent control flow: no vmap, no valley test
        done = lo + X.shape[0]
        found = _landed_on_valley(x, X, vals, steps, G, h, g_tol, value)
        if found is not None:
            return found, ""
    if done < starts.shape[0] or time.monotonic() > deadline:
        return None, (f" [the test for a non-isolated set stopped at its {PROBE_TIME_LIMIT:g} s limit "
                      f"({done} of {starts.shape[0]} Newton probes started, not all run to the end): "
                      "a set of critical points through x is not ruled out]")
    return None, ""


def _landed_on_valley(x: torch.Tensor, X: torch.Tensor, vals: torch.Tensor, steps: torch.Tensor,
                      G: torch.Tensor, h: float, g_tol: float, value: float) -> tuple[torch.Tensor, float] | None:
    dist = (X - x).norm(dim=1)
    eps = torch.finfo(x.dtype).eps
    # the value of f is constant on a connected set of critical points: equal up to rounding
    same_level = (vals - value).abs() <= SAME_LEVEL_ULPS * eps * max(1.0, abs(value))
    # landing between h/2 and 4h: away from x (not attracted back), yet reached along the probe
    # direction rather than at an unrelated critical point elsewhere
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


def _classify_matrix(H: Any, tol: float | None, dense_limit: int) -> CriticalPoint:
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


def _extreme_kind(lo: float, hi: float, eig_tol: float) -> str:
    """The second-order verdict from the extreme eigenvalues alone."""
    if lo > eig_tol:
        return "minimum"
    if hi < -eig_tol:
        return "maximum"
    if lo < -eig_tol and hi > eig_tol:
        return "saddle"
    return "inconclusive"


def _classify_large_operator(op: CurvatureOperator, tol: float | None) -> CriticalPoint:
    A = op.to_scipy()
    lo = float(eigsh(A, k=1, which="SA", tol=ARPACK_TOL, return_eigenvectors=False)[0])
    hi = float(eigsh(A, k=1, which="LA", tol=ARPACK_TOL, return_eigenvectors=False)[0])
    eps = torch.finfo(op.dtype).eps
    eig_tol = float(tol) if tol is not None else math.sqrt(eps) * max(1.0, abs(lo), abs(hi))
    lam = torch.tensor([lo, hi], dtype=torch.float64)
    kind = _extreme_kind(lo, hi, eig_tol)
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
