"""The one method registry (what each entry declares drives validation and dispatch), the shared
Newton-step and BFGS kernels (checked against dense solves and the secant condition), and the
scipy-shaped result record."""

from __future__ import annotations

import pytest
import torch

import hesse
from hesse._linalg import (
    modify_eigenvalues,
    newton_direction,
    shifted_cholesky_solve,
    spectral_step,
)
from hesse.optimize.methods import LEAST_SQUARES_METHODS, METHODS, REGISTRY
from hesse.optimize.quasi_newton import bfgs_update

DT = torch.float64


def _symmetric(n, seed, eigenvalues):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    return Q @ torch.diag(torch.as_tensor(eigenvalues, dtype=DT)) @ Q.T


def test_registry_is_one_immutable_tuple():
    assert isinstance(REGISTRY, tuple)
    assert set(METHODS) | set(LEAST_SQUARES_METHODS) == {spec.name for spec in REGISTRY}
    assert set(LEAST_SQUARES_METHODS) == {"lm", "gauss-newton"}
    with pytest.raises(TypeError):
        METHODS["mine"] = REGISTRY[0]  # type: ignore[index]
    with pytest.raises(TypeError):
        METHODS["lbfgs"].options["memory"] = 3  # type: ignore[index]


def test_batched_refusal_lists_the_batched_methods():
    with pytest.raises(ValueError, match=r"batched=True supports method in 'gd', 'newton', "
                                         r"'newton-damped', 'bfgs'.*got 'lbfgs'"):
        hesse.minimize(lambda x: (x**2).sum(), [[1.0, 2.0]], method="lbfgs", batched=True)


def test_unknown_method_error_lists_what_each_method_needs():
    with pytest.raises(ValueError, match=r"'newton-cg' \(hvp\): Hessian-free"):
        hesse.minimize(lambda x: (x**2).sum(), [1.0], method="newton-xyz")
    with pytest.raises(ValueError, match=r"'lm' \(jacobian\).*got 'dogleg'"):
        hesse.least_squares(lambda x: x - 1, [0.0], method="dogleg")


@pytest.mark.parametrize("method,option,value", [
    ("bfgs", "initial_step", "cubic"), ("lbfgs", "h0", "oldest"), ("lbfgs", "memory", 0),
    ("momentum", "beta", 1.0), ("trust-ncg", "eta", -0.1), ("newton-cg", "cg_max_iter", 0),
    ("newton-damped", "modification", "cholesky"), ("gd", "lr", -1.0),
])
def test_each_method_checks_its_own_options(method, option, value):
    with pytest.raises(ValueError, match=option):
        hesse.minimize(lambda x: (x**2).sum(), [1.0, 2.0], method=method, **{option: value})


def test_least_squares_options_belong_to_their_method():
    # initial_radius_factor is Levenberg-Marquardt's; Gauss-Newton has no radius to scale
    with pytest.raises(TypeError, match=r"initial_radius_factor.*gauss-newton"):
        hesse.least_squares(lambda x: x - 1, [0.0], method="gauss-newton", initial_radius_factor=10.0)
    with pytest.raises(ValueError, match="initial_radius_factor"):
        hesse.least_squares(lambda x: x - 1, [0.0], method="lm", initial_radius_factor=0.0)
    assert hesse.least_squares(lambda x: x - 1, [0.0], method="lm", initial_radius_factor=10.0).success


