"""The one base of hesse's result records.

Every function that returns more than a tensor returns a dataclass that derives from
:class:`Result`. Like scipy's ``OptimizeResult`` a result can be read as a mapping
(``res["x"]``, ``res.keys()``, ``dict(res.items())``; there is no ``values()``, so
that a record may have a field named ``values``), turned into plain Python data with
:meth:`Result.as_dict`, and printed as an aligned table of its fields. Unlike scipy's it is a
dataclass with declared fields, so a misspelt field is an ``AttributeError``, not a silent
``None``.

Field names follow one convention across the package (see the glossary in the docs):
``nit`` iterations, ``nfev``/``njev``/``nhev`` function, gradient and Hessian evaluations (as in
scipy), ``num_matvecs`` products with a curvature operator, ``converged`` a bool, ``status`` and
``message`` why an iteration stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["Result"]

# A tensor with more entries than this is summarised in a repr instead of printed in full.
_REPR_MAX_NUMEL = 8


def _short(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        if value.numel() <= _REPR_MAX_NUMEL:
            return repr(value.detach().cpu().tolist()) if value.dim() else f"{value.item():.6g}"
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)) and len(value) > _REPR_MAX_NUMEL:
        return f"{type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _plain(value: Any) -> Any:
    if isinstance(value, Result):
        return value.as_dict()
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Result:
    """Base class of result records: fields, a readable ``repr``, ``as_dict()`` and mapping access.

    Subclasses are dataclasses; declare them with ``@dataclass(repr=False)`` to keep this
    ``repr`` (one aligned ``name: value`` line per field, tensors summarised by shape).
    """

    def _field_names(self) -> list[str]:
        if dataclasses.is_dataclass(self):
            return [f.name for f in dataclasses.fields(self)]
        return [k for k in vars(self) if not k.startswith("_")]

    def keys(self) -> list[str]:
        """The field names, in declaration order."""
        return self._field_names()

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self._field_names()]

    def __getitem__(self, key: str) -> Any:
        if key not in self._field_names():
            raise KeyError(f"{type(self).__name__} has no field {key!r}; its fields are "
                           f"{', '.join(self._field_names())}")
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._field_names()

    def __iter__(self) -> Iterator[str]:
        return iter(self._field_names())

    def as_dict(self) -> dict[str, Any]:
        """Plain Python data (tensors as nested lists, nested results as dicts), e.g. for JSON."""
        return {k: _plain(v) for k, v in self.items()}

    def __repr__(self) -> str:
        names = self._field_names()
        if not names:
            return f"{type(self).__name__}()"
        width = max(len(n) for n in names)
        lines = [f"  {n.rjust(width)}: {_short(getattr(self, n))}" for n in names]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"
