"""Sharpness measures against closed forms: on a least-squares model the loss is exactly quadratic
in the parameters, so each maximisation has a known answer; filter-normalised sharpness against a
dense Hessian and its invariance to the rescaling symmetry of ReLU networks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesse
from hesse.diagnostics.sharpness import (
    adaptive_sharpness,
    compare,
    epsilon_sharpness,
    filter_normalized_sharpness,
    filter_scales,
)


def _least_squares(scales=(1.0, 2.0, 3.0, 0.5), n=64, seed=0):
    """Linear regression whose design has orthogonal columns of the given norms (times sqrt(n)): the
    mean squared error has the diagonal Hessian 2 diag(scales²)."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, len(scales), generator=gen, dtype=torch.float64))
    X = Q * torch.tensor(scales, dtype=torch.float64) * n**0.5
    y = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(len(scales), 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, len(scales), generator=gen, dtype=torch.float64))
    return model, nn.MSELoss(), (X, y)


def _loss(model, loss_fn, data):
    with torch.no_grad():
        return float(loss_fn(model(data[0]), data[1]))


@pytest.mark.parametrize("epsilon", [1e-3, 5e-2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_epsilon_sharpness_equals_the_box_maximum_of_a_quadratic(epsilon, seed):
    """With a diagonal Hessian h ≥ 0 each coordinate's rise g_i z_i + h_i z_i²/2 on [-a_i, a_i] is
    largest at z_i = sign(g_i) a_i: the box maximum is known in closed form. L-BFGS-B ends on that
    vertex, so the two agree to float64 roundoff (1e-9 relative)."""
    model, lf, data = _least_squares(seed=seed)
    before = model.weight.detach().clone()
    w = model.weight.detach().reshape(-1)
    X, y = data
    g = (2 / len(X)) * X.T @ (X @ w[:, None] - y)
    h = (2 / len(X)) * (X * X).sum(0)
    a = epsilon * (w.abs() + 1)
    base = _loss(model, lf, data)
    rise = float((g.reshape(-1).abs() * a + 0.5 * h * a * a).sum())
    res = epsilon_sharpness(model, lf, data, epsilon=epsilon)
    assert res.value == pytest.approx(100 * rise / (1 + base), rel=1e-9)
    assert res.loss == pytest.approx(base, rel=1e-12) and res.perturbed_loss == pytest.approx(base + rise, rel=1e-9)
    assert torch.equal(model.weight, before)  # the model is not changed


def test_adaptive_sharpness_at_a_minimum_is_half_rho_squared_lambda_max():
    """At the least-squares solution (g = 0) the rise in the ball ‖u‖ <= ρ of L(θ + T u) is
    ρ²/2 λ_max(T H T): the ascent converges to the top eigenvector (eigenvalue ratio 4 here, 60
    steps: far below the 1e-8 tolerance)."""
    model, lf, data = _least_squares(scales=(1.0, 2.0, 0.5, 0.25))
    X, y = data
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y).solution.T)
    w = model.weight.detach().reshape(-1)
    H = (2 / len(X)) * X.T @ X
    T = torch.diag(w.abs())
    lam = float(torch.linalg.eigvalsh(T @ H @ T)[-1])
    res = adaptive_sharpness(model, lf, data, rho=0.3, eta=0.0, steps=60)
    assert res.value == pytest.approx(0.5 * 0.3**2 * lam, rel=1e-8)


def test_adaptive_sharpness_is_at_least_the_first_order_step():
    """Away from a minimum the first iterate is ASAM's first-order maximiser: the reported rise is
    never below the rise there (it is the maximum over the iterates)."""
    model, lf, data = _least_squares(seed=3)
    X, y = data
    w = model.weight.detach().reshape(-1)
    t = w.abs() + 0.01
    g = ((2 / len(X)) * X.T @ (X @ w[:, None] - y)).reshape(-1)
    u0 = 0.5 * t * g / (t * g).norm()
    probe = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        probe.weight.copy_((w + t * u0)[None])
    first = _loss(probe, lf, data) - _loss(model, lf, data)
    res = adaptive_sharpness(model, lf, data, rho=0.5, eta=0.01, steps=10)
    assert first > 0 and res.value >= first * (1 - 1e-12)


