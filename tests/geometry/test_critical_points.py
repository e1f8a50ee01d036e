"""critical_points: multi-start Newton (+ sympy for expressions) against known sets of critical points."""

import numpy as np
import pytest
import torch

import hesse
from hesse.cli.expressions import parse_expression


def quartic(p):
    return p[0] ** 4 + p[1] ** 4 - 2 * p[0] ** 2 - 2 * p[1] ** 2 + 1


def _as_set(points):
    return {tuple(np.round(p.x.numpy(), 6) + 0.0) for p in points}


def test_nine_critical_points_numerically():
    pts = hesse.critical_points(quartic, [(-2, 2), (-2, 2)], progress=False)
    expected = {(a, b) for a in (-1.0, 0.0, 1.0) for b in (-1.0, 0.0, 1.0)}
    assert _as_set(pts) == expected  # Newton converges quadratically: 1e-6 rounding is safe
    assert pts.counts() == {"minimum": 4, "saddle": 4, "maximum": 1}
    assert all(p.found_by == "newton" for p in pts)
    assert pts.symbolic_status.startswith("not tried")
    mx = [p for p in pts if p.kind == "maximum"][0]
    assert mx.value == pytest.approx(1.0) and mx.x.abs().max() < 1e-12


def test_nine_points_both_routes_for_expressions():
    e = parse_expression("x**4 + y**4 - 2*x**2 - 2*y**2 + 1")
    pts = hesse.critical_points(e, [(-2, 2), (-2, 2)], progress=False)
    assert len(pts) == 9 and {p.found_by for p in pts} == {"newton+symbolic"}
    assert pts.symbolic_status.startswith("solved: 9 solution(s), 9 real")


def test_symbolic_only_and_newton_only_reported():
    # x²y + sin(xy): critical points (0, 0) and (-1, 0); sympy (transcendental) finds only one of them
    e = parse_expression("x**2*y + sin(x*y)")
    pts = hesse.critical_points(e, [(-2, 2), (-2, 2)], progress=False, symbolic_timeout=3.0)
    assert _as_set(pts) == {(0.0, 0.0), (-1.0, 0.0)}
    assert all(p.kind == "saddle" for p in pts)
    assert {p.found_by for p in pts} <= {"newton", "newton+symbolic", "symbolic"}
    assert any("newton" in p.found_by for p in pts)


def test_rosenbrock_single_minimum():
    pts = hesse.critical_points(lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2,
                                [(-2, 2), (-1, 3)], progress=False)
    assert len(pts) == 1 and pts[0].kind == "minimum"
    torch.testing.assert_close(pts[0].x, torch.tensor([1.0, 1.0], dtype=torch.float64), atol=1e-10, rtol=0)


def test_monkey_saddle_and_degenerate_minimum_found_and_decided():
    pts = hesse.critical_points(parse_expression("x**3 - 3*x*y**2"), [(-1, 1), (-1, 1)], progress=False)
    assert len(pts) == 1 and pts[0].kind == "degenerate saddle" and pts[0].order == 3
    pts = hesse.critical_points(lambda p: p[0] ** 4 + p[1] ** 2, [(-1, 1), (-1, 1)], progress=False)
    assert len(pts) == 1 and pts[0].kind == "degenerate minimum"
    assert float(pts[0].x.abs().max()) < 1e-6  # linear convergence to a degenerate root


def test_quadratic_minimum_in_box():
    e = parse_expression("3*x**2 + 2*x*y + 2*y**2 - 4*x - 6*y")
    pts = hesse.critical_points(e, [(-1.5, 2.5), (-1.0, 3.0)], progress=False)
    assert len(pts) == 1
    torch.testing.assert_close(pts[0].x, torch.tensor([0.2, 1.4], dtype=torch.float64), atol=1e-12, rtol=0)
    assert pts[0].condition_number == pytest.approx(2.618034, abs=5e-7)


def test_three_dimensional_and_no_points():
    pts = hesse.critical_points(lambda p: (p**2).sum() - 2 * (p**4).sum() / 4, [(-2, 2)] * 3,
                                progress=False)  # x² - x⁴/2 per axis: critical at 0, ±1 -> 27 points
    assert len(pts) == 27
    assert pts.counts()["minimum"] == 1 and pts.counts()["maximum"] == 8
    none = hesse.critical_points(lambda p: p[0] + p[1], [(-1, 1), (-1, 1)], progress=False, num_starts=16)
    assert len(none) == 0 and none.notes


