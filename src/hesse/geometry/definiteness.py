"""Definiteness of a symmetric matrix by four independent tests that must agree.

Verdicts: ``"positive definite"``, ``"negative definite"``, ``"positive semidefinite"``,
``"negative semidefinite"``, ``"indefinite"`` and ``"zero"`` (every eigenvalue within the
tolerance of 0). All four methods use the same absolute eigenvalue tolerance ``tol``: an
eigenvalue counts as zero when ``|λ| <= tol``.

* ``"eigenvalues"``: ``torch.linalg.eigvalsh``; counts λ > tol, λ < -tol (Golub & Van Loan 2013,
  sec. 8.1). Cost O(n³), gives the inertia.
* ``"cholesky"``: Cholesky of shifted matrices. ``H - tol I = LLᵀ`` exists iff λ_min > tol
  (positive definite), ``H + tol I`` iff λ_min > -tol (positive semidefinite within tol); the
  same on ``-H`` for the negative cases (Higham 2002, sec. 10.1). Four factorizations, no inertia.
* ``"ldl"``: Bunch-Kaufman LDLᵀ (``scipy.linalg.ldl``) of ``H - tol I`` and ``H + tol I``;
  Sylvester's law of inertia counts eigenvalues above tol / below -tol from the 1x1 and 2x2
  blocks of D (Golub & Van Loan 2013, sec. 4.4 and 8.1.1). Gives the inertia.
* ``"sylvester"``: Sylvester's criterion. Definite: all leading principal minors Δ_k > δ_k
  (negative definite: (-1)^k Δ_k > δ_k). Semidefinite: ALL 2ⁿ-1 principal minors >= -δ_k (the
  leading ones alone mislead: diag(0, -1) has leading minors 0, 0 but is not PSD; Horn & Johnson
  2013, Thm 7.2.5). δ_k = k·tol·s^(k-1), s = max(‖H‖₂, tol), bounds the change of a k x k
  minor under a perturbation of size tol. Limited to n <= 16 (2ⁿ minors).
* ``"discriminant"``: the 2-D second-derivative test with D = ac - b² for [[a, b], [b, c]]
  (Stewart 2015, *Calculus*, 8th ed., sec. 14.7):
  D > δ and a > 0: positive definite; D > δ, a < 0: negative definite; D < -δ: indefinite;
  |D| <= δ: eigenvalues 0 and a + c (semidefinite by the sign of the trace, or zero).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch

from hesse._result import Result
from hesse._validation import as_point
from hesse.operators import CurvatureOperator

__all__ = ["DefinitenessResult", "default_matrix_tolerance", "definiteness"]

METHODS = ("eigenvalues", "cholesky", "ldl", "sylvester", "discriminant")

SYLVESTER_MAX_N = 16
"""Largest n for ``"sylvester"``: its semidefinite branch computes all 2ⁿ - 1 principal minors."""

DENSE_LIMIT = 4000
"""Largest operator turned into a dense matrix (4000² float64 = 128 MB, an O(n³) factorization of
seconds); beyond it use Lanczos (:func:`hesse.classify` on the operator, :func:`hesse.eigsh`)."""

SYMMETRY_ULPS = 1e3
"""|H - Hᵀ| up to SYMMETRY_ULPS·eps·max|H|·n is the rounding of a Hessian computed in floating
point (n-term sums of products); more is a matrix that is not symmetric."""


@dataclass(repr=False)
class DefinitenessResult(Result):
    """``verdict`` of ``method`` at absolute eigenvalue tolerance ``tol``; ``inertia`` is
    (#λ > tol, #λ < -tol, #|λ| <= tol) when the method yields it, else None; ``details`` the
    quantities the verdict was read from."""

    verdict: str
    method: str
    tol: float
    inertia: tuple[int, int, int] | None
    details: str


def as_symmetric_matrix(H: Any, name: str = "H") -> torch.Tensor:
    """A dense symmetric float tensor from a tensor, array, nested list or small operator."""
    if isinstance(H, CurvatureOperator):
        n = H.shape[0]
        if n > DENSE_LIMIT:
            raise ValueError(
                f"{name} is an operator of size {n} > {DENSE_LIMIT}; a dense eigendecomposition is "
                "too costly. Use hesse.classify(H) (extreme eigenvalues by Lanczos) or hesse.eigsh.")
        return H.to_dense().detach()
    M = as_point(H, name)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"{name} must be a square matrix (n, n), got shape {tuple(M.shape)}.")
    if M.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 x 0).")
    if not bool(torch.isfinite(M).all()):
        raise ValueError(f"{name} contains NaN or Inf.")
    scale = float(M.abs().max())
    asym = float((M - M.T).abs().max())
    if asym > SYMMETRY_ULPS * torch.finfo(M.dtype).eps * max(scale, 1e-300) * M.shape[0]:
        raise ValueError(f"{name} is not symmetric (max |H - Hᵀ| = {asym:.3g}); a Hessian is symmetric. "
                         "Pass (H + H.T) / 2 if the asymmetry is rounding.")
    return 0.5 * (M + M.T)


def default_matrix_tolerance(M: torch.Tensor) -> float:
    """max(n, 10) · eps · ‖M‖₂: the numerical-rank tolerance of ``numpy.linalg.matrix_rank``."""
    eps = torch.finfo(M.dtype).eps
    norm = float(torch.linalg.matrix_norm(M, ord=2)) if M.numel() else 0.0
    return max(M.shape[0], 10) * eps * norm


def _verdict(pd: bool, nd: bool, psd: bool, nsd: bool) -> str:
    if pd:
        return "positive definite"
    if nd:
        return "negative definite"
    if psd and nsd:
        return "zero"
    if psd:
        return "positive semidefinite"
    if nsd:
        return "negative semidefinite"
    return "indefinite"


def _verdict_from_inertia(pos: int, neg: int, zero: int) -> str:
    n = pos + neg + zero
    return _verdict(pos == n, neg == n, neg == 0, pos == 0)


def definiteness(H: Any, method: str = "eigenvalues", tol: float | None = None) -> DefinitenessResult:
    """Definiteness of the symmetric matrix ``H`` (tensor, array, nested list or small
    :class:`~hesse.operators.CurvatureOperator`) by ``method`` (see the module docstring).

    ``tol`` (absolute, on the eigenvalue scale) defaults to max(n, 10)·eps·‖H‖₂. All methods agree
    whenever no eigenvalue lies near ±tol. Cost: O(n³) for every method but ``"sylvester"``,
    whose semidefinite branch computes 2ⁿ - 1 determinants.

    Parameters
    ----------
    H
        the symmetric matrix, or a small operator (it is made dense).
    method
        ``"eigenvalues"`` (default), ``"cholesky"``, ``"ldl"``, ``"sylvester"`` or
        ``"discriminant"``.
    tol
        absolute tolerance below which an eigenvalue (or pivot) counts as zero (default above).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}.")
    M = as_symmetric_matrix(H)
    return _METHOD_FUNCTIONS[method](M, _check_tol(tol, M))


