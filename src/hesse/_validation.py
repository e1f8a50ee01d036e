"""Input checks at the public boundary: turn user input into tensors or say what is wrong.

Inner code trusts what passes through here (STYLE: errors at the boundary, in the user's words).
"""

from __future__ import annotations

import difflib
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

DEFAULT_DTYPE = torch.float64


LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16)
"""Formats the optimizers do not run in: LAPACK has no half-precision eigh, Cholesky or solve,
and a gradient test at gtol = 1e-5 is below their resolution (eps 1e-3 and 8e-3)."""


def working_point(x0: torch.Tensor, name: str = "x0") -> torch.Tensor:
    """``x0`` itself, or, for float16 / bfloat16, a float32 copy with a ``UserWarning`` saying
    that the computation (and its result) is in float32."""
    if x0.dtype not in LOW_PRECISION_DTYPES:
        return x0
    warnings.warn(
        f"{name} is {x0.dtype}: hesse computes in torch.float32 (no half-precision "
        f"eigh/Cholesky/solve, and gtol lies below the format's resolution); f receives float32 "
        f"tensors and the result is float32. Pass {name}.float() to silence this warning.",
        UserWarning, stacklevel=3)
    return x0.to(torch.float32)


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


MAX_POSITIONS_SHOWN = 8
"""How many bad positions a non-finite-input message lists before it says "and N more"."""


def check_finite_point(t: torch.Tensor, name: str = "x") -> None:
    """Refuse a point holding NaN or Inf, naming the argument and the positions.

    Derivatives at a non-finite point are meaningless, and NaN does not always propagate (a
    quadratic's Hessian is the same everywhere), so such a point would otherwise give a finite,
    wrong-looking answer.
    """
    bad = ~torch.isfinite(t)
    if not bool(bad.any()):
        return
    idx = bad.nonzero().cpu()
    count = idx.shape[0]
    shown = []
    for row in idx[:MAX_POSITIONS_SHOWN].tolist():
        value = float(t[tuple(row)])
        where = str(row[0]) if len(row) == 1 else str(tuple(row))
        shown.append(f"{name}[{where}] = {value}" if row else f"{name} = {value}")
    more = f" and {count - MAX_POSITIONS_SHOWN} more" if count > MAX_POSITIONS_SHOWN else ""
    raise ValueError(
        f"{name} is not finite at {count} position(s): {', '.join(shown)}{more}. "
        f"Derivatives are only defined at finite points; pass a finite {name}."
    )


def check_nonempty(t: torch.Tensor, name: str = "x") -> None:
    """Refuse a point with no entries (shape with a zero): there is nothing to differentiate."""
    if t.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(t.shape)}); give at least one variable."
        )


def check_point(x: Any, name: str = "x", dtype: torch.dtype | None = None) -> torch.Tensor:
    """:func:`as_point`, then refuse empty and non-finite points (every public entry that takes
    a point goes through here)."""
    t = as_point(x, name, dtype)
    check_nonempty(t, name)
    check_finite_point(t, name)
    return t


def disconnected_error(fname: str = "f", argument: str = "x") -> ValueError:
    """The error for an output that autograd cannot connect to the input."""
    return ValueError(
        f"{fname}({argument}) does not depend on {argument} through torch operations: its output "
        f"is not connected to {argument} in the autograd graph, so every derivative would be "
        f"reported as zero. Usual causes: .item(), float(...) or .tolist() on a tensor; "
        f"torch.tensor(...) or torch.as_tensor(...) built from computed numbers; NumPy or math "
        f"functions inside {fname}; .detach() or torch.no_grad(). Write {fname} with torch "
        f"operations on {argument} (torch.sin(x), x.pow(2).sum(), torch.stack([...]))."
    )


# what torch raises when a function hands its tensor argument (one that requires grad, or a
# torch.func transform's) to NumPy without detaching it first; x.detach().numpy() instead fails
# inside transforms on the missing data pointer, and outside them gives a disconnected output
_LEFT_TORCH_MESSAGES = ("numpy() on tensor that requires grad",)


def left_torch_error(err: BaseException, fname: str = "f", argument: str = "x") -> TypeError | None:
    """The error to raise instead of ``err`` when ``err`` says ``fname`` passed its tensor
    argument to NumPy (``np.asarray(x)``, a NumPy function such as ``scipy.optimize.rosen``);
    None for any other error. torch's own advice (``.detach().numpy()``) would disconnect the
    output from the autograd graph, so it is replaced by how to write the function instead."""
    if not isinstance(err, RuntimeError) or not any(m in str(err).lower() for m in _LEFT_TORCH_MESSAGES):
        return None
    return TypeError(
        f"{fname}({argument}) converts the tensor {argument} to NumPy (np.asarray, a NumPy or "
        f"scipy function such as scipy.optimize.rosen): hesse differentiates {fname} by autograd, "
        f"which only sees torch operations. Write {fname} with torch operations on {argument}, e.g. "
        f"Rosenbrock as lambda x: (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum() "
        f"(torch.sin, torch.exp, x @ A for np.sin, np.exp, A.dot(x)); for a function that must "
        f"stay in NumPy use scipy.optimize."
    )


