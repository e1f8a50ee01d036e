"""Fisher information of a model over data, empirical or Monte-Carlo, matrix-free.

With outputs ``z_i = model(x_i; θ)``, per-sample loss ``ℓ_i`` and ``r_i = ∂ℓ(z_i, y)/∂z_i``:

* empirical Fisher (``kind="empirical"``): ``F = (1/N) Σ_i J_iᵀ r_i r_iᵀ J_i`` with the observed
  targets ``y_i`` — the mean outer product of per-sample gradients. It is *not* a curvature matrix
  in general (Kunstner, Balles & Hennig 2019), but many optimizers use it.
* Monte-Carlo Fisher (``kind="mc"``): the same with ``y`` drawn from the model's predictive
  distribution ``p(y | z_i)`` (``mc_samples`` draws per sample, averaged). Its expectation is the
  true Fisher, which for cross-entropy and squared error equals the GGN (Martens 2020, §9.2).
  The draws come from a ``torch.Generator`` seeded with ``seed`` and the batch index, so the
  operator is a fixed, reproducible matrix.

Likelihoods for ``kind="mc"``: ``nn.CrossEntropyLoss`` (categorical over the class dimension 1),
``nn.MSELoss`` (Gaussian; with ``reduction="mean"`` over ``C`` outputs per sample the loss is
``‖z − y‖²/C``, the negative log-likelihood of ``N(z, C/2 · I)`` up to a constant) and
``nn.BCEWithLogitsLoss`` (Bernoulli). A product never forms per-sample gradients: it is
``Jᵀ(r ⊙ (rᵀ J V))``, one ``jvp`` and one ``vjp`` per batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import grad, jvp, vjp, vmap

from ._data import batch_size
from ._model_operator import ModelCurvatureOperator

_MC_LOSSES = (nn.CrossEntropyLoss, nn.MSELoss, nn.BCEWithLogitsLoss)


class FisherOperator(ModelCurvatureOperator):
    """Fisher matrix (``kind="empirical"`` or ``"mc"``) of a model over ``data``; PSD.

    Extra arguments: ``mc_samples`` (draws per sample for ``"mc"``), ``seed``. Others as for
    :class:`HessianOperator`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        params: Any = None,
        *,
        kind: str = "empirical",
        mc_samples: int = 1,
        seed: int = 0,
        bn_mode: str = "eval",
        eval_mode: bool = True,
        check_deterministic: bool = False,
        distributed: Any = None,
    ):
        if kind not in ("empirical", "mc"):
            raise ValueError(f"kind must be 'empirical' or 'mc'; got {kind!r}.")
        if kind == "mc" and not isinstance(loss_fn, _MC_LOSSES):
            raise ValueError(
                f"kind='mc' samples targets from the model's likelihood, which hesse knows for "
                f"{', '.join(c.__name__ for c in _MC_LOSSES)}; got {type(loss_fn).__name__}. Use "
                f"kind='empirical' or GGNOperator."
            )
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}.")
        self.kind, self.mc_samples, self.seed = kind, mc_samples, int(seed)
        super().__init__(model, loss_fn, data, params, bn_mode=bn_mode, eval_mode=eval_mode,
                         check_deterministic=check_deterministic, distributed=distributed, is_psd=True, keep_graph=False)
        if kind == "mc" and self._problem.data.shuffles:
            import warnings

            warnings.warn("kind='mc' draws targets per batch index; a shuffling DataLoader makes "
                          "the operator change between products. Use shuffle=False.", stacklevel=2)

    def _per_sample_loss_grads(self, z: torch.Tensor, targets: Any, nb: int) -> torch.Tensor:
        """Rows ``r_i = ∂ℓ_i/∂z_i`` for the observed or sampled targets: shape (m, *z.shape)."""
        p = self._problem
        scale = float(nb) if p.reduction == "mean" else 1.0

        def batch_loss(zz, yy):
            return p.loss_fn(zz, yy)

        if self.kind == "empirical":
            return (scale * grad(batch_loss)(z, targets)).unsqueeze(0)
        ys = self._sample_targets(z)
        return torch.stack([scale * grad(batch_loss)(z, y) for y in ys])

    def _sample_targets(self, z: torch.Tensor) -> list[torch.Tensor]:
        p = self._problem
        gen = torch.Generator(device=z.device)
        gen.manual_seed(self.seed * 1_000_003 + self._batch_index)
        zd = z.detach()
        out = []
        for _ in range(self.mc_samples):
            if isinstance(p.loss_fn, nn.CrossEntropyLoss):
                logits = zd.movedim(1, -1) if zd.ndim > 2 else zd
                probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
                y = torch.multinomial(probs, 1, generator=gen).reshape(logits.shape[:-1])
                out.append(y)
            elif isinstance(p.loss_fn, nn.MSELoss):
                per_sample = zd[0].numel() if zd.ndim > 1 else 1
                var = per_sample / 2.0 if p.reduction == "mean" else 0.5
                noise = torch.randn(zd.shape, generator=gen, device=zd.device, dtype=zd.dtype)
                out.append(zd + var**0.5 * noise)
            else:  # BCEWithLogitsLoss
                u = torch.rand(zd.shape, generator=gen, device=zd.device, dtype=zd.dtype)
                out.append((u < torch.sigmoid(zd)).to(zd.dtype))
        return out

    def _batch_product(self, index, inputs, targets, Vs, k):
        p = self._problem
        params = tuple(q.detach() for q in p.params)
        self._batch_index = index

        def outputs(theta):
            return p.forward(theta, inputs)

        nb = batch_size(inputs, targets)
        with p.mode():
            z, vjp_fn = vjp(outputs, params)
            R = self._per_sample_loss_grads(z, targets, nb)  # (m, *z.shape)
            JV = vmap(lambda t: jvp(outputs, (params,), (t,))[1])(tuple(Vs))  # (k, *z.shape)
            # s[m, c, i] = r_{m,i} · (J_i v_c), summed over each sample's output dims
            dims = tuple(range(3, 2 + z.ndim))
            prod = R.unsqueeze(1) * JV.unsqueeze(0)
            s = prod.sum(dim=dims) if dims else prod
            U = (s.reshape(*s.shape, *([1] * (z.ndim - 1))) * R.unsqueeze(1)).sum(0)
            U = U / (nb * R.shape[0]) if p.reduction == "mean" else U / R.shape[0]
            return list(vmap(vjp_fn)(U)[0])
