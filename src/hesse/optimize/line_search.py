"""Line searches along a descent direction ``p`` from ``x``.

* :func:`strong_wolfe` - Nocedal & Wright (2006), Alg. 3.5 (bracketing) and Alg. 3.6 (zoom) with
  safeguarded cubic interpolation (N&W eq. 3.59); finds ``alpha`` with
  ``phi(alpha) <= phi(0) + c1 alpha phi'(0)`` and ``|phi'(alpha)| <= c2 |phi'(0)|``.
* :func:`backtrack` - backtracking (N&W Alg. 3.1) with quadratic interpolation, sufficient
  decrease only, on a ``(B, n)`` block of points at once (the batched methods' rows; ``B = 1``
  for one run); :func:`armijo` is its one-point form.

Each trial costs one fused value+gradient evaluation (``strong_wolfe``) or one value
(``armijo``). A trial with a NaN/Inf value is met by shrinking ``alpha`` (by 0.5, at most
:data:`MAX_HALVINGS` times): the search never returns a non-finite point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hesse._result import Result

MAX_HALVINGS = 60
"""A step shrinks at most 60 times by (at least) half: 2^-60 of it is below the rounding level
of float64. The one budget of every backtracking in :mod:`hesse.optimize` (a non-finite trial,
Armijo backtracking, Newton's escape from a saddle, gradient descent's step after a NaN)."""
ARMIJO_C1 = 1e-4
"""Armijo's sufficient-decrease constant c1 (N&W Sec. 3.1, the usual 1e-4)."""


@dataclass(repr=False)
class LineSearchResult(Result):
    """A line search's outcome: the step ``alpha``, the point ``x = x0 + alpha p``, ``fun`` and
    ``jac`` there (``jac`` None for :func:`armijo`, which evaluates values only), ``success``,
    ``nfev`` the trial evaluations and ``message`` (why it failed)."""

    alpha: float
    fun: float
    jac: torch.Tensor | None
    x: torch.Tensor
    success: bool
    nfev: int
    message: str = ""


def _cubic_min(a, fa, da, b, fb, db):
    """Minimizer of the cubic interpolating (a, fa, da), (b, fb, db) (N&W eq. 3.59); None if not real."""
    d1 = da + db - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - da * db
    if disc < 0:
        return None
    d2 = math.copysign(math.sqrt(disc), b - a)
    denom = db - da + 2 * d2
    if denom == 0:
        return None
    t = b - (b - a) * (db + d2 - d1) / denom
    return t if math.isfinite(t) else None


def _quadratic_min(a, fa, da, b, fb):
    """Minimizer of the quadratic through (a, fa) with slope da and (b, fb); None if not convex."""
    denom = 2.0 * ((fb - fa) - da * (b - a))
    if denom <= 0:
        return None
    t = a - da * (b - a) ** 2 / denom
    return t if math.isfinite(t) else None


