"""Higher-order analysis where the Hessian is singular (splitting lemma + nested jvp).

Ground truth comes from the closed forms and, for the coupled cases, from brute-force sampling
that shows the straight-line test and the true answer differ."""

import pytest
import torch

import hesse


def T(*a):
    return torch.tensor(a, dtype=torch.float64)


CASES = [
    ("x^4 + y^2", lambda p: p[0] ** 4 + p[1] ** 2, "degenerate minimum", 4),
    ("-x^4 - y^2", lambda p: -p[0] ** 4 - p[1] ** 2, "degenerate maximum", 4),
    ("x^4 - y^4", lambda p: p[0] ** 4 - p[1] ** 4, "degenerate saddle", 4),
    ("x^2 + y^3", lambda p: p[0] ** 2 + p[1] ** 3, "degenerate saddle", 3),
    ("monkey x^3 - 3xy^2", lambda p: p[0] ** 3 - 3 * p[0] * p[1] ** 2, "degenerate saddle", 3),
    ("x^4 (1-D)", lambda p: p[0] ** 4, "degenerate minimum", 4),
    ("x^4 - y^6", lambda p: p[0] ** 4 - p[1] ** 6, "degenerate saddle", 6),
]


@pytest.mark.parametrize("name,f,kind,order", CASES, ids=[c[0] for c in CASES])
def test_degenerate_points_decided(name, f, kind, order):
    x = torch.zeros(1 if "1-D" in name else 2, dtype=torch.float64)
    cp = hesse.classify(f, x)
    assert cp.nullity >= 1
    assert cp.kind == kind, cp.reason
    assert cp.order == order


def test_x4_against_x4_minus_y4_same_hessian_different_answer():
    a = hesse.classify(lambda p: p[0] ** 4 + p[1] ** 4, T(0.0, 0.0))
    b = hesse.classify(lambda p: p[0] ** 4 - p[1] ** 4, T(0.0, 0.0))
    assert torch.equal(a.hessian, b.hessian) and float(a.hessian.abs().max()) == 0.0
    assert (a.kind, b.kind) == ("degenerate minimum", "degenerate saddle")


def _coupled_2d(p):  # (y - x²)² - x⁴/2: every straight line through 0 shows a minimum; a saddle
    return (p[1] - p[0] ** 2) ** 2 - p[0] ** 4 / 2


def _coupled_3d(p):  # (z - x² - y²)² - (x² + y²)²/2: 2-D null space, same trap
    r2 = p[0] ** 2 + p[1] ** 2
    return (p[2] - r2) ** 2 - r2**2 / 2


@pytest.mark.parametrize("f,n", [(_coupled_2d, 2), (_coupled_3d, 3)])
def test_straight_lines_mislead_reduction_decides(f, n):
    g = torch.Generator().manual_seed(0)
    # the straight-line test says "minimum": every line has dᵀHd > 0 except those in the null
    # space (last coordinate 0), and along those f(t d) = t⁴|d|⁴/2 > 0
    H = hesse.hessian(f, torch.zeros(n, dtype=torch.float64))
    D = torch.randn(200, n, generator=g, dtype=torch.float64)
    assert bool((torch.einsum("ki,ij,kj->k", D, H, D) > 0).all())
    N = D.clone()
    N[:, -1] = 0
    N = N / N.norm(dim=1, keepdim=True)
    for t in (1e-1, -1e-2, 1e-3):
        vals = torch.stack([f(t * d) for d in N])
        torch.testing.assert_close(vals, torch.full_like(vals, t**4 / 2), rtol=1e-10, atol=0)
    # ... but on the curve z = |x|² (the valley) f < 0: the origin is a saddle
    for t in (1e-1, 1e-2, 1e-3):
        u = torch.zeros(n, dtype=torch.float64)
        u[0] = t
        u[-1] = t**2
        assert float(f(u)) < 0
    cp = hesse.classify(f, torch.zeros(n, dtype=torch.float64))
    assert cp.kind == "degenerate saddle", cp.reason
    assert "splitting lemma" in cp.reason
    assert cp.nullity == n - 1


def test_peano_surface_saddle():
    cp = hesse.classify(lambda p: (p[1] - p[0] ** 2) * (p[1] - 2 * p[0] ** 2), T(0.0, 0.0))
    assert cp.kind == "degenerate saddle"


def test_inconclusive_cases_say_why():
    line = hesse.classify(lambda p: p[0] ** 2, T(0.0, 0.0))  # a valley of minima along y
    assert line.kind == "non-isolated" and "(0, 1)" in line.reason and "valley" in line.reason
    semi = hesse.classify(lambda p: p[0] ** 4 + p[1] ** 6, T(0.0, 0.0))  # a minimum, not provable by lines
    assert semi.kind in ("inconclusive", "degenerate minimum")
    if semi.kind == "inconclusive":
        assert "semidefinite" in semi.reason
    off = hesse.classify(lambda p: p[0] ** 4 + p[1] ** 2, T(0.0, 0.0), higher_order=False)
    assert off.kind == "inconclusive" and "higher_order=False" in off.reason


def test_approximate_degenerate_point_is_polished():
    cp = hesse.classify(lambda p: p[0] ** 4 + p[1] ** 2, T(1e-6, 0.0))
    assert cp.kind == "degenerate minimum"
    assert "polished" in cp.reason and float(cp.x.abs().max()) < 1e-6


def test_higher_order_result_direct():
    f = lambda p: p[0] ** 3 - 3 * p[0] * p[1] ** 2  # noqa: E731
    x0 = T(0.0, 0.0)
    lam, Q = torch.linalg.eigh(hesse.hessian(f, x0))
    res = hesse.higher_order_analysis(f, x0, lam, Q, 1e-8)
    assert res.kind == "degenerate saddle" and res.order == 3 and res.num_directions == 64
