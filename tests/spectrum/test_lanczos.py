"""eigsh (Krylov-Schur Lanczos) and power iteration against dense eigvalsh ground truth.

Tolerances: with tol=1e-6 on residuals, eigenvalue errors are ~(1e-6 ||A||)^2 / gap, far below the
1e-8 relative error these tests demand; residuals are recomputed explicitly (check_residuals=True).
"""

import warnings

import pytest
import torch

import hesse
from hesse._result import Result
from hesse.spectrum.lanczos import _lanczos_steps, _start, lanczos_tridiagonal
from hesse.testing.spectra import indefinite_spectrum, prescribed_spectrum


def _rel(a, b):
    return float(((a - b).abs() / b.abs()).max())


def test_top5_and_bottom5_prescribed(indefinite_op):
    ev = indefinite_op.eigenvalues
    top = hesse.eigsh(indefinite_op, k=5, which="largest", check_residuals=True)
    assert top.method == "krylov-schur" and top.all_converged
    assert _rel(top.values, ev[-5:].flip(0)) <= 1e-8
    scale = float(ev.abs().max())
    assert float(top.residuals.max()) <= 1e-6 * scale * 1.01
    bot = hesse.eigsh(indefinite_op, k=5, which="smallest", check_residuals=True)
    assert bot.all_converged and _rel(bot.values, ev[:5]) <= 1e-8
    # eigenvectors are unit and orthogonal to each other (1e-10: float64 with full reorthogonalization)
    G = top.vectors.T @ top.vectors
    assert torch.allclose(G, torch.eye(5, dtype=G.dtype), atol=1e-10)


def test_top5_and_bottom5_mlp(mlp_problem):
    op, ev = mlp_problem["op"], mlp_problem["evals"]
    top = hesse.eigsh(op, k=5, which="largest", check_residuals=True)
    assert top.all_converged and _rel(top.values, ev[-5:].flip(0)) <= 1e-8
    bot = hesse.eigsh(op, k=5, which="smallest", tol=1e-7, check_residuals=True, max_matvecs=3000)
    assert bot.all_converged
    # bottom eigenvalues are small in magnitude: compare relative to ||H|| (1e-8 of lambda_max)
    assert float((bot.values - ev[:5]).abs().max()) <= 1e-8 * float(ev.abs().max())
    assert top.residuals.shape == (5,) and bot.residuals.shape == (5,)


def test_untrained_network_negative_eigenvalues(untrained_problem):
    op, ev = untrained_problem["op"], untrained_problem["evals"]
    assert float(ev[0]) < 0  # ground truth: the untrained network's Hessian is indefinite
    both = hesse.eigsh(op, k=4, which="both", max_matvecs=3000)
    assert both.all_converged
    vals = both.values
    assert torch.allclose(vals[:2], ev[-2:].flip(0), rtol=1e-8, atol=0)
    assert float((vals[2:].sort().values - ev[:2]).abs().max()) <= 1e-8 * float(ev.abs().max())
    assert bool((vals[2:] < 0).all())


def test_magnitude_and_dense_path():
    op = prescribed_spectrum([-5.0, -1.0, 0.5, 2.0, 3.0] + [0.1] * 45, seed=0)
    r = hesse.eigsh(op, k=3, which="magnitude")
    assert r.method == "dense" and "dense" in r.message
    assert torch.allclose(r.values, torch.tensor([-5.0, 3.0, 2.0], dtype=torch.float64), atol=1e-12)
    r2 = hesse.eigsh(op, k=3, which="magnitude", dense_threshold=0, num_basis=10)
    assert r2.method == "krylov-schur"
    assert torch.allclose(r2.values, r.values, atol=1e-10)


def test_lanczos_identities(indefinite_op):
    Q, T, r = lanczos_tridiagonal(indefinite_op, 30, seed=0)
    j = Q.shape[1]
    # orthonormal basis to 1e-12 (full reorthogonalization in float64)
    assert torch.allclose(Q.T @ Q, torch.eye(j, dtype=Q.dtype), atol=1e-12)
    # A Q = Q T + r e_j^T, to 1e-10 relative to ||A|| (rounding in n=2000 products)
    A = indefinite_op.to_dense()
    E = torch.zeros(j, dtype=Q.dtype)
    E[-1] = 1
    lhs, rhs = A @ Q, Q @ T + r[:, None] * E[None, :]
    assert float((lhs - rhs).norm()) <= 1e-10 * float(A.norm())
    assert torch.allclose(T, T.T)


def test_budget_exhaustion_warns(indefinite_op):
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        r = hesse.eigsh(indefinite_op, k=5, max_matvecs=8)
    assert not r.all_converged and r.message == "product budget exhausted"
    assert r.num_matvecs <= 8


