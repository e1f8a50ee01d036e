"""Extreme eigenpairs of a symmetric curvature operator: thick-restart Lanczos (Krylov-Schur).

Math. Lanczos builds an orthonormal basis ``Q_j`` of the Krylov space
``K_j(A, q_0) = span{q_0, A q_0, ..., A^{j-1} q_0}`` with ``A Q_j = Q_j T_j + r_j e_j^T``; the
eigenpairs ``(theta_i, Q_j s_i)`` of the small projected matrix ``T_j`` (Ritz pairs) approximate
the extreme eigenpairs of ``A`` with residual norms ``||A y_i - theta_i y_i|| = ||r_j|| |e_j^T s_i|``,
known without extra products. We keep the basis orthonormal to working precision by full
reorthogonalization (classical Gram-Schmidt applied twice, "twice is enough", Giraud et al. 2005)
and bound memory by *thick restarting* (Wu & Simon 2000, SIAM J. Matrix Anal. Appl. 22(2); the
symmetric Krylov-Schur method of Stewart 2001): after ``m`` vectors, keep the ``p`` most wanted
Ritz vectors plus the residual direction, so ``A Q_p = Q_p diag(theta) + q_{p+1} b^T`` and continue.
The projected matrix is held and diagonalised in float64 whatever the operator's dtype.

A low-memory variant (``low_memory=True``) keeps only the tridiagonal: it runs the three-term
recurrence (in float64) without reorthogonalization, discards the spurious "ghost" Ritz values with
the test of Cullum & Willoughby (1985, *Lanczos Algorithms for Large Symmetric Eigenvalue
Computations*, vol. 1, ch. 4) and recomputes the eigenvectors in a second pass that re-runs the same
recurrence (Golub & Van Loan 2013, *Matrix Computations*, sec. 10.3). It stores ``4 + k``
parameter-sized float64 vectors instead of ``m + 1 + k`` but costs twice the products and more steps.

One recurrence, :func:`_lanczos_steps` (one or a batch of starting vectors, with or without a
stored, reorthogonalised basis), serves the Krylov-Schur and two-pass paths, :func:`lanczos_tridiagonal`
and stochastic Lanczos quadrature (:func:`hesse.spectrum.density.slq_nodes`).

Cost: ``num_matvecs`` products (reported); the default Krylov-Schur path reached relative errors
below 1e-10 on the top 5 eigenvalues of digits MLPs in about 30-60 products (see the README).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from hesse._memory import default_max_memory, format_bytes
from hesse._progress import Progress
from hesse._result import Result
from hesse._validation import check_choice
from hesse.operators import CurvatureOperator

from ._common import check_operator, gaussian, generator

__all__ = ["EigshResult", "eigsh", "lanczos_tridiagonal", "DENSE_THRESHOLD"]

def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the Krylov basis for products in ``dtype``: float32 for the 16-bit formats, whose
    rounding (``eps`` 1e-3 for float16, 8e-3 for bfloat16) would otherwise enter every Gram-Schmidt
    coefficient and the Ritz vectors, and the operator's own dtype otherwise."""
    return torch.float32 if torch.empty((), dtype=dtype).element_size() < 4 else dtype


#: Operators with at most this many rows are diagonalised densely (``torch.linalg.eigh``).
DENSE_THRESHOLD = 500

_WHICH = ("largest", "smallest", "both", "magnitude")

#: Default Krylov basis ``m = max(2 k + _BASIS_MARGIN, _MIN_BASIS)``: with ``m`` about twice the
#: wanted pairs a thick restart keeps ``k`` plus half the spare vectors, so every cycle adds enough
#: new directions to improve all ``k`` pairs (Wu & Simon 2000, sec. 4), and a floor of 20 keeps a few
#: wanted pairs from restarting after a handful of products.
_BASIS_MARGIN = 10
_MIN_BASIS = 20

#: Default product budget ``max(_MIN_BUDGET, _MATVECS_PER_BASIS * m)``: the products of 30 full
#: bases, generous for gapped spectra, yet finite so a clustered spectrum ends with a warning
#: instead of running on.
_MIN_BUDGET = 300
_MATVECS_PER_BASIS = 30

#: Ritz pairs beyond the ``k`` wanted ones that must converge too before the wanted ones are returned.
#: A small residual proves an eigenvalue near the Ritz value, not that it is the extreme one: with
#: two close extreme eigenvalues and a start nearly orthogonal to the extreme eigenvector, the
#: second one converges first and would be returned as the extreme (measured: 1 of 40 starts on a
#: spectrum whose two smallest eigenvalues are 0.2 % of ||A|| apart, at tol=1e-4). Converging one more
#: pair (a "block" of k + 1) runs the recurrence until the next value inward is resolved too, by which
#: time a missed extreme eigenvalue has entered the Krylov space.
_GUARD_PAIRS = 1

_UNGUARDED = ("; the Ritz pair beyond the wanted ones did not converge within the budget, so an "
              "eigenvalue further out than those returned may have been missed (raise max_matvecs)")

#: A pair of a 16-bit operator is judged converged at ``max(tol, _FORMAT_EPS * eps)`` relative to
#: ``||A||``: its residual, measured with one product in that format, carries the product's rounding
#: (measured 0.25-0.5 eps on dense and MLP Hessians in float16 and bfloat16), so a smaller tolerance
#: cannot be verified.
_FORMAT_EPS = 1.0

