"""Operator algebra: ``A + sigma I`` (damping), ``alpha A``, ``A + B``, and dense matrices."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hesse._validation import as_point, check_finite

from .base import CurvatureOperator, _finite_scalar


def _combine_psd(*tags: bool | None) -> bool | None:
    return True if all(t is True for t in tags) else None


class ShiftedOperator(CurvatureOperator):
    """``A + sigma I``: Tikhonov damping / Levenberg-Marquardt shift. Eigenvalues move by sigma."""

    def __init__(self, op: CurvatureOperator, sigma: float):
        sigma = _finite_scalar(sigma, "sigma")
        psd = True if (op.is_psd and sigma >= 0) else None
        super().__init__(op.shape[0], op.dtype, op.device, psd)
        self.op, self.sigma = op, float(sigma)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.op.matmat(V) + self.sigma * V


class ScaledOperator(CurvatureOperator):
    """``alpha A``."""

    def __init__(self, op: CurvatureOperator, alpha: float):
        alpha = _finite_scalar(alpha, "alpha")
        psd = op.is_psd if alpha > 0 else (None if alpha < 0 else True)
        super().__init__(op.shape[0], op.dtype, op.device, psd)
        self.op, self.alpha = op, float(alpha)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.alpha * self.op.matmat(V)


class SumOperator(CurvatureOperator):
    """``A + B`` for operators of equal shape (B is cast to A's dtype and device)."""

    def __init__(self, a: CurvatureOperator, b: CurvatureOperator):
        if a.shape != b.shape:
            raise ValueError(f"cannot add operators of shapes {a.shape} and {b.shape}.")
        super().__init__(a.shape[0], a.dtype, a.device, _combine_psd(a.is_psd, b.is_psd))
        self.a, self.b = a, b

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.a.matmat(V) + self.b.matmat(V).to(V)


class DenseOperator(CurvatureOperator):
    """A symmetric matrix held densely, with the operator interface.

    Parameters
    ----------
    matrix
        tensor or array of shape (n, n), real, finite and symmetric (checked to
        ``symmetry_rtol`` relative to its largest entry; pass ``(A + A.T) / 2`` otherwise).
    is_psd
        optional structure tag: ``True`` declares the matrix positive semidefinite (solvers that
        need it, e.g. conjugate gradients, then accept it), ``None`` unknown.
    symmetry_rtol
        tolerance of the symmetry check, relative to the largest entry (default 1e-10).
    """

    def __init__(self, matrix: Any, is_psd: bool | None = None, symmetry_rtol: float = 1e-10):
        A = as_point(matrix, "matrix")
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"matrix must be square (n, n), got shape {tuple(A.shape)}.")
        check_finite(A, "matrix")
        scale = float(A.abs().max()) if A.numel() else 0.0
        asym = float((A - A.T).abs().max()) if A.numel() else 0.0
        if asym > symmetry_rtol * max(scale, np.finfo(float).tiny):
            raise ValueError(
                f"matrix is not symmetric: max |A - A^T| = {asym:.3e} (largest entry {scale:.3e}). "
                f"Curvature operators are symmetric; pass (A + A.T) / 2 if that is what you mean."
            )
        super().__init__(A.shape[0], A.dtype, A.device, is_psd)
        self.matrix = A

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.matrix @ V

    def to_dense(self, max_memory: int | None = None, chunk_size: int | None = None,
                 progress: bool = False) -> torch.Tensor:
        return self.matrix.clone()


class DiagonalCongruence(CurvatureOperator):
    """``D^{1/2} A D^{1/2}`` for a symmetric operator ``A`` and a nonnegative vector ``d``.

    Congruence keeps symmetry and the inertia (signs) of ``A`` (Sylvester's law of inertia; Horn &
    Johnson 2013, Thm. 4.5.8); with ``d = 1/p`` its eigenvalues are those of ``P⁻¹A``
    (``P = diag(p)``), since ``P^{-1/2} A P^{-1/2}`` and ``P⁻¹A`` are similar. One product of ``A``
    per column.
    """

    def __init__(self, op: CurvatureOperator, d: torch.Tensor):
        d = torch.as_tensor(d, dtype=op.dtype, device=op.device).reshape(-1)
        if d.numel() != op.shape[0]:
            raise ValueError(f"d must have {op.shape[0]} entries (one per parameter), got {d.numel()}.")
        if not torch.isfinite(d).all() or bool((d < 0).any()):
            raise ValueError("d must be finite and nonnegative (a diagonal scaling).")
        self.base = op
        self.sqrt_d = d.sqrt()
        super().__init__(op.shape[0], op.dtype, op.device, op.is_psd)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        s = self.sqrt_d[:, None]
        return s * self.base.matmat(s * V)