@pytest.mark.parametrize("how,reference", [
    # each spectral modification against its dense definition (tolerance: a few ulps of
    # kappa = 1e2, the conditioning of the test matrices)
    ("keep", lambda H, lam, Q: H),
    ("clamp", lambda H, lam, Q: Q @ torch.diag(lam.clamp(min=0.5)) @ Q.T),
    ("absolute", lambda H, lam, Q: Q @ torch.diag(lam.abs().clamp(min=0.5)) @ Q.T),
    ("shift", lambda H, lam, Q: H + (0.5 - lam[0]).clamp_min(0) * torch.eye(len(lam), dtype=DT)),
])
@pytest.mark.parametrize("eigenvalues", [[3.0, 1.0, 2.0, 5.0], [-2.0, 1.0, 4.0, 0.8]])
def test_spectral_step_matches_dense_solve(how, reference, eigenvalues):
    H = _symmetric(4, 0, eigenvalues)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)
    lam, Q = torch.linalg.eigh(H)
    p = spectral_step(modify_eigenvalues(lam, how, 0.5), Q, g)
    if how == "keep":
        expected = torch.linalg.solve(H, -g)
    else:
        expected = torch.linalg.solve(reference(H, lam, Q), -g)
    torch.testing.assert_close(p, expected, rtol=1e-12, atol=1e-12)


def test_spectral_step_batched_equals_rows_and_pseudo_inverse_is_minimum_norm():
    Hs = torch.stack([_symmetric(4, s, ev) for s, ev in
                      enumerate([[1.0, 2.0, 3.0, 4.0], [0.0, 2.0, -1.0, 4.0], [0.0, 0.0, 1.0, 1.0]])])
    G = torch.randn(3, 4, dtype=DT, generator=torch.Generator().manual_seed(1))
    lam, Q = torch.linalg.eigh(Hs)
    floor = 1e-10 * lam.abs().amax(dim=1)
    P = spectral_step(modify_eigenvalues(lam, "pseudo-inverse", floor), Q, G)
    for b in range(3):
        row = spectral_step(modify_eigenvalues(lam[b], "pseudo-inverse", float(floor[b])), Q[b], G[b])
        torch.testing.assert_close(P[b], row, rtol=1e-13, atol=1e-13)
        # -H^+ g from numpy's pseudo-inverse (rounding of a 4 x 4 eigendecomposition)
        torch.testing.assert_close(P[b], -(torch.linalg.pinv(Hs[b], hermitian=True) @ G[b]),
                                   rtol=1e-10, atol=1e-10)


def test_cholesky_kernels():
    g = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    H = _symmetric(3, 2, [1.0, 2.0, 3.0])
    torch.testing.assert_close(shifted_cholesky_solve(H, g), torch.linalg.solve(H, -g))
    torch.testing.assert_close(newton_direction(H, g, "none"), torch.linalg.solve(H, -g))
    # indefinite: the shifted matrix is positive definite, so the step is a descent direction
    p = shifted_cholesky_solve(_symmetric(3, 2, [-1.0, 2.0, 3.0]), g)
    assert p is not None and float(g @ p) < 0
    assert bool(newton_direction(torch.zeros(3, 3, dtype=DT), g, "none").isnan().all())


def test_bfgs_update_batched_equals_rows_and_meets_secant_condition():
    gen = torch.Generator().manual_seed(3)
    H = torch.stack([_symmetric(5, s, [1.0, 2.0, 3.0, 4.0, 5.0]) for s in range(4)])
    S = torch.randn(4, 5, dtype=DT, generator=gen)
    Y = S + 0.1 * torch.randn(4, 5, dtype=DT, generator=gen)  # y^T s > 0
    Hn = bfgs_update(H, S, Y)
    for b in range(4):
        torch.testing.assert_close(Hn[b], bfgs_update(H[b], S[b], Y[b]), rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(Hn[b] @ Y[b], S[b], rtol=1e-12, atol=1e-12)  # H+ y = s


def test_result_reads_like_scipys(rosen):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="newton-damped")
    assert r.success and r["x"] is r.x and "jac" in r and "num_matvecs" in r.keys()
    x = r.x.detach().clone()
    # jac is the gradient at x and hess the Hessian there (same autodiff: agree to rounding)
    torch.testing.assert_close(r.jac, hesse.gradient(rosen, x), rtol=0, atol=1e-12)
    torch.testing.assert_close(r.hess, hesse.hessian(rosen, x), rtol=1e-12, atol=1e-12)
    assert not hasattr(r, "ngev") and not hasattr(r, "nhvp")  # one name per count: njev, num_matvecs
