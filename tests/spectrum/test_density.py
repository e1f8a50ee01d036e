"""Stochastic Lanczos quadrature against the exact eigenvalue distribution."""

import pytest
import torch

import hesse
from hesse.spectrum.density import slq_bytes, slq_nodes
from hesse.spectrum.diagonal import diagonal
from hesse.testing.spectra import prescribed_spectrum, wasserstein1


def test_density_integrates_to_one_and_has_quadrature(indefinite_op):
    d = hesse.spectral_density(indefinite_op, num_probes=4, num_steps=30, seed=0)
    # Gaussians are normalised and the grid spans +-6 sigma: trapezoid error and tails < 1e-6
    assert abs(d.integral() - 1.0) <= 1e-6
    assert d.nodes.shape == (4, 30) and d.weights.shape == (4, 30)
    assert torch.allclose(d.weights.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-12)
    assert d.num_matvecs == 120
    assert bool(torch.isfinite(d.stderr).all()) and float(d.stderr.max()) > 0
    # extreme Gauss nodes converge first: lambda_max to 1e-8 after 30 steps (outliers 21, 13)
    assert abs(float(d.nodes.max()) - float(indefinite_op.eigenvalues.max())) <= 1e-8 * 21


def test_w1_shrinks_with_budget(indefinite_op):
    ev = indefinite_op.eigenvalues
    w = []
    for p, m in [(1, 5), (2, 20), (8, 60)]:
        runs = [hesse.spectral_density(indefinite_op, num_probes=p, num_steps=m, seed=s) for s in range(3)]
        w.append(sum(wasserstein1(r.nodes, r.weights, ev) for r in runs) / 3)
    assert w[0] > w[1] > w[2]
    assert w[2] < w[0] / 3


def test_density_matches_exact_on_small_operator():
    # num_steps = n: each probe's Gauss rule is exact, so the quadrature measure averaged over many
    # probes approaches the uniform measure on the eigenvalues (W1 < 2% of the spectrum's width)
    lam = torch.linspace(-1, 2, 40, dtype=torch.float64)
    op = prescribed_spectrum(lam, seed=0)
    d = hesse.spectral_density(op, num_probes=200, num_steps=40, seed=0)
    nodes = d.nodes[d.weights > 1e-14]
    assert float((nodes[:, None] - lam[None, :]).abs().min(1).values.max()) <= 1e-8
    assert wasserstein1(d.nodes, d.weights, lam) <= 0.02 * 3


@pytest.mark.parametrize("kwargs, text", [
    ({"num_probes": 0}, "num_probes"),
    ({"num_steps": -1}, "num_steps"),
    ({"sigma": -1.0}, "sigma"),
    ({"grid": [1.0]}, "grid"),
])
def test_density_bad_input(lowrank_op, kwargs, text):
    with pytest.raises(ValueError, match=text):
        hesse.spectral_density(lowrank_op, **kwargs)


def test_slq_refuses_what_would_not_fit_before_allocating(indefinite_op):
    """--probes 100000000 was killed at 24 GB; now refused, naming the sizes, before any product."""
    op = hesse.DenseOperator(indefinite_op.to_dense())
    for kwargs in ({"num_probes": 100_000_000}, {"num_probes": 2_000_000}, {"num_probes": 4, "num_grid": 10**9}):
        with pytest.raises(ValueError, match="max_memory guard") as info:
            hesse.spectral_density(op, **kwargs)
        assert "SLQ with" in str(info.value)
        assert op.num_matvecs == 0
    with pytest.raises(ValueError, match="max_memory guard"):
        slq_nodes(op, 4, 60, max_memory=4 * 61 * 2000 * 8)
    # the estimate covers the bases: just above it runs
    need = slq_bytes(2000, 4, 60, torch.float64, 1000)
    assert need >= 4 * 61 * 2000 * 8
    assert hesse.spectral_density(op, num_probes=4, num_steps=60, max_memory=need).num_probes == 4


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_trace_and_diagonal_refuse_probe_blocks_over_the_guard(indefinite_op, method):
    op = hesse.DenseOperator(indefinite_op.to_dense())
    with pytest.raises(ValueError, match="max_memory guard"):
        hesse.trace(op, method, num_matvecs=1000, max_memory=10**6)
    if method != "xtrace":
        dm = "diag++" if method == "hutch++" else method
        with pytest.raises(ValueError, match="max_memory guard"):
            diagonal(op, dm, num_matvecs=1000, max_memory=10**6)
    assert op.num_matvecs == 0
