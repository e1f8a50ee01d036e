"""Fisher information of a model over data, empirical or Monte-Carlo, matrix-free.

With outputs ``z_i = model(x_i; θ)``, per-sample loss ``ℓ_i`` and ``r_i = ∂ℓ(z_i, y)/∂z_i``:

* empirical Fisher (``kind="empirical"``): ``F = (1/N) Σ_i J_iᵀ r_i r_iᵀ J_i`` with the observed
  targets ``y_i`` — the mean outer product of per-sample gradients. It is *not* a curvature matrix
  in general (Kunstner, Balles & Hennig 2019), but many optimizers use it.
* Monte-Carlo Fisher (``kind="mc"``): the same with ``y`` drawn from the model's predictive
  distribution ``p(y | z_i)`` (``mc_samples`` draws per sample, averaged). Its expectation is the
  true Fisher, which for cross-entropy, Bernoulli and Gaussian likelihoods equals the GGN
  (Martens 2020, §9.2). The draws come from a ``torch.Generator`` seeded with ``seed`` and the
  batch index, so the operator is a fixed, reproducible matrix.

Likelihood terms. A sample may carry ``K > 1`` independent likelihood terms: cross-entropy on
logits ``(N, C, d_1, ...)`` has ``K = d_1 ⋯`` categorical terms, ``BCEWithLogitsLoss`` and
``MSELoss`` one Bernoulli or Gaussian term per output element. With ``reduction="mean"`` the
per-sample loss is the *mean* of its terms, ``ℓ_i = (1/K) Σ_k −log p(y_ik | z_i)``, so its Fisher
is ``(1/K) E[∇ log p ∇ log pᵀ] = K · E[∇ℓ_i ∇ℓ_iᵀ]``: the Monte-Carlo estimate of the outer
products of ``r_i = ∇_z ℓ_i`` is multiplied by ``K`` (with ``reduction="sum"``, ``ℓ_i`` is the
negative log-likelihood itself and no factor enters). Squared error is the Gaussian likelihood
``N(z, ½)`` per element: ``(z − y)² = −log p + const``. The empirical Fisher involves no
likelihood and no ``K``: it is the mean outer product of the per-sample gradients ``∇_θ ℓ_i``
defined by ``L = (1/N) Σ_i ℓ_i``.

Likelihoods for ``kind="mc"``: ``nn.CrossEntropyLoss`` (categorical over the class dimension 1),
``nn.MSELoss`` (Gaussian) and ``nn.BCEWithLogitsLoss`` (Bernoulli), without class weights or label
smoothing (these change the loss away from a negative log-likelihood); each described once in
:mod:`hesse.operators.likelihoods`, which K-FAC uses too. A product never forms
per-sample gradients: it is ``Jᵀ(r ⊙ (rᵀ J V))``, one ``jvp`` and one ``vjp`` per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap
from typing_extensions import Unpack

from .._validation import check_seed
from ._model_operator import ModelCurvatureOperator, ModelOperatorOptions, _needs_outputs
from .likelihoods import LIKELIHOOD_LOSSES, Likelihood, require_likelihood

__all__ = ["FisherOperator", "LIKELIHOOD_LOSSES", "mc_seed"]


class FisherOperator(ModelCurvatureOperator):
    """Fisher matrix (``kind="empirical"`` or ``"mc"``) of a model over ``data``; PSD.

    Shared arguments as for :class:`HessianOperator` (same names, same order; no graphs are
    kept); it needs ``loss_fn`` on the model's outputs, not ``batch_loss``. Extra arguments:
    ``kind``, ``mc_samples`` (draws per sample for ``"mc"``), ``seed``. Embedding padding rows
    are frozen (zero rows and columns).

    Parameters
    ----------
    model, loss_fn, data, params
        as for :class:`HessianOperator`; ``loss_fn`` acts on the model's outputs (``batch_loss``
        is refused: the matrix needs the outputs).
    kind
        ``"empirical"`` (gradients at the observed targets, the default) or ``"mc"`` (targets
        drawn from the model's predictive distribution: the true Fisher, in expectation).
    mc_samples
        draws per sample for ``kind="mc"`` (default 1).
    seed
        seed of the draws for ``kind="mc"`` (reproducible per seed).
    **options
        the keywords every model operator shares, documented on :class:`HessianOperator`
        (``batch_size``, ``forward``, ``dtype``, ``bn_mode``, ``eval_mode``,
        ``check_deterministic``, ``progress``, ``distributed``; no graphs are kept).
    """

    _is_psd = True
    _default_keep_graph = None  # products recompute each batch: no graph options

    def __init__(self, model: nn.Module, loss_fn: Callable | None = None, data: Any = None,
                 params: Any = None, *, kind: str = "empirical", mc_samples: int = 1, seed: int = 0,
                 **options: Unpack[ModelOperatorOptions]):
        batch_loss = options.get("batch_loss")
        _needs_outputs("FisherOperator", loss_fn, batch_loss)
        if kind not in ("empirical", "mc"):
            raise ValueError(f"kind must be 'empirical' or 'mc'; got {kind!r}.")
        self._likelihood: Likelihood | None = None
        if kind == "mc":
            self._likelihood = require_likelihood(loss_fn, "sample", "FisherOperator(kind='mc')",
                                                  "Use kind='empirical' or GGNOperator.")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}.")
        self.kind, self.mc_samples, self.seed = kind, mc_samples, check_seed(seed)
        super().__init__(model, loss_fn, data, params, **options)
        if kind == "mc" and self._problem.data.shuffles:
            import warnings

            warnings.warn("kind='mc' draws targets per batch index; a shuffling DataLoader makes "
                          "the operator change between products. Use shuffle=False.", stacklevel=2)

    def _per_sample_loss_grads(self, z: torch.Tensor, targets: Any, nb: int) -> torch.Tensor:
        """Rows ``r_i = ∂ℓ_i/∂z_i`` for the observed or sampled targets: shape (m, *z.shape)."""
        p = self._problem
        scale = float(nb) if p.reduction != "sum" else 1.0

        loss_fn = cast(Callable, p.loss_fn)  # FisherOperator requires loss_fn (checked at construction)

        def batch_loss(zz, yy):
            return loss_fn(zz, yy)

        if self.kind == "empirical":
            return (scale * grad(batch_loss)(z, targets)).unsqueeze(0)
        ignore = getattr(p.loss_fn, "ignore_index", None)
        if ignore is not None and isinstance(targets, torch.Tensor) and bool((targets == ignore).any()):
            raise ValueError(
                f"kind='mc' draws a target at every position, but batch {self._batch_index} has "
                f"targets equal to ignore_index={ignore}, which the loss leaves out. Drop those "
                f"positions from the data, or use kind='empirical' or GGNOperator.")
        ys = self._sample_targets(z)  # (mc_samples, *targets' shape)
        return scale * vmap(grad(batch_loss), in_dims=(None, 0))(z, ys)

    def _sample_targets(self, z: torch.Tensor) -> torch.Tensor:
        """``mc_samples`` draws of the targets from ``p(y | z)``, stacked on a leading dim."""
        gen = torch.Generator(device=z.device)
        gen.manual_seed(mc_seed(self.seed, self._batch_index))
        assert self._likelihood is not None  # kind="mc" has one, checked at construction
        return self._likelihood.sample(z, self.mc_samples, gen)

    def _batch_product(self, index, inputs, targets, Vs, k):
        p = self._problem
        params = tuple(q.detach() for q in p.params)
        self._batch_index = index

        def outputs(theta):
            return p.forward(theta, inputs)

        nb = p.size_of(inputs, targets)
        with p.mode():
            out = vjp(outputs, params)
            z, vjp_fn = out[0], out[1]
            if z.ndim == 0 or z.shape[0] != nb:
                raise ValueError(
                    f"FisherOperator takes the outputs' first dimension as the samples, but batch "
                    f"{index} has {nb} samples and outputs of shape {tuple(z.shape)}. Put the "
                    f"samples first (e.g. forward=lambda m, x: m(x).transpose(0, 1) for a sequence "
                    f"model with batch_first=False, and the targets likewise), or use GGNOperator, "
                    f"which needs no per-sample split.")
            R = self._per_sample_loss_grads(z, targets, nb)  # (m, *z.shape)
            JV = vmap(lambda t: jvp(outputs, (params,), (t,))[1])(tuple(Vs))  # (k, *z.shape)
            # s[m, c, i] = r_{m,i} · (J_i v_c), summed over each sample's output dims
            dims = tuple(range(3, 2 + z.ndim))
            prod = R.unsqueeze(1) * JV.unsqueeze(0)
            s = prod.sum(dim=dims) if dims else prod
            U = (s.reshape(*s.shape, *([1] * (z.ndim - 1))) * R.unsqueeze(1)).sum(0)
            U = U / (nb * R.shape[0]) if p.reduction != "sum" else U / R.shape[0]
            if self.kind == "mc" and p.reduction != "sum":
                assert self._likelihood is not None
                U = U * self._likelihood.terms_per_sample(z)  # Fisher of a mean of K log-likelihoods
            return list(vmap(vjp_fn)(U)[0])


def mc_seed(seed: int, batch_index: int) -> int:
    """The generator seed of one batch's draws: distinct per batch, reproducible per ``seed``.

    The multiplier is a prime larger than any batch count, so different ``(seed, batch)`` pairs
    never share a stream.
    """
    return seed * 1_000_003 + batch_index
