"""Sharpness measures of the generalisation literature, beside the Hessian's own numbers.

Each measure is a number about the loss ``L`` of a model over its data near the current
parameters ``θ`` (``n`` of them):

- **ε-sharpness** (Keskar et al. 2017, "On large-batch training for deep learning: generalization
  gap and sharp minima", ICLR, Metric 2.1): the largest rise of the loss in the box
  ``C_ε = {z : |z_i| <= ε (|θ_i| + 1)}``, relative to ``1 + L(θ)``, in percent,

  ``φ_ε = 100 · (max_{z ∈ C_ε} L(θ + z) − L(θ)) / (1 + L(θ))``,

  the maximum found as they find it: L-BFGS-B on ``−L`` over the box from ``z = 0`` (a local
  maximiser: the number is a lower bound on the box's true maximum).
- **Adaptive sharpness** (Kwon et al. 2021, "ASAM: adaptive sharpness-aware minimization for
  scale-invariant learning of deep neural networks", ICML, eq. 5): the largest rise in the
  ellipsoid ``{T_θ u : ‖u‖₂ <= ρ}`` with ``T_θ = diag(|θ_i| + η)``,

  ``S_ρ = max_{‖u‖ <= ρ} L(θ + T_θ u) − L(θ)``,

  by projected normalised gradient ascent in ``u`` from ASAM's first-order maximiser
  ``u₀ = ρ T_θ g / ‖T_θ g‖``. Invariant, for η = 0, to rescalings of the parameters that leave the
  network's function unchanged (Dinh et al. 2017).
- **Filter-normalised sharpness**: the largest eigenvalue of ``D H D``, ``H`` the Hessian and
  ``D`` the diagonal scaling of Li et al. (2018, "Visualizing the loss landscape of neural nets",
  NeurIPS, sec. 4): each entry of a weight (≥ 2 dims) scaled by the norm of its filter (its slice
  along dim 0), each entry of a 1-D parameter by its own magnitude. Rescaling a ReLU network's
  layer by α and the next by 1/α changes ``λ_max(H)`` but not ``λ_max(D H D)``.

:func:`compare` puts these beside ``λ_max``, the trace and the negative mass of the Hessian for
several trained models, one row per run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize as _scipy_minimize

from hesse._progress import Progress
from hesse._result import Result
from hesse._validation import check_positive_float, check_positive_int
from hesse.operators import HessianOperator
from hesse.operators.composition import DiagonalCongruence
from hesse.operators.evaluation import ModelLoss
from hesse.spectrum import eigsh, summarize

from ._data import LossSpec, read_once

__all__ = ["epsilon_sharpness", "adaptive_sharpness", "filter_normalized_sharpness",
           "filter_scales", "compare", "SharpnessComparison", "SharpnessValue"]

# L-BFGS-B iterations of the ε-sharpness maximisation (Keskar et al. 2017 use 10)
_EPSILON_ITERATIONS = 10
# relative tolerance of the eigenvalue in filter-normalised sharpness
_EIG_TOL = 1e-6


def _problem(model, loss_fn, data, params, forward, batch_loss, batch_size, dtype) -> tuple[ModelLoss, Any]:
    options = LossSpec(loss_fn, forward, batch_loss, batch_size, dtype).operator_options()
    data = read_once(data)
    return ModelLoss(model, loss_fn, data, params, **options), (data, options)


def _loss_and_gradient(problem: ModelLoss, z: torch.Tensor | None, need_grad: bool
                       ) -> tuple[float, torch.Tensor | None]:
    """``L(θ + z)`` (the mean over the data, batches weighted as in the operators) and its
    gradient in ``z`` (flat, float64) when ``need_grad``."""
    shift = (problem.unflatten(z.to(problem.dtype)) if z is not None
             else [torch.zeros_like(t) for t in problem.params])
    point = [(t.detach() + s).requires_grad_(need_grad) for t, s in zip(problem.params, shift)]
    total, count = 0.0, 0
    grads = [torch.zeros_like(t) for t in point] if need_grad else None
    with torch.set_grad_enabled(need_grad), problem.mode():
        for _, x, y, size in problem.batches():
            if size == 0:
                continue
            loss = problem.batch_loss(tuple(point), x, y)
            w = size if problem.reduction == "mean" else 1.0
            total += w * float(loss.detach())
            count += size
            if grads is not None:
                for acc, g in zip(grads, torch.autograd.grad(loss, point, allow_unused=True)):
                    if g is not None:
                        acc.add_(g, alpha=w)
    if count == 0:
        raise ValueError("the data set is empty: no batch with samples was found.")
    if not np.isfinite(total):
        raise ValueError(f"the loss is not finite ({total / count}) at the perturbed parameters; the "
                         f"radius is too large for this model.")
    if grads is None:
        return total / count, None
    return total / count, problem.flatten(grads).to(torch.float64) / count


@dataclass(repr=False)
class SharpnessValue(Result):
    """One sharpness number: ``value`` (the measure), ``loss`` ``L(θ)``, ``perturbed_loss``
    (the loss at the maximiser found; nan for the eigenvalue measure), ``radius`` (ε or ρ), ``nfev``
    (loss evaluations over the data) and ``definition`` (the formula, with its source)."""

    value: float
    loss: float
    perturbed_loss: float
    radius: float
    nfev: int
    definition: str


def epsilon_sharpness(model: torch.nn.Module, loss_fn: Any = None, data: Any = None, epsilon: float = 1e-3,
                      params: Any = None, max_iter: int = _EPSILON_ITERATIONS, *, forward: Any = None,
                      batch_loss: Any = None, batch_size: Any = None,
                      dtype: torch.dtype | None = None) -> SharpnessValue:
    """ε-sharpness of Keskar et al. (2017, Metric 2.1), in percent (see the module docs).

    Parameters
    ----------
    model, loss_fn, data, params : as for :class:`hesse.HessianOperator`.
    epsilon : the box's half-width relative to ``|θ_i| + 1`` (Keskar et al. use 1e-3 and 5e-4).
    max_iter : L-BFGS-B iterations of the maximisation (10 in the paper).
    forward, batch_loss, batch_size, dtype : as for :class:`hesse.HessianOperator`.

    Returns
    -------
    SharpnessValue
        ``value`` = ``100 (L(θ + z*) − L(θ)) / (1 + L(θ))``; the model is not changed.
    """
    check_positive_float(epsilon, "epsilon")
    check_positive_int(max_iter, "max_iter")
    problem, _ = _problem(model, loss_fn, data, params, forward, batch_loss, batch_size, dtype)
    base, _ = _loss_and_gradient(problem, None, need_grad=False)
    theta = problem.flatten([t.detach() for t in problem.params]).to(torch.float64).cpu().numpy()
    half = float(epsilon) * (np.abs(theta) + 1.0)
    nfev = [1]

    def negative(z: np.ndarray) -> tuple[float, np.ndarray]:
        nfev[0] += 1
        value, g = _loss_and_gradient(problem, torch.from_numpy(z).to(problem.device), need_grad=True)
        assert g is not None
        return -value, -g.cpu().numpy()

    res = _scipy_minimize(negative, np.zeros_like(theta), jac=True, method="L-BFGS-B",
                          bounds=list(zip(-half, half)), options={"maxiter": int(max_iter)})
    top = max(-float(res.fun), base)  # z = 0 is in the box: the rise is never negative
    return SharpnessValue(value=100.0 * (top - base) / (1.0 + base), loss=base, perturbed_loss=top,
                          radius=float(epsilon), nfev=nfev[0],
                          definition="100 (max_{|z_i| <= eps(|theta_i|+1)} L(theta+z) - L(theta)) / "
                                     "(1 + L(theta)); Keskar et al. 2017, Metric 2.1")


def adaptive_sharpness(model: torch.nn.Module, loss_fn: Any = None, data: Any = None, rho: float = 0.5,
                       eta: float = 0.01, params: Any = None, steps: int = 10, *, forward: Any = None,
                       batch_loss: Any = None, batch_size: Any = None, dtype: torch.dtype | None = None,
                       seed: int = 0) -> SharpnessValue:
    """Adaptive sharpness of Kwon et al. (2021, eq. 5) with ``T_θ = diag(|θ| + η)``.

    Parameters
    ----------
    model, loss_fn, data, params : as for :class:`hesse.HessianOperator`.
    rho : the radius of the ball in normalised coordinates ``u`` (ASAM's default 0.5).
    eta : the offset of the normalisation (ASAM's 0.01; 0 gives exact scale invariance).
    steps : projected normalised gradient-ascent steps after ASAM's first-order step.
    seed : the random start used where the gradient vanishes (an exact critical point).
    forward, batch_loss, batch_size, dtype : as for :class:`hesse.HessianOperator`.

    Returns
    -------
    SharpnessValue
        ``value`` = ``max_{‖u‖ <= ρ} L(θ + T_θ u) − L(θ)`` over the iterates; the model is not
        changed.
    """
    check_positive_float(rho, "rho")
    if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not 0 <= eta < float("inf"):
        raise ValueError(f"eta must be a finite float >= 0, got {eta!r}.")
    check_positive_int(steps, "steps", minimum=0)
    problem, _ = _problem(model, loss_fn, data, params, forward, batch_loss, batch_size, dtype)
    theta = problem.flatten([t.detach() for t in problem.params]).to(torch.float64)
    scale = theta.abs() + float(eta)
    base, g = _loss_and_gradient(problem, None, need_grad=True)
    assert g is not None
    direction = scale * g
    if not float(direction.norm()) > 0:  # a critical point: start along a random direction
        direction = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    u = float(rho) * direction / direction.norm()
    best, nfev = base, 1
    for _ in range(steps + 1):
        value, grad_z = _loss_and_gradient(problem, scale * u, need_grad=True)
        nfev += 1
        best = max(best, value)
        assert grad_z is not None
        ascent = scale * grad_z  # the gradient in u
        if not float(ascent.norm()) > 0:
            break
        u = u + 0.5 * float(rho) * ascent / ascent.norm()
        u = u * min(1.0, float(rho) / float(u.norm()))  # back onto the ball
    return SharpnessValue(value=best - base, loss=base, perturbed_loss=best, radius=float(rho), nfev=nfev,
                          definition="max_{||u|| <= rho} L(theta + T u) - L(theta), T = diag(|theta| + eta); "
                                     "Kwon et al. 2021, eq. 5")


def filter_scales(params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The scaling ``D`` of filter-normalised sharpness, one tensor per parameter: for a weight
    (≥ 2 dims) each entry gets the norm of its filter (its slice along dim 0, Li et al. 2018);
    for a 1-D parameter each entry its own magnitude."""
    out = []
    for p in params:
        p = p.detach()
        if p.dim() >= 2:
            norms = p.reshape(p.shape[0], -1).norm(dim=1)
            out.append(norms.reshape(-1, *([1] * (p.dim() - 1))).expand_as(p).clone())
        else:
            out.append(p.abs())
    return out


def filter_normalized_sharpness(model: torch.nn.Module, loss_fn: Any = None, data: Any = None,
                                params: Any = None, *, forward: Any = None, batch_loss: Any = None,
                                batch_size: Any = None, dtype: torch.dtype | None = None,
                                seed: int = 0) -> SharpnessValue:
    """``λ_max(D H D)``, ``D`` from :func:`filter_scales` (see the module docs).

    Parameters
    ----------
    model, loss_fn, data, params : as for :class:`hesse.HessianOperator`.
    forward, batch_loss, batch_size, dtype : as for :class:`hesse.HessianOperator`.
    seed : the Lanczos start vector's seed.

    Returns
    -------
    SharpnessValue
        ``value`` = ``λ_max(D H D)`` by :func:`hesse.eigsh` (relative tolerance 1e-6).
    """
    problem, (data, options) = _problem(model, loss_fn, data, params, forward, batch_loss, batch_size, dtype)
    op = HessianOperator(model, loss_fn, data, params, **options)
    d = problem.flatten(filter_scales(list(problem.params))).to(op.dtype)
    res = eigsh(DiagonalCongruence(op, d * d), k=1, which="largest", tol=_EIG_TOL, seed=seed,
                return_vectors=False)
    return SharpnessValue(value=float(res.values[0]), loss=float(op.loss), perturbed_loss=float("nan"),
                          radius=float("nan"), nfev=1,
                          definition="lambda_max(D H D), D = filter norms (Li et al. 2018) / |theta_i| "
                                     "for 1-D parameters")


@dataclass(repr=False)
class SharpnessComparison(Result):
    """:func:`compare`'s table: ``rows`` (one dict per run: ``name``, ``loss``, ``lambda_max``,
    ``trace``, ``negative_mass``, ``epsilon_sharpness``, ``adaptive_sharpness``,
    ``filter_normalized_sharpness``) and ``str(result)`` the aligned table."""

    rows: list[dict[str, Any]]

    _COLUMNS = ("loss", "lambda_max", "trace", "negative_mass", "epsilon_sharpness",
                "adaptive_sharpness", "filter_normalized_sharpness")
    _HEADS = ("loss", "lambda_max", "trace", "neg. mass", "eps-sharp %", "adaptive", "filter-norm.")

    @property
    def table(self) -> str:
        width = max([4, *(len(str(r["name"])) for r in self.rows)])
        head = f"{'run':<{width}}" + "".join(f" {h:>12}" for h in self._HEADS)
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{str(r['name']):<{width}}" + "".join(f" {r[c]:>12.4g}" for c in self._COLUMNS))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table


def compare(runs: Mapping[str, Any], *, epsilon: float = 1e-3, rho: float = 0.5, eta: float = 0.01,
            seed: int = 0, progress: bool = False) -> SharpnessComparison:
    """λ_max, trace and negative mass of the Hessian (:func:`hesse.summarize`) beside ε-, adaptive
    and filter-normalised sharpness, for several trained models.

    Parameters
    ----------
    runs
        ``{name: (model, loss_fn, data)}`` or ``{name: {"model": ..., "loss_fn": ..., "data":
        ...}}`` (the mapping a ``--model`` factory returns; ``params``, ``forward``,
        ``batch_loss``, ``batch_size`` and ``dtype`` may be among its keys).
    epsilon
        the box of :func:`epsilon_sharpness`.
    rho
        the radius of :func:`adaptive_sharpness`.
    eta
        the offset of :func:`adaptive_sharpness`'s normalisation.
    seed
        seeds of the random starts and probes.
    progress
        a bar over the runs.

    Returns
    -------
    SharpnessComparison
        One row per run, in the order of ``runs``.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError("runs must be a non-empty mapping {name: (model, loss_fn, data)}.")
    rows = []
    with Progress(len(runs), "compare runs", progress) as bar:
        for name, run in runs.items():
            if isinstance(run, Mapping):
                spec = dict(run)
            elif isinstance(run, (tuple, list)) and len(run) == 3:
                spec = {"model": run[0], "loss_fn": run[1], "data": run[2]}
            else:
                raise TypeError(f"runs[{name!r}] must be (model, loss_fn, data) or a mapping with those "
                                f"keys, got {type(run).__name__}.")
            missing = {"model", "data"} - set(spec)
            if missing:
                raise TypeError(f"runs[{name!r}] lacks {', '.join(sorted(missing))}.")
            model, loss_fn, data = spec.pop("model"), spec.pop("loss_fn", None), read_once(spec.pop("data"))
            params = spec.pop("params", None)
            unknown = set(spec) - {"forward", "batch_loss", "batch_size", "dtype"}
            if unknown:
                raise TypeError(f"runs[{name!r}] has unknown keys {sorted(unknown)}.")
            summary = summarize(HessianOperator(model, loss_fn, data, params, **spec), seed=seed)
            rows.append({
                "name": name, "loss": None, "lambda_max": summary.lambda_max, "trace": summary.trace,
                "negative_mass": summary.negative_mass,
                "epsilon_sharpness": epsilon_sharpness(model, loss_fn, data, epsilon, params, **spec).value,
                "adaptive_sharpness": adaptive_sharpness(model, loss_fn, data, rho, eta, params, seed=seed,
                                                         **spec).value,
            })
            fn = filter_normalized_sharpness(model, loss_fn, data, params, seed=seed, **spec)
            rows[-1]["filter_normalized_sharpness"] = fn.value
            rows[-1]["loss"] = fn.loss
            bar.update(1)
    return SharpnessComparison(rows=rows)
