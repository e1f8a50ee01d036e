"""Watch the curvature of a network while it trains: :class:`SharpnessMonitor`.

Math. Gradient descent ``θ ← θ - η ∇L(θ)`` on the quadratic model ``L(θ*+d) ≈ L* + ½ dᵀHd`` moves
each eigen-coordinate by ``c ← (1 - η λ) c``: it is stable iff ``λ_max(H) < 2/η`` (the step-size
limit of gradient descent on a quadratic; Nocedal & Wright 2006, sec. 3.3). With heavy-ball momentum β the
limit is ``(2 + 2β)/η``, with Nesterov's ``(2 + 2β)/((1 + 2β) η)``.
Cohen et al. (2021, "Gradient descent on neural networks typically occurs at the edge of
stability", ICLR) observed that full-batch GD drives ``λ_max`` up to ``2/η`` ("progressive
sharpening") and then hovers there ("edge of stability", EoS) while the loss keeps falling
non-monotonically. For Adam, Cohen et al. (2022, "Adaptive gradient methods at the edge of
stability", arXiv:2207.14484, sec. 3) show the same for the *preconditioned sharpness*
``λ_max(P⁻¹H)`` with ``P = (1 - β1^t) diag(sqrt(v̂_t) + ε)``, whose limit is
``(2 + 2β1) / ((1 - β1) η)`` (38/η for β1 = 0.9). ``P⁻¹H`` is not symmetric; we measure the
similar symmetric operator ``P^{-1/2} H P^{-1/2}`` (same eigenvalues), built as an operator
composition (:class:`DiagonalCongruence`), never densely. Parameter groups with different
learning rates, momenta or betas are handled the same way: group i's limit ``ℓ_i`` (see
:func:`stability_limit`) enters as ``S = diag(ℓ_0 / ℓ_i)`` folded into the congruence, so that
``λ_max(S^{1/2} H S^{1/2}) / ℓ_0`` is exact for groups whose Hessian blocks do not couple (then it
is the largest of the groups' own ratios) and the first-order estimate otherwise.

Every ``every`` steps the monitor builds a :class:`hesse.HessianOperator` at the current parameters
on a fixed measurement set, takes ``λ_max`` with :func:`hesse.eigsh` (Krylov-Schur Lanczos)
warm-started from the previous top eigenvector (``v0``): while the top eigenvector moves little
between checks, the start vector already lies almost in the wanted eigenspace and Lanczos converges
in a few products instead of a cold start's 20-40. Optional: the most negative eigenvalue
(``negative=True``; by Sylvester's law of inertia the congruence keeps the signs of H's
eigenvalues, so a negative value signals negative curvature of the loss itself), the trace
(XTrace) and a spectral density snapshot (SLQ).

Flags per record (``status`` is one of the first three), with ``ratio = λ_max / limit`` and the
band ``eos_band = (below, above)`` (a float means both): ``"stable"`` (``ratio < 1 - below``),
``"edge_of_stability"`` (``1 - below <= ratio <= 1 + above``), ``"unstable"``
(``ratio > 1 + above``), and, with
``negative=True``, ``"saddle_plateau"`` when ``||∇L|| <= saddle_grad_tol`` and
``λ_min < -saddle_curvature_rtol · |λ_max|`` (a small gradient next to a descent direction of
curvature, Dauphin et al. 2014). ``"not_converged"`` is added when an eigensolve did not reach its
tolerance (its value is then an estimate, shown with its residual).

Cost per check: one forward/backward for the operator plus the eigsh products (reported in
``num_matvecs``): typically 3-10 warm against 20-40 cold at ``tol=1e-4``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from hesse._progress import message
from hesse._result import Result
from hesse.distributed import is_main_process
from hesse.operators import CurvatureOperator, HessianOperator
from hesse.operators.composition import DiagonalCongruence
from hesse.spectrum import SpectralDensity, eigsh, spectral_density
from hesse.spectrum import trace as estimate_trace

from ._data import LossSpec, mode_warning_once, read_once
from .logging import SharpnessLog, load_saved_state, truncate_log

__all__ = ["SharpnessMonitor", "SharpnessRecord", "Measurements", "StabilityBands", "LogOptions",
           "DiagonalCongruence", "stability_limit", "sharpness_status"]

_STATE_FILE = "monitor_state.pt"

#: The operators a record names in ``operator``, by the optimizer kind of :func:`stability_limit`.
_OPERATOR_NAMES = {"adam-preconditioned": "P^-1/2 H P^-1/2", "scaled": "S^1/2 H S^1/2 (per-group limits)",
                   "hessian": "hessian"}


#: Checks per decade of ``schedule="log"``: steps ``round(10**(j/10))``, j = 0, 1, ... (1, 2, 3, 4, 5,
#: 6, 8, 10, 13, 16, 20, 25, 32, 40, 50, 63, 79, 100, ...), so early fast changes are sampled densely.
_LOG_STEPS_PER_DECADE = 10


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


def _on_log_schedule(step: int) -> bool:
    """Whether ``step`` is one of the steps ``round(10**(j/10))`` of ``schedule="log"``."""
    if step < 1:
        return False
    j = _LOG_STEPS_PER_DECADE * math.log10(step)
    return any(round(10 ** (i / _LOG_STEPS_PER_DECADE)) == step for i in (math.floor(j), math.ceil(j)))


def _checked_steps(at: Any) -> frozenset[int]:
    """``at`` as a set of non-negative ints (a clear error for anything else)."""
    if isinstance(at, (str, bytes)) or not hasattr(at, "__iter__"):
        raise TypeError(f"at must be a sequence of step numbers (e.g. [0, 10, 30]), got {type(at).__name__}.")
    steps = list(at)
    bad = [v for v in steps if not isinstance(v, int) or isinstance(v, bool) or v < 0]
    if bad or not steps:
        raise ValueError(f"at must list non-negative integer steps, got {steps!r}"
                         + (f" ({bad[0]!r} is not one)." if bad else " (empty)."))
    return frozenset(steps)


@dataclass
class Measurements:
    """What each check measures.

    ``k`` top eigenvalues (λ_max the first) to relative residual ``tol``; ``negative``: also the most
    negative eigenvalue (enables the saddle/plateau flag); ``trace``: XTrace with ``trace_matvecs``
    products; ``density``: an SLQ snapshot of ``density_probes`` x ``density_steps`` products;
    ``seed`` of start vectors and probes; ``max_matvecs`` caps each eigensolve (``None``: eigsh's
    default).

    Defaults: ``tol=1e-4`` puts λ_max within 1e-4 of itself, far finer than the edge-of-stability
    band, and lets a warm start converge in a few products; 48 XTrace products had the smallest
    error of the trace estimators on MLP Hessians (README benchmarks); 40 Lanczos steps resolve a
    density's outliers and bulk (Ghorbani et al. 2019 use 90 for ResNets; a monitor runs often).
    """

    k: int = 1
    negative: bool = False
    trace: bool = False
    density: bool = False
    tol: float = 1e-4
    trace_matvecs: int = 48
    density_probes: int = 1
    density_steps: int = 40
    seed: int = 0
    max_matvecs: int | None = None

    def __post_init__(self) -> None:
        for name in ("k", "trace_matvecs", "density_probes", "density_steps"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.tol, (int, float)) or isinstance(self.tol, bool) or not 0 < self.tol < 1:
            raise ValueError(f"tol must be a float in (0, 1), got {self.tol!r}.")
        self.tol = float(self.tol)
        self.negative, self.trace, self.density = bool(self.negative), bool(self.trace), bool(self.density)


@dataclass
class StabilityBands:
    """How a measurement is judged (module docs: flags).

    ``eos_band``: the edge-of-stability band as a fraction of the limit, symmetric (a float) or
    ``(below, above)``; Cohen et al. (2021) see λ_max hover *just above* 2/η, so e.g.
    ``(0.05, 0.25)`` fits full-batch GD; the default ``0.1`` is a symmetric 10% band.
    ``saddle_grad_tol`` and ``saddle_curvature_rtol``: the saddle/plateau flag's gradient norm and
    relative negative curvature (defaults ``1e-3``: negative curvature beyond a thousandth of
    λ_max is ten times the eigensolver's error at ``tol=1e-4``, so noise does not raise the flag).
    """

    eos_band: float | tuple[float, float] = 0.1
    saddle_grad_tol: float = 1e-3
    saddle_curvature_rtol: float = 1e-3

    def __post_init__(self) -> None:
        band = tuple(self.eos_band) if isinstance(self.eos_band, (tuple, list)) else (self.eos_band, self.eos_band)
        if len(band) != 2:
            raise ValueError(f"eos_band must be a float or a pair (below, above), got {self.eos_band!r}.")
        for val in band:
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not 0 < val < 1:
                raise ValueError(f"eos_band must be a float in (0, 1) or a pair of them, got {val!r}.")
        self.eos_band = (float(band[0]), float(band[1]))
        for name in ("saddle_grad_tol", "saddle_curvature_rtol"):
            val = getattr(self, name)
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not val >= 0:
                raise ValueError(f"{name} must be a nonnegative float, got {val!r}.")
            setattr(self, name, float(val))

    @property
    def below(self) -> float:
        return self.eos_band[0]  # type: ignore[index]

    @property
    def above(self) -> float:
        return self.eos_band[1]  # type: ignore[index]


@dataclass
class LogOptions:
    """Where records go: ``log_dir`` (``None``: memory only), ``resume`` a log there, ``progress`` lines."""

    log_dir: str | os.PathLike | None = None
    resume: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        if self.resume and self.log_dir is None:
            raise ValueError("resume=True needs log_dir (the directory of the log to continue).")
        self.log_dir = None if self.log_dir is None else os.fspath(self.log_dir)
        self.resume, self.progress = bool(self.resume), bool(self.progress)


_CONFIGS: dict[str, type] = {"measurements": Measurements, "bands": StabilityBands, "logging": LogOptions}


@dataclass(repr=False)
class SharpnessRecord(Result):
    """One measurement of :class:`SharpnessMonitor` (all plain numbers; see the module docs)."""

    step: int
    loss: float
    grad_norm: float
    lr: float
    stability_limit: float
    lambda_max: float
    sharpness_ratio: float
    status: str
    flags: list[str]
    operator: str
    num_matvecs: int
    converged: bool
    residual: float
    lambda_min: float | None = None
    trace: float | None = None
    top_eigenvalues: list[float] = field(default_factory=list)

    def __repr__(self) -> str:
        extra = "" if self.lambda_min is None else f", lambda_min={self.lambda_min:.4g}"
        return (f"SharpnessRecord(step={self.step}, loss={self.loss:.4g}, lambda_max={self.lambda_max:.4g}, "
                f"limit={self.stability_limit:.4g} (ratio {self.sharpness_ratio:.3f}), status={self.status!r}"
                f"{extra}, flags={self.flags}, num_matvecs={self.num_matvecs})")


def stability_limit(optimizer: torch.optim.Optimizer) -> tuple[float, float, str]:
    """``(limit, lr, kind)`` for ``optimizer``: the value λ_max (of H, or of P⁻¹H for Adam) must stay below.

    Each parameter group is a heavy-ball iteration ``θ ← θ - α g + β (θ - θ_prev)`` on the quadratic
    model, stable iff ``α λ < 2 + 2β`` (Polyak 1964; Goh 2017, "Why momentum really works", sec. 1):

    - SGD (``momentum`` μ, ``dampening`` τ): ``α = η(1 - τ)``, ``β = μ``, limit ``(2 + 2μ)/((1 - τ) η)``;
      with ``nesterov=True`` the limit is ``(2 + 2μ)/((1 + 2μ) η)`` (the look-ahead step adds
      ``ημ`` more of the gradient).
    - Adam/AdamW: ``α = η(1 - β1)`` on the preconditioned gradient, ``β = β1``, limit
      ``(2 + 2β1)/((1 - β1) η)`` for λ of ``P⁻¹H`` (Cohen et al. 2022).
    - Other optimizers: ``2/η`` with ``kind="gd-limit"`` (their dynamics are not modeled).

    The returned limit is the first group's; groups whose limits differ (learning rates, momenta,
    betas) are folded into the monitored operator instead (:class:`SharpnessMonitor`), so that
    ``λ_max / limit`` is the largest of the groups' ratios.

    Parameters
    ----------
    optimizer
        the ``torch.optim.Optimizer`` the training loop steps (the limit returned is its first
        parameter group's).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                        "pass the optimizer your training loop steps.")
    for i, group in enumerate(optimizer.param_groups):
        lr = float(group["lr"])
        if not math.isfinite(lr) or lr < 0 or (i == 0 and lr == 0):
            raise ValueError(f"the optimizer's learning rate must be positive and finite, got {lr!r} "
                             f"(param group {i}).")
    limit, kind = _group_limit(optimizer, optimizer.param_groups[0])
    if not math.isfinite(limit):
        raise ValueError("the optimizer's first param group never moves its parameters (dampening=1): "
                         "its stability limit is infinite; put a group that trains first.")
    return limit, float(optimizer.param_groups[0]["lr"]), kind


def _group_limit(optimizer: torch.optim.Optimizer, group: dict) -> tuple[float, str]:
    """``(limit, kind)`` of one param group (:func:`stability_limit`); ``inf`` for a group that never moves."""
    lr = float(group["lr"])
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1 = float(group["betas"][0])
        step = lr * (1 - beta1) / (2 + 2 * beta1)
        kind = "adam-preconditioned"
    elif isinstance(optimizer, torch.optim.SGD):
        mu = float(group.get("momentum", 0.0) or 0.0)
        if mu == 0:
            step, kind = lr / 2, "sgd"
        elif group.get("nesterov", False):
            step, kind = lr * (1 + 2 * mu) / (2 + 2 * mu), "sgd-nesterov"
        else:
            tau = float(group.get("dampening", 0.0) or 0.0)
            step, kind = lr * (1 - tau) / (2 + 2 * mu), "sgd-momentum"
    else:
        step, kind = lr / 2, "gd-limit"
    return (1 / step if step > 0 else math.inf), kind


def sharpness_status(ratio: float, bands: StabilityBands) -> str:
    """``"stable"``, ``"edge_of_stability"`` or ``"unstable"`` for ``ratio = λ_max / limit`` (module docs)."""
    if ratio > 1 + bands.above:
        return "unstable"
    if ratio >= 1 - bands.below:
        return "edge_of_stability"
    return "stable"


def _eigenvalue(op: CurvatureOperator, k: int, which: str, v0: torch.Tensor | None, seed: int,
                measurements: Measurements):
    """eigsh without its convergence warning: a record reports convergence in ``flags`` instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return eigsh(op, k=k, which=which, tol=measurements.tol, v0=v0, seed=seed,
                     max_matvecs=measurements.max_matvecs)


class SharpnessMonitor:
    """Measure λ_max (and optionally λ_min, trace, density) every ``every`` training steps.

    Parameters
    ----------
    model, loss_fn, data
        as for :class:`hesse.HessianOperator`; ``data`` is the fixed
        measurement set (one batch, a pair of tensors, or a DataLoader), the same every check.
    every
        measure every ``every`` calls of :meth:`step` (10 when neither ``at`` nor ``schedule`` is
        given).
    at
        instead of ``every``, the steps to measure at (``[0, 10, 30, 100]``): :meth:`step`
        measures when its count is in ``at``. Step 0 is before the first optimizer step; take it
        with ``monitor.measure(optimizer)`` before training.
    schedule
        instead of ``every``, ``"log"``: measure at the steps ``round(10**(j/10))`` (1, 2, 3, 4,
        5, 6, 8, 10, 13, ..., 79, 100, 126, ...), ten per decade, dense where early training
        changes fast.
    measurements
        :class:`Measurements`, what each check measures (``k``, ``negative``, ``trace``,
        ``density``, ``tol``, ``trace_matvecs``, ``density_probes``, ``density_steps``, ``seed``,
        ``max_matvecs``).
    bands
        :class:`StabilityBands`, how a check is judged (``eos_band``, ``saddle_grad_tol``,
        ``saddle_curvature_rtol``).
    logging
        :class:`LogOptions`, where records go. ``log_dir``: directory for
        ``sharpness.jsonl``, ``sharpness.csv``, ``density.jsonl`` (and TensorBoard scalars when
        installed), written by rank 0 only under ``torch.distributed``; ``None`` keeps records in
        memory only. ``resume``: continue the log in ``log_dir`` (records, step counter and
        warm-start vector are restored; steps already logged are not measured again); when resuming
        from a model checkpoint, save :meth:`state_dict` with it and call :meth:`load_state_dict`
        after construction: the log is cut back to the checkpoint's step. ``progress``: one line
        per check on stderr.
    params
        which parameters (as for HessianOperator).
    forward, batch_loss, batch_size, dtype, eval_mode
        as for :class:`hesse.HessianOperator`: the outputs
        ``forward(model, inputs)`` (e.g. ``lambda m, b: m(**b).logits``), or instead of ``loss_fn``
        the loss of a model that computes its own (``batch_loss(model, batch)``, batches weighted
        by ``batch_size(batch)``); ``dtype``: the precision the Hessian is computed in.
    **options
        any field of the three records above as a keyword (``k=3, negative=True,
        log_dir="runs"``); it overrides the same field of a record passed.

    Notes
    -----
    Use ``monitor.step(optimizer)`` after each ``optimizer.step()``; ``monitor.measure(optimizer)``
    measures now (e.g. before training, at step 0).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Any = None, data: Any = None, every: int | None = None, *,
                 at: Any = None, schedule: str | None = None,
                 measurements: Measurements | None = None, bands: StabilityBands | None = None,
                 logging: LogOptions | None = None, params: Any = None, forward: Any = None,
                 batch_loss: Any = None, batch_size: Any = None, dtype: torch.dtype | None = None,
                 eval_mode: bool = True, **options: Any):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        self.objective = LossSpec(loss_fn, forward, batch_loss, batch_size, dtype, eval_mode)
        if data is None:
            raise TypeError("data is required: the fixed measurement set (a batch, a pair of tensors or a "
                            "DataLoader), the same at every check.")
        given = [name for name, value in (("every", every), ("at", at), ("schedule", schedule)) if value is not None]
        if len(given) > 1:
            raise ValueError(f"give one of every, at and schedule (they say when to measure), got {' and '.join(given)}.")
        if every is not None:
            _positive_int("every", every)
        if schedule is not None and schedule != "log":
            raise ValueError(f"schedule must be 'log', got {schedule!r}; for evenly spaced checks pass every=N.")
        self.at: frozenset[int] | None = None if at is None else _checked_steps(at)
        self.schedule = schedule
        every = 10 if not given else every
        configs = _with_options({"measurements": measurements, "bands": bands, "logging": logging}, options)
        self.measurements: Measurements = configs["measurements"]
        self.bands: StabilityBands = configs["bands"]
        self.logging: LogOptions = configs["logging"]
        self.model, self.loss_fn, self.data, self.params = model, loss_fn, read_once(data), params
        self.every: int | None = every
        self._restored_steps: frozenset[int] = frozenset()  # steps measured before a resume
        self._mode_warning: dict[str, bool] = {}
        self.records: list[SharpnessRecord] = []
        self.densities: list[tuple[int, Any]] = []
        self.num_steps = 0  # calls of step() so far (= optimizer steps taken)
        self._v_top: torch.Tensor | None = None
        self._v_bottom: torch.Tensor | None = None
        self._operator_kind: str | None = None
        self.log_dir: str | None = self.logging.log_dir  # a str after LogOptions
        self.log: SharpnessLog | None = None
        if self.log_dir is not None:
            if self.logging.resume:
                self._restore(self.log_dir)
            if is_main_process():  # under torch.distributed every rank computes, rank 0 writes
                self.log = SharpnessLog(self.log_dir, resume=self.logging.resume)

    # ------------------------------------------------------------------ public
    @property
    def last(self) -> SharpnessRecord | None:
        return self.records[-1] if self.records else None

    def step(self, optimizer: torch.optim.Optimizer) -> SharpnessRecord | None:
        """Count one optimizer step; measure when the count is due (``every``, ``at`` or ``schedule``).

        Returns the record or None. A step already in a resumed log is not measured again.
        """
        stability_limit(optimizer)  # validate early, every call
        self.num_steps += 1
        if not self._due(self.num_steps):
            return None
        if self.records and self.num_steps <= self.records[-1].step:
            return None  # a resumed run replaying steps it has logged
        return self.measure(optimizer, step=self.num_steps)

    def measure(self, optimizer: torch.optim.Optimizer | None = None, step: int | None = None,
                lr: float | None = None) -> SharpnessRecord | None:
        """Measure at the current parameters now. ``lr`` instead of ``optimizer`` gives the GD limit 2/lr.

        ``step`` labels the record (default: the number of :meth:`step` calls so far); when measuring
        at chosen points of your own loop, pass it (``measure(opt, step=s)``). Records must come in
        increasing steps: a step at or before the last record's is not measured and returns None,
        silently for a step a resumed log already holds and with a ``UserWarning`` otherwise.
        """
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 0):
            raise ValueError(f"step must be a non-negative int, got {step!r}.")
        explicit = step is not None
        step = self.num_steps if step is None else int(step)
        if self.records and step <= self.records[-1].step:
            if step not in self._restored_steps:
                hint = ("" if explicit else " measure() without step= labels a record with the number of "
                        "step() calls so far; pass step= when measuring at points of your own loop.")
                warnings.warn(f"SharpnessMonitor.measure: nothing measured, step {step} is not after the last "
                              f"record's step {self.records[-1].step}.{hint}", UserWarning, stacklevel=2)
            return None
        with mode_warning_once(self._mode_warning):  # once per monitor, not once per check
            return self._measure(optimizer, step, lr)

    def _measure(self, optimizer: torch.optim.Optimizer | None, step: int, lr: float | None) -> SharpnessRecord:
        limit, lr, kind = self._limit(optimizer, lr)
        H = self._hessian(step)
        loss, grad_norm = float(H.loss), float(H.gradient.norm())
        if not math.isfinite(loss):
            raise ValueError(f"the loss on the measurement data is {loss} at step {step}: training has "
                             "diverged (lower the learning rate) or the data contains NaN/inf.")
        op = self._effective_operator(H, optimizer, kind)
        if kind != self._operator_kind:
            self._v_top = self._v_bottom = None  # a different operator: no warm start across kinds
            self._operator_kind = kind
        record = self._eigen_record(op, step)
        record.update(self._extras(op, step))
        ratio = record["lambda_max"] / limit
        status = sharpness_status(ratio, self.bands)
        flags = [status] + self._extra_flags(record, grad_norm)
        name = "hessian" if op is H else "adam-preconditioned" if kind == "adam-preconditioned" else "scaled"
        result = SharpnessRecord(step=step, loss=loss, grad_norm=grad_norm, lr=lr, stability_limit=limit,
                                 sharpness_ratio=ratio, status=status, flags=flags,
                                 operator=_OPERATOR_NAMES[name], num_matvecs=op.num_matvecs, **record)
        self._write(result)
        return result

    def state_dict(self) -> dict:
        """What a resumed monitor needs besides its log: the step counter and the warm-start vectors.

        Plain tensors, ints and strings (loadable with ``torch.load(weights_only=True)``); save it
        with the model's checkpoint so that both describe the same step.
        """
        return {"num_steps": self.num_steps, "last_step": self.records[-1].step if self.records else None,
                "operator_kind": self._operator_kind,
                "v_top": None if self._v_top is None else self._v_top.detach().cpu(),
                "v_bottom": None if self._v_bottom is None else self._v_bottom.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; records measured after ``state["last_step"]`` are dropped.

        With a ``log_dir`` the log files are cut back the same way (rank 0), so a run resumed from a
        model checkpoint saved together with this state writes the log an uninterrupted run writes,
        even when the interruption fell between a log write and the checkpoint.
        """
        last = state.get("last_step")
        cut = -1 if last is None else int(last)
        self.records = [r for r in self.records if r.step <= cut]
        self.densities = [(s, d) for s, d in self.densities if s <= cut]
        if self.log_dir is not None and is_main_process():
            reopen = self.log is not None
            if self.log is not None:
                self.log.close()  # its CSV handle would keep appending to the replaced file
            truncate_log(self.log_dir, cut)
            if reopen:
                self.log = SharpnessLog(self.log_dir, resume=True)
        self.num_steps = int(state["num_steps"])
        self._operator_kind = state.get("operator_kind")
        device = None
        for key, attr in (("v_top", "_v_top"), ("v_bottom", "_v_bottom")):
            v = state.get(key)
            if v is not None:
                device = device or next((p.device for p in self.model.parameters()), None)
                v = v.to(device)
            setattr(self, attr, v)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()

    def __enter__(self) -> SharpnessMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        m = self.measurements
        when = (f"at={sorted(self.at)}" if self.at is not None else
                f"schedule={self.schedule!r}" if self.schedule is not None else f"every={self.every}")
        return (f"SharpnessMonitor({when}, k={m.k}, negative={m.negative}, "
                f"trace={m.trace}, density={m.density}, records={len(self.records)}, "
                f"log_dir={self.log_dir!r})")

    # ------------------------------------------------------------------ internals
    def _due(self, step: int) -> bool:
        """Whether :meth:`step` measures at ``step`` (the ``every`` / ``at`` / ``schedule`` option)."""
        if self.at is not None:
            return step in self.at
        if self.schedule == "log":
            return _on_log_schedule(step)
        return self.every is not None and step % self.every == 0

    def _limit(self, optimizer: torch.optim.Optimizer | None, lr: float | None) -> tuple[float, float, str]:
        """``(limit, lr, kind)`` from the optimizer, or the GD limit ``2/lr`` without one."""
        if optimizer is None:
            if lr is None:
                raise ValueError("measure() needs the optimizer (or lr=... for plain gradient descent).")
            if not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
                raise ValueError(f"lr must be a positive float, got {lr!r}.")
            return 2 / float(lr), float(lr), "sgd"
        limit, lr, kind = stability_limit(optimizer)
        if kind == "adam-preconditioned" and not any("exp_avg_sq" in st for st in optimizer.state.values()):
            return 2 / lr, lr, "gd-limit"  # before Adam's first step there is no preconditioner yet
        return limit, lr, kind

    def _hessian(self, step: int) -> HessianOperator:
        """The Hessian at the current parameters; a non-finite loss or gradient is called divergence."""
        try:
            return HessianOperator(self.model, self.loss_fn, self.data, self.params, **self.objective.operator_options())
        except ValueError as err:
            if "not finite" not in str(err):
                raise
            raise ValueError(f"at step {step} {err} Training has likely diverged: lower the learning rate "
                             f"(gradient descent is stable for lambda_max < 2/lr).") from err

    def _eigen_record(self, op: CurvatureOperator, step: int) -> dict[str, Any]:
        """λ_max and the top ``k`` (and λ_min with ``negative``), warm-started from the last check."""
        m = self.measurements
        top = _eigenvalue(op, min(m.k, op.shape[0]), "largest", self._v_top, m.seed, m)
        self._v_top = top.vectors[:, 0].detach().clone()
        out: dict[str, Any] = {"lambda_max": float(top.values[0]), "converged": bool(top.converged.all()),
                               "residual": float(top.residuals.max()),
                               "top_eigenvalues": [float(v) for v in top.values], "lambda_min": None}
        if m.negative:
            # another seed: a cold start of the bottom solve should not repeat the top one's vector
            bottom = _eigenvalue(op, 1, "smallest", self._v_bottom, m.seed + 1, m)
            self._v_bottom = bottom.vectors[:, 0].detach().clone()
            out["lambda_min"] = float(bottom.values[0])
            out["converged"] = out["converged"] and bool(bottom.converged.all())
            out["residual"] = max(out["residual"], float(bottom.residuals.max()))
        return out

    def _extras(self, op: CurvatureOperator, step: int) -> dict[str, Any]:
        """The optional trace (into the record) and density snapshot (into ``densities`` and the log)."""
        m = self.measurements
        trace_value = None
        if m.trace:
            trace_value = float(estimate_trace(op, num_matvecs=m.trace_matvecs, seed=m.seed).value)
        if m.density:
            dens = spectral_density(op, num_probes=m.density_probes, num_steps=min(m.density_steps, op.shape[0]),
                                    seed=m.seed)
            self.densities.append((step, dens))
            if self.log is not None:
                self.log.write_density(step, dens)
        return {"trace": trace_value}

    def _extra_flags(self, record: dict[str, Any], grad_norm: float) -> list[str]:
        """``saddle_plateau`` (small gradient next to negative curvature) and ``not_converged``."""
        flags = []
        lambda_min, lambda_max = record["lambda_min"], record["lambda_max"]
        if (lambda_min is not None and grad_norm <= self.bands.saddle_grad_tol
                and lambda_min < -self.bands.saddle_curvature_rtol * abs(lambda_max)):
            flags.append("saddle_plateau")
        if not record["converged"]:
            flags.append("not_converged")
        return flags

    def _write(self, record: SharpnessRecord) -> None:
        """Keep the record, append it to the log (with the resume state), print its line."""
        self.records.append(record)
        if self.log is not None:
            self.log.write(record.as_dict())
            self._save_state()
        message(f"[monitor] step {record.step}: loss {record.loss:.4f}  lambda_max {record.lambda_max:.4g}  "
                f"limit {record.stability_limit:.4g} ({record.sharpness_ratio:.2f})  {record.status}  "
                f"[{record.num_matvecs} products]", self.logging.progress)

    def _effective_operator(self, H: HessianOperator, optimizer, kind: str) -> CurvatureOperator:
        """H itself, or D^{1/2} H D^{1/2} for Adam / per-group learning rates (module docs)."""
        if optimizer is None:
            return H
        limit0 = _group_limit(optimizer, optimizer.param_groups[0])[0]
        named = dict(self.model.named_parameters())
        owner: dict[int, dict] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                owner[id(p)] = group
        pieces, uniform = [], True
        for name in H.param_names:
            p = named[name]
            group = owner.get(id(p))
            if group is None:
                pieces.append(torch.zeros(p.numel(), dtype=H.dtype, device=H.device))
                uniform = False  # not trained by this optimizer: it does not move
                continue
            # the group's limit in units of the first group's: its coordinates count limit0/limit_i
            # times as much, so λ_max of the scaled operator is judged against one limit
            scale = limit0 / _group_limit(optimizer, group)[0]
            if kind == "adam-preconditioned":
                state = optimizer.state.get(p, {})
                if "exp_avg_sq" not in state:  # never updated (no gradient yet): it does not move
                    d = torch.zeros(p.numel(), dtype=H.dtype, device=H.device)
                else:
                    t = float(state["step"])
                    beta1, beta2 = (float(b) for b in group["betas"])
                    v_hat = state["exp_avg_sq"].detach().reshape(-1).to(H.dtype) / (1 - beta2**t)
                    P = (1 - beta1**t) * (v_hat.sqrt() + float(group["eps"]))
                    d = scale / P
                uniform = False
            else:
                d = torch.full((p.numel(),), scale, dtype=H.dtype, device=H.device)
                uniform = uniform and scale == 1.0
            pieces.append(d)
        if uniform:
            return H
        return DiagonalCongruence(H, torch.cat(pieces))

    def _save_state(self) -> None:
        if self.log_dir is None:
            return
        path = os.path.join(self.log_dir, _STATE_FILE)
        tmp = path + ".tmp"
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)  # atomic: a crash leaves the old or the new state

    def _restore(self, log_dir: str) -> None:
        """Records, step counter and warm-start vectors of the log in ``log_dir`` (nothing there: a fresh start)."""
        if os.path.exists(log_dir) and not os.path.isdir(log_dir):
            raise ValueError(f"cannot resume: the log folder {log_dir!r} is a file, not a folder written by "
                             "SharpnessMonitor; move it away or choose another log_dir.")
        path = os.path.join(log_dir, "sharpness.jsonl")
        if not os.path.exists(path):
            return
        self.records.extend(_read_records(path))
        state_path = os.path.join(log_dir, _STATE_FILE)
        if os.path.exists(state_path):
            state = load_saved_state(state_path, "the monitor's state")
            _check_monitor_state(state, state_path)
            if self.records and state["last_step"] == self.records[-1].step:
                self.num_steps = int(state["num_steps"])
                self._operator_kind = state["operator_kind"]
                self._v_top, self._v_bottom = state["v_top"], state["v_bottom"]
            elif self.records:  # the state lags or leads the log (an interruption between the two)
                self.num_steps = self.records[-1].step
        elif self.records:
            self.num_steps = self.records[-1].step
        self.densities.extend(_read_densities(os.path.join(log_dir, "density.jsonl")))
        self._restored_steps = frozenset(r.step for r in self.records)


def _check_monitor_state(state: Any, path: str) -> None:
    """:meth:`SharpnessMonitor.state_dict` as saved: the keys, integer steps, vectors or None."""
    keys = ("num_steps", "last_step", "operator_kind", "v_top", "v_bottom")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"cannot resume: {path!r} is not a monitor state (expected the keys {', '.join(keys)}, "
                         f"got {got}); delete it to resume from the log alone.")
    if not _is_int(state["num_steps"]) or state["num_steps"] < 0 or not (
            state["last_step"] is None or (_is_int(state["last_step"]) and state["last_step"] >= 0)):
        raise ValueError(f"cannot resume: {path!r} has num_steps {state['num_steps']!r} / last_step "
                         f"{state['last_step']!r}, not non-negative integers; delete it to resume from the log alone.")
    for key in ("v_top", "v_bottom"):
        v = state[key]
        if v is not None and not (isinstance(v, torch.Tensor) and v.ndim == 1 and v.is_floating_point()
                                  and bool(torch.isfinite(v).all())):
            raise ValueError(f"cannot resume: {path!r} holds {key} that is not a finite 1-D float tensor; "
                             "delete it to resume from the log alone.")


#: Fields of a logged record that must be finite numbers for a resumed run to judge its sharpness.
_FINITE_FIELDS = ("loss", "grad_norm", "lr", "stability_limit", "lambda_max", "sharpness_ratio")
_STATUSES = ("stable", "edge_of_stability", "unstable")


def _damaged(path: str, lineno: int, what: str) -> ValueError:
    return ValueError(f"cannot resume: {path!r} line {lineno} {what}; the log is damaged. Delete the log folder "
                      "to start afresh, or restore the file from a copy.")


def _json_lines(path: str):
    """``(lineno, value)`` of each JSON line; a torn *last* line (an interrupted write) is skipped."""
    with open(path) as fh:
        lines = fh.read().split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield i + 1, json.loads(line)
        except json.JSONDecodeError:
            if i == last:
                return
            raise _damaged(path, i + 1, "is not JSON") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_records(path: str) -> list[SharpnessRecord]:
    """The records of a ``sharpness.jsonl``, each checked: a damaged log is refused, line by line."""
    fields = {f.name for f in dataclasses.fields(SharpnessRecord)}
    required = {f.name for f in dataclasses.fields(SharpnessRecord)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    out: list[SharpnessRecord] = []
    for lineno, rec in _json_lines(path):
        if not isinstance(rec, dict):
            raise _damaged(path, lineno, f"is a JSON {type(rec).__name__}, not a record (an object)")
        missing = sorted(required - set(rec))
        if missing:
            raise _damaged(path, lineno, f"lacks {', '.join(missing)}")
        step = rec["step"]
        if not _is_int(step) or step < 0:
            raise _damaged(path, lineno, f"has step {step!r}, not a non-negative integer")
        if out and step <= out[-1].step:
            raise _damaged(path, lineno, f"has step {step} after step {out[-1].step} (steps must increase)")
        for name in _FINITE_FIELDS:
            if not _is_finite_number(rec[name]):
                raise _damaged(path, lineno, f"has {name} = {rec[name]!r}, not a finite number")
        for name in ("lambda_min", "trace"):
            if rec.get(name) is not None and not _is_finite_number(rec[name]):
                raise _damaged(path, lineno, f"has {name} = {rec[name]!r}, not a finite number")
        if rec["status"] not in _STATUSES:
            raise _damaged(path, lineno, f"has status {rec['status']!r}, not one of {', '.join(_STATUSES)}")
        if not isinstance(rec["flags"], list) or not _is_int(rec["num_matvecs"]):
            raise _damaged(path, lineno, "has flags that are not a list or num_matvecs that is not an integer")
        out.append(SharpnessRecord(**{k: v for k, v in rec.items() if k in fields}))
    return out


def _read_densities(path: str) -> list[tuple[int, SpectralDensity]]:
    """The ``(step, density)`` snapshots of a ``density.jsonl`` (a torn last line is skipped)."""
    out: list[tuple[int, SpectralDensity]] = []
    if not os.path.exists(path):
        return out
    for lineno, e in _json_lines(path):
        try:
            _check_density_entry(e)
        except (TypeError, ValueError, KeyError) as err:
            raise _damaged(path, lineno, f"is not a density snapshot ({err})") from None
        nodes = torch.tensor(e["nodes"], dtype=torch.float64)
        dens = SpectralDensity(torch.tensor(e["grid"], dtype=torch.float64),
                               torch.tensor(e["density"], dtype=torch.float64),
                               torch.full((len(e["grid"]),), float("nan"), dtype=torch.float64),
                               nodes, torch.tensor(e["weights"], dtype=torch.float64),
                               float(e["sigma"]), 0, nodes.shape[0], nodes.shape[1])
        out.append((int(e["step"]), dens))
    return out


def _check_density_entry(e: Any) -> None:
    """A ``density.jsonl`` entry: integer step, equal-length finite grid and density, nodes and
    weights of one shape (probes x Lanczos steps), finite positive sigma."""
    if not isinstance(e, dict):
        raise TypeError(f"a JSON {type(e).__name__}, not an object")
    missing = sorted({"step", "grid", "density", "nodes", "weights", "sigma"} - set(e))
    if missing:
        raise ValueError(f"lacks {', '.join(missing)}")
    if not _is_int(e["step"]) or e["step"] < 0:
        raise ValueError(f"step {e['step']!r} is not a non-negative integer")
    grid, dens = torch.tensor(e["grid"], dtype=torch.float64), torch.tensor(e["density"], dtype=torch.float64)
    nodes, weights = torch.tensor(e["nodes"], dtype=torch.float64), torch.tensor(e["weights"], dtype=torch.float64)
    if grid.ndim != 1 or grid.shape != dens.shape or grid.numel() < 2:
        raise ValueError(f"grid {tuple(grid.shape)} and density {tuple(dens.shape)} are not two equal 1-D lists")
    if nodes.ndim != 2 or nodes.shape != weights.shape:
        raise ValueError(f"nodes {tuple(nodes.shape)} and weights {tuple(weights.shape)} are not two equal 2-D lists")
    if not (bool(torch.isfinite(grid).all()) and bool(torch.isfinite(dens).all()) and _is_finite_number(e["sigma"])
            and e["sigma"] > 0):
        raise ValueError("grid, density or sigma is not finite")


def _with_options(configs: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The three config records, each defaulted when ``None``, with ``options`` set on their fields."""
    owner = {f.name: key for key, cls in _CONFIGS.items() for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(owner))
    if unknown:
        raise TypeError(f"SharpnessMonitor got unexpected keyword(s) {', '.join(unknown)}; the options are "
                        f"{', '.join(sorted(owner))} (fields of Measurements, StabilityBands, LogOptions).")
    out = {}
    for key, cls in _CONFIGS.items():
        given = configs[key]
        if given is not None and not isinstance(given, cls):
            raise TypeError(f"{key} must be a {cls.__name__}, got {type(given).__name__}.")
        mine = {name: value for name, value in options.items() if owner[name] == key}
        base: Any = given if given is not None else cls()
        out[key] = dataclasses.replace(base, **mine) if mine else base
    return out
