"""Outliers, subspace overlaps, principal angles and the density's quadrature estimates against
operators whose spectrum is prescribed (exact eigenvalues and eigenvectors as ground truth)."""

from __future__ import annotations

import functools
import math

import pytest
import torch

import hesse
import hesse.spectrum
from hesse.spectrum._common import generator, rademacher
from hesse.testing.spectra import prescribed_spectrum


@functools.cache
def _spiked(num_outliers=3, n=1000, seed=0):
    """``num_outliers`` eigenvalues 50, 40, 30, ... over a bulk uniform on [-0.5, 1] (the outliers
    are at most 0.5 % of the spectrum, below the 1 % the 99th-percentile bulk edge leaves out)."""
    bulk = torch.linspace(-0.5, 1.0, n - num_outliers, dtype=torch.float64)
    spikes = torch.tensor([50.0 - 10 * i for i in range(num_outliers)], dtype=torch.float64)
    return prescribed_spectrum(torch.cat([bulk, spikes]).numpy(), seed=seed)


@pytest.mark.parametrize("num_outliers", [1, 3, 5])
def test_outliers_at_the_largest_gap_and_over_the_bulk_edge(num_outliers):
    op = _spiked(num_outliers)
    top = hesse.eigsh(op, k=num_outliers + 3, tol=1e-10)
    exact = op.eigenvalues.flip(0)[: num_outliers + 3]
    by_gap = hesse.outliers(top)
    assert by_gap.method == "largest gap" and by_gap.num_outliers == num_outliers
    assert by_gap.largest_gap == num_outliers
    assert by_gap.gap_ratios == pytest.approx((exact[:-1] / exact[1:]).tolist(), rel=1e-8)
    density = hesse.spectral_density(op, num_probes=4, num_steps=60, seed=0)
    by_edge = hesse.outliers(top, density)
    # the bulk ends at 1: its 99th percentile of |lambda| lies within the bulk's support
    assert 0.5 <= by_edge.bulk_edge <= 1.0 + 1e-6
    assert by_edge.num_outliers == num_outliers and not by_edge.at_least
    assert by_edge.outlier_values == pytest.approx(exact[:num_outliers].tolist(), rel=1e-8)
    # every eigenvalue asked for an outlier: there may be more
    assert hesse.outliers(hesse.eigsh(op, k=1, tol=1e-10), density).at_least


def test_outliers_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="finite top eigenvalues"):
        hesse.outliers([])
    with pytest.raises(ValueError, match="finite"):
        hesse.outliers([1.0, float("nan")])


def test_subspace_overlap_is_the_fraction_of_the_squared_norm():
    gen = torch.Generator().manual_seed(0)
    n = 50
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    g = 3.0 * Q[:, 0] + 4.0 * Q[:, 1] + 12.0 * Q[:, 2]  # |g|^2 = 169
    assert hesse.subspace_overlap(Q[:, :2], g) == pytest.approx(25 / 169, rel=1e-12)
    assert hesse.subspace_overlap(Q[:, :3], g) == pytest.approx(1.0, rel=1e-12)
    assert hesse.subspace_overlap(Q[:, 3:10], g) == pytest.approx(0.0, abs=1e-12)
    # any basis of the same span, scaled, with a dependent column, gives the same number
    V = torch.stack([2 * Q[:, 0] + Q[:, 1], -Q[:, 1], Q[:, 0] + Q[:, 1]], dim=1)
    assert hesse.subspace_overlap(V, g) == pytest.approx(25 / 169, rel=1e-12)
    with pytest.raises(ValueError, match="g is zero"):
        hesse.subspace_overlap(Q[:, :2], torch.zeros(n))
    with pytest.raises(ValueError, match="rows"):
        hesse.subspace_overlap(Q[:, :2], torch.ones(n + 1))


@pytest.mark.parametrize("angles", [(0.3, 1.2), (1e-9, 0.5), (0.0, math.pi / 2)])
def test_principal_angles_recover_constructed_angles(angles):
    """span{e1, e2} against span{cos a e1 + sin a e3, cos b e2 + sin b e4}: the angles are a and b
    (to 1e-12 absolute, small angles included: they come from sines, not from arccos)."""
    a, b = angles
    eye = torch.eye(6, dtype=torch.float64)
    V1 = eye[:, :2]
    V2 = torch.stack([math.cos(a) * eye[:, 0] + math.sin(a) * eye[:, 2],
                      math.cos(b) * eye[:, 1] + math.sin(b) * eye[:, 3]], dim=1)
    got = hesse.spectrum.principal_angles(V1, V2)
    torch.testing.assert_close(got, torch.tensor(sorted(angles), dtype=torch.float64), rtol=0, atol=1e-12)
    # symmetric, and a one-dimensional space against a plane has one angle
    torch.testing.assert_close(hesse.spectrum.principal_angles(V2, V1), got, rtol=0, atol=1e-12)
    assert hesse.spectrum.principal_angles(V1[:, :1], V2).numel() == 1


