"""Evaluating a model's loss over a data set, as a function of a chosen subset of its parameters.

"Hessian of which function" is made explicit here:

    L(θ) = (1/N) Σ_i ℓ(model(x_i; θ), y_i)

the mean over all N samples of the data set, whatever the batching: a batch of ``n_b`` samples
whose ``loss_fn`` uses ``reduction="mean"`` enters with weight ``n_b / N``; with
``reduction="sum"`` it enters with weight ``1 / N`` (``KLDivLoss``'s ``"batchmean"``, the sum over
the batch divided by its size, as a mean). A ``loss_fn`` that declares no ``reduction`` (a plain
function, a ``functools.partial``) is measured on the first batch of two or more samples: its loss
against the losses of the batch's two halves tells a sum from a mean (any mean lies between the
halves' losses, a sum is theirs added; :func:`measure_reduction`);
a loss that is neither is refused, and ``loss_fn.reduction = "sum"`` declares it. The parameters θ are copied at construction
(the operator is the curvature *at that point*; later training steps do not change it).

Two ways to say what the loss is:

* ``loss_fn(outputs, targets)`` on batches ``(inputs, targets)``, with the outputs given by
  ``forward(model, inputs)`` (default ``model(inputs)``, ``model(*inputs)`` for a tuple,
  ``model(**inputs)`` for a mapping whose keys ``model.forward`` accepts as keywords). A Hugging Face model needs one line:
  ``forward=lambda m, batch: m(**batch).logits``.
* ``batch_loss(model, batch)``: the scalar mean loss of a batch of any form, for models that
  compute their own loss (``lambda m, b: m(**b).loss``). Batches of unequal size are weighted by
  ``batch_size(batch)`` (default: the leading dimension of the first tensor in the batch):
  ``L = Σ_b n_b L_b / Σ_b n_b``. The GGN and Fisher need the outputs and cannot use it.

In both, ``model`` is the user's module evaluated at the operator's point θ (through
``torch.func.functional_call``: the module itself is never modified), so attributes and
submodules (``m.config``, ``m.encoder(x)``) may be used.

Precision. ``dtype`` is the floating type the loss and its derivatives are computed in: the point
θ, the other parameters and buffers and the floating tensors of each batch are cast to it (e.g.
``torch.float32`` for a ``bfloat16`` model); the default is the parameters' dtype.

Frozen rows. ``nn.Embedding(padding_idx=i)`` uses row ``i`` in the forward pass but torch
zeroes its gradient, so the derivative autograd computes is not the derivative of one function
there (the Hessian from a double backward is not symmetric in those entries). The padding row
of every such embedding among the selected parameters is treated as frozen: ``frozen_mask``
has zeros on its entries and the operators' products have zero rows and columns there.

Modes. By default the model is evaluated in eval mode (dropout off, BatchNorm with its running
statistics), its modes restored afterwards, and a one-time warning says so if the model was
training. ``bn_mode="batch"`` evaluates BatchNorm layers with the statistics of each batch (their
running statistics are not updated). ``eval_mode=False`` keeps the model's own modes (then a
dropout model's loss is random; ``check_deterministic=True`` refuses it).
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import torch
from torch import nn
from torch.func import functional_call

from .data import DataSource, batch_size, first_batch_size, to_device

T = TypeVar("T")

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)
_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class HesseModeWarning(UserWarning):
    """The model is evaluated in a different mode than it was in (said once per operator)."""


class AttentionFallbackWarning(UserWarning):
    """A fused attention kernel lacked a derivative rule; the math kernel is used instead."""


def disconnected_message(loss_name: str, batch: int) -> str:
    """The error for a loss that has no autograd graph back to the parameters."""
    return (f"{loss_name} on batch {batch} does not depend on the parameters (its result has no "
            f"autograd graph): compute the loss (and forward) with torch operations on the "
            f"model's outputs, without .item(), float(), .detach(), torch.tensor(...) or an "
            f"integer result.")


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



class _Evaluate(nn.Module):
    """``fn(model, batch)`` as a module with ``model`` as its child, so that one
    ``functional_call`` on it evaluates the user's callable at the point θ (every parameter and
    buffer of the model swapped for the operator's copies while ``fn`` runs)."""

    def __init__(self, model: nn.Module, fn: Callable[[nn.Module, Any], Any]):
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, batch: Any) -> Any:
        return self.fn(self.model, batch)


