"""Small helpers shared by the optimizers of :mod:`hesse.optim`: the non-finite guard every ``step`` runs before it changes anything, hooks that do not
keep their optimizer alive, and the batch recorder used by the optimizers that need the model's
outputs. The argument checks at the public boundary live in :mod:`hesse._validation` (re-exported
here for the optimizers)."""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._validation import check_betas, check_hyper, check_int, check_model, model_param_groups

__all__ = ["check_betas", "check_hyper", "check_int", "check_model", "model_param_groups"]


def param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def uniform_option(param_groups: list[dict], key: str, cls_name: str, why: str) -> Any:
    """The value of ``key`` shared by all param groups; a ``ValueError`` when groups differ.

    For options that belong to the whole step rather than to a parameter (one CG solve, one
    adaptive damping, one random draw), as torch.optim.LBFGS refuses per-group options instead of
    reading the first group and ignoring the rest."""
    values = [g[key] for g in param_groups]
    for i, v in enumerate(values[1:], start=1):
        if v != values[0]:
            raise ValueError(
                f"{cls_name} doesn't support per-group {key} ({why}): param group 0 has "
                f"{key}={values[0]!r} and group {i} has {key}={v!r}. Give {key} once, to "
                f"{cls_name}(..., {key}=...), and leave it out of the param-group dicts.")
    return values[0]


# ---------------------------------------------------------------------- hooks
def weak_hook(method: Callable) -> Callable:
    """A hook function calling the bound ``method`` through a ``weakref.WeakMethod``: the module
    holding the hook does not keep the method's object (an optimizer) alive, and once that object
    is gone the hook does nothing."""
    ref = weakref.WeakMethod(method)

    def hook(*args: Any) -> Any:
        target = ref()
        return None if target is None else target(*args)

    return hook


def _remove_handles(handles: list) -> None:
    for h in handles:
        h.remove()
    handles.clear()


class HookSet:
    """Hook handles on a user's modules, removed by :meth:`remove` or, at the latest, when
    ``owner`` is garbage-collected (``weakref.finalize``): an optimizer deleted by its user leaves
    no hook behind on the model."""

    def __init__(self, owner: Any):
        self._handles: list = []
        self._finalizer = weakref.finalize(owner, _remove_handles, self._handles)

    def add(self, handle: Any) -> None:
        self._handles.append(handle)

    def remove(self) -> None:
        self._finalizer()

    def __len__(self) -> int:
        return len(self._handles)


# ---------------------------------------------------------------------- non-finite guard
def _check_finite_loss(loss: Any, cls_name: str) -> None:
    value = float(loss.detach()) if isinstance(loss, torch.Tensor) and loss.numel() == 1 else (
        float(loss) if isinstance(loss, numbers.Real) else None)
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{cls_name}.step: the closure returned a non-finite loss ({value}); "
                         f"nothing was changed. Lower lr, raise damping or check the batch.")


def check_finite_gradients(params: Any, cls_name: str, names: dict[int, str] | None = None) -> None:
    """``ValueError`` if a gradient of ``params`` has a NaN or infinite entry, before the step
    changes any parameter or state (a single non-finite entry would otherwise spread through a
    shared norm, factor or momentum to every parameter)."""
    with_grad = [(i, p) for i, p in enumerate(params) if p.grad is not None]
    if not with_grad:
        return
    device = with_grad[0][1].grad.device
    flags = torch.stack([torch.isfinite(p.grad.detach()).all().to(device) for _, p in with_grad])
    if bool(flags.all()):  # one device synchronisation for all parameters
        return
    i, p = with_grad[int((~flags).nonzero()[0])]
    label = repr(names[id(p)]) if names and id(p) in names else f"#{i} (shape {tuple(p.shape)})"
    raise ValueError(
        f"{cls_name}.step: the gradient of parameter {label} has non-finite entries; "
        f"nothing was changed. Lower lr, clip the gradients or check the batch.")


def run_closure(closure: Callable | None, cls_name: str, params: Any,
                names: dict[int, str] | None = None) -> Any:
    """Run an optional closure (with gradients enabled), then refuse a non-finite loss or
    gradient of ``params``; returns the closure's loss (``None`` without a closure)."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
        _check_finite_loss(loss, cls_name)
    check_finite_gradients(params, cls_name, names)
    return loss


class BatchRecorder:
    """Records the last batch a closure ran through ``model`` and ``loss_fn``.

    A forward pre-hook on ``model`` keeps its positional inputs; a forward hook on ``loss_fn`` (an
    ``nn.Module``) keeps its target. Only passes with gradients enabled are recorded, so
    evaluation under ``torch.no_grad()`` does not replace the training batch.

    The hooks hold the recorder weakly and are removed when ``owner`` (the optimizer) is
    collected or :meth:`remove` is called.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, owner: Any):
        self.inputs: torch.Tensor | tuple[Any, ...] | None = None
        self.targets: Any = None
        self.hooks = HookSet(owner)
        self.hooks.add(model.register_forward_pre_hook(weak_hook(self._record_inputs)))
        if isinstance(loss_fn, nn.Module):
            self.hooks.add(loss_fn.register_forward_hook(weak_hook(self._record_targets)))

    def _record_inputs(self, module, args):
        if torch.is_grad_enabled() and args:
            self.inputs = args[0].detach() if len(args) == 1 else tuple(
                a.detach() if isinstance(a, torch.Tensor) else a for a in args)

    def _record_targets(self, module, args, output):
        if torch.is_grad_enabled() and len(args) >= 2:
            t = args[1]
            self.targets = t.detach() if isinstance(t, torch.Tensor) else t

    def batch(self, inputs: Any, targets: Any, cls_name: str) -> tuple[Any, Any]:
        x = self.inputs if inputs is None else inputs
        y = self.targets if targets is None else targets
        if x is None or y is None:
            raise ValueError(
                f"{cls_name}.step could not find the batch: call step(closure) with a closure that "
                f"runs model(inputs) and the loss_fn given to {cls_name} (an nn.Module), or pass "
                f"step(closure, inputs=..., targets=...).")
        return x, y

    def remove(self) -> None:
        self.hooks.remove()


def closure_loss(closure: Callable | None, cls_name: str, params: Any = (),
                 names: dict[int, str] | None = None) -> torch.Tensor:
    """Run the required closure; refuse a non-scalar or non-finite loss or a non-finite gradient
    of ``params``."""
    if closure is None or not callable(closure):
        raise ValueError(
            f"{cls_name}.step needs a closure (zero the gradients, compute the loss, call "
            f"backward(), return the loss), as for torch.optim.LBFGS; got {closure!r}.")
    with torch.enable_grad():
        loss = closure()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"{cls_name}.step: the closure must return the loss as a scalar tensor, "
                         f"got {type(loss).__name__}.")
    _check_finite_loss(loss, cls_name)
    check_finite_gradients(params, cls_name, names)
    return loss
