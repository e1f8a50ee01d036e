"""Power iteration with deflation: the reference method for the top eigenpairs.

Math. ``v <- A v / ||A v||`` converges to the eigenvector of the eigenvalue of largest magnitude at
the rate ``|lambda_2 / lambda_1|`` per product (Golub & Van Loan 2013, *Matrix Computations*,
sec. 7.3.1). Further pairs come from Hotelling deflation, ``A_i = A - sum_{j<i} lambda_j v_j v_j^T``
(Saad 2011, *Numerical Methods for Large Eigenvalue Problems*, sec. 4.2). This is what PyHessian
and hessian-eigenthings use; it is kept as a reference and for comparisons — :func:`hesse.eigsh`
needs far fewer products. Cost: one product per iteration and pair.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from hesse._progress import Progress
from hesse.operators import CurvatureOperator

from ._common import check_operator, gaussian, generator
from .lanczos import EigshResult, _check_tol, _check_v0, _stop_message

__all__ = ["power_iteration"]

#: Default product budget per wanted pair: power iteration gains a factor ``|lambda_2 / lambda_1|``
#: per product, so 1000 products reach ``tol = 1e-6`` for ratios up to about 0.986.
_MATVECS_PER_PAIR = 1000

#: Floor of the convergence scale ``|lambda_1|``, so an operator whose top eigenvalue is exactly zero
#: still has a positive tolerance: far below any eigenvalue of interest, yet ``tol * 1e-300`` is
#: still a normal float64 for every valid ``tol``.
_TINY_SCALE = 1e-300


def power_iteration(
    op: CurvatureOperator,
    k: int = 1,
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    v0: Any = None,
    seed: int = 0,
    progress: bool = False,
) -> EigshResult:
    """Top-``k`` eigenpairs by magnitude through power iteration with Hotelling deflation.

    A pair is converged when ``||A v - lambda v|| <= tol * |lambda_1|`` (checked every iteration
    from the product already computed). ``max_matvecs`` (default ``1000 * k``) is shared by all
    pairs, split evenly over the pairs still to find; pairs not converged in it are flagged
    ``converged=False`` with a warning.

    Parameters
    ----------
    op
        any symmetric hesse operator (``HessianOperator``, ``GGNOperator``, ``DenseOperator``...).
    k
        number of eigenpairs, largest in magnitude first (``1 <= k <= n``).
    tol
        residual tolerance relative to ``|lambda_1|`` (default 1e-6).
    max_matvecs
        product budget shared by all pairs (default ``1000 * k``).
    v0
        start vector (default: a random one from ``seed``).
    seed
        seed of the random start vector.
    progress
        show a bar (stderr) over the products.
    """
    op = check_operator(op)
    n = op.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n:
        raise ValueError(f"k must be an int between 1 and n={n}, got {k!r}.")
    _check_tol(tol)
    budget = max_matvecs if max_matvecs is not None else _MATVECS_PER_PAIR * k
    if not isinstance(budget, int) or budget < k:
        raise ValueError(f"max_matvecs must be an int >= k={k}, got {max_matvecs!r}.")
    v0 = _check_v0(v0, n, op)
    gen = generator(seed)
    start = op.num_matvecs
    vals: list[float] = []
    vecs: list[torch.Tensor] = []
    res: list[float] = []
    conv: list[bool] = []
    scale: float | None = None
    with Progress(budget, f"power iteration (n={n}, k={k})", progress) as bar:
        for i in range(k):
            v = v0 if (i == 0 and v0 is not None) else gaussian(n, 1, gen, op.dtype, op.device)[:, 0]
            per_pair = max(1, (budget - (op.num_matvecs - start)) // (k - i))
            lam, v, r, ok, scale = _one_pair(op, v, vals, vecs, tol, per_pair, scale, bar, i)
            vals.append(lam)
            vecs.append(v)
            res.append(r)
            conv.append(ok)
    used = op.num_matvecs - start
    result = EigshResult(
        values=torch.tensor(vals, dtype=torch.float64), vectors=torch.stack(vecs, 1),
        residuals=torch.tensor(res, dtype=torch.float64), converged=torch.tensor(conv),
        num_matvecs=used, method="power", which="magnitude", tol=tol, residuals_checked=True,
        message=_stop_message(torch.tensor(conv)),
    )
    if not all(conv):
        warnings.warn(
            f"power_iteration: {conv.count(False)} of {k} pairs did not reach tol={tol:g} in {used} "
            f"products; raise max_matvecs or use hesse.eigsh (Lanczos), which needs far fewer.",
            RuntimeWarning, stacklevel=2,
        )
    return result


def _one_pair(op: CurvatureOperator, v: torch.Tensor, vals: list[float], vecs: list[torch.Tensor],
              tol: float, max_matvecs: int, scale: float | None, bar: Progress, i: int
              ) -> tuple[float, torch.Tensor, float, bool, float | None]:
    """Pair ``i``: power iteration on ``A - sum_j lambda_j v_j v_j^T`` (the pairs found so far) from ``v``.

    Returns ``(lambda, v, residual, converged, scale)``; ``scale`` is ``|lambda_1|``, set while
    iterating on the first pair and the yardstick of every later pair's residual.
    """
    V = torch.stack(vecs, 1) if vecs else None
    lam_t = torch.tensor(vals, dtype=op.dtype, device=op.device) if vals else None
    if V is not None:
        v = v - V @ (V.T @ v)
    v = v / v.norm()
    lam, r, ok = 0.0, float("inf"), False
    for _ in range(max_matvecs):
        w = op.matvec(v)
        bar.update(1, info=f"pair {i + 1}")
        if V is not None and lam_t is not None:
            w = w - V @ (lam_t * (V.T @ v))
        lam = float(v @ w)
        r = float((w - lam * v).norm())
        if scale is None or i == 0:
            scale = max(abs(lam), _TINY_SCALE)
        if r <= tol * scale:
            ok = True
            break
        v = w / w.norm()
    return lam, v, r, ok, scale
