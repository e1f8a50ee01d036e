"""The one registry of optimization methods: :data:`REGISTRY`, a tuple of :class:`MethodSpec`.

Each entry declares the method's name, the problem it solves (``minimize`` or
``least_squares``), what it needs (``"gradient"``, ``"hvp"``, ``"hessian"`` or ``"jacobian"``),
its options with their defaults and checks, a one-line summary, the dense matrices it keeps (for
the memory guard), whether ``batched=True`` runs it, and the function that runs it. Adding a
method is adding one entry; :data:`METHODS` and :data:`LEAST_SQUARES_METHODS` are read-only views
of the registry by problem.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any, Literal

from hesse._validation import check_positive_float, check_positive_int, suggest

from .first_order import minimize_first_order
from .least_squares_methods import minimize_gauss_newton
from .newton import minimize_newton
from .newton_cg import minimize_newton_cg
from .quasi_newton import UPDATES, minimize_lbfgs, minimize_quasi_newton
from .trust_region import minimize_levenberg_marquardt, minimize_trust_region

Check = Callable[[Any, str], Any]
"""Validates one option value (``check(value, name)``) and returns it normalized; raises
``ValueError``/``TypeError`` naming the option."""


def _positive(value: Any, name: str) -> float:
    return check_positive_float(value, name)


def _positive_int(value: Any, name: str) -> int:
    return check_positive_int(value, name)


def _positive_int_or_none(value: Any, name: str) -> int | None:
    return None if value is None else check_positive_int(value, name)


def _learning_rate(value: Any, name: str) -> Any:
    return value if value == "auto" else check_positive_float(value, name)


def _momentum(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}.")
    return value


def _acceptance_ratio(value: Any, name: str) -> float:
    # the trust region accepts a step when rho > eta; scipy's trust-region methods require
    # 0 <= eta < 0.25 (with eta >= 1/4 a step could be accepted while the radius shrinks on it)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= float(value) < 0.25:
        raise ValueError(f"{name} must be a number in [0, 0.25) (the step acceptance ratio, as scipy's); "
                         f"got {value!r}.")
    return float(value)


def _one_of(*allowed: Any) -> Check:
    def check(value: Any, name: str) -> Any:
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}.")
        return value

    return check


@dataclass(frozen=True)
class Option:
    """One method option: its default and its check."""

    default: Any
    check: Check


@dataclass(frozen=True)
class MethodSpec:
    """One optimization method (see the module docstring for the fields)."""

    name: str
    needs: Literal["gradient", "hvp", "hessian", "jacobian"]
    run: Callable
    summary: str
    option_specs: Mapping[str, Option] = field(default_factory=dict)
    problem: Literal["minimize", "least_squares"] = "minimize"
    dense_matrices: int = 0  # n x n matrices alive at the peak (for the memory guard)
    batched: bool = False  # runs with minimize(..., batched=True)
    batched_matrices: int = 0  # (B, n, n) buffers alive at the peak of a batched run

    @property
    def options(self) -> Mapping[str, Any]:
        """The options and their defaults."""
        return MappingProxyType({k: o.default for k, o in self.option_specs.items()})

    def check_options(self, given: Mapping[str, Any], extra_names: tuple[str, ...] = ()) -> dict[str, Any]:
        """The defaults updated with ``given``, each value checked by its option's check.
        Unknown names raise ``TypeError`` naming this method's options (and ``extra_names``,
        settings accepted elsewhere, for the closest-match hint)."""
        unknown = sorted(set(given) - set(self.option_specs))
        if unknown:
            allowed = ", ".join(self.option_specs) or "none"
            hints = "".join(suggest(k, list(self.option_specs) + list(extra_names)) for k in unknown)
            raise TypeError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for method={self.name!r}; "
                f"its options are: {allowed}.{hints}"
            )
        out = {}
        for key, option in self.option_specs.items():
            value = given.get(key, option.default)
            out[key] = option.check(value, key) if key in given else value
        return out


# n x n matrices alive at the peak, for the memory guard. Peak resident memory measured at
# n = 2000-4000 (float64, a quartic): the dense Hessian alone takes about 4 (the matrix, the
# per-chunk products of the vmapped double backward and allocator slack), Newton's factorization
# or eigendecomposition (with LAPACK's workspace) and the shifted copy about 2 more; SR1 and
# BFGS/DFP keep the matrix, its update's outer products and the eigenvectors or the new matrix.
NEWTON_MATRICES = 6
TRUST_EXACT_MATRICES = 6
SR1_MATRICES = 6
QUASI_NEWTON_MATRICES = 6

# (B, n, n) buffers alive at the peak of a batched run: peak resident memory measured on 200
# starts x 400 variables (float32, a quartic), in units of one (B, n, n) buffer. The vmapped
# Hessian (jacfwd over jacrev) alone takes about 7; Newton adds the eigenvectors and the scaled
# products (9 in all); BFGS keeps Hinv and its update's outer products (7 with the final
# curvature check, which is itself one vmapped Hessian).
BATCHED_NEWTON_MATRICES = 9
BATCHED_BFGS_MATRICES = 7
BATCHED_GD_MATRICES = 7  # lr="auto" and the final check each form the vmapped Hessian

_FIRST_ORDER = {"lr": Option("auto", _learning_rate), "beta": Option(0.9, _momentum)}
_TRUST_REGION = {"initial_radius": Option(1.0, _positive), "max_radius": Option(1e4, _positive),
                 "eta": Option(0.15, _acceptance_ratio)}
_QUASI_NEWTON = {"scale_h0": Option(False, _one_of(False, True)),
                 "initial_step": Option("interpolate", _one_of("interpolate", "unit"))}

REGISTRY: tuple[MethodSpec, ...] = (
    MethodSpec("gd", "gradient", partial(minimize_first_order, variant="gd"),
               "gradient descent, fixed step lr (or 'auto' = 1/lambda_max)", _FIRST_ORDER,
               batched=True, batched_matrices=BATCHED_GD_MATRICES),
    MethodSpec("momentum", "gradient", partial(minimize_first_order, variant="momentum"),
               "heavy-ball momentum (Polyak)", _FIRST_ORDER),
    MethodSpec("nesterov", "gradient", partial(minimize_first_order, variant="nesterov"),
               "Nesterov accelerated gradient", _FIRST_ORDER),
    MethodSpec("newton", "hessian", partial(minimize_newton, variant="newton"), "pure Newton, unit steps",
               dense_matrices=NEWTON_MATRICES, batched=True, batched_matrices=BATCHED_NEWTON_MATRICES),
    MethodSpec("newton-damped", "hessian", partial(minimize_newton, variant="newton-damped"),
               "Newton + line search, Hessian made PD (LM shift or eigenvalue modification)",
               {"modification": Option("lm", _one_of("lm", "eigen")),
                "line_search": Option("strong-wolfe", _one_of("strong-wolfe", "armijo"))},
               dense_matrices=NEWTON_MATRICES, batched=True, batched_matrices=BATCHED_NEWTON_MATRICES),
    MethodSpec("saddle-free-newton", "hessian", partial(minimize_newton, variant="saddle-free-newton"),
               "Newton on |H| (Dauphin et al. 2014)", {"damping": Option(1e-4, _positive)},
               dense_matrices=NEWTON_MATRICES),
    MethodSpec("trust-ncg", "hvp", partial(minimize_trust_region, subproblem="steihaug"),
               "trust region, Steihaug-Toint CG on HVPs", _TRUST_REGION),
    MethodSpec("trust-exact", "hessian", partial(minimize_trust_region, subproblem="exact"),
               "trust region, Moré-Sorensen exact subproblem", _TRUST_REGION,
               dense_matrices=TRUST_EXACT_MATRICES),
    MethodSpec("sr1", "gradient", partial(minimize_trust_region, subproblem="sr1"),
               "SR1 quasi-Newton in a trust region", _TRUST_REGION, dense_matrices=SR1_MATRICES),
    MethodSpec("newton-cg", "hvp", minimize_newton_cg,
               "Hessian-free truncated CG + strong Wolfe line search",
               {"cg_max_iter": Option(None, _positive_int_or_none)}),
    MethodSpec("bfgs", "gradient", partial(minimize_quasi_newton, update=UPDATES["bfgs"]),
               "BFGS (dense inverse Hessian) + strong Wolfe", _QUASI_NEWTON,
               dense_matrices=QUASI_NEWTON_MATRICES, batched=True, batched_matrices=BATCHED_BFGS_MATRICES),
    MethodSpec("dfp", "gradient", partial(minimize_quasi_newton, update=UPDATES["dfp"]),
               "DFP (dense inverse Hessian) + strong Wolfe", _QUASI_NEWTON,
               dense_matrices=QUASI_NEWTON_MATRICES),
    MethodSpec("lbfgs", "gradient", minimize_lbfgs,
               "limited-memory BFGS, two-loop recursion + strong Wolfe",
               {"memory": Option(10, _positive_int), "h0": Option("latest", _one_of("latest", "first"))}),
    MethodSpec("lm", "jacobian", minimize_levenberg_marquardt,
               "Levenberg-Marquardt, a scaled trust region (Moré 1978)",
               {"initial_radius_factor": Option(100.0, _positive)}, problem="least_squares"),
    MethodSpec("gauss-newton", "jacobian", minimize_gauss_newton,
               "Gauss-Newton (minimum-norm step) + Armijo backtracking", problem="least_squares"),
)

METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {spec.name: spec for spec in REGISTRY if spec.problem == "minimize"})
LEAST_SQUARES_METHODS: Mapping[str, MethodSpec] = MappingProxyType(
    {spec.name: spec for spec in REGISTRY if spec.problem == "least_squares"})


def describe(methods: Mapping[str, MethodSpec]) -> str:
    """One line per method, ``'name' (needs): summary``, for error messages."""
    return "; ".join(f"{name!r} ({spec.needs}): {spec.summary}" for name, spec in methods.items())
