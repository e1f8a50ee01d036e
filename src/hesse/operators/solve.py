"""Linear solves ``A x = b`` with a curvature operator: one conjugate-gradient kernel, MINRES, dense.

:func:`conjugate_gradient` is the one CG loop of hesse (Hestenes & Stiefel 1952; Nocedal & Wright
2006, Alg. 5.2, preconditioned: Alg. 5.3). It minimizes the quadratic

    q(x) = ½ xᵀA x − bᵀx,      ∇q(x) = A x − b = −r,

one product per iteration, and stops when one of its *stopping rules* says so. The rules are small
objects, each one criterion, consulted at two points of an iteration:

* ``before_step(state)``: the direction ``p``, ``A p`` and the curvature ``pᵀA p`` are known, the
  step ``α = rᵀz / pᵀA p`` not yet taken (negative curvature, trust-region boundary);
* ``after_step(state)``: ``x``, ``r`` and ``q(x)`` are updated (residual tolerance, Martens'
  progress test, recording iterates).

Rules shipped here, the one set used by every CG in hesse (``op.solve``, Newton-CG, trust-ncg,
Hessian-free, natural gradient): :class:`ResidualTolerance` (``‖r‖ ≤ max(rtol ‖b‖, atol)``;
:meth:`ResidualTolerance.forcing` for inexact Newton), :class:`NegativeCurvature`
(``pᵀAp ≤ eps ‖p‖²``: return the iterate and the direction ``p``),
:class:`TrustRegion` (Steihaug 1983; Nocedal & Wright 2006, Alg. 7.2: stop on the boundary
``‖x‖ = Δ``), :class:`MartensProgress` (Martens 2010, §4.4) and :class:`RecordIterates` (keep
iterates, e.g. at ``⌈1.3ʲ⌉`` for Martens' backtracking, §4.6). Any object with these two methods
(returning ``None`` to continue or a :class:`Stop`) is a rule; the kernel reads what else it
needs from the attributes a rule declares (see :class:`StoppingRule`), and runs each solve on a
fresh copy of the rules, so a rule object can be reused.

Structure tag. CG needs ``A`` positive definite. For an operator *not* tagged ``is_psd=True`` the
kernel checks every curvature ``pᵀAp``: without a rule declaring ``handles_curvature``
(:class:`NegativeCurvature`, :class:`TrustRegion`) a non-positive one stops the solve with
``converged=False`` and says so. For an operator tagged ``is_psd=True`` (GGN, Fisher, a damped PSD
operator) rules declaring ``indefinite_only`` (:class:`NegativeCurvature`) are not consulted; a
curvature ``pᵀAp ≤ 0`` there can only be a null direction or rounding and stops the solve as a
breakdown (``status="breakdown"``).

Cost: one product per iteration, one more for a nonzero ``x0``, one more for the final true
residual ``b − A x`` (``true_residual=True``, the default; the recursive residual can drift from
it in floating point, and a solve is only reported converged when the true one meets the
tolerance too).
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .._result import Result
from .base import CurvatureOperator
from .composition import DenseOperator

__all__ = [
    "CGState",
    "LinearSolveResult",
    "MartensProgress",
    "NegativeCurvature",
    "RecordIterates",
    "ResidualTolerance",
    "Stop",
    "StoppingRule",
    "TrustRegion",
    "conjugate_gradient",
    "solve",
]


@dataclass(repr=False)
class LinearSolveResult(Result):
    """Result of a linear solve ``A x = b``.

    Fields: ``x``; ``nit`` iterations; ``num_matvecs`` products with the operator (the final
    residual check included); ``converged`` (the residual tolerance was met by the true residual);
    ``status`` (``"converged"``, ``"max_iter"``, ``"negative_curvature"``,
    ``"trust_region_boundary"``, ``"progress"``, ``"breakdown"``, ``"nonfinite"``,
    ``"residual_drift"``, ``"residual"`` (a direct or MINRES solve whose measured residual fails
    the test), ``"failed"`` (the solver's own failure)); ``message`` (why it stopped, what to do); ``residual_norm`` ``‖b − A x‖`` and
    ``relative_residual`` ``‖b − A x‖ / ‖b‖``; ``method``; ``iterates`` (``[(i, x_i)]`` when a
    :class:`RecordIterates` rule was given); ``negative_curvature`` (a direction ``p`` with
    ``pᵀAp ≤ 0`` when one stopped the solve); ``on_boundary`` (a trust-region stop).
    """

    x: torch.Tensor
    nit: int
    num_matvecs: int
    converged: bool
    message: str
    residual_norm: float
    relative_residual: float = float("nan")
    status: str = ""
    method: str = "cg"
    iterates: list[tuple[int, torch.Tensor]] | None = None
    negative_curvature: torch.Tensor | None = None
    curvature: float | None = None
    on_boundary: bool = False


# ----------------------------------------------------------------------------- stopping rules


@dataclass
class CGState:
    """What a stopping rule sees: iteration ``it`` (1-based; the step being taken or just taken),
    ``x``, residual ``r = b − A x``, preconditioned residual ``z``, direction ``p``, ``Ap``,
    ``pAp = pᵀA p``, step ``alpha`` (``None`` before it is known), ``q = q(x)``, ``b`` and
    ``b_norm``. Tensors are the kernel's own: a rule that keeps one clones it."""

    it: int
    x: torch.Tensor
    r: torch.Tensor
    z: torch.Tensor
    p: torch.Tensor
    Ap: torch.Tensor | None
    pAp: float
    alpha: float | None
    q: float
    b: torch.Tensor
    b_norm: float
    r_norm: float


@dataclass
class Stop:
    """A rule's decision to stop: the point to return, why, and what it found."""

    x: torch.Tensor
    status: str
    message: str
    converged: bool = False
    negative_curvature: torch.Tensor | None = None
    on_boundary: bool = False


class StoppingRule(Protocol):
    """A CG stopping rule: ``before_step`` and ``after_step`` return ``None`` or a :class:`Stop`.

    A rule describes a test; it does not record a solve. The kernel works on a fresh copy of each
    rule per solve (``copy.deepcopy``), so one rule object can be passed to many solves. What the
    kernel needs to know about a rule it reads from what the rule declares (all optional):

    * ``handles_curvature`` (default ``False``): ``before_step`` returns a :class:`Stop` for every
      ``pᵀAp ≤ 0``, so the kernel does not stop there itself;
    * ``indefinite_only`` (default ``False``): not consulted for an operator tagged
      ``is_psd=True`` (there ``pᵀAp ≤ 0`` is a null direction or rounding: a breakdown);
    * ``target(b_norm) -> float``: a residual tolerance; a converged stop is confirmed on the true
      residual ``b − A x`` against ``10 · target``;
    * ``iterates``: a list of ``(i, x_i)`` the rule keeps, returned as the result's ``iterates``.
    """

    def before_step(self, state: CGState) -> Stop | None: ...

    def after_step(self, state: CGState) -> Stop | None: ...


def _real(value: Any, name: str) -> float:
    """``value`` as a float; ``TypeError`` naming it for a string, None, a bool or a tensor of
    more than one element."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating)):
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point()):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r}).")
    return float(value)


class _Rule:
    """Base with no-op hooks and the default declarations; rules override what they need."""

    handles_curvature = False
    indefinite_only = False

    def before_step(self, state: CGState) -> Stop | None:
        return None

    def after_step(self, state: CGState) -> Stop | None:
        return None


class ResidualTolerance(_Rule):
    """Converged when ``‖r‖ ≤ max(rtol · ‖b‖, atol)`` (the recursive residual; the kernel
    re-checks the true residual at the end). :meth:`forcing` gives the inexact-Newton tolerance."""

    def __init__(self, rtol: float = 1e-8, atol: float = 0.0):
        rtol, atol = _real(rtol, "rtol"), _real(atol, "atol")
        if not (np.isfinite(rtol) and rtol >= 0 and np.isfinite(atol) and atol >= 0) or rtol == atol == 0:
            raise ValueError(f"the residual tolerance needs rtol >= 0 and atol >= 0, not both 0; got "
                             f"rtol={rtol!r}, atol={atol!r}.")
        self.rtol, self.atol = float(rtol), float(atol)

    @classmethod
    def forcing(cls, b_norm: float) -> ResidualTolerance:
        """The forcing term of inexact Newton, ``‖r‖ ≤ min(0.5, √‖b‖) ‖b‖`` for the Newton system
        ``H p = −g`` (``b = −g``): superlinear convergence (Nocedal & Wright 2006, Thm 7.2 and
        Alg. 7.1/7.2). For ``b = 0`` the kernel returns ``x = 0`` before any test."""
        return cls(rtol=min(0.5, math.sqrt(b_norm)) if b_norm > 0 else 0.5)

    def target(self, b_norm: float) -> float:
        return max(self.rtol * b_norm, self.atol)

    def after_step(self, state: CGState) -> Stop | None:
        if state.r_norm <= self.target(state.b_norm):
            return Stop(state.x, "converged", "residual below tol", converged=True)
        return None


class NegativeCurvature(_Rule):
    """Stop at a direction of non-positive curvature ``pᵀAp ≤ eps ‖p‖²`` (Nocedal & Wright 2006,
    Alg. 7.1, truncated Newton) with ``negative_curvature = p``, returning the current iterate
    (``x0``, or ``0``, at the first iteration; with ``steepest_descent=True`` the right-hand side
    ``b`` there, Alg. 7.1's ``−∇f``). Not consulted for ``is_psd=True`` operators."""

    handles_curvature = True
    indefinite_only = True

    def __init__(self, eps: float = 0.0, steepest_descent: bool = False):
        eps = _real(eps, "eps")
        if not (np.isfinite(eps) and eps >= 0):
            raise ValueError(f"the curvature threshold eps must be a finite number >= 0, got {eps!r}.")
        self.eps, self.steepest_descent = float(eps), bool(steepest_descent)

    def before_step(self, state: CGState) -> Stop | None:
        if state.pAp <= 0 or (self.eps > 0 and state.pAp <= self.eps * float(state.p @ state.p)):
            x = state.b.clone() if self.steepest_descent and state.it == 1 else state.x
            return Stop(x, "negative_curvature",
                        f"negative curvature pᵀAp = {state.pAp:.3e} at iteration {state.it}",
                        negative_curvature=state.p.clone())
        return None


class TrustRegion(_Rule):
    """Steihaug's truncated CG for ``min q(x)`` subject to ``‖x‖ ≤ Δ`` (Steihaug 1983; Nocedal &
    Wright 2006, Alg. 7.2, with ``B = A``, ``g = −b``). Start from ``x0 = 0``.

    * ``pᵀAp ≤ 0``: return ``x + τ p`` with ``‖x + τ p‖ = Δ`` and ``τ`` the root of the two that
      gives the lower ``q`` (``status="negative_curvature"``, ``negative_curvature = p``);
    * the step would leave the region, ``‖x + α p‖ ≥ Δ``: return ``x + τ p`` with ``τ ≥ 0`` and
      ``‖x + τ p‖ = Δ`` (``status="trust_region_boundary"``).

    The norm is Euclidean (with a preconditioner the iterates' norms still grow monotonically only
    in the preconditioner's norm; pass none to keep Steihaug's guarantee).
    """

    handles_curvature = True

    def __init__(self, radius: float):
        radius = _real(radius, "the trust-region radius")
        if not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"the trust-region radius must be a positive finite number, got {radius!r}.")
        self.radius = float(radius)

    def before_step(self, state: CGState) -> Stop | None:
        x, p = state.x, state.p
        if state.pAp <= 0:
            t_minus, t_plus = boundary_roots(x, p, self.radius)
            # q(x + τp) − q(x) = −τ pᵀr + ½ τ² pᵀAp
            pr = float(p @ state.r)

            def dq(t: float) -> float:
                return -t * pr + 0.5 * t * t * state.pAp

            tau = t_minus if dq(t_minus) < dq(t_plus) else t_plus
            return Stop(x + tau * p, "negative_curvature",
                        f"negative curvature pᵀAp = {state.pAp:.3e}: stopped on the trust-region "
                        f"boundary ‖x‖ = {self.radius:.3g}",
                        negative_curvature=p.clone(), on_boundary=True)
        assert state.alpha is not None
        if float((x + state.alpha * p).norm()) >= self.radius:
            _, t_plus = boundary_roots(x, p, self.radius)
            return Stop(x + t_plus * p, "trust_region_boundary",
                        f"the step reached the trust-region boundary ‖x‖ = {self.radius:.3g}",
                        on_boundary=True)
        return None


def boundary_roots(x: torch.Tensor, p: torch.Tensor, radius: float) -> tuple[float, float]:
    """The two roots ``τ₋ ≤ τ₊`` of ``‖x + τ p‖² = Δ²`` (``τ₋ ≤ 0 ≤ τ₊`` when ``‖x‖ ≤ Δ``),
    computed without cancellation (the smaller-magnitude root from the product of the roots)."""
    pp, xp, xx = float(p @ p), float(x @ p), float(x @ x)
    c = xx - radius * radius
    root = math.sqrt(max(xp * xp - pp * c, 0.0))
    if xp >= 0:
        t_minus = (-xp - root) / pp
        t_plus = c / (pp * t_minus) if t_minus != 0 else (-xp + root) / pp
    else:
        t_plus = (-xp + root) / pp
        t_minus = c / (pp * t_plus) if t_plus != 0 else (-xp - root) / pp
    return t_minus, t_plus


class MartensProgress(_Rule):
    """Martens' (2010, §4.4) relative-progress test: stop at iteration ``i`` when ``i > k``,
    ``q(x_i) < 0`` and ``(q(x_i) − q(x_{i−k})) / q(x_i) < k · eps``, with
    ``k = max(k_min, ⌊fraction · i⌋)`` (defaults 10, 0.1, 5e-4 as in the paper). A stop here is a
    deliberate truncation: ``converged=False``, ``status="progress"``."""

    def __init__(self, k_min: int = 10, fraction: float = 0.1, eps: float = 5e-4):
        self.k_min, self.fraction, self.eps = int(k_min), float(fraction), float(eps)
        self.values: list[float] = []  # q(x_1), q(x_2), ... of the solve this copy runs in

    def after_step(self, state: CGState) -> Stop | None:
        self.values.append(state.q)
        i = len(self.values)
        k = max(self.k_min, int(self.fraction * i))
        q = self.values[-1]
        if i > k and q < 0 and (q - self.values[-1 - k]) / q < k * self.eps:
            return Stop(state.x, "progress",
                        f"relative progress of q over the last {k} iterations below {k * self.eps:.1e} "
                        f"(Martens 2010, §4.4)")
        return None


class RecordIterates(_Rule):
    """Keep ``(i, x_i)`` after iteration ``i`` when ``at(i)`` (default: every iteration); the
    last iterate is always added; they come back as the result's ``iterates``.
    :meth:`martens` keeps ``i = ⌈1.3ʲ⌉`` (Martens 2010, §4.6)."""

    def __init__(self, at: Callable[[int], bool] | None = None):
        self.at = at
        self.iterates: list[tuple[int, torch.Tensor]] = []  # of the solve this copy runs in

    @classmethod
    def martens(cls) -> RecordIterates:
        keep = {math.ceil(1.3**j) for j in range(80)}
        return cls(lambda i: i in keep)

    def after_step(self, state: CGState) -> Stop | None:
        if self.at is None or self.at(state.it):
            self.iterates.append((state.it, state.x.clone()))
        return None


# ----------------------------------------------------------------------------- the kernel


def conjugate_gradient(
    op: CurvatureOperator | Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    rules: Iterable[Any] | None = None,
    tol: float = 1e-8,
    max_iter: int | None = None,
    preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    true_residual: bool = True,
    is_psd: bool | None = None,
) -> LinearSolveResult:
    """(Preconditioned) conjugate gradients for ``A x = b`` with pluggable stopping rules.

    Parameters
    ----------
    op
        a :class:`CurvatureOperator`, or a callable ``v -> A v`` on vectors of ``b``'s shape
        (then ``is_psd`` may be passed; products are counted here).
    b
        right-hand side, a vector.
    x0
        starting point (default 0; a nonzero one costs one product). Unused when ``b = 0``:
        then ``x = 0``, the exact solution, is returned.
    tol
        relative residual tolerance of the default rule, ``||b - A x|| <= tol ||b||``.
    rules
        stopping rules (see the module docs); default ``[ResidualTolerance(tol)]``.
        A rule list without :class:`ResidualTolerance` runs until another rule or ``max_iter``.
    max_iter
        iteration budget (default ``10 n``); exhausting it gives ``status="max_iter"``.
    preconditioner
        ``r -> M⁻¹ r`` with ``M`` symmetric positive definite (Nocedal & Wright
        2006, Alg. 5.3).
    true_residual
        recompute ``b − A x`` at the end (one product); a solve is reported
        converged only if that also meets ``10 · tol`` relative (the recursive residual can drift).
    is_psd
        the structure tag for a callable ``op`` (an operator's own tag is used otherwise).

    Notes
    -----
    Returns a :class:`LinearSolveResult`. Iterations and rules follow Nocedal & Wright (2006),
    Alg. 5.2/5.3 and 7.2.
    """
    if isinstance(op, CurvatureOperator):
        matvec: Callable[[torch.Tensor], torch.Tensor] = op.matvec
        psd = op.is_psd if is_psd is None else is_psd
    elif callable(op):
        matvec, psd = op, is_psd
    else:
        raise TypeError(f"op must be a CurvatureOperator or a callable v -> A v, got {type(op).__name__}.")
    if not isinstance(b, torch.Tensor) or b.ndim != 1:
        raise ValueError(f"b must be a vector (1-D tensor), got "
                         f"{tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__}.")
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"b has {int((~torch.isfinite(b)).sum())} non-finite entries; "
                         "the right-hand side must be finite.")
    n = b.shape[0]
    # a fresh copy of every rule per solve: a rule object describes a test and can be reused
    rule_list: list[Any] = [ResidualTolerance(_check_tol(tol))] if rules is None else [copy.deepcopy(r) for r in rules]
    for rule in rule_list:
        if not (hasattr(rule, "before_step") and hasattr(rule, "after_step")):
            raise TypeError(f"{type(rule).__name__} is not a stopping rule: it needs before_step(state) "
                            f"and after_step(state) methods.")
    targets = [r.target for r in rule_list if callable(getattr(r, "target", None))]
    max_iter = _check_max_iter(max_iter, 10 * n)
    recorders = [r for r in rule_list if isinstance(getattr(r, "iterates", None), list)]
    curvature_rules = [r for r in rule_list
                       if not (psd is True and getattr(r, "indefinite_only", False))]
    handles_curvature = any(getattr(r, "handles_curvature", False) for r in curvature_rules)

    count = [0]

    def A(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return matvec(v)

    def M(v: torch.Tensor) -> torch.Tensor:
        return v if preconditioner is None else preconditioner(v)

    b_norm = float(torch.linalg.vector_norm(b))

    def finish(x: torch.Tensor, it: int, status: str, message: str, converged: bool,
               r: torch.Tensor, **extra: Any) -> LinearSolveResult:
        if true_residual:
            r = b - A(x)
        r_norm = float(torch.linalg.vector_norm(r))
        rel = r_norm / b_norm if b_norm > 0 else r_norm
        if converged and true_residual and targets:
            bound = 10 * max(target(b_norm) for target in targets)
            if r_norm > bound:
                converged, status = False, "residual_drift"
                message = "recursive residual met tol but the true residual did not"
        iterates: list[tuple[int, torch.Tensor]] | None = None
        if recorders:
            iterates = recorders[0].iterates
            if not iterates or iterates[-1][0] != it:
                iterates.append((it, x.clone()))
        return LinearSolveResult(x=x, nit=it, num_matvecs=count[0], converged=converged,
                                 message=message, residual_norm=r_norm, relative_residual=rel,
                                 status=status, method="cg", iterates=iterates, **extra)

    if b_norm == 0:  # x = 0 solves A x = 0 exactly; a relative tolerance of 0 could not stop
        return finish(torch.zeros_like(b), 0, "converged", "b = 0, so x = 0", True, b.clone())
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b.clone() if x0 is None else b - A(x)
    z = M(r)
    p = z.clone()
    rz = float(r @ z)
    for it in range(1, max_iter + 1):
        Ap = A(p)
        pAp = float(p @ Ap)
        if not math.isfinite(pAp):
            return finish(x, it - 1, "nonfinite", "a product was not finite; check the operator",
                          False, r)
        alpha = rz / pAp if pAp > 0 else None
        q = -0.5 * float(x @ (b + r))
        state = CGState(it, x, r, z, p, Ap, pAp, alpha, q, b, b_norm,
                        float(torch.linalg.vector_norm(r)))
        for rule in curvature_rules:
            stop = rule.before_step(state)
            if stop is not None:
                return finish(stop.x, it - 1, stop.status, stop.message, stop.converged, r,
                              negative_curvature=stop.negative_curvature, curvature=pAp,
                              on_boundary=stop.on_boundary)
        if alpha is None:  # pᵀAp ≤ 0 and no rule took it
            if psd is True:
                return finish(x, it - 1, "breakdown",
                              f"pᵀAp = {pAp:.3e} for an operator tagged positive semidefinite: A is "
                              "singular along p (or rounding); add damping (op + sigma)", False, r,
                              negative_curvature=p.clone(), curvature=pAp)
            if handles_curvature:
                raise TypeError("a stopping rule declares handles_curvature but returned no Stop "
                                f"for pᵀAp = {pAp:.3e} <= 0; it must stop there.")
            return finish(x, it - 1, "negative_curvature",
                          f"negative curvature pᵀAp = {pAp:.3e}: the operator is not positive "
                          "definite; add damping (op + sigma) or use method='minres'", False, r,
                          negative_curvature=p.clone(), curvature=pAp)
        x = x + alpha * p
        r = r - alpha * Ap
        z = M(r)
        rz_new = float(r @ z)
        state = CGState(it, x, r, z, p, Ap, pAp, alpha, -0.5 * float(x @ (b + r)), b, b_norm,
                        float(torch.linalg.vector_norm(r)))
        for rule in rule_list:
            stop = rule.after_step(state)
            if stop is not None:
                return finish(stop.x, it, stop.status, stop.message, stop.converged, r,
                              negative_curvature=stop.negative_curvature,
                              on_boundary=stop.on_boundary)
        if rz_new == 0:  # exact solution (r = 0) without a residual rule to say so
            return finish(x, it, "converged", "residual is exactly zero", True, r)
        p = z + (rz_new / rz) * p
        rz = rz_new
    return finish(x, max_iter, "max_iter", f"max_iter={max_iter} reached before a stopping rule "
                  "was met", False, r)


# ----------------------------------------------------------------------------- front door


def solve(op: Any, b: Any, method: str = "cg", tol: float = 1e-8,
          max_iter: int | None = None, x0: Any = None) -> LinearSolveResult:
    """Solve ``op @ x = b``; see :meth:`CurvatureOperator.solve`.

    Parameters
    ----------
    op
        a symmetric hesse operator, or a symmetric matrix (a 2-D tensor or array, taken as a
        :class:`DenseOperator`).
    b
        right-hand side, a vector of length ``n``.
    method
        ``"cg"`` (conjugate gradients, needs ``op`` positive definite; the default), ``"minres"``
        (symmetric indefinite, via SciPy) or ``"direct"`` (dense Cholesky/LU, guarded).
    tol
        relative residual tolerance, ``||b - A x|| <= tol ||b||`` (default 1e-8).
    max_iter
        iteration budget of ``"cg"`` and ``"minres"`` (default ``10 n``).
    x0
        starting point of the iterative methods (default 0).

    Notes
    -----
    ``converged`` means the measured relative residual ``‖b − A x‖ / ‖b‖`` passed the tolerance
    test: for ``"cg"`` the kernel's (``≤ tol`` on the recursive residual and ``≤ 10 tol`` on the
    true one), for ``"minres"`` and ``"direct"`` ``≤ max(10 tol, n ε)`` with ``ε`` the dtype's unit
    roundoff (the floor a backward-stable solve attains on a well-conditioned matrix). A singular
    or, for its dtype, too ill-conditioned matrix therefore gives ``converged=False`` with the
    residual in the message.
    """
    if isinstance(op, (torch.Tensor, np.ndarray)) and op.ndim == 2:
        op = DenseOperator(op)
    if not isinstance(op, CurvatureOperator):
        raise TypeError(f"op must be a CurvatureOperator or a symmetric matrix (a 2-D tensor or "
                        f"array, wrapped as hesse.DenseOperator); got {type(op).__name__}.")
    n = op.shape[0]
    b = op._as_block(b, "b")
    if b.shape != (n,):
        raise ValueError(f"b must have shape ({n},), got {tuple(b.shape)}.")
    if not bool(torch.isfinite(b).all()):
        raise ValueError(f"b has {int((~torch.isfinite(b)).sum())} non-finite entries; "
                         "the right-hand side must be finite.")
    tol = _check_tol(tol)
    max_iter = _check_max_iter(max_iter, 10 * n, minimum=1)
    x0 = None if x0 is None else op._as_block(x0, "x0")
    if x0 is not None and x0.shape != (n,):
        raise ValueError(f"x0 must have shape ({n},), got {tuple(x0.shape)}.")
    if x0 is not None and not bool(torch.isfinite(x0).all()):
        raise ValueError(f"x0 has {int((~torch.isfinite(x0)).sum())} non-finite entries; "
                         "the starting point must be finite.")
    if method == "cg":
        return conjugate_gradient(op, b, x0=x0, rules=[ResidualTolerance(tol)], max_iter=max_iter)
    if method == "minres":
        return _minres(op, b, tol, max_iter, x0)
    if method == "direct":
        return _direct(op, b, tol)
    raise ValueError(f"method must be 'cg', 'minres' or 'direct'; got {method!r}.")


def _check_tol(tol: Any) -> float:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a real number > 0 (e.g. 1e-8), got {type(tol).__name__} ({tol!r}).")
    if not math.isfinite(float(tol)) or tol <= 0:
        raise ValueError(f"tol must be a finite number > 0 (e.g. 1e-8), got {tol!r}.")
    return float(tol)


def _check_max_iter(max_iter: Any, default: int, minimum: int = 0) -> int:
    if max_iter is None:
        return default
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < minimum:
        raise ValueError(f"max_iter must be an integer >= {minimum}, got {max_iter!r}.")
    return int(max_iter)


# MINRES restarts from its last iterate at most twice when the measured residual misses the test.
MINRES_REFINEMENTS = 2


def _finish(op: CurvatureOperator, b: torch.Tensor, x: torch.Tensor, it: int, start_count: int,
            method: str, tol: float, failure: str | None, message: str) -> LinearSolveResult:
    """The result with ``converged`` decided by the measured residual: ``failure`` (the solver's
    own complaint) or a relative residual above ``max(10 tol, n ε)`` is not convergence."""
    r = b - op.matvec(x)
    bnorm = float(torch.linalg.vector_norm(b))
    rnorm = float(torch.linalg.vector_norm(r))
    rel = rnorm / bnorm if bnorm > 0 else rnorm
    bound = max(10 * tol, op.shape[0] * torch.finfo(op.dtype).eps)
    status = "converged"
    if failure is not None:
        status, message = "failed", failure
    elif not rel <= bound:  # also catches a NaN residual
        status = "residual"
        message = (f"the relative residual ‖b − A x‖/‖b‖ = {rel:.3e} is above {bound:.1e} "
                   f"(max(10 tol, n eps) in {str(op.dtype).removeprefix('torch.')}): the operator "
                   "is singular or too ill-conditioned for its dtype; add damping (op + sigma), "
                   "use float64, or use method='minres' for a least-squares solution")
    return LinearSolveResult(x=x, nit=it, num_matvecs=op.num_matvecs - start_count,
                             converged=status == "converged", message=message, residual_norm=rnorm,
                             relative_residual=rel, status=status, method=method)


def _minres(op: CurvatureOperator, b: torch.Tensor, tol: float, max_iter: int,
            x0: torch.Tensor | None) -> LinearSolveResult:
    from scipy.sparse.linalg import minres

    start = op.num_matvecs
    A = op.to_scipy()
    b_np = b.detach().to("cpu", torch.float64).numpy()
    x0_np = None if x0 is None else x0.detach().to("cpu", torch.float64).numpy()
    # SciPy stops on its own estimate (a backward error, relative to ‖A‖‖x‖); the measured
    # ‖b − A x‖/‖b‖ can be a few times above it. Restarting from x (iterative refinement) reduces
    # the measured residual again when it is attainable; on a singular system it is not.
    bound = max(10 * tol, op.shape[0] * torch.finfo(op.dtype).eps)
    b_norm = float(np.linalg.norm(b_np))
    x_np, info = minres(A, b_np, x0=x0_np, rtol=tol, maxiter=max_iter)
    for _ in range(MINRES_REFINEMENTS):
        if info != 0 or not np.linalg.norm(b_np - A @ x_np) > bound * b_norm:
            break
        x_np, info = minres(A, b_np, x0=x_np, rtol=tol, maxiter=max_iter)
    x = torch.from_numpy(x_np).to(device=op.device, dtype=op.dtype)
    failure = None if info == 0 else f"scipy minres info={info} (iteration budget max_iter={max_iter} spent)"
    res = _finish(op, b, x, -1, start, "minres", tol, failure, "residual below tol")
    res.nit = res.num_matvecs - 1
    return res


def _direct(op: CurvatureOperator, b: torch.Tensor, tol: float) -> LinearSolveResult:
    start = op.num_matvecs
    A = op.to_dense()
    try:
        x = torch.linalg.solve(A, b)
    except RuntimeError as err:
        raise ValueError(f"the operator is singular; the direct solve failed ({err}). "
                         "Add damping (op + sigma) or use method='minres'.") from None
    if not bool(torch.isfinite(x).all()):
        return _finish(op, b, torch.zeros_like(b), 1, start, "direct", tol,
                       "the dense LU solve gave a non-finite x: the operator is singular; add "
                       "damping (op + sigma) or use method='minres'", "")
    return _finish(op, b, x, 1, start, "direct", tol, None, "dense LU solve")
