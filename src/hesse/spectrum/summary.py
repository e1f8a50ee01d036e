"""One-call summary of a spectrum: extremes, trace, conditioning, negative mass, effective rank.

Definitions (``lambda_i`` the eigenvalues, ``s = max_i |lambda_i|``):

- ``condition_number = s / min{|lambda_i| : |lambda_i| > zero_rtol * s}``: the condition number over
  the *nonzero* spectrum (eigenvalues below the threshold count as zero; the threshold is reported).
- ``negative_mass = sum_{lambda_i < 0} |lambda_i| / sum_i |lambda_i|`` (Ghorbani et al. 2019 report
  the same ratio for network Hessians) and ``fraction_negative = #{lambda_i < -t} / n``.
- ``effective_rank = exp(-sum_i p_i log p_i)``, ``p_i = |lambda_i| / sum_j |lambda_j|`` (Roy & Vetterli
  2007, EUSIPCO).
- ``definiteness``: "positive definite" if ``lambda_min > t``, "positive semidefinite" if
  ``|lambda_min| <= t``, the mirror images for negative, "indefinite" if ``lambda_min < -t < t <
  lambda_max``, with ``t = definiteness_rtol * s`` (reported as ``tolerance``).

Operators whose dense float64 matrix fits the memory budget (``_DENSE_COPIES`` n x n matrices under
``max_memory``, 4 GiB by default: n up to about 13,000) are diagonalised densely and every number is
exact (``method="dense"``; ``n`` products, seconds at n = 3,500). Larger ones use :func:`eigsh`
(``which="both"``) for the extremes, exact to its tolerance, XTrace for the trace (with standard
error) and stochastic Lanczos quadrature (SLQ) for the rest (``method="iterative"``). SLQ's nodes
sample the interior of the spectrum coarsely (Lin, Saad & Yang 2016, sec. 3): counts of eigenvalues
are resolved only to the smoothing width ``sigma = resolution``, so ``fraction_negative`` is then the
mass below ``-_RESOLUTION_SIGMAS * sigma`` (``negative_threshold``), and the effective rank and the
condition number, which depend on individual small eigenvalues, are not estimated (``nan``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from hesse._memory import default_max_memory
from hesse._result import Result
from hesse.operators import CurvatureOperator

from ._common import check_operator
from .density import _SIGMA_FRACTION, slq_nodes
from .lanczos import DENSE_THRESHOLD, eigsh
from .trace import trace as _trace

__all__ = ["SpectrumSummary", "summarize", "definiteness_verdict"]


@dataclass(repr=False)
class SpectrumSummary(Result):
    """Result of :func:`summarize` (see the module docs for each definition)."""

    n: int
    lambda_max: float
    lambda_min: float
    trace: float
    trace_stderr: float
    condition_number: float
    zero_threshold: float
    negative_mass: float
    fraction_negative: float
    effective_rank: float
    definiteness: str
    tolerance: float
    method: str
    converged: bool
    num_matvecs: int
    resolution: float = 0.0
    negative_threshold: float = 0.0

    def __repr__(self) -> str:
        est = "" if self.method == "dense" else " (estimates from SLQ/XTrace where noted)"
        return (
            f"SpectrumSummary(n={self.n}, method={self.method!r}{est},\n"
            f"  lambda_max={self.lambda_max:.6g}, lambda_min={self.lambda_min:.6g}, "
            f"trace={self.trace:.6g} ± {self.trace_stderr:.2g},\n"
            f"  condition_number={self.condition_number:.4g} (nonzero |lambda| > {self.zero_threshold:.2g}), "
            f"negative_mass={self.negative_mass:.4g}, fraction_negative={self.fraction_negative:.4g} "
            f"(below {-self.negative_threshold:.2g}{self._resolution_note()}), "
            f"effective_rank={self.effective_rank:.4g},\n"
            f"  definiteness={self.definiteness!r} (tolerance {self.tolerance:.2g}), "
            f"converged={self.converged}, num_matvecs={self.num_matvecs})"
        )


    def _resolution_note(self) -> str:
        return f", SLQ resolution sigma = {self.resolution:.2g}" if self.resolution > 0 else ""


#: Dense float64 n x n matrices summarize may hold at once: the matrix, eigh's copy and workspace.
_DENSE_COPIES = 3

#: With SLQ, eigenvalues are counted below ``-_RESOLUTION_SIGMAS * sigma``: a node's Gaussian of
#: width ``sigma`` puts 0.1 % of its mass that far out, so a count below it is not a smoothed zero.
_RESOLUTION_SIGMAS = 3


def definiteness_verdict(lambda_min: float, lambda_max: float, tolerance: float) -> str:
    """Classify a symmetric matrix from its extreme eigenvalues with an absolute ``tolerance``."""
    t = tolerance
    if abs(lambda_min) <= t and abs(lambda_max) <= t:
        return "zero"
    if lambda_min > t:
        return "positive definite"
    if lambda_min >= -t:
        return "positive semidefinite"
    if lambda_max < -t:
        return "negative definite"
    if lambda_max <= t:
        return "negative semidefinite"
    return "indefinite"


#: A bulk whose edge is at most this fraction of lambda_max is described as "near zero".
NEAR_ZERO_FRACTION = 0.05


def describe_bulk(bulk_edge: float, lambda_max: float) -> str:
    """Words for the bulk of a spectrum that follow its numbers.

    ``bulk_edge`` is where the bulk ends (e.g. the 99th percentile of ``|lambda|`` under the SLQ
    density). Only a bulk whose edge is at most ``NEAR_ZERO_FRACTION`` of ``|lambda_max|`` is
    "near zero"; otherwise the text gives its extent, so an edge of 1.38 under a top eigenvalue
    of 2.1 is never called near zero.
    """
    edge, scale = abs(float(bulk_edge)), abs(float(lambda_max))
    if not (math.isfinite(edge) and math.isfinite(scale)):
        raise ValueError(f"bulk_edge and lambda_max must be finite, got {bulk_edge!r} and {lambda_max!r}.")
    if edge <= NEAR_ZERO_FRACTION * scale:
        return f"a bulk near zero (|lambda| <= {edge:.3g})"
    return f"a bulk extending to |lambda| = {edge:.3g} ({edge / scale:.0%} of lambda_max)" if scale > 0 \
        else f"a bulk extending to |lambda| = {edge:.3g}"


def _sums(values: torch.Tensor, mass: torch.Tensor, n: int, zero_rtol: float, t: float
          ) -> tuple[float, float, float, float, float]:
    """Spectral sums from a discrete measure ``sum_l mass_l delta(values_l)`` of total mass ``n``."""
    a = values.abs()
    s = float(a.max())
    thr = zero_rtol * s
    nz = a > thr
    cond = s / float(a[nz].min()) if bool(nz.any()) else float("inf")
    total = float((mass * a).sum())
    neg_mass = float((mass * a)[values < 0].sum()) / total if total > 0 else 0.0
    frac_neg = float(mass[values < -t].sum()) / n
    p = mass * a / total if total > 0 else mass * 0
    keep = p > 0
    # entropy of p_i = |lambda_i| / sum |lambda|, with node l standing for mass_l equal eigenvalues
    ent = -float((p[keep] * torch.log(p[keep] / mass[keep])).sum())
    return cond, thr, neg_mass, frac_neg, math.exp(ent)


def summarize(op: CurvatureOperator, *, tol: float = 1e-6, zero_rtol: float = 1e-6, definiteness_rtol: float = 1e-6,
              trace_matvecs: int = 100, num_probes: int = 4, num_steps: int = 60, seed: int = 0,
              dense_threshold: int = DENSE_THRESHOLD, progress: bool = False,
              max_memory: int | None = None) -> SpectrumSummary:
    """Summary numbers of the spectrum of ``op`` (see module docs for definitions and method).

    Dense (exact) when ``n <= dense_threshold`` or the dense matrix fits ``max_memory`` (default
    4 GiB or ``HESSE_MAX_MEMORY``); otherwise iterative, with ``fraction_negative`` counted below
    ``-3 sigma`` of SLQ's resolution and ``effective_rank``, ``condition_number`` left ``nan``.

    Cost: ``n`` products when dense; otherwise the products of ``eigsh(k=2, which="both")`` plus
    ``trace_matvecs`` plus ``num_probes * num_steps``.
    """
    op = check_operator(op)
    n = op.shape[0]
    start = op.num_matvecs
    limit = default_max_memory() if max_memory is None else int(max_memory)
    if n <= dense_threshold or _DENSE_COPIES * n * n * 8 <= limit:
        lam = torch.linalg.eigvalsh(op.to_dense().to(torch.float64)).cpu()
        lmin, lmax = float(lam[0]), float(lam[-1])
        t = definiteness_rtol * float(lam.abs().max())
        cond, thr, neg, fneg, erank = _sums(lam, torch.ones_like(lam), n, zero_rtol, t)
        return SpectrumSummary(n, lmax, lmin, float(lam.sum()), 0.0, cond, thr, neg, fneg, erank,
                               definiteness_verdict(lmin, lmax, t), t, "dense", True,
                               op.num_matvecs - start, 0.0, t)
    ext = eigsh(op, k=2, which="both", tol=tol, seed=seed, progress=progress, dense_threshold=0,
                return_vectors=False)
    lmax, lmin = float(ext.values.max()), float(ext.values.min())
    tr = _trace(op, "xtrace", trace_matvecs, seed=seed, progress=progress)
    nodes, weights = slq_nodes(op, num_probes, num_steps, seed=seed, progress=progress)
    s = max(abs(lmax), abs(lmin))
    t = definiteness_rtol * s
    vals = torch.cat([nodes.reshape(-1), torch.tensor([lmax, lmin], dtype=torch.float64)])
    mass = torch.cat([n * weights.reshape(-1) / num_probes, torch.zeros(2, dtype=torch.float64)])
    # SLQ's resolution: the smoothing width spectral_density would use on these nodes
    live = weights > 0
    sigma = _SIGMA_FRACTION * (float(nodes[live].max()) - float(nodes[live].min())) or _SIGMA_FRACTION * s
    below = _RESOLUTION_SIGMAS * sigma
    _, thr, neg, fneg, _ = _sums(vals, mass, n, zero_rtol, below)
    nan = float("nan")
    return SpectrumSummary(n, lmax, lmin, tr.value, tr.stderr, nan, thr, neg, fneg, nan,
                           definiteness_verdict(lmin, lmax, t), t, "iterative", ext.all_converged,
                           op.num_matvecs - start, sigma, below)
