"""Curvature operators over a model, a loss and a data set, assembled from small pieces.

A subclass says how to multiply one batch's curvature matrix with a block of vectors
(``_batch_product``). The pieces it uses, each in its own module:

* :class:`~._evaluation.ModelLoss`: the loss over the data (batches, their weights ``n_b / N``,
  ``forward``/``batch_loss``, modes, dtype, frozen embedding rows, the attention fallback);
* :class:`~._graph_cache.GraphCache`: per-batch graphs kept between products in one byte budget;
* :class:`~._parallel.DataParallelReduction`: sums over the ranks' data shards.

This class joins them: one pass over the data for ``L(θ)`` and ``∇L(θ)``, then per product the
weighted sum of the batches' products, reduced over the ranks.
"""

from __future__ import annotations

import contextlib
from abc import abstractmethod
from collections.abc import Callable
from typing import Any, TypedDict

import torch
from torch import nn
from typing_extensions import Unpack

from .._memory import format_bytes
from .._progress import Progress
from .._validation import all_finite
from ._graph_cache import DEFAULT_GRAPH_MEMORY, GraphCache, SavedBytes
from ._parallel import DataParallelReduction
from .base import CurvatureOperator
from .data import EMPTY_DATA_HINT
from .evaluation import ModelLoss, disconnected_message

__all__ = ["DEFAULT_GRAPH_MEMORY", "ModelCurvatureOperator", "ModelOperatorOptions"]


class ModelOperatorOptions(TypedDict, total=False):
    """The keyword options every model operator takes (documented on :class:`HessianOperator`);
    a subclass's own keywords come before them in its signature."""

    batch_loss: Callable | None
    batch_size: Callable[[Any], int] | None
    forward: Callable | None
    dtype: torch.dtype | None
    bn_mode: str
    eval_mode: bool
    check_deterministic: bool
    progress: bool
    keep_graph: bool
    graph_memory: int | None
    distributed: Any


_OPTION_DEFAULTS: dict[str, Any] = {
    "batch_loss": None, "batch_size": None, "forward": None, "dtype": None, "bn_mode": "eval",
    "eval_mode": True, "check_deterministic": False, "progress": False, "keep_graph": None,
    "graph_memory": None, "distributed": None,
}


