"""Definiteness: the five methods agree with each other and with ground-truth spectra."""

import pytest
import torch

import hesse
from hesse.geometry.definiteness import METHODS

GENERAL = ("eigenvalues", "cholesky", "ldl", "sylvester")


def _matrix(eigs, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ Q.T


def _truth(eigs):
    pos, neg = sum(e > 0 for e in eigs), sum(e < 0 for e in eigs)
    n = len(eigs)
    if pos == n:
        return "positive definite"
    if neg == n:
        return "negative definite"
    if pos == 0 and neg == 0:
        return "zero"
    if neg == 0:
        return "positive semidefinite"
    if pos == 0:
        return "negative semidefinite"
    return "indefinite"


SPECTRA = [
    [1.0, 2.0, 3.0], [-1.0, -0.5, -4.0], [1.0, 0.0, 2.0], [0.0, -1.0, -3.0], [1.0, -1.0, 0.0],
    [0.0, 0.0, 0.0], [2.0, -3.0, 1.0, 0.5], [0.0, 0.0, 1.5, 2.0], [0.0, 0.0, -1.0, -2.0, -0.3],
    [0.3, 0.0, -0.2, 1.0, 2.0],
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eigs", SPECTRA, ids=str)
def test_methods_agree_with_truth(eigs, seed):
    # eigenvalues are exactly 0 or >= 0.2 in size; tol 1e-8 sits far from both (rounding ~1e-15)
    H = _matrix(eigs, seed)
    verdicts = {m: hesse.definiteness(H, method=m, tol=1e-8).verdict for m in GENERAL}
    assert set(verdicts.values()) == {_truth(eigs)}, verdicts


@pytest.mark.parametrize("seed", range(20))
def test_methods_agree_on_random_2x2(seed):
    g = torch.Generator().manual_seed(seed)
    kind = seed % 4
    eigs = torch.randn(2, generator=g, dtype=torch.float64).abs() + 0.1
    if kind == 1:
        eigs[0] = -eigs[0]
    elif kind == 2:
        eigs[0] = 0.0
    elif kind == 3:
        eigs = -eigs
    H = _matrix(eigs.tolist(), seed)
    verdicts = {m: hesse.definiteness(H, method=m, tol=1e-8).verdict for m in METHODS}
    assert len(set(verdicts.values())) == 1, verdicts


def test_leading_minors_alone_mislead_on_diag_0_minus1():
    # leading minors of diag(0, -1) are 0 and 0 ("≥ 0"), yet the matrix is negative semidefinite
    H = torch.diag(torch.tensor([0.0, -1.0], dtype=torch.float64))
    for m in METHODS:
        assert hesse.definiteness(H, method=m).verdict == "negative semidefinite", m
    r = hesse.definiteness(H, method="sylvester")
    assert "principal minor" in r.details  # decided by a non-leading minor


def test_inertia_from_ldl_matches_eigenvalues():
    H = _matrix([3.0, -2.0, 0.0, 0.0, 1.0, -0.5], 7)
    a = hesse.definiteness(H, method="eigenvalues", tol=1e-8).inertia
    b = hesse.definiteness(H, method="ldl", tol=1e-8).inertia
    assert a == b == (2, 2, 2)


def test_textbook_paraboloid_and_saddle():
    assert hesse.definiteness([[2.0, 0.0], [0.0, 8.0]], method="discriminant").verdict == "positive definite"
    assert hesse.definiteness([[2.0, 0.0], [0.0, -2.0]], method="discriminant").verdict == "indefinite"
    assert hesse.definiteness([[6.0, 2.0], [2.0, 4.0]], method="sylvester").verdict == "positive definite"


def test_operator_input_and_errors():
    op = hesse.DenseOperator(torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64)))
    assert hesse.definiteness(op, method="cholesky").verdict == "positive definite"
    with pytest.raises(ValueError, match="method must be one of"):
        hesse.definiteness(torch.eye(2), method="qr")
    with pytest.raises(ValueError, match="not symmetric"):
        hesse.definiteness([[1.0, 2.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="square"):
        hesse.definiteness([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="2-D rule"):
        hesse.definiteness(torch.eye(3, dtype=torch.float64), method="discriminant")
    with pytest.raises(ValueError, match="tol"):
        hesse.definiteness(torch.eye(2), tol=-1.0)


@pytest.mark.parametrize("diag,verdict", [([1.0, 0.0], "positive semidefinite"), ([0.0, -2.0], "negative semidefinite"),
                                          ([0.0, 0.0], "zero"), ([3.0, -1.0], "indefinite")])
def test_exact_zero_tolerance_on_diagonal_matrices(diag, verdict):
    # diagonal matrices are exact in floating point: tol = 0 must still agree across methods
    H = torch.diag(torch.tensor(diag, dtype=torch.float64))
    for m in METHODS:
        assert hesse.definiteness(H, method=m, tol=0.0).verdict == verdict, m
