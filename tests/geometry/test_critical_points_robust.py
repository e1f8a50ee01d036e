"""critical_points on inputs that used to mislead or stall it: flat far fields, lines of critical
points, huge exponents, overflowing boxes, time and memory budgets."""

import time

import pytest
import torch

import hesse
from hesse.cli.expressions import parse_expression
from hesse.geometry._newton import newton_step_lengths


def test_flat_far_field_is_not_critical():
    # f = x**-1000 + y**2 has no critical point: ∂f/∂x = -1000 x**-1001 ≠ 0. At x = -1.05 the
    # gradient is ~6e-19 (below any absolute tolerance) but the Newton step x/1001 ≈ 1e-3 says the
    # nearest critical point (if any) is far away: not critical.
    f = parse_expression("x**-1000 + y**2")
    x = torch.tensor([-1.05, 0.0], dtype=torch.float64)
    cp = hesse.classify(f.function, x)
    assert cp.kind == "not critical", cp
    assert "Newton step" in cp.reason


def test_newton_step_lengths_flat_direction_and_rounding():
    # a resolved gradient along a zero eigenvalue: no critical point (infinite step); a gradient
    # component at rounding level along it: ignored
    lam = torch.tensor([[0.0, 2.0]], dtype=torch.float64)
    Q = torch.eye(2, dtype=torch.float64)[None]
    assert float(newton_step_lengths(torch.tensor([[1e-20, 0.0]], dtype=torch.float64), lam, Q)) == float("inf")
    s = newton_step_lengths(torch.tensor([[1e-40, 2e-10]], dtype=torch.float64), lam, Q)
    assert float(s) == pytest.approx(1e-10, rel=1e-12, abs=0)


def test_newton_step_lengths_ground_truth():
    # quadratic 0.5 xᵀ A x - bᵀx: the Newton step from x is exactly |A⁻¹(Ax - b)| per eigen-direction
    A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([0.3, -0.7], dtype=torch.float64)
    g = A @ x
    lam, Q = torch.linalg.eigh(A)
    s = newton_step_lengths(g[None], lam[None], Q[None])[0]
    # 1e-12: two 2x2 solves in float64
    assert float(s) == pytest.approx(float(torch.linalg.solve(A, g).norm()), rel=1e-12)


def test_flat_far_field_box_reports_no_point():
    f = parse_expression("x**-1000 + y**2")
    t = time.perf_counter()
    pts = hesse.critical_points(f, [(-2, 2), (-2, 2)], progress=False, time_limit=30)
    assert time.perf_counter() - t < 30
    assert all(p.kind != "degenerate minimum" for p in pts), pts
    assert len(pts) == 0, pts


@pytest.mark.parametrize("box", [[(-1e308, 1e308)] * 2, [(-1e300, 1e300)] * 2])
def test_overflowing_box_refused(box):
    f = parse_expression("x**2 + y**2")
    with pytest.raises(ValueError, match="bounds"):
        hesse.critical_points(f, box, progress=False)


def test_line_of_critical_points_found_once_and_fast():
    # (x - y)**2: every point of the line x = y is a (non-strict) minimum; one non-isolated set
    f = parse_expression("(x - y)**2")
    t = time.perf_counter()
    pts = hesse.critical_points(f, [(-2, 2), (-2, 2)], progress=False, time_limit=20)
    elapsed = time.perf_counter() - t
    assert elapsed < 15, elapsed
    assert [p.kind for p in pts] == ["non-isolated"], pts
    d = pts[0].reason
    assert "(0.707, 0.707)" in d or "(-0.707, -0.707)" in d, d
    assert abs(float(pts[0].x[0] - pts[0].x[1])) < 1e-8


def test_classify_recognises_a_valley_but_not_a_degenerate_minimum():
    f = parse_expression("(x - y)**2 + z**2")
    cp = hesse.classify(f.function, torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64))
    assert cp.kind == "non-isolated", cp
    g = parse_expression("x**4 + y**2")  # isolated, degenerate: must stay decided
    cp = hesse.classify(g.function, torch.zeros(2, dtype=torch.float64))
    assert cp.kind == "degenerate minimum", cp


