"""The loss of a model over a data set, as a function of a chosen subset of its parameters.

"Hessian of which function" is made explicit here:

    L(θ) = (1/N) Σ_i ℓ(model(x_i; θ), y_i)

the mean over all N samples of the data set, whatever the batching: a batch of ``n_b`` samples
whose ``loss_fn`` uses ``reduction="mean"`` enters with weight ``n_b / N``; with
``reduction="sum"`` it enters with weight ``1 / N``. The parameters θ are copied at construction
(the operator is the curvature *at that point*; later training steps do not change it).

Modes. By default the model is evaluated in eval mode (dropout off, BatchNorm with its running
statistics), its modes restored afterwards, and a one-time warning says so if the model was
training. ``bn_mode="batch"`` evaluates BatchNorm layers with the statistics of each batch (their
running statistics are not updated). ``eval_mode=False`` keeps the model's own modes (then a
dropout model's loss is random; ``check_deterministic=True`` refuses it).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from ._data import DataSource, batch_size, to_device

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class HesseModeWarning(UserWarning):
    """The model is evaluated in a different mode than it was in (said once per operator)."""


class AttentionFallbackWarning(UserWarning):
    """A fused attention kernel lacked a derivative rule; the math kernel is used instead."""


def _unwrap(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def select_parameters(model: nn.Module, params: Any) -> list[tuple[str, nn.Parameter]]:
    """Parameters to differentiate: all trainable ones (``None``), a list of names, or a predicate
    ``(name, parameter) -> bool``. Frozen parameters (``requires_grad=False``) are excluded unless
    named explicitly."""
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
    elif callable(params):
        chosen = [(n, p) for n, p in named if params(n, p)]
    elif isinstance(params, str):
        raise TypeError("params must be a list of names or a predicate, not one string; "
                        f"did you mean params=[{params!r}]?")
    else:
        names = list(params)
        lookup = dict(named)
        missing = [n for n in names if n not in lookup]
        if missing:
            raise ValueError(
                f"unknown parameter name(s) {missing}; the model has: "
                f"{', '.join(n for n, _ in named[:12])}{' ...' if len(named) > 12 else ''}"
            )
        chosen = [(n, lookup[n]) for n in names]
    if not chosen:
        raise ValueError(
            "the model has no trainable parameters to differentiate"
            + (" (all are frozen: requires_grad=False)" if named else "")
            + "; unfreeze some or select them with params=[names]."
        )
    return chosen


class ModelLoss:
    """``L(θ) = (1/N) Σ_i ℓ(model(x_i; θ), y_i)`` over a data set, at a fixed point θ."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        params: Any = None,
        bn_mode: str = "eval",
        eval_mode: bool = True,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs, targets) -> scalar, got "
                            f"{type(loss_fn).__name__}.")
        if bn_mode not in ("eval", "batch"):
            raise ValueError(f"bn_mode must be 'eval' (running statistics) or 'batch' (statistics "
                             f"of each batch); got {bn_mode!r}.")
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction not in ("mean", "sum"):
            raise ValueError(
                f"loss_fn has reduction={reduction!r}; hesse needs a scalar loss per batch: "
                f"use reduction='mean' (or 'sum')."
            )
        self.model = _unwrap(model)
        self.loss_fn = loss_fn
        self.reduction = reduction
        self.bn_mode = bn_mode
        self.eval_mode = eval_mode
        chosen = select_parameters(self.model, params)
        self.names = [n for n, _ in chosen]
        first = chosen[0][1]
        self.device, self.dtype = first.device, first.dtype
        for n, p in chosen:
            if not p.is_floating_point():
                raise TypeError(f"parameter {n} has dtype {p.dtype}; expected floating point.")
        # the point θ: our own copies, so later training steps leave this operator unchanged
        self.params = tuple(p.detach().clone() for _, p in chosen)
        chosen_names = set(self.names)
        self.constants = {
            n: p.detach() for n, p in self.model.named_parameters() if n not in chosen_names
        }
        self.buffers = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.n = sum(self.numels)
        self.data = DataSource(data)
        self.math_attention = False
        self._warned_mode = False
        self.num_samples: int | None = None

    # ------------------------------------------------------------------ parameter vectors
    def flatten(self, tensors) -> torch.Tensor:
        """Concatenate per-parameter tensors into one vector (or a block, for leading dim k)."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def flatten_block(self, tensors, k: int) -> torch.Tensor:
        """Per-parameter tensors of shape (k, *p.shape) -> (k, n), rows contiguous."""
        return torch.cat([t.reshape(k, -1) for t in tensors], dim=1)

    def unflatten(self, v: torch.Tensor) -> list[torch.Tensor]:
        return [c.reshape(s) for c, s in zip(torch.split(v, self.numels), self.shapes)]

    def unflatten_block(self, V: torch.Tensor) -> list[torch.Tensor]:
        """(n, k) -> per-parameter tensors of shape (k, *p.shape).

        The block is transposed once into a contiguous (k, n) copy, so that each column is a
        contiguous parameter-shaped tensor (strided cotangents make the backward's matmuls slow).
        """
        k = V.shape[1]
        VT = V.T.contiguous()
        return [c.reshape(k, *s) for c, s in zip(torch.split(VT, self.numels, dim=1), self.shapes)]

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def mode(self) -> Iterator[None]:
        """Evaluate in the requested modes; restore every module's own mode afterwards."""
        saved = [(m, m.training) for m in self.model.modules()]
        tracking = [(m, m.track_running_stats) for m in self.model.modules()
                    if isinstance(m, _BN_TYPES)]
        try:
            if self.eval_mode:
                if not self._warned_mode and any(
                    m.training and isinstance(m, _DROPOUT_TYPES + _BN_TYPES) for m, _ in saved
                ):
                    warnings.warn(
                        "the model is in training mode; hesse evaluates its loss in eval mode "
                        "(dropout off, BatchNorm "
                        + ("with batch statistics" if self.bn_mode == "batch" else
                           "with running statistics")
                        + ") and restores the mode afterwards. Pass eval_mode=False to keep the "
                        "model's modes.",
                        HesseModeWarning,
                        stacklevel=4,
                    )
                    self._warned_mode = True
                self.model.eval()
            if self.bn_mode == "batch":
                # batch statistics without touching the running ones (also keeps torch.func
                # transforms free of in-place buffer updates)
                for m, _ in tracking:
                    m.train()
                    m.track_running_stats = False
            with self._attention_context():
                yield
        finally:
            for m, was_training in saved:
                m.training = was_training
            for m, was_tracking in tracking:
                m.track_running_stats = was_tracking

    def _attention_context(self):
        if not self.math_attention:
            return contextlib.nullcontext()
        return math_attention()

    def enable_math_attention(self, err: BaseException) -> None:
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        warnings.warn(
            f"a fused attention kernel has no second-derivative rule ({first}); hesse switches "
            "this operator to the math attention kernel, which gives the same values.",
            AttentionFallbackWarning,
            stacklevel=4,
        )
        self.math_attention = True

    def forward(self, params: tuple[torch.Tensor, ...], inputs: Any) -> torch.Tensor:
        state = {**self.constants, **self.buffers, **dict(zip(self.names, params))}
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        return functional_call(self.model, state, args)

    def batch_loss(self, params, inputs, targets) -> torch.Tensor:
        return self.loss_fn(self.forward(params, inputs), targets)

    def batches(self) -> Iterator[tuple[int, Any, Any, int]]:
        """(index, inputs, targets, batch size) on the operator's device."""
        for i, x, y in self.data:
            yield (i, to_device(x, self.device, self.dtype), to_device(y, self.device, self.dtype),
                   batch_size(x, y))

    def weight(self, size: int) -> float:
        """Weight of a batch of ``size`` samples in the mean loss over the data set."""
        assert self.num_samples is not None
        return (size if self.reduction == "mean" else 1.0) / self.num_samples


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Run attention through differentiable composite code: the math SDPA kernel, and no fused
    ``nn.MultiheadAttention``/``TransformerEncoderLayer`` fast path (restored afterwards)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def is_derivative_rule_failure(err: BaseException) -> bool:
    """True for the errors PyTorch raises when a kernel lacks a (double-)derivative rule."""
    text = str(err).lower()
    return isinstance(err, (RuntimeError, NotImplementedError)) and (
        "not implemented" in text
        or "derivative for" in text
        or "does not support" in text
        or "forward ad" in text
        or "double backward" in text
    )
