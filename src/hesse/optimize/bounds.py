"""Box constraints ``lower <= x <= upper`` as the bounded methods read them.

One description, :class:`BoxBounds` (flat ``lower`` and ``upper`` tensors in the dtype and on the
device of the point, ``-inf``/``+inf`` where a variable is free), built by :func:`as_bounds` from
what scipy users pass:

- a ``scipy.optimize.Bounds`` (anything with ``lb`` and ``ub`` attributes);
- ``minimize``'s form: a sequence of ``n`` pairs ``(lo, hi)``, ``None`` meaning unbounded;
- ``least_squares``' form: a pair ``(lb, ub)`` of scalars or arrays broadcast to ``n``.

The active set follows scipy's convention for ``least_squares``' ``active_mask``: ``-1`` where
the lower bound is active, ``1`` where the upper one is, ``0`` where the variable is free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

BoundsForm = Literal["pairs", "lb_ub"]


@dataclass(frozen=True)
class BoxBounds:
    """Flat box ``lower <= x <= upper`` (``-inf``/``inf`` where unbounded)."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def n(self) -> int:
        return self.lower.numel()

    @property
    def unbounded(self) -> bool:
        """True when no variable has a finite bound (the problem is unconstrained)."""
        return not bool(torch.isfinite(self.lower).any() or torch.isfinite(self.upper).any())

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """The point of the box closest to ``x`` (componentwise clipping)."""
        return torch.minimum(torch.maximum(x, self.lower), self.upper)

    def contains(self, x: torch.Tensor) -> bool:
        """Whether ``x`` lies in the (closed) box."""
        return bool(((x >= self.lower) & (x <= self.upper)).all())

    def strictly_contains(self, x: torch.Tensor) -> bool:
        """Whether ``x`` lies in the interior of the box."""
        return bool(((x > self.lower) & (x < self.upper)).all())

    def active_mask(self, x: torch.Tensor, rtol: float = 1e-10) -> torch.Tensor:
        """``-1``/``1`` where the lower/upper bound is active at ``x``, ``0`` where free.

        A bound is active when ``x`` is within ``rtol * max(1, |bound|)`` of it (and nearer to it
        than to the other bound); with ``rtol = 0`` only when ``x`` is on or past it. An integer
        tensor (``torch.int64``), as scipy's ``least_squares`` reports ``active_mask``.
        """
        mask = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
        if rtol == 0:
            mask[x <= self.lower] = -1
            mask[x >= self.upper] = 1
            return mask
        to_lower = x - self.lower
        to_upper = self.upper - x
        one = torch.ones((), dtype=x.dtype, device=x.device)
        near_lower = rtol * torch.maximum(one, self.lower.abs())
        near_upper = rtol * torch.maximum(one, self.upper.abs())
        lower_active = torch.isfinite(self.lower) & (to_lower <= torch.minimum(to_upper, near_lower))
        upper_active = torch.isfinite(self.upper) & (to_upper <= torch.minimum(to_lower, near_upper))
        mask[lower_active] = -1
        mask[upper_active] = 1
        return mask


def _float_or_inf(value: Any, inf: float, where: str) -> float:
    if value is None:
        return inf
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{where} must be a number or None, got {value!r}.") from None
    if out != out:
        raise ValueError(f"{where} is NaN; use None (or -inf/inf) for an unbounded side.")
    return out


def _side(value: Any, n: int, inf: float, ref: torch.Tensor, name: str) -> torch.Tensor:
    """One side of ``lb_ub`` bounds: a scalar or an array of ``n`` entries."""
    if value is None:
        return torch.full((n,), inf, dtype=ref.dtype, device=ref.device)
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"bounds' {name} must be a number or an array of {n} numbers, "
                        f"got {value!r}.") from None
    if t.numel() == 1:
        t = t.expand(n)
    elif t.numel() != n:
        raise ValueError(f"bounds' {name} has {t.numel()} entries but x0 has {n}; give one number "
                         f"(for every variable) or one per variable.")
    if torch.isnan(t).any():
        raise ValueError(f"bounds' {name} contains NaN; use -inf/inf (or None) for an unbounded side.")
    return t.to(dtype=ref.dtype, device=ref.device).clone()


def as_bounds(bounds: Any, x0: torch.Tensor, form: BoundsForm = "pairs",
              strict: bool = False) -> BoxBounds | None:
    """Read ``bounds`` for the flat point ``x0``; ``None`` stays ``None``.

    ``form`` is the form a plain sequence is read in: ``"pairs"`` (``minimize``: ``n`` pairs
    ``(lo, hi)``) or ``"lb_ub"`` (``least_squares``: ``(lb, ub)``); a ``scipy.optimize.Bounds``
    is read in either. ``strict=True`` requires ``lower < upper`` everywhere (as scipy's
    ``least_squares`` does); otherwise ``lower <= upper`` (a variable may be fixed).
    Errors name the offending entry and say what to write instead.
    """
    if bounds is None:
        return None
    x = x0.detach().reshape(-1)
    n = x.numel()
    inf = float("inf")
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lower = _side(bounds.lb, n, -inf, x, "lb")
        upper = _side(bounds.ub, n, inf, x, "ub")
    elif form == "lb_ub":
        if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence) or len(bounds) != 2:
            raise TypeError(
                f"bounds must be a pair (lb, ub) of numbers or arrays of {n} entries, or a "
                f"scipy.optimize.Bounds; got {bounds!r}."
            )
        lower = _side(bounds[0], n, -inf, x, "lb")
        upper = _side(bounds[1], n, inf, x, "ub")
    else:
        if isinstance(bounds, (str, bytes)) or not isinstance(bounds, Sequence):
            raise TypeError(
                f"bounds must be a sequence of {n} pairs (lo, hi) (None for an unbounded side) or "
                f"a scipy.optimize.Bounds; got {type(bounds).__name__}."
            )
        if len(bounds) != n:
            raise ValueError(
                f"bounds has {len(bounds)} pairs but x0 has {n} variables; give one (lo, hi) pair "
                f"per variable, or scipy.optimize.Bounds(lb, ub) with arrays or scalars."
            )
        lo_list, hi_list = [], []
        for i, pair in enumerate(bounds):
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise TypeError(f"bounds[{i}] must be a pair (lo, hi), got {pair!r}.")
            lo_list.append(_float_or_inf(pair[0], -inf, f"bounds[{i}][0]"))
            hi_list.append(_float_or_inf(pair[1], inf, f"bounds[{i}][1]"))
        lower = torch.tensor(lo_list, dtype=x.dtype, device=x.device)
        upper = torch.tensor(hi_list, dtype=x.dtype, device=x.device)
    bad = (lower >= upper) if strict else (lower > upper)
    if bad.any():
        i = int(bad.nonzero()[0])
        relation = "strictly less than" if strict else "at most"
        raise ValueError(
            f"bounds for variable {i}: lower {lower[i].item():g} must be {relation} upper "
            f"{upper[i].item():g}."
        )
    if (lower == inf).any() or (upper == -inf).any():
        i = int(((lower == inf) | (upper == -inf)).nonzero()[0])
        raise ValueError(f"bounds for variable {i} leave no feasible value "
                         f"(lower {lower[i].item():g}, upper {upper[i].item():g}).")
    return BoxBounds(lower, upper)
