"""The Hessian as a matrix-free operator: of a function at a point, or of a model's loss over data.

Products are Hessian-vector products (Pearlmutter 1994) by reverse-over-reverse differentiation:
the gradient ``g(θ) = ∇L(θ)`` is built once with ``create_graph=True`` and ``H V`` is
``∂(gᵀV)/∂θ``, a second backward pass through that graph, batched over the columns of ``V`` with
``vmap`` (``is_grads_batched``). On CPU this was measured to be the cheapest product (see the
README's benchmarks): keeping the first backward's graph makes every further product one backward
pass. Memory: with ``keep_graph=True`` (the default) the graph of each batch is kept while the
operator lives, up to ``graph_memory`` bytes (default 2 GiB); batches past the budget are
recomputed per product (a forward and two backward passes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import grad, vjp, vmap
from typing_extensions import Unpack

from .._autodiff import _scalar_fn
from .._validation import as_point, check_callable
from ._model_operator import ModelCurvatureOperator, ModelOperatorOptions
from .base import CurvatureOperator

# columns per block of to_dense() when products loop over columns (the CPU default)
_LOOP_CHUNK = 64


class HessianOperator(ModelCurvatureOperator):
    """Hessian ``∇²L(θ)`` of the mean loss of ``model`` over ``data`` (or of a function).

    The parameters up to ``distributed`` are shared by the model operators (Hessian, GGN,
    Fisher), in this order.

    Parameters
    ----------
    model
        torch.nn.Module (a ``DistributedDataParallel`` wrapper is unwrapped)
    loss_fn
        callable ``(outputs, targets) -> scalar`` with ``reduction="mean"`` or ``"sum"``
    data
        DataLoader, iterable of batches, or a pair of tensors ``(inputs, targets)``
    params
        ``None`` (all trainable parameters), a list of names, or a predicate
        ``(name, parameter) -> bool``
    batch_loss
        instead of ``loss_fn``, a callable ``(model, batch) -> scalar mean loss`` for
        models that compute their own loss (``lambda m, b: m(**b).loss``); a batch may be any
        object. Hessian only: the GGN and Fisher need outputs and ``loss_fn``.
    batch_size
        callable ``batch -> int``, the weight of a batch in the mean loss
        (``L = Σ_b n_b L_b / Σ_b n_b``); default the leading dimension of the targets, or with
        ``batch_loss`` of the first tensor found in the batch
    forward
        callable ``(model, inputs) -> outputs tensor``; default ``model(inputs)``,
        ``model(**inputs)`` for a mapping. Hugging Face: ``lambda m, b: m(**b).logits``
    dtype
        the floating type curvature is computed and accumulated in (e.g. ``torch.float32``
        for a ``bfloat16`` model: products run on a cast copy of the parameters, the model is
        not modified); default the parameters' dtype. It is the operator's ``dtype``.
    bn_mode
        ``"eval"`` (BatchNorm running statistics, the default) or ``"batch"``
    eval_mode
        evaluate in eval mode (dropout off) and restore the model's mode afterwards
    check_deterministic
        take two products with one vector and refuse a random loss
    progress
        show a bar (stderr) over the batches of the pass that computes ``L`` and ``∇L``
    keep_graph, graph_memory
        keep each batch's graph for later products, within
        ``graph_memory`` bytes over the operator (default 2 GiB; see the module docs)
    distributed
        ``None`` (data-parallel when a ``torch.distributed`` default group is
        initialized), ``False`` (local) or a process group: products are all-reduced over the
        ranks' data shards (user guide page "Scale and torch.distributed", docs/guide/distributed.md; :mod:`hesse.distributed`)
    matmat_strategy
        (Hessian only) how a block ``H V`` is taken from one first-backward graph: ``"vmap"``
        (one batched second backward, ``is_grads_batched``), ``"loop"`` (one second backward per
        column through the same graph) or ``"auto"``: ``"loop"`` on CPU, where it measured
        faster (1.38x against 1.72x a gradient per vector on a 127k-parameter MLP), ``"vmap"``
        on accelerators.

    Notes
    -----
    Frozen entries: the padding row of every ``nn.Embedding(padding_idx=...)`` among the
    parameters is held fixed (torch zeroes its gradient, so autograd's second derivative is not
    symmetric there); the operator has zero rows and columns on those entries.

    ``HessianOperator.from_function(f, x)`` gives the Hessian of a function of one tensor
    (a :class:`FunctionHessianOperator`).
    """

    _keeps_first_pass_graph = True

    _default_keep_graph = True

    def __init__(self, model: nn.Module, loss_fn: Callable | None = None, data: Any = None,
                 params: Any = None, *, matmat_strategy: str = "auto",
                 **options: Unpack[ModelOperatorOptions]):
        if matmat_strategy not in ("auto", "vmap", "loop"):
            raise ValueError(f"matmat_strategy must be 'auto', 'vmap' or 'loop'; got {matmat_strategy!r}.")
        self.matmat_strategy = matmat_strategy
        super().__init__(model, loss_fn, data, params, **options)

    def _batch_product(self, index, inputs, targets, Vs, k):
        p = self._problem
        params = p.params
        grads = self._cache.get(index)
        keep = grads is not None
        if grads is None:
            with p.mode():
                loss = p.batch_loss(params, inputs, targets)
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
        live = [j for j, g in enumerate(grads) if g is not None and g.requires_grad]
        if len(live) > 1:
            # a block of V that is exactly zero adds nothing to H V: differentiate only the
            # gradient blocks that meet a nonzero cotangent (the unit columns of to_dense() lie in
            # one block, and the second backward then runs through that block's graph alone)
            scale = torch.stack([Vs[j].abs().amax() for j in live]).tolist()
            live = [j for j, s in zip(live, scale) if s != 0]

        def zeros(j):
            return torch.zeros((k, *p.shapes[j]), dtype=p.dtype, device=p.device)

        if not live:
            return [zeros(j) for j in range(len(params))]  # V = 0, or the loss is linear in θ here
        outputs = [grads[j] for j in live]
        if k > 1 and self._use_vmap():
            hv = torch.autograd.grad(outputs, params, [Vs[j] for j in live], retain_graph=keep,
                                     allow_unused=True, is_grads_batched=True)
            return [zeros(j) if h is None else h for j, h in enumerate(hv)]
        columns = []
        for c in range(k):  # one backward per column through the same first-backward graph
            columns.append(torch.autograd.grad(outputs, params, [Vs[j][c] for j in live],
                                               retain_graph=keep or c < k - 1, allow_unused=True))
        return [zeros(j) if columns[0][j] is None else torch.stack([col[j] for col in columns])
                for j in range(len(params))]

    def _skips_data(self, k: int) -> bool:
        # every batch's first-backward graph is kept: products need not touch the data
        return self._cache.covers(i for i, _ in self._batch_sizes)

    def _default_chunk_size(self) -> int:
        # a column at a time through the graph gains nothing from wide blocks, and each block's
        # columns are held about three times over (the unit block, the columns, their stack)
        return super()._default_chunk_size() if self._use_vmap() else min(self._n, _LOOP_CHUNK)

    def _use_vmap(self) -> bool:
        if self.matmat_strategy == "auto":
            return self.device.type != "cpu"
        return self.matmat_strategy == "vmap"

    @classmethod
    def from_function(cls, f: Callable[[torch.Tensor], torch.Tensor], x: Any) -> FunctionHessianOperator:
        """The Hessian of a function of one tensor at ``x``, as an operator on flat vectors of
        length ``x.numel()`` (a :class:`FunctionHessianOperator`; see there).
        """
        return FunctionHessianOperator(f, x)


class FunctionHessianOperator(CurvatureOperator):
    """``∇²f(x)`` of a function of one tensor, matrix-free; built by
    :meth:`HessianOperator.from_function`.

    A sibling of the model operator, with the same reading interface: ``loss`` (``f(x)``),
    ``gradient`` (flat ``∇f(x)``), ``point`` (flat ``x``), ``param_names`` (``["x"]``),
    ``num_samples`` (1), ``unflatten(v)`` (``{"x": v reshaped to x's shape}``) and
    ``flatten(...)``. It is not a :class:`HessianOperator` (which is the Hessian of a model's loss
    over data, with graphs, ranks and a product strategy a function has not):
    ``isinstance(op, HessianOperator)`` is false; test for :class:`CurvatureOperator`.

    The gradient's reverse-mode graph is built once; each block of products is one ``vmap``ped
    ``vjp`` through it (reverse-over-reverse, exact because ``H`` is symmetric; Pearlmutter 1994).
    """

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], x: Any):
        check_callable(f)
        x = as_point(x)
        super().__init__(x.numel(), x.dtype, x.device, None)
        self.f, self.x = f, x
        fs = _scalar_fn(f)
        shape = x.shape

        def flat_f(z):
            return fs(z.reshape(shape))

        x_flat = x.reshape(-1)
        self.gradient, self._vjp = vjp(grad(flat_f), x_flat)[:2]
        self.loss = float(flat_f(x_flat))
        if not torch.isfinite(torch.as_tensor(self.loss)):
            raise ValueError(f"f(x) is not finite ({self.loss}) at the given x.")

    @property
    def point(self) -> torch.Tensor:
        return self.x.reshape(-1)

    @property
    def param_names(self) -> list[str]:
        return ["x"]

    @property
    def num_samples(self) -> int:
        return 1

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map a flat vector of length n to ``{"x": tensor of x's shape}``."""
        v = self._as_block(v, "v")
        if v.shape != (self._n,):
            raise ValueError(f"expected a vector of shape ({self._n},), got {tuple(v.shape)}.")
        return {"x": v.reshape(self.x.shape)}

    def flatten(self, tensors: Any) -> torch.Tensor:
        """Map ``{"x": t}``, ``[t]`` or ``t`` (of x's shape) to one flat vector."""
        if isinstance(tensors, dict):
            if set(tensors) != {"x"}:
                raise ValueError(f"expected {{'x': tensor}}, got keys {sorted(tensors)}.")
            tensors = tensors["x"]
        elif isinstance(tensors, (list, tuple)):
            if len(tensors) != 1:
                raise ValueError(f"expected one tensor of shape {tuple(self.x.shape)}, got {len(tensors)}.")
            tensors = tensors[0]
        t = self._as_block(tensors, "tensors")
        if tuple(t.shape) != tuple(self.x.shape):
            raise ValueError(f"expected a tensor of shape {tuple(self.x.shape)}, got {tuple(t.shape)}.")
        return t.reshape(-1)

    def extra_repr(self) -> str:
        return f"function of x with shape {tuple(self.x.shape)}"

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", {self.extra_repr()})"

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        if V.shape[1] == 1:
            return self._vjp(V[:, 0])[0].unsqueeze(1)
        return vmap(lambda v: self._vjp(v)[0])(V.T).T

