"""Exact GGN / empirical-Fisher diagonals against the dense operators' diagonals, float64.

``ggn_diagonal`` backpropagates the loss Hessian's square-root columns per sample (and per
position for sequence outputs); the reference is ``GGNOperator(...).to_dense().diagonal()``
(``FisherOperator(kind="empirical")`` for ``kind="empirical"``), independent implementations by
Jacobian-vector products. Tolerance 1e-12: float64 rounding on entries of size ~1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesse
from hesse.operators import ggn_diagonal


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class _ClassesFirst(nn.Module):
    """(N, T, C) -> (N, C, T), the layout cross-entropy expects for sequences."""

    def forward(self, z):
        return z.transpose(1, 2)


def _case(name, loss_name, reduction):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        X, target_shape = torch.randn(9, 4, generator=gen), (9, 3)
    elif name == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 3))
        X, target_shape = torch.randn(9, 2, 3, 3, generator=gen), (9, 3)
    else:  # sequence outputs (N, T, 3)
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        X, target_shape = torch.randn(9, 4, 4, generator=gen), (9, 4, 3)
    if loss_name == "ce":
        if name == "seq":
            model.append(_ClassesFirst())
        y = torch.randint(0, 3, target_shape[:-1], generator=gen)
        loss = nn.CrossEntropyLoss(reduction=reduction)
    elif loss_name == "mse":
        y, loss = torch.randn(target_shape, generator=gen), nn.MSELoss(reduction=reduction)
    else:
        y = (torch.rand(target_shape, generator=gen) < 0.5).double()
        loss = nn.BCEWithLogitsLoss(reduction=reduction)
    return model, loss, [(X[:5], y[:5]), (X[5:], y[5:])]


@pytest.mark.parametrize("name", ["mlp", "cnn", "seq"])
@pytest.mark.parametrize("loss_name", ["ce", "mse", "bce"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ggn_diagonal_is_exact(name, loss_name, reduction):
    model, loss, data = _case(name, loss_name, reduction)
    expected = hesse.GGNOperator(model, loss, data).to_dense().diagonal()
    assert torch.allclose(ggn_diagonal(model, loss, data), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["mlp", "seq"])
def test_empirical_diagonal_is_exact(name):
    model, loss, data = _case(name, "ce", "mean")
    expected = hesse.FisherOperator(model, loss, data, kind="empirical").to_dense().diagonal()
    assert torch.allclose(ggn_diagonal(model, loss, data, kind="empirical"), expected,
                          atol=1e-12, rtol=0)


def test_parameter_subset_and_errors():
    model, loss, data = _case("mlp", "ce", "mean")
    names = ["2.weight", "2.bias"]
    expected = hesse.GGNOperator(model, loss, data, names).to_dense().diagonal()
    assert torch.allclose(ggn_diagonal(model, loss, data, names), expected, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="kind='empirical'"):
        ggn_diagonal(model, nn.L1Loss(), data)
    with pytest.raises(ValueError, match="kind must be"):
        ggn_diagonal(model, loss, data, kind="mc")
