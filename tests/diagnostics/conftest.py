"""Fixtures of the diagnostics tests: small problems with known Hessians."""

import pytest
import torch


@pytest.fixture
def linear_regression():
    """y ≈ X w with MSE: L(w) = mean((Xw - y)^2), Hessian 2 XᵀX / N exactly (float64)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(64, 1, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1, bias=False).double()
    H = 2 * X.T @ X / X.shape[0]
    return {"model": model, "loss_fn": torch.nn.MSELoss(), "data": (X, y), "H": H,
            "lambda_max": float(torch.linalg.eigvalsh(H)[-1])}


@pytest.fixture
def small_mlp():
    """A 64-16-16-10 tanh MLP on 128 digits (1,482 parameters), MSE to one-hot targets."""
    from hesse.demo_models import digits_data, digits_mlp

    X, y = digits_data(128, dtype=torch.float64)
    Y = torch.nn.functional.one_hot(y, 10).double()
    return {"model": digits_mlp(hidden=16, dtype=torch.float64), "loss_fn": torch.nn.MSELoss(), "data": (X, Y)}