#: Explicit residuals (``check_residuals``) are compared with ``tol * ||A||`` enlarged by 1 %, so a
#: pair the recurrence declared converged is not flipped by the rounding of the extra product.
_RESIDUAL_SLACK = 1.01

#: The two-pass path looks for convergence every this many steps: each check diagonalises ``T_j``
#: and its trailing block (``O(j^3)`` flops), which would dominate cheap products if done every step.
_TWO_PASS_CHECK_EVERY = 5

#: Cullum-Willoughby: a Ritz value within ``_GHOST_RTOL * ||A||`` of an eigenvalue of ``T_j`` without
#: its first row and column is a ghost; genuine and spurious values differ there by far more than
#: rounding (Cullum & Willoughby 1985, sec. 4.5), and float64 rounding of ``T_j`` is near 1e-16.
_GHOST_RTOL = 1e-10

#: Two Ritz values closer than ``_COPY_RTOL * sqrt(tol) * ||A||`` are copies of one eigenvalue. Copies of
#: a converged value agree to its error, about ``(tol ||A||)^2 / gap`` (Parlett 1998, Thm 11.7.1), far
#: below this, while distinct eigenvalues this close are not resolved at tolerance ``tol`` anyway.
_COPY_RTOL = 1e-3


@dataclass(repr=False)
class EigshResult(Result):
    """Eigenpairs found by :func:`eigsh` or :func:`hesse.power_iteration`.

    ``values[i]`` with ``vectors[:, i]`` (unit norm, operator dtype/device); ``residuals[i]`` is
    ``||A v_i - lambda_i v_i||`` (estimated from the recurrence unless ``residuals_checked``);
    ``converged[i]`` says whether that pair met ``residual <= tol * max|lambda|``. ``nit`` counts
    the thick restarts of the Krylov-Schur path (its outer iterations, ARPACK's iteration count),
    ``0`` for the other methods; ``message`` says why the iteration stopped.
    """

    values: torch.Tensor  # the eigenvalues, by the name scipy and torch use
    vectors: torch.Tensor | None
    residuals: torch.Tensor
    converged: torch.Tensor
    num_matvecs: int
    nit: int = 0
    method: str = "lanczos"
    which: str = "largest"
    tol: float = 1e-6
    residuals_checked: bool = False
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def __repr__(self) -> str:
        vals = ", ".join(f"{v:.6g}" for v in self.values.tolist())
        res = ", ".join(f"{r:.1e}" for r in self.residuals.tolist())
        return (
            f"EigshResult(method={self.method!r}, which={self.which!r}, values=[{vals}], "
            f"residuals=[{res}], converged={self.converged.tolist()}, "
            f"num_matvecs={self.num_matvecs}, nit={self.nit}, message={self.message!r})"
        )


def _priority(theta: torch.Tensor, which: str) -> torch.Tensor:
    """Indices of Ritz values ordered from most to least wanted."""
    if which == "largest":
        return torch.argsort(theta, descending=True)
    if which == "smallest":
        return torch.argsort(theta)
    if which == "magnitude":
        return torch.argsort(theta.abs(), descending=True)
    hi = torch.argsort(theta, descending=True)
    lo = torch.argsort(theta)
    order: list[int] = []
    seen: set[int] = set()
    for a, b in zip(hi.tolist(), lo.tolist()):
        for i in (a, b):
            if i not in seen:
                seen.add(i)
                order.append(i)
    return torch.tensor(order, dtype=torch.long)


def _output_order(values: torch.Tensor, which: str) -> torch.Tensor:
    if which == "smallest":
        return torch.argsort(values)
    if which == "magnitude":
        return torch.argsort(values.abs(), descending=True)
    return torch.argsort(values, descending=True)


def _check_v0(v0: Any, n: int, op: CurvatureOperator) -> torch.Tensor | None:
    """``v0`` as a finite, non-zero ``(n,)`` tensor in the operator's dtype and device (``None`` kept)."""
    if v0 is None:
        return None
    if not isinstance(v0, torch.Tensor):
        try:
            v0 = torch.as_tensor(v0, dtype=torch.float64)
        except Exception as err:  # noqa: BLE001
            raise TypeError(f"v0 must be a tensor of shape ({n},), got {type(v0).__name__}.") from err
    v0 = v0.detach().reshape(-1) if v0.numel() == n else v0
    if v0.shape != (n,):
        raise ValueError(f"v0 must have shape ({n},) (the operator's size), got {tuple(v0.shape)}.")
    v0 = v0.to(device=op.device, dtype=op.dtype)
    if not torch.isfinite(v0).all() or float(v0.norm()) == 0.0:
        raise ValueError("v0 must be a finite, non-zero vector (e.g. the previous top eigenvector).")
    return v0


def _check_tol(tol: Any) -> None:
    """Raise unless ``tol`` is a number in ``(0, 1)``."""
    if not isinstance(tol, (int, float)) or not (0 < tol < 1):
        raise ValueError(f"tol must be a float in (0, 1), got {tol!r}; e.g. tol=1e-6.")


