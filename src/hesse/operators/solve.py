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

Rules shipped here: :class:`ResidualTolerance` (``‖r‖ ≤ max(rtol ‖b‖, atol)``),
:class:`NegativeCurvature` (``pᵀAp ≤ 0``: return the iterate and the direction ``p``),
:class:`TrustRegion` (Steihaug 1983; Nocedal & Wright 2006, Alg. 7.2: stop on the boundary
``‖x‖ = Δ``), :class:`MartensProgress` (Martens 2010, §4.4) and :class:`RecordIterates` (keep
iterates, e.g. at ``⌈1.3ʲ⌉`` for Martens' backtracking, §4.6). Any object with these two methods
(returning ``None`` to continue or a :class:`Stop`) is a rule.

Structure tag. CG needs ``A`` positive definite. For an operator *not* tagged ``is_psd=True`` the
kernel checks every curvature ``pᵀAp``: without a :class:`NegativeCurvature` or
:class:`TrustRegion` rule a non-positive one stops the solve with ``converged=False`` and says so.
An operator tagged ``is_psd=True`` (GGN, Fisher, a damped PSD operator) skips that check and its
rules (:class:`NegativeCurvature` is not consulted); a curvature ``pᵀAp ≤ 0`` there can only be a
null direction or rounding and stops the solve as a breakdown (``status="breakdown"``).

Cost: one product per iteration, one more for a nonzero ``x0``, one more for the final true
residual ``b − A x`` (``true_residual=True``, the default; the recursive residual can drift from
it in floating point, and a solve is only reported converged when the true one meets the
tolerance too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .._result import Result
from .base import CurvatureOperator

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
    ``"trust_region_boundary"``, ``"progress"``, ``"breakdown"``, ``"nonfinite"``, or a solver's
    own); ``message`` (why it stopped, what to do); ``residual_norm`` ``‖b − A x‖`` and
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
    """A CG stopping rule: ``before_step`` and ``after_step`` return ``None`` or a :class:`Stop`."""

    def before_step(self, state: CGState) -> Stop | None: ...

    def after_step(self, state: CGState) -> Stop | None: ...


class _Rule:
    """Base with no-op hooks; rules override one or both."""

    needs_psd_check = False  # consulted on curvature even for is_psd operators

    def before_step(self, state: CGState) -> Stop | None:
        return None

    def after_step(self, state: CGState) -> Stop | None:
        return None


class ResidualTolerance(_Rule):
    """Converged when ``‖r‖ ≤ max(rtol · ‖b‖, atol)`` (the recursive residual; the kernel
    re-checks the true residual at the end)."""

    def __init__(self, rtol: float = 1e-8, atol: float = 0.0):
        if not (np.isfinite(rtol) and rtol >= 0 and np.isfinite(atol) and atol >= 0) or rtol == atol == 0:
            raise ValueError(f"the residual tolerance needs rtol >= 0 and atol >= 0, not both 0; got "
                             f"rtol={rtol!r}, atol={atol!r}.")
        self.rtol, self.atol = float(rtol), float(atol)

    def target(self, b_norm: float) -> float:
        return max(self.rtol * b_norm, self.atol)

    def after_step(self, state: CGState) -> Stop | None:
        if state.r_norm <= self.target(state.b_norm):
            return Stop(state.x, "converged", "residual below tol", converged=True)
        return None


class NegativeCurvature(_Rule):
    """Stop at a direction of non-positive curvature ``pᵀAp ≤ 0`` (Nocedal & Wright 2006,
    Alg. 7.1, truncated Newton): returns the current iterate (``x0``, or ``0``, at the first
    iteration) with ``negative_curvature = p``. Not consulted for ``is_psd=True`` operators."""

    def before_step(self, state: CGState) -> Stop | None:
        if state.pAp <= 0:
            return Stop(state.x, "negative_curvature",
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

    needs_psd_check = True

    def __init__(self, radius: float):
        if not (np.isfinite(radius) and radius > 0):
            raise ValueError(f"the trust-region radius must be a positive finite number, got {radius!r}.")
        self.radius = float(radius)

    def _taus(self, x: torch.Tensor, p: torch.Tensor) -> tuple[float, float]:
        """The two roots of ``‖x + τ p‖² = Δ²`` (``τ₋ ≤ 0 ≤ τ₊`` when ``‖x‖ ≤ Δ``)."""
        pp, xp, xx = float(p @ p), float(x @ p), float(x @ x)
        disc = max(xp * xp - pp * (xx - self.radius**2), 0.0)
        root = math.sqrt(disc)
        # numerically stable pair of roots
        if xp >= 0:
            t_minus = (-xp - root) / pp
            t_plus = (xx - self.radius**2) / (pp * t_minus) if t_minus != 0 else (-xp + root) / pp
        else:
            t_plus = (-xp + root) / pp
            t_minus = (xx - self.radius**2) / (pp * t_plus) if t_plus != 0 else (-xp - root) / pp
        return t_minus, t_plus

    def before_step(self, state: CGState) -> Stop | None:
        x, p = state.x, state.p
        if state.pAp <= 0:
            t_minus, t_plus = self._taus(x, p)
            # q(x + τp) − q(x) = −τ pᵀr + ½ τ² pᵀAp
            pr = float(p @ state.r)

            def dq(t):
                return -t * pr + 0.5 * t * t * state.pAp

            tau = t_minus if dq(t_minus) < dq(t_plus) else t_plus
            return Stop(x + tau * p, "negative_curvature",
                        f"negative curvature pᵀAp = {state.pAp:.3e}: stopped on the trust-region "
                        f"boundary ‖x‖ = {self.radius:.3g}",
                        negative_curvature=p.clone(), on_boundary=True)
        assert state.alpha is not None
        step = x + state.alpha * p
        if float(step.norm()) >= self.radius:
            _, t_plus = self._taus(x, p)
            return Stop(x + t_plus * p, "trust_region_boundary",
                        f"the step reached the trust-region boundary ‖x‖ = {self.radius:.3g}",
                        on_boundary=True)
        return None


class MartensProgress(_Rule):
    """Martens' (2010, §4.4) relative-progress test: stop at iteration ``i`` when ``i > k``,
    ``q(x_i) < 0`` and ``(q(x_i) − q(x_{i−k})) / q(x_i) < k · eps``, with
    ``k = max(k_min, ⌊fraction · i⌋)`` (defaults 10, 0.1, 5e-4 as in the paper). A stop here is a
    deliberate truncation: ``converged=False``, ``status="progress"``."""

    def __init__(self, k_min: int = 10, fraction: float = 0.1, eps: float = 5e-4):
        self.k_min, self.fraction, self.eps = int(k_min), float(fraction), float(eps)
        self.values: list[float] = []

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
    last iterate is always added. :meth:`martens` keeps ``i = ⌈1.3ʲ⌉`` (Martens 2010, §4.6)."""

    def __init__(self, at: Callable[[int], bool] | None = None):
        self.at = at
        self.iterates: list[tuple[int, torch.Tensor]] = []

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
    n = b.shape[0]
    rule_list = [ResidualTolerance(tol)] if rules is None else list(rules)
    for rule in rule_list:
        if not (hasattr(rule, "before_step") and hasattr(rule, "after_step")):
            raise TypeError(f"{type(rule).__name__} is not a stopping rule: it needs before_step(state) "
                            f"and after_step(state) methods.")
    residual_rules = [r for r in rule_list if isinstance(r, ResidualTolerance)]
    if max_iter is None:
        max_iter = 10 * n
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}.")
    recorders = [r for r in rule_list if isinstance(r, RecordIterates)]
    curvature_rules = [r for r in rule_list
                       if not (psd is True and isinstance(r, NegativeCurvature))]
    handles_curvature = any(isinstance(r, (NegativeCurvature, TrustRegion)) for r in curvature_rules)

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
        if converged and true_residual and residual_rules:
            bound = 10 * max(rr.target(b_norm) for rr in residual_rules)
            if r_norm > bound:
                converged, status = False, "residual_drift"
                message = "recursive residual met tol but the true residual did not"
        iterates = None
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
            assert not handles_curvature
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


def solve(op: CurvatureOperator, b: Any, method: str = "cg", tol: float = 1e-8,
          max_iter: int | None = None, x0: Any = None) -> LinearSolveResult:
    """Solve ``op @ x = b``; see :meth:`CurvatureOperator.solve`.

    Parameters
    ----------
    op
        a symmetric hesse operator.
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
    """
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
        return conjugate_gradient(op, b, x0=x0, rules=[ResidualTolerance(tol)],
                                  max_iter=max_iter if max_iter is not None else 10 * n)
    if method == "minres":
        return _minres(op, b, tol, max_iter if max_iter is not None else 10 * n, x0)
    if method == "direct":
        return _direct(op, b)
    raise ValueError(f"method must be 'cg', 'minres' or 'direct'; got {method!r}.")


def _finish(op, b, x, it, start_count, method, converged, message) -> LinearSolveResult:
    r = b - op.matvec(x)
    bnorm = float(torch.linalg.vector_norm(b))
    rnorm = float(torch.linalg.vector_norm(r))
    rel = rnorm / bnorm if bnorm > 0 else rnorm
    return LinearSolveResult(x=x, nit=it, num_matvecs=op.num_matvecs - start_count,
                             converged=converged, message=message, residual_norm=rnorm,
                             relative_residual=rel, status="converged" if converged else "failed",
                             method=method)


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
    res.nit = res.num_matvecs - 1
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

