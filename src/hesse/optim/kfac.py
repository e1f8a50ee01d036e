"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015; convolutions: Grosse &
Martens 2016, KFC).

For a layer ``s = W a`` (bias folded in as a last column of ``W`` and a constant 1 appended to
``a``) the Fisher block of ``vec(W)`` is approximated by ``A ⊗ G`` with ``A = E[a aᵀ]`` and
``G = E[g gᵀ]``, ``g = ∂ℓ/∂s`` the per-sample output gradient (Martens & Grosse 2015, §3). The
natural-gradient step for the block is then ``(A ⊗ G)⁻¹ vec(∇W) = vec(G⁻¹ ∇W A⁻¹)``.

* The loss of a batch of ``m`` samples is ``L = (1/m) Σᵢ ℓᵢ`` (``reduction="mean"``) or
  ``L = Σᵢ ℓᵢ`` (``reduction="sum"``); ``g`` is an output gradient of the per-sample loss ``ℓᵢ``,
  i.e. ``∂L/∂s`` times ``m`` or times 1. A sample with several likelihood terms (a sequence whose
  tokens all enter the loss) has ``ℓᵢ`` the mean (``"mean"``) or the sum (``"sum"``) of its terms,
  as for ``nn.CrossEntropyLoss(reduction=...)`` over all ``m·T`` tokens.
* ``nn.Linear``: ``a`` is the layer input; inputs with extra dimensions (``m × T × d``: a layer
  shared over the ``T`` positions of a sequence) are treated as KFC treats locations:
  ``A = E[a aᵀ]`` over samples and positions, ``G`` the mean over samples of ``Σ_t g_t g_tᵀ``.
* ``nn.Conv2d`` with ``groups=1`` (KFC, Grosse & Martens 2016, §3.1): ``a`` are the input
  patches (``unfold``, padded as the layer pads) at every spatial location ``t``; ``A`` is their
  mean over samples and locations and ``G`` the mean over samples of ``Σ_t g_t g_tᵀ`` (spatially
  uncorrelated derivatives, spatial homogeneity).
* With ``loss_fn=`` given, ``ℓ`` is the loss of one likelihood term (a token of a sequence,
  :mod:`hesse.operators.likelihoods`) and ``G`` the mean over the terms, as in
  :class:`hesse.KFACOperator` (:func:`hesse.operators.kronecker.output_gradient_scale`).
* These per-batch factors and the damped inverse below are those of :class:`hesse.KFACOperator`
  (one implementation, in ``hesse.operators``); this module adds what an optimizer needs: hooks
  that record the layers' inputs and output gradients, running averages, the update cadence, KL
  clipping, momentum and the step.
* Statistics are exponential running averages with ``stat_decay``, initialised with the first
  batch and updated every ``factor_every`` steps (the ``T_1`` of Martens & Grosse 2015, §8; the
  hooks record nothing on the other steps, which then cost what SGD costs plus one
  preconditioning). Every ``inverse_every`` steps the factors are eigendecomposed and the damped
  inverses ``(A + π√λ I)⁻¹`` and ``(G + √λ/π I)⁻¹`` stored, with the factored Tikhonov damping
  of Martens & Grosse (2015, §6.3): ``π = sqrt((tr A / dim A) / (tr G / dim G))``
  (``KFACOperator.inverse(λ, damping_mode="factored")`` is the same matrix).
* The preconditioned direction is rescaled by KL clipping (Ba, Grosse & Martens 2017):
  ``ν = min(1, sqrt(kl_clip / (lr² Σ ⟨Δ, ∇⟩)))``, then heavy-ball momentum and ``θ ← θ − lr ν Δ``.
* Parameters outside ``nn.Linear`` / ``nn.Conv2d`` layers (BatchNorm, embeddings, ...) fall back to
  SGD with the same ``lr``, ``momentum`` and ``weight_decay`` (listed in ``fallback_params``).

