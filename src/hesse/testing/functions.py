"""Classic unconstrained test problems (Moré, Garbow & Hillstrom 1981, "Testing unconstrained
optimization software", ACM TOMS 7(1), numbered as "MGH n"; and the chained Rosenbrock), written
as torch functions of ONE flat tensor.

Most are sums of squares ``f(x) = sum_i r_i(x)^2`` (MGH's convention, no 1/2): those carry their
``residuals`` too, for :func:`hesse.least_squares`. ``fmin`` is the published optimal value
(MGH Sec. 3) where one is known, ``xmin`` the minimizer where it is known in closed form.
Dimensions range from 2 to any ``n`` (the extended/chained/variably-dimensioned problems).

>>> from hesse.testing.functions import get_problem
>>> p = get_problem("rosenbrock")
>>> float(p.f(p.xmin))
0.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["OptimizationProblem", "get_problem", "problem_suite", "PROBLEM_NAMES"]

_T = torch.float64


@dataclass
class OptimizationProblem:
    """A test problem: ``f`` (scalar), optional ``residuals`` (``f = sum r^2``), start ``x0``,
    the known minimum value ``fmin`` / minimizer ``xmin`` (None where not known in closed form)."""

    name: str
    n: int
    x0: torch.Tensor
    f: Callable[[torch.Tensor], torch.Tensor]
    residuals: Callable[[torch.Tensor], torch.Tensor] | None
    fmin: float | None
    xmin: torch.Tensor | None
    reference: str
    note: str = ""

    def __repr__(self) -> str:
        return f"OptimizationProblem({self.name!r}, n={self.n}, fmin={self.fmin}, {self.reference})"


def _sumsq(res):
    def f(x):
        r = res(x)
        return torch.dot(r, r)

    return f


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=_T)


# ---- residual definitions ------------------------------------------------------------------

def _rosenbrock(x):
    return torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]])


def _freudenstein_roth(x):
    return torch.stack([
        -13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
        -29 + x[0] + ((x[1] + 1) * x[1] - 14) * x[1],
    ])


def _powell_badly_scaled(x):
    return torch.stack([1e4 * x[0] * x[1] - 1, torch.exp(-x[0]) + torch.exp(-x[1]) - 1.0001])


def _brown_badly_scaled(x):
    return torch.stack([x[0] - 1e6, x[1] - 2e-6, x[0] * x[1] - 2])


_BEALE_Y = (1.5, 2.25, 2.625)


def _beale(x):
    return torch.stack([y - x[0] * (1 - x[1] ** (i + 1)) for i, y in enumerate(_BEALE_Y)])


def _jennrich_sampson(x):
    i = torch.arange(1, 11, dtype=x.dtype, device=x.device)
    return 2 + 2 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))


def _helical_valley(x):
    theta = torch.atan(x[1] / x[0]) / (2 * math.pi) + torch.where(x[0] < 0, 0.5, 0.0)
    return torch.stack([10 * (x[2] - 10 * theta), 10 * (torch.sqrt(x[0] ** 2 + x[1] ** 2) - 1), x[2]])


_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)


def _bard(x):
    i = torch.arange(1, 16, dtype=x.dtype, device=x.device)
    u, v = i, 16 - i
    w = torch.minimum(u, v)
    return torch.tensor(_BARD_Y, dtype=x.dtype, device=x.device) - (x[0] + u / (v * x[1] + w * x[2]))


_GAUSSIAN_Y = (0.0009, 0.0044, 0.0175, 0.0540, 0.1295, 0.2420, 0.3521, 0.3989, 0.3521, 0.2420,
               0.1295, 0.0540, 0.0175, 0.0044, 0.0009)


def _gaussian(x):
    i = torch.arange(1, 16, dtype=x.dtype, device=x.device)
    t = (8 - i) / 2
    y = torch.tensor(_GAUSSIAN_Y, dtype=x.dtype, device=x.device)
    return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2) - y


def _box3d(x):
    t = 0.1 * torch.arange(1, 11, dtype=x.dtype, device=x.device)
    return torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (torch.exp(-t) - torch.exp(-10 * t))


def _powell_singular(x):
    return torch.stack([
        x[0] + 10 * x[1],
        math.sqrt(5) * (x[2] - x[3]),
        (x[1] - 2 * x[2]) ** 2,
        math.sqrt(10) * (x[0] - x[3]) ** 2,
    ])


def _wood(x):
    return torch.stack([
        10 * (x[1] - x[0] ** 2), 1 - x[0], math.sqrt(90) * (x[3] - x[2] ** 2), 1 - x[2],
        math.sqrt(10) * (x[1] + x[3] - 2), (x[1] - x[3]) / math.sqrt(10),
    ])


_KO_Y = (0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246)
_KO_U = (4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)


def _kowalik_osborne(x):
    y = torch.tensor(_KO_Y, dtype=x.dtype, device=x.device)
    u = torch.tensor(_KO_U, dtype=x.dtype, device=x.device)
    return y - x[0] * (u * u + u * x[1]) / (u * u + u * x[2] + x[3])


def _brown_dennis(x):
    t = torch.arange(1, 21, dtype=x.dtype, device=x.device) / 5
    return (x[0] + t * x[1] - torch.exp(t)) ** 2 + (x[2] + x[3] * torch.sin(t) - torch.cos(t)) ** 2


def _biggs_exp6(x):
    t = 0.1 * torch.arange(1, 14, dtype=x.dtype, device=x.device)
    y = torch.exp(-t) - 5 * torch.exp(-10 * t) + 3 * torch.exp(-4 * t)
    return x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1]) + x[5] * torch.exp(-t * x[4]) - y


def _watson(x):
    n = x.numel()
    t = torch.arange(1, 30, dtype=x.dtype, device=x.device) / 29
    j = torch.arange(n, dtype=x.dtype, device=x.device)
    powers = t.unsqueeze(1) ** j.unsqueeze(0)  # (29, n): t^(j-1), j = 1..n
    s1 = (powers[:, :-1] * (j[1:] * x[1:])).sum(1)  # sum_{j=2}^n (j-1) x_j t^(j-2)
    s2 = powers @ x
    return torch.cat([s1 - s2 ** 2 - 1, x[:1], (x[1] - x[0] ** 2 - 1).reshape(1)])


def _extended_rosenbrock(x):
    odd, even = x[0::2], x[1::2]
    return torch.cat([10 * (even - odd ** 2), 1 - odd])


def _extended_powell(x):
    a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
    return torch.cat([a + 10 * b, math.sqrt(5) * (c - d), (b - 2 * c) ** 2, math.sqrt(10) * (a - d) ** 2])


def _penalty_one(x):
    return torch.cat([math.sqrt(1e-5) * (x - 1), (torch.dot(x, x) - 0.25).reshape(1)])


def _variably_dimensioned(x):
    j = torch.arange(1, x.numel() + 1, dtype=x.dtype, device=x.device)
    s = torch.dot(j, x - 1)
    return torch.cat([x - 1, s.reshape(1), (s * s).reshape(1)])


def _trigonometric(x):
    n = x.numel()
    i = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    return n - torch.cos(x).sum() + i * (1 - torch.cos(x)) - torch.sin(x)


def _broyden_tridiagonal(x):
    z = torch.nn.functional.pad(x, (1, 1))
    return (3 - 2 * x) * x - z[:-2] - 2 * z[2:] + 1


def _discrete_boundary_value(x):
    n = x.numel()
    h = 1.0 / (n + 1)
    t = h * torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
    z = torch.nn.functional.pad(x, (1, 1))
    return 2 * x - z[:-2] - z[2:] + h * h * (x + t + 1) ** 3 / 2


def chained_rosenbrock(x: torch.Tensor) -> torch.Tensor:
    """``sum_{i<n} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2`` (scipy's ``rosen``); minimum 0 at ones,
    and (for n >= 4) a local minimum near ``x_1 = -1`` with ``f ~ 3.987`` (Kok & Sandrock 2009)."""
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _alternating(n, a, b):
    x = torch.full((n,), b, dtype=_T)
    x[0::2] = a
    return x


# ---- the suite -----------------------------------------------------------------------------

def _make(name, n):
    ones = lambda m: torch.ones(m, dtype=_T)  # noqa: E731
    zeros = lambda m: torch.zeros(m, dtype=_T)  # noqa: E731
    fixed = {
        "rosenbrock": (2, _rosenbrock, _t([-1.2, 1.0]), 0.0, ones(2), "MGH 1"),
        "freudenstein_roth": (2, _freudenstein_roth, _t([0.5, -2.0]), 0.0, _t([5.0, 4.0]),
                              "MGH 2 (local minimum f = 48.9842 at (11.41, -0.8968))"),
        "powell_badly_scaled": (2, _powell_badly_scaled, _t([0.0, 1.0]), 0.0, None, "MGH 3"),
        "brown_badly_scaled": (2, _brown_badly_scaled, _t([1.0, 1.0]), 0.0, _t([1e6, 2e-6]), "MGH 4"),
        "beale": (2, _beale, _t([1.0, 1.0]), 0.0, _t([3.0, 0.5]), "MGH 5"),
        "jennrich_sampson": (2, _jennrich_sampson, _t([0.3, 0.4]), 124.362, None, "MGH 6 (m = 10)"),
        "helical_valley": (3, _helical_valley, _t([-1.0, 0.0, 0.0]), 0.0, _t([1.0, 0.0, 0.0]), "MGH 7"),
        "bard": (3, _bard, _t([1.0, 1.0, 1.0]), 8.21487e-3, None, "MGH 8"),
        "gaussian": (3, _gaussian, _t([0.4, 1.0, 0.0]), 1.12793e-8, None, "MGH 9"),
        "box_3d": (3, _box3d, _t([0.0, 10.0, 20.0]), 0.0, _t([1.0, 10.0, 1.0]), "MGH 12 (m = 10)"),
        "powell_singular": (4, _powell_singular, _t([3.0, -1.0, 0.0, 1.0]), 0.0, zeros(4),
                            "MGH 13 (singular Hessian at the minimum)"),
        "wood": (4, _wood, _t([-3.0, -1.0, -3.0, -1.0]), 0.0, ones(4), "MGH 14"),
        "kowalik_osborne": (4, _kowalik_osborne, _t([0.25, 0.39, 0.415, 0.39]), 3.07505e-4, None, "MGH 15"),
        "brown_dennis": (4, _brown_dennis, _t([25.0, 5.0, -5.0, -1.0]), 85822.2, None, "MGH 16 (m = 20)"),
        "biggs_exp6": (6, _biggs_exp6, _t([1.0, 2.0, 1.0, 1.0, 1.0, 1.0]), 0.0, _t([1.0, 10.0, 1.0, 5.0, 4.0, 3.0]),
                       "MGH 18 (m = 13). MGH's other reported value f = 5.65565e-3 is attained where "
                       "x1 = x5, x3 = x6: a saddle point (smallest Hessian eigenvalue about -0.0098)"),
        "watson": (6, _watson, zeros(6), 2.28767e-3, None, "MGH 20 (n = 6)"),
    }
    if name in fixed:
        dim, res, x0, fmin, xmin, ref = fixed[name]
        if n is not None and n != dim:
            raise ValueError(f"problem {name!r} has fixed dimension {dim}; got n={n}. Leave n=None.")
        return OptimizationProblem(name, dim, x0, _sumsq(res), res, fmin, xmin, ref)
    scalable = {
        "extended_rosenbrock": (2, 2, _extended_rosenbrock, lambda m: _alternating(m, -1.2, 1.0),
                                0.0, ones, "MGH 21"),
        "extended_powell_singular": (4, 4, _extended_powell,
                                     lambda m: _t([3.0, -1.0, 0.0, 1.0]).repeat(m // 4), 0.0, zeros, "MGH 22"),
        "penalty_one": (4, 1, _penalty_one, lambda m: torch.arange(1, m + 1, dtype=_T), None, None,
                        "MGH 23 (f* = 2.24997e-5 for n = 4, 7.08765e-5 for n = 10)"),
        "variably_dimensioned": (10, 1, _variably_dimensioned,
                                 lambda m: 1 - torch.arange(1, m + 1, dtype=_T) / m, 0.0, ones, "MGH 25"),
        "trigonometric": (10, 1, _trigonometric, lambda m: torch.full((m,), 1.0 / m, dtype=_T), None, None,
                          "MGH 26 (f* = 2.79506e-5 for n = 10, reached from x0; f = 0 elsewhere)"),
        "broyden_tridiagonal": (10, 1, _broyden_tridiagonal, lambda m: -torch.ones(m, dtype=_T), 0.0, None,
                                "MGH 30"),
        "discrete_boundary_value": (10, 1, _discrete_boundary_value,
                                    lambda m: (lambda t: t * (t - 1))(torch.arange(1, m + 1, dtype=_T) / (m + 1)),
                                    0.0, None, "MGH 28"),
    }
    if name in scalable:
        default_n, multiple, res, x0_of, fmin_default, xmin_of, ref = scalable[name]
        best: float | None = fmin_default
        m = default_n if n is None else n
        if not isinstance(m, int) or m < multiple or m % multiple:
            raise ValueError(f"problem {name!r} needs n a positive multiple of {multiple}; got n={n!r}.")
        if name == "penalty_one":
            best = {4: 2.24997e-5, 10: 7.08765e-5}.get(m)
        if name == "trigonometric":
            best = {10: 2.79506e-5}.get(m)
        return OptimizationProblem(name, m, x0_of(m), _sumsq(res), res, best,
                                   xmin_of(m) if xmin_of else None, ref)
    if name == "chained_rosenbrock":
        m = 1000 if n is None else n
        if not isinstance(m, int) or m < 2:
            raise ValueError(f"chained_rosenbrock needs n >= 2; got n={n!r}.")
        return OptimizationProblem(name, m, _alternating(m, -1.2, 1.0), chained_rosenbrock, None, 0.0,
                                   ones(m), "scipy.optimize.rosen; local minimum f ~ 3.987 near x_1 = -1",
                                   note="not a sum of squares in this form")
    raise ValueError(f"unknown problem {name!r}; choose one of {', '.join(PROBLEM_NAMES)}.")


PROBLEM_NAMES = (
    "rosenbrock", "freudenstein_roth", "powell_badly_scaled", "brown_badly_scaled", "beale",
    "jennrich_sampson", "helical_valley", "bard", "gaussian", "box_3d", "powell_singular", "wood",
    "kowalik_osborne", "brown_dennis", "biggs_exp6", "watson", "extended_rosenbrock",
    "extended_powell_singular", "penalty_one", "variably_dimensioned", "trigonometric",
    "broyden_tridiagonal", "discrete_boundary_value", "chained_rosenbrock",
)


def get_problem(name: str, n: int | None = None) -> OptimizationProblem:
    """The problem ``name`` (see ``PROBLEM_NAMES``); ``n`` for the scalable ones."""
    return _make(name, n)


def problem_suite(max_n: int = 10_000, large_n: int | None = None) -> list[OptimizationProblem]:
    """All problems at their default dimensions; the scalable ones also at ``large_n`` (<= max_n)."""
    out = [get_problem(name) for name in PROBLEM_NAMES]
    if large_n is not None:
        if large_n > max_n:
            raise ValueError(f"large_n={large_n} exceeds max_n={max_n}.")
        for name in ("extended_rosenbrock", "extended_powell_singular", "broyden_tridiagonal",
                     "discrete_boundary_value"):
            out.append(get_problem(name, large_n))
    return out
