"""What the network-Hessian literature reads off a spectrum: outliers over a bulk, and how much of
a vector or a subspace lies in an eigenspace.

- **Outliers** (Sagun et al. 2017; Papyan 2019): a trained classifier's Hessian has a few large
  eigenvalues (about as many as classes) separated from a bulk near zero. :func:`outliers` reads
  them off the top eigenvalues of :func:`hesse.eigsh`: against the bulk edge of an SLQ density (the
  ``quantile`` of ``|λ|`` under it) when one is given, otherwise at the largest gap ratio
  ``λ_i / λ_{i+1}`` among the eigenvalues computed.
- **Subspace overlap** (Gur-Ari, Roberts & Dyer 2018, "Gradient descent happens in a tiny
  subspace"): the fraction of ``‖g‖²`` in the span of ``V``, ``‖Q^T g‖² / ‖g‖²`` with ``Q`` an
  orthonormal basis of ``span V``.
- **Principal angles** between two subspaces (Björck & Golub 1973; Golub & Van Loan 2013,
  sec. 6.4.3): ``cos θ_i`` are the singular values of ``Q_1^T Q_2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from hesse._result import Result

__all__ = ["outliers", "OutlierAnalysis", "bulk_edge", "subspace_overlap", "principal_angles",
           "OUTLIER_FACTOR"]

#: An eigenvalue is an outlier when it exceeds this multiple of the bulk edge: the bulk of a trained
#: network's Hessian ends near its edge while its outliers lie an order of magnitude and more above
#: it (Papyan 2019, Fig. 1; Ghorbani et al. 2019, sec. 3).
OUTLIER_FACTOR = 4.0


def bulk_edge(density: Any, quantile: float = 0.99) -> float:
    """The ``quantile`` of ``|λ|`` under an SLQ density's quadrature distribution (nodes weighted
    by their weights, all probes pooled): where the bulk ends."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1), got {quantile!r}.")
    nodes = density.nodes.reshape(-1).abs()
    w = density.weights.reshape(-1).clamp_min(0)
    order = torch.argsort(nodes)
    cdf = torch.cumsum(w[order], 0) / w.sum()
    idx = int(torch.searchsorted(cdf, torch.tensor(quantile, dtype=cdf.dtype)).clamp(max=len(cdf) - 1))
    return float(nodes[order][idx])


@dataclass(repr=False)
class OutlierAnalysis(Result):
    """Result of :func:`outliers`.

    ``values``: the eigenvalues examined (descending); ``gap_ratios``: ``λ_i / λ_{i+1}`` for
    consecutive positive pairs (nan where ``λ_{i+1} <= 0``); ``largest_gap``: the ``i`` (1-based) of
    the largest ratio, so that ``λ_1..λ_i`` lie above it; ``bulk_edge`` (None without a density);
    ``num_outliers`` and ``outlier_values``; ``method`` (``"bulk edge"`` or ``"largest gap"``);
    ``at_least``: every eigenvalue examined is an outlier, so there may be more (ask eigsh for a
    larger ``k``).
    """

    values: list[float]
    gap_ratios: list[float]
    largest_gap: int
    bulk_edge: float | None
    num_outliers: int
    outlier_values: list[float]
    method: str
    at_least: bool


def outliers(eigsh_result: Any, density: Any = None, factor: float = OUTLIER_FACTOR,
             quantile: float = 0.99) -> OutlierAnalysis:
    """Outlier eigenvalues over the bulk of a spectrum (see the module docs).

    Parameters
    ----------
    eigsh_result
        the result of ``hesse.eigsh(op, k, which="largest")`` (or a sequence of the top
        eigenvalues).
    density
        an SLQ :class:`~hesse.spectrum.SpectralDensity` of the same operator; with it, the
        outliers are the eigenvalues above ``factor`` times its bulk edge.
    factor
        the multiple of the bulk edge an outlier exceeds.
    quantile
        the quantile of ``|λ|`` that defines the bulk edge.

    Returns
    -------
    OutlierAnalysis
        With a density the count is ``#{λ_i > factor · bulk_edge}``; without one it is the index of
        the largest gap ratio (at least one eigenvalue is then called an outlier: the split is only
        as meaningful as the gap, which ``gap_ratios`` shows).
    """
    raw = getattr(eigsh_result, "values", eigsh_result)
    values = sorted((float(v) for v in torch.as_tensor(raw).reshape(-1).tolist()), reverse=True)
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError("outliers needs finite top eigenvalues (hesse.eigsh(op, k, which='largest')).")
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}.")
    ratios = [a / b if b > 0 else float("nan") for a, b in zip(values, values[1:])]
    finite = [(r, i) for i, r in enumerate(ratios) if math.isfinite(r)]
    largest = max(finite)[1] + 1 if finite else len(values)
    if density is not None:
        edge_value = bulk_edge(density, quantile)
        edge: float | None = edge_value
        threshold = factor * edge_value
        out = [v for v in values if v > threshold]
        method = "bulk edge"
    else:
        edge, out, method = None, values[:largest], "largest gap"
    return OutlierAnalysis(values=values, gap_ratios=ratios, largest_gap=largest, bulk_edge=edge,
                           num_outliers=len(out), outlier_values=out, method=method,
                           at_least=method == "bulk edge" and len(out) == len(values))


