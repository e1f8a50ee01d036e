"""Gradient descent and momentum: the kappa law of the seeds, measured."""

import math

import pytest
import torch

import hesse


def _diag_quadratic(kappa):
    d = torch.tensor([1.0, kappa], dtype=torch.float64)

    def f(x):
        return 0.5 * (d * x * x).sum()

    return f


@pytest.mark.parametrize("kappa", [10.0, 100.0])
def test_gd_iterations_match_contraction(kappa):
    # lr = 2/(L + mu): the error contracts exactly by (kappa-1)/(kappa+1) per step along each axis
    f = _diag_quadratic(kappa)
    x0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    lr = 2.0 / (kappa + 1.0)
    gtol = 1e-8
    r = hesse.minimize(f, x0, method="gd", lr=lr, gtol=gtol, max_iter=100_000)
    assert r.success
    rho = (kappa - 1) / (kappa + 1)
    # ||g_k|| = rho^k * ||(1, kappa)||: predicted count, margin 1 iteration (ceil rounding)
    predicted = math.ceil(math.log(gtol / math.hypot(1.0, kappa)) / math.log(rho))
    assert abs(r.nit - predicted) <= 1
    ratios = [b / a for a, b in zip(r.history.grad_norms[:-1], r.history.grad_norms[1:])]
    assert max(abs(q - rho) for q in ratios) < 1e-9
    assert r.convergence_order == "linear"


def test_gd_iteration_count_grows_like_kappa():
    counts = {}
    for kappa in (10.0, 100.0, 1000.0):
        r = hesse.minimize(_diag_quadratic(kappa), [1.0, 1.0], method="gd", lr="auto", gtol=1e-6,
                           max_iter=100_000)
        assert r.success
        counts[kappa] = r.nit
    # with lr = 1/lambda_max the contraction is 1 - 1/kappa: count ~ kappa log(1/eps), so a 10x
    # larger kappa costs 10x +- 20% more iterations
    assert 8 < counts[100.0] / counts[10.0] < 12.5
    assert 8 < counts[1000.0] / counts[100.0] < 12.5


@pytest.mark.parametrize("method", ["momentum", "nesterov"])
def test_momentum_methods_beat_gd_on_ill_conditioned_quadratic(method):
    f = _diag_quadratic(100.0)
    gd = hesse.minimize(f, [1.0, 1.0], method="gd", lr="auto", gtol=1e-6, max_iter=100_000)
    r = hesse.minimize(f, [1.0, 1.0], method=method, lr="auto", gtol=1e-6, max_iter=100_000)
    assert r.success and r.nit < gd.nit / 3


def test_gd_lr_auto_uses_lanczos_products():
    r = hesse.minimize(_diag_quadratic(10.0), [1.0, 1.0], method="gd", lr="auto")
    assert r.num_matvecs > 0 and r.success
