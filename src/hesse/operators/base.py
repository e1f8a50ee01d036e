"""One symmetric linear-operator base class for every curvature matrix in hesse.

A :class:`CurvatureOperator` ``A`` is a symmetric ``n x n`` matrix known only through products.
Subclasses implement one method, ``_matmat(V)`` for a block ``V`` of shape ``(n, k)``; the base
class supplies validation, ``matvec``/``@``, counting, dense and SciPy export, algebra
(``A + sigma``, ``alpha * A``, ``A + B``) and linear solves. Algorithms take an operator, never a
model (the design of ``scipy.sparse.linalg.LinearOperator``, curvlinops and lineax).

Every product is checked once for finiteness (``isfinite`` of the input and the output block):
a curvature that does not exist at the point (a kink such as ``|w|^1.5`` at 0) is refused with a
``ValueError`` instead of reaching Lanczos or ``eigh`` as NaN; model operators name the batch and
the parameter. Scalars in the algebra must be finite.

Structure tags: ``is_symmetric`` is always true; ``is_psd`` is ``True`` for Gauss-Newton and Fisher
matrices, ``False`` when it is known not to hold, ``None`` when unknown (a general Hessian).
Conjugate gradients (:func:`hesse.operators.conjugate_gradient`) reads ``is_psd``: for an
operator tagged ``True`` it skips the negative-curvature rule (a ``pᵀAp ≤ 0`` there is reported
as a breakdown: a null direction or rounding); otherwise it checks every ``pᵀAp``.
"""

from __future__ import annotations

import numbers
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from hesse._blocks import DEFAULT_CHUNK, apply_in_chunks, check_chunk, unit_block

from .._autodiff import _symmetrize_in_place
from .._memory import guard_dense
from .._progress import Progress
from .._validation import all_finite


