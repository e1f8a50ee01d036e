"""The front door :func:`minimize`: validate, look the method up in the one registry
(:mod:`hesse.optimize.methods`), dispatch. Also the scipy vocabulary: method spellings, option
names, and the scipy arguments hesse refuses (with what to do instead).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import Any, Literal, overload

import torch

from hesse._memory import guard_dense
from hesse._validation import (
    as_point,
    check_callable,
    check_finite_point,
    check_nonempty,
    check_positive_float,
    check_positive_int,
    suggest,
    working_point,
)

from ._core import Objective, Run
from .batched import minimize_batched
from .methods import METHODS, MethodSpec, describe
from .result import OptimizeResult

MATRIX_FREE_METHODS = "method='lbfgs', 'newton-cg' or 'trust-ncg', which never form an n x n matrix"


# scipy.optimize.minimize / torchmin spellings (lower case, "_" read as "-") of hesse methods,
# with a note when the hesse method is not the same algorithm
METHOD_ALIASES: dict[str, tuple[str, str | None]] = {
    "l-bfgs": ("lbfgs", None),
    "l-bfgs-b": ("lbfgs", "hesse has no bound constraints: method='L-BFGS-B' runs unconstrained "
                          "L-BFGS (method='lbfgs'); put bounds in f as a penalty or a change of "
                          "variables (x = lo + (hi - lo) * sigmoid(z))"),
    "newton-exact": ("newton-damped", None),
    "trust-newton-cg": ("trust-ncg", None),
}

# scipy / torchmin methods hesse does not have, and what to use instead
MISSING_METHODS: dict[str, str] = {
    "cg": "nonlinear conjugate gradient is not in hesse; use 'lbfgs' (the same O(n) memory, "
          "usually fewer evaluations) or 'newton-cg'",
    "nelder-mead": "derivative-free methods are not in hesse (it differentiates f by autograd); "
                   "use 'bfgs' or 'lbfgs', or scipy.optimize.minimize for a non-differentiable f",
    "powell": "derivative-free methods are not in hesse (it differentiates f by autograd); "
              "use 'bfgs' or 'lbfgs', or scipy.optimize.minimize for a non-differentiable f",
    "tnc": "bound-constrained truncated Newton is not in hesse; use 'newton-cg' (truncated "
           "Newton, unconstrained)",
    "dogleg": "the dogleg trust region is not in hesse; use 'trust-exact' (the exact subproblem "
              "on the same dense Hessian) or 'trust-ncg'",
    "trust-krylov": "the GLTR (Lanczos) trust region is not in hesse; use 'trust-ncg' "
                    "(Steihaug CG on Hessian-vector products) or 'trust-exact'",
    "cobyla": "constrained methods are not in hesse; add the constraints to f as penalties or "
              "use scipy.optimize.minimize",
    "cobyqa": "constrained methods are not in hesse; add the constraints to f as penalties or "
              "use scipy.optimize.minimize",
    "slsqp": "constrained methods are not in hesse; add the constraints to f as penalties or "
             "use scipy.optimize.minimize",
    "trust-constr": "constrained methods are not in hesse; add the constraints to f as penalties "
                    "or use scipy.optimize.minimize",
}

# the settings of the run itself (not of one method), accepted as keywords or in options={...}
RUN_SETTINGS = ("gtol", "ftol", "xtol", "max_iter", "max_time", "history", "progress",
                "check_curvature", "curvature_tol", "max_memory", "disp")

# scipy's option names -> hesse's (as in scipy.optimize.show_options for the methods above)
SCIPY_OPTION_NAMES: dict[str, str] = {
    "maxiter": "max_iter",
    "return_all": "history",
    "xrtol": "xtol",
    "maxcor": "memory",
    "initial_trust_radius": "initial_radius",
    "max_trust_radius": "max_radius",
    "initial_tr_radius": "initial_radius",
}

# scipy arguments and options with no hesse counterpart, and why
SCIPY_UNSUPPORTED: dict[str, str] = {
    "jac": "hesse differentiates f by autograd; drop jac= and write f with torch operations",
    "hess": "hesse differentiates f by autograd; drop hess= and write f with torch operations",
    "hessp": "hesse differentiates f by autograd; drop hessp= and write f with torch operations",
    "bounds": "hesse.minimize is unconstrained; put bounds in f as a penalty or a change of "
              "variables, or use scipy.optimize.minimize",
    "constraints": "hesse.minimize is unconstrained; add the constraints to f as penalties or "
                   "use scipy.optimize.minimize",
    "eps": "hesse differentiates f by autograd, there is no finite-difference step to set",
    "finite_diff_rel_step": "hesse differentiates f by autograd, there is no finite-difference "
                            "step to set",
    "norm": "hesse's gtol is on the 2-norm of the gradient",
    "maxfun": "hesse budgets iterations (max_iter) and time (max_time), not evaluations",
    "maxfev": "hesse budgets iterations (max_iter) and time (max_time), not evaluations",
}


def resolve_method(method: Any) -> tuple[str, str | None]:
    """hesse's name for ``method`` (case-insensitive; scipy's and torchmin's spellings accepted)
    and a note when the algorithm differs from the one asked for. Unknown names raise
    ``ValueError`` with the closest match; scipy methods hesse lacks name the alternatives."""
    if not isinstance(method, str):
        raise TypeError(f"method must be a string such as 'bfgs'; got {type(method).__name__}.")
    key = method.strip().lower().replace("_", "-")
    if key in METHODS:
        return key, None
    if key in METHOD_ALIASES:
        return METHOD_ALIASES[key]
    if key in MISSING_METHODS:
        raise ValueError(f"method={method!r}: {MISSING_METHODS[key]}.")
    known = list(METHODS) + list(METHOD_ALIASES) + list(MISSING_METHODS)
    raise ValueError(
        f"method must be one of {describe(METHODS)} (case-insensitive; scipy's "
        f"'BFGS', 'Newton-CG', 'trust-ncg', 'trust-exact', 'L-BFGS-B' are accepted); "
        f"got {method!r}.{suggest(key, known)}"
    )


def _translate_settings(spec: MethodSpec, given: dict) -> tuple[dict, dict]:
    """Split keywords and ``options`` entries into run settings and method options, reading
    scipy's names as hesse's. Refuses unknown names with the closest known one."""
    run_settings: dict[str, Any] = {}
    method_options: dict[str, Any] = {}
    written: dict[str, str] = {}  # hesse's name -> the name the user wrote
    for raw, value in given.items():
        if raw in SCIPY_UNSUPPORTED:
            raise TypeError(f"{raw}= is not supported by hesse.minimize: {SCIPY_UNSUPPORTED[raw]}.")
        key = SCIPY_OPTION_NAMES.get(raw, raw)
        target = run_settings if key in RUN_SETTINGS else method_options
        if key in target and target[key] is not value:
            raise TypeError(f"{key!r} is given twice (as {raw!r} and {key!r}); give it once.")
        target[key] = value
        written[key] = raw
    unknown = sorted(set(method_options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        known = list(spec.options) + list(RUN_SETTINGS) + list(SCIPY_OPTION_NAMES)
        hints = "".join(_unknown_option_hint(written[k], k, spec.name, known) for k in unknown)
        raise TypeError(
            f"unknown option(s) {', '.join(repr(written[k]) for k in unknown)} for method={spec.name!r}; "
            f"its options are: {allowed} (and for every method: {', '.join(RUN_SETTINGS)}; "
            f"scipy's maxiter, gtol, disp, return_all are read too).{hints}"
        )
    return run_settings, method_options


def _unknown_option_hint(raw: str, key: str, method: str, known: list[str]) -> str:
    """What to do about an option ``raw`` (hesse's ``key``) that ``method`` lacks: the methods
    that take it, or else the closest known name."""
    takers = [name for name, spec in METHODS.items() if key in spec.options]
    if takers:
        as_hesse = f" (hesse's {key!r})" if key != raw else ""
        return (f" {raw!r}{as_hesse} is an option of method={' or '.join(map(repr, takers))}, "
                f"not of {method!r}: choose one of those methods or drop the option.")
    return suggest(raw, known)


@overload
def minimize(f: Callable[..., torch.Tensor], x0: Any, method: str = ..., *, args: tuple = ...,
             options: dict | None = ..., tol: float | None = ..., gtol: float = ..., ftol: float = ...,
             xtol: float = ..., max_iter: int = ..., max_time: float | None = ...,
             callback: Callable | None = ..., history: bool = ..., batched: Literal[False] = ...,
             progress: bool = ..., check_curvature: bool = ..., curvature_tol: float = ...,
             max_memory: int | None = ..., **method_options: Any) -> OptimizeResult: ...


@overload
def minimize(f: Callable[..., torch.Tensor], x0: Any, method: str = ..., *, args: tuple = ...,
             options: dict | None = ..., tol: float | None = ..., gtol: float = ..., ftol: float = ...,
             xtol: float = ..., max_iter: int = ..., max_time: float | None = ...,
             callback: Callable | None = ..., history: bool = ..., batched: Literal[True],
             progress: bool = ..., check_curvature: bool = ..., curvature_tol: float = ...,
             max_memory: int | None = ..., **method_options: Any) -> list[OptimizeResult]: ...


def minimize(
    f: Callable[..., torch.Tensor],
    x0: Any,
    method: str = "bfgs",
    *,
    args: tuple = (),
    options: dict | None = None,
    tol: float | None = None,
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
    max_memory: int | None = None,
    **method_options: Any,
) -> OptimizeResult | list[OptimizeResult]:
    """Minimize ``f(x)`` from ``x0`` with ``method`` (see ``hesse.optimize.METHODS``).

    Parameters
    ----------
    f
        function of ONE tensor (the shape of ``x0``) returning a scalar tensor, written with torch
        operations (it is differentiated by autograd). An output not connected to ``x``
        (``.item()``, ``torch.tensor(...)``, NumPy inside ``f``) is refused.
    x0
        starting point (tensor of any shape and device; lists/NumPy become float64), finite.
        With ``batched=True``: a ``(B, n)`` batch of starting points (see
        :func:`hesse.optimize.batched.minimize_batched`).
    method
        "gd", "momentum", "nesterov", "newton", "newton-damped", "saddle-free-newton",
        "trust-ncg", "trust-exact", "newton-cg", "bfgs", "lbfgs", "dfp", "sr1"; case-insensitive,
        and scipy's / torchmin's spellings are read ("BFGS", "Newton-CG", "L-BFGS-B" runs
        unconstrained L-BFGS with a warning, "newton-exact"). scipy methods hesse lacks ("CG",
        "Nelder-Mead", "SLSQP", ...) raise ``ValueError`` naming the alternatives.
    args
        extra arguments, ``f(x, *args)`` (as scipy's ``args``).
    options
        dict of settings as scipy takes them: ``maxiter`` (-> ``max_iter``), ``gtol``,
        ``disp`` (print the outcome), ``return_all`` (-> ``history``), ``maxcor`` (-> lbfgs
        ``memory``), ``initial_trust_radius``/``max_trust_radius`` (a maximum below the default initial
        radius 1 lowers the initial radius to it; an initial radius given above the maximum is
        refused, as scipy refuses it), or any hesse keyword below. An option of another method
        (``maxcor`` with BFGS) is refused naming the methods that take it.
        Entries in ``options`` win over the keywords.
    tol
        scipy's ``tol``: sets ``gtol``.
    gtol
        stop when ``||grad f(x)||_2 <= gtol`` (the gradient test of success).
    ftol
        stop (status 3, not success unless the gradient test holds) when
        ``|f_k - f_{k+1}| <= ftol * max(1, |f_{k+1}|)``; 0 turns it off.
    xtol
        stop (status 3) when ``||x_{k+1} - x_k|| <= xtol * (1 + ||x_{k+1}||)``; 0 turns it off.
    max_iter, max_time
        iteration and wall-clock (seconds) budgets.
    callback
        ``callback(x, f, grad_norm)`` after every iteration, or scipy's forms (told apart by the
        signature): ``callback(intermediate_result)`` (a single parameter of that name) gets an
        ``OptimizeResult`` of the iterate (``x``, ``fun``, ``grad_norm``, the counts; ``status``
        -1), any other single parameter gets ``x`` only. Returning True or raising
        ``StopIteration`` (scipy's way) stops the run with a result: status 7 (scipy's 99),
        ``success`` False, ``x`` the iterate the callback saw.
    history
        keep values, gradient norms, step sizes (and iterates when ``n <= 10^4``).
    batched
        ``x0`` is a ``(B, n)`` batch of starting points, each minimized (see
        :func:`hesse.optimize.batched.minimize_batched`); the result is a list.
    progress
        show a progress line on stderr.
    check_curvature
        for methods without the Hessian at hand, check the smallest Hessian
        eigenvalue at the final point (dense for ``n <= 500``, Lanczos otherwise) before calling a
        stop a minimum. With False, success rests on the gradient test alone (said in the message).
    curvature_tol
        an eigenvalue below ``-curvature_tol * max(1, |lambda|_max)`` is negative.
    max_memory
        bytes the dense ``n x n`` matrices of the method may take (default 4 GiB or
        ``HESSE_MAX_MEMORY``); over it the call is refused before anything is allocated, naming
        the matrix-free methods.
    **method_options
        method options, e.g. ``lr``/``beta`` (gd, momentum, nesterov), ``memory``
        (lbfgs), ``modification`` ("lm" or "eigen", newton-damped), ``damping``
        (saddle-free-newton), ``initial_radius``/``max_radius``/``eta`` (trust-region methods),
        ``cg_max_iter``; scipy's option names are read here too.

    Notes
    -----
    A function that keeps decreasing as the iterates run away stops with status 8
    ("unbounded") instead of spending ``max_iter`` line searches.

    Returns
    -------
    OptimizeResult (a list of them when ``batched=True``).
    """
    check_callable(f, "f")
    name, note = resolve_method(method)
    spec = METHODS[name]
    keywords = dict(gtol=gtol, ftol=ftol, xtol=xtol, max_iter=max_iter, max_time=max_time,
                    history=history, progress=progress, check_curvature=check_curvature,
                    curvature_tol=curvature_tol, max_memory=max_memory, disp=False)
    settings, opts = _settings_and_options(spec, keywords, options, tol, method_options)
    if batched and not spec.batched:
        capable = {k: s for k, s in METHODS.items() if s.batched}
        raise ValueError(
            f"batched=True supports method in {', '.join(map(repr, capable))} "
            f"({describe(capable)}); got {name!r}. Loop over the starting points for the other methods."
        )
    if callback is not None:
        check_callable(callback, "callback")
        callback = _adapt_callback(callback)
    if not isinstance(args, tuple):
        args = (args,)
    fun = f if not args else _with_args(f, args)
    x0 = working_point(as_point(x0, "x0"))
    check_nonempty(x0, "x0")
    check_finite_point(x0, "x0")
    if note is not None:
        warnings.warn(note, UserWarning, stacklevel=2)
    disp = settings.pop("disp")
    max_memory = settings.pop("max_memory")
    if batched:

        results = minimize_batched(fun, x0, method=name, needs=spec.needs, matrices=spec.batched_matrices,
                                   max_memory=max_memory, callback=callback, **settings, **opts)
        if disp:
            for b, res in enumerate(results):
                _display(res, prefix=f"start {b}: ")
        return results
    n = x0.numel()
    if spec.dense_matrices:
        guard_dense(n, x0.dtype, max_memory, what=f"dense n x n matrices of method={name!r}",
                    count=spec.dense_matrices, alternative=MATRIX_FREE_METHODS)
    obj = Objective(fun, x0.shape, max_memory=max_memory)
    run = Run(obj, name, n=n, callback=callback, **settings)
    result = spec.run(obj, x0.detach().reshape(-1).clone(), run, **opts)
    if disp:
        _display(result)
    return result


def _settings_and_options(spec: MethodSpec, keywords: dict[str, Any], options: dict | None,
                          tol: float | None, method_options: dict[str, Any]) -> tuple[dict, dict]:
    """The run settings (``keywords`` overridden by ``options`` and ``tol``, each checked) and the
    method's options (checked by the method's own registry entry)."""
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict (as scipy's), got {type(options).__name__}.")
    given = dict(method_options)
    for key, value in (options or {}).items():
        if key in given:
            raise TypeError(f"{key!r} is given both as a keyword and in options; give it once.")
        given[key] = value
    overrides, method_opts = _translate_settings(spec, given)
    if tol is not None:
        overrides.setdefault("gtol", tol)
    s = {**keywords, **overrides}
    s["history"], s["progress"] = bool(s["history"]), bool(s["progress"])
    s["check_curvature"], s["disp"] = bool(s["check_curvature"]), bool(s["disp"])
    for key in ("gtol", "ftol", "xtol"):
        s[key] = check_positive_float(s[key], key, allow_zero=True)
    s["max_iter"] = check_positive_int(s["max_iter"], "max_iter")
    if s["max_time"] is not None:
        s["max_time"] = check_positive_float(s["max_time"], "max_time")
    if s["max_memory"] is not None:
        s["max_memory"] = check_positive_int(s["max_memory"], "max_memory")
    s["curvature_tol"] = check_positive_float(s["curvature_tol"], "curvature_tol", allow_zero=True)
    opts = spec.check_options(method_opts, RUN_SETTINGS + tuple(SCIPY_OPTION_NAMES))
    return s, _radius_within_maximum(opts, given_initial="initial_radius" in method_opts)


def _radius_within_maximum(opts: dict[str, Any], given_initial: bool) -> dict[str, Any]:
    """A trust region starts inside its maximum: a ``max_radius`` (scipy's ``max_trust_radius``)
    below the default initial radius lowers the initial radius to it, and an initial radius given
    above the maximum is refused (as scipy refuses it)."""
    if "max_radius" not in opts or "initial_radius" not in opts:
        return opts
    if opts["initial_radius"] > opts["max_radius"]:
        if given_initial:
            raise ValueError(
                f"initial_radius (scipy's initial_trust_radius) = {opts['initial_radius']:g} is "
                f"larger than max_radius (max_trust_radius) = {opts['max_radius']:g}; the trust "
                f"region must start within its maximum: give initial_radius <= max_radius."
            )
        opts = {**opts, "initial_radius": opts["max_radius"]}
    return opts


def _adapt_callback(callback: Callable) -> Callable:
    """Accept scipy's two callback forms as well as hesse's ``callback(x, f, grad_norm)``,
    told apart by the signature before the run: a single parameter named
    ``intermediate_result`` gets an :class:`OptimizeResult` of the iterate (scipy >= 1.11),
    any other single positional parameter gets the iterate only (scipy's ``callback(xk)``)."""
    try:
        params = list(inspect.signature(callback).parameters.values())
    except (TypeError, ValueError):
        return callback
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if [p.name for p in params] == ["intermediate_result"]:
        return _ResultCallback(callback)
    if any(p.kind == p.VAR_POSITIONAL for p in params) or len(positional) != 1:
        return callback

    def scipy_style(x, f, grad_norm):
        return callback(x)

    return scipy_style


class _ResultCallback:
    """scipy's ``callback(intermediate_result)``: :class:`hesse.optimize._core.Run` passes it
    an :class:`OptimizeResult` of the current iterate (it reads ``wants_result``)."""

    wants_result = True

    def __init__(self, callback: Callable):
        self.callback = callback

    def __call__(self, intermediate_result: OptimizeResult) -> Any:
        return self.callback(intermediate_result=intermediate_result)


def _with_args(f: Callable, args: tuple) -> Callable[[torch.Tensor], torch.Tensor]:
    def f_of_x(x: torch.Tensor) -> torch.Tensor:
        return f(x, *args)

    return f_of_x


def _display(result: OptimizeResult, prefix: str = "") -> None:
    """What scipy's ``disp=True`` prints at the end: the outcome and the counts."""
    print(f"{prefix}{result.message}")
    print(f"{prefix}         Current function value: {result.fun:.6g}")
    print(f"{prefix}         Iterations: {result.nit}")
    print(f"{prefix}         Function evaluations: {result.nfev}")
    print(f"{prefix}         Gradient evaluations: {result.njev}")
