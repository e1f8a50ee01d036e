"""The Newton-step kernels shared by :mod:`hesse.optimize` and :mod:`hesse.geometry`.

A (modified) Newton step solves ``M p = -g`` where ``M`` is the Hessian ``H`` or a positive
definite modification of it (Nocedal & Wright 2006, Sec. 3.4). Two routes:

* **spectral**: with ``H = Q diag(lambda) Q^T``, ``p = -Q diag(1/mu) Q^T g`` where ``mu`` are
  the eigenvalues after :func:`modify_eigenvalues` (kept, clamped, shifted, taken in absolute
  value, or dropped for a pseudo-inverse step). Batched over any leading dimensions: ``lam``
  ``(..., n)``, ``Q`` ``(..., n, n)``, ``g`` ``(..., n)``.
* **Cholesky**: :func:`shifted_cholesky_solve`, the Cholesky factorization with an added multiple
  of the identity (N&W Alg. 3.3), for one point or a block of points.

:func:`newton_direction` is the one entry point of the optimizers (one point or a ``(B, n)``
block, one meaning per modification name, :data:`NEWTON_MODIFICATIONS`).

Cost: one ``O(n^3)`` factorization per point; the spectral step itself is two matrix-vector
products.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["NEWTON_MODIFICATIONS", "modify_eigenvalues", "newton_direction", "shifted_cholesky_solve",
           "spectral_step"]

Modification = Literal["keep", "clamp", "shift", "absolute", "pseudo-inverse"]

# N&W Alg. 3.3 starts the shift at beta = 1e-3 * ||H|| (the factor N&W suggest) ...
CHOLESKY_SHIFT_FRACTION = 1e-3
# ... and doubles it until the factorization succeeds; 100 doublings take beta past any finite
# ||H|| (2^100 > 1e30), so the loop ends with a factorization or an H that is not finite.
CHOLESKY_MAX_DOUBLINGS = 100
# A pure Newton direction is refused (NaN) when an eigenvalue is below this fraction of
# max(1, max |lambda|): the Hessian is singular to working precision.
SINGULAR_EIGENVALUE_FRACTION = 1e-14

NEWTON_MODIFICATIONS = ("none", "lm", "eigen", "absolute", "pseudo-inverse")
"""The names :func:`newton_direction` takes, each with one meaning (its docstring)."""


def modify_eigenvalues(lam: torch.Tensor, how: Modification, floor: torch.Tensor | float) -> torch.Tensor:
    """The eigenvalues ``mu`` that a spectral Newton step divides by (``floor`` per point,
    broadcast over the last dimension):

    * ``"keep"``: ``lambda``, with ``|lambda| <= floor`` replaced by NaN (a singular Hessian gives
      a NaN step, which the caller refuses);
    * ``"clamp"``: ``max(lambda, floor)`` (N&W eq. 3.41);
    * ``"shift"``: ``lambda + tau``, ``tau = max(0, floor - lambda_min)`` (the Levenberg-Marquardt
      shift ``H + tau I``; N&W Sec. 3.4);
    * ``"absolute"``: ``max(|lambda|, floor)`` (saddle-free Newton, Dauphin et al. 2014);
    * ``"pseudo-inverse"``: ``lambda``, with ``|lambda| <= floor`` replaced by ``inf`` so that
      their components drop out: the minimum-norm step ``-H^+ g``.
    """
    floor_t = torch.as_tensor(floor, dtype=lam.dtype, device=lam.device)
    if floor_t.dim():
        floor_t = floor_t.unsqueeze(-1)
    if how == "keep":
        return torch.where(lam.abs() > floor_t, lam, torch.full_like(lam, float("nan")))
    if how == "pseudo-inverse":
        return torch.where(lam.abs() > floor_t, lam, torch.full_like(lam, float("inf")))
    if how == "clamp":
        return torch.maximum(lam, floor_t.expand_as(lam)) if floor_t.dim() else torch.clamp(lam, min=floor)
    if how == "absolute":
        return torch.maximum(lam.abs(), floor_t.expand_as(lam)) if floor_t.dim() else torch.clamp(lam.abs(), min=floor)
    if how == "shift":
        tau = (floor_t.squeeze(-1) - lam[..., 0]).clamp_min(0.0)
        return lam + tau.unsqueeze(-1)
    raise ValueError(f"unknown eigenvalue modification {how!r}; expected one of keep, clamp, shift, "
                     "absolute, pseudo-inverse.")


def spectral_step(mu: torch.Tensor, Q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``p = -Q diag(1/mu) Q^T g`` for ``mu`` from :func:`modify_eigenvalues`; batched over
    leading dimensions. One point uses matrix-vector products, a batch batched matmuls."""
    if Q.dim() == 2:
        return -Q @ ((Q.T @ g) / mu)
    Qtg = (Q.transpose(-1, -2) @ g.unsqueeze(-1)).squeeze(-1)
    return -(Q @ (Qtg / mu).unsqueeze(-1)).squeeze(-1)