def eigsh(
    op: CurvatureOperator,
    k: int = 6,
    which: str = "largest",
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    v0: Any = None,
    seed: int = 0,
    progress: bool = False,
    *,
    num_basis: int | None = None,
    low_memory: bool = False,
    check_residuals: bool = False,
    dense_threshold: int = DENSE_THRESHOLD,
    return_vectors: bool = True,
    max_memory: int | None = None,
) -> EigshResult:
    """``k`` extreme eigenpairs of the symmetric operator ``op``.

    Parameters
    ----------
    op : CurvatureOperator
        Any hesse operator (``HessianOperator``, ``GGNOperator``, ``DenseOperator``...).
    k
        number of eigenpairs.
    which
        ``"largest"`` (algebraic), ``"smallest"`` (algebraic), ``"both"`` (``ceil(k/2)``
        largest and ``floor(k/2)`` smallest) or ``"magnitude"`` (largest ``|lambda|``).
    tol
        a pair is converged when ``||A v - lambda v|| <= tol * max_i |theta_i|``. The eigenvalue
        error is then about ``(tol * ||A||)^2 / gap`` (Parlett 1998, Thm 11.7.1), so ``1e-6`` gives
        eigenvalues to ~1e-12 relative when the spectrum has reasonable gaps.
    max_matvecs
        product budget (default ``max(300, 30 * num_basis)``). When it runs out the
        result has ``converged=False`` for the unfinished pairs and a warning is issued.
    v0
        start vector (warm start, e.g. the previous top eigenvector); random Gaussian otherwise.
        From a random start the Ritz pair just beyond the ``k`` wanted ones must converge too
        (a block of ``k + 1``): a small residual proves an eigenvalue near the returned value,
        not that it is the extreme one, and converging the next pair inward keeps a close extreme
        eigenvalue from being missed. ``message`` says when that guard pair did not converge
        (``extra["guarded"]``); a warm start is taken as the caller's knowledge and not guarded.
    seed
        seed of the random start vector.
    progress
        show progress on stderr.
    num_basis
        Krylov basis size ``m`` before a thick restart (default ``max(2k + 10, 20)``).
    low_memory
        keep only the tridiagonal (two-pass Lanczos, ``4 + k`` vectors; see module docs).
    check_residuals
        recompute ``||A v - lambda v||`` explicitly (``k`` more products). Always done for
        float16 and bfloat16 operators, whose basis is kept in float32 and whose convergence is
        judged at ``max(tol, eps)`` of their format (the rounding of one product; ``tol`` in the
        result and ``message`` say so).
    dense_threshold
        operators with ``n <= dense_threshold`` or ``k >= n / 2`` are diagonalised
        densely with ``torch.linalg.eigh`` (``method="dense"``, ``n`` products).
    return_vectors
        keep the eigenvectors in the result (``vectors=None`` otherwise).
    max_memory
        bytes the Krylov basis may take (default: the dense-matrix guard, 4 GiB or
        ``HESSE_MAX_MEMORY``). Without an explicit ``num_basis`` the basis is shrunk to fit (at
        least ``k + 2`` vectors, said in ``message``); if even that does not fit, a ``ValueError``
        points to ``low_memory=True`` (``4 + k`` float64 vectors).

    Returns
    -------
    EigshResult with ``values``, ``vectors`` (n, k), ``residuals``, ``converged`` (per pair),
    ``num_matvecs``, ``nit`` (thick restarts) and ``method`` (``"krylov-schur"``,
    ``"lanczos-two-pass"`` or ``"dense"``).

    Memory: ``m + 1 + k`` vectors of the parameter size in the operator's dtype (default path).
    """
    op = check_operator(op)
    n = op.shape[0]
    which = check_choice(which, "which", _WHICH)
    _check_eigsh_args(n, k, tol, max_matvecs)
    v0 = _check_v0(v0, n, op)
    start_count = op.num_matvecs

    # a 16-bit operator: the recurrence's residual estimates hold for the float32 basis, not for the
    # products in the operator's format, so the residuals are measured, against what the format allows
    low_precision = _work_dtype(op.dtype) != op.dtype
    asked_tol = tol
    if low_precision:
        tol = max(tol, _FORMAT_EPS * torch.finfo(op.dtype).eps)
        check_residuals = True
    if n <= dense_threshold or 2 * k >= n:
        res = _dense(op, k, which, tol, return_vectors, progress, start_count)
        res.message += _format_note(op.dtype, asked_tol, tol)
        return res
    m, shrunk = _basis_size(op, k, num_basis, low_memory, max_memory)
    budget = max_matvecs if max_matvecs is not None else max(_MIN_BUDGET, _MATVECS_PER_BASIS * m)
    gen = generator(seed)
    q0 = v0 if v0 is not None else gaussian(n, 1, gen, op.dtype, op.device)[:, 0]
    # a warm start is the caller's statement of where the wanted pairs are: no guard pair then
    guard = _GUARD_PAIRS if v0 is None else 0
    if low_memory:
        res = _two_pass(op, k, which, tol, budget, q0, progress, return_vectors, guard)
    else:
        res = _krylov_schur(op, k, which, tol, budget, q0, gen, m, progress, return_vectors, guard)
    res.message += shrunk + _format_note(op.dtype, asked_tol, tol)
    if check_residuals:
        _check_residuals(op, res, tol)
        if not res.all_converged:
            res.message = res.message.replace("converged", "not converged (measured residuals)", 1)
    res.num_matvecs = op.num_matvecs - start_count
    if not res.all_converged:
        warnings.warn(
            f"eigsh: {int((~res.converged).sum())} of {k} eigenpairs did not reach tol={tol:g} within "
            f"{res.num_matvecs} products (max_matvecs={budget}); their values are approximate "
            f"(see .residuals). Raise max_matvecs or loosen tol.",
            RuntimeWarning,
            stacklevel=2,
        )
    return res


