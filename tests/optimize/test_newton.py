"""Newton family: the textbook claims (one step on quadratics, affine invariance, quadratic
convergence on Rosenbrock, saddle behaviour)."""

import math

import pytest
import torch

import hesse
from hesse.optimize.result import SADDLE

from .conftest import quadratic


def test_newton_solves_quadratic_in_one_step(spd_quadratic):
    A, b, f = spd_quadratic
    r = hesse.minimize(f, torch.zeros(5, dtype=torch.float64), method="newton", gtol=1e-9)
    x_star = torch.linalg.solve(A, b)
    # one Newton step is exact up to the conditioning of the solve (cond(A) ~ 1e2): 1e-10
    assert r.nit == 1
    assert r.success and r.status == 0
    assert torch.allclose(r.x, x_star, atol=1e-10)


def _rosen_xy(z):
    return 100 * (z[1] - z[0] ** 2) ** 2 + (1 - z[0]) ** 2


def test_newton_affine_invariant_gd_not():
    # g(y) = f(M y): Newton's iterates satisfy x_k = M y_k exactly (Boyd & Vandenberghe 9.5.1)
    M = torch.tensor([[2.0, 1.0], [0.5, 3.0]], dtype=torch.float64)
    x0 = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    y0 = torch.linalg.solve(M, x0)

    def g(y):
        return _rosen_xy(M @ y)

    rx = hesse.minimize(_rosen_xy, x0, method="newton", max_iter=6, gtol=0.0)
    ry = hesse.minimize(g, y0, method="newton", max_iter=6, gtol=0.0)
    for xk, yk in zip(rx.history.iterates, ry.history.iterates):
        # rounding only (float64, a handful of O(1) solves): 1e-8
        assert torch.allclose(xk, M @ yk, atol=1e-8)
    gx = hesse.minimize(_rosen_xy, x0, method="gd", lr=1e-3, max_iter=6, gtol=0.0, check_curvature=False)
    gy = hesse.minimize(g, y0, method="gd", lr=1e-3, max_iter=6, gtol=0.0, check_curvature=False)
    diffs = [float((xk - M @ yk).norm()) for xk, yk in zip(gx.history.iterates, gy.history.iterates)]
    assert max(diffs) > 1e-2  # GD depends on the coordinates


@pytest.mark.parametrize("modification", ["lm", "eigen"])
def test_newton_damped_rosenbrock_quadratic_convergence(rosen, modification):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="newton-damped", modification=modification, gtol=1e-10)
    assert r.success, r.message
    assert torch.allclose(r.x, torch.ones(2, dtype=torch.float64), atol=1e-8)
    assert r.convergence_order == "quadratic"
    # quadratic convergence by definition: e_{k+1} <= C e_k^2 over the tail, with e_k = ||x_k - x*||;
    # measured C is 2..18 here, bound 100. And log e_{k+1} / log e_k -> 2 (>= 1.7 at the last step).
    e = [float((x - 1).norm()) for x in r.history.iterates]
    e = [v for v in e if v > 1e-15]
    assert all(e[k + 1] <= 100 * e[k] ** 2 for k in range(len(e) - 3, len(e) - 1)), e
    assert math.log(e[-1]) / math.log(e[-2]) >= 1.7


def saddle(x):
    # f = x^2 - y^2 + y^4/4: saddle at 0, minima at (0, +-sqrt(2)) with f = -1
    return x[0] ** 2 - x[1] ** 2 + 0.25 * x[1] ** 4


def test_pure_newton_converges_to_saddle_and_says_so():
    r = hesse.minimize(saddle, [0.3, 0.1], method="newton")
    assert r.status == SADDLE and not r.success
    assert r.x.norm() < 1e-6
    assert r.min_eigenvalue < 0
    assert "saddle" in r.message


def test_saddle_free_newton_moves_away_from_saddle():
    r = hesse.minimize(saddle, [0.3, 0.1], method="saddle-free-newton")
    assert r.success, r.message
    assert abs(abs(float(r.x[1])) - 2 ** 0.5) < 1e-6 and abs(float(r.x[0])) < 1e-6
    assert r.fun == pytest.approx(-1.0, abs=1e-10)
    # started exactly at the saddle (g = 0), it escapes along the negative-curvature direction
    r0 = hesse.minimize(saddle, [0.0, 0.0], method="saddle-free-newton")
    assert r0.success and r0.fun == pytest.approx(-1.0, abs=1e-10)


def test_newton_damped_from_a_maximum_region_finds_a_minimum():
    r = hesse.minimize(saddle, [0.0, 0.5], method="newton-damped")
    assert r.success and r.fun == pytest.approx(-1.0, abs=1e-10)


def test_singular_hessian_reported():
    def f(x):
        return (x[0] + x[1]) ** 2 + x[0] ** 4 * 0.0

    r = hesse.minimize(f, [1.0, 2.0], method="newton")
    assert not r.success and "singular" in r.message


def test_quadratic_helper_one_step_newton_damped(spd_quadratic):
    A, b, f = spd_quadratic
    r = hesse.minimize(f, torch.zeros(5, dtype=torch.float64), method="newton-damped", gtol=1e-9)
    assert r.nit == 1 and r.success
    assert quadratic is not None
