"""Batched multi-start, problem suite sanity, and matrix-free methods at large n."""

import pytest
import torch

import hesse
from hesse.testing.functions import PROBLEM_NAMES, get_problem, problem_suite


def himmelblau(x):
    return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2


HIMMELBLAU_MINIMA = torch.tensor([[3.0, 2.0], [-2.805118, 3.131312], [-3.779310, -3.283186],
                                  [3.584428, -1.848126]], dtype=torch.float64)


@pytest.mark.parametrize("method", ["newton-damped", "bfgs", "gd"])
def test_batched_multistart_matches_loop(method):
    g = torch.Generator().manual_seed(0)
    X0 = torch.rand(12, 2, generator=g, dtype=torch.float64) * 8 - 4
    opts = {"lr": 0.01} if method == "gd" else {}
    rs = hesse.minimize(himmelblau, X0, method=method, batched=True, **opts)
    assert len(rs) == 12
    for x0, rb in zip(X0, rs):
        assert rb.success, rb.message
        # every row reaches one of the four minima (published to 6 digits)
        assert float((HIMMELBLAU_MINIMA - rb.x).norm(dim=1).min()) < 1e-5
        rl = hesse.minimize(himmelblau, x0, method=method, **opts)
        if method == "gd":
            # same fixed-step recursion: same iterates, same count
            assert rb.nit == rl.nit and torch.allclose(rb.x, rl.x, atol=1e-8)
    assert len({r.nit for r in rs}) > 1  # each row has its own convergence state


def test_batched_newton_reports_saddles():
    X0 = torch.tensor([[-0.27, -0.92], [3.1, 2.1]], dtype=torch.float64)  # near a saddle / a minimum
    rs = hesse.minimize(himmelblau, X0, method="newton", batched=True)
    assert rs[0].status == 4 and not rs[0].success
    assert rs[1].success


def test_batched_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, n\)"):
        hesse.minimize(himmelblau, torch.zeros(2, dtype=torch.float64), method="bfgs", batched=True)
    with pytest.raises(ValueError, match="batched"):
        hesse.minimize(himmelblau, torch.zeros(3, 2, dtype=torch.float64), method="sr1", batched=True)


def test_problem_suite_known_minima():
    suite = problem_suite()
    assert len(suite) >= 15 and len(PROBLEM_NAMES) >= 15
    for p in suite:
        assert p.x0.shape == (p.n,)
        assert torch.isfinite(p.f(p.x0))
        if p.xmin is not None:
            assert float(p.f(p.xmin)) < 1e-12, p.name
        if p.residuals is not None:
            r = p.residuals(p.x0)
            assert torch.allclose(p.f(p.x0), r @ r)
    with pytest.raises(ValueError, match="multiple of 2"):
        get_problem("extended_rosenbrock", 3)
    with pytest.raises(ValueError, match="unknown problem"):
        get_problem("nope")


@pytest.mark.parametrize("method", ["lbfgs", "newton-cg", "trust-ncg"])
def test_matrix_free_methods_at_n_1e5(method):
    p = get_problem("extended_rosenbrock", 100_000)
    r = hesse.minimize(p.f, p.x0, method=method, gtol=1e-5, max_iter=500)
    assert r.success, r.message
    assert r.curvature_check.startswith("Lanczos")
    assert float((r.x - 1).abs().max()) < 1e-4


@pytest.mark.slow
def test_lbfgs_at_n_1e6():
    p = get_problem("extended_rosenbrock", 1_000_000)
    r = hesse.minimize(p.f, p.x0, method="lbfgs", gtol=1e-5, check_curvature=False)
    assert r.grad_norm < 1e-5 and r.success
