"""Batched damped Newton iteration on ∇f = 0 (all critical points: minima, saddles, maxima).

Step: the pseudo-inverse Newton step s = -H⁺ g computed from the eigendecomposition of H
(eigenvalues with |λ| <= n·eps·max|λ| are dropped), so singular Hessians at degenerate critical
points give the minimum-norm step and Newton keeps converging (linearly) to them. Damping:
backtracking on the merit function ‖∇f‖² with α ∈ {1, 1/2, ..., 2⁻¹²} (Nocedal & Wright 2006,
sec. 11.2, "merit functions"), steps capped at ``max_step``. Every start runs in one
``torch.func.vmap`` batch; cost per iteration: one batched gradient+Hessian and 13 batched
gradients.

Convergence is judged by the length of the Newton step, not by ‖∇f‖ alone
(:func:`newton_step_lengths`): ‖∇f‖ depends on the scale of f (x**-1000 has ‖∇f‖ ≈ 6e-19 at
x = -1.05, far from any critical point), while the Newton step ‖H⁺g‖ estimates the distance to
the nearest critical point and is invariant under f -> c·f (Nocedal & Wright 2006, sec. 11.1;
Dennis & Schnabel 1996, sec. 7.2, "scale-independent stopping tests").
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch.func import grad, hessian, vmap

from hesse._linalg import newton_direction
from hesse._progress import Progress

ALPHAS = tuple(2.0 ** -k for k in range(13))


def batched_newton(f: Callable[[torch.Tensor], torch.Tensor], X0: torch.Tensor, *, max_iter: int = 100,
                   max_step: float = float("inf"), progress: bool = False,
                   vectorized: bool = True, deadline: float | None = None,
                   max_distance: float = float("inf")) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run damped pseudo-inverse Newton from every row of ``X0`` (shape (B, n)).

    Returns (X, gradient norms, iterations run). Stops early when no row moves by more than
    1e-15·(1 + ‖x‖) in an iteration, when every row is farther than ``max_distance`` from its
    start (a caller polishing a point gives up there), or when ``time.monotonic()`` passes
    ``deadline`` (the iterates so far are returned). ``vectorized=False`` loops over rows instead of ``vmap``
    (for functions with data-dependent Python control flow).
    """
    if vectorized:
        g_fn, h_fn = vmap(grad(f)), vmap(hessian(f))
    else:
        def g_fn(Z):
            return torch.stack([grad(f)(z) for z in Z])

        def h_fn(Z):
            return torch.stack([hessian(f)(z) for z in Z])
    X = X0.clone()
    n = X.shape[1]
    alphas = torch.tensor(ALPHAS, dtype=X.dtype, device=X.device)
    G = g_fn(X)
    iterations = 0
    with Progress(max_iter, "critical points: Newton", enabled=progress) as bar:
        for _ in range(max_iter):
            iterations += 1
            H = h_fn(X)
            H = 0.5 * (H + H.transpose(1, 2))
            bad = ~torch.isfinite(H).all(dim=(1, 2)) | ~torch.isfinite(G).all(dim=1)
            H = torch.where(bad[:, None, None], torch.eye(n, dtype=X.dtype, device=X.device), H)
            Gs = torch.where(bad[:, None], torch.zeros_like(G), G)
            # the pseudo-inverse step -H^+ g: eigenvalues below n eps max|lambda| are dropped
            S = newton_direction(H, Gs, "pseudo-inverse")
            norm = S.norm(dim=1, keepdim=True)
            S = torch.where(norm > max_step, S * (max_step / norm), S)
            # backtracking on ‖g‖²: all trial step lengths evaluated in one batch
            trial = X[:, None, :] + alphas[None, :, None] * S[:, None, :]
            Gt = g_fn(trial.reshape(-1, n)).reshape(X.shape[0], len(ALPHAS), n)
            merit = (Gt ** 2).sum(-1)
            merit = torch.where(torch.isfinite(merit), merit, torch.full_like(merit, float("inf")))
            g0 = (G ** 2).sum(-1)
            accept = merit < g0[:, None] * (1 - 1e-4 * alphas[None, :])
            first = torch.where(accept.any(1), accept.float().argmax(1), torch.full_like(g0, -1, dtype=torch.long))
            moved = first >= 0
            idx = first.clamp(min=0)
            X_new = trial[torch.arange(X.shape[0]), idx]
            G_new = Gt[torch.arange(X.shape[0]), idx]
            X = torch.where(moved[:, None] & ~bad[:, None], X_new, X)
            G = torch.where(moved[:, None] & ~bad[:, None], G_new, G)
            step = (alphas[idx] * S.norm(dim=1)) * moved
            bar.update(1, info=f"max ‖g‖={float(G.norm(dim=1).nan_to_num(float('inf')).max()):.2e}")
            if bool((step <= 1e-15 * (1 + X.norm(dim=1))).all()):
                break
            if deadline is not None and time.monotonic() > deadline:
                break
            if max_distance < float("inf") and bool(((X - X0).norm(dim=1) > max_distance).all()):
                break
    return X, G.norm(dim=1), iterations