class CurvatureOperator(ABC):
    """Base class of symmetric linear operators ``A: R^n -> R^n``.

    Parameters
    ----------
    n : int
        Size: the operator is ``n x n`` (``shape == (n, n)``).
    dtype, device
        of the vectors the operator multiplies and returns.
    is_psd : bool | None
        Structure tag; solvers that need positive definiteness check it.

    Attributes
    ----------
    shape : tuple[int, int]
        ``(n, n)``.
    num_matvecs : int
        Products taken so far (a ``matmat`` with ``k`` columns counts ``k``).
    """

    is_symmetric: bool = True

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device | str, is_psd: bool | None):
        self._n = int(n)
        self._dtype = dtype
        self._device = torch.device(device)
        self.is_psd = is_psd
        self.num_matvecs = 0

    # ----------------------------------------------------------------- what subclasses implement
    @abstractmethod
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Return ``A @ V`` for ``V`` of shape ``(n, k)``, dtype and device already checked."""

    # ----------------------------------------------------------------- properties
    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self._n)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    def __len__(self) -> int:
        return self._n

    def reset_counter(self) -> None:
        """Set ``num_matvecs`` back to zero."""
        self.num_matvecs = 0

    # ----------------------------------------------------------------- products
    def _as_block(self, V: Any, name: str) -> torch.Tensor:
        if isinstance(V, np.ndarray):
            V = torch.from_numpy(np.ascontiguousarray(V))
        if not isinstance(V, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or NumPy array, got {type(V).__name__}.")
        if V.is_complex() or not V.is_floating_point():
            raise TypeError(
                f"{name} has dtype {V.dtype}; this operator multiplies real floating-point vectors "
                f"({self.dtype})."
            )
        return V.to(device=self.device, dtype=self.dtype)

    def matvec(self, v: Any) -> torch.Tensor:
        """``A @ v`` for a vector ``v`` of shape ``(n,)``."""
        v = self._as_block(v, "v")
        if v.ndim != 1 or v.shape[0] != self._n:
            raise ValueError(
                f"matvec expects a vector of shape ({self._n},), got {tuple(v.shape)}. "
                f"For a block of vectors use matmat with shape ({self._n}, k)."
            )
        self._check_finite_input(v, "v")
        self.num_matvecs += 1
        return self._checked(self._matmat(v.unsqueeze(1))).squeeze(1)

    def matmat(self, V: Any) -> torch.Tensor:
        """``A @ V`` for a block ``V`` of shape ``(n, k)``, computed as one batched product."""
        V = self._as_block(V, "V")
        if V.ndim != 2 or V.shape[0] != self._n:
            raise ValueError(f"matmat expects shape ({self._n}, k), got {tuple(V.shape)}.")
        if V.shape[1] == 0:
            return V.clone()
        self._check_finite_input(V, "V")
        self.num_matvecs += V.shape[1]
        return self._checked(self._matmat(V))

    def _check_finite_input(self, V: torch.Tensor, name: str) -> None:
        if not all_finite(V):
            raise ValueError(f"{name} has {int((~torch.isfinite(V)).sum())} non-finite entries; "
                             f"an operator multiplies finite vectors only.")

    def _checked(self, out: torch.Tensor) -> torch.Tensor:
        """Refuse a non-finite product of finite vectors: one ``isfinite`` per product, so that
        no algorithm downstream (Lanczos, eigh, Hutchinson) turns it into a silent NaN."""
        if all_finite(out):
            return out
        rows = torch.nonzero(~torch.isfinite(out).reshape(out.shape[0], -1).all(dim=1)).flatten()
        shown = ", ".join(str(int(r)) for r in rows[:8]) + (" ..." if len(rows) > 8 else "")
        raise ValueError(
            f"{type(self).__name__}: the product with a finite vector is not finite (rows {shown}). "
            f"The curvature does not exist at this point (a kink or singularity such as |x|^p "
            f"with p < 2 at 0, sqrt or log at 0) or overflows its dtype ({self.dtype}); move the "
            f"point, smooth the function, or use float64.")

    def __matmul__(self, other: Any) -> torch.Tensor:
        if isinstance(other, (torch.Tensor, np.ndarray)) and other.ndim == 2:
            return self.matmat(other)
        return self.matvec(other)

    # ----------------------------------------------------------------- export
    def to_dense(self, max_memory: int | None = None, chunk_size: int | None = None,
                 progress: bool = False) -> torch.Tensor:
        """The ``n x n`` matrix, built from ``matmat`` on blocks of unit vectors, symmetrized.

        Refused (``ValueError``) when it would exceed ``max_memory`` bytes (default 4 GiB or
        ``HESSE_MAX_MEMORY``). Cost: ``n`` products, ``chunk_size`` columns at a time (default
        256: batched, and one block stays ``n x 256``); ``progress=True`` shows a bar.
        """

        n = self._n
        chunk = check_chunk(chunk_size) or self._default_chunk_size()
        guard_dense(n, self.dtype, max_memory, what="dense matrix of this operator")
        out = torch.empty((n, n), dtype=self.dtype, device=self.device)
        with Progress(n, "dense matrix", progress) as bar:
            blocks = apply_in_chunks(self, lambda a, b: unit_block(n, a, b, self.dtype, self.device),
                                     n, chunk, bar)
            for start, stop, _, AE in blocks:
                out[:, start:stop] = AE
        # (A + Aᵀ)/2 tile by tile: no second n x n matrix, so the guard above is the peak
        _symmetrize_in_place(out, chunk)
        return out

    def _default_chunk_size(self) -> int:
        return min(self._n, DEFAULT_CHUNK)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` in float64 NumPy over this operator."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x):
            x = np.asarray(x, dtype=np.float64).reshape(-1)
            return self.matvec(torch.from_numpy(x)).detach().to("cpu", torch.float64).numpy()

        def mm(X):
            X = np.asarray(X, dtype=np.float64)
            return self.matmat(torch.from_numpy(X)).detach().to("cpu", torch.float64).numpy()

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, matmat=mm, dtype=np.float64)

    # ----------------------------------------------------------------- algebra
    def __add__(self, other: Any) -> CurvatureOperator:

        if isinstance(other, CurvatureOperator):
            return SumOperator(self, other)
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return ShiftedOperator(self, _finite_scalar(other, "the shift sigma in A + sigma"))
        return NotImplemented

    __radd__ = __add__

    def __sub__(self, other: Any) -> CurvatureOperator:
        if isinstance(other, CurvatureOperator):
            return self + (-1.0) * other
        if isinstance(other, numbers.Real) and not isinstance(other, bool):
            return self + (-_finite_scalar(other, "the shift sigma in A - sigma"))
        return NotImplemented

    def __mul__(self, alpha: Any) -> CurvatureOperator:

        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            return ScaledOperator(self, _finite_scalar(alpha, "the factor alpha in alpha * A"))
        return NotImplemented

    __rmul__ = __mul__

    def __neg__(self) -> CurvatureOperator:
        return self * -1.0

    def __truediv__(self, alpha: Any) -> CurvatureOperator:
        if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
            if alpha == 0:
                raise ZeroDivisionError("cannot divide an operator by zero.")
            return self * (1.0 / _finite_scalar(alpha, "the divisor alpha in A / alpha"))
        return NotImplemented

    # ----------------------------------------------------------------- solves
    def solve(self, b: Any, method: str = "cg", tol: float = 1e-8, max_iter: int | None = None,
              x0: Any = None):
        """Solve ``A x = b``; returns a :class:`hesse.LinearSolveResult` (``x``, ``nit``,
        ``num_matvecs``, ``converged``, ``status``, ``message``, ``residual_norm``...).

        ``method="cg"`` (conjugate gradients, Hestenes & Stiefel 1952; needs ``A`` positive
        definite and stops with ``converged=False`` on negative curvature), ``"minres"``
        (symmetric indefinite, via SciPy) or ``"direct"`` (dense Cholesky/LU, guarded).
        ``converged`` means the measured residual ``‖b − A x‖ / ‖b‖`` passed the tolerance test
        (see :func:`hesse.solve`); a singular or too ill-conditioned system is not converged.
        """

        # CG with a residual tolerance; hesse.operators.conjugate_gradient takes other stopping
        # rules (negative curvature, trust region, Martens' progress test)
        return solve(self, b, method=method, tol=tol, max_iter=max_iter, x0=x0)

    def __repr__(self) -> str:
        psd = {True: ", psd", False: ", indefinite", None: ""}[self.is_psd]
        return (
            f"{type(self).__name__}(n={self._n}, dtype={self.dtype}, device={self.device}{psd}, "
            f"num_matvecs={self.num_matvecs})"
        )


def _finite_scalar(value: Any, what: str) -> float:
    """``float(value)``, refused when it is NaN or infinite (an operator of NaNs is no operator)."""
    x = float(value)
    if not np.isfinite(x):
        raise ValueError(f"{what} must be a finite real number, got {value!r}.")
    return x


# The algebra and `solve` above return operators and solvers defined in modules that themselves
# build on CurvatureOperator; importing them once the class exists breaks the cycle.
from .composition import ScaledOperator, ShiftedOperator, SumOperator  # noqa: E402
from .solve import solve  # noqa: E402
