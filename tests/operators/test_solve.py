"""The conjugate-gradient kernel and its stopping rules against dense references.

References: ``torch.linalg.solve`` for converged solves, hand-computed Steihaug steps on 2 x 2
problems, and the quadratic ``q(x) = ½ xᵀAx − bᵀx`` evaluated densely along recorded iterates for
Martens' progress test. float64: solutions agree to ~1e-10 (tolerance 1e-12 on the residual,
condition numbers <= 1e3).
"""

from __future__ import annotations

import math

import pytest
import torch

import hesse
from hesse._result import Result
from hesse.operators import (
    MartensProgress,
    NegativeCurvature,
    RecordIterates,
    ResidualTolerance,
    TrustRegion,
    conjugate_gradient,
)


def _spd(n, cond=100.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.logspace(0, math.log10(cond), n, dtype=torch.float64)) @ Q.T


def _b(n, seed=1):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_residual_tolerance_matches_dense_solve_and_result_fields():
    A, b = _spd(30), _b(30)
    op = hesse.DenseOperator(A, is_psd=True)
    res = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-12)])
    assert isinstance(res, Result) and isinstance(res, hesse.LinearSolveResult)
    assert res.converged and res.status == "converged"
    assert torch.allclose(res.x, torch.linalg.solve(A, b), atol=1e-9)
    assert res.num_matvecs == res.nit + 1  # one product per iteration + the true-residual check
    for key in ("x", "nit", "num_matvecs", "converged", "message", "residual_norm"):
        assert key in res.keys()
    assert res.as_dict()["nit"] == res.nit


def test_preconditioner_reduces_iterations():
    """Jacobi on a badly scaled SPD matrix: same solution, fewer iterations."""
    d = torch.logspace(0, 4, 40, dtype=torch.float64)
    A = torch.diag(d.sqrt()) @ _spd(40, cond=10.0) @ torch.diag(d.sqrt())
    b = _b(40)
    plain = conjugate_gradient(lambda v: A @ v, b, tol=1e-10, is_psd=True)
    pcg = conjugate_gradient(lambda v: A @ v, b, tol=1e-10, is_psd=True,
                             preconditioner=lambda r: r / torch.diagonal(A))
    x = torch.linalg.solve(A, b)
    assert plain.converged and pcg.converged
    assert torch.allclose(pcg.x, x, rtol=1e-6, atol=1e-9)
    assert pcg.nit < plain.nit / 2, (pcg.nit, plain.nit)


def test_negative_curvature_rule_returns_the_direction():
    A = torch.diag(torch.tensor([-2.0, 1.0, 3.0], dtype=torch.float64))
    b = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)  # first direction p = b: pᵀAp = -2
    res = conjugate_gradient(hesse.DenseOperator(A), b, rules=[ResidualTolerance(1e-10), NegativeCurvature()])
    assert res.status == "negative_curvature" and not res.converged
    assert res.nit == 0 and float(res.x.abs().max()) == 0.0
    d = res.negative_curvature
    assert d is not None and float(d @ A @ d) < 0 and res.curvature == pytest.approx(-2.0)


def test_indefinite_without_rule_stops_and_says_so():
    A = torch.diag(torch.tensor([-2.0, 1.0], dtype=torch.float64))
    res = conjugate_gradient(hesse.DenseOperator(A), torch.ones(2, dtype=torch.float64))
    assert not res.converged and "negative curvature" in res.message


def test_psd_tag_skips_the_negative_curvature_rule():
    """A PSD-tagged singular operator: pᵀAp = 0 is a breakdown, not negative curvature."""
    A = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    op = hesse.DenseOperator(A, is_psd=True)
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    res = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-10), NegativeCurvature()])
    assert res.status == "breakdown" and not res.converged
    res = conjugate_gradient(hesse.DenseOperator(A), b, rules=[NegativeCurvature()])
    assert res.status == "negative_curvature"  # untagged: the rule is consulted


def test_steihaug_boundary_hand_computed():
    """A = diag(1, 2), b = (1, 1): the first CG step is α p = (2/3)(1, 1), ‖·‖ = 0.943. With
    Δ = 0.5 Steihaug stops on the boundary along p = b: x = Δ b / ‖b‖ = (0.35355, 0.35355)."""
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    b = torch.ones(2, dtype=torch.float64)
    res = conjugate_gradient(hesse.DenseOperator(A), b, rules=[ResidualTolerance(1e-10), TrustRegion(0.5)])
    assert res.status == "trust_region_boundary" and res.on_boundary
    assert torch.allclose(res.x, torch.full((2,), 0.5 / math.sqrt(2), dtype=torch.float64), atol=1e-14)
    # Δ = 2 holds the Newton point (1, 0.5), ‖·‖ = 1.118: the interior solution
    res = conjugate_gradient(hesse.DenseOperator(A), b, rules=[ResidualTolerance(1e-12), TrustRegion(2.0)])
    assert res.converged and torch.allclose(res.x, torch.tensor([1.0, 0.5], dtype=torch.float64), atol=1e-12)