def test_bad_input():
    with pytest.raises(ValueError, match="low < high"):
        hesse.critical_points(quartic, [(1, -1), (0, 1)], progress=False)
    with pytest.raises(ValueError, match="pairs"):
        hesse.critical_points(quartic, [1, 2], progress=False)
    with pytest.raises(ValueError, match="symbolic=True"):
        hesse.critical_points(quartic, [(-1, 1), (-1, 1)], symbolic=True, progress=False)
    with pytest.raises(ValueError, match="variables"):
        hesse.critical_points(parse_expression("x + y"), [(-1, 1)], progress=False)


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_python_control_flow_falls_back_to_a_loop():
    def f(p):
        if float(p[0]) > 5:  # data-dependent branch: vmap cannot trace it
            return p.sum()
        return (p**2).sum()

    pts = hesse.critical_points(f, [(-1, 1), (-1, 1)], num_starts=8, progress=False)
    assert len(pts) == 1 and pts[0].kind == "minimum"
    assert any("vmap failed" in n for n in pts.notes)


def test_sympy_stopped_at_its_time_guard_leaves_nothing_running():
    # a coupled 6-variable quartic: sympy.solve of its gradient runs for minutes; the guard must stop it,
    # not abandon a thread that keeps computing (and allocating) after the call returned
    import multiprocessing
    import threading
    import time

    terms = " + ".join(f"x{i}**4 - x{i}**2 + x{i}*x{(i + 1) % 6}*x{(i + 2) % 6}" for i in range(6))
    e = parse_expression(terms)
    threads_before = set(threading.enumerate())
    t0 = time.monotonic()
    pts = hesse.critical_points(e, [(-1, 1)] * 6, num_starts=16, max_iter=20, progress=False,
                                symbolic_timeout=1.0)
    elapsed = time.monotonic() - t0
    assert "timed out after 1 s" in pts.symbolic_status and "stopped" in pts.symbolic_status
    assert multiprocessing.active_children() == []
    assert [t for t in threading.enumerate() if t not in threads_before and t.is_alive()] == []
    assert elapsed < 60  # Newton on 16 starts in 6-D plus a 1 s guard; generous for a loaded machine


def test_sympy_in_a_process_returns_its_solutions_and_errors():
    from hesse.geometry.critical_points import _solve_in_process

    sympy = pytest.importorskip("sympy")
    x, y = sympy.symbols("x y", real=True)
    kind, sols = _solve_in_process(x**2 - 2 * x + y**2, (x, y), 30.0)
    assert kind == "ok" and sols == [{x: 1, y: 0}]  # ∇f = (2x - 2, 2y): the closed form
    kind, msg = _solve_in_process(x**2, (x, "not a symbol"), 30.0)  # sympy's own error comes back as text
    assert kind == "err" and msg


@pytest.mark.parametrize("text, n, sets", [
    # the critical sets by hand: grad(x^3 y^3) = 3(x^2 y^3, x^3 y^2) vanishes on x = 0 and on y = 0
    ("x**3*y**3", 2, ["x = 0", "y = 0"]),
    ("x**2*y**2", 2, ["x = 0", "y = 0"]),
    ("x**3*y**3 + z**2", 3, ["x = 0, z = 0", "y = 0, z = 0"]),
    # grad(xyz) = (yz, xz, xy): two coordinates zero, the three axes
    ("x*y*z", 3, ["x = 0, y = 0", "x = 0, z = 0", "y = 0, z = 0"]),
])
def test_non_isolated_sets_from_sympy_are_listed_as_sets(text, n, sets):
    pts = hesse.critical_points(parse_expression(text), [(-2, 2)] * n, progress=False)
    assert [p.kind for p in pts] == ["non-isolated"] * len(sets)
    named = sorted(next(s for s in sets if f", {s}, passing" in p.reason) for p in pts)
    assert named == sorted(sets)
    for p in pts:  # each listed point is a critical point of f: the gradient vanishes there exactly
        assert p.gradient_norm == pytest.approx(0.0, abs=1e-12)


def test_isolated_point_beside_a_set_is_kept():
    # (x^2 + y^2 - 1)^2: the unit circle is a set of minima, the origin an isolated maximum
    pts = hesse.critical_points(parse_expression("(x**2 + y**2 - 1)**2"), [(-2, 2), (-2, 2)], progress=False)
    kinds = [p.kind for p in pts]
    assert kinds.count("maximum") == 1 and "non-isolated" in kinds
    for p in pts:
        if p.kind == "non-isolated":
            assert float(p.x.norm()) == pytest.approx(1.0, abs=1e-9)
