"""Higher-order analysis at a critical point with a singular, semidefinite Hessian.

The second-derivative test stops when H = ∇²f(x₀) has zero eigenvalues (Nocedal & Wright 2006,
Thm 2.3-2.4 then say nothing). We go on in two steps.

1. **Splitting lemma** (Gromoll & Meyer 1969; Arnold, Gusein-Zade & Varchenko 1985, sec. 11.4).
   Write x = x₀ + N u + R w with N (n x m) an orthonormal basis of the null space of H and R the
   eigenvectors of its nonzero eigenvalues Λ_R (all of one sign here, else x₀ is a saddle). By the
   implicit function theorem the equations Rᵀ∇f(x₀ + N u + R w) = 0 have a unique solution w(u)
   near 0, and f ≃ g(u) + (w - w(u))ᵀ Λ_R (w - w(u)) / 2 with the *reduced function*
   g(u) = f(x₀ + N u + R w(u)) - f(x₀). So x₀ is a minimum of f iff Λ_R > 0 and 0 is a minimum of g
   (a maximum likewise), and a saddle otherwise. We solve for w(u) by the chord iteration
   w ← w - Λ_R⁻¹ Rᵀ∇f(x₀ + N u + R w) from w = 0: since w(u) = O(‖u‖²), after k iterations the
   error is O(‖u‖^(k+2)), and g's error O(‖u‖^(2k+4)) (∂f/∂w vanishes on the solution), so
   g's Taylor coefficients up to ``max_order`` are exact with k = max_order // 2 + 1 iterations.
   Straight lines through x₀ are not enough: for f = (y - x²)² - x⁴/2 every line gives a
   minimum, while g(x) = -x⁴/2 shows the saddle.
2. **Leading order of g.** Along directions d of the null space, the coefficients
   c_k(d) = (1/k!) dᵏ/dtᵏ g(t d) at t = 0 (nested forward-mode AD: ``torch.func.jvp`` applied k
   times, vmapped over directions) give the homogeneous forms P_k(d) = c_k(d). With K the lowest
   order whose form is not zero: K odd -> g changes sign, saddle of order K (monkey saddle: 3);
   K even and P_K definite -> strict extremum; P_K indefinite -> saddle; P_K semidefinite -> we look
   along its zero direction d* at the next orders: opposite sign or odd order -> saddle, otherwise
   "inconclusive" (straight lines cannot prove it). For m >= 2, P_K is fitted exactly from the
   sampled directions (it is a polynomial of degree K in d) and minimized over the sphere densely.
   Location error: a point known to within δ carries a spurious order-k term (k+1)·δ·|c_{k+1}|;
   terms below that bound (δ = 10·sqrt(eps)·max(1, ‖x₀‖)) are not counted, so genuine odd terms
   smaller than it are not resolved.

Cost: 2^max_order forward evaluations of the reduced function (each (max_order//2 + 1) gradients
of f) per sampled direction, batched with ``vmap``. Intended for small n (the dense Hessian is
needed anyway).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import minimize
from torch.func import grad, jvp, vmap

from hesse._result import Result

__all__ = ["HigherOrderResult", "higher_order_analysis"]

MAX_NULLITY = 6
"""Largest null space analysed: the directions sampled grow as 40·m², beyond which sampling the
sphere densely enough to minimise a form is too costly."""

LOCATION_ERROR = 10.0
"""A critical point found numerically is located to about sqrt(eps)·max(1, ‖x₀‖) (the step
tolerance of :func:`hesse.classify`); LOCATION_ERROR times that is the error δ assumed when
discounting spurious terms (module docstring): a safety factor of 10 over that tolerance."""

FIRST_ORDER = 4
"""Orders up to 4 are tried first (2⁴ forward passes per direction); only an inconclusive answer
pays for ``max_order``."""

DIRECTIONS_2D = 64
"""Directions sampled on the half circle for a 2-D null space: a form of order K has K + 1
coefficients, so 64 samples overdetermine the fit for every order used in practice."""

DIRECTIONS_PER_M2 = 40
"""For m >= 3, 40·m² random directions (plus the m axes) overdetermine the fit of a form of
order <= 6, which has binomial(m + 5, 6) coefficients."""

ANGLE_OFFSET = 0.1234
"""Offset of the 2-D directions from the axes, so that no sample sits exactly on a coordinate
axis, where forms of symmetric test functions often vanish by symmetry."""

DENSE_SPHERE_2D = 20001
"""Points on the half circle at which a fitted 2-D form is minimised before local refinement
(spacing π/20000 ≈ 1.6e-4 rad)."""

DENSE_SPHERE = 100_000
"""Random points on the sphere at which a fitted form in m >= 3 variables is minimised before
local refinement."""


@dataclass(repr=False)
class HigherOrderResult(Result):
    """``kind`` of the critical point after reduction; ``order`` is the leading order of the reduced
    function (None if undecided); ``reduced_kind`` what g does at 0; ``reason`` in words."""

    kind: str
    order: int | None
    reduced_kind: str
    reason: str
    num_directions: int
    coefficient_tol: float
    leading_form_range: tuple[float, float] | None = field(default=None)


def _reduced_function(f: Callable, x0: torch.Tensor, N: torch.Tensor, R: torch.Tensor, lam_R: torch.Tensor,
                      chord_steps: int) -> Callable:
    """g(u) = f(x₀ + N u + R w(u)) - f(x₀) with w(u) from the chord iteration (see module doc)."""
    f0 = f(x0).detach()
    g_f = grad(f)

    def g(u: torch.Tensor) -> torch.Tensor:
        z = x0 + N @ u
        if R.shape[1] == 0:
            return f(z) - f0
        w = torch.zeros(R.shape[1], dtype=x0.dtype, device=x0.device) * u.sum()
        for _ in range(chord_steps):
            w = w - (R.T @ g_f(z + R @ w)) / lam_R
        return f(z + R @ w) - f0

    return g


def _taylor_coefficients(phi: Callable, t0: torch.Tensor, K: int) -> torch.Tensor:
    """[φ(0), φ'(0)/1!, ..., φ^(K)(0)/K!] by K nested jvp's (each level carries all lower orders)."""
    def level(k: int) -> Callable:
        if k == 0:
            return lambda t: (phi(t),)
        prev = level(k - 1)

        def fn(t):
            out = jvp(prev, (t,), (torch.ones_like(t),))
            primal, tangent = out[0], out[1]
            return tuple(primal) + (tangent[-1],)

        return fn

    derivs = torch.stack(level(K)(t0))
    fact = torch.tensor([math.factorial(k) for k in range(K + 1)], dtype=derivs.dtype, device=derivs.device)
    return derivs / fact


def _coefficients_along(g: Callable, D: torch.Tensor, K: int) -> torch.Tensor:
    """(S, K+1) Taylor coefficients of t -> g(t d) for each row d of D."""
    t0 = torch.zeros((), dtype=D.dtype, device=D.device)

    def one(d):
        return _taylor_coefficients(lambda t: g(t * d), t0, K)

    return vmap(one)(D)


def _sphere_directions(m: int, count: int, dtype, seed: int) -> torch.Tensor:
    if m == 1:
        return torch.ones(1, 1, dtype=dtype)
    if m == 2:
        theta = torch.arange(count, dtype=dtype) * (math.pi / count) + ANGLE_OFFSET
        return torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    gen = torch.Generator().manual_seed(seed)
    D = torch.randn(count, m, generator=gen, dtype=dtype)
    D = torch.cat([torch.eye(m, dtype=dtype), D])
    return D / D.norm(dim=1, keepdim=True)


def _monomials(m: int, k: int) -> list[tuple[int, ...]]:
    return [c for c in itertools.product(range(k + 1), repeat=m) if sum(c) == k]


def _form_extremes(D: np.ndarray, values: np.ndarray, k: int, seed: int) -> tuple[float, float, np.ndarray]:
    """Fit the degree-k form P(d) = Σ a_α d^α to sampled values; min/max over the unit sphere.

    Returns (min, max, argmin direction). The fit is exact (P is a polynomial), so the extremes
    come from dense sampling of the fitted polynomial plus a local refinement.
    """
    m = D.shape[1]
    mons = _monomials(m, k)

    def design(P):
        return np.stack([np.prod(P ** np.array(a), axis=1) for a in mons], 1)

    coef, *_ = np.linalg.lstsq(design(D), values, rcond=None)
    if m == 2:
        th = np.linspace(0, np.pi, DENSE_SPHERE_2D)
        dense = np.stack([np.cos(th), np.sin(th)], 1)
    else:
        rng = np.random.default_rng(seed)
        dense = rng.standard_normal((DENSE_SPHERE, m))
        dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    vals = design(dense) @ coef
    j = int(np.argmin(vals))

    def obj(v):
        v = v / np.linalg.norm(v)
        return float(design(v[None])[0] @ coef)

    res = minimize(obj, dense[j], method="Nelder-Mead", options={"xatol": 1e-12, "fatol": 1e-18, "maxiter": 2000})
    dmin = res.x / np.linalg.norm(res.x)
    return min(float(vals.min()), obj(dmin)), float(vals.max()), dmin if obj(dmin) <= vals[j] else dense[j]


def higher_order_analysis(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, eigenvalues: torch.Tensor,
                          eigenvectors: torch.Tensor, eig_tol: float, *, coefficient_tol: float | None = None,
                          max_order: int = 6, num_directions: int | None = None,
                          seed: int = 0) -> HigherOrderResult:
    """Decide a critical point whose Hessian is semidefinite and singular (see module docstring).

    ``f`` takes a flat tensor; ``eigenvalues``/``eigenvectors`` are H's eigendecomposition at the
    flat point ``x0``; eigenvalues with |λ| <= ``eig_tol`` span the null space. Coefficients of
    the reduced function count as zero when |c_k| <= ``coefficient_tol`` (default ``eig_tol``).
    """
    null = eigenvalues.abs() <= eig_tol
    N, R, lam_R = eigenvectors[:, null], eigenvectors[:, ~null], eigenvalues[~null]
    m = int(null.sum())
    tol = float(eig_tol if coefficient_tol is None else coefficient_tol)
    if bool((lam_R > 0).any()) and bool((lam_R < 0).any()):
        return HigherOrderResult("saddle", 2, "n/a", "the Hessian is indefinite", 0, tol)
    sign_R = 1 if bool((lam_R > 0).any()) else -1 if bool((lam_R < 0).any()) else 0
    if m > MAX_NULLITY:
        return HigherOrderResult(
            "inconclusive", None, "unknown",
            f"the Hessian has a {m}-dimensional null space; higher-order analysis samples directions "
            f"of the null space and is limited to nullity <= {MAX_NULLITY}", 0, tol)
    orders = sorted({min(FIRST_ORDER, max_order), max_order})
    for K in orders:
        result, final = _analyze(f, x0, N, R, lam_R, m, sign_R, K, tol, num_directions, seed)
        if result.kind != "inconclusive" or final:
            break
    return result


def _analyze(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, N: torch.Tensor, R: torch.Tensor,
             lam_R: torch.Tensor, m: int, sign_R: int, K: int, tol: float, num_directions: int | None,
             seed: int) -> tuple[HigherOrderResult, bool]:
    """The verdict from the reduced function's Taylor coefficients up to order ``K``, and whether
    it is final (a higher order cannot change it)."""
    # chord iterations k with 2k + 4 > K make g's coefficients exact to order K; one more for margin
    chord_steps = max(0, (K - 4) // 2 + 1) + 1
    g = _reduced_function(f, x0, N, R, lam_R, chord_steps=chord_steps)
    count = num_directions or (1 if m == 1 else DIRECTIONS_2D if m == 2 else DIRECTIONS_PER_M2 * m * m)
    D = _sphere_directions(m, count, x0.dtype, seed).to(x0.device)
    C = _coefficients_along(g, D, K).detach()  # (S, K+1)
    if not bool(torch.isfinite(C).all()):  # a higher order will not help
        return HigherOrderResult("inconclusive", None, "unknown",
                                 "derivatives of the reduced function are not finite at the point",
                                 len(D), tol), True
    order = _leading_order(C, K, tol, x0)
    if order is None:
        return HigherOrderResult(
            "inconclusive", None, "unknown",
            f"the reduced function on the {m}-dimensional null space is flat to order {K} "
            f"(all Taylor coefficients up to order {K} are below {tol:.2g}); the critical point may be "
            "non-isolated (a valley or ridge of critical points) or flat beyond any finite order",
            len(D), tol), False
    ck = C[:, order]
    fit = None
    if order % 2 == 1:
        j = int(ck.abs().argmax())
        reduced = "saddle"
        reason = (f"the reduced function's leading term is of odd order {order}: along the null direction "
                  f"d = {_fmt(D[j] @ N.T)} it is {float(ck[j]):.4g}·t^{order}, which changes sign")
    else:
        if m == 1:
            lo = hi = float(ck[0])
            dmin = D[0].numpy()
        else:
            lo, hi, dmin = _form_extremes(D.cpu().numpy(), ck.cpu().numpy(), order, seed)
        fit = (lo, hi)
        verdict = _definite_form_verdict(order, lo, hi, tol)
        if verdict is not None:
            reduced, reason = verdict
        else:
            # semidefinite leading form: look along its zero direction at the next orders
            sgn = 1.0 if hi > tol else -1.0
            dz = torch.as_tensor(dmin if sgn > 0 else _form_extremes(D.cpu().numpy(), -ck.cpu().numpy(), order, seed)[2],
                                 dtype=x0.dtype, device=x0.device)
            cz = _coefficients_along(g, dz[None], K).detach()[0]
            nxt = next((k for k in range(order + 1, K + 1) if abs(float(cz[k])) > tol), None)
            where = f"d* = {_fmt(dz @ N.T)}"
            if nxt is None or not (nxt % 2 == 1 or float(cz[nxt]) * sgn < 0):
                return HigherOrderResult(
                    "inconclusive", None, "unknown",
                    f"the reduced function's leading form of order {order} is semidefinite (range "
                    f"[{lo:.3g}, {hi:.3g}]) and vanishes along {where}; "
                    + ("higher orders there agree in sign, but tests along straight lines cannot prove an extremum"
                       if nxt is not None else f"it is flat there up to order {K}"), len(D), tol, fit), False
            reduced = "saddle"
            reason = (f"the leading form of order {order} is semidefinite and vanishes along {where}, where "
                      f"the next term {float(cz[nxt]):.4g}·t^{nxt} has the opposite sign or odd order")
            order = nxt
    kind, reason = _with_nondegenerate_directions(reduced, reason, sign_R)
    if R.shape[1]:
        reason += f" (reduced by the splitting lemma onto the {m}-dimensional null space)"
    return HigherOrderResult(kind, order, reduced, reason, len(D), tol, fit), True


def _leading_order(C: torch.Tensor, K: int, tol: float, x0: torch.Tensor) -> int | None:
    """The lowest order k >= 3 whose coefficients c_k (rows of C: directions) are not zero.

    A critical point located with error δ turns a genuine order-(k+1) term c_{k+1} into a spurious
    order-k term of size (k+1)·δ·|c_{k+1}|: such terms are not counted."""
    shift = LOCATION_ERROR * math.sqrt(torch.finfo(x0.dtype).eps) * max(1.0, float(x0.norm()))
    for k in range(3, K + 1):
        above = float(C[:, k + 1].abs().max()) if k < K else 0.0
        if float(C[:, k].abs().max()) > tol + shift * (k + 1) * above:
            return k
    return None


def _definite_form_verdict(order: int, lo: float, hi: float, tol: float) -> tuple[str, str] | None:
    """What g does at 0 when its even leading form (range [lo, hi] on the unit sphere) is definite
    or indefinite; None when it is semidefinite (the next orders must decide)."""
    form = f"the reduced function's leading form of order {order} is"
    if lo > tol:
        return "minimum", f"{form} positive definite (min {lo:.4g} on the unit sphere)"
    if hi < -tol:
        return "maximum", f"{form} negative definite (max {hi:.4g} on the unit sphere)"
    if lo < -tol and hi > tol:
        return "saddle", f"{form} indefinite (values from {lo:.4g} to {hi:.4g})"
    return None


def _with_nondegenerate_directions(reduced: str, reason: str, sign_R: int) -> tuple[str, str]:
    """The splitting lemma: f ≃ g(u) + ½ (w - w(u))ᵀ Λ_R (w - w(u)), so x₀ is an extremum of f iff
    g has the same kind of extremum as the sign of Λ_R says (Arnold, Gusein-Zade & Varchenko
    1985, sec. 11.4)."""
    if reduced == "saddle" or sign_R == 0:
        return {"saddle": "degenerate saddle", "minimum": "degenerate minimum",
                "maximum": "degenerate maximum"}[reduced], reason
    if (reduced == "minimum") == (sign_R > 0):
        return ("degenerate minimum" if sign_R > 0 else "degenerate maximum"), reason
    return "degenerate saddle", reason + (f"; the non-degenerate directions curve the other way (Hessian "
                                          f"eigenvalues {'> 0' if sign_R > 0 else '< 0'})")


def _fmt(v: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(a):.3g}" for a in v) + ")"