def test_steihaug_second_step_crosses_boundary():
    """A = diag(1, 10), b = (1, 1): x1 = (2/11)(1, 1) (‖x1‖ = 0.257), the second step heads to the
    Newton point (1, 0.1); Δ = 0.6 is crossed on it. The returned point lies on the segment
    x1 + τ p2 with ‖x‖ = Δ and τ ≥ 0, computed here by solving the quadratic directly."""
    A = torch.diag(torch.tensor([1.0, 10.0], dtype=torch.float64))
    b = torch.ones(2, dtype=torch.float64)
    res = conjugate_gradient(hesse.DenseOperator(A), b, rules=[ResidualTolerance(1e-12), TrustRegion(0.6)])
    x1 = (2 / 11) * b
    r1 = b - A @ x1
    p2 = r1 + (float(r1 @ r1) / float(b @ b)) * b
    a, bb, c = float(p2 @ p2), 2 * float(x1 @ p2), float(x1 @ x1) - 0.36
    tau = (-bb + math.sqrt(bb * bb - 4 * a * c)) / (2 * a)
    assert res.status == "trust_region_boundary" and res.nit == 1
    assert torch.allclose(res.x, x1 + tau * p2, atol=1e-13)
    assert float(res.x.norm()) == pytest.approx(0.6, rel=1e-13)


def test_steihaug_negative_curvature_goes_to_the_lower_boundary_point():
    """A = diag(-1, 2), b = (1, 0): pᵀAp = -1 at p = b; ‖τ b‖ = Δ at τ = ±Δ and
    q(τ b) = -τ - τ²/2 is lower at τ = +Δ: x = (Δ, 0)."""
    A = torch.diag(torch.tensor([-1.0, 2.0], dtype=torch.float64))
    b = torch.tensor([1.0, 0.0], dtype=torch.float64)
    res = conjugate_gradient(hesse.DenseOperator(A), b, rules=[TrustRegion(0.7)])
    assert res.status == "negative_curvature" and res.on_boundary
    assert torch.allclose(res.x, torch.tensor([0.7, 0.0], dtype=torch.float64), atol=1e-15)


def test_martens_progress_stops_where_the_dense_test_first_holds():
    A, b = _spd(200, cond=1e4, seed=3), _b(200, seed=4)
    op = hesse.DenseOperator(A, is_psd=True)
    rec = RecordIterates()
    full = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-14), rec], max_iter=150, true_residual=False)
    qs = [float(0.5 * x @ A @ x - b @ x) for _, x in full.iterates]
    expected = None
    for i in range(1, len(qs) + 1):
        k = max(10, int(0.1 * i))
        if i > k and qs[i - 1] < 0 and (qs[i - 1] - qs[i - 1 - k]) / qs[i - 1] < k * 5e-4:
            expected = i
            break
    assert expected is not None and expected < 150
    res = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-14), MartensProgress()], max_iter=150)
    assert res.status == "progress" and not res.converged and res.nit == expected
    assert torch.allclose(res.x, full.iterates[expected - 1][1], atol=1e-12)


def test_record_iterates_martens_schedule():
    A, b = _spd(40, cond=1e3), _b(40)
    op = hesse.DenseOperator(A, is_psd=True)
    res = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-12), RecordIterates.martens()])
    kept = [i for i, _ in res.iterates]
    schedule = {math.ceil(1.3**j) for j in range(40)}
    assert all(i in schedule for i in kept[:-1]) and kept[-1] == res.nit
    i, x_i = res.iterates[3]  # the i-th iterate is what CG stopped after i iterations returns
    assert torch.allclose(conjugate_gradient(op, b, max_iter=i).x, x_i, atol=1e-12)


def test_rule_validation():
    op = hesse.DenseOperator(torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="radius"):
        TrustRegion(-1.0)
    with pytest.raises(TypeError, match="stopping rule"):
        conjugate_gradient(op, torch.ones(2, dtype=torch.float64), rules=[object()])


