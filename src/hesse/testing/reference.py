"""Dense references computed independently of hesse's operators (with ``torch.func.hessian``)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call


def flat_loss_of_model(model: nn.Module, loss_fn: Callable, X, y,
                       names: list[str] | None = None) -> tuple[Callable, torch.Tensor]:
    """``(L, θ0)``: the full-batch loss as a function of the flat parameter vector, and θ0.

    The model is evaluated as it is (set its mode first). ``names`` selects parameters (default:
    all that require grad, in ``named_parameters`` order, the order hesse's operators use).
    """
    named = [(n, p) for n, p in model.named_parameters() if (n in names if names else p.requires_grad)]
    if names:
        order = {n: i for i, n in enumerate(names)}
        named.sort(key=lambda np_: order[np_[0]])
    shapes = [p.shape for _, p in named]
    keys = [n for n, _ in named]
    theta0 = torch.cat([p.detach().reshape(-1) for _, p in named])
    rest = {n: b.detach() for n, b in model.named_buffers()}
    rest.update({n: p.detach() for n, p in model.named_parameters() if n not in keys})

    def loss(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, [s.numel() for s in shapes])
        state = {**rest, **{k: t.reshape(s) for k, t, s in zip(keys, parts, shapes)}}
        return loss_fn(functional_call(model, state, (X,)), y)

    return loss, theta0


def dense_hessian_of_model(model: nn.Module, loss_fn: Callable, X, y,
                           names: list[str] | None = None) -> torch.Tensor:
    """The full-batch loss Hessian by ``torch.func.hessian`` (small models only)."""
    loss, theta0 = flat_loss_of_model(model, loss_fn, X, y, names)
    was = model.training
    model.eval()
    try:
        return torch.func.hessian(loss)(theta0)
    finally:
        model.train(was)
