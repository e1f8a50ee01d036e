"""The front door :func:`minimize`: validate, look the method up in ONE registry, dispatch.

Each registry entry declares the method's name, what it needs (``"gradient"``, ``"hvp"`` or
``"hessian"``), its options with their defaults, and the function that runs it. Adding a method
is adding one entry.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from hesse._validation import as_point, check_callable, check_positive_float, check_positive_int

from ._core import Objective, Run
from .first_order import minimize_first_order
from .newton import minimize_newton
from .newton_cg import minimize_newton_cg
from .quasi_newton import UPDATES, minimize_lbfgs, minimize_quasi_newton
from .result import OptimizeResult
from .trust_region import minimize_trust_region


@dataclass(frozen=True)
class MethodSpec:
    """One optimization method: its name, what it needs, its options (with defaults), its runner."""

    name: str
    needs: str  # "gradient" | "hvp" | "hessian"
    options: dict[str, Any]
    run: Callable
    summary: str
    forms_matrix: bool = False  # keeps an n x n matrix (dense Hessian or quasi-Newton matrix)
    batched: bool = False  # supported by batched=True
    choices: dict[str, tuple] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}


def _register(spec: MethodSpec) -> None:
    METHODS[spec.name] = spec


for _name, _summary in (
    ("gd", "gradient descent, fixed step lr (or 'auto' = 1/lambda_max)"),
    ("momentum", "heavy-ball momentum (Polyak)"),
    ("nesterov", "Nesterov accelerated gradient"),
):
    _register(MethodSpec(_name, "gradient", {"lr": "auto", "beta": 0.9},
                         partial(minimize_first_order, variant=_name), _summary, batched=_name == "gd"))
_register(MethodSpec("newton", "hessian", {}, partial(minimize_newton, variant="newton"),
                     "pure Newton, unit steps", forms_matrix=True, batched=True))
_register(MethodSpec("newton-damped", "hessian",
                     {"modification": "lm", "line_search": "strong-wolfe"},
                     partial(minimize_newton, variant="newton-damped"),
                     "Newton + line search, Hessian made PD (LM shift or eigenvalue modification)",
                     forms_matrix=True, batched=True,
                     choices={"modification": ("lm", "eigen"), "line_search": ("strong-wolfe", "armijo")}))
_register(MethodSpec("saddle-free-newton", "hessian", {"damping": 1e-4},
                     partial(minimize_newton, variant="saddle-free-newton"),
                     "Newton on |H| (Dauphin et al. 2014)", forms_matrix=True))
_register(MethodSpec("trust-ncg", "hvp", {"initial_radius": 1.0, "max_radius": 1e4, "eta": 0.15},
                     partial(minimize_trust_region, subproblem="steihaug"),
                     "trust region, Steihaug-Toint CG on HVPs"))
_register(MethodSpec("trust-exact", "hessian", {"initial_radius": 1.0, "max_radius": 1e4, "eta": 0.15},
                     partial(minimize_trust_region, subproblem="exact"),
                     "trust region, Moré-Sorensen exact subproblem", forms_matrix=True))
_register(MethodSpec("sr1", "gradient", {"initial_radius": 1.0, "max_radius": 1e4, "eta": 0.15},
                     partial(minimize_trust_region, subproblem="sr1"),
                     "SR1 quasi-Newton in a trust region", forms_matrix=True))
_register(MethodSpec("newton-cg", "hvp", {"cg_max_iter": None}, minimize_newton_cg,
                     "Hessian-free truncated CG + strong Wolfe line search"))
for _name in ("bfgs", "dfp"):
    _register(MethodSpec(_name, "gradient", {"scale_h0": False, "initial_step": "interpolate"},
                         partial(minimize_quasi_newton, update=UPDATES[_name]),
                         f"{_name.upper()} (dense inverse Hessian) + strong Wolfe", forms_matrix=True,
                         batched=_name == "bfgs", choices={"initial_step": ("interpolate", "unit")}))
_register(MethodSpec("lbfgs", "gradient", {"memory": 10, "h0": "latest"}, minimize_lbfgs,
                     "limited-memory BFGS, two-loop recursion + strong Wolfe",
                     choices={"h0": ("latest", "first")}))


def _check_options(spec: MethodSpec, options: dict) -> dict:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise TypeError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method={spec.name!r}; "
            f"its options are: {allowed}."
        )
    out = dict(spec.options)
    out.update(options)
    for key, allowed in spec.choices.items():
        if out[key] not in allowed:
            raise ValueError(f"{key} must be one of {', '.join(map(repr, allowed))}; got {out[key]!r}.")
    if "lr" in out and out["lr"] != "auto":
        out["lr"] = check_positive_float(out["lr"], "lr")
    if "beta" in out:
        b = out["beta"]
        if isinstance(b, bool) or not isinstance(b, numbers.Real) or not 0 <= b < 1:
            raise ValueError(f"beta must be a number in [0, 1), got {b!r}.")
    if "memory" in out:
        out["memory"] = check_positive_int(out["memory"], "memory")
    for key in ("initial_radius", "max_radius", "eta", "damping"):
        if key in out:
            out[key] = check_positive_float(out[key], key)
    if out.get("cg_max_iter") is not None:
        out["cg_max_iter"] = check_positive_int(out["cg_max_iter"], "cg_max_iter")
    return out


def minimize(
    f: Callable[[torch.Tensor], torch.Tensor],
    x0,
    method: str = "bfgs",
    *,
    gtol: float = 1e-5,
    ftol: float = 0.0,
    xtol: float = 0.0,
    max_iter: int = 1000,
    max_time: float | None = None,
    callback: Callable | None = None,
    history: bool = True,
    batched: bool = False,
    progress: bool = False,
    check_curvature: bool = True,
    curvature_tol: float = 1e-6,
    **options,
) -> OptimizeResult | list[OptimizeResult]:
    """Minimize ``f(x)`` from ``x0`` with ``method`` (see ``hesse.optimize.METHODS``).

    Parameters
    ----------
    f : function of ONE tensor (the shape of ``x0``) returning a scalar tensor, written with torch
        operations (it is differentiated by autograd).
    x0 : starting point (tensor of any shape and device; lists/NumPy become float64).
        With ``batched=True``: a ``(B, n)`` batch of starting points (see
        :func:`hesse.optimize.batched.minimize_batched`).
    method : "gd", "momentum", "nesterov", "newton", "newton-damped", "saddle-free-newton",
        "trust-ncg", "trust-exact", "newton-cg", "bfgs", "lbfgs", "dfp", "sr1".
    gtol : stop when ``||grad f(x)||_2 <= gtol`` (the gradient test of success).
    ftol : stop (status 3, not success unless the gradient test holds) when
        ``|f_k - f_{k+1}| <= ftol * max(1, |f_{k+1}|)``; 0 turns it off.
    xtol : stop (status 3) when ``||x_{k+1} - x_k|| <= xtol * (1 + ||x_{k+1}||)``; 0 turns it off.
    max_iter, max_time : iteration and wall-clock (seconds) budgets.
    callback : ``callback(x, f, grad_norm)`` after every iteration; returning True stops (status 7).
    history : keep values, gradient norms, step sizes (and iterates when ``n <= 10^4``).
    progress : show a progress line on stderr.
    check_curvature : for methods without the Hessian at hand, check the smallest Hessian
        eigenvalue at the final point (dense for ``n <= 500``, Lanczos otherwise) before calling a
        stop a minimum. With False, success rests on the gradient test alone (said in the message).
    curvature_tol : an eigenvalue below ``-curvature_tol * max(1, |lambda|_max)`` is negative.
    **options : method options, e.g. ``lr``/``beta`` (gd, momentum, nesterov), ``memory`` (lbfgs),
        ``modification`` ("lm" or "eigen", newton-damped), ``damping`` (saddle-free-newton),
        ``initial_radius``/``max_radius``/``eta`` (trust-region methods), ``cg_max_iter``.

    Returns
    -------
    OptimizeResult (a list of them when ``batched=True``).
    """
    check_callable(f, "f")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(
            f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}."
        )
    spec = METHODS[method]
    gtol = check_positive_float(gtol, "gtol", allow_zero=True)
    ftol = check_positive_float(ftol, "ftol", allow_zero=True)
    xtol = check_positive_float(xtol, "xtol", allow_zero=True)
    max_iter = check_positive_int(max_iter, "max_iter")
    if max_time is not None:
        max_time = check_positive_float(max_time, "max_time")
    curvature_tol = check_positive_float(curvature_tol, "curvature_tol", allow_zero=True)
    if callback is not None:
        check_callable(callback, "callback")
    opts = _check_options(spec, options)
    x0 = as_point(x0, "x0")
    common = dict(gtol=gtol, ftol=ftol, xtol=xtol, max_iter=max_iter, max_time=max_time,
                  callback=callback, history=history, progress=progress,
                  check_curvature=check_curvature, curvature_tol=curvature_tol)
    if batched:
        from .batched import minimize_batched

        return minimize_batched(f, x0, method=method, **common, **opts)
    if x0.numel() == 0:
        raise ValueError("x0 is empty; give at least one variable.")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 contains NaN or Inf; start from a finite point.")
    if spec.forms_matrix and x0.numel() > 20_000:
        raise ValueError(
            f"method={method!r} keeps an n x n matrix and n = {x0.numel()} is too large; "
            "use method='lbfgs', 'newton-cg' or 'trust-ncg'."
        )
    obj = Objective(f, x0.shape)
    run = Run(obj, method, n=x0.numel(), **common)
    return spec.run(obj, x0.detach().reshape(-1).clone(), run, **opts)