class ModelCurvatureOperator(CurvatureOperator):
    """Base of :class:`HessianOperator`, :class:`GGNOperator` and :class:`FisherOperator` on models.

    After construction, ``loss`` (float) and ``gradient`` (flat tensor) hold ``L(θ)`` and
    ``∇L(θ)`` at the point; ``param_names`` lists the parameters in vector order and
    ``unflatten(v)`` maps a vector back to ``{name: tensor}``.
    """

    process_group: Any = None  # set in __init__; None: a local operator
    # keep the first pass's graph of each batch (create_graph=True) in the cache: the Hessian's
    # products are backward passes through it
    _keeps_first_pass_graph = False

    #: the operator is PSD by construction (the GGN, the Fisher); None: not known
    _is_psd: bool | None = None
    #: ``keep_graph``'s default; an operator whose products keep no graph refuses the option
    _default_keep_graph: bool | None = False

    def __init__(self, model: nn.Module, loss_fn: Callable | None = None, data: Any = None,
                 params: Any = None, **options: Unpack[ModelOperatorOptions]):
        name = type(self).__name__
        unknown = sorted(set(options) - set(_OPTION_DEFAULTS))
        if self._default_keep_graph is None:
            unknown += sorted({"keep_graph", "graph_memory"} & set(options))
        if unknown:
            raise TypeError(f"{name}() got an unexpected keyword argument {unknown[0]!r}.")
        o = {**_OPTION_DEFAULTS, **options}
        batch_loss, batch_size, forward, dtype = o["batch_loss"], o["batch_size"], o["forward"], o["dtype"]
        bn_mode, eval_mode, progress, distributed = o["bn_mode"], o["eval_mode"], o["progress"], o["distributed"]
        keep_graph = bool(self._default_keep_graph) if o["keep_graph"] is None else o["keep_graph"]
        graph_memory = o["graph_memory"]
        # data-parallel over this group (None: local); see hesse.distributed
        self._parallel = DataParallelReduction(distributed)
        self.process_group = self._parallel.group
        self._problem = ModelLoss(model, loss_fn, data, params, bn_mode=bn_mode,
                                  eval_mode=eval_mode, forward=forward, batch_loss=batch_loss,
                                  batch_size=batch_size, dtype=dtype)
        p = self._problem
        super().__init__(p.n, p.dtype, p.device, self._is_psd)
        self._cache = GraphCache(graph_memory, enabled=keep_graph)
        self._progress = bool(progress)
        self._with_fallback(self._first_pass)
        if self._parallel.active:
            self._parallel.announce(
                f"{type(self).__name__} is data-parallel over {self.world_size} processes "
                f"({self.num_samples} samples in all): products are all-reduced (said once per "
                f"process group). Pass distributed=False for a local operator on this rank's data.")
        if o["check_deterministic"]:
            self._check_deterministic()

    # ------------------------------------------------------------------ public helpers
    @property
    def param_names(self) -> list[str]:
        return list(self._problem.names)

    @property
    def num_samples(self) -> int:
        return int(self._problem.num_samples or 0)

    @property
    def point(self) -> torch.Tensor:
        """The parameters θ (flat) at which this operator is evaluated."""
        return self._problem.flatten([q.detach() for q in self._problem.params])

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map a flat vector of length n to ``{parameter name: tensor of its shape}``."""
        v = self._as_block(v, "v")
        if v.shape != (self._n,):
            raise ValueError(f"expected a vector of shape ({self._n},), got {tuple(v.shape)}.")
        return dict(zip(self._problem.names, self._problem.unflatten(v)))

    def flatten(self, tensors: Any) -> torch.Tensor:
        """Map ``{name: tensor}`` or a list of per-parameter tensors to one flat vector."""
        if isinstance(tensors, dict):
            tensors = [tensors[n] for n in self._problem.names]
        tensors = list(tensors)
        if len(tensors) != len(self._problem.shapes) or any(
            tuple(t.shape) != tuple(s) for t, s in zip(tensors, self._problem.shapes)
        ):
            raise ValueError("tensors must match the selected parameters in number and shape.")
        return self._problem.flatten(tensors).to(self.dtype)

    @property
    def graph_bytes(self) -> int:
        """Bytes of the graphs kept between products (within ``graph_memory``)."""
        return self._cache.bytes

    # ------------------------------------------------------------------ machinery
    def _with_fallback(self, fn):
        """``fn()``, run again with the math attention kernel if a fused one lacks a derivative
        rule (the graphs kept so far were built with the fused kernel and are dropped)."""
        return self._problem.with_attention_fallback(fn, on_switch=self._cache.clear)

    def _first_pass(self) -> None:
        """One pass over the data: count samples, check the loss, compute L(θ) and ∇L(θ); keep the
        first-backward graph of each batch when the operator uses it and it fits the budget."""
        p = self._problem
        params = tuple(q.detach().requires_grad_(True) for q in p.params)
        p.params = params
        grad_sum = torch.zeros(p.n, dtype=p.dtype, device=p.device)
        self._cache.clear()
        sizes: list[tuple[int, int]] = []
        # an error on one rank reaches the others through the shape of the scalar all-reduce
        like = torch.zeros(3, dtype=torch.float64, device=p.device)
        total, loss_sum, any_batch = self._parallel.run(
            lambda: self._local_first_pass(params, grad_sum, sizes), like)
        if self._parallel.active:
            scalars = torch.tensor([float(total), float(loss_sum), float(any_batch)],
                                   dtype=torch.float64, device=p.device)
            scalars = self._parallel.sum(scalars)
            grad_sum = self._parallel.sum(grad_sum)
            total, loss_sum, any_batch = (int(round(float(scalars[0]))), float(scalars[1]),
                                          bool(scalars[2] > 0))
        if not any_batch or total == 0:
            raise ValueError("the data set is empty: no batch with samples was found"
                             + (" on any rank" if self._parallel.active else "")
                             + f". {EMPTY_DATA_HINT}")
        p.settle_reduction()
        p.num_samples = total
        self._batch_sizes = sizes
        self.loss = loss_sum / total
        self.gradient = grad_sum / total

    def _local_first_pass(self, params, grad_sum, sizes):
        p = self._problem
        total, loss_sum, any_batch = 0, 0.0, False
        bar = Progress(p.data.num_batches, f"{type(self).__name__}: loss and gradient", self._progress)
        with bar:
            for i, x, y, nb in p.batches():
                any_batch = True
                bar.update(1)
                if nb == 0:
                    continue
                loss_i, total_i = self._first_pass_batch(i, x, y, nb, params, grad_sum, sizes)
                loss_sum += loss_i
                total += total_i
        return total, loss_sum, any_batch

    def _first_pass_batch(self, i, x, y, nb, params, grad_sum, sizes) -> tuple[float, int]:
        """Add batch ``i``'s weighted gradient to ``grad_sum``; its weighted loss and size."""
        p = self._problem
        keep = self._keeps_first_pass_graph and self._cache.has_room()
        counter = SavedBytes() if keep else None
        with p.mode(), (counter.hooks() if counter else contextlib.nullcontext()):
            loss = p.batch_loss(params, x, y)
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)
                raise ValueError(f"{p.loss_name} must return a scalar per batch; got {shape} "
                                 f"on batch {i}. Use reduction='mean'.")
            if not torch.isfinite(loss):
                raise ValueError(f"the loss is not finite ({float(loss.detach())}) on batch {i}; check "
                                 f"that batch's inputs and targets, and the model's outputs.")
            if not loss.requires_grad:
                raise ValueError(disconnected_message(p.loss_name, i))
            grads = torch.autograd.grad(loss, params, create_graph=keep, allow_unused=True)
        flat = p.flatten([
            torch.zeros_like(q) if g is None else g.detach() for q, g in zip(params, grads)
        ])
        if not all_finite(flat):  # one check; locate the culprit only on failure
            bad = next(n for n, g in zip(p.names, grads)
                       if g is not None and not bool(torch.isfinite(g).all()))
            raise ValueError(f"the gradient is not finite on batch {i}, parameter {bad!r}.")
        w = 1.0 if p.reduction == "sum" else nb
        grad_sum += w * flat
        sizes.append((i, nb))
        if counter is not None:
            self._cache.offer(i, grads, counter.bytes)
        return w * float(loss.detach()), nb

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        mask = self._problem.frozen_mask
        if mask is not None:  # frozen entries (embedding padding rows): zero rows and columns
            V = V * mask[:, None]
        out = self._parallel.sum(self._parallel.run(lambda: self._products(V), like=V))
        return out if mask is None else out * mask[:, None]

    def _products(self, V: torch.Tensor) -> torch.Tensor:
        try:
            return self._with_fallback(lambda: self._accumulate(V))
        except RuntimeError as err:
            # torch.func's vmap refuses random operations: the loss itself is random
            if "randomness" not in str(err) or "random operation" not in str(err):
                raise
            raise ValueError(_not_deterministic(
                "the model calls a random operation while a product is taken")) from err

    def _skips_data(self, k: int) -> bool:
        """A product of ``k`` columns can be taken from kept graphs alone, without the data."""
        return False

    def _accumulate(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ_b w_b A_b V`` over this rank's batches, ``w_b`` the batch's weight in the mean."""
        p = self._problem
        k = V.shape[1]
        Vs = p.unflatten_block(V)
        out: torch.Tensor | None = None  # (k, n), accumulated in place over batches

        def add(parts, nb, index, inputs, targets):
            nonlocal out
            block = p.flatten_block(parts, k)
            if not all_finite(block):  # one check per batch; locate on failure
                raise ValueError(self._nonfinite_message(index, inputs, targets, block))
            if out is None:
                out = block.mul_(p.weight(nb))
            else:
                out.add_(block, alpha=p.weight(nb))

        if self._skips_data(k):
            for i, nb in self._batch_sizes:
                add(self._batch_product(i, None, None, Vs, k), nb, i, None, None)
        else:
            for i, x, y, nb in p.batches():
                if nb == 0:
                    continue
                add(self._batch_product(i, x, y, Vs, k), nb, i, x, y)
        if out is None:  # the first pass saw batches: this pass saw none
            raise ValueError(f"{type(self).__name__}: a product saw no batch of the data, which "
                             f"had {self.num_samples} samples when the operator was built. "
                             f"{EMPTY_DATA_HINT}")
        return out.T

    def _nonfinite_message(self, index: int, inputs: Any, targets: Any, block: torch.Tensor) -> str:
        """Name the batch and the parameters whose own curvature block ``A_jj`` is not finite:
        one product per parameter with a vector of ones on its coordinates, read on its rows (a
        zero vector could not expose an infinite entry, 0 · inf being NaN only by accident)."""
        p = self._problem
        bounds = torch.cumsum(torch.tensor([0, *p.numels]), 0).tolist()
        culprits = []
        for j, name in enumerate(p.names):
            ones = [torch.full((1, *s), 1.0 if m == j else 0.0, dtype=p.dtype, device=p.device)
                    for m, s in enumerate(p.shapes)]
            try:
                row = p.flatten_block(self._batch_product(index, inputs, targets, ones, 1), 1)
            except RuntimeError:
                continue
            if not bool(torch.isfinite(row[0, bounds[j]:bounds[j + 1]]).all()):
                culprits.append(name)
        if not culprits:  # only mixed blocks are not finite: name the rows that are
            culprits = [n for j, n in enumerate(p.names)
                        if not bool(torch.isfinite(block[:, bounds[j]:bounds[j + 1]]).all())]
        names = ", ".join(repr(n) for n in culprits)
        return (
            f"{type(self).__name__}: the curvature is not finite on batch {index}, parameter "
            f"{names}, although the loss and gradient there are finite ({self.loss:.6g}). The "
            f"second derivative does not exist at this point: a kink or singularity in how that "
            f"parameter enters the model (|w|^p with p < 2 at w = 0, sqrt or log at 0, a "
            f"division by a parameter near 0) or an overflow in {p.dtype}. Move the point, "
            f"smooth that term or leave the parameter out with params=[...]"
            + ("." if p.dtype == torch.float64 else ", or use float64.")
        )

    @property
    def world_size(self) -> int:
        """Number of processes the products are reduced over (1 for a local operator)."""
        return self._parallel.world_size

    @abstractmethod
    def _batch_product(self, index: int, inputs: Any, targets: Any, Vs: list[torch.Tensor],
                       k: int) -> list[torch.Tensor]:
        """This batch's curvature (of its own mean loss) times the block ``Vs``: per parameter,
        tensors of shape ``(k, *p.shape)``."""

    def _check_deterministic(self) -> None:
        g = torch.Generator(device="cpu").manual_seed(1234)
        v = torch.randn(self._n, generator=g, dtype=torch.float64).to(self.dtype).to(self.device)
        with self._cache.suspended():  # each product must run the model
            a, b = self.matvec(v), self.matvec(v)
        tol = 1e-10 if self.dtype == torch.float64 else 1e-4
        diff = float((a - b).abs().max())
        scale = max(float(a.abs().max()), 1e-30)
        if diff > tol * scale:
            raise ValueError(_not_deterministic(
                f"two products with the same vector differ by {diff:.3e} (relative "
                f"{diff / scale:.1e})"))

    def extra_repr(self) -> str:
        mem = f", graphs kept: {format_bytes(self.graph_bytes)}" if len(self._cache) else ""
        if self.process_group is not None:
            mem += f", data-parallel over {self.world_size} processes"
        return f"{self.num_samples} samples, {len(self.param_names)} parameter tensors{mem}"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", {self.extra_repr()})"


def _needs_outputs(name: str, loss_fn: Any, batch_loss: Any) -> None:
    """The GGN and Fisher are built from the outputs and the loss's derivatives in them."""
    if batch_loss is not None and loss_fn is None:
        raise ValueError(
            f"{name} needs the model's outputs and the loss as a function of them (J^T H_L J); "
            f"batch_loss gives the loss only. Pass loss_fn=(outputs, targets) -> scalar with "
            f"data of (inputs, targets) batches, and forward=(model, inputs) -> outputs if the "
            f"model does not return the outputs tensor itself (e.g. forward=lambda m, batch: "
            f"m(**batch).logits). HessianOperator accepts batch_loss.")


def _not_deterministic(detail: str) -> str:
    return (f"the loss is not deterministic: {detail}. Dropout in training mode, data "
            f"augmentation or a shuffling sampler with bn_mode='batch' make the curvature "
            f"random; use eval_mode=True (the default) and fixed data.")
