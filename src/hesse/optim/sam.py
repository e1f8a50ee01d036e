"""SAM: sharpness-aware minimization (Foret et al. 2021) and its adaptive variant ASAM (Kwon et
al. 2021), wrapped around any ``torch.optim`` base optimizer.

SAM minimizes ``max_{‖ε‖ ≤ ρ} L(θ + ε)`` with the first-order solution (Foret et al. 2021, eq. 2)

    ε̂ = ρ ∇L(θ) / ‖∇L(θ)‖₂,

then takes the base optimizer's step with the gradient ``∇L(θ + ε̂)`` at the original ``θ``.
ASAM (``adaptive=True``; Kwon et al. 2021, eq. 11 with ``T_θ = |θ|``, and Foret et al.'s public
code) uses ``ε̂ = ρ T² ∇L / ‖T ∇L‖₂`` so that the neighbourhood scales with the weights.
The norm is over all parameters of all groups; ``rho`` and ``adaptive`` may differ per group.

Cost per step: two forward/backward passes (the closure is called twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._common import check_finite_gradients, check_hyper, closure_loss

__all__ = ["SAM"]

# Added to ‖∇L‖ in ε̂ = ρ ∇L / ‖∇L‖: keeps ε̂ finite (zero) at a point with zero gradient, as
# Foret et al.'s public code does; far below any gradient norm that moves the parameters.
_NORM_FLOOR = 1e-12


class SAM(torch.optim.Optimizer):
    """``SAM(params, base_optimizer_cls, rho=0.05, adaptive=False, **base_kwargs)``.

    ``base_optimizer_cls`` is a ``torch.optim.Optimizer`` class (``torch.optim.SGD``, ``Adam``...)
    built on the same param groups with ``base_kwargs``; it is available as ``.base_optimizer``
    and its state travels in ``SAM.state_dict()``. ``step(closure)`` requires the closure of
    ``torch.optim.LBFGS``; it returns the loss at the unperturbed ``θ``.
    """

    def __init__(self, params: Iterable, base_optimizer_cls: type, rho: float = 0.05,
                 adaptive: bool = False, **base_kwargs: Any):
        if not (isinstance(base_optimizer_cls, type)
                and issubclass(base_optimizer_cls, torch.optim.Optimizer)):
            raise TypeError("base_optimizer_cls must be a torch.optim.Optimizer class such as "
                            f"torch.optim.SGD (the class, not an instance); got {base_optimizer_cls!r}.")
        check_hyper(rho, "rho")
        if "lr" in base_kwargs:
            check_hyper(base_kwargs["lr"], "lr")
        super().__init__(params, dict(rho=rho, adaptive=bool(adaptive), **base_kwargs))
        for g in self.param_groups:
            check_hyper(g["rho"], "rho")
        self.base_optimizer = base_optimizer_cls(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    @torch.no_grad()
    def _restore(self) -> None:
        """Back to ``θ``, copied (``(θ + ε̂) − ε̂`` is not ``θ`` in floating point); the emptied
        state entries are dropped."""
        for p in self._params():
            if p in self.state and "theta" in self.state[p]:
                p.copy_(self.state[p].pop("theta"))
                if not self.state[p]:
                    del self.state[p]

    @torch.no_grad()
    def first_step(self) -> None:
        """Move to ``θ + ε̂`` using the current gradients (saved so ``second_step`` can return)."""
        check_finite_gradients(self._params(), "SAM")
        sq = None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                v = (p.abs() * p.grad) if group["adaptive"] else p.grad
                s = (v.double() ** 2).sum()
                sq = s if sq is None else sq + s
        if sq is None:
            raise ValueError("SAM.first_step: no parameter has a gradient; did the closure call "
                             "loss.backward()?")
        norm = float(sq.sqrt())
        for group in self.param_groups:
            scale = group["rho"] / (norm + _NORM_FLOOR)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e = p.grad * scale
                if group["adaptive"]:
                    e = e * p * p
                self.state[p]["theta"] = p.clone()
                p.add_(e)

    @torch.no_grad()
    def second_step(self) -> None:
        """Return to ``θ`` and take the base optimizer's step with the gradients at ``θ + ε̂``
        (refused, back at ``θ``, if those gradients are not finite)."""
        self._restore()
        check_finite_gradients(self._params(), "SAM")
        self.base_optimizer.step()

    def step(  # type: ignore[override]  # torch's stub says float; the loss is a tensor
            self, closure: Callable | None = None) -> torch.Tensor:
        """SAM step: closure at ``θ``, perturb, closure at ``θ + ε̂``, restore, base step. A
        non-finite loss or gradient at either point raises ``ValueError`` with the parameters back
        at ``θ`` and no state changed."""
        loss = closure_loss(closure, "SAM", self._params())
        self.first_step()
        try:
            closure_loss(closure, "SAM", self._params())
        except BaseException:
            self._restore()  # return to θ without stepping
            raise
        self.second_step()
        return loss

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["base_optimizer"] = self.base_optimizer.state_dict()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        base = state_dict.pop("base_optimizer", None)
        super().load_state_dict(state_dict)
        self.base_optimizer.param_groups = self.param_groups
        if base is not None:
            self.base_optimizer.load_state_dict(base)
            self.param_groups = self.base_optimizer.param_groups
