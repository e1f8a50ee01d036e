"""Operators with prescribed spectra, and distances between spectra, for testing spectral code.

``prescribed_spectrum(eigenvalues)`` returns ``DenseOperator(Q diag(lambda) Q^T)`` with a Haar-random
orthogonal ``Q`` (QR of a Gaussian matrix with sign fix, Mezzadri 2007), so every eigenvalue is
known exactly. Presets: ``low_rank_plus_noise`` (a few outliers over a small bulk, like trained
networks' Hessians), ``indefinite`` (a negative tail), ``decaying`` (power law).
"""

from __future__ import annotations

import numpy as np
import torch

from hesse.operators import DenseOperator

__all__ = [
    "prescribed_spectrum",
    "low_rank_plus_noise_spectrum",
    "indefinite_spectrum",
    "decaying_spectrum",
    "wasserstein1",
]


class PrescribedSpectrumOperator(DenseOperator):
    """A :class:`~hesse.operators.DenseOperator` ``Q diag(lambda) Q^T`` that carries its exact
    eigendecomposition: ``eigenvalues`` (ascending, float64) and ``eigenvectors`` (the matching
    columns of ``Q``, in the operator's dtype)."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor


def prescribed_spectrum(eigenvalues, seed: int = 0,
                        dtype: torch.dtype = torch.float64) -> PrescribedSpectrumOperator:
    """``DenseOperator(Q diag(eigenvalues) Q^T)`` with Haar-random orthogonal ``Q``.

    The operator carries ``.eigenvalues`` (sorted ascending, float64) as exact ground truth.
    """
    lam = torch.as_tensor(np.asarray(eigenvalues, dtype=np.float64))
    if lam.ndim != 1 or lam.numel() < 1:
        raise ValueError(f"eigenvalues must be a non-empty 1-D sequence, got shape {tuple(lam.shape)}.")
    if not torch.isfinite(lam).all():
        raise ValueError("eigenvalues must be finite.")
    n = lam.numel()
    g = torch.Generator().manual_seed(seed)
    G = torch.randn((n, n), generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R))[None, :]
    M = (Q * lam[None, :]) @ Q.T
    M = 0.5 * (M + M.T)
    is_psd = True if bool((lam >= 0).all()) else False
    op = PrescribedSpectrumOperator(M.to(dtype), is_psd=is_psd)
    op.eigenvalues = torch.sort(lam).values
    op.eigenvectors = Q.to(dtype)[:, torch.argsort(lam)]
    return op


def low_rank_plus_noise_spectrum(n: int = 1000, rank: int = 10, outlier_scale: float = 100.0,
                                 noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """``rank`` outliers ``outlier_scale * (1 .. rank)/rank`` over a uniform bulk in ``[0, noise]``."""
    rng = np.random.default_rng(seed)
    bulk = rng.uniform(0.0, noise, size=n - rank)
    out = outlier_scale * np.arange(1, rank + 1) / rank
    return np.concatenate([bulk, out])


def indefinite_spectrum(n: int = 1000, num_negative: int = 50, seed: int = 0) -> np.ndarray:
    """A trained-network-like spectrum with a negative tail: outliers, a bulk near 0, negatives."""
    rng = np.random.default_rng(seed)
    pos = np.abs(rng.standard_normal(n - num_negative - 5)) * 0.1
    neg = -np.abs(rng.standard_normal(num_negative)) * 0.5 - 0.01
    out = np.array([3.0, 5.0, 8.0, 13.0, 21.0])
    return np.concatenate([neg, pos, out])


def decaying_spectrum(n: int = 1000, power: float = 2.0) -> np.ndarray:
    """``lambda_i = i^(-power)``, i = 1..n."""
    return np.arange(1, n + 1, dtype=np.float64) ** (-power)


def wasserstein1(nodes, weights, eigenvalues) -> float:
    """Wasserstein-1 distance between a discrete measure (``nodes``, ``weights``; several probes may
    be concatenated, weights are normalised to sum 1) and the uniform measure on ``eigenvalues``.

    Computed as the integral of ``|F_1 - F_2|`` over the real line (exact for discrete measures).
    """
    from scipy.stats import wasserstein_distance

    x = torch.as_tensor(nodes).detach().reshape(-1).double().cpu().numpy()
    w = torch.as_tensor(weights).detach().reshape(-1).double().cpu().numpy()
    e = torch.as_tensor(eigenvalues).detach().reshape(-1).double().cpu().numpy()
    w = np.clip(w, 0.0, None)
    return float(wasserstein_distance(x, e, u_weights=w / w.sum()))
