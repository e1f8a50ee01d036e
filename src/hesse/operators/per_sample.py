"""Per-sample gradients and per-sample square roots of the GGN and empirical Fisher.

With outputs ``z_i = model(x_i; θ)`` and the loss ``L(θ) = Σ_b w_b L_b(z_b)`` of the other
operators (``w_b = n_b/N`` for ``reduction="mean"``, ``1/N`` for ``"sum"``), both matrices are sums
of outer products of per-sample vectors ``J_iᵀ u_i`` (``J_i = ∂z_i/∂θ``):

* GGN: ``G = Σ_b w_b Σ_i Σ_m (J_iᵀ s_{m,i})(J_iᵀ s_{m,i})ᵀ``, with ``∇²_z L_b = Σ_m S_m S_mᵀ``
  block-diagonal over samples and ``s_{m,i}`` sample ``i``'s part of the column ``S_m``
  (the loss Hessian's square root that K-FAC's type-2 factor backpropagates; Dangel, Kunstner &
  Hennig 2020, "BackPACK", §2, ``DiagGGNExact``). ``C`` columns per sample and position, ``C``
  the classes or features: outputs with extra (sequence, spatial) axes are split per position,
  since the output Hessian is block-diagonal over positions.
* empirical Fisher: ``F = (1/N) Σ_i g_i g_iᵀ`` with the per-sample gradients
  ``g_i = c_b J_iᵀ ∂L_b/∂z_i`` (``c_b = n_b`` for ``"mean"``, 1 for ``"sum"``), the definition of
  :class:`FisherOperator` ``kind="empirical"``.

:func:`curvature_roots` yields, per batch and column, the ``(n_b, n)`` matrix ``R`` of these
vectors and the weight ``ω`` with ``matrix = (1/N) Σ ω RᵀR``; :func:`per_sample_gradients` is the
one ``vmap``-ed vector-Jacobian product behind them (one sample at a time through the model, so
BatchNorm must be in eval mode, as hesse evaluates by default).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import grad, vmap

from .evaluation import ModelLoss
from .likelihoods import require_likelihood

__all__ = ["curvature_roots", "ggn_diagonal", "per_sample_gradients"]


def _unsqueeze(x: Any) -> Any:
    """``x`` (a tensor, or tensors in tuples, lists and dicts) with a batch axis of one added."""
    if isinstance(x, torch.Tensor):
        return x.unsqueeze(0)
    if isinstance(x, dict):
        return {k: _unsqueeze(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_unsqueeze(v) for v in x)
    return x

ROOT_KINDS = ("type2", "empirical")


def per_sample_gradients(problem: ModelLoss, params: tuple[torch.Tensor, ...], inputs: Any,
                         cotangent: torch.Tensor) -> torch.Tensor:
    """``(n_b, n)`` rows ``J_iᵀ u_i`` for each sample ``i`` of a batch: the gradient of
    ``⟨model(x_i; θ), u_i⟩`` with ``u = cotangent`` shaped like the batch's outputs."""

    def one(x_i, u_i):
        def inner(theta):
            z = problem.forward(theta, _unsqueeze(x_i))
            return (z * u_i.unsqueeze(0)).sum()

        return grad(inner)(params)

    try:
        parts = vmap(one)(inputs, cotangent)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"per-sample gradients need a model that maps each sample on its own "
                         f"(vmap over the batch dimension of the inputs); this one does not "
                         f"({type(err).__name__}: {str(err).splitlines()[0]}). BatchNorm must be "
                         f"in eval mode (bn_mode='eval').") from err
    nb = cotangent.shape[0]
    return torch.cat([g.reshape(nb, -1) for g in parts], dim=1)


