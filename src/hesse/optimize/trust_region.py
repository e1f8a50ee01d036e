"""One trust-region loop (Nocedal & Wright 2006, Alg. 4.1) with pluggable subproblem solvers.

The model ``m(p) = f + g^T p + 1/2 p^T B p`` is minimized over ``||p|| <= Delta``; the ratio
``rho = (f(x) - f(x + p)) / (m(0) - m(p))`` accepts the step (``rho > eta``) and resizes the
region (``rho < 1/4``: shrink to ``||p||/4``; ``rho > 3/4`` on the boundary: double).
A non-finite trial value counts as ``rho = -inf`` (the region shrinks). When the predicted and
actual reductions are both below the rounding level of ``f`` (``100 eps |f|``), ``rho`` is taken
as 1 if the step lowers ``||g||`` and 0 otherwise.

Subproblem solvers:

* ``trust-ncg`` - Steihaug-Toint truncated CG on Hessian-vector products (N&W Alg. 7.2; the
  CG kernel :func:`hesse.operators.solve.conjugate_gradient` with its :class:`TrustRegion` rule), with
  the forcing term ``min(0.5, sqrt(||g||)) ||g||``. Never forms ``B``; cost per iteration:
  one fused value+gradient and at most ``n`` HVPs (usually a handful).
* ``trust-exact`` - the nearly exact solution of Moré & Sorensen (1983) (N&W Alg. 4.3): find
  ``lambda >= max(0, -lambda_1)`` with ``||(B + lambda I)^{-1} g|| = Delta`` by safeguarded
  Newton on the secular equation ``1/Delta - 1/||p(lambda)||``, handling the hard case with an
  eigenvector of ``lambda_1``. Here the factorization is an eigendecomposition of the dense
  Hessian (``O(n^3)`` once per accepted step), which makes each secular-equation step ``O(n)``.
* ``sr1`` - the symmetric rank-one quasi-Newton matrix (N&W Alg. 6.2, eq. 6.24, skipping the
  update when ``|s^T(y - Bs)| < 1e-8 ||s|| ||y - Bs||``) with the exact subproblem solver;
  ``B`` is updated after every trial, accepted or not. Dense ``n x n``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from hesse.operators.solve import ResidualTolerance, TrustRegion, conjugate_gradient

from ._core import Objective, Run
from .result import CONVERGED, STEP_FAILURE, OptimizeResult

# N&W Alg. 4.1: shrink the region when rho < 1/4, grow it when rho > 3/4 and the step reached
# the boundary (within 1 %, the accuracy of the exact subproblem's secular equation and more).
SHRINK_BELOW, GROW_ABOVE, ON_BOUNDARY = 0.25, 0.75, 0.99
# Actual and predicted reductions below 100 ulps of |f| are rounding noise.
ROUNDING_LEVEL_ULPS = 100
# The region has collapsed (the attainable accuracy is reached) when the radius is below the
# rounding level of x, or after 60 rejected steps in a row (60 quarterings: 4^-60 ~ 1e-36).
COLLAPSED_RADIUS = 1e-14
MAX_REJECTED = 60
# SR1 skips the update when |s^T (y - B s)| < 1e-8 ||s|| ||y - B s|| (N&W eq. 6.26, r = 1e-8).
SR1_SKIP_TOL = 1e-8
# Moré-Sorensen: at most 60 safeguarded Newton steps on the secular equation (it converges
# quadratically; 60 bisections alone would shrink the bracket by 2^-60).
SECULAR_MAX_ITER = 60


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
                     max_iter: int = SECULAR_MAX_ITER) -> tuple[torch.Tensor, bool]:
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
        if abs(pn - radius) <= 1e-10 * radius:
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


def minimize_trust_region(obj: Objective, x: torch.Tensor, run: Run, *, subproblem: str,
                          initial_radius: float = 1.0, max_radius: float = 1e4,
                          eta: float = 0.15) -> OptimizeResult:
    radius = initial_radius
    if subproblem == "steihaug":
        f, g, hvp = obj.hvp_at(x)
    else:
        f, g = obj.value_grad(x)
    status = run.start(x, f, float(g.norm()))
    n = x.numel()
    B: torch.Tensor | None = None
    lam: torch.Tensor | None = None
    Q: torch.Tensor | None = None
    if subproblem == "exact":
        run.hessian = obj.hessian(x)
        lam, Q = torch.linalg.eigh(run.hessian)
        run.min_eigenvalue = float(lam[0])
    elif subproblem == "sr1":
        B = torch.eye(n, dtype=x.dtype, device=x.device)
    if status is not None:
        return run.finish(x, f, g, status)
    rejected = 0
    while True:
        if subproblem == "steihaug":
            p, _, _ = steihaug_cg(hvp, g, radius)
            Bp = hvp(p)
        else:
            if B is not None:  # sr1: the model matrix changes after every trial
                lam, Q = torch.linalg.eigh(B)
            assert lam is not None and Q is not None  # set above for "exact" and "sr1"
            p, _ = exact_subproblem(lam, Q, g, radius)
            Bp = Q @ (lam * (Q.T @ p))
        predicted = -(float(torch.dot(g, p)) + 0.5 * float(torch.dot(p, Bp)))
        x_try = x + p
        if subproblem == "steihaug":
            f_try, g_try, hvp_try = obj.hvp_at(x_try)
        else:
            f_try, g_try = obj.value_grad(x_try)
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
        pnorm = float(p.norm())
        if B is not None and finite:
            s, y = p, g_try - g
            r = y - B @ s
            sr = float(torch.dot(s, r))
            if abs(sr) >= SR1_SKIP_TOL * float(s.norm()) * float(r.norm()) and sr != 0:
                B = B + torch.outer(r, r) / sr
        if rho < SHRINK_BELOW:
            radius = 0.25 * pnorm if finite else 0.25 * min(radius, pnorm)
        elif rho > GROW_ABOVE and pnorm >= ON_BOUNDARY * radius:
            radius = min(2.0 * radius, max_radius)
        if rho > eta and finite and (actual > 0 or in_noise):
            rejected = 0
            x_old_f = f
            x, f, g = x_try, f_try, g_try
            if subproblem == "steihaug":
                hvp = hvp_try
            elif subproblem == "exact":
                run.hessian = obj.hessian(x)
                lam, Q = torch.linalg.eigh(run.hessian)
                run.min_eigenvalue = float(lam[0])
            status = run.step(x, f, float(g.norm()), pnorm, x_old_f)
            if status is not None:
                return run.finish(x, f, g, status)
        else:
            rejected += 1
            if radius < COLLAPSED_RADIUS * max(1.0, float(x.norm())) or rejected > MAX_REJECTED:
                if float(g.norm()) <= run.gtol:
                    return run.finish(x, f, g, CONVERGED)
                return run.finish(x, f, g, STEP_FAILURE,
                                  f"trust region collapsed (radius {radius:.2e}) with ||g||={float(g.norm()):.2e}; "
                                  "the attainable accuracy is reached - loosen gtol")