def newton_step_lengths(G: torch.Tensor, lam: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """‖H⁻¹g‖ per row: the Newton step for ∇f = 0, an estimate of the distance to a critical point.

    ``G`` (B, n) gradients, ``lam`` (B, n) and ``Q`` (B, n, n) the Hessians' eigendecompositions.
    In the eigenbasis c = Qᵀg and the step is Σᵢ (cᵢ/λᵢ)². A component |cᵢ| <= n·eps·‖c‖ is the
    rounding of the rotation and counts as 0 (so the rounding-level gradient across a valley of
    critical points gives a short step); a resolved component along λᵢ = 0 is an infinite step
    (f = y² + 1e-20·x has no critical point). Each direction is judged on its own scale: no
    cut relative to the largest eigenvalue, which would hide x**-1000 next to y² (Dennis &
    Schnabel 1996, sec. 7.2, scale-independent stopping tests).
    """
    n = lam.shape[-1]
    eps = torch.finfo(lam.dtype).eps
    c = (Q.transpose(-1, -2) @ G[..., None])[..., 0]
    resolved = c.abs() > n * eps * c.norm(dim=-1, keepdim=True)
    safe = torch.where(lam == 0, torch.ones_like(lam), lam.abs())
    ratio = torch.where(lam == 0, torch.full_like(c, float("inf")), c.abs() / safe)
    ratio = torch.where(resolved, ratio, torch.zeros_like(c))
    return ratio.norm(dim=-1)


def step_tolerance(x: torch.Tensor) -> torch.Tensor:
    """A point is located to sqrt(eps)·max(1, ‖x‖): a Newton step shorter than that is converged."""
    eps = torch.finfo(x.dtype).eps
    return eps ** 0.5 * x.norm(dim=-1).clamp(min=1.0)


def newton_diagnostics(f: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor, *,
                       vectorized: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(values f(x), Newton step lengths, nullities) for every row of ``X``; the nullity counts
    eigenvalues with |λ| <= sqrt(eps)·max(1, max|λ|), the zero tolerance of :func:`hesse.classify`.
    Non-finite rows get step inf and nullity -1."""
    if vectorized:
        F, G, H = vmap(f)(X), vmap(grad(f))(X), vmap(hessian(f))(X)
    else:
        F = torch.stack([f(z) for z in X])
        G = torch.stack([grad(f)(z) for z in X])
        H = torch.stack([hessian(f)(z) for z in X])
    H = 0.5 * (H + H.transpose(1, 2))
    ok = torch.isfinite(H).all(dim=(1, 2)) & torch.isfinite(G).all(dim=1) & torch.isfinite(F)
    n = X.shape[1]
    H = torch.where(ok[:, None, None], H, torch.eye(n, dtype=X.dtype, device=X.device))
    lam, Q = torch.linalg.eigh(H)
    steps = newton_step_lengths(torch.where(ok[:, None], G, torch.zeros_like(G)), lam, Q)
    eps = torch.finfo(X.dtype).eps
    tol = eps ** 0.5 * lam.abs().amax(dim=1).clamp(min=1.0)
    nullity = (lam.abs() <= tol[:, None]).sum(dim=1)
    steps = torch.where(ok, steps, torch.full_like(steps, float("inf")))
    return F.detach(), steps, torch.where(ok, nullity, torch.full_like(nullity, -1))
