"""Loss-landscape slices: the loss on a 1-D line or 2-D plane through the current parameters.

Math. With directions ``d_1`` (and ``d_2``) the slice is ``f(a) = L(θ + a d_1)`` or
``f(a, b) = L(θ + a d_1 + b d_2)`` on a uniform grid ``a, b ∈ [-span, span]``.

- ``directions="eigen"``: the top Hessian eigenvectors (unit norm, :func:`hesse.eigsh`), so near
  the center ``f(a) ≈ L + a gᵀd_1 + ½ λ_1 a²`` (second-order Taylor; exact for a quadratic loss):
  the slice shows the sharpest curvature directly (``eigenvalues`` holds the λ's).
- ``directions="random"``: Gaussian directions, *filter-normalized* as in Li et al. (2018,
  "Visualizing the loss landscape of neural nets", NeurIPS, sec. 4): for every filter (a slice
  along dim 0 of a weight with ≥ 2 dims, i.e. a neuron's or a conv filter's weights)
  ``d_f ← d_f / ||d_f|| · ||θ_f||``, so a step of 1 changes every filter by its own norm and plots
  of different networks are comparable; 1-D parameters (biases, norm scales) get 0, as in their
  code's default ``ignore="biasbn"``. The second direction is drawn independently (in high
  dimension it is nearly orthogonal to the first).

Cost: ``steps`` (1-D) or ``steps²`` (2-D) loss evaluations over the data (forward passes only),
plus the eigsh products for eigen directions.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, cast

import torch

from hesse._progress import Progress
from hesse._result import Result
from hesse.operators import HessianOperator
from hesse.operators.evaluation import ModelLoss
from hesse.spectrum import eigsh

from ._data import LossSpec, read_once

__all__ = ["landscape", "LandscapeResult", "filter_normalized_direction"]


#: Relative residual of the eigen directions: a slice along a direction off by ``epsilon`` shows the
#: curvature ``λ_1 + O(epsilon^2)``, far below what a plot resolves.
_EIGEN_TOL = 1e-6


@dataclass(repr=False)
class LandscapeResult(Result):
    """A loss slice. ``coordinates``: one 1-D tensor per direction (the grid ``a`` and ``b``);
    ``losses``: shape ``(steps,)`` or ``(steps, steps)`` indexed ``[i_a, i_b]``; ``directions``:
    ``(n, dims)``; ``center_loss`` = L(θ); ``eigenvalues`` (eigen directions) or None;
    ``directional_derivatives``: ``gᵀd_i``; ``nfev``: loss evaluations over the data."""

    coordinates: tuple[torch.Tensor, ...]
    losses: torch.Tensor
    directions: torch.Tensor
    kind: str
    center_loss: float
    eigenvalues: list[float] | None
    directional_derivatives: list[float]
    nfev: int
    span: float

    @property
    def dims(self) -> int:
        return len(self.coordinates)

    def as_dict(self) -> dict:
        return {"kind": self.kind, "dims": self.dims, "span": self.span,
                "coordinates": [c.tolist() for c in self.coordinates], "losses": self.losses.tolist(),
                "center_loss": self.center_loss, "eigenvalues": self.eigenvalues,
                "directional_derivatives": self.directional_derivatives,
                "nfev": self.nfev}

    def __repr__(self) -> str:
        eig = "" if self.eigenvalues is None else f", eigenvalues={[round(v, 4) for v in self.eigenvalues]}"
        return (f"LandscapeResult(kind={self.kind!r}, dims={self.dims}, grid={tuple(self.losses.shape)}, "
                f"span={self.span:g}, center_loss={self.center_loss:.4g}, "
                f"loss range=[{float(self.losses.min()):.4g}, {float(self.losses.max()):.4g}]{eig})")


def filter_normalized_direction(problem_params, generator: torch.Generator) -> list[torch.Tensor]:
    """Li et al. (2018) filter-normalized Gaussian direction for a list of parameter tensors."""
    out = []
    for p in problem_params:
        d = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
        if p.dim() <= 1:
            out.append(torch.zeros_like(p))
            continue
        flat_d, flat_p = d.reshape(p.shape[0], -1), p.detach().reshape(p.shape[0], -1)
        dn = flat_d.norm(dim=1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        out.append((flat_d / dn * flat_p.norm(dim=1, keepdim=True)).reshape(p.shape))
    return out


def landscape(model: torch.nn.Module, loss_fn: Any = None, data: Any = None, directions: str = "eigen",
              dims: int = 1, steps: int = 21, span: float = 1.0, seed: int = 0, params: Any = None,
              progress: bool = False, *, forward: Any = None, batch_loss: Any = None, batch_size: Any = None,
              dtype: torch.dtype | None = None, eval_mode: bool = True) -> LandscapeResult:
    """Loss on a line (``dims=1``) or plane (``dims=2``) through the model's current parameters.

    Parameters
    ----------
    model, loss_fn, data, params
        as for :class:`hesse.HessianOperator` (the loss is the mean over
        ``data``; evaluated in eval mode unless ``eval_mode=False``, the model's modes are restored).
    directions
        ``"eigen"`` (top ``dims`` Hessian eigenvectors, unit norm) or ``"random"``
        (filter-normalized Gaussian, Li et al. 2018). See the module docs.
    dims
        1 (a line through the current parameters) or 2 (a plane).
    steps
        grid points per axis (odd numbers put a point on the center).
    span
        the grid covers ``[-span, span]`` along each direction.
    seed
        seed of the random directions (and of the eigsh start vector).
    progress
        show a bar (stderr) over the grid's loss evaluations.
    forward, batch_loss, batch_size, dtype, eval_mode
        as for :class:`hesse.HessianOperator` (outputs of a
        model that takes e.g. a dict, the loss of a model that computes its own, and the precision
        the loss and Hessian are computed in).

    Notes
    -----
    The model's parameters are not changed. Cost: ``steps**dims`` loss evaluations.
    """
    if directions not in ("eigen", "random"):
        raise ValueError(f"directions must be 'eigen' (top Hessian eigenvectors) or 'random' "
                         f"(filter-normalized, Li et al. 2018); got {directions!r}.")
    if dims not in (1, 2) or isinstance(dims, bool):
        raise ValueError(f"dims must be 1 (a line) or 2 (a plane), got {dims!r}.")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (grid points per axis), got {steps!r}.")
    if not isinstance(span, (int, float)) or isinstance(span, bool) or not span > 0 or span == float("inf"):
        raise ValueError(f"span must be a positive finite float, got {span!r}.")
    options = LossSpec(loss_fn, forward, batch_loss, batch_size, dtype, eval_mode).operator_options()
    data = read_once(data)  # iterated once per evaluation
    problem = ModelLoss(model, loss_fn, data, params, **options)
    op = HessianOperator(model, loss_fn, data, params, **options)
    if directions == "eigen":
        res = eigsh(op, k=dims, which="largest", tol=_EIGEN_TOL, seed=seed)
        D = cast(torch.Tensor, res.vectors)  # eigsh returns vectors unless asked not to
        eigenvalues: list[float] | None = [float(v) for v in res.values]
        dirs = [problem.unflatten(D[:, i]) for i in range(dims)]
    else:
        gen = torch.Generator().manual_seed(seed)
        dirs = [filter_normalized_direction(problem.params, gen) for _ in range(dims)]
        D = torch.stack([problem.flatten(d) for d in dirs], dim=1)
        eigenvalues = None
    grid = torch.linspace(-float(span), float(span), steps, dtype=torch.float64)
    g = op.gradient  # the slope along each direction (for the Taylor check and the report)
    derivs = [float(g @ D[:, i].to(g.dtype)) for i in range(dims)]
    losses = _grid_losses(problem, dirs, grid, f"landscape ({directions}, {dims}-D)", progress)
    center = _mean_loss(problem, [torch.zeros_like(t) for t in problem.params])
    return LandscapeResult(coordinates=tuple(grid.clone() for _ in range(dims)), losses=losses,
                           directions=D.detach(), kind=directions, center_loss=center,
                           eigenvalues=eigenvalues, directional_derivatives=derivs,
                           nfev=losses.numel() + 1, span=float(span))


def _mean_loss(problem: ModelLoss, shift: list[torch.Tensor]) -> float:
    """``L(θ + shift)``: the mean loss over the data (batches weighted as in the operators)."""
    point = tuple(t + s for t, s in zip(problem.params, shift))
    total, count = 0.0, 0
    with torch.no_grad(), problem.mode():
        for _, x, y, size in problem.batches():
            value = float(problem.batch_loss(point, x, y))
            total += value * (size if problem.reduction == "mean" else 1.0)
            count += size
    return total / count


def _grid_losses(problem: ModelLoss, dirs: list[list[torch.Tensor]], grid: torch.Tensor, label: str,
                 progress: bool) -> torch.Tensor:
    """``L(θ + a d_1)`` on the grid (one direction) or ``L(θ + a d_1 + b d_2)`` (two), indexed ``[i_a, i_b]``."""
    steps = grid.numel()
    losses = torch.empty((steps,) * len(dirs), dtype=torch.float64)
    with Progress(losses.numel(), label, progress) as bar:
        for index in itertools.product(range(steps), repeat=len(dirs)):
            coeffs = [float(grid[i]) for i in index]
            shift = [sum(c * d[j] for c, d in zip(coeffs, dirs)) for j in range(len(dirs[0]))]
            losses[index] = _mean_loss(problem, shift)  # type: ignore[arg-type]
            bar.update(1)
    return losses