def _probe_measures(op, num_probes, seed, t):
    """Each probe's exact spectral measure below ``t``: sum over lambda_i < t of (u_i^T v)^2."""
    V = rademacher(op.shape[0], num_probes, generator(seed), op.dtype, op.device)
    V = V / V.norm(dim=0, keepdim=True)
    coeff = (op.eigenvectors.T @ V) ** 2  # (n, p)
    return coeff[op.eigenvalues < t].sum(0)


@pytest.mark.parametrize("num_steps", [8, 20, 60])
@pytest.mark.parametrize("t", [-0.2, 0.0, 0.45, 10.0])
def test_fraction_below_bounds_hold_the_probes_exact_measure(num_steps, t):
    """The Chebyshev-Markov-Stieltjes bounds of each probe's Gauss rule contain that probe's exact
    measure below t, so their mean contains the mean (exact arithmetic up to 1e-12)."""
    op = _spiked(3)
    d = hesse.spectral_density(op, num_probes=6, num_steps=num_steps, seed=1)
    est = d.fraction_below(t)
    exact = float(_probe_measures(op, 6, 1, t).mean())
    assert est.lower - 1e-12 <= exact <= est.upper + 1e-12
    assert est.lower <= est.value <= est.upper
    # more nodes, finer resolution
    if num_steps == 60:
        assert est.upper - est.lower < 0.1


def test_fraction_below_and_mass_estimate_the_spectrum():
    """Against the true fractions of eigenvalues: within 4 standard errors over probes."""
    op = _spiked(3)
    lam = op.eigenvalues
    d = hesse.spectral_density(op, num_probes=30, num_steps=40, seed=2)
    for t in (0.0, 0.5):
        est = d.fraction_below(t)
        truth = float((lam < t).double().mean())
        assert abs(est.value - truth) <= 4 * est.stderr + (est.upper - est.lower)
    m = d.mass(0.0, 0.5)
    truth = float(((lam >= 0) & (lam < 0.5)).double().mean())
    assert abs(m.value - truth) <= 4 * m.stderr + (m.upper - m.lower)
    with pytest.raises(ValueError, match="a < b"):
        d.mass(1.0, 0.0)


def test_negative_mass_matches_the_summary_definition():
    """With as many Lanczos steps as eigenvalues each probe's rule is exact for its measure; the
    average over probes estimates sum_{lambda<0}|lambda| / sum|lambda| of the dense spectrum."""
    eig = torch.cat([torch.linspace(-2.0, -0.1, 20), torch.linspace(0.1, 3.0, 40)]).double()
    op = prescribed_spectrum(eig.numpy(), seed=3)
    truth = float(eig[eig < 0].abs().sum() / eig.abs().sum())
    d = hesse.spectral_density(op, num_probes=40, num_steps=60, seed=0)
    est = d.negative_mass()
    assert abs(est.value - truth) <= 4 * est.stderr
    assert est.lower <= est.value <= est.upper
    assert hesse.summarize(op).negative_mass == pytest.approx(truth, rel=1e-10)


def test_resmooth_puts_snapshots_on_one_grid_and_width():
    op = _spiked(3)
    a = hesse.spectral_density(op, num_probes=2, num_steps=30, seed=0)
    torch.testing.assert_close(a.resmooth().density, a.density, rtol=0, atol=0)
    b = hesse.spectral_density(op, num_probes=2, num_steps=30, seed=0, sigma=0.05)
    torch.testing.assert_close(a.resmooth(sigma=0.05, grid=b.grid).density, b.density, rtol=1e-14, atol=0)
    grid = torch.linspace(-1, 60, 500, dtype=torch.float64)
    c = hesse.spectral_density(_spiked(5), num_probes=2, num_steps=30, seed=0)
    sa, sc = a.resmooth(sigma=0.1, grid=grid), c.resmooth(sigma=0.1, grid=grid)
    assert torch.equal(sa.grid, sc.grid) and sa.sigma == sc.sigma == 0.1
    assert sa.num_matvecs == 0 and abs(sa.integral() - 1) < 1e-6
    with pytest.raises(ValueError, match="sigma"):
        a.resmooth(sigma=-1.0)