def _format_note(dtype: torch.dtype, asked: float, tol: float) -> str:
    """The ``message`` note when ``tol`` was raised to what products in ``dtype`` can verify."""
    if tol == asked:
        return ""
    return (f"; tol raised from {asked:g} to {tol:.2g}: {str(dtype).replace('torch.', '')} products round "
            f"at eps = {torch.finfo(dtype).eps:.2g}, so smaller residuals cannot be measured (compute the "
            f"curvature in float32 for more accuracy); residuals measured with one product per pair")


def _check_eigsh_args(n: int, k: Any, tol: Any, max_matvecs: Any) -> None:
    """Raise ``ValueError`` for a ``k``, ``tol`` or ``max_matvecs`` that :func:`eigsh` cannot use."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive int (number of eigenpairs), got {k!r}.")
    if k > n:
        raise ValueError(f"k={k} exceeds the operator size n={n}; ask for at most {n} eigenpairs.")
    _check_tol(tol)
    if max_matvecs is not None and (not isinstance(max_matvecs, int) or max_matvecs < 1):
        raise ValueError(f"max_matvecs must be a positive int or None, got {max_matvecs!r}.")


def _basis_size(op: CurvatureOperator, k: int, num_basis: Any, low_memory: bool,
                max_memory: int | None) -> tuple[int, str]:
    """The Krylov basis size ``m`` and a note for ``message`` if it was shrunk to fit ``max_memory``.

    The Krylov-Schur path holds ``m + 1`` basis vectors and the ``k`` returned ones in the operator's
    dtype; the two-pass path holds no basis, so only the default size and its bounds apply.
    """
    n = op.shape[0]
    m = num_basis if num_basis is not None else max(2 * k + _BASIS_MARGIN, _MIN_BASIS)
    if not isinstance(m, int) or m <= k + 1:
        raise ValueError(f"num_basis must be an int larger than k + 1 = {k + 1}, got {num_basis!r}.")
    m = min(m, n - 1)
    if low_memory:
        return m, ""
    limit = default_max_memory() if max_memory is None else int(max_memory)
    vec_bytes = n * torch.empty((), dtype=op.dtype).element_size()
    fits = limit // vec_bytes - 1 - k  # basis of m + 1 vectors plus the k returned vectors
    if m <= fits:
        return m, ""
    if num_basis is not None or fits < k + 2:
        raise ValueError(
            f"eigsh's Krylov basis needs {m + 1 + k} vectors of {format_bytes(vec_bytes)} = "
            f"{format_bytes((m + 1 + k) * vec_bytes)}, over max_memory = {format_bytes(limit)}. "
            f"Pass low_memory=True (about {4 + k} float64 vectors, twice the products), a "
            f"smaller num_basis (at least k + 2 = {k + 2}), or a larger max_memory.")
    return fits, f"; basis shrunk from {m} to {fits} vectors to fit max_memory = {format_bytes(limit)}"


def _check_residuals(op: CurvatureOperator, res: EigshResult, tol: float) -> None:
    """Replace the recurrence's residual estimates of ``res`` by ``||A v - lambda v||`` (``k`` products)."""
    if res.vectors is None:
        return
    AV = op.matmat(res.vectors).to(torch.float64)
    # the difference in float64, so only the product carries the operator's rounding
    r = (AV - res.vectors.to(torch.float64) * res.values.to(AV.device)).norm(dim=0).cpu()
    scale = res.extra.get("norm_estimate") or float(res.values.abs().max()) or 1.0
    res.residuals = r
    res.converged = r <= tol * scale * _RESIDUAL_SLACK
    res.residuals_checked = True
    res.tol = tol


def _dense(op: CurvatureOperator, k: int, which: str, tol: float, return_vectors: bool, progress: bool,
           start_count: int) -> EigshResult:
    n = op.shape[0]
    with Progress(1, f"eigsh (dense, n={n})", progress) as bar:
        A = op.to_dense().to(torch.float64)
        evals, evecs = torch.linalg.eigh(A)
        bar.update(1)
    order = _priority(evals, which)[:k]
    vals, vecs = evals[order], evecs[:, order]
    out = _output_order(vals, which)
    vals, vecs = vals[out], vecs[:, out]
    # the residual of the vectors as returned, rounded to the operator's dtype
    returned = vecs.to(op.dtype)
    V = returned.to(torch.float64)
    resid = (A @ V - V * vals).norm(dim=0).cpu()
    scale = float(evals.abs().max()) or 1.0
    return EigshResult(
        values=vals.cpu(), vectors=returned if return_vectors else None, residuals=resid,
        converged=resid <= tol * scale * _RESIDUAL_SLACK, num_matvecs=op.num_matvecs - start_count,
        method="dense", which=which, tol=tol, residuals_checked=True,
        extra={"norm_estimate": float(evals.abs().max())},
        message=f"n={n} is small (<= dense_threshold or k >= n/2): dense torch.linalg.eigh on the "
                f"materialised matrix",
    )


#: A start's Krylov space counts as invariant when ``beta_j <= _BREAKDOWN * eps * ||T_j||``: one
#: product and the Gram-Schmidt passes leave a residual of a few ``eps ||A||`` (times a slowly
#: growing factor) when ``A`` maps the space into itself.
_BREAKDOWN = 100


