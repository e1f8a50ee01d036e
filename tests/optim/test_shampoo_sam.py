import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from hesse.optim import SAM, Shampoo


def _direct_root(M, power, epsilon):
    """(M + εI)^(-1/power) by scipy.linalg.fractional_matrix_power (independent of eigh)."""
    M = M.numpy()
    eps = epsilon * np.linalg.eigvalsh(M)[-1] + 1e-30
    return torch.from_numpy(np.real(scipy.linalg.fractional_matrix_power(
        M + eps * np.eye(len(M)), -1.0 / power)))


def test_shampoo_preconditioner_matches_direct_computation():
    """After 3 steps with known gradients: L = Σ G Gᵀ, R = Σ GᵀG, step = −lr L^{-1/4} G R^{-1/4}.
    Tolerance 1e-8: float64 eigh vs scipy's Schur-based fractional power, cond <= 1e4."""
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    opt = Shampoo([w], lr=0.5, momentum=0.0, eps=1e-4, precondition_every=1, graft="none")
    grads = [torch.randn(3, 4, dtype=torch.float64) for _ in range(3)]
    for G in grads:
        before = w.detach().clone()
        w.grad = G.clone()
        opt.step()
    L = sum(G @ G.T for G in grads)
    R = sum(G.T @ G for G in grads)
    Li, Ri = _direct_root(L, 4, 1e-4), _direct_root(R, 4, 1e-4)
    st = opt.state[w]
    torch.testing.assert_close(st["L_inv_root"], Li, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(st["R_inv_root"], Ri, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(w.detach(), before - 0.5 * Li @ grads[-1] @ Ri, rtol=1e-8, atol=1e-10)


def test_shampoo_vector_uses_inverse_square_root_and_grafting_norm():
    """A 1-D parameter gets only L with power 2; with Adagrad grafting the step has the Adagrad
    step's norm (exact up to rounding)."""
    torch.manual_seed(1)
    b = nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = Shampoo([b], lr=0.1, momentum=0.0, precondition_every=1, graft="adagrad")
    G = torch.randn(5, dtype=torch.float64)
    before = b.detach().clone()
    b.grad = G.clone()
    opt.step()
    torch.testing.assert_close(opt.state[b]["L_inv_root"], _direct_root(torch.outer(G, G), 2, 1e-4),
                               rtol=1e-8, atol=1e-8)
    adagrad = G / (G.abs() + 1e-8)
    torch.testing.assert_close((b.detach() - before).norm(), 0.1 * adagrad.norm(), rtol=1e-10, atol=0)


def test_shampoo_errors():
    w = nn.Parameter(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="lr must be"):
        Shampoo([w], lr=-0.1)
    with pytest.raises(ValueError, match="graft must be"):
        Shampoo([w], graft="rmsprop")


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_perturbation_and_second_gradient(adaptive):
    """SAM: the closure's second call sees θ + ρ g/‖g‖ (ASAM: θ + ρ θ² g / ‖θ g‖); the SGD step
    uses the gradient there, from the original θ. f(θ) = Σ θ⁴/4 + θ₀θ₁, gradients exact."""
    theta0 = torch.tensor([0.7, -1.2, 0.4], dtype=torch.float64)
    w = nn.Parameter(theta0.clone())
    rho, lr = 0.05, 0.1
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)
    seen = []

    def f(t):
        return (t ** 4).sum() / 4 + t[0] * t[1]

    def closure():
        opt.zero_grad()
        seen.append(w.detach().clone())
        loss = f(w)
        loss.backward()
        return loss

    def grad_f(t):
        g = t ** 3
        return g + torch.stack([t[1], t[0], torch.zeros((), dtype=t.dtype)])

    loss = opt.step(closure)
    g = grad_f(theta0)
    eps = rho * (theta0 ** 2 * g / (theta0 * g).norm() if adaptive else g / g.norm())
    assert float(loss.detach()) == pytest.approx(float(f(theta0)), rel=1e-15)
    torch.testing.assert_close(seen[0], theta0, rtol=0, atol=0)
    torch.testing.assert_close(seen[1], theta0 + eps, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(w.detach(), theta0 - lr * grad_f(theta0 + eps), rtol=1e-12, atol=1e-14)


def test_sam_errors():
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rho must be"):
        SAM([w], torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(TypeError, match="base_optimizer_cls"):
        SAM([w], torch.optim.SGD([w], lr=0.1))
    with pytest.raises(ValueError, match="needs a closure"):
        SAM([w], torch.optim.SGD, lr=0.1).step()