def _shifted_cholesky_block(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """:func:`shifted_cholesky_solve` on a block: ``H`` (B, n, n), ``g`` (B, n); every row has its
    own shift sequence, rows where no shift works are NaN."""
    B, n = g.shape
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    beta = CHOLESKY_SHIFT_FRACTION * H.abs().amax(dim=(1, 2)).clamp_min(1.0)
    dmin = torch.diagonal(H, dim1=1, dim2=2).amin(dim=1)
    tau = torch.where(dmin > 0, torch.zeros_like(dmin), beta - dmin)
    L = torch.zeros_like(H)
    pending = torch.isfinite(H).all(dim=(1, 2))
    done = torch.zeros_like(pending)
    for _ in range(CHOLESKY_MAX_DOUBLINGS):
        if not bool(pending.any()):
            break
        Lt, info = torch.linalg.cholesky_ex(H + tau[:, None, None] * eye)
        ok = pending & (info == 0)
        L = torch.where(ok[:, None, None], Lt, L)
        done |= ok
        pending &= ~ok
        tau = torch.where(pending, torch.maximum(2.0 * tau, beta), tau)
    L = torch.where(done[:, None, None], L, eye)
    p = -torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    return torch.where(done[:, None], p, torch.full_like(p, float("nan")))


def shifted_cholesky_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """``p = -(H + tau I)^{-1} g`` with the smallest ``tau`` of the sequence of N&W Alg. 3.3
    (Cholesky with added multiple of the identity) for which the Cholesky factorization succeeds:
    ``tau_0 = 0`` if ``min diag(H) > 0`` else ``beta - min diag(H)``, then doubling, with
    ``beta = 1e-3 max(1, max |H_ij|)``. None when no shift works (``H`` not finite)."""
    p = _shifted_cholesky_block(H.unsqueeze(0), g.unsqueeze(0))[0]
    return p if bool(torch.isfinite(p).all()) else None


def newton_direction(H: torch.Tensor, g: torch.Tensor, modification: str,
                     spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
                     damping: float = 0.0) -> torch.Tensor:
    """The (modified) Newton direction ``p = -M^{-1} g`` for one point (``H`` (n, n), ``g`` (n,))
    or a block (``H`` (B, n, n), ``g`` (B, n)); a row with no direction is NaN. With
    ``scale = max(1, max |lambda|)`` per row:

    * ``"none"``: ``M = H`` (pure Newton, N&W Sec. 3.3); NaN when an eigenvalue is below
      ``1e-14 scale`` in modulus (singular to working precision);
    * ``"lm"``: ``M = H + tau I`` by Cholesky with added multiple of the identity (N&W Alg. 3.3,
      :func:`shifted_cholesky_solve`);
    * ``"eigen"``: eigenvalues below ``delta = sqrt(eps) scale`` replaced by ``delta`` (N&W
      Sec. 3.4, eq. 3.41);
    * ``"absolute"``: ``M = |H|``, eigenvalues ``max(|lambda|, damping scale)`` (saddle-free
      Newton, Dauphin et al. 2014);
    * ``"pseudo-inverse"``: ``p = -H^+ g``, eigenvalues ``|lambda| <= n eps scale`` dropped (the
      minimum-norm step, which keeps converging to degenerate critical points).

    ``spectrum`` is ``eigh(H)`` when the caller has it already (spectral modifications reuse it).
    Cost: one ``O(n^3)`` factorization per row.
    """
    single = g.dim() == 1
    Hb, gb = (H.unsqueeze(0), g.unsqueeze(0)) if single else (H, g)
    if modification == "lm":
        p = _shifted_cholesky_block(Hb, gb)
        return p[0] if single else p
    if modification not in NEWTON_MODIFICATIONS:
        raise ValueError(f"unknown Newton modification {modification!r}; expected one of "
                         f"{', '.join(NEWTON_MODIFICATIONS)}.")
    if spectrum is not None:
        lam, Q = (spectrum[0].unsqueeze(0), spectrum[1].unsqueeze(0)) if single else spectrum
    else:
        lam, Q = torch.linalg.eigh(Hb)
    scale = lam.abs().amax(dim=-1).clamp_min(1.0)
    eps = torch.finfo(lam.dtype).eps
    if modification == "none":
        mu = modify_eigenvalues(lam, "keep", SINGULAR_EIGENVALUE_FRACTION * scale)
    elif modification == "eigen":
        mu = modify_eigenvalues(lam, "clamp", eps ** 0.5 * scale)
    elif modification == "absolute":
        mu = modify_eigenvalues(lam, "absolute", damping * scale)
    else:
        mu = modify_eigenvalues(lam, "pseudo-inverse", lam.shape[-1] * eps * lam.abs().amax(dim=-1))
    p = spectral_step(mu, Q, gb)
    return p[0] if single else p
