"""Data and loss shared by the diagnostics (monitor checks, landscape slices, reports)."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from hesse.operators.data import DataSource, batch_size, first_batch_size
from hesse.operators.evaluation import (
    HesseModeWarning,
    declared_reduction,
    default_forward,
    disconnected_message,
    measure_reduction,
)


def read_once(data: Any) -> Any:
    """A one-shot iterator (e.g. a generator) read into a list; anything else unchanged.

    The data protocol allows generators, and the operators read one into a list themselves, but
    the diagnostics build several operators (and loss evaluations) over the same data: each would
    start from the iterator's current position, the second one from an exhausted iterator.
    """
    if isinstance(data, Iterator):
        return list(data)
    return data


@dataclass(frozen=True)
class LossSpec:
    """Which loss the diagnostics analyse, as the curvature operators take it.

    ``loss_fn(forward(model, inputs), targets)`` on ``(inputs, targets)`` batches (``forward``
    defaults to ``model(inputs)``, ``model(**inputs)`` for a mapping), or ``batch_loss(model,
    batch)`` for a model that computes its own loss, batches weighted by ``batch_size(batch)``.
    ``dtype`` is the precision curvature is computed in (the operators' ``dtype=``; training
    steps run in the model's own precision). ``eval_mode``: evaluate curvature and losses in eval
    mode (the operators' ``eval_mode=``; training steps run in the model's own mode). See
    :mod:`hesse.operators.evaluation`.
    """

    loss_fn: Callable | None = None
    forward: Callable | None = None
    batch_loss: Callable | None = None
    batch_size: Callable[[Any], int] | None = None
    dtype: torch.dtype | None = None
    eval_mode: bool = True

    def __post_init__(self) -> None:
        if self.loss_fn is None and self.batch_loss is None:
            raise TypeError("pass loss_fn=(outputs, targets) -> scalar, or batch_loss=(model, batch) -> "
                            "scalar mean loss for a model that computes its own loss.")
        if self.loss_fn is not None and self.batch_loss is not None:
            raise ValueError("pass one of loss_fn and batch_loss, not both: batch_loss(model, batch) "
                             "already gives the loss of a batch.")
        for name, hint in (("loss_fn", "(outputs, targets) -> loss"), ("forward", "(model, inputs) -> outputs"),
                           ("batch_loss", "(model, batch) -> scalar mean loss"), ("batch_size", "batch -> int")):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable {hint}, got {type(value).__name__}.")
        if self.forward is not None and self.batch_loss is not None:
            raise ValueError("forward is not used with batch_loss (batch_loss(model, batch) runs the model "
                             "itself); pass forward with loss_fn, or batch_loss alone.")
        if self.dtype is not None and (not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point
                                       or self.dtype.is_complex):
            raise TypeError(f"dtype must be a real floating torch.dtype (e.g. torch.float32), got {self.dtype!r}.")
        if not isinstance(self.eval_mode, bool):
            raise TypeError(f"eval_mode must be True or False, got {self.eval_mode!r}.")

    def operator_options(self) -> dict[str, Any]:
        """Keyword arguments of the curvature operators (and ``ModelLoss``) besides ``loss_fn``."""
        return {"forward": self.forward, "batch_loss": self.batch_loss, "batch_size": self.batch_size,
                "dtype": self.dtype, "eval_mode": self.eval_mode}

    def batch_losses(self, model: torch.nn.Module, data: Any) -> Iterator[tuple[torch.Tensor, int, float]]:
        """``(loss, samples, weight)`` per batch of the live ``model`` (differentiable), where
        ``weight * loss`` summed over batches and divided by the samples is the mean loss."""
        reduction = None if self.loss_fn is None else declared_reduction(self.loss_fn)
        for index, x, y in DataSource(data, pairs=self.batch_loss is None):
            if self.batch_loss is not None:
                size = self.batch_size(x) if self.batch_size is not None else first_batch_size(x)
                yield self.batch_loss(model, x), int(size), float(size)
                continue
            assert self.loss_fn is not None  # one of the two, checked in __post_init__
            size = self.batch_size((x, y)) if self.batch_size is not None else batch_size(x, y)
            outputs = (self.forward or default_forward)(model, x)
            if reduction is None:  # undeclared: measured, as the operators do
                reduction = measure_reduction(self.loss_fn, outputs, y, int(size))
            loss = self.loss_fn(outputs, y)
            if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
                raise ValueError(disconnected_message("loss_fn", index))
            yield loss, int(size), 1.0 if reduction == "sum" else float(size)


@contextlib.contextmanager
def mode_warning_once(state: dict[str, bool]):
    """Within the block, pass on the first :class:`HesseModeWarning` only (``state["warned"]`` records
    it, so a state kept across blocks keeps it to one); every other warning passes unchanged.

    Each curvature operator warns once that it evaluates a training-mode model in eval mode; a run that
    builds one per check would repeat the same sentence at every check. The user's filters still apply
    to what is passed on.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            pending = list(caught)
    for w in pending:
        if issubclass(w.category, HesseModeWarning):
            if state.get("warned"):
                continue
            state["warned"] = True
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def with_mode_warning_once(fn: Callable) -> Callable:
    """``fn`` under :func:`mode_warning_once`: one :class:`HesseModeWarning` per call."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with mode_warning_once({}):
            return fn(*args, **kwargs)
    return wrapper