Cost per step: one forward/backward (the closure); ``O(d_in² + d_out²)`` per layer for the
statistics; ``O(d_in³ + d_out³)`` per layer every ``inverse_every`` steps for the
eigendecompositions.
The statistics use the observed targets (the empirical Fisher's output gradients), as many
K-FAC implementations do; the MC-sampled targets of the paper would need a second backward pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..operators.evaluation import declared_reduction

# The per-batch factors and the damped inverse are shared with hesse.KFACOperator; the factor
# functions stay importable from here (explicit re-exports).
from ..operators.kronecker import (
    REDUCTIONS,
    KroneckerInverse,
    damped_kronecker_inverse,
    factor_eigh,
    supports_layer,
)
from ..operators.kronecker import conv2d_factors as conv2d_factors
from ..operators.kronecker import layer_factors as layer_factors
from ..operators.kronecker import linear_factors as linear_factors
from ..operators.kronecker import output_gradient_scale as output_gradient_scale
from ..operators.likelihoods import Likelihood, likelihood_of
from ._common import (
    HookSet,
    check_hyper,
    check_int,
    check_model,
    model_param_groups,
    param_names,
    run_closure,
    weak_hook,
)

__all__ = ["KFAC"]


class KFAC(torch.optim.Optimizer):
    """K-FAC optimizer for the ``nn.Linear`` and ``nn.Conv2d`` layers of ``model``.

    ``KFAC(model, lr=0.1, damping=1e-3, inverse_every=10, stat_decay=0.95, momentum=0.9,
    weight_decay=0.0, kl_clip=1e-3, params=None, factor_every=1, reduction="mean")``
    (``kl_clip=None`` disables KL clipping; with the default, the step length is mostly set by
    ``kl_clip`` and ``lr`` matters less). ``params`` may restrict the optimized parameters or give
    param groups (a layer uses the hyperparameters of its weight's group). ``reduction`` says how
    the closure's loss combines the per-sample losses: ``"mean"`` or ``"sum"``, as the
    ``reduction`` of an ``nn`` loss (pass ``reduction=loss_fn.reduction``); with the wrong one, ``G``
    is off by the squared batch size. ``loss_fn``: the ``nn`` loss module the closure calls;
    KFAC then reads the reduction from it and counts the likelihood terms of each batch (each
    position of a sequence a term for cross-entropy on ``(N, C, T)`` and squared error on
    ``(N, T, D)``), so that its factors are those of :class:`hesse.KFACOperator`
    (``kind="empirical"``) on the same batch. Without it every sample is one term, which for
    sequence outputs with ``reduction="mean"`` gives a ``G`` ``T`` times smaller.
    ``step(closure)`` takes the closure of ``torch.optim.LBFGS`` (or, without a closure, uses the
    gradients and statistics of the last ``loss.backward()``). Statistics are recorded by hooks
    during forward/backward passes with gradients enabled and the model in training mode, by
    hooks that :meth:`remove_hooks` (or deleting the optimizer) takes off the model.

    A step whose loss or gradients are not finite raises ``ValueError`` and changes nothing (the
    statistics recorded on that batch are discarded).
    """

    def __init__(self, model: nn.Module, lr: float = 0.1, damping: float = 1e-3,
                 inverse_every: int = 10, stat_decay: float = 0.95, momentum: float = 0.9,
                 weight_decay: float = 0.0, kl_clip: float | None = 1e-3, params: Any = None,
                 factor_every: int = 1, reduction: str = "mean", loss_fn: Any = None):
        check_model(model, "KFAC")
        self._loss_likelihood: Likelihood | None = None
        if loss_fn is not None:
            if not isinstance(loss_fn, nn.Module):
                raise TypeError(
                    f"loss_fn must be the nn loss module the closure calls (e.g. "
                    f"nn.CrossEntropyLoss()), whose calls KFAC observes to count the likelihood "
                    f"terms; got {type(loss_fn).__name__}. Pass reduction= alone for another loss.")
            declared = declared_reduction(loss_fn)
            reduction = declared if declared is not None else reduction
            self._loss_likelihood = likelihood_of(loss_fn)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be 'mean' or 'sum' (how the closure's loss combines "
                             f"the per-sample losses, as loss_fn.reduction); got {reduction!r}.")
        self.reduction = reduction
        check_hyper(lr, "lr")
        check_hyper(damping, "damping")
        check_int(inverse_every, "inverse_every")
        check_int(factor_every, "factor_every")
        check_hyper(stat_decay, "stat_decay", allow_zero=True, upper=1.0, upper_open=True)
        check_hyper(momentum, "momentum", allow_zero=True, upper=1.0, upper_open=True)
        check_hyper(weight_decay, "weight_decay", allow_zero=True)
        if kl_clip is not None:
            check_hyper(kl_clip, "kl_clip")
        defaults = dict(lr=lr, damping=damping, inverse_every=inverse_every,
                        factor_every=factor_every, stat_decay=stat_decay, momentum=momentum,
                        weight_decay=weight_decay, kl_clip=kl_clip)
        super().__init__(model_param_groups(model, params), defaults)
        optimized = {id(p) for g in self.param_groups for p in g["params"]}
        names = param_names(model)
        self._layers: list[tuple[nn.Module, torch.Tensor, torch.Tensor | None]] = []
        covered: set[int] = set()
        for module in model.modules():
            if (isinstance(module, (nn.Linear, nn.Conv2d)) and supports_layer(module)
                    and id(module.weight) in optimized):
                bias = module.bias if (module.bias is not None
                                       and id(module.bias) in optimized) else None
                self._layers.append((module, module.weight, bias))
                covered.add(id(module.weight))
                if bias is not None:
                    covered.add(id(bias))
        self._names = names
        self.fallback_params = [names[id(p)] for g in self.param_groups for p in g["params"]
                                if id(p) not in covered]
        if not self._layers:
            raise ValueError(
                "KFAC found no nn.Linear or nn.Conv2d layer (groups=1) among the optimized "
                f"parameters of {type(model).__name__}: all of {self.fallback_params} would fall "
                "back to SGD with momentum. Use torch.optim.SGD or another hesse.optim optimizer.")
        self._cache: dict[int, dict[str, torch.Tensor]] = {}
        self._weight_of = {id(module): weight for module, weight, _ in self._layers}
        self._hooks = HookSet(self)
        for module, _, _ in self._layers:
            self._hooks.add(module.register_forward_hook(weak_hook(self._forward_hook)))
        self._loss_fn = loss_fn
        self._warned_sequence = False
        self._terms: int | None = None  # likelihood terms of the last loss_fn call
        if loss_fn is not None:
            self._hooks.add(loss_fn.register_forward_hook(weak_hook(self._loss_hook)))

    # ------------------------------------------------------------------ statistics
    def _forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not (torch.is_grad_enabled() and module.training and output.requires_grad):
            return
        weight = self._weight_of[id(module)]
        state = self.state[weight]
        done = int(state["step"]) if "step" in state else 0  # steps taken so far by this layer
        every = next(g["factor_every"] for g in self.param_groups if any(p is weight for p in g["params"]))
        if "A" in state and done % every != 0:
            return  # not a statistics step: no activations kept, no backward hook
        entry = self._cache.setdefault(id(module), {})
        entry["a"] = args[0].detach()

        def save_grad(g: torch.Tensor) -> None:
            entry["g"] = g.detach()

        output.register_hook(save_grad)

    # ------------------------------------------------------------------ step
    def _loss_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Count the likelihood terms of the batch the closure's loss is computed on: one per
        sample and position for cross-entropy / squared error on sequences, as in
        :class:`hesse.KFACOperator`; one per sample for other losses."""
        if not torch.is_grad_enabled() or len(args) < 2 or not isinstance(args[0], torch.Tensor):
            return
        z, y = args[0].detach(), args[1]
        lik = self._loss_likelihood
        self._terms = lik.num_terms(z, y) if lik is not None else (z.shape[0] if z.ndim else 1)

    @torch.no_grad()
    def step(  # type: ignore[override]  # torch's stub says float; the loss is a tensor
            self, closure: Callable | None = None) -> torch.Tensor | None:
        """One K-FAC step; returns the closure's loss (``None`` without a closure). A non-finite
        loss, gradient or recorded statistic raises ``ValueError`` and changes nothing."""
        try:
            loss = run_closure(closure, "KFAC", [p for g in self.param_groups for p in g["params"]],
                               self._names)
            if self._loss_fn is not None and self._cache and self._terms is None:
                raise ValueError(
                    "KFAC.step: the closure did not call loss_fn (the module passed as "
                    "KFAC(loss_fn=...)), so the likelihood terms of the batch are unknown; compute "
                    "the loss with that same module instance.")
            recorded = [torch.isfinite(t).all() for e in self._cache.values() for t in e.values()]
            if recorded and not bool(torch.stack(recorded).all()):
                raise ValueError("KFAC.step: the recorded layer inputs or output gradients have "
                                 "non-finite entries; nothing was changed. Check the batch, "
                                 "lower lr or raise damping.")
        except ValueError:
            self._cache.clear()  # this batch's statistics must not enter the running factors
            self._terms = None
            raise
        terms, self._terms = self._terms, None
        for module, weight, _ in self._layers:
            if (weight.grad is not None and "A" not in self.state[weight]
                    and "g" not in self._cache.get(id(module), {})):
                raise ValueError(
                    "KFAC.step found gradients but no recorded statistics for a layer: run the "
                    "forward and backward pass with the model in training mode and gradients "
                    "enabled (e.g. inside the closure) before step().")
        updates: dict[int, torch.Tensor] = {}
        groups = {id(p): g for g in self.param_groups for p in g["params"]}
        vg_sum: dict[int, float] = {}
        for module, weight, bias in self._layers:
            if weight.grad is None:
                continue
            group = groups[id(weight)]
            state = self.state[weight]
            if "step" not in state:
                state["step"] = torch.zeros((), dtype=torch.int64)
            state["step"] += 1
            step = int(state["step"])
            cache = self._cache.pop(id(module), None)
            if cache is not None and "g" in cache:
                if (self._loss_fn is None and self.reduction == "mean" and not self._warned_sequence
                        and isinstance(module, nn.Linear) and cache["a"].ndim > 2):
                    warnings.warn(
                        "KFAC: a Linear layer sees sequence inputs (N, T, d) and the loss is a mean, "
                        "but KFAC was not given loss_fn, so each sample counts as one likelihood term "
                        "(G is T times smaller than KFACOperator's when the loss averages over the T "
                        "positions). Pass KFAC(model, loss_fn=the loss module the closure calls).",
                        UserWarning, stacklevel=2)
                    self._warned_sequence = True
                A, G = layer_factors(module, cache["a"], cache["g"], bias is not None,
                                     self.reduction, terms)
                if "A" not in state:
                    state["A"], state["G"] = A.clone(), G.clone()
                else:
                    d = group["stat_decay"]
                    state["A"].mul_(d).add_(A, alpha=1 - d)
                    state["G"].mul_(d).add_(G, alpha=1 - d)
            if (step - 1) % group["inverse_every"] == 0 or "A_inv" not in state:
                self._refresh_inverses(state, group["damping"])
            grad = weight.grad.reshape(weight.shape[0], -1)
            if bias is not None:
                grad = torch.cat([grad, bias.grad.reshape(-1, 1) if bias.grad is not None
                                  else grad.new_zeros(grad.shape[0], 1)], dim=1)
            if group["weight_decay"]:
                wd = weight.reshape(weight.shape[0], -1)
                if bias is not None:
                    wd = torch.cat([wd, bias.reshape(-1, 1)], dim=1)
                grad = grad + group["weight_decay"] * wd
            delta = KroneckerInverse(state["G_inv"], state["A_inv"]).matmul(grad)
            updates[id(weight)] = delta
            key = id(group)
            vg_sum[key] = vg_sum.get(key, 0.0) + float((delta * grad).sum())
        # KL clipping per group, momentum, update
        for group in self.param_groups:
            kl = group["kl_clip"]
            nu = 1.0
            s = vg_sum.get(id(group), 0.0)
            if kl is not None and s > 0:
                nu = min(1.0, (kl / (group["lr"] ** 2 * s)) ** 0.5)
            for _, weight, bias in self._layers:
                if id(weight) not in updates or groups[id(weight)] is not group:
                    continue
                delta = updates[id(weight)] * nu
                nw = weight[0].numel()
                self._apply(weight, delta[:, :nw].reshape(weight.shape), group)
                if bias is not None:
                    self._apply(bias, delta[:, nw], group)
        # fallback: SGD with momentum
        covered = {id(t) for _, w, b in self._layers for t in (w, b) if t is not None}
        for group in self.param_groups:
            for p in group["params"]:
                if id(p) in covered or p.grad is None:
                    continue
                d = p.grad
                if group["weight_decay"]:
                    d = d + group["weight_decay"] * p
                self._apply(p, d, group)
        return loss

    def _apply(self, p: torch.Tensor, direction: torch.Tensor, group: dict) -> None:
        mom = group["momentum"]
        if mom:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = direction.clone()
            else:
                state["momentum_buffer"].mul_(mom).add_(direction)
            direction = state["momentum_buffer"]
        p.add_(direction, alpha=-group["lr"])

    @staticmethod
    def _refresh_inverses(state: dict, damping: float) -> None:
        """Store the factored-damping inverses ``(A + π√λ I)⁻¹`` and ``(G + √λ/π I)⁻¹`` of the
        running factors (Martens & Grosse 2015, §6.3), kept until the next refresh."""
        inverse = damped_kronecker_inverse(factor_eigh(state["A"], state["G"]), damping,
                                           damping_mode="factored")
        state["G_inv"], state["A_inv"] = inverse.left, inverse.right

    def remove_hooks(self) -> None:
        """Detach the statistics hooks from the model (the optimizer can no longer step). Deleting
        the optimizer does the same."""
        self._hooks.remove()
