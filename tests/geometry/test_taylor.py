"""Taylor models: exact on quadratics, error slopes 3 and 2 on smooth functions."""

import math

import pytest
import torch

import hesse


def quadratic(p):
    x, y = p[0], p[1]
    return 3 * x**2 + 2 * x * y + 2 * y**2 - 4 * x - 6 * y


def test_taylor_model_is_exact_on_a_quadratic():
    x0 = torch.tensor([0.5, -0.5], dtype=torch.float64)
    v = torch.tensor([0.3, 0.4], dtype=torch.float64)
    m = hesse.taylor(quadratic, x0, order=2)
    assert float(m(x0 + v)) == pytest.approx(float(quadratic(x0 + v)), abs=1e-12)
    assert float(m.error(x0 + v)) < 1e-12
    rep = m.error_slope()
    assert rep.exact  # every error at rounding level
    torch.testing.assert_close(m.hessian, torch.tensor([[6.0, 2.0], [2.0, 4.0]], dtype=torch.float64))


def test_exp_x_plus_y_taylor_series():
    m = hesse.taylor(lambda p: torch.exp(p[0] + p[1]), [0.0, 0.0])
    # 1 + (x + y) + (x + y)²/2
    h = torch.tensor([0.01, -0.02], dtype=torch.float64)
    assert float(m(h)) == pytest.approx(1 + (-0.01) + 0.0001 / 2, abs=1e-15)


@pytest.mark.parametrize("order,slope", [(2, 3.0), (1, 2.0)])
def test_error_slope_on_loglog(order, slope):
    def f(p):
        return torch.sin(p[0]) * torch.exp(p[1]) + p[0] ** 2 * p[2] + torch.cos(p[2])

    m = hesse.taylor(f, [0.3, -0.2, 0.5], order=order)
    rep = m.error_slope(seed=1)
    assert not rep.exact
    assert rep.slope == pytest.approx(slope, abs=0.1)  # O(‖v‖^(order+1)); radii 1e-3..3e-2


def test_batch_evaluation_and_first_order_has_no_hessian():
    m = hesse.taylor(quadratic, [0.0, 0.0], order=1)
    assert m.hessian is None
    X = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(m(X), torch.tensor([-4.0, -6.0], dtype=torch.float64))
    assert math.isnan(hesse.taylor(lambda p: p.sum(), [0.0]).error_slope().slope)


def test_bad_input():
    with pytest.raises(ValueError, match="order"):
        hesse.taylor(quadratic, [0.0, 0.0], order=3)
    m = hesse.taylor(quadratic, [0.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        m(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="radii"):
        m.error_slope(radii=[0.1])