def default_forward(model: nn.Module, inputs: Any) -> Any:
    """``model(**inputs)`` for a mapping whose keys the model's ``forward`` takes as keyword
    arguments (a Hugging Face batch), ``model(inputs)`` for a mapping it takes whole,
    ``model(*inputs)`` for a tuple or list, else ``model(inputs)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs) if _takes_keywords(model, inputs) else model(inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _takes_keywords(model: nn.Module, inputs: Mapping) -> bool:
    try:
        inspect.signature(model.forward).bind(**{str(k): None for k in inputs})
    except (TypeError, ValueError):
        return False
    return True


_FORWARD_HINT = ("pass forward=(model, inputs) -> outputs tensor, e.g. for a Hugging Face model "
                 "forward=lambda m, batch: m(**batch).logits")


class ModelLoss:
    """``L(θ) = (1/N) Σ_i ℓ(model(x_i; θ), y_i)`` over a data set, at a fixed point θ.

    See the module docstring for ``forward``, ``batch_loss``, ``batch_size`` and ``dtype``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable | None,
        data: Any,
        params: Any = None,
        bn_mode: str = "eval",
        eval_mode: bool = True,
        *,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        batch_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
        batch_size: Callable[[Any], int] | None = None,
        dtype: torch.dtype | None = None,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if loss_fn is None and batch_loss is None:
            raise TypeError("pass loss_fn=(outputs, targets) -> scalar, or batch_loss=(model, batch) "
                            "-> scalar mean loss for models that compute their own loss.")
        if loss_fn is not None and batch_loss is not None:
            raise ValueError("pass one of loss_fn and batch_loss, not both: batch_loss(model, batch) "
                             "already gives the loss of a batch.")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs, targets) -> scalar, got "
                            f"{type(loss_fn).__name__}.")
        if batch_loss is not None and not callable(batch_loss):
            raise TypeError(f"batch_loss must be callable (model, batch) -> scalar mean loss, got "
                            f"{type(batch_loss).__name__}.")
        if forward is not None and not callable(forward):
            raise TypeError(f"forward must be callable (model, inputs) -> outputs, got "
                            f"{type(forward).__name__}.")
        if forward is not None and batch_loss is not None:
            raise ValueError("forward is not used with batch_loss (batch_loss(model, batch) runs the "
                             "model itself); pass forward with loss_fn, or batch_loss alone.")
        if batch_size is not None and not callable(batch_size):
            raise TypeError(f"batch_size must be callable batch -> int, got {type(batch_size).__name__}.")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point
                                  or dtype.is_complex):
            raise TypeError(f"dtype must be a real floating torch.dtype (e.g. torch.float32), got "
                            f"{dtype!r}.")
        if bn_mode not in ("eval", "batch"):
            raise ValueError(f"bn_mode must be 'eval' (running statistics) or 'batch' (statistics "
                             f"of each batch); got {bn_mode!r}.")
        # None: loss_fn declares no reduction; measured on the first batch (see measure_reduction)
        reduction = "mean" if loss_fn is None else declared_reduction(loss_fn)
        self.model = _unwrap(model)
        self.loss_fn = loss_fn
        self.user_batch_loss = batch_loss
        self.user_forward = forward
        self.user_batch_size = batch_size
        self.loss_name = "loss_fn" if loss_fn is not None else "batch_loss"
        self.reduction = reduction
        self.bn_mode = bn_mode
        self.eval_mode = eval_mode
        chosen = select_parameters(self.model, params)
        self.names = [n for n, _ in chosen]
        first = chosen[0][1]
        for n, p in chosen:
            if not p.is_floating_point():
                raise TypeError(f"parameter {n} has dtype {p.dtype}; expected floating point.")
        self.device = first.device
        self.dtype = first.dtype if dtype is None else dtype

        def cast(t: torch.Tensor) -> torch.Tensor:
            t = t.detach()
            return t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t

        # the point θ: our own copies, so later training steps leave this operator unchanged
        self.params = tuple(cast(p).clone() for _, p in chosen)
        chosen_names = set(self.names)
        # the other parameters are copied too: they fix the function whose curvature this is
        self.constants = {
            n: cast(p).clone() for n, p in self.model.named_parameters() if n not in chosen_names
        }
        self.buffers = {n: cast(b).clone() for n, b in self.model.named_buffers()}
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.n = sum(self.numels)
        self.frozen_mask = _padding_mask(self.model, chosen, self.numels, self.dtype, self.device)
        self.data = DataSource(data, pairs=loss_fn is not None)
        self._forward_module = _Evaluate(self.model, forward or default_forward)
        self._loss_module = None if batch_loss is None else _Evaluate(self.model, batch_loss)
        self.math_attention = False
        self._warned_mode = False
        self.num_samples: int | None = None
        self.undecided = False  # an undeclared reduction a batch of > 1 samples could not tell

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
                        "model's modes (the hesse command line: --train-mode).",
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
            for module, was_training in saved:
                module.training = was_training
            for bn, was_tracking in tracking:
                bn.track_running_stats = was_tracking

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

    def with_attention_fallback(self, fn: Callable[[], T],
                                on_switch: Callable[[], None] | None = None) -> T:
        """Run ``fn``; if a fused attention kernel lacks a (double-)derivative rule, switch this
        evaluation to the math kernel (same values, composite derivatives), call ``on_switch``
        (e.g. to drop graphs built with the fused kernel) and run ``fn`` again."""
        try:
            return fn()
        except (RuntimeError, NotImplementedError) as err:
            if self.math_attention or not is_derivative_rule_failure(err):
                raise
            self.enable_math_attention(err)
            if on_switch is not None:
                on_switch()
            return fn()

    def _state(self, params: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        state = {**self.constants, **self.buffers, **dict(zip(self.names, params))}
        return {"model." + k: v for k, v in state.items()}

    def forward(self, params: tuple[torch.Tensor, ...], inputs: Any) -> torch.Tensor:
        """The outputs ``forward(model, inputs)`` at ``params`` (a tensor)."""
        if self._loss_module is not None:
            raise ValueError("this operator needs the model's outputs and a loss_fn(outputs, "
                             "targets): batch_loss gives the loss only. Pass loss_fn (and "
                             "forward=(model, inputs) -> outputs) instead.")
        out = functional_call(self._forward_module, self._state(params), (inputs,))
        if not isinstance(out, torch.Tensor):
            what = type(out).__name__
            if self.user_forward is None:
                has_logits = hasattr(out, "logits")
                raise ValueError(
                    f"the model returned a {what}, not a tensor of outputs"
                    + (" (it has .logits)" if has_logits else "")
                    + f"; {_FORWARD_HINT}.")
            raise ValueError(f"forward returned a {what}; it must return the outputs as one tensor "
                             f"(the first argument of loss_fn).")
        return out

    def batch_loss(self, params, inputs, targets) -> torch.Tensor:
        """The loss of one batch at ``params``: ``loss_fn(forward(inputs), targets)``, or
        ``batch_loss(model, batch)`` (then ``inputs`` is the batch and ``targets`` is ``None``)."""
        if self._loss_module is not None:
            return functional_call(self._loss_module, self._state(params), (inputs,))
        assert self.loss_fn is not None  # one of loss_fn / batch_loss, checked in __init__
        outputs = self.forward(params, inputs)
        if self.reduction is None:
            self.observe_reduction(outputs, targets, self.size_of(inputs, targets))
        return self.loss_fn(outputs, targets)

    def observe_reduction(self, outputs: torch.Tensor, targets: Any, size: int) -> None:
        """Decide an undeclared reduction on this batch, when the batch can tell (see
        :func:`measure_reduction`)."""
        if self.reduction is None and self.loss_fn is not None:
            self.reduction = measure_reduction(self.loss_fn, outputs, targets, size)
            if self.reduction is None and size > 1:
                self.undecided = True

    def settle_reduction(self) -> None:
        """After the first pass: an undeclared reduction no batch could decide is ``"mean"``
        when every batch had one sample (the two weightings agree), else refused."""
        if self.reduction is not None:
            return
        if self.undecided:
            raise ValueError(_REDUCTION_HINT.format(
                why="the loss is zero on every batch, where the sum and the mean agree"))
        self.reduction = "mean"

    def size_of(self, inputs: Any, targets: Any) -> int:
        """Number of samples in a batch (its weight in the mean loss)."""
        if self.user_batch_size is not None:
            batch = inputs if self._loss_module is not None else (inputs, targets)
            size = self.user_batch_size(batch)
            if isinstance(size, torch.Tensor) and size.numel() == 1:
                size = int(size)
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ValueError(f"batch_size returned {size!r}; it must return the number of "
                                 f"samples in the batch, an integer >= 0.")
            return size
        if self._loss_module is not None:
            return first_batch_size(inputs)
        return batch_size(inputs, targets)

    def batches(self) -> Iterator[tuple[int, Any, Any, int]]:
        """(index, inputs, targets, batch size) on the operator's device, floats in its dtype.
        With ``batch_loss`` the inputs are the whole batch and the targets ``None``."""
        for i, x, y in self.data:
            yield (i, to_device(x, self.device, self.dtype), to_device(y, self.device, self.dtype),
                   self.size_of(x, y))

    def weight(self, size: int) -> float:
        """Weight of a batch of ``size`` samples in the mean loss over the data set."""
        assert self.num_samples is not None
        return (1.0 if self.reduction == "sum" else size) / self.num_samples


# a loss's ``reduction`` as the weighting of its batches: KLDivLoss's "batchmean" (the sum over
# the batch divided by its size) weighs a batch as a mean does
_REDUCTIONS = {"mean": "mean", "sum": "sum", "batchmean": "mean"}
_REDUCTION_HINT = ("cannot tell whether loss_fn sums or averages over the samples of a batch "
                   "({why}); declare it: loss_fn.reduction = 'mean' (or 'sum'), or pass an "
                   "nn loss module.")


def declared_reduction(loss_fn: Any) -> str | None:
    """``"mean"`` or ``"sum"`` from ``loss_fn.reduction``; ``None`` when the loss declares none
    (a plain function, a ``functools.partial``): then :func:`measure_reduction` decides."""
    if not hasattr(loss_fn, "reduction"):
        return None
    reduction = loss_fn.reduction
    if reduction not in _REDUCTIONS:
        raise ValueError(
            f"loss_fn has reduction={reduction!r}; hesse needs a scalar loss per batch: "
            f"use reduction='mean' (or 'sum', or 'batchmean' for KLDivLoss).")
    return _REDUCTIONS[reduction]


def measure_reduction(loss_fn: Callable, outputs: Any, targets: Any, size: int) -> str | None:
    """Whether ``loss_fn`` sums or averages over the samples, measured on one batch of ``size``
    samples, from ``L``, ``L_a``, ``L_b``: the losses of the batch and of its two halves.

    A sum has ``L = L_a + L_b``. A mean of any weighting (over samples, or over the tokens that a
    mask leaves, in unequal numbers per half) is a convex combination of the halves' means:
    ``min(L_a, L_b) <= L <= max(L_a, L_b)``. ``None`` when the batch cannot tell (one sample, or
    both hold, as with a zero loss on a half); a batch that matches neither, or cannot be halved
    along its first dimension, is refused with the fix (declare ``loss_fn.reduction``)."""
    if size < 2:
        return None
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)
            and outputs.ndim >= 1 and targets.ndim >= 1
            and outputs.shape[0] == size and targets.shape[0] == size):
        raise ValueError(_REDUCTION_HINT.format(
            why="its outputs and targets do not have the batch's samples on their first dimension, "
                "so the batch cannot be halved to measure it"))
    h = size // 2
    z = outputs.detach()
    with torch.no_grad():
        values = [loss_fn(z, targets), loss_fn(z[:h], targets[:h]), loss_fn(z[h:], targets[h:])]
    if not all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in values):
        return None  # not a scalar: refused with its own message by the caller
    full, first, second = (float(v) for v in values)
    # rounding of a few sums in the loss's dtype, relative to the losses' size
    tol = 1e3 * torch.finfo(z.dtype if z.is_floating_point() else torch.float32).eps * (
        abs(full) + abs(first) + abs(second))
    is_sum = abs(full - (first + second)) <= tol
    is_mean = min(first, second) - tol <= full <= max(first, second) + tol
    if is_sum != is_mean:
        return "sum" if is_sum else "mean"
    if is_sum:
        return None
    raise ValueError(_REDUCTION_HINT.format(
        why=f"on a batch of {size} the loss {full:.6g} is neither the sum ({first + second:.6g}) "
            f"of its halves' losses nor between them, as a mean is"))


def _padding_mask(model: nn.Module, chosen: list[tuple[str, nn.Parameter]], numels: list[int],
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """Ones over the parameter vector, zeros on the padding row of every ``nn.Embedding`` /
    ``nn.EmbeddingBag`` with ``padding_idx`` whose weight is selected; ``None`` if there is none."""
    index = {id(p): j for j, (_, p) in enumerate(chosen)}
    offsets = [0]
    for m in numels[:-1]:
        offsets.append(offsets[-1] + m)
    mask = None
    for module in model.modules():
        if not isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            continue
        row = getattr(module, "padding_idx", None)
        j = index.get(id(module.weight))
        if row is None or j is None:
            continue
        width = module.weight.shape[1]
        if mask is None:
            mask = torch.ones(sum(numels), dtype=dtype, device=device)
        start = offsets[j] + int(row) * width
        mask[start:start + width] = 0
    return mask


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
