"""Result record, convergence-order estimates, stopping rules, NaN handling, bad input."""

import math
import re

import pytest
import torch

import hesse
from hesse.optimize import METHODS, estimate_convergence_order
from hesse.optimize.result import MAX_ITER, NONFINITE


def test_order_estimates_on_synthetic_sequences():
    assert estimate_convergence_order([0.5 ** k for k in range(20)]) == "linear"
    quad = [1e-1]
    for _ in range(4):
        quad.append(quad[-1] ** 2)
    assert estimate_convergence_order(quad) == "quadratic"
    sup = [1.0]
    for k in range(1, 12):
        sup.append(sup[-1] / (k + 1) ** 2)
    assert estimate_convergence_order(sup) == "superlinear"
    assert estimate_convergence_order([1.0, 0.5]) == "unknown"
    assert estimate_convergence_order([1.0, 2.0, 1.0, 3.0, 0.5, 4.0]) == "unknown"


def test_registry_declares_needs_and_options():
    assert set(METHODS) == {"gd", "momentum", "nesterov", "newton", "newton-damped", "saddle-free-newton",
                            "trust-ncg", "trust-exact", "newton-cg", "bfgs", "lbfgs", "dfp", "sr1"}
    assert METHODS["newton-cg"].needs == "hvp" and METHODS["trust-exact"].needs == "hessian"
    assert METHODS["lbfgs"].options["memory"] == 10


def test_counts_and_repr(rosen):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="trust-ncg")
    assert r.num_matvecs > 0 and r.nfev >= r.nit and r.njev >= r.nit
    assert len(r.history.values) == r.nit + 1
    assert "trust-ncg" in repr(r) and re.search(r"success: True", repr(r))


def test_max_iter_is_not_success(rosen):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="bfgs", max_iter=3)
    assert r.status == MAX_ITER and not r.success and r.nit == 3


def test_ftol_stop_is_not_success_unless_gradient_small(rosen):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="gd", lr=1e-4, ftol=1e-3, max_iter=10_000)
    assert r.status == 3 and not r.success


def test_callback_can_stop(rosen):
    seen = []

    def cb(x, f, gnorm):
        seen.append(f)
        return len(seen) >= 2

    r = hesse.minimize(rosen, [-1.2, 1.0], method="bfgs", callback=cb)
    assert r.status == 7 and r.nit == 2 and not r.success


def test_nan_region_is_met_by_shrinking_the_step():
    # f = x^2 - log(1 - x) is NaN for x > 1; a large fixed step overshoots into it
    def f(x):
        return (x ** 2).sum() - torch.log(1 - x).sum()

    r = hesse.minimize(f, [0.5], method="gd", lr=5.0, max_iter=500)
    assert r.success and math.isfinite(r.fun)
    # f'(x) = 2x + 1/(1 - x) = 0  ->  2x^2 - 2x - 1 = 0  ->  x* = (1 - sqrt(3)) / 2
    x_star = (1 - math.sqrt(3)) / 2
    assert abs(float(r.x[0]) - x_star) < 1e-5
    for m in ("bfgs", "newton", "newton-damped", "trust-ncg"):
        rm = hesse.minimize(f, [0.5], method=m)
        assert rm.success and abs(float(rm.x[0]) - x_star) < 1e-5, (m, rm.message)


def test_unrecoverable_nan_returns_last_finite_iterate():
    def f(x):
        # finite only on x <= 0; the gradient pushes to x > 0 everywhere nearby
        return torch.where(x[0] <= 0, -x[0], torch.tensor(float("nan"), dtype=x.dtype)) + 0 * x.sum()

    r = hesse.minimize(f, [0.0], method="gd", lr=1.0, max_iter=10)
    assert r.status == NONFINITE and not r.success
    assert float(r.x[0]) == 0.0 and math.isfinite(r.fun)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(method="adam"), ValueError, "method"),
        (dict(method="bfgs", memory=5), TypeError, "memory"),
        (dict(method="lbfgs", memory=0), ValueError, "memory"),
        (dict(method="gd", lr=-1.0), ValueError, "lr"),
        (dict(method="bfgs", gtol=-1.0), ValueError, "gtol"),
        (dict(method="bfgs", max_iter=0), ValueError, "max_iter"),
        (dict(method="newton-damped", modification="cholesky"), ValueError, "modification"),
    ],
)
def test_bad_arguments(rosen, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        hesse.minimize(rosen, [-1.2, 1.0], **kwargs)


def test_bad_function_and_start(rosen):
    with pytest.raises(ValueError, match="scalar"):
        hesse.minimize(lambda x: x * 2, [1.0, 2.0], method="bfgs")
    with pytest.raises(ValueError, match="x0"):
        hesse.minimize(rosen, [float("nan"), 1.0])
    with pytest.raises(ValueError, match="not finite"):
        hesse.minimize(lambda x: torch.log(x).sum(), [-1.0, 1.0])
    with pytest.raises(TypeError, match="f must be callable"):
        hesse.minimize(3, [1.0])
    with pytest.raises(ValueError, match="n x n"):
        hesse.minimize(lambda x: (x ** 2).sum(), torch.zeros(30_000, dtype=torch.float64), method="bfgs")