def _check_tol(tol: Any, M: torch.Tensor) -> float:
    if tol is None:
        return default_matrix_tolerance(M)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not np.isfinite(tol) or tol < 0:
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}.")
    return float(tol)


def _by_eigenvalues(M: torch.Tensor, tol: float) -> DefinitenessResult:
    lam = torch.linalg.eigvalsh(M)
    pos, neg = int((lam > tol).sum()), int((lam < -tol).sum())
    inertia = (pos, neg, M.shape[0] - pos - neg)
    return DefinitenessResult(_verdict_from_inertia(*inertia), "eigenvalues", tol, inertia,
                              f"eigenvalues in [{float(lam[0]):.6g}, {float(lam[-1]):.6g}]")


def _by_cholesky(M: torch.Tensor, tol: float) -> DefinitenessResult:
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)

    def ok(A: torch.Tensor) -> bool:
        return int(torch.linalg.cholesky_ex(A).info) == 0

    pd, nd = ok(M - tol * eye), ok(-M - tol * eye)
    psd, nsd = ok(M + tol * eye) if not pd else True, ok(-M + tol * eye) if not nd else True
    if tol == 0:  # Cholesky of a singular PSD matrix may fail or not: decide semidefinite by eigenvalues of D
        psd = pd or _ldl_inertia(M, 0.0)[1] == 0
        nsd = nd or _ldl_inertia(M, 0.0)[0] == 0
    return DefinitenessResult(_verdict(pd, nd, psd, nsd), "cholesky", tol, None,
                              f"Cholesky of H∓tol·I and -H∓tol·I: pd={pd}, nd={nd}, psd={psd}, nsd={nsd}")


def _by_ldl(M: torch.Tensor, tol: float) -> DefinitenessResult:
    eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
    pos = _ldl_inertia(M - tol * eye, 0.0)[0]   # eigenvalues of H above tol
    neg = _ldl_inertia(M + tol * eye, 0.0)[1]   # eigenvalues of H below -tol
    inertia = (pos, neg, M.shape[0] - pos - neg)
    return DefinitenessResult(_verdict_from_inertia(*inertia), "ldl", tol, inertia,
                              "inertia of D in the Bunch-Kaufman factorization P(H ∓ tol·I)Pᵀ = LDLᵀ")


