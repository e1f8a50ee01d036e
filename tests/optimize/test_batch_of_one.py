"""A batch of one is the run of one: ``minimize(batched=True)`` takes the same Newton direction
(:func:`hesse._linalg.newton_direction`) and the same backtracking
(:func:`hesse.optimize.line_search.backtrack`) as the unbatched method, on indefinite problems too."""

import pytest
import torch

import hesse
from hesse._linalg import NEWTON_MODIFICATIONS, newton_direction, shifted_cholesky_solve
from hesse.testing.functions import get_problem

# box_3d is left out: its minima form a curve, and rounding-level differences between the
# vmapped and the plain Hessian pick different points of it
NAMES = ["rosenbrock", "beale", "helical_valley", "wood", "freudenstein_roth", "powell_singular",
         "brown_badly_scaled"]


def _starts(p):
    g = torch.Generator().manual_seed(1)
    return [p.x0] + [p.x0 + torch.randn(p.n, generator=g, dtype=torch.float64) for _ in range(2)]


@pytest.mark.parametrize("modification", ["lm", "eigen"])
@pytest.mark.parametrize("name", NAMES)
def test_newton_damped_batch_of_one_is_the_run_of_one(name, modification):
    p = get_problem(name)
    indefinite = 0
    for x0 in _starts(p):
        indefinite += float(torch.linalg.eigvalsh(hesse.hessian(p.f, x0))[0]) < 0
        a = hesse.minimize(p.f, x0, method="newton-damped", modification=modification,
                           line_search="armijo", max_iter=200)
        b = hesse.minimize(p.f, x0.unsqueeze(0), method="newton-damped", modification=modification,
                           batched=True, max_iter=200)[0]
        assert (a.status, a.nit, a.nfev) == (b.status, b.nit, b.nfev)
        # the same iterates up to the rounding of the vmapped vs the plain Hessian, float64
        torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-11)
    if name in ("beale", "helical_valley"):
        assert indefinite == 3  # the grid does exercise indefinite Hessians


def test_several_rows_are_each_their_run_of_one():
    p = get_problem("beale")
    X0 = torch.stack(_starts(p))
    rows = hesse.minimize(p.f, X0, method="newton-damped", batched=True)
    for x0, b in zip(X0, rows):
        a = hesse.minimize(p.f, x0, method="newton-damped", line_search="armijo")
        assert (a.status, a.nit, a.nfev) == (b.status, b.nit, b.nfev)
        torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-11)


def _indefinite(seed, n=5):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.linspace(-3.0, 4.0, n, dtype=torch.float64)
    return Q @ torch.diag(lam) @ Q.T, torch.randn(n, generator=g, dtype=torch.float64), lam


@pytest.mark.parametrize("modification", NEWTON_MODIFICATIONS)
def test_newton_direction_block_equals_rows(modification):
    Hs, gs, lams = zip(*[_indefinite(s) for s in range(6)])
    H, G = torch.stack(Hs), torch.stack(gs)
    P = newton_direction(H, G, modification, damping=1e-4)
    for b in range(6):
        torch.testing.assert_close(P[b], newton_direction(H[b], G[b], modification, damping=1e-4),
                                   rtol=1e-12, atol=1e-12)


def test_newton_direction_meanings_against_dense_definitions():
    H, g, lam = _indefinite(0)
    lam_d, Q = torch.linalg.eigh(H)
    scale = float(lam_d.abs().max())
    eps = torch.finfo(H.dtype).eps
    # none: H^{-1} g (H is nonsingular here); eigen: eigenvalues clamped at sqrt(eps) scale;
    # absolute: |lambda|; lm: N&W Alg. 3.3, the smallest tau of its sequence making H + tau I PD
    torch.testing.assert_close(newton_direction(H, g, "none"), -torch.linalg.solve(H, g))
    clamp = lam_d.clamp(min=eps ** 0.5 * scale)
    torch.testing.assert_close(newton_direction(H, g, "eigen"), -Q @ ((Q.T @ g) / clamp))
    torch.testing.assert_close(newton_direction(H, g, "absolute", damping=1e-4),
                               -Q @ ((Q.T @ g) / lam_d.abs().clamp(min=1e-4 * scale)))
    p = newton_direction(H, g, "lm")
    torch.testing.assert_close(p, shifted_cholesky_solve(H, g))
    tau = float(((H @ p + g) / -p).mean())  # (H + tau I) p = -g  =>  tau from the residual
    torch.testing.assert_close(-(H + tau * torch.eye(5, dtype=H.dtype)) @ p, g)
    assert float(torch.linalg.eigvalsh(H)[0]) + tau > 0 and float(g @ p) < 0
    with pytest.raises(ValueError, match="unknown Newton modification"):
        newton_direction(H, g, "shift")
