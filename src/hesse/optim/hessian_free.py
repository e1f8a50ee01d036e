"""Hessian-free optimization (Martens 2010): truncated CG on the damped Gauss-Newton system.

At each step, on the current batch, with gradient ``g`` and GGN ``G = Jᵀ H_ℓ J`` (Schraudolph
2002; products by ``hesse.GGNOperator``, one ``jvp`` + one ``vjp`` each):

1. **CG** on ``(G + λI) p = −g`` (Martens 2010, §4.1-4.6), i.e. minimizing
   ``q_λ(p) = gᵀp + ½ pᵀ(G + λI)p``, started from the previous direction times ``cg_decay``
   (warm start, §4.5), stopped when ``‖r‖ ≤ cg_tol ‖g‖``, after ``cg_max_iter`` iterations, or by
   Martens' progress test (§4.4): ``i > k``, ``q(p_i) < 0`` and
   ``(q(p_i) − q(p_{i−k})) / q(p_i) < k · 5e-4`` with ``k = max(10, 0.1 i)``; the loop is
   :func:`hesse.operators.conjugate_gradient` with these stopping rules.
2. **CG iterate backtracking** (§4.6): iterates are kept at ``i = ⌈1.3ʲ⌉`` and at the end; starting
   from the last, step back while an earlier kept iterate gives a lower loss on the batch.
3. **Levenberg-Marquardt damping** (§4.1): with the reduction ratio
   ``ρ = (L(θ+p) − L(θ)) / q₀(p)`` (``q₀`` undamped), ``λ ← 3/2 λ`` if ``ρ < 1/4`` and
   ``λ ← 2/3 λ`` if ``ρ > 3/4``.
4. **Line search** (Martens & Sutskever 2012, §8.8): ``α = lr, 0.8 lr, 0.8² lr, ...`` until
   ``L(θ + αp) ≤ L(θ) + 10⁻² α gᵀp`` (at most 20 tries; no step if none passes), then
   ``θ ← θ + α p``.

The batch: the optimizer keeps the inputs of the last forward pass of ``model`` and the targets of
the last call of ``loss_fn`` (an ``nn.Module``) made with gradients enabled, so the closure of
``torch.optim.LBFGS`` is enough; or pass ``step(closure, inputs=..., targets=...)``.

Cost per step: the closure (one forward/backward) + one forward/backward for the operator's point,
``(CG iterations + 1)`` GGN products (each ≈ 2 forward/backward), a forward per backtracking and
line-search trial. ``last_solve`` is a :class:`CGRecord` of the last CG solve (``converged``,
``relative_residual``, ``nit``, ``num_matvecs``, ``message``, damping, ρ and the step).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from .._result import Result
from ..operators import GGNOperator
from ..operators.solve import (
    MartensProgress,
    RecordIterates,
    ResidualTolerance,
    conjugate_gradient,
)
from ._common import (
    BatchRecorder,
    check_hyper,
    check_int,
    check_model,
    closure_loss,
    model_param_groups,
    param_names,
    uniform_option,
)

__all__ = ["HessianFree", "CGRecord"]


# Martens (2010), §4.1: Levenberg-Marquardt rule, λ grows by 3/2 when the quadratic model
# over-predicts the decrease (ρ < 1/4) and shrinks by 2/3 when it predicts it well (ρ > 3/4).
_RHO_LOW, _RHO_HIGH = 0.25, 0.75
_DAMPING_GROW, _DAMPING_SHRINK = 1.5, 2.0 / 3.0
# Martens & Sutskever (2012), §8.8: Armijo backtracking with sufficient-decrease constant 10⁻²,
# step shrink 0.8, and a bounded number of trials (0.8²⁰ ≈ 1%: a shorter step is not worth it).
_ARMIJO_C = 1e-2
_BACKTRACK_FACTOR = 0.8
_MAX_LINE_SEARCH_TRIALS = 20

@dataclass(repr=False)
class CGRecord(Result):
    """What the last inner CG did (a :class:`hesse._result.Result`): ``converged`` (residual
    tolerance met), ``relative_residual`` ``‖(G+λI)p + g‖/‖g‖`` (recursive residual), ``nit`` (CG
    iterations), ``num_matvecs`` (products with the damped matrix inside CG), ``message`` (why
    it stopped: ``"tolerance"``, ``"progress"`` (Martens' test), ``"max_iter"``,
    ``"negative curvature"``, ``"zero right-hand side"``), ``damping`` (λ used), ``rho``
    (reduction ratio), ``alpha`` (line-search step; 0 when no trial was accepted).
    """

    converged: bool
    relative_residual: float
    nit: int
    num_matvecs: int
    message: str
    damping: float = float("nan")
    rho: float = float("nan")
    alpha: float = float("nan")



# What CGRecord.message says for each status of the CG kernel.
_MESSAGES = {"converged": "tolerance", "progress": "progress", "max_iter": "max_iter",
             "negative_curvature": "negative curvature", "breakdown": "negative curvature",
             "nonfinite": "non-finite product"}


def cg_with_iterates(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
                     x0: torch.Tensor | None, tol: float, max_iter: int,
                     progress_test: bool = True,
                     preconditioner: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     ) -> tuple[torch.Tensor, list[tuple[int, torch.Tensor]], CGRecord]:
    """Truncated CG for ``A x = b`` (``A`` symmetric positive definite) from ``x0``, as Martens
    (2010) runs it; returns the final iterate, the iterates kept at ``i = ⌈1.3ʲ⌉`` and the last
    one (§4.6, for backtracking), and a :class:`CGRecord`.

    The iteration is :func:`hesse.operators.conjugate_gradient` (Hestenes & Stiefel 1952; Nocedal
    & Wright 2006, Alg. 5.2, with ``preconditioner``: Alg. 5.3) with the rules
    ``‖r‖ ≤ tol · ‖b‖`` on the recursive residual and, with ``progress_test``, Martens' relative
    progress test on ``q(x) = ½ xᵀAx − bᵀx`` (§4.4). A curvature ``pᵀAp ≤ 0`` (rounding on a
    singular ``A``) stops at the last iterate. ``b = 0`` gives ``x = 0``. One product per
    iteration, plus one for a nonzero ``x0``; ``relative_residual`` is the recursive one.
    """
    recorder = RecordIterates.martens()
    rules: list[Any] = [recorder, ResidualTolerance(tol)]
    if progress_test:
        rules.append(MartensProgress())
    res = conjugate_gradient(matvec, b, x0=x0, rules=rules, max_iter=int(max_iter),
                             preconditioner=preconditioner, true_residual=False, is_psd=True)
    message = _MESSAGES.get(res.status, res.status)
    if res.nit == 0 and res.status == "converged":
        message = "zero right-hand side"
    kept = res.iterates if res.iterates is not None else [(res.nit, res.x.clone())]
    return res.x, kept, CGRecord(converged=res.converged, relative_residual=res.relative_residual,
                                 nit=res.nit, num_matvecs=res.num_matvecs, message=message)


class _BatchCurvatureOptimizer(torch.optim.Optimizer):
    """Shared by :class:`HessianFree` and :class:`NaturalGradient`: the model, its loss, the batch
    recorder, flat vectors over the optimized parameters, and loss evaluation at ``θ + p``."""

    _name = "optimizer"
    # options of the whole step (one CG solve, ...), with the reason they cannot vary per group
    _step_options: dict[str, str] = {}

    def _setup(self, model: nn.Module, loss_fn: Callable, params: Any, defaults: dict) -> None:
        check_model(model, self._name)
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs, targets) -> scalar loss, e.g. "
                            f"nn.CrossEntropyLoss(); got {type(loss_fn).__name__}.")
        torch.optim.Optimizer.__init__(self, model_param_groups(model, params), defaults)
        self.model, self.loss_fn = model, loss_fn
        names = param_names(model)
        self._params = [p for g in self.param_groups for p in g["params"]]
        self._names = [names[id(p)] for p in self._params]
        self._name_of = {id(p): names[id(p)] for p in self._params}
        self._check_step_options()
        self._recorder = BatchRecorder(model, loss_fn, owner=self)

    def _check_step_options(self) -> None:
        for key, why in self._step_options.items():
            uniform_option(self.param_groups, key, self._name, why)

    def remove_hooks(self) -> None:
        """Detach the batch-recording hooks from ``model`` and ``loss_fn`` (deleting the optimizer
        does the same); ``step`` then needs ``inputs=`` and ``targets=``."""
        self._recorder.remove()

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _split(self, v: torch.Tensor) -> list[torch.Tensor]:
        out, i = [], 0
        for p in self._params:
            out.append(v[i:i + p.numel()].view_as(p))
            i += p.numel()
        return out

    def _group_scale(self, key: str) -> torch.Tensor:
        """A flat vector holding each parameter's group value of ``key`` (e.g. its lr)."""
        return torch.cat([torch.full((p.numel(),), float(g[key]), dtype=p.dtype, device=p.device)
                          for g in self.param_groups for p in g["params"]])

    @torch.no_grad()
    def _loss_at(self, direction: torch.Tensor | None, x: Any, y: Any) -> float:
        """Loss on the batch at ``θ + direction`` (buffers copied: running statistics unchanged)."""
        params = dict(self.model.named_parameters())
        if direction is not None:
            for n, p, d in zip(self._names, self._params, self._split(direction)):
                params[n] = p + d
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        out = functional_call(self.model, {**params, **buffers}, (x,))
        return float(self.loss_fn(out, y))

    def _state0(self) -> dict:
        return self.state[self._params[0]]

    def _prev_direction(self) -> torch.Tensor | None:
        if "direction" not in self.state[self._params[0]]:
            return None
        return self._flat([self.state[p]["direction"] for p in self._params])

    def _store_direction(self, d: torch.Tensor) -> None:
        for p, dp in zip(self._params, self._split(d)):
            self.state[p]["direction"] = dp.clone()

    def _operator_batch(self, closure, inputs, targets):
        self._check_step_options()
        loss = closure_loss(closure, self._name, self._params, self._name_of)
        x, y = self._recorder.batch(inputs, targets, self._name)
        return loss, x, y

    def _check_finite(self, v: torch.Tensor, what: str, record: CGRecord | None = None) -> None:
        """Refuse a non-finite gradient or solution (or a CG solve stopped by a non-finite
        product) before any parameter or state changes."""
        if not bool(torch.isfinite(v).all()) or (record is not None
                                                 and record.message == _MESSAGES["nonfinite"]):
            raise ValueError(f"{self._name}.step: the {what} on this batch has non-finite entries; "
                             f"nothing was changed. Check the batch, lower lr or raise damping.")


class HessianFree(_BatchCurvatureOptimizer):
    """Hessian-free (truncated Gauss-Newton CG) optimizer, Martens (2010).

    ``HessianFree(model, loss_fn, lr=1.0, damping=1.0, cg_max_iter=50, cg_tol=1e-4, cg_decay=0.95,
    params=None)``; ``step(closure, inputs=None, targets=None)``.

    Param groups may set their own ``lr`` (the line search's first trial scales each group's part
    of the direction); ``damping`` and the CG options belong to the single damped system and must
    be the same in every group (a ``ValueError`` otherwise). A non-finite loss, gradient or CG
    solution raises ``ValueError`` and changes nothing. :meth:`remove_hooks` takes the
    batch-recording hooks off the model.
    """

    _name = "HessianFree"
    _step_options = {
        "damping": "one Levenberg-Marquardt damping is adapted for the whole CG system",
        "cg_max_iter": "one CG solve covers all groups",
        "cg_tol": "one CG solve covers all groups",
        "cg_decay": "one CG solve covers all groups",
    }

    def __init__(self, model: nn.Module, loss_fn: Callable, lr: float = 1.0, damping: float = 1.0,
                 cg_max_iter: int = 50, cg_tol: float = 1e-4, cg_decay: float = 0.95,
                 params: Any = None):
        check_hyper(lr, "lr")
        check_hyper(damping, "damping")
        check_int(cg_max_iter, "cg_max_iter")
        check_hyper(cg_tol, "cg_tol")
        check_hyper(cg_decay, "cg_decay", allow_zero=True, upper=1.0)
        self._setup(model, loss_fn, params, dict(lr=lr, damping=damping, cg_max_iter=cg_max_iter,
                                                 cg_tol=cg_tol, cg_decay=cg_decay))
        self.last_solve: CGRecord | None = None

    def step(  # type: ignore[override]  # torch's stub says float; the loss is a tensor
            self, closure: Callable | None = None, inputs: Any = None,
            targets: Any = None) -> torch.Tensor:
        """One HF step on the batch of the closure; returns the loss before the step."""

        loss, x, y = self._operator_batch(closure, inputs, targets)
        group0 = self.param_groups[0]  # the step options are the same in every group (checked)
        with warnings.catch_warnings():  # eval mode + batch BN statistics is intended here
            warnings.filterwarnings("ignore", message="the model is in training mode")
            op = GGNOperator(self.model, self.loss_fn, (x, y), params=list(self._names),
                             bn_mode="batch")
        gd = op.unflatten(op.gradient)
        g = self._flat([gd[n] for n in self._names])
        self._check_finite(g, "gradient")
        st = self._state0()
        lam = lam_used = float(st["damping"]) if "damping" in st else float(group0["damping"])

        def G(v: torch.Tensor) -> torch.Tensor:
            out = op.unflatten(op.matvec(op.flatten(dict(zip(self._names, self._split(v))))))
            return self._flat([out[n] for n in self._names])

        prev = self._prev_direction()
        x0 = prev * group0["cg_decay"] if prev is not None else None
        p, kept, rec = cg_with_iterates(lambda v: G(v) + lam * v, -g, x0, group0["cg_tol"],
                                        group0["cg_max_iter"])
        f0 = self._loss_at(None, x, y)
        # CG iterate backtracking (Martens 2010, §4.6)
        best_i = len(kept) - 1
        best_f = self._loss_at(kept[best_i][1], x, y)
        for j in range(len(kept) - 2, -1, -1):
            fj = self._loss_at(kept[j][1], x, y)
            if fj < best_f:
                best_i, best_f = j, fj
            else:
                break
        p = kept[best_i][1]
        self._check_finite(p, "CG solution", rec)
        if "damping" not in st:
            st["damping"] = torch.tensor(float(group0["damping"]), dtype=self._params[0].dtype)
            st["step"] = torch.zeros((), dtype=torch.int64)
        st["step"] += 1
        self._store_direction(p)
        # Levenberg-Marquardt rule on the reduction ratio of the undamped model
        q0 = float(g @ p) + 0.5 * float(p @ G(p))
        rho = (best_f - f0) / q0 if q0 < 0 else float("-inf")
        if rho < _RHO_LOW:
            lam *= _DAMPING_GROW
        elif rho > _RHO_HIGH:
            lam *= _DAMPING_SHRINK
        st["damping"].fill_(lam)
        # backtracking line search (Armijo), per-group lr as the first trial
        scaled = p * self._group_scale("lr")
        slope = float(g @ scaled)
        alpha, accepted = 1.0, False
        for _ in range(_MAX_LINE_SEARCH_TRIALS):
            if slope < 0 and self._loss_at(alpha * scaled, x, y) <= f0 + _ARMIJO_C * alpha * slope:
                accepted = True
                break
            alpha *= _BACKTRACK_FACTOR
        if accepted:
            with torch.no_grad():
                for q, d in zip(self._params, self._split(alpha * scaled)):
                    q.add_(d)
        rec.damping, rec.rho = lam_used, rho
        rec.alpha = alpha if accepted else 0.0
        self.last_solve = rec
        return loss