def call_torch_function(f: Callable, x: torch.Tensor, fname: str = "f", argument: str = "x") -> Any:
    """``f(x)``, with an error that says how to write ``f`` when ``f`` leaves torch for NumPy
    (see :func:`left_torch_error`)."""
    try:
        return f(x)
    except RuntimeError as err:
        better = left_torch_error(err, fname, argument)
        if better is not None:
            raise better from None
        raise


def check_connected(f: Callable, x: torch.Tensor, fname: str = "f") -> torch.Tensor:
    """Evaluate ``f(x)`` once with plain autograd and refuse an output not connected to ``x``.

    Connection, not a non-zero gradient, is tested: ``x.sum() * 0 + 1`` is connected (its zero
    gradient is the truth), ``torch.tensor(x[0].item() ** 2)`` is not. The test is whether
    ``d(sum of outputs)/dx`` exists in the graph (``allow_unused``), which also catches an output
    that depends only on tensors captured from outside ``f``. Returns the (detached) output.
    """
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = call_torch_function(f, xr, fname)
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        return out
    if not out.requires_grad:
        raise disconnected_error(fname)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(out.sum(), xr, allow_unused=True)
    if g is None:
        raise disconnected_error(fname)
    return out.detach()


def suggest(name: str, candidates) -> str:
    """`` Did you mean 'x'?`` for the closest candidate (difflib), or an empty string."""
    close = difflib.get_close_matches(str(name), list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def check_callable(f: Any, name: str = "f") -> Callable:
    if not callable(f):
        raise TypeError(f"{name} must be callable (a function of one tensor), got {type(f).__name__}.")
    return f


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as a seed: an integer >= 0 (bools, floats and strings refused, naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0 (a random seed), got {value!r}.")
    return int(value)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; ``ValueError`` for anything else (bools included)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


check_int = check_positive_int  # the name the optimizers use


def check_hyper(value: Any, name: str, *, allow_zero: bool = False, upper: float | None = None,
                upper_open: bool = False) -> float:
    """``value`` as a float >= 0 (> 0 unless ``allow_zero``), optionally <= ``upper`` (< ``upper``
    when ``upper_open``): the range check of a hyperparameter (lr, damping, eps, a beta).

    ``TypeError`` for a non-number (bools included), ``ValueError`` for NaN, inf or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r}).")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    if upper is not None and (v > upper or (upper_open and v == upper)):
        rel = "<" if upper_open else "<="
        raise ValueError(f"{name} must be {rel} {upper}, got {value!r}.")
    return v


def check_positive_float(value: Any, name: str, allow_zero: bool = False) -> float:
    """``value`` as a finite float > 0 (>= 0 with ``allow_zero``); see :func:`check_hyper`."""
    return check_hyper(value, name, allow_zero=allow_zero)


def check_betas(betas: Any, name: str = "betas") -> tuple[float, float]:
    """``betas`` as a pair of exponential-moving-average rates, each in [0, 1), as
    ``torch.optim.Adam`` accepts them (Kingma & Ba (2015), Alg. 1)."""
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"{name} must be a pair (beta1, beta2), got {betas!r}.")
    return (check_hyper(betas[0], f"{name}[0]", allow_zero=True, upper=1.0, upper_open=True),
            check_hyper(betas[1], f"{name}[1]", allow_zero=True, upper=1.0, upper_open=True))


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}.")
    return value


def check_model(model: Any, cls_name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{cls_name} takes the model first (it needs the module structure), got "
            f"{type(model).__name__}. Use {cls_name}(model, lr=...), not "
            f"{cls_name}(model.parameters(), ...).")
    return model


def _param_list(ps: Any) -> list:
    return [ps] if isinstance(ps, torch.Tensor) else list(ps)


def model_param_groups(model: nn.Module, params: Any) -> list:
    """The parameters an optimizer over ``model`` works on: ``params`` (an iterable of tensors or of
    param-group dicts, all of them parameters of ``model``) or all trainable parameters."""
    if params is None:
        return [p for p in model.parameters() if p.requires_grad]
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of param-group dicts, got a "
                        "single tensor; wrap it in a list.")
    # A group's "params" may be a generator (``model[0].parameters()``): read it once into a list
    # that the returned group carries, so that the check does not leave torch an empty group.
    groups = [dict(g, params=_param_list(g["params"])) if isinstance(g, dict) else g
              for g in params]
    ids = {id(p) for p in model.parameters()}
    for g in groups:
        for p in g["params"] if isinstance(g, dict) else [g]:
            if id(p) not in ids:
                raise ValueError("params contains a tensor that is not a parameter of model; "
                                 "pass model's own parameters (or param groups of them).")
    return groups


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite, at the cost of one reduction.

    NaN and ±Inf propagate into a sum (``inf - inf`` is NaN), so a finite sum proves every entry
    finite; only a non-finite sum, which finite entries can also produce by overflowing, is
    rechecked entry by entry. This keeps the check of every curvature product at a fraction of a
    percent of the product instead of an ``isfinite`` pass and its boolean copy.
    """
    if t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())
