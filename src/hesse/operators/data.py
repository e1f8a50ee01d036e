"""Data sets for model operators: a DataLoader, an iterable of (inputs, targets), or a tensor pair.

The operators iterate the data once per product. A one-shot iterator (a generator) is read into
a list once, since it could not be iterated again. With ``pairs=False`` (a ``batch_loss``) a
batch may be any object (a mapping, a tuple, a tensor); a single mapping, tensor or tensor pair
passed as ``data`` is one batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

Batch = tuple[Any, Any]

EMPTY_DATA_HINT = ("Data that can be iterated only once (a stream, an IterableDataset whose "
                   "__iter__ returns one stored iterator, an open file) is exhausted after the "
                   "first pass: read it into a list (data=list(loader)), or make its __iter__ "
                   "start a new pass each time.")


def _is_tensorlike(x: Any) -> bool:
    return isinstance(x, torch.Tensor)


def batch_size(inputs: Any, targets: Any) -> int:
    """Number of samples in a batch: the leading dimension of the targets (or inputs)."""
    for t in (targets, inputs):
        if isinstance(t, torch.Tensor) and t.ndim >= 1:
            return int(t.shape[0])
        if isinstance(t, (tuple, list)) and t and isinstance(t[0], torch.Tensor) and t[0].ndim >= 1:
            return int(t[0].shape[0])
    raise TypeError(
        "cannot tell the batch size: targets (or inputs) must be tensors with a leading batch "
        "dimension."
    )


def first_batch_size(batch: Any) -> int:
    """The leading dimension of the first tensor with at least one dimension found in ``batch``
    (mappings, tuples and lists searched in order)."""
    found = _first_tensor(batch)
    if found is None:
        raise TypeError(
            f"cannot tell the batch size of a {type(batch).__name__}: no tensor with a leading "
            f"batch dimension in it; pass batch_size=(batch) -> int.")
    return int(found.shape[0])


def _first_tensor(x: Any) -> torch.Tensor | None:
    if isinstance(x, torch.Tensor):
        return x if x.ndim >= 1 else None
    items = x.values() if isinstance(x, Mapping) else x if isinstance(x, (tuple, list)) else ()
    for item in items:
        found = _first_tensor(item)
        if found is not None:
            return found
    return None


class DataSource:
    """A re-iterable view of the user's data as (inputs, targets) batches, or (``pairs=False``)
    as batches of any form, yielded as ``(index, batch, None)``."""

    def __init__(self, data: Any, pairs: bool = True):
        self.pairs = pairs
        if data is None:
            raise TypeError("data is required: a DataLoader, an iterable of (inputs, targets) "
                            "batches, or a pair of tensors (inputs, targets).")
        if not pairs and (isinstance(data, (Mapping, torch.Tensor)) or _is_tensor_pair(data)):
            self._batches: Iterable = [data]
            self.kind = "one batch"
        elif (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and _is_tensorlike(data[0])
            and _is_tensorlike(data[1])
        ):
            self._batches = [(data[0], data[1])]
            self.kind = "tensor pair"
        elif isinstance(data, torch.Tensor):
            raise TypeError("data is a single tensor; pass (inputs, targets) as a pair of tensors.")
        elif isinstance(data, Iterable):
            if iter(data) is data:  # one-shot iterator: keep its batches
                self._batches = list(data)
                self.kind = "iterator (read into a list)"
            else:
                self._batches = data
                self.kind = type(data).__name__
        else:
            raise TypeError(
                f"data must be a DataLoader, an iterable of (inputs, targets) batches or a pair "
                f"of tensors; got {type(data).__name__}."
            )
        self.shuffles = _loader_shuffles(data)
        self._first_count: int | None = None  # batches in the first complete pass

    @property
    def num_batches(self) -> int | None:
        """Number of batches when the data can tell (a list, a DataLoader), else ``None``."""
        try:
            return len(self._batches)  # type: ignore[arg-type]
        except TypeError:
            return None

    def __iter__(self) -> Iterator[tuple[int, Any, Any]]:
        count = 0
        for i, batch in enumerate(self._batches):
            count += 1
            if not self.pairs:
                yield i, batch, None
                continue
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise TypeError(
                    f"batch {i} is a {type(batch).__name__}"
                    + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                    + "; each batch must be a pair (inputs, targets)."
                )
            yield i, batch[0], batch[1]
        # every pass must see the same data: an operator is one matrix
        if self._first_count is None:
            self._first_count = count
        elif count != self._first_count:
            raise ValueError(f"the data gave {self._first_count} batches on the first pass and "
                             f"{count} on a later one. {EMPTY_DATA_HINT}")


def _is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2 and _is_tensorlike(data[0])
            and _is_tensorlike(data[1]))


def _loader_shuffles(data: Any) -> bool:
    sampler = getattr(data, "sampler", None)
    return isinstance(sampler, torch.utils.data.RandomSampler)


def to_device(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """Move a tensor (or tuple/list/dict of tensors) to ``device``; floats cast to ``dtype``."""
    if isinstance(x, torch.Tensor):
        if dtype is not None and x.is_floating_point() and x.dtype != dtype:
            return x.to(device=device, dtype=dtype)
        return x.to(device)
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(to_device(t, device, dtype) for t in x))
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(t, device, dtype) for t in x)
    if isinstance(x, Mapping):  # a dict, or a mapping such as transformers' BatchEncoding
        return {k: to_device(v, device, dtype) for k, v in x.items()}
    return x