@dataclass
class _Krylov:
    """``p`` Lanczos recurrences advanced together, one per starting vector (see :func:`_lanczos_steps`).

    ``Q``: ``(p, s, n)`` basis rows. With a stored basis, ``Q[i, :j + 1]`` holds ``q_0 .. q_j`` of start
    ``i`` in the operator's dtype (``s`` = most steps + 1); without, ``Q[i] = (q_{j-1}, q_j)`` in float64.
    ``H``: ``(p, s, s - 1)`` float64 with a stored basis; column ``j`` holds ``Q_j^T A q_j`` above
    ``beta_j`` (the projected matrix and the residual row), ``None`` without.
    ``alpha``, ``beta``: per step, ``(p,)`` float64 tensors (``T_j``'s diagonal and off-diagonal while
    no thick restart has rewritten ``Q`` and ``H``). ``num_steps``: steps taken; ``q_j`` with
    ``j = num_steps`` is multiplied next. ``active``: ``False`` once a start has stopped at an
    invariant subspace. ``scale``: running ``max(|alpha_j|, beta_j)`` per start, a lower bound on
    ``||A||`` for the breakdown test. ``generator``: on breakdown continue with a random direction
    orthogonal to the basis instead of stopping (thick-restart eigsh). ``replay``: the ``(alpha, beta)``
    of an earlier run from the same start, reused to regenerate its basis (two-pass eigsh).
    """

    Q: torch.Tensor
    H: torch.Tensor | None
    active: torch.Tensor
    scale: torch.Tensor
    alpha: list[torch.Tensor] = field(default_factory=list)
    beta: list[torch.Tensor] = field(default_factory=list)
    num_steps: int = 0
    generator: torch.Generator | None = None
    replay: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @property
    def q(self) -> torch.Tensor:
        """The vectors multiplied next, ``(p, n)``."""
        return self.Q[:, self.num_steps] if self.H is not None else self.Q[:, 1]

    def tridiagonal(self) -> torch.Tensor:
        """``T_j``, ``(p, j, j)`` float64, from the recorded ``alpha`` and ``beta``."""
        a = torch.stack(self.alpha, 1)
        b = torch.stack(self.beta[:-1], 1) if len(self.beta) > 1 else a[:, :0]
        return torch.diag_embed(a) + torch.diag_embed(b, 1) + torch.diag_embed(b, -1)