def strong_wolfe(value_grad, x: torch.Tensor, p: torch.Tensor, f0: float, g0: torch.Tensor,
                 alpha0: float = 1.0, c1: float = 1e-4, c2: float = 0.9, max_evals: int = 30,
                 alpha_max: float = 1e10) -> LineSearchResult:
    """Strong Wolfe line search (N&W Alg. 3.5 + 3.6). ``value_grad(x) -> (f, g)``."""
    d0 = float(torch.dot(g0, p))
    if not d0 < 0:
        return LineSearchResult(0.0, f0, g0, x, False, 0, f"not a descent direction (g.p = {d0:.3g})")
    evals = 0

    def phi(alpha):
        nonlocal evals
        xa = torch.add(x, p, alpha=alpha)
        fa, ga = value_grad(xa)
        evals += 1
        return fa, ga, xa

    # shrink until finite
    alpha = alpha0
    fa, ga, xa = phi(alpha)
    shrinks = 0
    while not (math.isfinite(fa) and bool(torch.isfinite(ga).all())):
        shrinks += 1
        if shrinks > MAX_HALVINGS:
            return LineSearchResult(0.0, f0, g0, x, False, evals, "non-finite values for every step tried")
        alpha *= 0.5
        alpha_max = alpha
        fa, ga, xa = phi(alpha)
    da = float(torch.dot(ga, p))

    a_prev, f_prev, d_prev = 0.0, f0, d0
    prev_point = None
    first = True
    while True:
        if fa > f0 + c1 * alpha * d0 or (not first and fa >= f_prev):
            return _zoom(phi, p, a_prev, f_prev, d_prev, alpha, fa, da, f0, d0, c1, c2, max_evals, evals,
                         x, g0, prev_point)
        if abs(da) <= -c2 * d0:
            return LineSearchResult(alpha, fa, ga, xa, True, evals)
        if da >= 0:
            return _zoom(phi, p, alpha, fa, da, a_prev, f_prev, d_prev, f0, d0, c1, c2, max_evals, evals,
                         x, g0, (xa, ga))
        if evals >= max_evals or alpha >= alpha_max:
            return LineSearchResult(alpha, fa, ga, xa, fa < f0, evals, "bracketing budget exhausted")
        first = False
        # extrapolate: minimizer of the cubic through the last two trials, kept in [1.1, 4] x alpha
        t = _cubic_min(a_prev, f_prev, d_prev, alpha, fa, da)
        t = 2.0 * alpha if t is None else min(max(t, 1.1 * alpha), 4.0 * alpha)
        a_prev, f_prev, d_prev = alpha, fa, da
        prev_point = (xa, ga)
        alpha = min(alpha_max, t)
        fa, ga, xa = phi(alpha)
        evals_guard = 0
        while not (math.isfinite(fa) and bool(torch.isfinite(ga).all())):
            evals_guard += 1
            alpha_max = alpha = a_prev + 0.5 * (alpha - a_prev)
            if evals_guard > MAX_HALVINGS:
                return LineSearchResult(a_prev, f_prev, None, torch.add(x, p, alpha=a_prev), f_prev < f0,
                                        evals, "non-finite beyond the last step")
            fa, ga, xa = phi(alpha)
        da = float(torch.dot(ga, p))


def _zoom(phi, p, lo, flo, dlo, hi, fhi, dhi, f0, d0, c1, c2, max_evals, evals, x, g0, lo_point):
    """N&W Alg. 3.6: shrink [lo, hi] (lo satisfies sufficient decrease) by cubic interpolation."""
    best = None  # (alpha, f, g, x) of the best sufficient-decrease point so far
    for _ in range(max(1, max_evals - evals)):
        width = hi - lo
        t = _cubic_min(lo, flo, dlo, hi, fhi, dhi)
        if fhi > flo and t is not None:
            # Moré & Thuente (1994), case 1: the trial at hi is worse; take the cubic step when it
            # is closer to lo than the quadratic through (flo, dlo, fhi), else their average
            q = _quadratic_min(lo, flo, dlo, hi, fhi)
            if q is not None and abs(t - lo) >= abs(q - lo):
                t = 0.5 * (t + q)
        if t is None:
            t = lo + 0.5 * width
        else:  # safeguard: stay at least 10 % of the interval away from both ends
            t = min(max(t, min(lo, hi) + 0.1 * abs(width)), max(lo, hi) - 0.1 * abs(width))
        fa, ga, xa = phi(t)
        evals += 1
        if not (math.isfinite(fa) and bool(torch.isfinite(ga).all())):
            hi, fhi, dhi = t, flo + abs(flo) + 1.0, dlo
            continue
        da = float(torch.dot(ga, p))
        if fa > f0 + c1 * t * d0 or fa >= flo:
            hi, fhi, dhi = t, fa, da
        else:
            best = (t, fa, ga, xa)
            if abs(da) <= -c2 * d0:
                return LineSearchResult(t, fa, ga, xa, True, evals)
            if da * (hi - lo) >= 0:
                hi, fhi, dhi = lo, flo, dlo
            lo, flo, dlo = t, fa, da
        if abs(hi - lo) <= 1e-16 * max(1.0, abs(lo)):
            break
    if best is not None:
        t, fa, ga, xa = best
        return LineSearchResult(t, fa, ga, xa, True, evals, "curvature condition not met; sufficient decrease holds")
    if lo > 0 and flo < f0 and lo_point is not None:
        xa, ga = lo_point
        return LineSearchResult(lo, flo, ga, xa, True, evals, "zoom interval collapsed; sufficient decrease holds")
    return LineSearchResult(0.0, f0, g0, x, False, evals, "zoom found no point with sufficient decrease")


