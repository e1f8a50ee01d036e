"""classify: textbook worked examples (quadratics, saddles, degenerate points) and high-dimensional
quadratics with prescribed index. Tolerances: Hessians of polynomials by autodiff are exact up to
rounding, so 1e-10 relative unless stated."""

import math

import numpy as np
import pytest
import sympy
import torch

import hesse


def T(*a):
    return torch.tensor(a, dtype=torch.float64)


def test_paraboloid_eigenvalues_2_8_kappa_4():
    cp = hesse.classify(lambda p: p[0] ** 2 + 4 * p[1] ** 2, T(0.0, 0.0))
    assert cp.kind == "minimum" and cp.index == 0 and cp.nullity == 0 and cp.order == 2
    torch.testing.assert_close(cp.eigenvalues, T(2.0, 8.0), rtol=1e-12, atol=1e-12)
    assert cp.condition_number == pytest.approx(4.0, rel=1e-12)


def test_saddle_x2_minus_y2():
    cp = hesse.classify(lambda p: p[0] ** 2 - p[1] ** 2, [0.0, 0.0])
    assert cp.kind == "saddle" and cp.index == 1
    torch.testing.assert_close(cp.eigenvalues, T(-2.0, 2.0))


def test_quadratic_worked_example():
    def f(p):
        x, y = p[0], p[1]
        return 3 * x**2 + 2 * x * y + 2 * y**2 - 4 * x - 6 * y

    cp = hesse.classify(f, T(0.2, 1.4))
    assert cp.kind == "minimum"
    assert cp.gradient_norm < 1e-12
    # printed with 6 decimals in the seed: compare at 5e-7
    assert cp.eigenvalues.tolist() == pytest.approx([2.763932, 7.236068], abs=5e-7)
    assert cp.condition_number == pytest.approx(2.618034, abs=5e-7)
    assert cp.value == pytest.approx(-4.6, abs=1e-12)


def test_nine_critical_points_classified_at_known_locations():
    def f(p):
        return p[0] ** 4 + p[1] ** 4 - 2 * p[0] ** 2 - 2 * p[1] ** 2 + 1

    kinds = {}
    for a in (-1.0, 0.0, 1.0):
        for b in (-1.0, 0.0, 1.0):
            kinds[(a, b)] = hesse.classify(f, T(a, b)).kind
    assert kinds[(0.0, 0.0)] == "maximum"
    assert sum(k == "saddle" for k in kinds.values()) == 4
    assert all(kinds[(a, b)] == "minimum" for a in (-1.0, 1.0) for b in (-1.0, 1.0))


def test_exp_x_plus_y_is_not_critical_eigenvalues_0_and_2():
    cp = hesse.classify(lambda p: torch.exp(p[0] + p[1]), [0.0, 0.0])
    assert cp.kind == "not critical"
    assert cp.gradient_norm == pytest.approx(math.sqrt(2), rel=1e-12)
    torch.testing.assert_close(cp.eigenvalues, T(0.0, 2.0), atol=1e-12, rtol=0)
    assert "not a critical point" in cp.reason


def test_x2y_plus_sin_xy_against_sympy():
    x, y = sympy.symbols("x y")
    expr = x**2 * y + sympy.sin(x * y)
    Hs = sympy.hessian(expr, (x, y))

    def f(p):
        return p[0] ** 2 * p[1] + torch.sin(p[0] * p[1])

    for pt in [(0.7, -0.3), (-1.0, 0.0), (0.0, 0.0)]:
        cp = hesse.classify(f, T(*pt))
        H = np.array(Hs.subs({x: pt[0], y: pt[1]}).evalf(), dtype=float)
        np.testing.assert_allclose(cp.hessian.numpy(), H, rtol=1e-12, atol=1e-12)
    # critical points: (0, 0) with H = [[0, 1], [1, 0]] and (-1, 0) with H = [[0, -1], [-1, 2]]: saddles
    assert hesse.classify(f, T(0.0, 0.0)).kind == "saddle"
    assert hesse.classify(f, T(-1.0, 0.0)).kind == "saddle"
    assert hesse.classify(f, T(0.7, -0.3)).kind == "not critical"