def _basis(V: Any, name: str) -> torch.Tensor:
    V = torch.as_tensor(V)
    if V.dim() == 1:
        V = V[:, None]
    if V.dim() != 2 or V.shape[1] == 0:
        raise ValueError(f"{name} must be a vector or an (n, k) matrix of k >= 1 columns, got shape "
                         f"{tuple(V.shape)}.")
    if not bool(torch.isfinite(V).all()):
        raise ValueError(f"{name} has non-finite entries.")
    Q, R = torch.linalg.qr(V.to(torch.float64))
    rank_tol = V.shape[0] * torch.finfo(torch.float64).eps * float(R.diagonal().abs().max().clamp_min(1e-300))
    keep = R.diagonal().abs() > rank_tol
    if not bool(keep.any()):
        raise ValueError(f"{name} spans nothing (its columns are zero).")
    return Q[:, keep]


def subspace_overlap(V: Any, g: Any) -> float:
    """The fraction of ``‖g‖²`` in ``span V``: ``‖Q^T g‖² / ‖g‖²`` (Gur-Ari et al. 2018), ``Q`` an
    orthonormal basis of the columns of ``V``; computed in float64. Between 0 (``g ⟂ span V``) and
    1 (``g ∈ span V``).

    Parameters
    ----------
    V
        an ``(n, k)`` matrix whose columns span the subspace (e.g. ``eigsh(...).vectors``; any
        basis, orthonormal or not), or one vector.
    g
        the vector, of length ``n`` (e.g. a gradient).
    """
    g = torch.as_tensor(g).reshape(-1).to(torch.float64)
    Q = _basis(V, "V")
    if Q.shape[0] != g.numel():
        raise ValueError(f"V has {Q.shape[0]} rows but g has {g.numel()} entries.")
    norm2 = float(g @ g)
    if not norm2 > 0:
        raise ValueError("g is zero: its overlap with a subspace is undefined.")
    return float(((Q.T @ g.to(Q.device)) ** 2).sum()) / norm2


def principal_angles(V1: Any, V2: Any) -> torch.Tensor:
    """Principal angles (radians, ascending) between ``span V1`` and ``span V2``, ``min(k_1, k_2)``
    of them (Björck & Golub 1973; Golub & Van Loan 2013, sec. 6.4.3). Each angle is
    ``atan2(sin, cos)`` from the singular values of ``Q_1^T Q_2`` (cosines) and of
    ``Q_2 - Q_1 Q_1^T Q_2`` (sines), accurate for small angles as well as large ones (Knyazev &
    Argentati 2002)."""
    Q1, Q2 = _basis(V1, "V1"), _basis(V2, "V2")
    if Q1.shape[0] != Q2.shape[0]:
        raise ValueError(f"V1 and V2 must have the same number of rows, got {Q1.shape[0]} and {Q2.shape[0]}.")
    Q2 = Q2.to(Q1.device)
    if Q2.shape[1] > Q1.shape[1]:
        Q1, Q2 = Q2, Q1
    cos = torch.linalg.svdvals(Q1.T @ Q2)  # descending
    sin = torch.linalg.svdvals(Q2 - Q1 @ (Q1.T @ Q2)).flip(0)  # ascending: pairs with cos
    return torch.atan2(sin, cos).sort().values
