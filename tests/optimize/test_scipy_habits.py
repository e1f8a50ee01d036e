"""The habits scipy users bring to hesse.minimize (ported from scipy.optimize's own tests): a
NumPy objective, a callback that raises StopIteration or takes ``intermediate_result``, scipy's
option names, ``max_trust_radius``, BFGS at any scale of f."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize as so
import torch

import hesse
from hesse.optimize import METHODS
from hesse.optimize.quasi_newton import bfgs_update
from hesse.optimize.result import CALLBACK


def rosen(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


X0 = [-1.2, 1.0]
NUMPY_ENTRY_POINTS = {
    "minimize": lambda f: hesse.minimize(f, X0),
    "minimize newton": lambda f: hesse.minimize(f, X0, method="newton"),
    "minimize trust-ncg": lambda f: hesse.minimize(f, X0, method="trust-ncg"),
    "minimize batched": lambda f: hesse.minimize(f, [X0, X0], batched=True),
    "gradient": lambda f: hesse.gradient(f, torch.tensor(X0)),
    "hessian": lambda f: hesse.hessian(f, torch.tensor(X0)),
    "hvp": lambda f: hesse.hvp(f, torch.tensor(X0), torch.ones(2)),
    "jacobian": lambda f: hesse.jacobian(lambda x: f(x).reshape(1), torch.tensor(X0)),
    "least_squares": lambda f: hesse.least_squares(lambda x: f(x).reshape(1), X0),
    "critical_points": lambda f: hesse.critical_points(f, [(-2.0, 2.0), (-2.0, 2.0)], symbolic=False),
    "HessianOperator": lambda f: hesse.HessianOperator.from_function(f, torch.tensor(X0)) @ torch.ones(2),
}


@pytest.mark.parametrize("entry", NUMPY_ENTRY_POINTS)
@pytest.mark.parametrize("numpy_f", [so.rosen, lambda x: torch.as_tensor(np.sum(np.asarray(x) ** 2))],
                         ids=["scipy.optimize.rosen", "np.asarray"])
def test_numpy_objective_is_refused_saying_how_to_write_it_in_torch(entry, numpy_f):
    # before: torch's "Can't call numpy() on Tensor that requires grad. Use tensor.detach().numpy()"
    # leaked, whose advice leads into the "not connected" error
    with pytest.raises(TypeError, match=r"converts the tensor x to NumPy.*torch operations.*Rosenbrock"):
        NUMPY_ENTRY_POINTS[entry](numpy_f)


STOPPING_METHODS = ["bfgs", "lbfgs", "newton-cg", "trust-ncg", "trust-exact", "newton-damped", "gd"]


@pytest.mark.parametrize("method", STOPPING_METHODS)
@pytest.mark.parametrize("stop_at", [1, 3])
def test_callback_raising_stop_iteration_ends_the_run_with_the_iterate_so_far(method, stop_at):
    seen = []

    def callback(x):
        seen.append(x.clone())
        if len(seen) == stop_at:
            raise StopIteration

    r = hesse.minimize(rosen, X0, method=method, callback=callback)
    # before: the StopIteration escaped from hesse.minimize
    assert r.status == CALLBACK and not r.success and "StopIteration" in r.message
    assert r.nit == stop_at and torch.equal(r.x, seen[-1])
    assert r.fun == pytest.approx(float(rosen(seen[-1])), rel=1e-14)  # the value at that iterate


def test_callback_stop_iteration_in_least_squares_too():
    def callback(x, f, gnorm):
        raise StopIteration

    r = hesse.least_squares(lambda x: torch.stack([10 * (x[1] - x[0] ** 2), 1 - x[0]]), X0,
                            callback=callback)
    assert r.status == CALLBACK and r.nit == 1 and not r.success


@pytest.mark.parametrize("method", STOPPING_METHODS)
def test_callback_intermediate_result_gets_a_result_record_like_scipy(method):
    got = []

    def callback(intermediate_result):
        got.append(intermediate_result)

    r = hesse.minimize(rosen, X0, method=method, callback=callback, max_iter=5)
    # before: a tensor was passed (or TypeError after the run started)
    assert len(got) == r.nit
    last = got[-1]
    assert isinstance(last, hesse.OptimizeResult)
    assert torch.equal(last.x, r.x) and last.fun == r.fun and last.nit == r.nit
    assert last.status == -1 and not last.success
    # x is a copy: later iterations do not overwrite what the callback kept
    assert [g.nit for g in got] == list(range(1, r.nit + 1))
    assert all(g.fun == pytest.approx(float(rosen(g.x)), rel=1e-14) for g in got)


def test_intermediate_result_callback_matches_scipy_iterates_on_bfgs():
    ours, theirs = [], []
    hesse.minimize(rosen, X0, method="BFGS", callback=lambda intermediate_result: ours.append(
        intermediate_result.fun))
    so.minimize(so.rosen, X0, method="BFGS", jac=so.rosen_der,
                callback=lambda intermediate_result: theirs.append(intermediate_result.fun))
    # one record per iteration, decreasing f, down to the minimum like scipy's; the same algorithm
    # (N&W Alg. 6.1, H_0 = I, the same first step): the same number of iterations +- 2
    assert ours == sorted(ours, reverse=True) and abs(len(ours) - len(theirs)) <= 2
    assert ours[-1] < 1e-9 and theirs[-1] < 1e-9


def test_intermediate_result_callback_can_stop_with_stop_iteration():
    def callback(intermediate_result):
        if intermediate_result.fun < 1.0:
            raise StopIteration

    r = hesse.minimize(rosen, X0, method="bfgs", callback=callback)
    assert r.status == CALLBACK and r.fun < 1.0 and not r.success


def test_every_method_in_the_registry_honours_stop_iteration():
    for method in METHODS:
        def callback(x):
            raise StopIteration
        opts = {"lr": 1e-3} if method in ("gd", "momentum", "nesterov") else {}
        r = hesse.minimize(rosen, X0, method=method, callback=callback, **opts)
        assert r.status == CALLBACK and r.nit == 1, method


SCALES = [1e-50, 1e-20, 1e-5, 1.0, 1e5, 1e20, 1e50]


@pytest.mark.parametrize("method", ["bfgs", "lbfgs", "dfp"])
@pytest.mark.parametrize("scale", SCALES)
def test_quasi_newton_solves_a_scaled_parabola_at_any_scale_like_scipy(method, scale):
    # f = s (x - 1)^2 from -1 (scipy's test_bfgs_scale): scipy's BFGS solves every s in 2-3
    # iterations. Before: s = 1e20, 1e50 stopped with status 6 (the expanded inverse update
    # returned exactly 0) and s = 1e-20, 1e-50 too (every trial step ~ 4e-20 rounded away)
    r = hesse.minimize(lambda x: scale * ((x - 1) ** 2).sum(), [-1.0], method=method,
                       gtol=scale * 1e-8)
    ref = so.minimize(lambda x: scale * ((x - 1) ** 2).sum(), [-1.0], method="BFGS",
                      jac=lambda x: 2 * scale * (x - 1), options={"gtol": scale * 1e-8})
    assert ref.success and abs(ref.x[0] - 1) < 1e-7
    # the 1-D secant step is exact: x = 1 to rounding (8 ulp)
    assert r.success and abs(float(r.x[0]) - 1) <= 8 * 2.2e-16, r.message
    assert r.nit <= 4


@pytest.mark.parametrize("method, options", [("bfgs", {"scale_h0": True}),
                                             ("bfgs", {"scale_h0": True, "initial_step": "unit"}),
                                             ("lbfgs", {})])
@pytest.mark.parametrize("scale", [1e-50, 1e-20, 1e20, 1e50])
def test_quasi_newton_iterates_are_invariant_to_the_scale_of_f(method, options, scale):
    # in exact arithmetic BFGS with a scale-invariant start has the same iterates for f and c f
    # (H_k scales by 1/c, g_k by c); in floating point they agree to a few hundred ulp over
    # 8 iterations of a 4-D ill-conditioned quadratic plus quartic (rel 1e-10)
    d = torch.tensor([1.0, 3.0, 10.0, 30.0], dtype=torch.float64)

    def f(x):
        return (d * (x - 1) ** 2).sum() + 0.1 * (x**4).sum()

    x0 = [-1.0, 0.5, 2.0, -0.3]
    base = hesse.minimize(f, x0, method=method, gtol=0.0, max_iter=8, **options)
    scaled = hesse.minimize(lambda x: scale * f(x), x0, method=method, gtol=0.0, max_iter=8, **options)
    assert scaled.nit == base.nit
    for a, b in zip(base.history.iterates, scaled.history.iterates):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-50, 1.0, 1e50])
def test_bfgs_update_keeps_its_relative_accuracy_at_any_scale(scale):
    # H_0 = I, one secant pair of f = scale * x^T D x / 2: the exact update is known in closed
    # form along s (H+ y = s) and for n = 1 H+ = s / y = 1 / (scale d)
    H = torch.eye(1, dtype=torch.float64)
    s, y = torch.tensor([2.0], dtype=torch.float64), torch.tensor([2.0 * scale], dtype=torch.float64)
    Hp = bfgs_update(H, s, y)
    assert float(Hp[0, 0]) == pytest.approx(1.0 / scale, rel=1e-15)
    gen = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))[0]
    A = scale * Q @ torch.diag(torch.tensor([1.0, 2, 5, 10, 100], dtype=torch.float64)) @ Q.T
    s = torch.randn(5, generator=gen, dtype=torch.float64)
    Hp = bfgs_update(torch.eye(5, dtype=torch.float64) / scale, s, A @ s)
    torch.testing.assert_close(Hp @ (A @ s), s, rtol=1e-12, atol=0.0)  # the secant condition
    assert torch.equal(Hp, Hp.T)


def test_bfgs_result_carries_hess_inv_like_scipy():
    # on a quadratic 1/2 x^T A x the BFGS inverse approximation approaches A^{-1} (N&W Thm 6.6
    # needs exact line searches; with strong Wolfe it is close after convergence, as scipy's)
    A = torch.tensor([[3.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 5.0]], dtype=torch.float64)
    r = hesse.minimize(lambda x: 0.5 * x @ A @ x - x.sum(), [1.0, -2.0, 0.5], method="BFGS", gtol=1e-10)
    ref = so.minimize(lambda x: 0.5 * x @ A.numpy() @ x - x.sum(), [1.0, -2.0, 0.5], method="BFGS",
                      jac=lambda x: A.numpy() @ x - 1, options={"gtol": 1e-10})
    assert r.hess_inv is not None and r.hess_inv.shape == (3, 3)
    Ainv = torch.linalg.inv(A)
    ours = float(torch.linalg.norm(r.hess_inv - Ainv) / torch.linalg.norm(Ainv))
    theirs = float(np.linalg.norm(ref.hess_inv - Ainv.numpy()) / np.linalg.norm(Ainv.numpy()))
    assert ours < max(2 * theirs, 0.05)
    assert hesse.minimize(rosen, X0, method="dfp").hess_inv.shape == (2, 2)
    assert hesse.minimize(rosen, X0, method="newton").hess_inv is None


@pytest.mark.parametrize("method", ["bfgs", "newton-cg", "trust-ncg", "gd"])
@pytest.mark.parametrize("option, hesse_name, takers", [
    ("maxcor", "memory", "'lbfgs'"), ("memory", "memory", "'lbfgs'"),
    ("max_trust_radius", "max_radius", "'trust-ncg' or 'trust-exact' or 'sr1'"),
    ("initial_trust_radius", "initial_radius", "'trust-ncg' or 'trust-exact' or 'sr1'"),
])
def test_an_option_of_another_method_is_named_as_written_with_the_methods_that_take_it(
        method, option, hesse_name, takers):
    if option.endswith("trust_radius") and method == "trust-ncg":
        pytest.skip("trust-ncg takes it")
    # before: "unknown option(s) 'memory' ... Did you mean 'max_memory'?" (the byte limit)
    with pytest.raises(TypeError) as err:
        hesse.minimize(rosen, X0, method=method, options={option: 3})
    text = str(err.value)
    assert f"unknown option(s) {option!r}" in text and f"is an option of method={takers}" in text
    assert "Did you mean 'max_memory'" not in text
    if option != hesse_name:
        assert f"hesse's {hesse_name!r}" in text


def test_a_misspelt_option_still_gets_the_closest_name():
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'scale_h' .*Did you mean 'scale_h0'"):
        hesse.minimize(rosen, X0, method="bfgs", scale_h=True)


TRUST_REGION_METHODS = ["trust-ncg", "trust-exact", "sr1"]


@pytest.mark.parametrize("method", TRUST_REGION_METHODS)
@pytest.mark.parametrize("max_radius", [0.05, 0.3])
@pytest.mark.parametrize("spelling", ["max_trust_radius", "max_radius"])
def test_max_trust_radius_alone_bounds_every_step(method, max_radius, spelling):
    # before: max_trust_radius=0.05 alone was ignored by the first steps (0.155, 0.25, 0.381 on
    # Rosenbrock): the initial radius 1 was not lowered to the maximum
    r = hesse.minimize(rosen, X0, method=method, options={spelling: max_radius}, max_iter=20)
    steps = r.history.step_sizes[1:]
    # the exact subproblem puts ||p|| on the boundary to 1e-10 relative (its stopping test), and
    # the recorded ||x_{k+1} - x_k|| rounds once more: 1e-9
    assert steps and max(steps) <= max_radius * (1 + 1e-9)


@pytest.mark.parametrize("method", TRUST_REGION_METHODS)
def test_initial_trust_radius_above_the_maximum_is_refused_like_scipy(method):
    with pytest.raises(ValueError, match=r"initial_radius .*initial_trust_radius.* = 2 is larger than "
                                         r"max_radius .* = 0\.5"):
        hesse.minimize(rosen, X0, method=method, options={"initial_trust_radius": 2.0,
                                                          "max_trust_radius": 0.5})
    with pytest.raises(ValueError):  # scipy refuses the same
        so.minimize(so.rosen, X0, jac=so.rosen_der, hess=so.rosen_hess, method="trust-exact",
                    options={"initial_trust_radius": 2.0, "max_trust_radius": 0.5})
