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
    # the same algorithm (N&W Alg. 6.1, same initial step): the same number of iterations +- 2
    assert abs(len(ours) - len(theirs)) <= 2 and ours[-1] < 1e-9 and theirs[-1] < 1e-9


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
