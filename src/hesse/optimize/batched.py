"""Batched multi-start: run ``B`` starting points together with ``vmap``ped derivatives.

``minimize(f, X0, method=..., batched=True)`` with ``X0`` of shape ``(B, n)``: every iteration
evaluates values and gradients of all rows with one ``vmap(grad_and_value(f))`` call (and, for the
Newton methods, Hessians with one ``vmap(hessian(f))``), instead of a Python loop over starts.
Each row keeps its own state (iterate, step, quasi-Newton matrix, status, counters, history) and
is frozen once it stops; frozen rows ride along in the vectorized evaluation but never change.

Methods: ``gd`` (fixed ``lr``, or ``"auto"`` = ``1/lambda_max`` per row from the dense Hessian),
``newton`` (unit steps), ``newton-damped`` (``modification="lm"``: ``H + tau I`` with
``tau = max(0, delta - lambda_min)``; ``"eigen"``: eigenvalues clamped at ``delta``), ``bfgs``.
The line search is batched Armijo backtracking (N&W Alg. 3.1, halving); BFGS skips the update in
a row where ``y^T s <= 0`` (Armijo does not guarantee the curvature condition). For ``n <= 500``
(the curvature check that decides success is a batched dense ``eigvalsh``). Returns one
:class:`OptimizeResult` per row, with counts per row.
"""

from __future__ import annotations

import math
import time

import torch
from torch.func import grad_and_value, hessian, vmap

from hesse._memory import guard_bytes
from hesse._progress import Progress
from hesse._validation import check_connected, check_finite_point