def test_warm_start_needs_fewer_products(mlp_problem):
    op = mlp_problem["op"]
    cold = hesse.eigsh(op, k=1, seed=0)
    v = cold.vectors[:, 0] + 1e-6 * torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    warm = hesse.eigsh(op, k=1, v0=v)
    assert cold.all_converged and warm.all_converged
    assert warm.num_matvecs < cold.num_matvecs / 2
    assert abs(float(warm.values[0] - cold.values[0])) <= 1e-10 * abs(float(cold.values[0]))


def test_low_memory_two_pass(indefinite_op):
    ev = indefinite_op.eigenvalues
    r = hesse.eigsh(indefinite_op, k=3, low_memory=True, check_residuals=True)
    assert r.method == "lanczos-two-pass" and r.all_converged
    assert _rel(r.values, ev[-3:].flip(0)) <= 1e-8
    # recomputed eigenvectors are accurate: explicit residual <= tol * ||A||
    assert float(r.residuals.max()) <= 1e-6 * float(ev.abs().max()) * 1.01


def test_power_iteration_reference(indefinite_op):
    ev = indefinite_op.eigenvalues
    r = hesse.power_iteration(indefinite_op, k=2, tol=1e-8, max_matvecs=3000)
    assert r.all_converged and r.method == "power"
    # eigenvalue error ~ residual^2 / gap: 1e-10 relative is safe for tol 1e-8
    assert _rel(r.values, ev[-2:].flip(0)) <= 1e-10


def test_power_iteration_budget_warns(indefinite_op):
    with pytest.warns(RuntimeWarning, match="did not reach"):
        r = hesse.power_iteration(indefinite_op, k=1, max_matvecs=3)
    assert not r.all_converged


@pytest.mark.parametrize("kwargs, exc, text", [
    ({"k": 0}, ValueError, "k must be"),
    ({"k": 5000}, ValueError, "exceeds the operator size"),
    ({"which": "top"}, ValueError, "which"),
    ({"tol": 0.0}, ValueError, "tol"),
    ({"max_matvecs": 0}, ValueError, "max_matvecs"),
    ({"v0": torch.ones(3)}, ValueError, "v0 must have shape"),
    ({"v0": torch.zeros(2000)}, ValueError, "non-zero"),
])
def test_bad_input(indefinite_op, kwargs, exc, text):
    with pytest.raises(exc, match=text):
        hesse.eigsh(indefinite_op, **kwargs)