def test_zero_rhs_returns_zero_whatever_the_warm_start():
    """A x = 0 is solved exactly by x = 0; a warm start must not be returned (or iterated on with
    a relative tolerance of 0): x = 0, no iteration, converged."""
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    res = conjugate_gradient(lambda v: A @ v, torch.zeros(3, dtype=torch.float64),
                             x0=torch.ones(3, dtype=torch.float64), true_residual=False)
    assert res.converged and res.nit == 0 and res.num_matvecs == 0
    assert torch.equal(res.x, torch.zeros(3, dtype=torch.float64))


def test_a_rule_object_reused_gives_the_same_solve():
    """A rule is a description of a test, not a record of one solve: the same MartensProgress or
    RecordIterates object passed to two identical solves gives two identical results (the same
    stopping iteration, the same recorded iterates), and the caller's object is not changed."""
    A, b = _spd(200, cond=1e4, seed=3), _b(200, seed=4)
    op = hesse.DenseOperator(A, is_psd=True)
    progress, record = MartensProgress(), RecordIterates.martens()
    first = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-14), progress, record], max_iter=150)
    second = conjugate_gradient(op, b, rules=[ResidualTolerance(1e-14), progress, record], max_iter=150)
    assert first.status == second.status == "progress"
    assert first.nit == second.nit > 10
    assert [i for i, _ in first.iterates] == [i for i, _ in second.iterates]
    assert all(torch.equal(x1, x2) for (_, x1), (_, x2) in zip(first.iterates, second.iterates))
    assert not getattr(progress, "values", []) and not getattr(record, "iterates", [])


def test_rules_are_recognised_by_what_they_declare():
    """The kernel reads what a rule declares, not its class: a rule of one's own that declares
    ``indefinite_only`` (a negative-curvature test) is not consulted for an operator tagged PSD,
    as NegativeCurvature is not, and one recording iterates has them returned in the result."""

    class MyNegativeCurvature:
        handles_curvature, indefinite_only = True, True

        def before_step(self, state):
            return NegativeCurvature().before_step(state)

        def after_step(self, state):
            return None

    class EveryOther(RecordIterates):
        pass

    A = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    b = torch.tensor([0.0, 1.0], dtype=torch.float64)
    psd = conjugate_gradient(hesse.DenseOperator(A, is_psd=True), b, rules=[MyNegativeCurvature()])
    assert psd.status == "breakdown"
    untagged = conjugate_gradient(hesse.DenseOperator(A), b, rules=[MyNegativeCurvature()])
    assert untagged.status == "negative_curvature"
    spd = hesse.DenseOperator(_spd(10), is_psd=True)
    res = conjugate_gradient(spd, _b(10), rules=[ResidualTolerance(1e-12), EveryOther(lambda i: i % 2 == 0)])
    assert [i for i, _ in res.iterates] == list(range(2, res.nit + 1, 2)) + ([res.nit] if res.nit % 2 else [])


