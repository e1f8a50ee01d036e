"""Generalized Gauss-Newton ``G = Jᵀ H_L J`` of a model's loss over data, matrix-free.

For outputs ``z = model(x; θ)``, ``J = ∂z/∂θ`` and ``H_L = ∂²ℓ/∂z²`` (the loss's Hessian with
respect to the outputs), ``G = (1/N) Σ_i J_iᵀ H_{L,i} J_i`` (Schraudolph 2002; Martens 2010, §4.2;
Martens 2020, "New insights and perspectives on the natural gradient method", §8). It drops the
term ``Σ_j (∂ℓ/∂z_j) ∇²z_j`` of the Hessian, so it is positive semidefinite whenever the loss is
convex in the outputs (mean squared error, cross-entropy), and it equals the Hessian for a model
linear in θ. For cross-entropy and Gaussian likelihoods it is also the exact Fisher.

A product ``G V`` is ``J V`` (forward mode, ``jvp``, batched over the columns with ``vmap``), then
``H_L (J V)`` (reverse-over-reverse on the loss as a function of the outputs, which is cheap),
then ``Jᵀ(·)`` (one ``vjp``, vmapped). Cost per block: about one forward and one backward pass per
batch, each carrying ``k`` tangents.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn
from torch.func import grad, jvp, vjp, vmap

from ._model_operator import ModelCurvatureOperator


class GGNOperator(ModelCurvatureOperator):
    """Generalized Gauss-Newton matrix of the mean loss over ``data``; PSD for MSE and
    cross-entropy. Arguments as for :class:`HessianOperator`."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        params: Any = None,
        *,
        bn_mode: str = "eval",
        eval_mode: bool = True,
        check_deterministic: bool = False,
        distributed: Any = None,
    ):
        super().__init__(model, loss_fn, data, params, bn_mode=bn_mode, eval_mode=eval_mode,
                         check_deterministic=check_deterministic, distributed=distributed, is_psd=True, keep_graph=False)

    def _batch_product(self, index, inputs, targets, Vs, k):
        p = self._problem
        params = tuple(q.detach() for q in p.params)

        def outputs(theta):
            return p.forward(theta, inputs)

        def loss_of_outputs(z):
            return p.loss_fn(z, targets)

        with p.mode():
            z, vjp_fn = vjp(outputs, params)
            JV = vmap(lambda t: jvp(outputs, (params,), (t,))[1])(tuple(Vs))
            _, loss_hvp = vjp(grad(loss_of_outputs), z)  # H_L is symmetric: vjp = H_L u
            HJV = vmap(lambda u: loss_hvp(u)[0])(JV)
            return list(vmap(vjp_fn)(HJV)[0])
