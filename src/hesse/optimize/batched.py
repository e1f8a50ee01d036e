"""Batched multi-start: run ``B`` starting points together with ``vmap``ped derivatives.

``minimize(f, X0, method=..., batched=True)`` with ``X0`` of shape ``(B, n)``: every iteration
evaluates values and gradients of all rows with one ``vmap(grad_and_value(f))`` call (and, for the
methods that need the Hessian, Hessians with one ``vmap(hessian(f))``), instead of a Python loop
over starts. Each row keeps its own state (iterate, step, quasi-Newton matrix, status, counters,
history) and is frozen once it stops; frozen rows ride along in the vectorized evaluation but
never change.

Methods (those registered with ``batched=True``): ``gd`` (fixed ``lr``, or ``"auto"`` =
``1/lambda_max`` per row from the dense Hessian), ``newton`` (unit steps), ``newton-damped``
(``modification="lm"``: Cholesky with added multiple of the identity, N&W Alg. 3.3; ``"eigen"``:
eigenvalues clamped at ``delta``), ``bfgs``. The Newton directions are
:func:`hesse._linalg.newton_direction` and the BFGS update
:func:`hesse.optimize.quasi_newton.bfgs_update`, the kernels of the unbatched methods. The line
search is :func:`hesse.optimize.line_search.backtrack` (N&W Alg. 3.1) on the block of rows, the
one ``line_search="armijo"`` runs for one start; BFGS skips the update in a row where ``y^T s <= 0`` (Armijo does not guarantee the curvature condition). For
``n <= 500`` (the curvature check that decides success is a batched dense ``eigvalsh``). Returns
one :class:`OptimizeResult` per row, with counts per row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad_and_value, hessian, vmap

from hesse._linalg import newton_direction
from hesse._memory import guard_bytes
from hesse._progress import Progress
from hesse._validation import check_connected, check_finite_point

from ._core import UNBOUNDED_F, UNBOUNDED_X, gradient_mismatch, gradient_mismatch_detail
from .line_search import backtrack
from .quasi_newton import CURVATURE_SKIP_TOL, bfgs_update
from .result import (
    CONVERGED,
    GRADIENT_MISMATCH,
    MAX_ITER,
    MAX_TIME,
    NONFINITE,
    SADDLE,
    STALLED,
    STATUS_NAMES,
    STEP_FAILURE,
    UNBOUNDED,
    OptimizeHistory,
    OptimizeResult,
)

BATCHED_MAX_N = 500

# (B, n, n) buffers alive at the peak, for the memory guard: peak resident memory measured on
# 200 starts x 400 variables (float32, a quartic), in units of one (B, n, n) buffer. The
# vmapped Hessian (jacfwd over jacrev) alone takes about 7 (the final curvature check is one
# vmapped Hessian too).
CURVATURE_CHECK_MATRICES = 7



@dataclass
class _Rows:
    """The per-row state of a batched run (tensors of leading size B)."""

    X: torch.Tensor
    G: torch.Tensor
    F: torch.Tensor
    F0: torch.Tensor
    X0_norm: torch.Tensor
    gnorm: torch.Tensor
    status: torch.Tensor
    nit: torch.Tensor
    nfev: torch.Tensor
    njev: torch.Tensor
    nhev: torch.Tensor
    history: list[OptimizeHistory] | None

    def record(self, rows, step: torch.Tensor) -> None:
        if self.history is None:
            return
        Fc, Gc, Xc = self.F.cpu(), self.gnorm.cpu(), self.X.cpu()
        for b in rows:
            self.history[b].append(int(self.nit[b]), float(Fc[b]), float(Gc[b]), float(step[b]),
                                   int(self.nfev[b]), Xc[b])


@dataclass
class _Derivatives:
    """The vmapped value, value+gradient and Hessian of ``f`` over the rows."""

    value: Callable
    value_grad: Callable
    hessian: Callable


def minimize_batched(f, X0: torch.Tensor, *, method: str, needs: str, matrices: int, gtol: float,
                     ftol: float, xtol: float, max_iter: int, max_time: float | None, callback,
                     history: bool, progress: bool, check_curvature: bool, curvature_tol: float,
                     max_memory: int | None = None, **opts) -> list[OptimizeResult]:
    """Run ``method`` from every row of ``X0`` (``(B, n)``); ``needs`` (``"gradient"`` or
    ``"hessian"``) and ``matrices`` (``(B, n, n)`` buffers at the peak) come from the method's
    registry entry."""
    _validate(X0, callback)
    _guard_memory(X0, method, matrices, max_memory, check_curvature, opts)
    d = _derivatives(f, X0)
    t0 = time.perf_counter()
    rows = _start(d, X0, gtol, history)
    _iterate(d, rows, method, needs, opts, gtol=gtol, ftol=ftol, xtol=xtol, max_iter=max_iter,
             max_time=max_time, t0=t0, progress=progress)
    mismatch = _check_gradients(d, rows, gtol)
    min_eig = _check_curvature(d, rows, curvature_tol) if check_curvature else None
    return _results(rows, method, min_eig, time.perf_counter() - t0, mismatch)


def _validate(X0: torch.Tensor, callback) -> None:
    if callback is not None:
        raise TypeError("callback is not supported with batched=True; inspect result.history instead.")
    if X0.ndim != 2 or X0.shape[0] < 1 or X0.shape[1] < 1:
        raise ValueError(
            f"with batched=True, x0 must have shape (B, n) (one starting point per row); got shape "
            f"{tuple(X0.shape)}. Use x0.reshape(B, -1) or batched=False for a single start."
        )
    n = X0.shape[1]
    if n > BATCHED_MAX_N:
        raise ValueError(f"batched=True is for n <= {BATCHED_MAX_N} (dense curvature checks); got n={n}.")
    check_finite_point(X0, "x0")


def _guard_memory(X0: torch.Tensor, method: str, matrices: int, max_memory: int | None,
                  check_curvature: bool, opts: dict) -> None:
    B, n = X0.shape
    if method == "gd" and not check_curvature and opts.get("lr", "auto") != "auto":
        matrices = 0  # a fixed step and no final check: no Hessian is ever formed
    elif check_curvature:
        matrices = max(matrices, CURVATURE_CHECK_MATRICES)
    if matrices:
        guard_bytes(matrices * B * n * n * X0.element_size(), max_memory,
                    f"batched method={method!r} on {B} starts x {n} variables "
                    f"({matrices} buffers of {B} x {n} x {n} {X0.dtype})",
                    alternative="fewer starts per call (split x0 into chunks of rows), or "
                                "batched=False with method='lbfgs' or 'newton-cg' per start")


def _derivatives(f, X0: torch.Tensor) -> _Derivatives:
    def fs(z):
        out = f(z)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise ValueError("f(x) must return a scalar tensor for each starting point.")
        return out.reshape(())

    # one plain-autograd evaluation at the first start: refuse an f not connected to x, whose
    # gradients vmap would report as zeros (or fail on .item() with a message about vmap)
    check_connected(fs, X0[0])
    return _Derivatives(value=vmap(fs), value_grad=vmap(grad_and_value(fs)), hessian=vmap(hessian(fs)))


def _start(d: _Derivatives, X0: torch.Tensor, gtol: float, history: bool) -> _Rows:
    B = X0.shape[0]
    X = X0.detach().clone()
    try:
        G, F = d.value_grad(X)
    except RuntimeError as err:
        if "vmap" not in str(err):
            raise
        first_line = str(err).strip().splitlines()[0][:160]
        raise ValueError(
            f"f cannot be evaluated for all starts at once with vmap ({first_line}). Usual causes: "
            "data-dependent control flow (if x[0] > 0: ...) or .item() inside f; write it with "
            "torch.where, or use batched=False and loop over the starts."
        ) from None
    if not bool(torch.isfinite(F).all()):
        raise ValueError("f is not finite at some starting points; start where f is defined.")
    gnorm = G.norm(dim=1)
    status = torch.full((B,), -1, dtype=torch.long)
    status[gnorm <= gtol] = CONVERGED
    rows = _Rows(X=X, G=G, F=F, F0=F.clone(), X0_norm=X.norm(dim=1), gnorm=gnorm, status=status,
                 nit=torch.zeros(B, dtype=torch.long), nfev=torch.ones(B, dtype=torch.long),
                 njev=torch.ones(B, dtype=torch.long), nhev=torch.zeros(B, dtype=torch.long),
                 history=[OptimizeHistory(iterates_kept=history) for _ in range(B)] if history else None)
    rows.record(range(B), torch.zeros(B))
    return rows


def _auto_learning_rate(d: _Derivatives, rows: _Rows) -> torch.Tensor:
    """``1 / lambda_max`` per row from the dense Hessian at the start."""
    lam_max = torch.linalg.eigvalsh(d.hessian(rows.X))[:, -1]
    rows.nhev += 1
    if not bool((lam_max > 0).all()):
        raise ValueError("lr='auto' needs positive curvature at every start; pass a number lr=...")
    return 1.0 / lam_max


def _newton_directions(d: _Derivatives, rows: _Rows, method: str, modification: str,
                       active: torch.Tensor) -> torch.Tensor:
    """Per row ``-M^{-1} g`` with ``M`` the Hessian (``newton``) or its modification
    (``newton-damped``): :func:`hesse._linalg.newton_direction`, the direction of the unbatched
    methods, on the block of rows."""
    H = d.hessian(rows.X)
    rows.nhev += active.long()
    return newton_direction(H, rows.G, "none" if method == "newton" else modification)


def _backtrack(d: _Derivatives, rows: _Rows, P: torch.Tensor, alpha: torch.Tensor,
               searching: torch.Tensor, sufficient_decrease: bool):
    """:func:`hesse.optimize.line_search.backtrack` on the rows (the line search of the
    unbatched methods). Returns ``(accepted, alpha, F_new)``."""
    slope = (rows.G * P).sum(1)
    accepted, alpha, F_new, evaluations = backtrack(d.value, rows.X, P, rows.F, slope, alpha, searching,
                                                    sufficient_decrease=sufficient_decrease)
    rows.nfev += evaluations.cpu()
    return accepted, alpha, F_new


def _bfgs_step(Hinv: torch.Tensor, first_update: torch.Tensor, S: torch.Tensor, Y: torch.Tensor,
               accepted: torch.Tensor) -> torch.Tensor:
    """Update the rows' inverse Hessians where ``y^T s`` is safely positive; before the first
    update ``H_0`` is rescaled to ``(y^T s / y^T y) I`` (N&W eq. 6.20). ``first_update`` is
    cleared in place for the updated rows."""
    B = S.shape[0]
    ys = (Y * S).sum(1)
    upd = accepted & (ys > CURVATURE_SKIP_TOL * S.norm(dim=1) * Y.norm(dim=1))
    init = upd & first_update
    gamma = torch.where(init, ys / (Y * Y).sum(1).clamp_min(1e-300), torch.ones_like(ys))
    Hn = bfgs_update(Hinv * gamma.view(B, 1, 1), S, Y)
    first_update &= ~upd
    return torch.where(upd.view(B, 1, 1), Hn, Hinv)


def _row_status(rows: _Rows, b: int, failed: bool, bad_direction: bool, F_old: torch.Tensor,
                step: torch.Tensor, method: str, gtol: float, ftol: float, xtol: float,
                max_iter: int) -> int:
    """The status of row ``b`` after an iteration (-1: keep going); the same tests as ``Run.step``."""
    F, X = rows.F, rows.X
    if failed:
        return NONFINITE if method in ("gd", "newton") and not bad_direction else STEP_FAILURE
    if float(rows.gnorm[b]) <= gtol:
        return CONVERGED
    if float(F[b]) < float(rows.F0[b]) and (
            float(F[b]) < -UNBOUNDED_F * max(1.0, abs(float(rows.F0[b])))
            or float(X[b].norm()) > UNBOUNDED_X * (1.0 + float(rows.X0_norm[b]))):
        return UNBOUNDED
    if ftol > 0 and abs(float(F_old[b]) - float(F[b])) <= ftol * max(1.0, abs(float(F[b]))):
        return STALLED
    if xtol > 0 and float(step[b]) <= xtol * (1 + float(X[b].norm())):
        return STALLED
    if int(rows.nit[b]) >= max_iter:
        return MAX_ITER
    return int(rows.status[b])


def _iterate(d: _Derivatives, rows: _Rows, method: str, needs: str, opts: dict, *, gtol: float,
             ftol: float, xtol: float, max_iter: int, max_time: float | None, t0: float,
             progress: bool) -> None:
    B, n = rows.X.shape
    dev, dt = rows.X.device, rows.X.dtype
    Hinv = torch.eye(n, dtype=dt, device=dev).expand(B, n, n).clone() if method == "bfgs" else None
    first_update = torch.ones(B, dtype=torch.bool, device=dev)
    lr = opts.get("lr", "auto")
    if method == "gd":
        lr_t = (_auto_learning_rate(d, rows) if lr == "auto"
                else torch.full((B,), float(lr), dtype=dt, device=dev))
    with Progress(max_iter, f"{method} x{B}", progress) as bar:
        for _ in range(max_iter):
            active = (rows.status < 0).to(dev)
            if not bool(active.any()):
                break
            act_cpu = active.cpu()
            if needs == "hessian":
                P = _newton_directions(d, rows, method, opts.get("modification", "lm"), act_cpu)
            elif Hinv is not None:
                P = -(Hinv @ rows.G.unsqueeze(2)).squeeze(2)
            else:
                P = -lr_t.unsqueeze(1) * rows.G
            bad_dir = ~torch.isfinite(P).all(dim=1)
            P = torch.where(bad_dir.unsqueeze(1), torch.zeros_like(P), P)
            alpha = torch.ones(B, dtype=dt, device=dev)
            if Hinv is not None:  # before the first update the step has length at most 1
                alpha = torch.where(first_update, (1.0 / rows.gnorm).clamp(max=1.0), alpha)
            accepted, alpha, F_new = _backtrack(d, rows, P, alpha, active & ~bad_dir,
                                                sufficient_decrease=method not in ("gd", "newton"))
            failed = active & ~accepted
            S = torch.where(accepted.unsqueeze(1), alpha.unsqueeze(1) * P, torch.zeros_like(P))
            X_new = rows.X + S
            G_new, _ = d.value_grad(X_new)
            rows.njev += accepted.cpu().long()
            if Hinv is not None:
                Hinv = _bfgs_step(Hinv, first_update, S, G_new - rows.G, accepted)
            F_old = rows.F
            rows.X = torch.where(accepted.unsqueeze(1), X_new, rows.X)
            rows.G = torch.where(accepted.unsqueeze(1), G_new, rows.G)
            rows.F = torch.where(accepted, F_new, rows.F)
            rows.gnorm = rows.G.norm(dim=1)
            acc_cpu = accepted.cpu()
            rows.nit += acc_cpu.long()
            step = S.norm(dim=1)
            rows.record([b for b in range(B) if acc_cpu[b]], step.cpu())
            fail_cpu, bad_cpu = failed.cpu(), bad_dir.cpu()
            rows.status = torch.tensor(
                [_row_status(rows, b, bool(fail_cpu[b]), bool(bad_cpu[b]), F_old, step, method,
                             gtol, ftol, xtol, max_iter) if act_cpu[b] else int(rows.status[b])
                 for b in range(B)], dtype=torch.long)
            bar.update(1, info=f"{int((rows.status < 0).sum())} of {B} running")
            if max_time is not None and time.perf_counter() - t0 >= max_time:
                rows.status[rows.status < 0] = MAX_TIME
                break
        rows.status[rows.status < 0] = MAX_ITER


def _check_gradients(d: _Derivatives, rows: _Rows, gtol: float) -> dict[int, str]:
    """The rows that passed the gradient test, checked against finite differences of f
    (:func:`hesse.optimize._core.gradient_mismatch`, as the unbatched methods do); a failing row
    gets status 9. Returns the failing rows' messages."""
    conv = (rows.status == CONVERGED).to(rows.X.device)
    if not bool(conv.any()):
        return {}
    idx = conv.nonzero().squeeze(1)
    failed, D, gv, evaluations = gradient_mismatch(d.value, rows.X[idx], rows.G[idx], rows.F[idx], gtol)
    rows.nfev[idx.cpu()] += evaluations
    out = {}
    for j, b in enumerate(idx.tolist()):
        if bool(failed[j]):
            rows.status[b] = GRADIENT_MISMATCH
            out[b] = gradient_mismatch_detail(float(D[j]), float(gv[j]), float(rows.gnorm[b]))
    return out