def _rank2_psd():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(4, 2, generator=g, dtype=torch.float64)
    return V @ V.T, torch.randn(4, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("method", ["cg", "minres", "direct"])
def test_a_failed_solve_is_not_called_converged(method):
    """``converged`` is the measured residual test: on a rank-2 4 x 4 PSD matrix with b outside
    its range no x has ‖b − A x‖/‖b‖ below the tolerance (the least-squares residual, computed
    densely here, is 0.83), so no method may report convergence, whatever it returns."""
    A, b = _rank2_psd()
    x_ls = torch.linalg.lstsq(A, b).solution
    floor = float((b - A @ x_ls).norm() / b.norm())
    assert floor > 0.1  # b is far from the range of A
    res = hesse.solve(hesse.DenseOperator(A, is_psd=True), b, method=method)
    assert not res.converged and res.status != "converged"
    assert res.relative_residual > 1e-3  # measured at x (which may be huge: ‖x‖ ~ 1e15 for LU)


@pytest.mark.parametrize("method", ["cg", "minres", "direct"])
def test_float32_ill_conditioned_is_not_called_converged(method):
    """Condition 1e9 in float32 (unit roundoff 6e-8): no solve can meet tol = 1e-6 (a solve's
    relative residual is about eps times the condition number's share in b); the result must say
    so from its measured residual, computed here in float64."""
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    A = (Q @ torch.diag(torch.logspace(0, 9, 6, dtype=torch.float64)) @ Q.T)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    res = hesse.solve(hesse.DenseOperator(A.float(), is_psd=True), b.float(), method=method, tol=1e-6)
    measured = float((b - A @ res.x.double()).norm() / b.norm())
    if res.converged:
        assert measured <= 10 * 1e-6 + 6 * torch.finfo(torch.float32).eps * 10


@pytest.mark.parametrize("max_iter", [0, -1, 2.5, True, "3"])
@pytest.mark.parametrize("method", ["cg", "minres"])
def test_solve_refuses_a_budget_that_is_not_a_positive_integer(method, max_iter):
    op = hesse.DenseOperator(torch.eye(3, dtype=torch.float64) * 2, is_psd=True)
    with pytest.raises(ValueError, match="max_iter must be an integer >= 1"):
        hesse.solve(op, torch.ones(3, dtype=torch.float64), method=method, max_iter=max_iter)


@pytest.mark.parametrize("tol", ["1e-3", None, True, [1e-3]])
def test_solve_refuses_a_tolerance_that_is_not_a_number(tol):
    op = hesse.DenseOperator(torch.eye(3, dtype=torch.float64), is_psd=True)
    with pytest.raises(TypeError, match="tol must be a real number"):
        hesse.solve(op, torch.ones(3, dtype=torch.float64), tol=tol)


@pytest.mark.parametrize("tol", [0.0, -1e-3, float("nan"), float("inf")])
def test_solve_refuses_a_tolerance_out_of_range(tol):
    op = hesse.DenseOperator(torch.eye(3, dtype=torch.float64), is_psd=True)
    with pytest.raises(ValueError, match="tol must be a finite number > 0"):
        hesse.solve(op, torch.ones(3, dtype=torch.float64), tol=tol)


@pytest.mark.parametrize("matrix", [torch.eye(3, dtype=torch.float64) * 2, (torch.eye(3) * 2).numpy()])
@pytest.mark.parametrize("method", ["cg", "minres", "direct"])
def test_solve_takes_a_matrix(matrix, method):
    b = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    res = hesse.solve(matrix, b, method=method)
    assert res.converged and torch.allclose(res.x.double(), b / 2, atol=1e-6)


def test_solve_names_b_and_x0_when_not_finite():
    op = hesse.DenseOperator(torch.eye(3, dtype=torch.float64), is_psd=True)
    bad = torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64)
    for method in ("cg", "minres", "direct"):
        with pytest.raises(ValueError, match=r"^b has 1 non-finite"):
            hesse.solve(op, bad, method=method)
        with pytest.raises(ValueError, match=r"^x0 has 1 non-finite"):
            hesse.solve(op, torch.ones(3, dtype=torch.float64), method=method, x0=bad)
    with pytest.raises(TypeError, match="op must be a CurvatureOperator or a symmetric matrix"):
        hesse.solve([[1.0]], torch.ones(1))


@pytest.mark.parametrize("bad", ["1e-3", None, [1e-3]])
def test_kernel_and_rules_refuse_a_tolerance_that_is_not_a_number(bad):
    """The same checks as the front door, at the kernel and in each rule (no NumPy ufunc error)."""
    A = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64))
    with pytest.raises(TypeError, match="tol must be a real number"):
        conjugate_gradient(lambda v: A @ v, torch.ones(2, dtype=torch.float64), tol=bad)
    with pytest.raises(TypeError, match="rtol must be a real number"):
        ResidualTolerance(bad)
    with pytest.raises(TypeError, match="radius must be a real number"):
        TrustRegion(bad)
    with pytest.raises(TypeError, match="eps must be a real number"):
        NegativeCurvature(bad)
    with pytest.raises(ValueError, match=r"^b has 1 non-finite"):
        conjugate_gradient(hesse.DenseOperator(A), torch.tensor([1.0, float("inf")], dtype=torch.float64))


@pytest.mark.parametrize("seed", range(12))
def test_minres_meets_the_measured_residual_test_on_indefinite_systems(seed):
    """SciPy's MINRES stops on its own backward-error estimate; the measured ‖b − A x‖/‖b‖ must
    still meet 10 tol for converged=True (restarts from x when it does not). Eigenvalues in
    [-4.9, 5.1], no closer than 0.1 to 0: solvable to 1e-12, checked against a dense solve."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))
    M = Q @ torch.diag(torch.linspace(-5.0, 5.0, 20, dtype=torch.float64) + 0.1) @ Q.T
    b = torch.randn(20, generator=g, dtype=torch.float64)
    res = hesse.solve(hesse.DenseOperator(M), b, method="minres", tol=1e-12)
    assert res.converged and res.relative_residual <= 1e-11
    torch.testing.assert_close(res.x, torch.linalg.solve(M, b), rtol=0, atol=1e-9)