def test_circle_valley_is_non_isolated():
    f = parse_expression("(x**2 + y**2 - 1)**2")
    pts = hesse.critical_points(f, [(-2, 2), (-2, 2)], progress=False, time_limit=20)
    kinds = [p.kind for p in pts]
    assert "non-isolated" in kinds and "maximum" in kinds, pts


def test_time_limit_returns_with_note():
    f = parse_expression("(x - y)**2 + sin(3*x)*sin(3*y)")
    t = time.perf_counter()
    pts = hesse.critical_points(f, [(-2, 2), (-2, 2)], progress=False, time_limit=0.5, num_starts=4096)
    assert time.perf_counter() - t < 10
    # the limit binds on Newton (a cold start) or, when Newton ran every start within its share,
    # on the sympy route: either way the result says so
    said = [*pts.notes, pts.symbolic_status]
    assert any("time limit" in n for n in said), said


@pytest.mark.parametrize("text", ["(x+y)**1000", "(x**1000)**1000 + y**2", "x**-1000 + y**2"])
def test_huge_exponents_finish_quickly(text):
    f = parse_expression(text)
    t = time.perf_counter()
    pts = hesse.critical_points(f, [(-2, 2), (-2, 2)], progress=False, time_limit=10)
    assert time.perf_counter() - t < 15
    assert "skipped" in pts.symbolic_status, pts.symbolic_status


def _sum_of_squares(n: int) -> str:
    # grouped by tens: a flat sum of 150 terms nests deeper than the parser allows
    groups = [" + ".join(f"x{i}**2" for i in range(k, min(k + 10, n))) for k in range(0, n, 10)]
    return " + ".join(f"({g})" for g in groups)


@pytest.mark.parametrize("num_starts, match", [(10**9, "maximum"), (2**20, "memory guard")])
def test_too_many_starts_refused(monkeypatch, num_starts, match):
    monkeypatch.setenv("HESSE_MAX_MEMORY", str(64 * 1024**2))
    f = parse_expression(_sum_of_squares(150))
    t = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        hesse.critical_points(f, [(-1, 1)] * 150, progress=False, num_starts=num_starts)
    assert time.perf_counter() - t < 1.0  # refused before anything is allocated


def test_starts_run_in_chunks_within_memory_guard():
    # 20 variables: one start holds 8 x 20² x 8 B = 25 KiB of Hessians; a 256 KiB guard gives chunks
    # of 10, and the answer (one minimum at 0, exact for a quadratic after one Newton step) is unchanged
    from hesse.geometry.critical_points import newton_chunk_size

    assert newton_chunk_size(20, torch.float64, 256 * 1024) == 10
    f = parse_expression(_sum_of_squares(20))
    pts = hesse.critical_points(f, [(-1, 1)] * 20, progress=False, symbolic=False, num_starts=32,
                                time_limit=30, max_memory=256 * 1024)
    assert [p.kind for p in pts] == ["minimum"]
    assert float(pts[0].x.abs().max()) < 1e-12


@pytest.mark.slow
def test_150_variables_default_starts_bounded_in_time_and_memory():
    # the once-runaway case: 150 variables, 8192 default starts (5 GB and more before chunking);
    # with a 5 s limit the search returns promptly, under the memory guard, with a note
    import resource

    f = parse_expression(_sum_of_squares(150))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    pts = hesse.critical_points(f, [(-2, 2)] * 150, progress=False, time_limit=5)
    elapsed = time.perf_counter() - t
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before  # KiB on Linux
    assert elapsed < 15, elapsed
    assert grown < 1024**2, grown  # < 1 GiB
    assert pts.num_starts == 8192 and any("time limit" in n for n in pts.notes), pts.notes
    assert set(pts.counts()) <= {"minimum"}