def _relu_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2)).double()
    X = torch.randn(40, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (40,))
    return model, nn.CrossEntropyLoss(), (X, y)


def test_filter_normalized_sharpness_against_a_dense_hessian():
    """λ_max(D H D) with H from autograd (dense) and D from the filter norms: eigsh agrees to 1e-6."""
    model, lf, data = _relu_mlp()
    params = list(model.parameters())
    H = hesse.HessianOperator(model, lf, data).to_dense()
    d = torch.cat([s.reshape(-1) for s in filter_scales(params)])
    exact = float(torch.linalg.eigvalsh(d[:, None] * H * d[None, :])[-1])
    assert filter_normalized_sharpness(model, lf, data).value == pytest.approx(exact, rel=1e-6)
    # the filter norms: row norms for weights, magnitudes for biases
    torch.testing.assert_close(filter_scales(params)[0][:, 0], params[0].detach().norm(dim=1))
    torch.testing.assert_close(filter_scales(params)[1], params[1].detach().abs())


@pytest.mark.parametrize("alpha", [3.0, 0.2])
def test_filter_normalized_sharpness_is_invariant_to_relu_rescaling(alpha):
    """Scaling the first layer (weights and biases) by α and the second layer's weights by 1/α
    leaves a ReLU network's function unchanged (Dinh et al. 2017): λ_max(H) moves, λ_max(D H D) does
    not (to the eigensolver's 1e-6)."""
    model, lf, data = _relu_mlp()
    plain = hesse.eigsh(hesse.HessianOperator(model, lf, data), k=1).values[0]
    before = filter_normalized_sharpness(model, lf, data).value
    with torch.no_grad():
        model[0].weight.mul_(alpha)
        model[0].bias.mul_(alpha)
        model[2].weight.div_(alpha)
    moved = hesse.eigsh(hesse.HessianOperator(model, lf, data), k=1).values[0]
    assert abs(float(moved) / float(plain) - 1) > 0.1
    assert filter_normalized_sharpness(model, lf, data).value == pytest.approx(before, rel=1e-6)


def test_compare_puts_each_measure_in_its_row():
    runs = {"a": _least_squares(seed=0), "b": {"model": _relu_mlp()[0], "loss_fn": nn.CrossEntropyLoss(),
                                               "data": _relu_mlp()[2]}}
    table = compare(runs, epsilon=1e-3)
    assert [r["name"] for r in table.rows] == ["a", "b"]
    model, lf, data = runs["a"]
    row = table.rows[0]
    assert row["epsilon_sharpness"] == pytest.approx(epsilon_sharpness(model, lf, data, 1e-3).value, rel=1e-12)
    H = hesse.HessianOperator(model, lf, data).to_dense()
    lam = torch.linalg.eigvalsh(H)
    assert row["lambda_max"] == pytest.approx(float(lam[-1]), rel=1e-10)
    assert row["trace"] == pytest.approx(float(lam.sum()), rel=1e-10)
    assert row["negative_mass"] == 0.0  # a least-squares Hessian is PSD
    assert "eps-sharp %" in str(table) and str(table).count("\n") == 3


@pytest.mark.parametrize("call, match", [
    (lambda m, lf, d: epsilon_sharpness(m, lf, d, epsilon=0), "epsilon"),
    (lambda m, lf, d: epsilon_sharpness(m, lf, d, epsilon=float("nan")), "epsilon"),
    (lambda m, lf, d: adaptive_sharpness(m, lf, d, rho=-1), "rho"),
    (lambda m, lf, d: adaptive_sharpness(m, lf, d, eta=-0.1), "eta"),
    (lambda m, lf, d: adaptive_sharpness(m, lf, d, steps=1.5), "steps"),
    (lambda m, lf, d: compare({}), "runs"),
    (lambda m, lf, d: compare({"x": (m, lf)}), "runs"),
])
def test_bad_arguments_are_refused_by_name(call, match):
    model, lf, data = _least_squares()
    with pytest.raises((ValueError, TypeError), match=match):
        call(model, lf, data)
