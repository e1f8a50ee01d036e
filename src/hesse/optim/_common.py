"""Small helpers shared by the optimizers of :mod:`hesse.optim`: argument checks at the public
boundary, the batch recorder used by the optimizers that need the model's outputs, and a
conjugate-gradient loop with recorded iterates."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def check_hyper(value: Any, name: str, *, allow_zero: bool = False, upper: float | None = None,
                upper_open: bool = False) -> float:
    """``value`` as a float >= 0 (> 0 unless ``allow_zero``), optionally <= / < ``upper``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} ({value!r}).")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}.")
    if upper is not None and (v > upper or (upper_open and v == upper)):
        rel = "<" if upper_open else "<="
        raise ValueError(f"{name} must be {rel} {upper}, got {value!r}.")
    return v


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_model(model: Any, cls_name: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"{cls_name} takes the model first (it needs the module structure), got "
            f"{type(model).__name__}. Use {cls_name}(model, lr=...), not "
            f"{cls_name}(model.parameters(), ...).")
    return model


def model_param_groups(model: nn.Module, params: Any) -> list:
    """The parameters an optimizer over ``model`` works on: ``params`` (an iterable of tensors or of
    param-group dicts, all of them parameters of ``model``) or all trainable parameters."""
    if params is None:
        return [p for p in model.parameters() if p.requires_grad]
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of param-group dicts, got a "
                        "single tensor; wrap it in a list.")
    groups = list(params)
    ids = {id(p) for p in model.parameters()}
    for g in groups:
        ps = g["params"] if isinstance(g, dict) else [g]
        ps = [ps] if isinstance(ps, torch.Tensor) else list(ps)
        for p in ps:
            if id(p) not in ids:
                raise ValueError("params contains a tensor that is not a parameter of model; "
                                 "pass model's own parameters (or param groups of them).")
    return groups


def param_names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


class BatchRecorder:
    """Records the last batch a closure ran through ``model`` and ``loss_fn``.

    A forward pre-hook on ``model`` keeps its positional inputs; a forward hook on ``loss_fn`` (an
    ``nn.Module``) keeps its target. Only passes with gradients enabled are recorded, so
    evaluation under ``torch.no_grad()`` does not replace the training batch.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable):
        self.inputs: torch.Tensor | None = None
        self.targets: Any = None
        self._handles = [model.register_forward_pre_hook(self._record_inputs)]
        if isinstance(loss_fn, nn.Module):
            self._handles.append(loss_fn.register_forward_hook(self._record_targets))

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
        for h in self._handles:
            h.remove()


def closure_loss(closure: Callable | None, cls_name: str) -> torch.Tensor:
    if closure is None or not callable(closure):
        raise ValueError(
            f"{cls_name}.step needs a closure (zero the gradients, compute the loss, call "
            f"backward(), return the loss), as for torch.optim.LBFGS; got {closure!r}.")
    with torch.enable_grad():
        loss = closure()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"{cls_name}.step: the closure must return the loss as a scalar tensor, "
                         f"got {type(loss).__name__}.")
    if not torch.isfinite(loss):
        raise ValueError(f"{cls_name}.step: the closure returned a non-finite loss ({float(loss)}); "
                         f"lower lr or raise damping.")
    return loss
