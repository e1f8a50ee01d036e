"""Result record of :func:`hesse.minimize` / :func:`hesse.least_squares`, its history, and the
honest estimate of the convergence order from the tail of the error sequence.

Status codes (``OptimizeResult.status``):

====  ==========================================================================================
 0    converged to a minimum: ``||g|| <= gtol`` and the smallest Hessian eigenvalue is not negative
 1    ``max_iter`` reached
 2    ``max_time`` reached
 3    stopped by ``ftol`` or ``xtol`` (progress stalled) while ``||g|| > gtol``
 4    stopped at a saddle point or maximum: ``||g|| <= gtol`` but negative curvature
 5    a NaN/Inf could not be avoided by shrinking the step; ``x`` is the last finite iterate
 6    line search or subproblem failure (no acceptable step; usually rounding at the limit of
      the attainable accuracy, or a direction that is not a descent direction)
 7    stopped by the callback
 8    ``f`` looks unbounded below: it kept decreasing while ``f`` fell below ``-1e20 max(1, |f(x0)|)``
      or ``||x||`` grew past ``1e8 (1 + ||x0||)``
 9    ``||g|| <= gtol`` but ``f`` changes along a random direction at ``x`` where the autograd
      gradient says it does not: part of ``f`` is not connected to ``x`` (``.item()``,
      ``.detach()``, ``torch.tensor(...)``, NumPy), so ``x`` is not a verified critical point
====  ==========================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hesse._result import Result

CONVERGED, MAX_ITER, MAX_TIME, STALLED, SADDLE, NONFINITE, STEP_FAILURE, CALLBACK, UNBOUNDED, GRADIENT_MISMATCH = range(10)

HISTORY_MAX_ENTRIES = 10_000
"""An :class:`OptimizeHistory` keeps at most this many entries (about 0.5 MB of numbers, plus the
iterates when kept): past it, every other entry is dropped and only every ``stride``-th iteration
is recorded from then on, so a run of any length keeps a bounded, evenly spaced record."""

STATUS_NAMES = {
    CONVERGED: "converged to a minimum",
    MAX_ITER: "maximum number of iterations reached",
    MAX_TIME: "maximum time reached",
    STALLED: "progress stalled (ftol/xtol) before the gradient test held",
    SADDLE: "stopped at a saddle point or maximum (negative curvature)",
    NONFINITE: "non-finite values could not be avoided",
    STEP_FAILURE: "no acceptable step found",
    CALLBACK: "stopped by the callback",
    UNBOUNDED: "unbounded: f appears to decrease without bound",
    GRADIENT_MISMATCH: "the gradient does not match f",
}


@dataclass(repr=False)
class OptimizeHistory(Result):
    """Per-iteration record (entry 0 is the starting point), a :class:`hesse._result.Result`.

    ``iterates`` holds copies of ``x`` (CPU, detached) when ``n <= 10_000`` and is empty otherwise
    (``iterates_kept=False``) to keep memory bounded at large ``n``. ``iterations[i]`` is the
    iteration of entry ``i``: consecutive for runs of up to :data:`HISTORY_MAX_ENTRIES`
    iterations; a longer run keeps every ``stride``-th iteration (``stride`` doubles each time the
    record fills up) and always its latest one, so memory stays bounded however long it runs.
    """

    values: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    step_sizes: list[float] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    iterates: list[torch.Tensor] = field(default_factory=list)
    iterates_kept: bool = True
    iterations: list[int] = field(default_factory=list)
    stride: int = 1

    def append(self, iteration: int, value: float, grad_norm: float, step_size: float,
               evaluations: int, x: torch.Tensor | None = None) -> None:
        """Record ``iteration``. The latest entry is always the latest iteration; an earlier
        entry whose iteration is not a multiple of ``stride`` is replaced by the next one."""
        fields: list[list] = [self.values, self.grad_norms, self.step_sizes, self.evaluations, self.iterations]
        if self.iterates_kept:
            fields.append(self.iterates)
        if self.iterations and self.iterations[-1] % self.stride:
            for f in fields:
                f.pop()
        self.values.append(value)
        self.grad_norms.append(grad_norm)
        self.step_sizes.append(step_size)
        self.evaluations.append(evaluations)
        self.iterations.append(iteration)
        if self.iterates_kept and x is not None:
            self.iterates.append(x.detach().to("cpu", copy=True))
        if len(self.iterations) > HISTORY_MAX_ENTRIES:
            self.stride *= 2
            keep = [i for i, k in enumerate(self.iterations) if k % self.stride == 0 or i == len(self.iterations) - 1]
            for f in fields:
                f[:] = [f[i] for i in keep]

    def __repr__(self) -> str:
        return (
            f"OptimizeHistory({len(self.values)} entries, f: {self.values[0]:.4g} -> "
            f"{self.values[-1]:.4g}, ||g||: {self.grad_norms[0]:.3g} -> {self.grad_norms[-1]:.3g})"
            if self.values
            else "OptimizeHistory(empty)"
        )


def estimate_convergence_order(errors: list[float], floor: float | None = None) -> str:
    """Classify the convergence of a positive error sequence ``e_k -> 0`` from its tail.

    With ``q_k = log(e_{k+1}/e_k) / log(e_k/e_{k-1})`` (the empirical order, Nocedal & Wright
    2006, Sec. 2.2 / App. A.2) and ``r_k = e_{k+1}/e_k``:

    * ``"quadratic"``: the median of the last (up to 3) ``q_k`` is >= 1.8;
    * ``"superlinear"``: median ``q_k`` >= 1.2, or the last three ratios ``r_k`` each fall by 10% or
      more and end below 0.1;
    * ``"linear"``: the last ratios are stable, within a factor of 2, and below 1;
    * ``"unknown"``: fewer than 4 usable errors above the rounding floor, or none of the above.

    Errors at or below ``floor`` (default ``1e-13 * max(e)``, the rounding level in float64) are
    dropped: they measure rounding, not the method.
    """
    e = [float(v) for v in errors if v is not None and math.isfinite(v) and v > 0]
    if len(e) < 4:
        return "unknown"
    floor = floor if floor is not None else 1e-13 * max(e)
    tail = [v for v in e if v > floor]
    # only the part where the error actually decreases towards the end
    while len(tail) >= 2 and tail[-1] >= tail[-2]:
        tail.pop()
    if len(tail) < 4:
        return "unknown"
    tail = tail[-8:]
    ratios = [tail[i + 1] / tail[i] for i in range(len(tail) - 1)]
    orders = []
    for i in range(1, len(tail) - 1):
        a, b = math.log(tail[i + 1] / tail[i]), math.log(tail[i] / tail[i - 1])
        if b < 0 and a < 0:
            orders.append(a / b)
    last_orders = sorted(orders[-3:])
    if last_orders:
        median = last_orders[len(last_orders) // 2]
        if median >= 1.8:
            return "quadratic"
        if median >= 1.2:
            return "superlinear"
    last = ratios[-3:]
    if len(last) >= 3 and last[-1] < 0.1 and all(b < 0.9 * a for a, b in zip(last[:-1], last[1:])):
        return "superlinear"
    if len(last) >= 3 and all(r < 1 for r in last) and max(last) <= 2 * min(last):
        return "linear"
    return "unknown"


@dataclass(repr=False)
class OptimizeResult(Result):
    """Outcome of a minimization, with the fields of ``scipy.optimize.OptimizeResult``.

    ``x`` the solution, ``fun`` and ``jac`` the value and gradient there (``grad_norm`` its
    2-norm), ``hess`` the dense Hessian at ``x`` when the method formed it (else None),
    ``hess_inv`` the ``n x n`` inverse-Hessian approximation of ``bfgs``/``dfp`` at ``x`` (over
    the flattened ``x``, as scipy's BFGS returns it; else None).
    ``success`` is True only when the gradient test held AND the curvature at ``x`` is not
    negative (``min_eigenvalue``, checked by the method's own Hessian, a dense ``eigvalsh`` for
    ``n <= 500`` or Lanczos otherwise). ``status``/``message`` say what happened and what to do.
    Counts, as scipy's: ``nit`` iterations, ``nfev`` values, ``njev`` gradients (Jacobians for
    :func:`hesse.least_squares`), ``nhev`` dense Hessians; and ``num_matvecs`` Hessian-vector
    products. A fused value+gradient counts once in ``nfev`` and once in ``njev``. With
    ``bounds=``, ``active_mask`` marks each variable ``-1``/``1`` at its lower/upper bound and
    ``0`` free (as scipy's ``least_squares`` reports it; see
    :meth:`hesse.optimize.bounds.BoxBounds.active_mask`); None for unconstrained runs. Read as a
    mapping too (``res["x"]``, ``res.keys()``), as scipy's.
    """

    x: torch.Tensor
    fun: float
    jac: torch.Tensor | None
    grad_norm: float
    nit: int
    nfev: int
    njev: int
    nhev: int
    num_matvecs: int
    success: bool
    status: int
    message: str
    method: str
    hess: torch.Tensor | None = None
    hess_inv: torch.Tensor | None = None
    min_eigenvalue: float | None = None
    curvature_check: str = "not checked"
    wall_time: float = 0.0
    history: OptimizeHistory | None = None
    active_mask: torch.Tensor | None = None

    @property
    def convergence_order(self) -> str:
        """``"linear"``, ``"superlinear"``, ``"quadratic"`` or ``"unknown"``, estimated from the
        tail of the gradient-norm sequence (proportional to the error ``||x_k - x*||`` near a
        nondegenerate minimum); see :func:`estimate_convergence_order`."""
        if self.history is None or len(self.history.grad_norms) < 4 or self.history.stride > 1:
            return "unknown"  # a thinned record has no consecutive tail to read the order from
        return estimate_convergence_order(self.history.grad_norms)