def curvature_roots(problem: ModelLoss, kind: str) -> Iterator[tuple[float, torch.Tensor]]:
    """Yield ``(ω, R)`` with ``matrix = (1/N) Σ ω RᵀR`` over the data (see the module docstring):
    ``kind="type2"`` the GGN (``C`` matrices per batch), ``"empirical"`` the empirical Fisher (one
    per batch). ``problem.loss_fn`` must be a likelihood loss for ``"type2"`` (the caller
    checks)."""
    if kind not in ROOT_KINDS:
        raise ValueError(f"kind must be one of {ROOT_KINDS}, got {kind!r}.")
    loss_fn = problem.loss_fn
    if loss_fn is None:
        raise ValueError("per-sample curvature needs loss_fn(outputs, targets), not batch_loss.")
    for index, x, y, nb in problem.batches():
        if nb == 0:
            continue
        if not isinstance(x, torch.Tensor) and not isinstance(x, (tuple, list, dict)):
            raise TypeError(f"per-sample gradients need tensor inputs; batch {index} has "
                            f"{type(x).__name__}.")
        params = tuple(q.detach() for q in problem.params)
        with problem.mode():
            z = problem.forward(params, x).detach()
            if z.ndim == 0 or z.shape[0] != nb:
                raise ValueError(f"per-sample curvature needs outputs with the batch's {nb} samples "
                                 f"on dimension 0; got outputs of shape {tuple(z.shape)}.")
            if problem.reduction is None:  # a loss that declares none: measured on this batch
                problem.observe_reduction(z, y, nb)
                problem.settle_reduction()
            reduction = str(problem.reduction)
            batch_weight = float(nb) if reduction == "mean" else 1.0
            if kind == "type2":
                likelihood = require_likelihood(loss_fn, "hessian", "per-sample curvature",
                                                "Use kind='empirical'.")
                for column in likelihood.hessian_sqrt_columns(z, y, reduction):
                    for piece in _split_positions(loss_fn, column):
                        yield batch_weight, per_sample_gradients(problem, params, x, piece)
            else:
                zz = z.clone().requires_grad_(True)
                u = torch.autograd.grad(loss_fn(zz, y), zz)[0]
                yield batch_weight ** 2, per_sample_gradients(problem, params, x, u)


def _split_positions(loss_fn: Any, column: torch.Tensor) -> Iterator[torch.Tensor]:
    """A square-root column split into one piece per position of a sample (sequence or spatial
    outputs): the output Hessian is block-diagonal over positions, so the per-sample outer
    product of a column covering several positions would add cross-position terms that the GGN
    does not have. Positions: every axis but the batch and the class axis (1 for cross-entropy,
    the last for the others)."""
    if column.ndim <= 2:
        yield column
        return
    class_dim = 1 if isinstance(loss_fn, nn.CrossEntropyLoss) else column.ndim - 1
    moved = column.movedim(class_dim, -1)  # (N, *positions, C)
    flat = moved.reshape(moved.shape[0], -1, moved.shape[-1])
    for t in range(flat.shape[1]):
        piece = torch.zeros_like(flat)
        piece[:, t] = flat[:, t]
        yield piece.reshape(moved.shape).movedim(-1, class_dim)


def ggn_diagonal(model: nn.Module, loss_fn: Callable, data: Any, params: Any = None, *,
                 kind: str = "type2") -> torch.Tensor:
    """The exact diagonal of the GGN (``kind="type2"``) or empirical Fisher (``"empirical"``) of
    ``loss_fn(model(x), y)`` over ``data``, in the order of ``model.parameters()``.

    ``diag G = (1/N) Σ_b ω_b Σ_i Σ_m (J_iᵀ s_{m,i})²`` (squares elementwise; see the module
    docstring): the loss Hessian's square-root columns backpropagated per sample, BackPACK's
    ``DiagGGNExact`` (Dangel, Kunstner & Hennig 2020, §2). Cost: ``C`` per-sample backward passes
    per batch (``C`` outputs per sample), one for ``"empirical"``; no ``n x n`` matrix. Losses for
    ``"type2"``: ``nn.CrossEntropyLoss``, ``nn.MSELoss``, ``nn.BCEWithLogitsLoss``.
    """
    if kind not in ROOT_KINDS:
        raise ValueError(f"kind must be one of {ROOT_KINDS}, got {kind!r}.")
    if kind == "type2":
        require_likelihood(loss_fn, "hessian", "the GGN's diagonal",
                           "Use kind='empirical' or hesse.diagonal(GGNOperator(...)) (stochastic).")
    problem = ModelLoss(model, loss_fn, data, params)
    total = torch.zeros(problem.n, dtype=problem.dtype, device=problem.device)
    with torch.enable_grad():
        for weight, rows in curvature_roots(problem, kind):
            total += weight * rows.square().sum(0)
    num = sum(nb for _, _, _, nb in problem.batches())
    if num == 0:
        raise ValueError("the data set is empty: no batch with samples was found.")
    return total / num