def _check_curvature(d: _Derivatives, rows: _Rows, curvature_tol: float) -> torch.Tensor:
    """Smallest Hessian eigenvalue of the rows that passed the gradient test (one batched
    Hessian; NaN elsewhere); a negative one turns the row's status into a saddle."""
    min_eig = torch.full(rows.status.shape, math.nan, dtype=rows.X.dtype)
    conv = rows.status == CONVERGED
    if bool(conv.any()):
        lam = torch.linalg.eigvalsh(d.hessian(rows.X)).cpu()
        rows.nhev += conv.long()
        min_eig = torch.where(conv, lam[:, 0], min_eig)
        negative = lam[:, 0] < -curvature_tol * lam.abs().amax(dim=1).clamp_min(1.0)
        rows.status[conv & negative] = SADDLE
    return min_eig


def _results(rows: _Rows, method: str, min_eig: torch.Tensor | None, wall: float,
             mismatch: dict[int, str]) -> list[OptimizeResult]:
    results = []
    Fc, Gc = rows.F.cpu(), rows.gnorm.cpu()
    for b in range(rows.X.shape[0]):
        s = int(rows.status[b])
        me = None if min_eig is None or math.isnan(float(min_eig[b])) else float(min_eig[b])
        if s == CONVERGED:
            detail = f"||g||={float(Gc[b]):.2e} <= gtol" + (
                f"; smallest Hessian eigenvalue {me:.4g}" if me is not None else "; curvature not checked")
        elif s == GRADIENT_MISMATCH:
            detail = mismatch[b]
        elif s == SADDLE:
            detail = f"||g|| <= gtol but the smallest Hessian eigenvalue is {me:.4g} < 0"
        elif s == UNBOUNDED:
            detail = (f"f = {float(Fc[b]):.4g} at ||x|| = {float(rows.X[b].norm()):.3g} (from f(x0) = "
                      f"{float(rows.F0[b]):.4g}): f kept decreasing as x ran away. Check the sign of f, "
                      "add a regularizer or penalty, or rescale x")
        else:
            detail = f"||g||={float(Gc[b]):.2e}"
        results.append(OptimizeResult(
            x=rows.X[b].detach().clone(), fun=float(Fc[b]), jac=rows.G[b].detach().clone(),
            grad_norm=float(Gc[b]), nit=int(rows.nit[b]), nfev=int(rows.nfev[b]),
            njev=int(rows.njev[b]), nhev=int(rows.nhev[b]), num_matvecs=0,
            success=s == CONVERGED, status=s, message=f"{STATUS_NAMES[s]}: {detail}",
            method=f"{method} (batched)", min_eigenvalue=me,
            curvature_check="batched dense eigvalsh" if me is not None else "not checked",
            wall_time=wall, history=rows.history[b] if rows.history is not None else None,
        ))
    return results