def test_not_an_operator():
    with pytest.raises(TypeError, match="CurvatureOperator"):
        hesse.eigsh(torch.eye(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError, match="CurvatureOperator"):
            hesse.power_iteration([[1.0]])


def test_basis_is_shrunk_to_max_memory_or_refused(indefinite_op):
    """n = 2,000 float64: one vector is 16,000 bytes. A 200 kB budget holds 12 vectors: with k = 3
    the default basis (20) is shrunk to 12 - 1 - 3 = 8 and still converges to the dense truth; an
    explicit num_basis over the budget, or a budget below k + 2 basis vectors, is refused."""
    op = indefinite_op
    truth = torch.linalg.eigvalsh(op.to_dense())[-3:].flip(0)
    r = hesse.eigsh(op, k=3, tol=1e-8, max_memory=200_000)
    assert r.extra["num_basis"] == 8 and "shrunk from 20 to 8" in r.message
    assert r.all_converged
    torch.testing.assert_close(r.values, truth, rtol=1e-8, atol=0)
    with pytest.raises(ValueError, match="low_memory=True"):
        hesse.eigsh(op, k=3, num_basis=20, max_memory=200_000)
    with pytest.raises(ValueError, match="low_memory=True"):
        hesse.eigsh(op, k=3, max_memory=100_000)
    assert hesse.eigsh(op, k=3, low_memory=True, max_memory=100_000).all_converged


def _run_recurrence(op, V, num_steps, store_basis, generator=None):
    """The shared recurrence from the columns of V; returns the state and each start's basis (p, j+1, n)."""
    kr = _start(op, V, num_steps, store_basis=store_basis, generator=generator)
    vectors = [kr.q.clone()]
    for _ in _lanczos_steps(op, kr, num_steps):
        vectors.append(kr.q.clone())
    return kr, torch.stack(vectors, 1)


@pytest.mark.parametrize("store_basis", [True, False], ids=["reorthogonalized", "three-term"])
@pytest.mark.parametrize("num_starts", [1, 3])
def test_shared_recurrence_identity_and_orthogonality(store_basis, num_starts):
    """A Q_j = Q_j T_j + beta_j q_{j+1} e_j^T for each start (Golub & Van Loan 2013, sec. 10.1).

    Spectrum: a [-1, 1] bulk with outliers 5 and 8, n = 300, 40 steps: the outliers' Ritz values
    converge within 40 steps, which is when the plain three-term recurrence loses orthogonality
    (Paige 1976). Tolerances: the identity holds to rounding, a few eps ||A|| per column (1e-12 ||A||
    leaves a margin of ~100); with reorthogonalization the basis is orthonormal to 1e-13.
    """
    lam = torch.cat([torch.linspace(-1, 1, 298, dtype=torch.float64), torch.tensor([5.0, 8.0])])
    op = prescribed_spectrum(lam, seed=0)
    A = op.to_dense()
    j = 40
    V = torch.randn(300, num_starts, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op.reset_counter()
    kr, Qs = _run_recurrence(op, V, j, store_basis)
    assert kr.num_steps == j and op.num_matvecs == j * num_starts
    T = kr.tridiagonal()
    e = torch.zeros(j, dtype=torch.float64)
    e[-1] = 1.0
    for i in range(num_starts):
        Q, q_next, beta = Qs[i, :j].T, Qs[i, j], float(kr.beta[-1][i])
        assert torch.allclose(Q[:, 0], V[:, i] / V[:, i].norm(), atol=1e-15, rtol=0)
        gap = A @ Q - Q @ T[i] - beta * q_next[:, None] * e[None, :]
        assert float(gap.norm()) <= 1e-12 * 8.0
        G = Qs[i] @ Qs[i].T  # Gram matrix of q_0 .. q_j
        local = torch.diagonal(G, 1).abs().max()  # neighbours are orthogonal in either mode
        assert float(local) <= 1e-13
        loss = float((G - torch.eye(j + 1, dtype=torch.float64)).abs().max())
        if store_basis:
            assert loss <= 1e-13
        else:
            assert loss > 1e-6  # the converged outliers' ghosts: the reason the stored basis exists
        # a batch is p independent recurrences: start i alone gives the same T (to rounding; without
        # reorthogonalization rounding is amplified once the outliers converge, so the first 10 steps)
        if num_starts > 1:
            alone, _ = _run_recurrence(op, V[:, i : i + 1], j, store_basis)
            s = j if store_basis else 10
            torch.testing.assert_close(alone.tridiagonal()[0, :s, :s], T[i, :s, :s], rtol=0, atol=1e-12)


@pytest.mark.parametrize("store_basis", [True, False], ids=["reorthogonalized", "three-term"])
def test_shared_recurrence_stops_at_invariant_subspace(store_basis):
    """With 4 distinct eigenvalues the Krylov space of any start is invariant after 4 steps: the
    recurrence stops there (beta_4 = 0, T's eigenvalues are the 4 eigenvalues to 1e-12), and the
    batch stops multiplying once every start has stopped."""
    lam = torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=torch.float64).repeat(50)
    op = prescribed_spectrum(lam, seed=0)
    V = torch.randn(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    op.reset_counter()
    kr, _ = _run_recurrence(op, V, 10, store_basis)
    assert kr.num_steps == 4 and op.num_matvecs == 4 * 2 and not bool(kr.active.any())
    assert bool((kr.beta[-1] == 0).all())
    theta = torch.linalg.eigvalsh(kr.tridiagonal())
    torch.testing.assert_close(theta, lam.unique()[None, :].expand(2, 4), rtol=0, atol=1e-12)


def test_shared_recurrence_continues_past_invariant_subspace():
    """With a generator (thick-restart eigsh) a start that hits an invariant subspace continues from a
    random direction orthogonal to its basis: beta = 0 at the break, the basis stays orthonormal
    (1e-13) and the Arnoldi relation A Q = Q H + beta q e^T holds to rounding (1e-12 ||A||)."""
    lam = torch.tensor([-2.0, 0.5, 1.0, 3.0], dtype=torch.float64).repeat(50)
    op = prescribed_spectrum(lam, seed=0)
    A = op.to_dense()
    V = torch.randn(200, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    kr, Qs = _run_recurrence(op, V, 8, True, generator=torch.Generator().manual_seed(2))
    assert kr.num_steps == 8 and float(kr.beta[3][0]) == 0.0 and float(kr.beta[4][0]) > 0
    Q = Qs[0].T
    assert float((Q.T @ Q - torch.eye(9, dtype=torch.float64)).abs().max()) <= 1e-13
    H = kr.H[0]
    gap = A @ Q[:, :8] - Q[:, :8] @ H[:8, :8] - Q[:, 8:] * H[8:, :8]
    assert float(gap.norm()) <= 1e-12 * 3.0


@pytest.mark.parametrize("low_memory", [False, True])
def test_spectrum_results_are_result_records(indefinite_op, low_memory):
    """EigshResult, SpectralDensity and SpectrumSummary are Result records: mapping access by the
    glossary's names (num_matvecs, nit, converged, message) and plain data from as_dict()."""
    r = hesse.eigsh(indefinite_op, k=2, low_memory=low_memory)
    d = hesse.spectral_density(hesse.DenseOperator(torch.diag(torch.arange(8.0, dtype=torch.float64))),
                               num_probes=2, num_steps=4)
    s = hesse.summarize(hesse.DenseOperator(torch.eye(5, dtype=torch.float64)))
    for rec in (r, d, s):
        assert isinstance(rec, Result) and rec["num_matvecs"] == rec.num_matvecs
    assert r.num_matvecs > 0 and d.num_matvecs == 2 * 4
    # nit counts thick restarts, which only the Krylov-Schur path makes
    assert r["nit"] == r.nit and (r.nit == 0 or not low_memory)
    assert r["message"] == "converged" and torch.equal(r["values"], r.values)
    plain = r.as_dict()
    assert plain["values"] == r.values.tolist() and plain["converged"] == [True, True]
    assert s.as_dict()["definiteness"] == "positive definite"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n, low_memory", [(800, False), (800, True), (300, False)])
def test_low_precision_residuals_are_measured(dtype, n, low_memory):
    """16-bit operators: reported residuals are the true ||A v - lambda v|| of the returned pairs
    (the recurrence's own estimates were ~1e-16 against true 1e-3..1e-1), judged against what the
    format allows, and the top eigenvalues are found (bfloat16 returned 12.3 for 21 before)."""
    lam = indefinite_spectrum(n, num_negative=20, seed=3)
    M = prescribed_spectrum(lam, seed=1).to_dense()
    op = hesse.DenseOperator(M.to(dtype))
    A = op.to_dense().double()  # the operator as stored: ground truth for its own eigenpairs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = hesse.eigsh(op, k=3, tol=1e-6, low_memory=low_memory)
    eps = torch.finfo(dtype).eps
    norm = float(torch.linalg.eigvalsh(A).abs().max())
    V = res.vectors.double()
    true = (A @ V - V * res.values).norm(dim=0)
    # measured with one product in the operator's format: off the float64 residual by that
    # product's rounding, about eps ||A|| (the recurrence's estimate was 1e-16 here)
    assert ((res.residuals - true).abs() <= eps * norm).all(), (res.residuals, true)
    assert res.residuals_checked and res.tol == pytest.approx(eps)
    assert "tol raised" in res.message
    scale = res.extra["norm_estimate"]
    assert torch.equal(res.converged, res.residuals <= res.tol * scale * 1.01)
    # the two-pass recurrence, not reorthogonalised, may stop on estimates the products do not
    # confirm: then it must say so (converged False and a warning), never claim convergence
    assert res.all_converged or (low_memory and caught)
    assert (true[res.converged] <= 2 * res.tol * norm).all()
    # a residual r bounds the eigenvalue error by r (Parlett 1998, Thm 4.5.1)
    top = torch.linalg.eigvalsh(A).flip(0)[:3]
    assert (res.values - top).abs().max() <= true.max() + 1e-12


def test_float32_operator_keeps_its_tolerance(indefinite_op):
    res = hesse.eigsh(hesse.DenseOperator(indefinite_op.to_dense().float()), k=2, tol=1e-5)
    assert res.tol == 1e-5 and "tol raised" not in res.message and res.all_converged


def _close_bottom_pair(sign):
    """Two smallest eigenvalues 0.2 % of ||A|| apart under a bulk: from 1 of 40 random starts the
    second one converged first and was returned as the smallest, converged, before the guard pair."""
    g = torch.Generator().manual_seed(0)
    n = 1500
    lam = torch.cat([torch.tensor([-0.24757, -0.24597], dtype=torch.float64),
                     -0.24 * torch.rand(n - 12, generator=g, dtype=torch.float64),
                     0.7 * torch.rand(10, generator=g, dtype=torch.float64)])
    return prescribed_spectrum(sign * lam, seed=1)


@pytest.mark.parametrize("which, sign", [("smallest", 1.0), ("largest", -1.0)])
@pytest.mark.parametrize("low_memory", [False, True])
def test_converged_extreme_is_the_extreme_over_starts(which, sign, low_memory):
    op = _close_bottom_pair(sign)
    exact = sign * -0.24757
    for seed in range(10, 30):  # seed 18 returned -0.24597 before
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = hesse.eigsh(op, k=1, which=which, tol=1e-4, seed=seed, low_memory=low_memory)
        if res.all_converged:
            # tol=1e-4 on ||A|| = 0.7 gives eigenvalues to (7e-5)^2 / gap: far below the 1.6e-3 gap
            assert abs(float(res.values[0]) - exact) < 1e-5, (seed, res)
