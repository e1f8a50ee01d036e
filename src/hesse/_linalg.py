"""The Newton-step kernels shared by :mod:`hesse.optimize` and :mod:`hesse.geometry`.

A (modified) Newton step solves ``M p = -g`` where ``M`` is the Hessian ``H`` or a positive
definite modification of it (Nocedal & Wright 2006, Sec. 3.4). Two routes:

* **spectral**: with ``H = Q diag(lambda) Q^T``, ``p = -Q diag(1/mu) Q^T g`` where ``mu`` are
  the eigenvalues after :func:`modify_eigenvalues` (kept, clamped, shifted, taken in absolute
  value, or dropped for a pseudo-inverse step). Batched over any leading dimensions: ``lam``
  ``(..., n)``, ``Q`` ``(..., n, n)``, ``g`` ``(..., n)``.
* **Cholesky**: :func:`shifted_cholesky_solve`, the Cholesky factorization with an added multiple
  of the identity (N&W Alg. 3.3), for one point; and :func:`newton_solve`, the plain LU solve.

Cost: one ``O(n^3)`` factorization per point; the spectral step itself is two matrix-vector
products.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["modify_eigenvalues", "newton_solve", "shifted_cholesky_solve", "spectral_step"]

Modification = Literal["keep", "clamp", "shift", "absolute", "pseudo-inverse"]

# N&W Alg. 3.3 starts the shift at beta = 1e-3 * ||H|| (the factor N&W suggest) ...
CHOLESKY_SHIFT_FRACTION = 1e-3
# ... and doubles it until the factorization succeeds; 100 doublings take beta past any finite
# ||H|| (2^100 > 1e30), so the loop ends with a factorization or an H that is not finite.
CHOLESKY_MAX_DOUBLINGS = 100


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


def newton_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """The pure Newton step ``p = -H^{-1} g`` by LU; None when ``H`` is singular or the step is
    not finite."""
    try:
        p = torch.linalg.solve(H, -g)
    except RuntimeError:
        return None
    return p if bool(torch.isfinite(p).all()) else None


def shifted_cholesky_solve(H: torch.Tensor, g: torch.Tensor) -> torch.Tensor | None:
    """``p = -(H + tau I)^{-1} g`` with the smallest ``tau`` of the sequence of N&W Alg. 3.3
    (Cholesky with added multiple of the identity) for which the Cholesky factorization succeeds:
    ``tau_0 = 0`` if ``min diag(H) > 0`` else ``beta - min diag(H)``, then doubling, with
    ``beta = 1e-3 max(1, max |H_ij|)``. None when no shift works (``H`` not finite)."""
    n = H.shape[0]
    eye = torch.eye(n, dtype=H.dtype, device=H.device)
    beta = CHOLESKY_SHIFT_FRACTION * max(1.0, float(H.abs().max()))
    dmin = float(torch.diagonal(H).min())
    tau = 0.0 if dmin > 0 else -dmin + beta
    for _ in range(CHOLESKY_MAX_DOUBLINGS):
        L, info = torch.linalg.cholesky_ex(H + tau * eye)
        if int(info) == 0:
            return -torch.cholesky_solve(g.unsqueeze(1), L).squeeze(1)
        tau = max(2.0 * tau, beta)
    return None
