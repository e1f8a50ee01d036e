"""Natural gradient descent (Amari 1998) with the Fisher solved matrix-free by CG.

At each step, on the current batch, with gradient ``g`` and Fisher ``F`` (``kind="empirical"``: the
mean outer product of per-sample gradients; ``kind="mc"``: targets drawn from the model's
predictive distribution, whose expectation is the true Fisher = GGN for cross-entropy; Martens
2020, §9.2), products by ``hesse.FisherOperator``:

    (F + Λ) p = −g    (CG to relative residual ``cg_tol`` or ``cg_max_iter`` iterations,
                        warm-started from the previous direction),
    v ← μ v + p,  θ ← θ + lr · v.

The damped solve is a trust region in the KL divergence (Martens 2020, §6-7); the damping is
fixed (no adaptation): ``Λ = λI`` or, with param groups of different ``damping``, the
block-diagonal ``Λ = diag(λ_k I)`` with each group's ``λ_k`` (still symmetric positive definite, so
CG applies). ``lr`` and ``momentum`` may also differ per group; ``cg_max_iter`` and ``cg_tol``
belong to the single CG solve and may not. For ``kind="mc"`` the draws of step ``t`` use seed ``seed + t``, and ``t``
is kept in the optimizer state, so a resumed run draws the same targets.

The batch is found as for :class:`hesse.optim.HessianFree` (hooks on ``model`` and ``loss_fn``,
or ``step(closure, inputs=..., targets=...)``). ``last_solve`` holds the last CG's result.

Cost per step: the closure + one forward/backward for the operator's point + (CG iterations)
Fisher products (one ``jvp`` + one ``vjp`` each).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._validation import check_seed
from ..operators import FisherOperator
from ..operators.likelihoods import require_likelihood
from ._common import check_hyper, check_int
from .hessian_free import CGRecord, _BatchCurvatureOptimizer, cg_with_iterates

__all__ = ["NaturalGradient"]


class NaturalGradient(_BatchCurvatureOptimizer):
    """``NaturalGradient(model, loss_fn, lr=0.3, damping=0.1, kind="empirical", mc_samples=1,
    seed=0, momentum=0.0, cg_max_iter=20, cg_tol=1e-3, params=None)``;
    ``step(closure, inputs=None, targets=None)``.

    A non-finite loss, gradient or CG solution raises ``ValueError`` and changes nothing.
    :meth:`remove_hooks` takes the batch-recording hooks off the model. ``last_solve.damping`` is
    the damping when all groups share it, NaN when the groups' values differ.
    """

    _name = "NaturalGradient"
    _step_options = {"cg_max_iter": "one CG solve covers all groups",
                     "cg_tol": "one CG solve covers all groups"}

    def __init__(self, model: nn.Module, loss_fn: Callable, lr: float = 0.3,
                 damping: float = 0.1, kind: str = "empirical", mc_samples: int = 1,
                 seed: int = 0, momentum: float = 0.0, cg_max_iter: int = 20,
                 cg_tol: float = 1e-3, params: Any = None):
        check_hyper(lr, "lr")
        check_hyper(damping, "damping")
        if kind not in ("empirical", "mc"):
            raise ValueError(f"kind must be 'empirical' or 'mc'; got {kind!r}.")
        check_int(mc_samples, "mc_samples")
        check_hyper(momentum, "momentum", allow_zero=True, upper=1.0, upper_open=True)
        check_int(cg_max_iter, "cg_max_iter")
        check_hyper(cg_tol, "cg_tol")
        self.kind, self.mc_samples, self.seed = kind, int(mc_samples), check_seed(seed)
        self._setup(model, loss_fn, params, dict(lr=lr, damping=damping, momentum=momentum,
                                                 cg_max_iter=cg_max_iter, cg_tol=cg_tol))
        if kind == "mc":  # fail now, not at the first step, for a loss without a known likelihood
            require_likelihood(loss_fn, "sample", "NaturalGradient(kind='mc')",
                               "Use kind='empirical'.")
        self.last_solve: CGRecord | None = None

    def step(  # type: ignore[override]  # torch's stub says float; the loss is a tensor
            self, closure: Callable | None = None, inputs: Any = None,
            targets: Any = None) -> torch.Tensor:
        """One natural-gradient step on the batch of the closure; returns the loss before it."""

        loss, x, y = self._operator_batch(closure, inputs, targets)
        group0 = self.param_groups[0]  # the CG options are the same in every group (checked)
        st = self._state0()
        step = int(st["step"]) + 1 if "step" in st else 1
        with warnings.catch_warnings():  # eval mode + batch BN statistics is intended here
            warnings.filterwarnings("ignore", message="the model is in training mode")
            op = FisherOperator(self.model, self.loss_fn, (x, y), params=list(self._names),
                                kind=self.kind, mc_samples=self.mc_samples,
                                seed=self.seed + step, bn_mode="batch")
        gd = op.unflatten(op.gradient)
        g = self._flat([gd[n] for n in self._names])
        self._check_finite(g, "gradient")
        lam = self._group_scale("damping")  # diagonal of the block-diagonal damping Λ

        def A(v: torch.Tensor) -> torch.Tensor:
            out = op.unflatten(op.matvec(op.flatten(dict(zip(self._names, self._split(v))))))
            return self._flat([out[n] for n in self._names]) + lam * v

        prev = self._prev_direction()
        p, _, rec = cg_with_iterates(A, -g, prev, group0["cg_tol"], group0["cg_max_iter"],
                                     progress_test=False)
        self._check_finite(p, "CG solution", rec)
        dampings = {float(gr["damping"]) for gr in self.param_groups}
        rec.damping = dampings.pop() if len(dampings) == 1 else float("nan")
        if "step" not in st:
            st["step"] = torch.zeros((), dtype=torch.int64)
        st["step"] += 1
        self._store_direction(p)
        with torch.no_grad():
            lr = self._group_scale("lr")
            mom = self._group_scale("momentum")
            if "velocity" in st or bool((mom > 0).any()):
                v = self._flat([self.state[q]["velocity"] for q in self._params]) \
                    if "velocity" in st else torch.zeros_like(p)
                v = mom * v + p
                for q, vq in zip(self._params, self._split(v)):
                    self.state[q]["velocity"] = vq.clone()
                upd = lr * v
            else:
                upd = lr * p
            for q, d in zip(self._params, self._split(upd)):
                q.add_(d)
        rec.alpha = 1.0
        self.last_solve = rec
        return loss
