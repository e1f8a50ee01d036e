"""Influence functions: how much each training example moves a query's loss.

Upweighting a training example ``z_i`` by ``ε`` in ``L(θ) = (1/N) Σ_i ℓ_i(θ) + (λ/2)‖θ‖²``
moves the minimizer by ``−ε (H + λ I)⁻¹ ∇ℓ_i`` (``H = ∇²(1/N) Σ ℓ_i``) and a query
measurement ``m_q`` (its loss by default) by ``ε`` times the influence score (Koh & Liang 2017,
"Understanding black-box predictions via influence functions", §2.2, Eq. 2)::

    s(q, i) = −∇m_qᵀ (H + λ I)⁻¹ ∇ℓ_i.

Removing ``z_i`` is ``ε = −1/N``: the query loss changes by about ``−s(q, i)/N``. Negative
scores are the *helpful* examples (removing them raises the query loss), positive the harmful
ones. The damping ``λ`` is the weight decay of the training objective, or a regularizer that
makes an indefinite or singular ``H`` invertible.

Curvature: ``"hessian"`` (exact), ``"ggn"`` (Gauss-Newton, PSD), ``"kfac"`` and ``"ekfac"``
(their Kronecker approximations of the GGN, inverted in closed form; Grosse et al. 2023,
"Studying large language model generalization with influence functions", §3). Solvers for the
first two: ``"direct"`` (the dense matrix, ``n x n``), ``"cg"`` (conjugate gradients per block of
query vectors, :func:`hesse.solve`), ``"lissa"`` (the stochastic Neumann series of Agarwal,
Bullins & Hazan 2017, as used by Koh & Liang: ``v ← b + (I − (H + λI)/scale) v``, ``depth``
steps, full-batch products here).

The query vectors ``(H + λI)⁻¹ ∇m_q`` are computed once; the per-sample training gradients are
then formed one batch at a time (memory independent of ``N`` apart from the ``(queries, N)``
score matrix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._progress import Progress
from ..operators import (
    EKFACOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    solve,
)
from ..operators.evaluation import ModelLoss
from ..operators.per_sample import per_sample_gradients

__all__ = ["CURVATURES", "SOLVERS", "Influence"]

CURVATURES = ("ekfac", "kfac", "ggn", "hessian")
SOLVERS = ("direct", "cg", "lissa")
_SINGULAR_RTOL = 1e-12  # an eigenvalue below this fraction of the largest counts as zero


class Influence:
    """Influence scores ``−∇m_qᵀ (H + λI)⁻¹ ∇ℓ_i`` of a model's training data (module docstring).

    Parameters
    ----------
    model : nn.Module
        The trained model (its current parameters are ``θ*``).
    loss_fn : callable (outputs, targets) -> scalar
        The training loss with ``reduction="mean"`` or ``"sum"``.
    train_data : (inputs, targets) or iterable of batches
        In a fixed order: score column ``i`` is the ``i``-th training example.
    curvature : {"ekfac", "kfac", "ggn", "hessian"}
        The matrix ``H``: EK-FAC or K-FAC of the GGN, the GGN, or the Hessian of the training loss.
    solver : {"direct", "cg", "lissa"}
        For ``"ggn"`` and ``"hessian"``; K-FAC and EK-FAC are inverted exactly (``"direct"``).
    damping : float >= 0
        ``λ``; must make ``H + λI`` nonsingular (positive definite for ``"cg"``, ``"lissa"``).
    params : names, predicate or None
        The parameters whose influence is measured (names or a predicate, as for the operators).
    query_loss : callable (outputs, targets) -> per-sample values ``(m,)``, optional
        The measurement ``m_q`` (a logit, a margin); default the training loss of each query.
    cg_tol : float
        Relative residual of conjugate gradients.
    dtype : torch.dtype, optional
        Dtype of the per-sample gradients and the scores (e.g. ``torch.float32`` for a float64
        model, halving their memory); solves run in the model's dtype.
    progress : bool
        Progress bars over the training batches.
    lissa_depth : int
        Neumann series steps of ``"lissa"``.
    lissa_scale : float, optional
        A scale above the largest eigenvalue of ``H + λI``, required for ``"lissa"`` (the series
        diverges otherwise; e.g. ``1.1 * hesse.eigsh(H, k=1)``).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, train_data: Any,
                 curvature: str = "ekfac", solver: str = "direct", damping: float = 0.0, *,
                 params: Any = None, query_loss: Callable | None = None, cg_tol: float = 1e-10,
                 lissa_depth: int = 1000, lissa_scale: float | None = None,
                 dtype: torch.dtype | None = None, progress: bool = False):
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {', '.join(map(repr, CURVATURES))}; got "
                             f"{curvature!r}.")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(map(repr, SOLVERS))}; got "
                             f"{solver!r}.")
        if curvature in ("kfac", "ekfac") and solver != "direct":
            raise ValueError(f"curvature={curvature!r} is inverted in closed form; use "
                             f"solver='direct' (cg and lissa are for 'ggn' and 'hessian').")
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping >= 0 \
                or damping == float("inf"):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}.")
        if query_loss is not None and not callable(query_loss):
            raise TypeError(f"query_loss must be callable (outputs, targets) -> per-sample values, "
                            f"got {type(query_loss).__name__}.")
        if solver == "lissa" and (lissa_scale is None or not lissa_scale > 0):
            raise ValueError("solver='lissa' needs lissa_scale > the largest eigenvalue of "
                             "H + damping I (e.g. 1.1 * hesse.eigsh(H, k=1).values); the Neumann "
                             "series diverges otherwise.")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise TypeError(f"dtype must be a real floating torch.dtype (e.g. torch.float32), got "
                            f"{dtype!r}.")
        self.curvature, self.solver, self.damping = curvature, solver, float(damping)
        self.progress = bool(progress)
        self.query_loss, self.cg_tol = query_loss, cg_tol
        self.lissa_depth, self.lissa_scale = int(lissa_depth), lissa_scale
        self._problem = ModelLoss(model, loss_fn, train_data, params)
        self._loss_fn = loss_fn
        args = (model, loss_fn, train_data, params)
        if curvature == "hessian":
            self.operator: Any = HessianOperator(*args)
        elif curvature == "ggn":
            self.operator = GGNOperator(*args)
        elif curvature == "kfac":
            self.operator = KFACOperator(*args, kind="type2")
        else:
            self.operator = EKFACOperator(*args, kind="type2")
        self.n = self._problem.n
        self.dtype = self._problem.dtype if dtype is None else dtype
        self._inverse: Any = None
        if curvature in ("kfac", "ekfac"):
            self._inverse = self.operator.inverse(self.damping)
        elif solver == "direct":
            H = self.operator.to_dense()
            A = H + self.damping * torch.eye(self.n, dtype=H.dtype, device=H.device)
            # eigh rather than Cholesky: the Hessian away from a minimum may be indefinite, and
            # Koh & Liang's formula is still defined while H + λI is nonsingular
            w, Q = torch.linalg.eigh(A)
            if float(w.abs().min()) <= _SINGULAR_RTOL * float(w.abs().max()):
                raise ValueError(f"H + damping I is singular (curvature={curvature!r}, "
                                 f"damping={self.damping}, smallest |eigenvalue| "
                                 f"{float(w.abs().min()):.3g}); increase damping.")
            self._dense_eigh = (w, Q)

    # ------------------------------------------------------------------ solves
    def inverse_hvp(self, B: torch.Tensor) -> torch.Tensor:
        """``(H + λI)⁻¹ B`` for a block ``B`` of shape ``(n, k)`` with the chosen solver."""
        if self._inverse is not None:
            return self._inverse.matmat(B)
        if self.solver == "direct":
            w, Q = self._dense_eigh
            return Q @ ((Q.T @ B) / w[:, None])
        shifted = self.operator + self.damping
        if self.solver == "cg":
            cols = []
            for j in range(B.shape[1]):
                result = solve(shifted, B[:, j], method="cg", tol=self.cg_tol)
                if not result.converged:
                    raise ValueError(f"conjugate gradients did not converge on query vector {j} "
                                     f"({result.message}); increase damping or use "
                                     f"solver='direct'.")
                cols.append(result.x)
            return torch.stack(cols, dim=1)
        V = B.clone()
        assert self.lissa_scale is not None  # checked in __init__
        for _ in range(self.lissa_depth):
            V = B + V - shifted.matmat(V) / self.lissa_scale
        return V / self.lissa_scale

    # ------------------------------------------------------------------ gradients
    def _gradients(self, batches: Any, measure: Callable | None):
        """Yield ``(n_b, n)`` per-sample gradients of the training loss or of ``measure``."""
        p = self._problem
        params = tuple(q.detach() for q in p.params)
        pairs = [batches] if isinstance(batches, tuple) else batches
        for x, y in pairs:
            x = x.to(device=p.device, dtype=p.dtype) if x.is_floating_point() else x.to(p.device)
            y = y.to(device=p.device, dtype=p.dtype) if y.is_floating_point() else y.to(p.device)
            nb = len(x)
            with p.mode(), torch.enable_grad():
                z = p.forward(params, x).detach().requires_grad_(True)
                if measure is None:
                    scale = float(nb) if p.reduction == "mean" else 1.0
                    total = scale * self._loss_fn(z, y)
                else:
                    values = measure(z, y)
                    if not isinstance(values, torch.Tensor) or values.shape != (nb,):
                        raise ValueError(f"query_loss must return one value per sample, shape "
                                         f"({nb},); got {getattr(values, 'shape', type(values))}.")
                    total = values.sum()
                u = torch.autograd.grad(total, z)[0]
                yield per_sample_gradients(p, params, x, u).to(self.dtype)

    def _train_batches(self):
        for _, x, y, nb in self._problem.batches():
            if nb:
                yield x, y

    # ------------------------------------------------------------------ scores
    def query_vectors(self, query_data: Any) -> torch.Tensor:
        """``(H + λI)⁻¹ ∇m_q`` for each query, as columns of an ``(n, queries)`` tensor."""
        grads = torch.cat(list(self._gradients(query_data, self.query_loss)))
        return self.inverse_hvp(grads.T.to(self._problem.dtype)).to(self.dtype)

    def scores(self, query_data: Any) -> torch.Tensor:
        """The ``(queries, N)`` matrix ``s(q, i) = −∇m_qᵀ (H + λI)⁻¹ ∇ℓ_i``, streaming over
        the training data one batch at a time."""
        Q = self.query_vectors(query_data)
        columns = []
        with Progress(None, "influence scores", self.progress) as bar:
            for g in self._gradients(self._train_batches(), None):
                columns.append(-(g @ Q).T)
                bar.update(1)
        return torch.cat(columns, dim=1)

    def self_influence(self) -> torch.Tensor:
        """``∇ℓ_iᵀ (H + λI)⁻¹ ∇ℓ_i`` per training example, ``(N,)`` (one block solve per batch;
        large values flag outliers and mislabeled examples, Koh & Liang 2017, §5.4)."""
        out = []
        with Progress(None, "self-influence", self.progress) as bar:
            for g in self._gradients(self._train_batches(), None):
                solved = self.inverse_hvp(g.T.to(self._problem.dtype)).T.to(self.dtype)
                out.append((g * solved).sum(1))
                bar.update(1)
        return torch.cat(out)

    def top_k(self, query_data: Any, k: int, *, kind: str = "helpful"):
        """The ``k`` training examples with the most negative (``kind="helpful"``) or most
        positive (``"harmful"``) scores per query: ``(values, indices)``, each ``(queries, k)``."""
        if kind not in ("helpful", "harmful"):
            raise ValueError(f"kind must be 'helpful' or 'harmful', got {kind!r}.")
        S = self.scores(query_data)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= S.shape[1]:
            raise ValueError(f"k must be an integer in [1, {S.shape[1]}] (the training examples), "
                             f"got {k!r}.")
        return torch.topk(S, k, dim=1, largest=kind == "harmful")

    def __repr__(self) -> str:
        return (f"Influence(curvature={self.curvature!r}, solver={self.solver!r}, "
                f"damping={self.damping:.4g}, n={self.n})")