def _start(op: CurvatureOperator, V: torch.Tensor, max_steps: int | None = None, *, store_basis: bool = True,
           generator: torch.Generator | None = None,
           replay: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> _Krylov:
    """Recurrences from the columns of ``V`` (n, p), normalised; ``max_steps`` sizes a stored basis."""
    p = V.shape[1]
    if store_basis:
        if max_steps is None:
            raise ValueError("a stored Krylov basis needs max_steps to size it")
        Q = torch.zeros((p, max_steps + 1, V.shape[0]), dtype=_work_dtype(op.dtype), device=op.device)
        V = V.to(Q.dtype)
        Q[:, 0] = (V / V.norm(dim=0, keepdim=True)).T
        H = torch.zeros((p, max_steps + 1, max_steps), dtype=torch.float64)
    else:
        V = V.to(torch.float64)
        Q = torch.zeros((p, 2, V.shape[0]), dtype=torch.float64, device=op.device)
        Q[:, 1] = (V / V.norm(dim=0, keepdim=True)).T
        H = None
    return _Krylov(Q, H, torch.ones(p, dtype=torch.bool), torch.zeros(p, dtype=torch.float64),
                   generator=generator, replay=replay)


def _cgs2(Q: torch.Tensor, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classical Gram-Schmidt twice ("twice is enough", Giraud et al. 2005, Numer. Math. 101) of each
    row of ``W`` (p, n) against the rows of its ``Q[i]`` (p, s, n); returns ``W`` and the coefficients
    ``Q[i] w_i`` (p, s), summed over both passes. Written as row-vector products ``w^T Q^T`` and
    ``w^T - h^T Q``, which read ``Q`` in its stored order (several times faster for a batch than
    ``Q^T h`` with the transposed basis)."""
    W = W[:, None, :]
    Qt = Q.transpose(1, 2)
    h = torch.bmm(W, Qt)
    W = torch.baddbmm(W, h, Q, alpha=-1)
    h2 = torch.bmm(W, Qt)
    W = torch.baddbmm(W, h2, Q, alpha=-1)
    return W[:, 0], (h + h2)[:, 0]


def _lanczos_steps(op: CurvatureOperator, kr: _Krylov, num_steps: int) -> Iterator[_Krylov]:
    """Advance the recurrences ``kr`` by up to ``num_steps`` steps, yielding ``kr`` after each.

    Math (Golub & Van Loan 2013, *Matrix Computations*, 4th ed., sec. 10.1): from a unit ``q_0``,
    step ``i`` computes ``w = A q_i``, ``alpha_i = q_i^T w``, ``r_i = w - alpha_i q_i - beta_{i-1} q_{i-1}``,
    ``beta_i = ||r_i||`` and ``q_{i+1} = r_i / beta_i``. After ``j`` steps, with ``Q_j = [q_0 .. q_{j-1}]``
    and ``T_j = tridiag(beta, alpha, beta)`` (``j x j``), ``A Q_j = Q_j T_j + beta_{j-1} q_j e_j^T``.
    In floating point the ``q_i`` lose orthogonality as Ritz pairs converge (Paige 1976; ibid.
    sec. 10.3), which the low-memory path tolerates (three float64 vectors per start; its caller
    filters the ghost Ritz values). With a stored basis ``w`` is instead orthogonalised against all of
    ``q_0 .. q_i`` (classical Gram-Schmidt twice, :func:`_cgs2`): ``alpha_i`` and ``beta_{i-1}`` are
    two of the coefficients in column ``i`` of ``H``, the others are rounding-level, and the basis
    stays orthonormal to working precision. The same step continues a thick restart, whose ``H``
    starts as an arrow matrix (Stewart 2001, SIAM J. Matrix Anal. Appl. 23(3)); each start of a batch
    is an independent recurrence, only the products are shared.

    Breakdown: ``beta_i <= 100 eps max(|alpha|, beta)`` means the start's Krylov space is invariant to
    working accuracy; ``beta_i`` is set to 0 and the start stops (its next vector is zero; the loop
    ends once every start has stopped) or, with ``kr.generator``, continues from a random unit vector
    orthogonal to its basis.

    Cost: one ``op.matmat`` of all ``p`` columns per step (``p`` products; a stopped start rides along
    as a zero column); with a stored basis also ``4 (i + 1) n p`` flops of Gram-Schmidt at step ``i``
    and the ``(num_steps + 1) p`` basis vectors of memory.
    """
    # the basis's rounding, not the products': a 16-bit product's error (about eps_op ||A||) is not an
    # invariant subspace, and 100 eps of bfloat16 is most of ||A||
    eps = torch.finfo(kr.Q.dtype).eps
    for _ in range(num_steps):
        if not bool(kr.active.any()):
            return
        j = kr.num_steps
        W = op.matmat(kr.q.T).T.to(kr.Q.dtype).contiguous()
        if kr.H is not None:
            W, h = _cgs2(kr.Q[:, : j + 1], W)
            h = h.to(torch.float64).cpu()
            kr.H[:, : j + 1, j] = h
            alpha = h[:, j]
        else:
            W = W.to(torch.float64)
            q_prev, q = kr.Q[:, 0], kr.Q[:, 1]
            if kr.replay is None:
                # a BLAS dot per start (cheap next to the product) rather than a batched reduction:
                # the recurrence without reorthogonalization amplifies rounding, and a dot gives a
                # start the same alpha whether it runs alone or in a batch
                alpha = torch.stack([torch.dot(a, b) for a, b in zip(q, W)]).cpu()
            else:
                alpha = kr.replay[0][j]
            beta_prev = kr.beta[-1] if kr.beta else torch.zeros_like(alpha)
            W = W - alpha.to(W.device)[:, None] * q - beta_prev.to(W.device)[:, None] * q_prev
        norm = W.norm(dim=1) if kr.replay is None else kr.replay[1][j].to(W.device)
        beta = norm.to(torch.float64).cpu()
        kr.scale = torch.maximum(kr.scale, torch.maximum(alpha.abs(), beta))
        dead = (beta <= _BREAKDOWN * eps * kr.scale) | ~kr.active
        beta = torch.where(dead, 0.0, beta)
        on_device = dead.to(W.device)[:, None]
        q_next = torch.where(on_device, 0.0, W / norm.clamp_min(torch.finfo(norm.dtype).tiny)[:, None])
        if bool(dead.any()) and kr.generator is not None:
            # continue each stopped start from a random direction orthogonal to its basis
            idx = dead.nonzero()[:, 0]
            R = gaussian(W.shape[1], len(idx), kr.generator, W.dtype, W.device).T
            R, _ = _cgs2(kr.Q[idx.to(W.device), : j + 1], R)
            q_next[idx.to(W.device)] = R / R.norm(dim=1, keepdim=True)
        else:
            kr.active = kr.active & ~dead
        if kr.H is not None:
            kr.H[:, j + 1, j] = beta
            kr.Q[:, j + 1] = q_next
        else:
            kr.Q = torch.stack((q, q_next), 1)
        kr.alpha.append(alpha)
        kr.beta.append(beta)
        kr.num_steps = j + 1
        yield kr


def _ritz(kr: _Krylov, j: int, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz values ``theta``, vectors ``S`` (in the basis), residual norms and the wanted order of the
    ``j x j`` projected matrix of the single recurrence ``kr``; raises ``kr.scale`` to ``max |theta|``.

    The projected matrix is symmetric; its upper triangle holds the orthogonalization coefficients
    (column by column), which is all ``eigh`` reads with ``UPLO="U"``. The residual of pair ``i`` is
    ``|H[j, :j] s_i|`` (the residual row), known without products.
    """
    assert kr.H is not None  # the Krylov-Schur path always stores its basis
    H = kr.H[0]
    theta, S = torch.linalg.eigh(H[:j, :j], UPLO="U")
    resid = (H[j, :j] @ S).abs()
    kr.scale = torch.maximum(kr.scale, theta.abs().max())
    return theta, S, resid, _priority(theta, which)


def _num_kept(k: int, m: int) -> int:
    """Ritz vectors kept by a thick restart of a basis of ``m``: the ``k`` wanted plus half the spare
    ``m - k`` (at least one, so the restart keeps a direction beyond the wanted pairs; Wu & Simon 2000,
    sec. 4), leaving room for at least one new vector."""
    return min(k + max(1, (m - k) // 2), m - 1)


def _thick_restart(kr: _Krylov, theta: torch.Tensor, S: torch.Tensor, order: torch.Tensor, k: int,
                   m: int) -> None:
    """Compress the full basis of ``kr`` (``m`` steps) to the ``p`` most wanted Ritz vectors in place.

    With ``Y_p = Q_m S_p`` the kept Ritz vectors and ``b = H[m, :m] S_p`` their residual coefficients,
    ``A Y_p = Y_p diag(theta_p) + q_m b^T`` (Stewart 2001): the new projected matrix is the arrow
    ``diag(theta_p)`` with the row ``b`` below it, and ``q_m`` becomes the next vector to multiply.
    """
    assert kr.H is not None
    Q, H = kr.Q[0], kr.H[0]
    p = _num_kept(k, m)
    keep = order[:p]
    Q[:p] = S[:, keep].to(dtype=Q.dtype, device=Q.device).T @ Q[:m]
    Q[p] = Q[m]
    b = H[m, :m] @ S[:, keep]
    H.zero_()
    H[torch.arange(p), torch.arange(p)] = theta[keep]
    H[p, :p] = b
    kr.num_steps = p


def _krylov_schur(op: CurvatureOperator, k: int, which: str, tol: float, budget: int, q0: torch.Tensor,
                  gen: torch.Generator, m: int, progress: bool, return_vectors: bool, guard: int
                  ) -> EigshResult:
    """Thick-restart Lanczos on a stored basis of at most ``m + 1`` vectors (see the module docs)."""
    n = op.shape[0]
    kr = _start(op, q0[:, None], m, generator=gen)
    used = 0
    restarts = 0
    # the wanted pairs and the guard pairs beyond them must converge together (see _GUARD_PAIRS)
    kg = min(k + guard, m - 1)
    with Progress(budget, f"eigsh (Krylov-Schur, n={n}, k={k})", progress) as bar:
        while True:
            for _ in _lanczos_steps(op, kr, min(m - kr.num_steps, budget - used)):
                used += 1
                bar.update(1, info=f"restart {restarts}")
                if kg <= kr.num_steps < m:
                    # a j x j float64 eigh, no products: stop as soon as the wanted pairs converge
                    theta, S, resid, order = _ritz(kr, kr.num_steps, which)
                    if bool((resid[order[:kg]] <= tol * float(kr.scale)).all()):
                        break
            j = kr.num_steps
            theta, S, resid, order = _ritz(kr, j, which)
            want = order[:k]
            conv = resid[want] <= tol * float(kr.scale)
            guarded = bool((resid[order[:kg]] <= tol * float(kr.scale)).all())
            if guarded or used >= budget:
                break
            _thick_restart(kr, theta, S, order, kg, m)
            restarts += 1
    vals = theta[want]
    vecs = (kr.Q[0, :j].T @ S[:, want].to(dtype=kr.Q.dtype, device=op.device)).to(op.dtype)
    out = _output_order(vals, which)
    vals, vecs, res_w, conv = vals[out], vecs[:, out], resid[want][out], conv[out]
    return EigshResult(
        values=vals, vectors=vecs if return_vectors else None, residuals=res_w, converged=conv,
        num_matvecs=used, nit=restarts, method="krylov-schur", which=which, tol=tol,
        message=_stop_message(conv) + ("" if guarded or not bool(conv.all()) else _UNGUARDED),
        extra={"num_basis": m, "norm_estimate": float(kr.scale), "guarded": guarded},
    )


def _stop_message(converged: torch.Tensor) -> str:
    return "converged" if bool(converged.all()) else "product budget exhausted"


def _spurious(T: torch.Tensor, theta: torch.Tensor, tol: float) -> torch.Tensor:
    """Cullum-Willoughby test: simple Ritz values that are also eigenvalues of T[1:, 1:]."""
    if T.shape[0] < 2:
        return torch.zeros_like(theta, dtype=torch.bool)
    mu = torch.linalg.eigvalsh(T[1:, 1:])
    close_mu = (theta[:, None] - mu[None, :]).abs().min(dim=1).values <= tol
    d = (theta[:, None] - theta[None, :]).abs()
    d.fill_diagonal_(float("inf"))
    simple = d.min(dim=1).values > tol
    return close_mu & simple


def _two_pass(op: CurvatureOperator, k: int, which: str, tol: float, budget: int, q0: torch.Tensor,
              progress: bool, return_vectors: bool, guard: int) -> EigshResult:
    """Low-memory Lanczos: the recurrence without a basis, then a second pass for the eigenvectors.

    Half the budget goes to each pass. Convergence is checked from ``2 k`` steps on, every
    ``_TWO_PASS_CHECK_EVERY`` steps: a Krylov space of fewer steps seldom resolves ``k`` pairs, and
    each check costs ``O(j^3)`` flops.
    """
    n = op.shape[0]
    half = budget // 2
    kg = min(k + guard, n)
    # without reorthogonalization, copies of a value found by 16-bit products differ by their rounding
    copy_rtol = max(math.sqrt(tol) * _COPY_RTOL,
                    torch.finfo(op.dtype).eps if _work_dtype(op.dtype) != op.dtype else 0.0)
    kr = _start(op, q0[:, None], store_basis=False)
    with Progress(half, f"eigsh (two-pass Lanczos, n={n}, k={k})", progress) as bar:
        for _ in _lanczos_steps(op, kr, min(half, n)):
            bar.update(1)
            j = kr.num_steps
            if j >= 2 * kg and j % _TWO_PASS_CHECK_EVERY == 0:
                sel = _select_two_pass(kr, kg, which, tol, copy_rtol=copy_rtol)
                if sel is not None and bool(sel[2].all()):
                    break
    j = kr.num_steps
    selected = _select_two_pass(kr, min(kg, j), which, tol, force=True, copy_rtol=copy_rtol)
    assert selected is not None  # force=True always selects the pairs
    guarded = bool(selected[2].all()) and len(selected[0]) == kg
    vals, S, converged, resid = (x[..., :k] for x in selected)
    vecs = _second_pass(op, q0, kr, S, j) if return_vectors else None
    out = _output_order(vals, which)
    return EigshResult(
        values=vals[out], vectors=None if vecs is None else vecs[:, out], residuals=resid[out],
        converged=converged[out], num_matvecs=0, method="lanczos-two-pass", which=which, tol=tol,
        message=_stop_message(converged) + ("" if guarded or not bool(converged.all()) else _UNGUARDED),
        extra={"num_steps": j, "norm_estimate": float(vals.abs().max()), "guarded": guarded},
    )


def _second_pass(op: CurvatureOperator, q0: torch.Tensor, kr: _Krylov, S: torch.Tensor, j: int) -> torch.Tensor:
    """Ritz vectors ``Q_j S``, normalised, with ``q_0 .. q_{j-1}`` regenerated from the same start and
    the recorded coefficients of ``kr`` (``j - 1`` products; Golub & Van Loan 2013, sec. 10.3)."""
    again = _start(op, q0[:, None], store_basis=False, replay=(kr.alpha, kr.beta))
    S = S.to(again.Q.device)
    acc = again.q[0][:, None] * S[0][None, :]
    for i, _ in enumerate(_lanczos_steps(op, again, j - 1), start=1):
        acc += again.q[0][:, None] * S[i][None, :]
    return (acc / acc.norm(dim=0)).to(op.dtype)


def _select_two_pass(kr: _Krylov, k: int, which: str, tol: float, force: bool = False,
                     copy_rtol: float | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The ``k`` most wanted Ritz pairs of ``T_j`` that are not ghosts (Cullum-Willoughby), merging
    copies of converged values (Ritz values within ``copy_rtol * ||A||``, default
    ``sqrt(tol) * _COPY_RTOL``); ``None`` if fewer than ``k`` remain, unless ``force``.

    Returns ``(values, S, converged, residuals)`` with ``S`` the pairs' eigenvectors of ``T_j``."""
    if copy_rtol is None:
        copy_rtol = math.sqrt(tol) * _COPY_RTOL
    T = kr.tridiagonal()[0]
    j = T.shape[0]
    theta, S = torch.linalg.eigh(T)
    scale = float(theta.abs().max()) or 1.0
    resid = (kr.beta[-1][0] * S[-1, :]).abs()
    bad = _spurious(T, theta, _GHOST_RTOL * scale) if j > 1 else torch.zeros(j, dtype=torch.bool)
    # merge copies (ghosts of converged values) keeping the one with the smallest residual
    order = _priority(theta, which).tolist()
    chosen: list[int] = []
    for i in order:
        if bool(bad[i]) and resid[i] > tol * scale:
            continue
        dup = [c for c in chosen if abs(float(theta[c] - theta[i])) <= copy_rtol * scale]
        if dup:
            c = dup[0]
            if resid[i] < resid[c]:
                chosen[chosen.index(c)] = i
            continue
        chosen.append(i)
        if len(chosen) == k:
            break
    if len(chosen) < k:
        if not force:
            return None
        chosen = (chosen + [i for i in order if i not in chosen])[:k]
    idx = torch.tensor(chosen, dtype=torch.long)
    return theta[idx], S[:, idx], resid[idx] <= tol * scale, resid[idx]


def lanczos_tridiagonal(op: CurvatureOperator, num_steps: int, v0: Any = None, seed: int = 0
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``num_steps`` Lanczos steps with full reorthogonalization from ``v0`` (random if None).

    Returns ``(Q, T, r)`` with ``Q`` (n, j) orthonormal, ``T`` (j, j) tridiagonal in float64 and
    ``r`` the residual vector, such that ``A Q = Q T + r e_j^T`` (Golub & Van Loan 2013, sec. 10.1).
    Cost: ``j`` products. Stops early (``j < num_steps``, ``r = 0``) if the Krylov space becomes
    invariant.
    """
    op = check_operator(op)
    n = op.shape[0]
    if not isinstance(num_steps, int) or not 1 <= num_steps <= n:
        raise ValueError(f"num_steps must be an int in [1, n={n}], got {num_steps!r}.")
    v0 = _check_v0(v0, n, op)
    if v0 is None:
        v0 = gaussian(n, 1, generator(seed), op.dtype, op.device)[:, 0]
    kr = _start(op, v0[:, None], num_steps)
    for _ in _lanczos_steps(op, kr, num_steps):
        pass
    j = kr.num_steps
    r = (kr.beta[-1].to(device=op.device, dtype=kr.Q.dtype) * kr.Q[0, j]).to(op.dtype)
    return kr.Q[0, :j].T.to(op.dtype), kr.tridiagonal()[0], r