def trial_points(X: torch.Tensor, P: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``X + alpha P`` row by row, in the points' dtype (``alpha`` may be float64)."""
    return X + alpha.to(dtype=X.dtype, device=X.device).unsqueeze(1) * P


def backtrack(values: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, P: torch.Tensor,
              F: torch.Tensor, slope: torch.Tensor, alpha: torch.Tensor, searching: torch.Tensor, *,
              sufficient_decrease: bool = True, c1: float = ARMIJO_C1,
              max_evals: int = MAX_HALVINGS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backtracking on a block of rows: ``X``, ``P`` (B, n) points and directions, ``F``,
    ``slope`` = ``g^T p``, ``alpha`` (B,) values, slopes and first steps; ``searching`` (B,) the
    rows to search (the others ride along, unchanged).

    A row accepts the first trial with ``f(x + alpha p) <= f + c1 alpha slope`` (N&W Alg. 3.1;
    with ``sufficient_decrease=False`` the first finite trial: gradient descent and pure Newton
    keep their step). After a finite trial that fails, ``alpha`` becomes the minimizer of the
    quadratic through ``f, slope, f(alpha)``, clipped to ``[0.1, 0.5] alpha`` (N&W Sec. 3.5);
    after a non-finite one, ``alpha / 2``. ``values`` maps an (m, n) block to its (m,) values and
    is called once per round on the rows still searching. Returns ``(accepted, alpha, F_new,
    evaluations)`` per row (``F_new`` is ``F`` where not accepted).
    """
    searching = searching.clone()
    accepted = torch.zeros_like(searching)
    F_new = F.clone()
    evaluations = torch.zeros(F.shape, dtype=torch.long, device=F.device)
    for _ in range(max_evals):
        if not bool(searching.any()):
            break
        idx = searching.nonzero().squeeze(1)
        Ft = torch.full_like(F, float("nan"))
        Ft[idx] = values(trial_points(X[idx], P[idx], alpha[idx])).detach().to(dtype=F.dtype, device=F.device)
        evaluations += searching.long()
        finite = torch.isfinite(Ft)
        ok = finite & (Ft <= F + c1 * alpha * slope) if sufficient_decrease else finite
        newly = searching & ok
        F_new = torch.where(newly, Ft, F_new)
        accepted |= newly
        searching &= ~ok
        quadratic = -slope * alpha * alpha / (2.0 * (Ft - F - slope * alpha))
        shrunk = torch.minimum(torch.maximum(quadratic.nan_to_num(0.0), 0.1 * alpha), 0.5 * alpha)
        alpha = torch.where(searching, torch.where(finite, shrunk, 0.5 * alpha), alpha)
    return accepted, alpha, F_new, evaluations


def armijo(value, x: torch.Tensor, p: torch.Tensor, f0: float, slope: float, alpha0: float = 1.0,
           c1: float = ARMIJO_C1, max_evals: int = MAX_HALVINGS) -> LineSearchResult:
    """:func:`backtrack` for one point: until ``f(x + alpha p) <= f0 + c1 alpha slope``.
    ``value(x) -> float``."""
    if not slope < 0:
        return LineSearchResult(0.0, f0, None, x, False, 0, f"not a descent direction (slope {slope:.3g})")

    def values(Z: torch.Tensor) -> torch.Tensor:
        return torch.tensor([value(z) for z in Z], dtype=torch.float64)

    dt = torch.float64
    accepted, alpha, F_new, evals = backtrack(
        values, x.unsqueeze(0), p.unsqueeze(0), torch.tensor([f0], dtype=dt), torch.tensor([slope], dtype=dt),
        torch.tensor([alpha0], dtype=dt), torch.ones(1, dtype=torch.bool), c1=c1, max_evals=max_evals)
    if not bool(accepted[0]):
        return LineSearchResult(0.0, f0, None, x, False, int(evals[0]), "no sufficient decrease")
    xa = trial_points(x.unsqueeze(0), p.unsqueeze(0), alpha)[0]
    return LineSearchResult(float(alpha[0]), float(F_new[0]), None, xa, True, int(evals[0]))