def _by_discriminant(M: torch.Tensor, tol: float) -> DefinitenessResult:
    n = M.shape[0]
    if n != 2:
        raise ValueError(f"method='discriminant' is the 2-D rule; H is {n} x {n}. Use "
                         "method='eigenvalues', 'cholesky', 'ldl' or 'sylvester'.")
    a, b, c = float(M[0, 0]), float(M[0, 1]), float(M[1, 1])
    D = a * c - b * b
    s = max(float(torch.linalg.matrix_norm(M, ord=2)), tol)
    delta = _minor_perturbation(2, tol, s)  # D = λ₁λ₂ moves by at most 2·tol·s under a change tol
    if D > delta:
        verdict = "positive definite" if a > 0 else "negative definite"
    elif D < -delta:
        verdict = "indefinite"
    else:
        t = a + c
        verdict = "positive semidefinite" if t > tol else "negative semidefinite" if t < -tol else "zero"
    return DefinitenessResult(verdict, "discriminant", tol, None, f"D = ac - b² = {D:.6g}, a = {a:.6g}, "
                              f"trace = {a + c:.6g}, |D| threshold {delta:.3g}")


def _minor_perturbation(k: int, tol: float, s: float) -> float:
    """δ_k = k·tol·s^(k-1): a k x k minor (a product of k eigenvalues of size <= s) changes by at
    most about this when the matrix changes by tol in norm."""
    return k * tol * s ** (k - 1)


def _by_sylvester(M: torch.Tensor, tol: float) -> DefinitenessResult:
    n = M.shape[0]
    if n > SYLVESTER_MAX_N:
        raise ValueError(f"method='sylvester' needs 2ⁿ principal minors; n = {n} > {SYLVESTER_MAX_N}. "
                         "Use method='eigenvalues' or 'ldl'.")
    s = max(float(torch.linalg.matrix_norm(M, ord=2)), tol)
    delta = [0.0] + [_minor_perturbation(k, tol, s) for k in range(1, n + 1)]
    lead = [float(torch.linalg.det(M[:k, :k])) for k in range(1, n + 1)]
    pd = all(d > delta[k] for k, d in enumerate(lead, start=1))
    nd = all((-1) ** k * d > delta[k] for k, d in enumerate(lead, start=1))
    psd, nsd, worst = (True, True, "") if pd or nd else _all_principal_minors(M, delta)
    return DefinitenessResult(_verdict(pd, nd, psd or pd, nsd or nd), "sylvester", tol, None,
                              "leading minors " + ", ".join(f"{d:.4g}" for d in lead) + (";" + worst if worst else ""))


def _all_principal_minors(M: torch.Tensor, delta: list[float]) -> tuple[bool, bool, str]:
    """(psd, nsd, the offending minors in words) from all principal minors, order by order: PSD
    iff every principal minor is >= 0 (Horn & Johnson 2013, Thm 7.2.5), NSD iff (-1)^k Δ >= 0."""
    n = M.shape[0]
    psd = nsd = True
    worst = ""
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        idx = torch.tensor(subsets, device=M.device)
        dets = torch.linalg.det(M[idx[:, :, None], idx[:, None, :]])
        if psd and bool((dets < -delta[k]).any()):
            psd = False
            worst += f" principal minor {subsets[int(dets.argmin())]} = {float(dets.min()):.3g} < 0;"
        if nsd and bool(((-1) ** k * dets < -delta[k]).any()):
            nsd = False
            j = int(((-1) ** k * dets).argmin())
            worst += f" (-1)^{k}·minor {subsets[j]} = {float((-1) ** k * dets[j]):.3g} < 0;"
        if not (psd or nsd):
            break
    return psd, nsd, worst


_METHOD_FUNCTIONS: dict[str, Callable[[torch.Tensor, float], DefinitenessResult]] = {
    "eigenvalues": _by_eigenvalues, "cholesky": _by_cholesky, "ldl": _by_ldl,
    "sylvester": _by_sylvester, "discriminant": _by_discriminant,
}


def _ldl_inertia(A: torch.Tensor, tol: float) -> tuple[int, int, int]:
    """(#positive, #negative, #zero) eigenvalues of D in A = LDLᵀ (Sylvester's law of inertia)."""
    _, D, _ = scipy.linalg.ldl(A.detach().cpu().double().numpy(), lower=True)
    pos = neg = 0
    n = D.shape[0]
    i = 0
    while i < n:
        if i + 1 < n and D[i + 1, i] != 0.0:
            ev = np.linalg.eigvalsh(D[i:i + 2, i:i + 2])
            pos += int((ev > tol).sum())
            neg += int((ev < -tol).sum())
            i += 2
        else:
            pos += int(D[i, i] > tol)
            neg += int(D[i, i] < -tol)
            i += 1
    return pos, neg, n - pos - neg