from ._core import UNBOUNDED_F, UNBOUNDED_X
from .result import (
    CONVERGED,
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

BATCHED_METHODS = ("gd", "newton", "newton-damped", "bfgs")
BATCHED_MAX_N = 500

# (B, n, n) buffers alive at the peak, for the memory guard: peak resident memory measured on
# 200 starts x 400 variables (float32, a quartic), in units of one (B, n, n) buffer. The
# vmapped Hessian (jacfwd over jacrev) alone takes about 7; Newton adds the eigenvectors and
# the scaled products (9 in all); BFGS keeps Hinv and its update's outer products (7 with the
# final curvature check, which is itself one vmapped Hessian).
BATCHED_MATRICES = {"newton": 9, "newton-damped": 9, "bfgs": 7, "gd": 7}
CURVATURE_CHECK_MATRICES = 7


def minimize_batched(f, X0: torch.Tensor, *, method: str, gtol: float, ftol: float, xtol: float,
                     max_iter: int, max_time: float | None, callback, history: bool, progress: bool,
                     check_curvature: bool, curvature_tol: float, max_memory: int | None = None,
                     **opts) -> list[OptimizeResult]:
    if method not in BATCHED_METHODS:
        raise ValueError(
            f"batched=True supports method in {BATCHED_METHODS}; got {method!r}. "
            "Loop over the starting points for the other methods."
        )
    if callback is not None:
        raise TypeError("callback is not supported with batched=True; inspect result.history instead.")
    if X0.ndim != 2 or X0.shape[0] < 1 or X0.shape[1] < 1:
        raise ValueError(
            f"with batched=True, x0 must have shape (B, n) (one starting point per row); got shape "
            f"{tuple(X0.shape)}. Use x0.reshape(B, -1) or batched=False for a single start."
        )
    B, n = X0.shape
    if n > BATCHED_MAX_N:
        raise ValueError(f"batched=True is for n <= {BATCHED_MAX_N} (dense curvature checks); got n={n}.")
    check_finite_point(X0, "x0")
    matrices = BATCHED_MATRICES[method]
    if method == "gd" and not check_curvature and opts.get("lr", "auto") != "auto":
        matrices = 0
    elif check_curvature:
        matrices = max(matrices, CURVATURE_CHECK_MATRICES)
    if matrices:
        guard_bytes(matrices * B * n * n * X0.element_size(), max_memory,
                    f"batched method={method!r} on {B} starts x {n} variables "
                    f"({matrices} buffers of {B} x {n} x {n} {X0.dtype})",
                    alternative="fewer starts per call (split x0 into chunks of rows), or "
                                "batched=False with method='lbfgs' or 'newton-cg' per start")

    def fs(z):
        out = f(z)
        if not isinstance(out, torch.Tensor) or out.numel() != 1:
            raise ValueError("f(x) must return a scalar tensor for each starting point.")
        return out.reshape(())

    # one plain-autograd evaluation at the first start: refuse an f not connected to x, whose
    # gradients vmap would report as zeros (or fail on .item() with a message about vmap)
    check_connected(fs, X0[0])

    vg = vmap(grad_and_value(fs))
    vh = vmap(hessian(fs))
    vf = vmap(fs)
    dev, dt = X0.device, X0.dtype
    t0 = time.perf_counter()

    X = X0.detach().clone()
    try:
        G, F = vg(X)
    except RuntimeError as err:
        if "vmap" not in str(err):
            raise
        first_line = str(err).strip().splitlines()[0][:160]
        raise ValueError(
            f"f cannot be evaluated for all starts at once with vmap ({first_line}). Usual causes: "
            "data-dependent control flow (if x[0] > 0: ...) or .item() inside f; write it with "
            "torch.where, or use batched=False and loop over the starts."
        ) from None
    F0, X0_norm = F.clone(), X.norm(dim=1)
    nfev = torch.ones(B, dtype=torch.long)
    ngev = torch.ones(B, dtype=torch.long)
    nhev = torch.zeros(B, dtype=torch.long)
    nit = torch.zeros(B, dtype=torch.long)
    if not bool(torch.isfinite(F).all()):
        raise ValueError("f is not finite at some starting points; start where f is defined.")
    status = torch.full((B,), -1, dtype=torch.long)
    gnorm = G.norm(dim=1)
    status[gnorm <= gtol] = CONVERGED
    hist = [OptimizeHistory(iterates_kept=history) for _ in range(B)] if history else None

    def record(rows, step):
        if hist is None:
            return
        Fc, Gc, Xc = F.cpu(), gnorm.cpu(), X.cpu()
        for b in rows:
            h = hist[b]
            h.values.append(float(Fc[b]))
            h.grad_norms.append(float(Gc[b]))
            h.step_sizes.append(float(step[b]))
            h.evaluations.append(int(nfev[b]))
            if h.iterates_kept:
                h.iterates.append(Xc[b].clone())

    record(range(B), torch.zeros(B))
    eye = torch.eye(n, dtype=dt, device=dev)
    Hinv = eye.expand(B, n, n).clone() if method == "bfgs" else None
    first_update = torch.ones(B, dtype=torch.bool, device=dev)
    lr = opts.get("lr", "auto")
    if method == "gd":
        if lr == "auto":
            lam_max = torch.linalg.eigvalsh(vh(X))[:, -1]
            nhev += 1
            if not bool((lam_max > 0).all()):
                raise ValueError("lr='auto' needs positive curvature at every start; pass a number lr=...")
            lr_t = 1.0 / lam_max
        else:
            lr_t = torch.full((B,), float(lr), dtype=dt, device=dev)
    modification = opts.get("modification", "lm")
    min_eig = torch.full((B,), math.nan, dtype=dt)

    with Progress(max_iter, f"{method} x{B}", progress) as bar:
        for _ in range(max_iter):
            active = (status < 0).to(dev)
            if not bool(active.any()):
                break
            act_cpu = active.cpu()
            if method in ("newton", "newton-damped"):
                H = vh(X)
                nhev += act_cpu.long()
                lam, Q = torch.linalg.eigh(H)
                scale = lam.abs().amax(dim=1).clamp_min(1.0)
                QtG = (Q.transpose(1, 2) @ G.unsqueeze(2)).squeeze(2)
                if method == "newton":
                    lam_used = torch.where(lam.abs() > 1e-14 * scale.unsqueeze(1), lam, torch.full_like(lam, math.nan))
                else:
                    delta = math.sqrt(torch.finfo(dt).eps) * scale
                    if modification == "eigen":
                        lam_used = torch.maximum(lam, delta.unsqueeze(1))
                    else:
                        tau = (delta - lam[:, 0]).clamp_min(0.0)
                        lam_used = lam + tau.unsqueeze(1)
                P = -(Q @ (QtG / lam_used).unsqueeze(2)).squeeze(2)
            elif method == "bfgs":
                P = -(Hinv @ G.unsqueeze(2)).squeeze(2)
            else:
                P = -lr_t.unsqueeze(1) * G
            bad_dir = ~torch.isfinite(P).all(dim=1)
            P = torch.where(bad_dir.unsqueeze(1), torch.zeros_like(P), P)
            slope = (G * P).sum(1)
            # batched step: Armijo backtracking (unit or lr step for gd/newton, with NaN shrink)
            alpha = torch.ones(B, dtype=dt, device=dev)
            if method == "bfgs":
                alpha = torch.where(first_update, (1.0 / gnorm).clamp(max=1.0), alpha)
            searching = active & ~bad_dir
            accepted = torch.zeros(B, dtype=torch.bool, device=dev)
            F_new = F.clone()
            for _ in range(60):
                if not bool(searching.any()):
                    break
                Ft = vf(X + alpha.unsqueeze(1) * P)
                nfev += searching.cpu().long()
                finite = torch.isfinite(Ft)
                if method in ("gd", "newton"):
                    ok = finite
                else:
                    ok = finite & (Ft <= F + 1e-4 * alpha * slope)
                newly = searching & ok
                F_new = torch.where(newly, Ft, F_new)
                accepted |= newly
                searching &= ~ok
                alpha = torch.where(searching, 0.5 * alpha, alpha)
            failed = active & ~accepted
            S = torch.where(accepted.unsqueeze(1), alpha.unsqueeze(1) * P, torch.zeros_like(P))
            X_new = X + S
            G_new, _ = vg(X_new)
            ngev += accepted.cpu().long()
            nfev += 0
            if method == "bfgs":
                Y = G_new - G
                ys = (Y * S).sum(1)
                upd = accepted & (ys > 1e-10 * S.norm(dim=1) * Y.norm(dim=1))
                init = upd & first_update
                gamma = torch.where(init, ys / (Y * Y).sum(1).clamp_min(1e-300), torch.ones_like(ys))
                Hc = Hinv * gamma.view(B, 1, 1)
                rho = torch.where(upd, 1.0 / ys.clamp_min(1e-300), torch.zeros_like(ys))
                HY = (Hc @ Y.unsqueeze(2)).squeeze(2)
                yHy = (Y * HY).sum(1)
                Hn = (Hc - rho.view(B, 1, 1) * (S.unsqueeze(2) * HY.unsqueeze(1) + HY.unsqueeze(2) * S.unsqueeze(1))
                      + (rho * rho * yHy + rho).view(B, 1, 1) * (S.unsqueeze(2) * S.unsqueeze(1)))
                Hinv = torch.where(upd.view(B, 1, 1), Hn, Hinv)
                first_update &= ~upd
            F_old = F
            X = torch.where(accepted.unsqueeze(1), X_new, X)
            G = torch.where(accepted.unsqueeze(1), G_new, G)
            F = torch.where(accepted, F_new, F)
            gnorm = G.norm(dim=1)
            acc_cpu = accepted.cpu()
            nit += acc_cpu.long()
            step = S.norm(dim=1)
            record([b for b in range(B) if acc_cpu[b]], step.cpu())
            st = status.clone()
            fail_cpu = failed.cpu()
            bad_cpu = bad_dir.cpu()
            for b in range(B):
                if not act_cpu[b]:
                    continue
                if fail_cpu[b]:
                    st[b] = NONFINITE if method in ("gd", "newton") and not bad_cpu[b] else STEP_FAILURE
                elif float(gnorm[b]) <= gtol:
                    st[b] = CONVERGED
                elif float(F[b]) < float(F0[b]) and (
                        float(F[b]) < -UNBOUNDED_F * max(1.0, abs(float(F0[b])))
                        or float(X[b].norm()) > UNBOUNDED_X * (1.0 + float(X0_norm[b]))):
                    st[b] = UNBOUNDED
                elif ftol > 0 and abs(float(F_old[b]) - float(F[b])) <= ftol * max(1.0, abs(float(F[b]))):
                    st[b] = STALLED
                elif xtol > 0 and float(step[b]) <= xtol * (1 + float(X[b].norm())):
                    st[b] = STALLED
                elif int(nit[b]) >= max_iter:
                    st[b] = MAX_ITER
            status = st
            bar.update(1, info=f"{int((status < 0).sum())} of {B} running")
            if max_time is not None and time.perf_counter() - t0 >= max_time:
                status[status < 0] = MAX_TIME
                break
        status[status < 0] = MAX_ITER

    # curvature check of the rows that passed the gradient test (one batched Hessian)
    conv = (status == CONVERGED)
    if check_curvature and bool(conv.any()):
        lam = torch.linalg.eigvalsh(vh(X)).cpu()
        nhev += conv.long()
        min_eig = torch.where(conv, lam[:, 0], min_eig)
        negative = lam[:, 0] < -curvature_tol * lam.abs().amax(dim=1).clamp_min(1.0)
        status[conv & negative] = SADDLE
    wall = time.perf_counter() - t0
    results = []
    Fc, Gc = F.cpu(), gnorm.cpu()
    for b in range(B):
        s = int(status[b])
        me = None if math.isnan(float(min_eig[b])) else float(min_eig[b])
        if s == CONVERGED:
            detail = f"||g||={float(Gc[b]):.2e} <= gtol" + (
                f"; smallest Hessian eigenvalue {me:.4g}" if me is not None else "; curvature not checked")
        elif s == SADDLE:
            detail = f"||g|| <= gtol but the smallest Hessian eigenvalue is {me:.4g} < 0"
        elif s == UNBOUNDED:
            detail = (f"f = {float(Fc[b]):.4g} at ||x|| = {float(X[b].norm()):.3g} (from f(x0) = "
                      f"{float(F0[b]):.4g}): f kept decreasing as x ran away. Check the sign of f, "
                      "add a regularizer or penalty, or rescale x")
        else:
            detail = f"||g||={float(Gc[b]):.2e}"
        results.append(OptimizeResult(
            x=X[b].detach().clone(), fun=float(Fc[b]), grad_norm=float(Gc[b]), nit=int(nit[b]),
            nfev=int(nfev[b]), ngev=int(ngev[b]), nhev=int(nhev[b]), nhvp=0,
            success=s == CONVERGED, status=s, message=f"{STATUS_NAMES[s]}: {detail}",
            method=f"{method} (batched)", min_eigenvalue=me,
            curvature_check="batched dense eigvalsh" if me is not None else "not checked",
            wall_time=wall, history=hist[b] if hist is not None else None,
        ))
    return results
