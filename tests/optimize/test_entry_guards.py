"""Every optimize entry point refuses what it cannot honestly answer: an f not connected to x, a
non-finite or empty start, and dense matrices over the memory guard (refused before allocating).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hesse
from hesse.optimize import METHODS

BATCHED_METHODS = [name for name, spec in METHODS.items() if spec.batched]

DISCONNECTED = {
    "item": lambda x: torch.tensor(x[0].item() ** 2 + x[1].item() ** 2),
    "numpy": lambda x: torch.as_tensor(np.sum(x.detach().numpy() ** 2)),
}
FIRST_ORDER_LR = {"gd": {"lr": 0.1}, "momentum": {"lr": 0.1}, "nesterov": {"lr": 0.1}}
DISCONNECTED_MESSAGE = r"does not depend on x.*\.item\(\).*torch\.tensor.*NumPy"


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", DISCONNECTED)
def test_minimize_refuses_f_not_connected_to_x(method, kind):
    # unguarded: a zero gradient at x0, reported as status 0 "converged to a minimum"
    with pytest.raises(ValueError, match=DISCONNECTED_MESSAGE):
        hesse.minimize(DISCONNECTED[kind], [1.0, 2.0], method=method)


def test_minimize_lr_auto_reports_disconnection_not_curvature():
    with pytest.raises(ValueError, match=DISCONNECTED_MESSAGE):
        hesse.minimize(DISCONNECTED["item"], [1.0, 2.0], method="gd")


@pytest.mark.parametrize("method", BATCHED_METHODS)
def test_batched_minimize_refuses_f_not_connected_to_x(method):
    with pytest.raises(ValueError, match=DISCONNECTED_MESSAGE):
        hesse.minimize(DISCONNECTED["item"], [[1.0, 2.0], [0.5, 0.1]], method=method, batched=True,
                       **FIRST_ORDER_LR.get(method, {}))


def test_batched_minimize_explains_data_dependent_control_flow():
    def f(x):
        return (x**2).sum() if x[0] > 0 else (x**4).sum()

    with pytest.raises(ValueError, match=r"vmap.*torch\.where.*batched=False"):
        hesse.minimize(f, [[1.0, 2.0]], method="bfgs", batched=True)


@pytest.mark.parametrize("method", ["lm", "gauss-newton"])
def test_least_squares_refuses_residuals_not_connected_to_x(method):
    with pytest.raises(ValueError, match=r"residuals\(x\) does not depend on x"):
        hesse.least_squares(lambda x: torch.tensor([x[0].item() - 1.0, x[1].item()]), [3.0, 2.0],
                            method=method)


@pytest.mark.parametrize("method", ["bfgs", "newton", "trust-ncg", "lbfgs"])
def test_constant_written_with_torch_ops_is_a_minimum_everywhere(method):
    # connected to x with zero gradient and zero Hessian: every point is a (non-strict) minimum
    r = hesse.minimize(lambda x: x.sum() * 0 + 1, [1.0, 2.0], method=method)
    assert r.success and r.nit == 0 and r.fun == 1.0


CALLS = {
    "minimize": lambda x0: hesse.minimize(lambda x: (x**2).sum(), x0),
    "minimize newton": lambda x0: hesse.minimize(lambda x: (x**2).sum(), x0, method="newton"),
    "least_squares": lambda x0: hesse.least_squares(lambda x: x.reshape(-1) - 1, x0),
}


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("point, where", [([float("nan"), 1.0], r"x0\[0\] = nan"),
                                          ([1.0, -float("inf")], r"x0\[1\] = -inf")])
def test_non_finite_start_is_refused_with_positions(call, point, where):
    with pytest.raises(ValueError, match=rf"x0 is not finite at 1 position\(s\): {where}"):
        CALLS[call](point)


def test_batched_non_finite_start_names_row_and_column():
    X0 = torch.zeros(4, 3, dtype=torch.float64)
    X0[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x0\[\(2, 1\)\] = nan"):
        hesse.minimize(lambda x: (x**2).sum(), X0, method="newton", batched=True)


@pytest.mark.parametrize("call", CALLS)
def test_empty_start_is_refused_as_empty(call):
    with pytest.raises(ValueError, match=r"x0 is empty"):
        CALLS[call](torch.zeros(0, dtype=torch.float64))


def test_batched_empty_start_is_refused_as_empty():
    with pytest.raises(ValueError, match=r"x0 is empty"):
        hesse.minimize(lambda x: (x**2).sum(), torch.zeros(0, 3), method="bfgs", batched=True)


# --- memory guard: sizes far over the guard, refused before anything n x n is allocated -------

def guard_message(alternative: str) -> str:
    """The refusal names the size, the limit, the matrix-free alternative and both knobs."""
    return r"over the max_memory guard of .*" + alternative + r".*max_memory=.*HESSE_MAX_MEMORY"


def test_least_squares_large_jacobian_is_refused():
    # unguarded, this dies in torch's allocator (118190^2 float32 Jacobian = 52 GiB, plus jacrev's basis)
    with pytest.raises(ValueError, match=r"118190 x 118190 Jacobian.*GiB.*"
                       + guard_message(r"method='lbfgs' or 'newton-cg'")):
        hesse.least_squares(lambda z: z - 1, torch.zeros(118190))


def test_least_squares_guard_follows_max_memory_and_environment(monkeypatch):
    residuals = lambda z: z - 1  # noqa: E731
    x0 = torch.zeros(50, dtype=torch.float64)
    # the estimate for m = n = 50 float64: (m^2 + 3 m n + k (m + n)) * 8 = 120000 bytes
    with pytest.raises(ValueError, match=r"120000 bytes"):
        hesse.least_squares(residuals, x0, max_memory=100_000)
    r = hesse.least_squares(residuals, x0, max_memory=120_000)
    assert r.success
    torch.testing.assert_close(r.x, torch.ones(50, dtype=torch.float64), atol=1e-10, rtol=0)
    monkeypatch.setenv("HESSE_MAX_MEMORY", "100000")
    with pytest.raises(ValueError, match=r"over the max_memory guard of 97\.7 KiB"):
        hesse.least_squares(residuals, x0)


def test_batched_newton_many_starts_is_refused():
    # unguarded, 2000 starts x 400 variables take > 5 GB; the estimate (9 buffers of
    # 2000 x 400 x 400 float32) is 10.7 GiB
    with pytest.raises(ValueError, match=r"batched method='newton' on 2000 starts x 400 variables.*"
                       + guard_message("split x0 into chunks")):
        hesse.minimize(lambda x: (x**2).sum(), torch.zeros(2000, 400), method="newton", batched=True)


@pytest.mark.parametrize("method", BATCHED_METHODS)
def test_batched_guard_follows_max_memory(method):
    X0 = torch.ones(3, 4, dtype=torch.float64)
    opts = FIRST_ORDER_LR.get(method, {})
    with pytest.raises(ValueError, match="max_memory"):
        hesse.minimize(lambda x: (x**2).sum(), X0, method=method, batched=True, max_memory=1000, **opts)
    rs = hesse.minimize(lambda x: (x**2).sum(), X0, method=method, batched=True, max_memory=10**6, **opts)
    assert all(r.success for r in rs)


DENSE_METHODS = [name for name, spec in METHODS.items() if spec.dense_matrices]


def test_every_matrix_method_declares_its_dense_matrices():
    # the methods that keep an n x n matrix (dense Hessian or quasi-Newton matrix), by the math
    assert set(DENSE_METHODS) == {"newton", "newton-damped", "saddle-free-newton", "trust-exact",
                                  "sr1", "bfgs", "dfp"}


@pytest.mark.parametrize("method", DENSE_METHODS)
def test_dense_methods_are_refused_over_max_memory(method):
    x0 = torch.ones(100, dtype=torch.float64)
    # one 100 x 100 float64 matrix is 80 kB; every dense method holds several
    with pytest.raises(ValueError, match=rf"dense n x n matrices of method='{method}'.*"
                       + guard_message("'lbfgs', 'newton-cg' or 'trust-ncg'")):
        hesse.minimize(lambda x: (x**2).sum(), x0, method=method, max_memory=100_000)


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg", "trust-ncg"])
def test_matrix_free_methods_run_under_the_same_guard(method):
    x0 = torch.ones(100, dtype=torch.float64)
    r = hesse.minimize(lambda x: (x**2).sum(), x0, method=method, max_memory=100_000)
    assert r.success and float(r.x.abs().max()) < 1e-6
