"""Shared machinery of the optimizers: the counted objective, the stopping tests and history
(one ``Run`` per call), and the final curvature check that decides success.

Methods receive ``(obj, x0, run, options)`` where ``x0`` is a flat tensor, and end with
``return run.finish(x, f, g, status)``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable

import torch

from hesse._autodiff import hessian
from hesse._progress import Progress
from hesse._validation import call_torch_function, check_scalar_output, disconnected_error
from hesse.operators import HessianOperator
from hesse.spectrum import eigsh

from .result import (
    CALLBACK,
    CONVERGED,
    GRADIENT_MISMATCH,
    MAX_ITER,
    MAX_TIME,
    NONFINITE,
    SADDLE,
    STALLED,
    STATUS_NAMES,
    UNBOUNDED,
    OptimizeHistory,
    OptimizeResult,
)

KEEP_ITERATES_MAX_N = 10_000
"""The history keeps copies of x only up to this n (memory: one n-vector per iteration)."""
DENSE_CURVATURE_MAX_N = 500
"""The final curvature check is a dense eigvalsh up to this n (a 500 x 500 Hessian takes well
under a second), Lanczos above."""
CURVATURE_LANCZOS_TOL = 1e-4
CURVATURE_LANCZOS_MAX_MATVECS = 300
"""Lanczos for the smallest eigenvalue only has to tell its sign against ``curvature_tol``:
a relative accuracy of 1e-4 within 300 products suffices."""
UNBOUNDED_F = 1e20
"""f below ``-UNBOUNDED_F * max(1, |f(x0)|)`` while decreasing: no finite minimum is in sight."""
RUNAWAY_HINT_X = 1e3
"""At ``max_iter``, ``||x|| > RUNAWAY_HINT_X * (1 + ||x0||)`` with f decreasing adds a hint."""
UNBOUNDED_X = 1e8
"""``||x|| > UNBOUNDED_X * (1 + ||x0||)`` while f decreases: the iterates run away. A line search
on a function unbounded below extrapolates by about 1e9 per iteration, so this stops such a run
after one or two iterations instead of ``max_iter`` line searches."""


GRADIENT_CHECK_SEED = 0
"""Seed of the random directions of :func:`gradient_mismatch` (the check is deterministic)."""
GRADIENT_CHECK_MARGIN = 10.0
"""A mismatch counts when it exceeds this multiple of the finite difference's error estimate."""


