import math

import pytest
import torch
from torch import nn

from hesse import GGNOperator
from hesse.demo_models import digits_data, digits_mlp
from hesse.optim import AdaHessian, HessianFree, NaturalGradient
from hesse.optim.hessian_free import cg_with_iterates


def _small_problem():
    X, y = digits_data(32, dtype=torch.float64)
    model = digits_mlp(hidden=8, depth=1, dtype=torch.float64)
    return model, nn.CrossEntropyLoss(), X, y


def test_cg_solves_damped_ggn_system_to_tolerance():
    """CG on (G + λI) p = −g with G = GGNOperator(...).to_dense(): the relative residual meets
    the tolerance (1e-10) and p matches torch.linalg.solve (error <= cond · tol ≈ 1e-7)."""
    model, loss_fn, X, y = _small_problem()
    op = GGNOperator(model, loss_fn, (X, y))
    G = op.to_dense()
    g = op.gradient
    lam = 1e-2
    A = G + lam * torch.eye(len(G), dtype=G.dtype)
    p, kept, rec = cg_with_iterates(lambda v: A @ v, -g, None, 1e-10, 2000, progress_test=False)
    assert rec.converged and rec.message == "tolerance"
    assert float((A @ p + g).norm() / g.norm()) <= 1e-10
    torch.testing.assert_close(p, torch.linalg.solve(A, -g), rtol=1e-6, atol=1e-9)
    assert [i for i, _ in kept][:4] == [1, 2, 3, 4]  # ⌈1.3ʲ⌉ schedule


def test_hessian_free_step_solves_its_ggn_system_and_adapts_damping():
    """One HF step with cg_tol=1e-10: the reported residual is the true one of the damped
    GGN system (checked densely) and λ follows the Levenberg-Marquardt rule from ρ."""
    model, loss_fn, X, y = _small_problem()
    G = GGNOperator(model, loss_fn, (X, y))
    Gd, g = G.to_dense(), G.gradient
    opt = HessianFree(model, loss_fn, damping=0.5, cg_tol=1e-10, cg_max_iter=1000)

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        return loss

    opt.step(closure)
    rec = opt.last_solve
    assert rec.damping == 0.5 and rec.nit > 0
    p = torch.cat([opt.state[q]["direction"].reshape(-1) for q in model.parameters()])
    A = Gd + 0.5 * torch.eye(len(Gd), dtype=Gd.dtype)
    if rec.converged:  # the kept iterate is the last one unless backtracking chose an earlier one
        true_rel = float((A @ p + g).norm() / g.norm())
        assert true_rel <= 1e-7  # recursive vs true residual drift (cond(A) ~ 1e3)
    expected = 0.5 * (1.5 if rec.rho < 0.25 else (2 / 3 if rec.rho > 0.75 else 1.0))
    assert float(opt.state[next(model.parameters())]["damping"]) == pytest.approx(expected)


def test_errors_name_the_argument_and_fix():
    model, loss_fn, X, y = _small_problem()
    with pytest.raises(ValueError, match="damping must be"):
        HessianFree(model, loss_fn, damping=-1.0)
    with pytest.raises(ValueError, match="lr must be"):
        NaturalGradient(model, loss_fn, lr=-1.0)
    with pytest.raises(ValueError, match="kind"):
        NaturalGradient(model, loss_fn, kind="true")
    with pytest.raises(ValueError, match="lr must be"):
        AdaHessian(model.parameters(), lr=-1.0)

    def plain_loss(out, t):
        return nn.functional.cross_entropy(out, t)

    opt = HessianFree(model, plain_loss)

    def closure():
        opt.zero_grad()
        loss = plain_loss(model(X), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="inputs=..., targets="):
        opt.step(closure)
    opt.step(closure, inputs=X, targets=y)  # explicit batch works with a plain function
    ada = AdaHessian(model.parameters())
    with pytest.raises(ValueError, match="create_graph=True"):
        ada.step(closure)


def test_adahessian_on_diagonal_quadratic_is_scaled_newton():
    """f = ½ Σ h_i θ_i²: Hutchinson's z ⊙ Hz = diag(H) = h exactly (H diagonal, z² = 1), so with
    β₁ = β₂ = 0 the step is θ − lr θ (exact up to rounding)."""
    h = torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    w = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    opt = AdaHessian([w], lr=0.5, betas=(0.0, 0.0), eps=1e-12)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (h * w * w).sum()
        loss.backward(create_graph=True)
        return loss

    w0 = w.detach().clone()
    opt.step(closure)
    torch.testing.assert_close(w.detach(), 0.5 * w0, rtol=1e-10, atol=1e-10)  # eps=1e-12 in the denominator
    torch.testing.assert_close(opt.state[w]["hess_diag"], h, rtol=1e-12, atol=0)


@pytest.mark.parametrize("make", [lambda m, f: HessianFree(m, f, cg_decay=0.95),
                                  lambda m, f: NaturalGradient(m, f)], ids=["hf", "ng"])
def test_zero_gradient_after_a_warm_started_step_gives_no_step(make):
    """At a point with gradient exactly 0 the damped system (C + λI) p = 0 has the solution p = 0,
    whatever the warm start: the parameters stay where they are and the stored direction (the
    next warm start) is 0. The batch whose targets are the model's own outputs makes the MSE
    gradient exactly 0 (and its empirical Fisher 0), so the comparison is exact."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    loss_fn = nn.MSELoss()
    X = torch.randn(8, 3, dtype=torch.float64)
    opt = make(model, loss_fn)

    def closure(Y):
        def f():
            opt.zero_grad()
            loss = loss_fn(model(X), Y)
            loss.backward()
            return loss
        return f

    opt.step(closure(torch.randn(8, 2, dtype=torch.float64)))  # nonzero direction to warm-start from
    assert any(bool(opt.state[p]["direction"].abs().sum() > 0) for p in model.parameters())
    with torch.no_grad():
        Y0 = model(X)
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(closure(Y0))
    assert opt.last_solve.message == "zero right-hand side" and opt.last_solve.nit == 0
    for p, p0 in zip(model.parameters(), before):
        assert torch.equal(p.detach(), p0)
        assert torch.equal(opt.state[p]["direction"], torch.zeros_like(p))


def test_cg_record_follows_the_kernel_on_a_progress_stop():
    """Martens' progress test (§4.4) stops CG on an ill-conditioned SPD system before the residual
    tolerance: message "progress", not converged, the recursive residual reported equals the true
    one of the returned iterate (float64, SPD with cond 1e6: drift below 1e-8 relative), and the
    iterates are kept at ⌈1.3ʲ⌉ plus the last one."""
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=torch.float64))
    A = Q @ torch.diag(torch.logspace(-6, 0, 200, dtype=torch.float64)) @ Q.T
    b = torch.randn(200, generator=gen, dtype=torch.float64)
    x, kept, rec = cg_with_iterates(lambda v: A @ v, b, None, 1e-12, 500)
    assert rec.message == "progress" and not rec.converged and 10 < rec.nit < 500
    assert rec.num_matvecs == rec.nit
    true_rel = float((b - A @ x).norm() / b.norm())
    assert rec.relative_residual == pytest.approx(true_rel, rel=1e-8)
    steps = [i for i, _ in kept]
    assert steps[-1] == rec.nit and torch.equal(kept[-1][1], x)
    assert set(steps[:-1]) <= {math.ceil(1.3**j) for j in range(40)} and steps[:4] == [1, 2, 3, 4]
    assert rec.relative_residual > 1e-12  # stopped by the progress test, not the tolerance
