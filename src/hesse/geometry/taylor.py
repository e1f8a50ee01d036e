"""First- and second-order Taylor models of f at x₀, with their error against f.

m(x₀ + v) = f(x₀) + ∇f(x₀)ᵀv [+ ½ vᵀ∇²f(x₀)v]   (Taylor's theorem; Nocedal & Wright 2006, Thm 2.1)

The second-order model is exact on quadratics and its error is O(‖v‖³) for C³ functions (O(‖v‖²)
for the first-order model); :meth:`TaylorModel.error_slope` measures that order as the slope of
log error against log ‖v‖. Cost: one gradient and, for order 2, one dense Hessian (n HVPs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from hesse._autodiff import gradient, hessian
from hesse._result import Result
from hesse._validation import as_point, check_callable, check_scalar_output

__all__ = ["TaylorErrorReport", "TaylorModel", "taylor"]

ROUNDING_ULPS = 100
"""An error below ROUNDING_ULPS·eps·max(1, |f(x₀)|, ‖∇f‖·r) is rounding in evaluating f and the
model (a few dozen operations, each off by eps relative to the largest term), not a Taylor
remainder; such errors are left out of the slope fit."""

DEFAULT_RADII = (-3.0, -1.5, 6)
"""log10 of the smallest and largest radius, and their number: small enough for the leading
remainder term to dominate, large enough for it to stay above rounding."""


@dataclass(repr=False)
class TaylorErrorReport(Result):
    """Errors |f(x₀ + r d) - m(x₀ + r d)| at radii r along the unit direction d, and the fitted
    log-log slope (≈ order + 1 for a smooth f; ``exact`` when every error is at rounding level)."""

    radii: np.ndarray
    errors: np.ndarray
    slope: float
    exact: bool
    direction: torch.Tensor


@dataclass
class TaylorModel:
    """``model(x)`` evaluates the Taylor model at x (shape of x₀, or a batch (..., *x₀.shape)).
    ``gradient`` and ``hessian`` (None for order 1) are those of f at x₀; ``error(x)`` is
    |f(x) - model(x)|."""

    f: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    x0: torch.Tensor
    order: int
    value: float
    gradient: torch.Tensor
    hessian: torch.Tensor | None = field(repr=False)

    def __call__(self, x) -> torch.Tensor:
        x = as_point(x, "x", dtype=self.x0.dtype)
        k = self.x0.ndim
        if k and (x.ndim < k or tuple(x.shape[x.ndim - k:]) != tuple(self.x0.shape)):
            raise ValueError(f"x must have shape {tuple(self.x0.shape)} (or a batch of it), got {tuple(x.shape)}.")
        n = self.x0.numel()
        v = (x - self.x0).reshape(-1, n)
        out = self.value + v @ self.gradient.reshape(-1)
        if self.order == 2:
            out = out + 0.5 * ((v @ self.hessian) * v).sum(-1)
        return out.reshape(x.shape[: x.ndim - k])

    def error(self, x) -> torch.Tensor:
        """|f(x) - model(x)| at one point x (shape of x₀)."""
        x = as_point(x, "x", dtype=self.x0.dtype)
        return (self.f(x) - self(x)).abs().detach()

    def error_slope(self, direction=None, radii: Sequence[float] | None = None, seed: int = 0) -> TaylorErrorReport:
        """Error along ``direction`` (default: a random unit vector) at ``radii`` (default
        logspace(-3, -1.5, 6)); the slope of log error vs log r is the observed order (3 for
        order 2, 2 for order 1 when the next term does not vanish)."""
        n = self.x0.numel()
        if direction is None:
            gen = torch.Generator().manual_seed(seed)
            d = torch.randn(n, generator=gen, dtype=torch.float64).to(self.x0.dtype)
        else:
            d = as_point(direction, "direction", dtype=self.x0.dtype).reshape(-1)
            if d.numel() != n:
                raise ValueError(f"direction must have {n} entries, got {d.numel()}.")
        if float(d.norm()) == 0:
            raise ValueError("direction must be nonzero.")
        d = d / d.norm()
        r = np.asarray(radii if radii is not None else np.logspace(*DEFAULT_RADII), dtype=float)
        if r.ndim != 1 or len(r) < 2 or (r <= 0).any():
            raise ValueError(f"radii must be at least two positive numbers, got {radii!r}.")
        errs = np.array([float(self.error(self.x0 + float(ri) * d.reshape(self.x0.shape))) for ri in r])
        eps = torch.finfo(self.x0.dtype).eps
        floor = ROUNDING_ULPS * eps * max(1.0, abs(self.value), float(self.gradient.norm()) * float(r.max()))
        exact = bool((errs <= floor).all())
        if exact:
            slope = math.nan
        else:
            keep = errs > floor
            slope = float(np.polyfit(np.log(r[keep]), np.log(errs[keep]), 1)[0]) if keep.sum() >= 2 else math.nan
        return TaylorErrorReport(radii=r, errors=errs, slope=slope, exact=exact, direction=d)

    def __repr__(self) -> str:
        return (f"TaylorModel(order={self.order}, x0={self.x0.tolist()}, value={self.value:.6g}, "
                f"gradient={[round(float(a), 6) for a in self.gradient.reshape(-1)[:6]]})")


def taylor(f: Callable[[torch.Tensor], torch.Tensor], x0, order: int = 2) -> TaylorModel:
    """The ``order`` (1 or 2) Taylor model of ``f`` at ``x0`` (module docstring).

    Parameters
    ----------
    f
        function of one tensor returning a scalar tensor, written with torch operations.
    x0
        the expansion point, a tensor of any shape.
    order
        1 (``f(x0) + g·d``) or 2 (``+ ½ dᵀ H d``, the default).
    """
    check_callable(f, "f")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}.")
    x0 = as_point(x0, "x0")
    value = float(check_scalar_output(f(x0)).detach())
    g = gradient(f, x0).detach()
    H = hessian(f, x0).detach().reshape(x0.numel(), x0.numel()) if order == 2 else None
    return TaylorModel(f=f, x0=x0, order=order, value=value, gradient=g, hessian=H)