def gradient_mismatch(values: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, G: torch.Tensor,
                      F: torch.Tensor, gtol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Check the gradients ``G`` (B, n) of ``f`` at the points ``X`` against ``f`` itself along one
    random unit direction ``v`` per row.

    Central differences ``D(h) = (f(x + h v) - f(x - h v)) / 2h`` with ``h = eps^(1/3) max(1, ||x||)``
    (the step that balances the truncation error, ``h^2`` times the third derivative over 6,
    against the rounding ``eps |f| / h``; Nocedal & Wright 2006, Sec. 8.1). A row fails when
    ``|D(h) - g.v|`` exceeds both ``gtol`` (the gradient test's own scale: ``|g.v| <= ||g|| <= gtol``)
    and ``GRADIENT_CHECK_MARGIN`` times the error estimate ``|D(2h) - D(h)|`` (three times the
    truncation error of ``D(h)``) plus the rounding ``4 eps max|f| / h``; ``D(2h)`` is evaluated
    only when some row is not already cleared by the first test. Rows whose trial values are not
    finite are not judged (``f`` may end at the edge of its domain). A gradient that autograd
    computes from a partly disconnected ``f`` (``.item()``, ``.detach()``, ``torch.tensor(...)``)
    misses the change of the disconnected part, which the differences see.

    ``values`` maps an (m, n) block to the (m,) values. Returns ``(failed, directional derivative
    by differences, g.v, evaluations per row)``.
    """
    B, n = X.shape
    eps = torch.finfo(X.dtype).eps
    gen = torch.Generator().manual_seed(GRADIENT_CHECK_SEED)
    V = torch.randn(B, n, generator=gen, dtype=torch.float64).to(dtype=X.dtype, device=X.device)
    V = V / V.norm(dim=1, keepdim=True)
    h = (eps ** (1.0 / 3.0)) * X.norm(dim=1).clamp_min(1.0)
    gv = (G * V).sum(1)

    def difference(scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        hs = (scale * h).unsqueeze(1)
        Fp, Fm = values(torch.cat([X + hs * V, X - hs * V])).detach().to(dtype=X.dtype, device=X.device).reshape(2, B)
        return (Fp - Fm) / (2 * scale * h), torch.maximum(Fp.abs(), Fm.abs())

    D1, fmax = difference(1.0)
    suspect = torch.isfinite(D1) & ((D1 - gv).abs() > gtol)
    if not bool(suspect.any()):
        return suspect, D1, gv, 2
    D2, fmax2 = difference(2.0)
    fscale = torch.maximum(torch.maximum(fmax, fmax2), F.abs())
    error = (D2 - D1).abs() + 4 * eps * fscale / h
    failed = suspect & torch.isfinite(D2) & ((D1 - gv).abs() > GRADIENT_CHECK_MARGIN * error)
    return failed, D1, gv, 4


def gradient_mismatch_detail(derivative: float, predicted: float, gnorm: float) -> str:
    """The message of a failed :func:`gradient_mismatch` check."""
    return (
        f"||g||={gnorm:.2e} <= gtol, but along a random direction f changes at rate {derivative:.4g} "
        f"(finite differences) where the gradient gives {predicted:.4g}: part of f is not "
        "connected to x (.item(), .detach(), float(...), torch.tensor(...) or NumPy inside f), so "
        "autograd misses how that part changes. Write f with torch operations on x throughout"
    )


class Objective:
    """``f`` on flat vectors with evaluation counters.

    Counters: ``nfev`` values, ``njev`` gradients (as scipy), ``nhev`` dense Hessians,
    ``num_matvecs`` Hessian-vector products. ``value_grad`` is one fused forward + backward pass
    (counts one value and one gradient);
    ``hvp_at`` builds the gradient graph once and returns a product closure (reverse-over-reverse,
    the cheapest product on CPU); ``hessian`` is dense (``hesse.hessian``, guarded by
    ``max_memory``).

    The first gradient refuses an output that is not connected to ``x`` (``.item()``,
    ``torch.tensor(...)``, NumPy inside ``f``): its gradient would be reported as zero and the
    start called a minimum. Later evaluations give a zero gradient for a disconnected output
    (a piecewise-constant branch of ``f`` far from the start, say) so a run is not lost midway.
    """

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], shape: torch.Size,
                 max_memory: int | None = None):
        self.f_user, self.shape = f, shape
        self.max_memory = max_memory
        self.nfev = self.njev = self.nhev = self.num_matvecs = 0
        self.connection_checked = False

    def _gradient_or_refuse(self, v, xr, create_graph: bool):
        g = None
        if v.requires_grad:
            (g,) = torch.autograd.grad(v, xr, create_graph=create_graph, allow_unused=True)
        if g is None:
            if not self.connection_checked:
                raise disconnected_error()
            g = torch.zeros_like(xr)
        self.connection_checked = True
        return g

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        return check_scalar_output(call_torch_function(self.f_user, x.reshape(self.shape)))

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        return self._call(x)

    def value(self, x: torch.Tensor) -> float:
        self.nfev += 1
        with torch.no_grad():
            return float(self._call(x))

    def value_grad(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        self.nfev += 1
        self.njev += 1
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = self._call(xr)
            g = self._gradient_or_refuse(v, xr, create_graph=False)
        return float(v.detach()), g.detach()

    def hvp_at(self, x: torch.Tensor):
        """``(f, g, hvp)`` at ``x``; ``hvp(v)`` reuses the gradient's graph."""
        self.nfev += 1
        self.njev += 1
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            v = self._call(xr)
            g = self._gradient_or_refuse(v, xr, create_graph=True)

        def hvp(p: torch.Tensor) -> torch.Tensor:
            self.num_matvecs += 1
            if not g.requires_grad:
                return torch.zeros_like(p)
            with torch.enable_grad():
                (hp,) = torch.autograd.grad(g, xr, p, retain_graph=True, allow_unused=True)
            return torch.zeros_like(p) if hp is None else hp.detach()

        return float(v.detach()), g.detach(), hvp

    def hessian(self, x: torch.Tensor) -> torch.Tensor:

        self.nhev += 1
        return hessian(self.flat, x.detach(), max_memory=self.max_memory)


def finite(v) -> bool:
    if isinstance(v, torch.Tensor):
        return bool(torch.isfinite(v).all())
    return math.isfinite(v)


class Run:
    """Stopping tests, history, callback, progress and the final result of one minimization."""

    def __init__(self, obj: Objective, method: str, *, gtol: float, ftol: float, xtol: float,
                 max_iter: int, max_time: float | None, callback, history: bool, progress: bool,
                 check_curvature: bool = True, curvature_tol: float = 1e-6, n: int = 0):
        self.obj, self.method = obj, method
        self.gtol, self.ftol, self.xtol = gtol, ftol, xtol
        self.max_iter, self.max_time = max_iter, max_time
        self.callback = callback
        self.check_curvature, self.curvature_tol = check_curvature, curvature_tol
        self.nit = 0
        self.t0 = time.perf_counter()
        self.history = OptimizeHistory(iterates_kept=history and n <= KEEP_ITERATES_MAX_N) if history else None
        self.bar = Progress(max_iter, method, progress)
        self.min_eigenvalue: float | None = None  # set by methods that have the Hessian at x
        self.hessian: torch.Tensor | None = None  # the dense Hessian at x, when the method has it
        self.hess_inv: torch.Tensor | None = None  # a quasi-Newton inverse-Hessian approximation
        self.f0 = math.nan
        self.x0_norm = self.x_norm = 0.0
        self.callback_detail = "the callback asked to stop"

    def _record(self, x, f, gnorm, step):
        h = self.history
        if h is None:
            return
        h.append(self.nit, f, gnorm, step, self.obj.nfev, x)

    def start(self, x, f: float, gnorm: float) -> int | None:
        """Record ``x0``; returns a status when ``x0`` already passes the gradient test."""
        if not math.isfinite(f):
            raise ValueError(
                f"f(x0) is not finite ({f}); start from a point where f is defined."
            )
        if not math.isfinite(gnorm):
            raise ValueError("The gradient of f at x0 is not finite; start from a point where f is smooth.")
        self._record(x, f, gnorm, 0.0)
        self.f0 = f
        self.x0_norm = self.x_norm = float(x.norm())
        return CONVERGED if gnorm <= self.gtol else None

    def step(self, x_new, f_new: float, gnorm: float, step_norm: float, f_old: float,
             x_norm: float | None = None) -> int | None:
        """Record an accepted iterate; returns a status code to stop, or None to go on."""
        self.nit += 1
        self._record(x_new, f_new, gnorm, step_norm)
        self.bar.update(1, info=f"f={f_new:.4g} |g|={gnorm:.2e}")
        if self.callback is not None and self._call_back(x_new, f_new, gnorm):
            return CALLBACK
        if gnorm <= self.gtol:
            return CONVERGED
        self.x_norm = float(x_new.norm()) if x_norm is None else x_norm
        if f_new < self.f0 and (f_new < -UNBOUNDED_F * max(1.0, abs(self.f0))
                                or self.x_norm > UNBOUNDED_X * (1.0 + self.x0_norm)):
            return UNBOUNDED
        if self.ftol > 0 and abs(f_old - f_new) <= self.ftol * max(1.0, abs(f_new)):
            return STALLED
        if self.xtol > 0:
            if step_norm <= self.xtol * (1.0 + self.x_norm):
                return STALLED
        if self.nit >= self.max_iter:
            return MAX_ITER
        if self.max_time is not None and time.perf_counter() - self.t0 >= self.max_time:
            return MAX_TIME
        return None

    def _call_back(self, x, f: float, gnorm: float) -> bool:
        """Call the callback on an accepted iterate; True when it asks to stop: by returning
        True (hesse) or by raising ``StopIteration`` (scipy's way). A callback marked
        ``wants_result`` (scipy's ``callback(intermediate_result)``) gets an
        :class:`OptimizeResult` of the iterate (status -1: in progress) instead of
        ``(x, f, grad_norm)``."""
        # a copy, as scipy passes: a callback that changes its argument must not move the run
        x = x.detach().reshape(self.obj.shape).clone()
        try:
            if getattr(self.callback, "wants_result", False):
                answer = self.callback(self.intermediate_result(x, f, gnorm))
            else:
                answer = self.callback(x, f, gnorm)
        except StopIteration:
            self.callback_detail = f"the callback raised StopIteration at iteration {self.nit}"
            return True
        if answer is True:
            self.callback_detail = f"the callback returned True at iteration {self.nit}"
            return True
        return False

    def intermediate_result(self, x, f: float, gnorm: float) -> OptimizeResult:
        """The iterate so far as a result record (scipy's ``intermediate_result``): ``x``,
        ``fun``, ``grad_norm``, the counts; ``status`` -1 and ``success`` False (not finished)."""
        obj = self.obj
        return OptimizeResult(
            x=x.clone(), fun=float(f), jac=None, grad_norm=gnorm, nit=self.nit, nfev=obj.nfev,
            njev=obj.njev, nhev=obj.nhev, num_matvecs=obj.num_matvecs, success=False, status=-1,
            message=f"in progress: iteration {self.nit}", method=self.method,
            wall_time=time.perf_counter() - self.t0, history=self.history,
        )

    def smallest_eigenvalue(self, x: torch.Tensor) -> tuple[float, float, str]:
        """``(lambda_min, scale, how)`` of the Hessian at ``x``: dense ``eigvalsh`` for ``n <= 500``
        (``scale = max |lambda|``), else Lanczos (:func:`hesse.spectrum.eigsh`,
        ``which="smallest"``; ``scale = max(1, |lambda_min|)``)."""
        n = x.numel()
        if n <= DENSE_CURVATURE_MAX_N:
            H = self.obj.hessian(x)
            lam = torch.linalg.eigvalsh(H)
            return float(lam[0]), float(lam.abs().max()), "dense eigvalsh"
        op = HessianOperator.from_function(self.obj.flat, x.detach())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = eigsh(op, k=1, which="smallest", tol=CURVATURE_LANCZOS_TOL,
                        max_matvecs=CURVATURE_LANCZOS_MAX_MATVECS)
        self.obj.num_matvecs += op.num_matvecs
        lam = float(res.values[0])
        how = "Lanczos" + ("" if bool(res.converged.all()) else " (not fully converged)")
        return lam, max(abs(lam), 1.0), how

    def check_gradient(self, x: torch.Tensor, f: float, g: torch.Tensor, gnorm: float, status: int,
                       detail: str) -> tuple[int, str]:
        """``(GRADIENT_MISMATCH, why)`` when :func:`gradient_mismatch` finds that f changes at
        ``x`` where its gradient says it does not; else ``(status, detail)`` unchanged."""
        obj = self.obj

        def values(Z: torch.Tensor) -> torch.Tensor:
            return torch.tensor([obj.value(z) for z in Z], dtype=torch.float64)

        X, G = x.detach().reshape(1, -1), g.detach().reshape(1, -1).to(x.dtype)
        F = torch.tensor([float(f)], dtype=x.dtype, device=x.device)
        failed, D, gv, _ = gradient_mismatch(values, X, G, F, self.gtol)
        if bool(failed[0]):
            return GRADIENT_MISMATCH, gradient_mismatch_detail(float(D[0]), float(gv[0]), gnorm)
        return status, detail

    def finish(self, x, f: float, g, status: int, detail: str = "") -> OptimizeResult:
        self.bar.close()
        gnorm = float(g.norm()) if isinstance(g, torch.Tensor) else float(g)
        min_eig, how = self.min_eigenvalue, "not checked"
        if min_eig is not None:
            how = "method's Hessian"
        success = False
        if status == CONVERGED and isinstance(g, torch.Tensor) and finite(x):
            status, detail = self.check_gradient(x, f, g, gnorm, status, detail)
        if status == CONVERGED:
            if min_eig is None and self.check_curvature and finite(x):
                min_eig, scale, how = self.smallest_eigenvalue(x)
            else:
                scale = max(1.0, abs(min_eig)) if min_eig is not None else 1.0
            if min_eig is not None and min_eig < -self.curvature_tol * max(1.0, scale):
                status = SADDLE
                detail = (
                    f"||g||={gnorm:.2e} <= gtol but the smallest Hessian eigenvalue is {min_eig:.4g} < 0: "
                    "this is a saddle point or maximum, not a minimum. Try method='saddle-free-newton', "
                    "'trust-exact' or 'trust-ncg', or restart from a perturbed point."
                )
            else:
                success = True
                if not detail:
                    detail = f"||g||={gnorm:.2e} <= gtol={self.gtol:g}" + (
                        f"; curvature not negative (smallest eigenvalue {min_eig:.4g}, {how})"
                        if min_eig is not None else "; curvature not checked (check_curvature=False)"
                    )
        elif status == MAX_ITER and not detail:
            detail = f"||g||={gnorm:.2e} > gtol after {self.nit} iterations; raise max_iter or try a second-order method"
            if float(f) < self.f0 and self.x_norm > RUNAWAY_HINT_X * (1.0 + self.x0_norm):
                detail += (
                    f". f fell from {self.f0:.4g} to {float(f):.4g} while ||x|| grew from "
                    f"{self.x0_norm:.3g} to {self.x_norm:.3g}: f may be unbounded below"
                )
        elif status == UNBOUNDED and not detail:
            detail = (
                f"f = {float(f):.4g} at ||x|| = {self.x_norm:.3g} (from f(x0) = {self.f0:.4g}, "
                f"||x0|| = {self.x0_norm:.3g}): f kept decreasing as x ran away. Check the sign of f "
                "(to maximize g, minimize -g), add a regularizer or penalty, or rescale x if the "
                "minimizer really lies that far away"
            )
        elif status == MAX_TIME and not detail:
            detail = f"||g||={gnorm:.2e} > gtol when max_time={self.max_time}s ran out"
        elif status == STALLED and not detail:
            detail = f"ftol/xtol test met with ||g||={gnorm:.2e} > gtol={self.gtol:g}; not a verified minimum"
        elif status == CALLBACK and not detail:
            detail = f"{self.callback_detail}; x is that iterate (||g||={gnorm:.2e})"
        elif status == NONFINITE and not detail:
            detail = "f returned NaN/Inf even after shrinking the step; x is the last finite iterate"
        message = STATUS_NAMES[status] + (f": {detail}" if detail else "")
        obj = self.obj
        return OptimizeResult(
            x=x.detach().reshape(obj.shape),
            fun=float(f),
            grad_norm=gnorm,
            nit=self.nit,
            nfev=obj.nfev,
            njev=obj.njev,
            nhev=obj.nhev,
            num_matvecs=obj.num_matvecs,
            jac=g.detach().reshape(obj.shape) if isinstance(g, torch.Tensor) else None,
            hess=self.hessian,
            hess_inv=self.hess_inv,
            success=success,
            status=status,
            message=message,
            method=self.method,
            min_eigenvalue=min_eig,
            curvature_check=how,
            wall_time=time.perf_counter() - self.t0,
            history=self.history,
        )
