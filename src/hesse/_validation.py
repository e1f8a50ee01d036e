"""Input checks at the public boundary: turn user input into tensors or say what is wrong.

Inner code trusts what passes through here (STYLE: errors at the boundary, in the user's words).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

DEFAULT_DTYPE = torch.float64


def as_point(x: Any, name: str = "x", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Convert ``x`` to a floating-point tensor (float64 for lists, scalars and NumPy arrays).

    Tensors keep their dtype and device. Integer and complex tensors or arrays are refused:
    a Hessian needs real floating-point input.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.kind in "iub":
            raise TypeError(
                f"{name} is a NumPy array of integer dtype {x.dtype}; derivatives need floating "
                f"point. Pass {name}.astype(float)."
            )
        if x.dtype.kind == "c":
            raise TypeError(f"{name} is complex ({x.dtype}); hesse works with real inputs only.")
        if x.dtype.kind != "f":
            raise TypeError(f"{name} has NumPy dtype {x.dtype}; expected a real floating array.")
        t = torch.from_numpy(np.ascontiguousarray(x)).to(dtype or DEFAULT_DTYPE)
    elif isinstance(x, (list, tuple)) or isinstance(x, numbers.Real):
        try:
            arr = np.asarray(x, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(
                f"{name} must be a tensor, a NumPy array or a (nested) list of real numbers; "
                f"could not convert {type(x).__name__}: {err}"
            ) from None
        t = torch.from_numpy(arr).to(dtype or DEFAULT_DTYPE)
    elif isinstance(x, numbers.Complex):
        raise TypeError(f"{name} is complex ({x!r}); hesse works with real inputs only.")
    else:
        raise TypeError(
            f"{name} must be a torch.Tensor, a NumPy array, a list or a number; "
            f"got {type(x).__name__}."
        )
    if t.is_complex():
        raise TypeError(f"{name} is complex ({t.dtype}); hesse works with real inputs only.")
    if not t.is_floating_point():
        raise TypeError(
            f"{name} has dtype {t.dtype}; derivatives need floating point. "
            f"Pass {name}.double() (or .float())."
        )
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t.detach()


def check_scalar_output(value: Any, fname: str = "f") -> torch.Tensor:
    """Check that a function returned a real scalar tensor; return it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"{fname}(x) must return a scalar torch.Tensor, got {type(value).__name__}. "
            f"Write {fname} with torch operations (torch.sin, not math.sin) so it can be "
            f"differentiated."
        )
    if value.numel() != 1 or value.ndim > 1:
        raise ValueError(
            f"{fname}(x) must return a scalar, got a tensor of shape {tuple(value.shape)}. "
            f"Reduce it (e.g. .sum() or .mean()), or use hesse.jacobian for vector-valued "
            f"functions."
        )
    if not value.is_floating_point():
        raise TypeError(f"{fname}(x) returned dtype {value.dtype}; expected floating point.")
    return value.reshape(())


def check_finite(t: torch.Tensor, what: str) -> None:
    """Raise a ValueError naming ``what`` when ``t`` holds NaN or Inf."""
    if not bool(torch.isfinite(t).all()):
        bad = "NaN" if bool(torch.isnan(t).any()) else "Inf"
        raise ValueError(f"{what} is not finite (contains {bad}).")


def check_callable(f: Any, name: str = "f") -> Callable:
    if not callable(f):
        raise TypeError(f"{name} must be callable (a function of one tensor), got {type(f).__name__}.")
    return f


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}.")
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    return v


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value
