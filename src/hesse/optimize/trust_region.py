"""One trust-region loop (Nocedal & Wright 2006, Alg. 4.1) with the subproblem as an object.

The model ``m(p) = f + g^T p + 1/2 p^T B p`` is minimized over ``||p|| <= Delta`` by a
:class:`TrustRegionModel`, whose ``solve(radius)`` returns ``(step, predicted_reduction,
hits_boundary)`` (as scipy's ``_trustregion.py`` plugs its subproblems into one loop). The ratio
``rho = (f(x) - f(x + p)) / (m(0) - m(p))`` accepts the step (``rho > eta``) and resizes the
region by a :class:`RadiusRule` (N&W Alg. 4.1: ``rho < 1/4``: shrink to ``||p||/4``;
``rho > 3/4`` on the boundary: double, up to ``max_radius``; or :class:`MoreRadiusRule`, Moré's
1978 rule for Levenberg-Marquardt, in the scaled norm ``||D p||``). A non-finite trial value counts as ``rho = -inf`` (the
region shrinks). When the predicted and actual reductions are both below the rounding level of
``f`` (``100 eps |f|``), ``rho`` is taken as 1 if the step lowers ``||g||`` and 0 otherwise.

Subproblems:

* :class:`SteihaugModel` (``trust-ncg``) - Steihaug-Toint truncated CG on Hessian-vector
  products (N&W Alg. 7.2; the CG kernel :func:`hesse.operators.solve.conjugate_gradient` with its
  :class:`~hesse.operators.TrustRegion` rule and the forcing tolerance
  ``min(0.5, sqrt(||g||)) ||g||``). Never forms ``B``; cost per iteration: one fused
  value+gradient and at most ``2 n + 10`` HVPs (usually a handful).
* :class:`ExactModel` (``trust-exact``) - the nearly exact solution of Moré & Sorensen (1983)
  (N&W Alg. 4.3, :func:`exact_subproblem`): ``lambda >= max(0, -lambda_1)`` with
  ``||(B + lambda I)^{-1} g|| = Delta`` by safeguarded Newton on the secular equation
  ``1/Delta - 1/||p(lambda)||``, the hard case by an eigenvector of ``lambda_1``. The
  factorization is an eigendecomposition of the dense Hessian (``O(n^3)`` once per accepted
  step), which makes each secular-equation step ``O(n)``.
* :class:`SR1Model` (``sr1``) - the symmetric rank-one quasi-Newton matrix (N&W Alg. 6.2, eq.
  6.24, skipping the update when ``|s^T(y - Bs)| < 1e-8 ||s|| ||y - Bs||``) with the exact
  subproblem; ``B`` is updated after every trial, accepted or not. Dense ``n x n``.
* :class:`LevenbergMarquardtModel` (``least_squares(method="lm")``) - the Gauss-Newton model
  ``1/2 ||J p + r||^2`` in ``||D p|| <= Delta`` (Moré 1978; MINPACK ``lmder``), its multiplier
  from the SVD of ``J D^{-1}``.

The radius constants (1/4, 3/4, the collapse tests) are defined here once.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hesse.operators.solve import ResidualTolerance, TrustRegion, conjugate_gradient

from ._core import Objective, Run
from .least_squares_methods import Residuals
from .result import CONVERGED, STEP_FAILURE, OptimizeResult

# N&W Alg. 4.1: the region shrinks when rho < 1/4 and grows when rho > 3/4.
SHRINK_BELOW, GROW_ABOVE = 0.25, 0.75
# N&W Alg. 4.1 grows the region only for a step on the boundary: within 1 % of the radius (the
# accuracy of an approximate boundary step, and more).
ON_BOUNDARY = 0.99
# Actual and predicted reductions below 100 ulps of |f| are rounding noise.
ROUNDING_LEVEL_ULPS = 100
# The region has collapsed (the attainable accuracy is reached) when the radius is below the
# rounding level of x in the region's norm, or after 60 rejected steps in a row (60 quarterings:
# 4^-60 ~ 1e-36).
COLLAPSED_RADIUS = 1e-14
MAX_REJECTED = 60
# Moré's (1978) acceptance test for Levenberg-Marquardt: a step is taken when the actual
# reduction is at least 1e-4 of the predicted one.
MORE_ACCEPT_RATIO = 1e-4
# Levenberg-Marquardt solves its secular equation to 0.1 % of the radius (an approximate root is
# all the trust region needs; Moré 1978, Sec. 5), in at most 100 safeguarded steps.
LM_SECULAR_RTOL, LM_SECULAR_MAX_ITER = 1e-3, 100
# SR1 skips the update when |s^T (y - B s)| < 1e-8 ||s|| ||y - B s|| (N&W eq. 6.26, r = 1e-8).
SR1_SKIP_TOL = 1e-8
# Moré-Sorensen: at most 60 safeguarded Newton steps on the secular equation (it converges
# quadratically; 60 bisections alone would shrink the bracket by 2^-60).
SECULAR_MAX_ITER = 60
# The secular equation ||p(lambda)|| = Delta is solved to 1e-10 of the radius.
SECULAR_RTOL = 1e-10


# Steihaug's CG ends within n steps in exact arithmetic; 2 n + 10 absorbs the loss of
# conjugacy in floating point on small problems.
def _steihaug_max_iter(n: int) -> int:
    return 2 * n + 10


def steihaug_cg(hvp: Callable[[torch.Tensor], torch.Tensor], g: torch.Tensor, radius: float,
                max_iter: int | None = None) -> tuple[torch.Tensor, bool, int]:
    """Steihaug-Toint CG (N&W Alg. 7.2) by the one CG kernel
    (:func:`hesse.operators.solve.conjugate_gradient`) with its rules :class:`TrustRegion` and
    the forcing tolerance :meth:`ResidualTolerance.forcing`. Returns
    ``(p, on_boundary, num_products)``."""
    rules = [TrustRegion(radius), ResidualTolerance.forcing(float(g.norm()))]
    res = conjugate_gradient(hvp, -g, rules=rules, max_iter=max_iter or _steihaug_max_iter(g.numel()),
                             true_residual=False)
    return res.x, res.on_boundary, res.num_matvecs


def exact_subproblem(lam: torch.Tensor, Q: torch.Tensor, g: torch.Tensor, radius: float,
                     max_iter: int = SECULAR_MAX_ITER,
                     rtol: float = SECULAR_RTOL) -> tuple[torch.Tensor, bool]:
    """Moré-Sorensen solution given ``B = Q diag(lam) Q^T``. Returns ``(p, on_boundary)``."""
    gh = Q.T @ g
    lam1 = float(lam[0])
    scale = max(1.0, float(lam.abs().max()))
    if lam1 > 1e-14 * scale:
        p = -(Q @ (gh / lam))
        if float(p.norm()) <= radius:
            return p, False

    def pnorm(shift):
        return float(torch.linalg.vector_norm(gh / (lam + shift)))

    lo = max(0.0, -lam1)
    # hard case: g has (numerically) no component along the eigenvectors of lambda_1
    mask = (lam - lam1).abs() <= 1e-10 * scale
    gh_perp = gh.abs()[mask].max()
    if float(gh_perp) <= 1e-10 * max(1.0, float(g.norm())) and lam1 <= 0:
        denom = lam - lam1
        inv = torch.where(mask, torch.zeros_like(lam), 1.0 / torch.where(mask, torch.ones_like(lam), denom))
        p_hat = -(Q @ (gh * inv))
        pn = float(p_hat.norm())
        if pn <= radius:
            tau = math.sqrt(max(radius * radius - pn * pn, 0.0))
            return p_hat + tau * Q[:, 0], True
    # safeguarded Newton on phi(s) = 1/radius - 1/||p(s)|| (N&W Alg. 4.3)
    s = lo + max(1e-12 * scale, 1e-3 * abs(lo) + 1e-12)
    hi = lo + float(g.norm()) / radius + scale
    for _ in range(max_iter):
        w = gh / (lam + s)
        pn = float(torch.linalg.vector_norm(w))
        if abs(pn - radius) <= rtol * radius:
            break
        if pn > radius:
            lo = s
        else:
            hi = s
        q2 = float(torch.dot(w, w / (lam + s)))
        s_new = s + (pn / radius - 1.0) * pn * pn / q2 if q2 > 0 else 0.5 * (lo + hi)
        if not (lo < s_new < hi):
            s_new = 0.5 * (lo + hi)
        s = s_new
    p = -(Q @ (gh / (lam + s)))
    return p, True




# ----------------------------------------------------------------------------- subproblems


class TrustRegionModel(ABC):
    """The quadratic model at the current point and its subproblem solver.

    The loop calls ``start(x, run)`` once (returns ``(f, g)`` at ``x``), then per iteration
    ``solve(radius) -> (step, predicted_reduction, hits_boundary)``, ``trial(x_try) -> (f, g)``,
    ``observe(p, g_try)`` after every finite trial, and ``accept(run)`` when the step is taken.
    ``norm(v)`` is the region's norm (Euclidean unless the model scales it);
    ``initial_radius`` the radius the loop starts from when the caller gives none."""

    initial_radius = 1.0

    @abstractmethod
    def start(self, x: torch.Tensor, run: Run) -> tuple[float, torch.Tensor]:
        """``(f, g)`` at the starting point ``x``."""

    @abstractmethod
    def solve(self, radius: float) -> tuple[torch.Tensor, float, bool]:
        """The subproblem's step within ``radius``: ``(step, predicted_reduction, hits_boundary)``."""

    @abstractmethod
    def trial(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """``(f, g)`` at a trial point."""

    def observe(self, p: torch.Tensor, g_try: torch.Tensor) -> None:
        return None

    @abstractmethod
    def accept(self, run: Run) -> None:
        """Take the last trial step."""

    def norm(self, v: torch.Tensor) -> float:
        return float(v.norm())


def _predicted(g: torch.Tensor, p: torch.Tensor, Bp: torch.Tensor) -> float:
    """``m(0) - m(p) = -(g^T p + 1/2 p^T B p)``."""
    return -(float(torch.dot(g, p)) + 0.5 * float(torch.dot(p, Bp)))


class SteihaugModel(TrustRegionModel):
    """Hessian-vector products at ``x``; the subproblem by :func:`steihaug_cg`."""

    def __init__(self, obj: Objective):
        self.obj = obj

    def start(self, x: torch.Tensor, run: Run) -> tuple[float, torch.Tensor]:
        f, self.g, self.hvp = self.obj.hvp_at(x)
        return f, self.g

    def solve(self, radius: float) -> tuple[torch.Tensor, float, bool]:
        p, on_boundary, _ = steihaug_cg(self.hvp, self.g, radius)
        return p, _predicted(self.g, p, self.hvp(p)), on_boundary

    def trial(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        f, self._g_try, self._hvp_try = self.obj.hvp_at(x)
        return f, self._g_try

    def accept(self, run: Run) -> None:
        self.g, self.hvp = self._g_try, self._hvp_try


class _EigenModel(TrustRegionModel):
    """A dense model matrix held as ``B = Q diag(lam) Q^T``; the subproblem by
    :func:`exact_subproblem`."""

    lam: torch.Tensor
    Q: torch.Tensor
    g: torch.Tensor

    def __init__(self, obj: Objective):
        self.obj = obj

    def solve(self, radius: float) -> tuple[torch.Tensor, float, bool]:
        p, on_boundary = exact_subproblem(self.lam, self.Q, self.g, radius)
        return p, _predicted(self.g, p, self.Q @ (self.lam * (self.Q.T @ p))), on_boundary

    def trial(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        self._x_try = x
        f, self._g_try = self.obj.value_grad(x)
        return f, self._g_try


class ExactModel(_EigenModel):
    """The dense Hessian at ``x`` (Moré-Sorensen, N&W Alg. 4.3)."""

    def _factor(self, x: torch.Tensor, run: Run) -> None:
        run.hessian = self.obj.hessian(x)
        self.lam, self.Q = torch.linalg.eigh(run.hessian)
        run.min_eigenvalue = float(self.lam[0])

    def start(self, x: torch.Tensor, run: Run) -> tuple[float, torch.Tensor]:
        f, self.g = self.obj.value_grad(x)
        self._factor(x, run)
        return f, self.g

    def accept(self, run: Run) -> None:
        self.g = self._g_try
        self._factor(self._x_try, run)


class SR1Model(_EigenModel):
    """The SR1 matrix (N&W Alg. 6.2), ``B_0 = I``, updated after every finite trial."""

    def start(self, x: torch.Tensor, run: Run) -> tuple[float, torch.Tensor]:
        f, self.g = self.obj.value_grad(x)
        self.B = torch.eye(x.numel(), dtype=x.dtype, device=x.device)
        self.lam, self.Q = torch.linalg.eigh(self.B)
        return f, self.g

    def observe(self, p: torch.Tensor, g_try: torch.Tensor) -> None:
        r = (g_try - self.g) - self.B @ p
        sr = float(torch.dot(p, r))
        if abs(sr) >= SR1_SKIP_TOL * float(p.norm()) * float(r.norm()) and sr != 0:
            self.B = self.B + torch.outer(r, r) / sr
        self.lam, self.Q = torch.linalg.eigh(self.B)

    def accept(self, run: Run) -> None:
        self.g = self._g_try


class LevenbergMarquardtModel(TrustRegionModel):
    """The Gauss-Newton model ``1/2 ||J p + r||^2`` in ``||D p|| <= Delta``, ``D = diag`` of the
    largest column norms of ``J`` seen so far (Moré 1978; MINPACK ``lmder``). The subproblem:
    the Lagrange multiplier ``lambda`` (the damping) solves ``||D p(lambda)|| = Delta`` to 0.1 %
    by safeguarded Newton on ``1/||q|| - 1/Delta`` (Moré 1978, eq. 5.5) via the SVD of
    ``J D^{-1}``; ``lambda = 0`` (the minimum-norm Gauss-Newton step) when that fits."""

    def __init__(self, problem: Residuals, initial_radius_factor: float = 100.0):
        self.problem, self.factor = problem, initial_radius_factor

    def _set(self, r: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
        self.r, self.J = r, J
        self.g = J.T @ r
        return self.g

    def start(self, x: torch.Tensor, run: Run) -> tuple[float, torch.Tensor]:
        r, J = self.problem.residuals_and_jacobian(x)
        self.D = J.norm(dim=0).clamp_min(torch.finfo(x.dtype).eps)
        # Moré's initial radius: factor * ||D x0||, or the factor itself when x0 = 0
        self.initial_radius = self.factor * self.norm(x) or self.factor
        return _half_square(r), self._set(r, J)

    def norm(self, v: torch.Tensor) -> float:
        return float((self.D * v).norm())

    def solve(self, radius: float) -> tuple[torch.Tensor, float, bool]:
        self.D = torch.maximum(self.D, self.J.norm(dim=0))
        p, lam = _lm_step(self.J, self.r, self.D, radius)
        Jp = self.J @ p
        return p, -(float(torch.dot(self.r, Jp)) + 0.5 * float(torch.dot(Jp, Jp))), lam != 0.0

    def trial(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        self._r_try, self._J_try = self.problem.residuals_and_jacobian(x)
        return _half_square(self._r_try), self._J_try.T @ self._r_try

    def accept(self, run: Run) -> None:
        self._set(self._r_try, self._J_try)


def _half_square(r: torch.Tensor) -> float:
    return 0.5 * float(torch.dot(r, r)) if bool(torch.isfinite(r).all()) else math.inf


def _lm_step(J: torch.Tensor, r: torch.Tensor, D: torch.Tensor, radius: float) -> tuple[torch.Tensor, float]:
    """Solve ``min ||J p + r||, ||D p|| <= radius`` (Moré 1978) via the SVD of ``J D^{-1}``.
    Returns ``(p, lambda)``, ``lambda = 0`` when the Gauss-Newton step fits."""
    A = J / D
    U, sig, Vh = torch.linalg.svd(A, full_matrices=False)
    c = U.T @ r
    keep = sig > sig.max() * torch.finfo(J.dtype).eps * max(J.shape) if sig.numel() else sig > 0

    def q_of(lam):
        coef = torch.where(keep, sig * c / (sig * sig + lam), torch.zeros_like(sig))
        return -(Vh.T @ coef)

    q = q_of(0.0)
    if float(q.norm()) <= radius:
        return q / D, 0.0
    lo, hi = 0.0, float((sig * c.abs()).max()) / radius + float(sig.max()) ** 2
    lam = 0.5 * (lo + hi) if hi > 0 else 1.0
    for _ in range(LM_SECULAR_MAX_ITER):
        qn = float(q_of(lam).norm())
        if abs(qn - radius) <= LM_SECULAR_RTOL * radius:
            break
        if qn > radius:
            lo = lam
        else:
            hi = lam
        # Newton step on 1/||q|| - 1/radius (Moré 1978, eq. 5.5), safeguarded by bisection
        coef = torch.where(keep, sig * c / (sig * sig + lam), torch.zeros_like(sig))
        dq2 = -2.0 * float(torch.sum(torch.where(keep, coef * coef / (sig * sig + lam), torch.zeros_like(sig))))
        lam_new = lam - (qn / radius - 1.0) * (qn * qn) / (0.5 * dq2) if dq2 != 0 else 0.5 * (lo + hi)
        lam = lam_new if lo < lam_new < hi else 0.5 * (lo + hi)
    return q_of(lam) / D, lam


# ----------------------------------------------------------------------------- radius rules


@dataclass(frozen=True)
class RadiusRule:
    """How the loop accepts a step and resizes the region (Nocedal & Wright 2006, Alg. 4.1):
    accept when ``rho > eta``; ``rho < 1/4``: shrink to ``||p||/4`` (a quarter of
    ``min(Delta, ||p||)`` after a non-finite trial); ``rho > 3/4`` with the step on the boundary:
    double, up to ``max_radius``."""

    eta: float = 0.15
    max_radius: float = 1e4

    def update(self, radius: float, rho: float, pnorm: float, hits_boundary: bool,
               finite: bool) -> float:
        if rho < SHRINK_BELOW:
            return 0.25 * pnorm if finite else 0.25 * min(radius, pnorm)
        if rho > GROW_ABOVE and pnorm >= ON_BOUNDARY * radius:
            return min(2.0 * radius, self.max_radius)
        return radius


@dataclass(frozen=True)
class MoreRadiusRule(RadiusRule):
    """Moré's (1978) rule for Levenberg-Marquardt: accept when ``rho > 1e-4``; ``rho < 1/4``:
    halve ``min(Delta, ||D p||)``; ``rho > 3/4`` or an interior (Gauss-Newton) step: grow to
    ``max(Delta, 2 ||D p||)``."""

    eta: float = MORE_ACCEPT_RATIO
    max_radius: float = math.inf

    def update(self, radius: float, rho: float, pnorm: float, hits_boundary: bool,
               finite: bool) -> float:
        if rho < SHRINK_BELOW:
            return 0.5 * min(radius, pnorm) if finite else 0.25 * min(radius, pnorm)
        if rho > GROW_ABOVE or not hits_boundary:
            return max(radius, 2.0 * pnorm)
        return radius


# ----------------------------------------------------------------------------- the loop


def trust_region(model: TrustRegionModel, x: torch.Tensor, run: Run, rule: RadiusRule,
                 initial_radius: float | None = None) -> OptimizeResult:
    """The one trust-region loop (N&W Alg. 4.1) over a :class:`TrustRegionModel`;
    ``initial_radius`` defaults to the model's own (``model.initial_radius``). The region grows
    on the boundary by the step's length (``||p|| >= 0.99 Delta``), which covers a
    subproblem's approximate boundary steps; ``hits_boundary`` is the subproblem's report."""
    f, g = model.start(x, run)
    status = run.start(x, f, float(g.norm()))
    if status is not None:
        return run.finish(x, f, g, status)
    radius = initial_radius if initial_radius is not None else model.initial_radius
    rejected = 0
    while True:
        p, predicted, hits_boundary = model.solve(radius)
        x_try = x + p
        f_try, g_try = model.trial(x_try)
        finite = math.isfinite(f_try) and bool(torch.isfinite(g_try).all())
        actual = f - f_try if finite else -math.inf
        rho = actual / predicted if predicted > 0 else (-math.inf if actual < 0 else 0.0)
        noise = ROUNDING_LEVEL_ULPS * torch.finfo(x.dtype).eps * max(1.0, abs(f))
        in_noise = finite and 0 < predicted <= noise and abs(actual) <= noise
        if in_noise:
            # both reductions are below the rounding level of f: their ratio is noise. Judge the
            # step by the gradient instead (accept it when ||g|| decreases), so that a minimum
            # with a large f* (Brown-Dennis, f* = 85822) can still be refined to gtol
            rho = 1.0 if float(g_try.norm()) < float(g.norm()) else 0.0
        if finite:
            model.observe(p, g_try)
        radius = rule.update(radius, rho, model.norm(p), hits_boundary, finite)
        if rho > rule.eta and finite and (actual > 0 or in_noise):
            rejected = 0
            x_old_f = f
            x, f, g = x_try, f_try, g_try
            model.accept(run)
            status = run.step(x, f, float(g.norm()), float(p.norm()), x_old_f)
            if status is not None:
                return run.finish(x, f, g, status)
        else:
            rejected += 1
            if radius < COLLAPSED_RADIUS * max(1.0, model.norm(x)) or rejected > MAX_REJECTED:
                if float(g.norm()) <= run.gtol:
                    return run.finish(x, f, g, CONVERGED)
                return run.finish(x, f, g, STEP_FAILURE,
                                  f"trust region collapsed (radius {radius:.2e}) with ||g||={float(g.norm()):.2e}; "
                                  "the attainable accuracy is reached - loosen gtol")


_MODELS: dict[str, Callable[[Objective], TrustRegionModel]] = {
    "steihaug": SteihaugModel, "exact": ExactModel, "sr1": SR1Model}


def minimize_trust_region(obj: Objective, x: torch.Tensor, run: Run, *, subproblem: str,
                          initial_radius: float = 1.0, max_radius: float = 1e4,
                          eta: float = 0.15) -> OptimizeResult:
    """``trust-ncg``, ``trust-exact`` and ``sr1``: the loop with N&W's radius rule."""
    return trust_region(_MODELS[subproblem](obj), x, run, RadiusRule(eta, max_radius), initial_radius)


def minimize_levenberg_marquardt(problem: Residuals, x: torch.Tensor, run: Run, *,
                                 initial_radius_factor: float = 100.0) -> OptimizeResult:
    """``least_squares(method="lm")``: the loop with :class:`LevenbergMarquardtModel` and
    :class:`MoreRadiusRule`."""
    return trust_region(LevenbergMarquardtModel(problem, initial_radius_factor), x, run, MoreRadiusRule())