def test_rosenbrock_minimum_and_a_nearby_point():
    def f(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2

    cp = hesse.classify(f, [1.0, 1.0])
    lam = np.linalg.eigvalsh(np.array([[802.0, -400.0], [-400.0, 200.0]]))
    assert cp.kind == "minimum"
    np.testing.assert_allclose(cp.eigenvalues.numpy(), lam, rtol=1e-12)
    assert cp.condition_number == pytest.approx(lam[1] / lam[0], rel=1e-10)  # ≈ 2508
    at_half = hesse.classify(f, [0.5, 0.5])  # the seed's JAX snippet point
    assert at_half.kind == "not critical"
    np.testing.assert_allclose(at_half.hessian.numpy(), [[102.0, -200.0], [-200.0, 200.0]], rtol=1e-12)


@pytest.mark.parametrize("index", [0, 1, 7, 15, 29, 30])
def test_random_quadratic_with_prescribed_index(index):
    n = 30
    g = torch.Generator().manual_seed(index)
    mags = torch.rand(n, generator=g, dtype=torch.float64) * 5 + 0.1
    signs = torch.ones(n, dtype=torch.float64)
    signs[:index] = -1
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(signs * mags) @ Q.T
    A = 0.5 * (A + A.T)
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x_star = torch.linalg.solve(A, -b)
    cp = hesse.classify(lambda x: 0.5 * x @ A @ x + b @ x, x_star)
    expected = "minimum" if index == 0 else "maximum" if index == n else "saddle"
    assert cp.kind == expected and cp.index == index and cp.nullity == 0
    assert cp.condition_number == pytest.approx(float(mags.max() / mags.min()), rel=1e-8)


def test_classify_hessian_directly_matrix_and_operator():
    cp = hesse.classify(torch.diag(T(2.0, 8.0)))
    assert cp.kind == "minimum" and cp.condition_number == pytest.approx(4.0) and cp.x is None
    assert hesse.classify(T(-1.0, 0.0, 0.0, 0.0).reshape(2, 2)).kind == "inconclusive"
    assert hesse.classify([[1.0, 0.0], [0.0, -3.0]]).kind == "saddle"
    op = hesse.DenseOperator(torch.diag(torch.linspace(1.0, 10.0, 50, dtype=torch.float64)))
    big = hesse.classify(op, dense_limit=10)  # Lanczos route for "large" operators
    assert big.kind == "minimum" and big.nullity == 0
    assert big.condition_number == pytest.approx(10.0, rel=1e-6)  # ARPACK tol 1e-8
    assert "Lanczos" in big.reason
    op2 = hesse.DenseOperator(torch.diag(torch.linspace(-1.0, 10.0, 50, dtype=torch.float64)))
    assert hesse.classify(op2, dense_limit=10).kind == "saddle"


def test_tolerances_are_stated_and_scaled():
    cp = hesse.classify(lambda p: 1e6 * (p[0] ** 2 + p[1] ** 2), [0.0, 0.0])
    eps = torch.finfo(torch.float64).eps
    assert cp.eigenvalue_tol == pytest.approx(math.sqrt(eps) * 2e6)
    assert cp.gradient_tol == pytest.approx(math.sqrt(eps) * 2e6)
    assert "eigenvalue_tol" in repr(cp)


def test_bad_input():
    with pytest.raises(TypeError, match="x is missing"):
        hesse.classify(lambda p: p.sum())
    with pytest.raises(ValueError, match="scalar"):
        hesse.classify(lambda p: p * 2, [1.0, 2.0])
    with pytest.raises(TypeError, match="callable"):
        hesse.classify("x**2", [1.0])
    with pytest.raises(ValueError, match="not finite"):
        hesse.classify(lambda p: torch.log(p[0] - 1), [0.0])


@pytest.mark.parametrize("f", [
    lambda x: (x[0] - 1) ** 2 + x[1].item() ** 4,
    lambda x: (x[0] - 1) ** 2 + float(x[1]) ** 4,
    lambda x: (x[0] - 1) ** 2 + (x[1] ** 4 if float(x[1]) >= 0 else -x[1] ** 4),
], ids=["item", "float", "branch"])
def test_a_function_vmap_cannot_batch_gets_a_clear_error_at_a_degenerate_point(f):
    """The higher-order test vmaps f; a raw torch.func error surfaced before."""
    with pytest.raises(ValueError, match="torch.func.vmap"):
        hesse.classify(f, torch.tensor([1.0, 0.0], dtype=torch.float64))
