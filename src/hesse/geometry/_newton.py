"""Batched damped Newton iteration on ∇f = 0 (all critical points: minima, saddles, maxima).

Step: the pseudo-inverse Newton step s = -H⁺ g computed from the eigendecomposition of H
(eigenvalues with |λ| <= n·eps·max|λ| are dropped), so singular Hessians at degenerate critical
points give the minimum-norm step and Newton keeps converging (linearly) to them. Damping:
backtracking on the merit function ‖∇f‖² with α ∈ {1, 1/2, ..., 2⁻¹²} (Nocedal & Wright 2006,
sec. 11.2, "merit functions"), steps capped at ``max_step``. Every start runs in one
``torch.func.vmap`` batch; cost per iteration: one batched gradient+Hessian and 13 batched
gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.func import grad, hessian, vmap

from hesse._progress import Progress

ALPHAS = tuple(2.0 ** -k for k in range(13))


def batched_newton(f: Callable[[torch.Tensor], torch.Tensor], X0: torch.Tensor, *, max_iter: int = 100,
                   max_step: float = float("inf"), progress: bool = False,
                   vectorized: bool = True) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Run damped pseudo-inverse Newton from every row of ``X0`` (shape (B, n)).

    Returns (X, gradient norms, iterations run). Stops early when no row moves by more than
    1e-15·(1 + ‖x‖) in an iteration. ``vectorized=False`` loops over rows instead of ``vmap``
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
    eps = torch.finfo(X.dtype).eps
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
            lam, Q = torch.linalg.eigh(H)
            cut = n * eps * lam.abs().amax(dim=1, keepdim=True)
            inv = torch.where(lam.abs() > cut, 1.0 / torch.where(lam == 0, torch.ones_like(lam), lam),
                              torch.zeros_like(lam))
            S = -(Q @ ((inv * (Q.transpose(1, 2) @ Gs[:, :, None])[..., 0])[:, :, None]))[..., 0]
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
    return X, G.norm(dim=1), iterations
