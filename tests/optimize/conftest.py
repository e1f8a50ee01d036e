import pytest
import torch


@pytest.fixture
def rosen():
    def f(x):
        return 100 * (x[1] - x[0] ** 2) ** 2 + (1 - x[0]) ** 2

    return f


def quadratic(A, b):
    """f(x) = 1/2 x^T A x - b^T x, minimizer A^{-1} b."""

    def f(x):
        return 0.5 * x @ (A @ x) - b @ x

    return f


@pytest.fixture
def spd_quadratic():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(5, 5, generator=g, dtype=torch.float64)
    A = M @ M.T + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    return A, b, quadratic(A, b)
