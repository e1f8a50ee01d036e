"""Watch the curvature of a network while it trains: :class:`SharpnessMonitor`.

Math. Gradient descent ``θ ← θ - η ∇L(θ)`` on the quadratic model ``L(θ*+d) ≈ L* + ½ dᵀHd`` moves
each eigen-coordinate by ``c ← (1 - η λ) c``: it is stable iff ``λ_max(H) < 2/η`` (the step-size
limit of gradient descent on a quadratic; Nocedal & Wright 2006, sec. 3.3). With heavy-ball momentum β the limit is ``(2 + 2β)/η``.
Cohen et al. (2021, "Gradient descent on neural networks typically occurs at the edge of
stability", ICLR) observed that full-batch GD drives ``λ_max`` up to ``2/η`` ("progressive
sharpening") and then hovers there ("edge of stability", EoS) while the loss keeps falling
non-monotonically. For Adam, Cohen et al. (2022, "Adaptive gradient methods at the edge of
stability", arXiv:2207.14484, sec. 3) show the same for the *preconditioned sharpness*
``λ_max(P⁻¹H)`` with ``P = (1 - β1^t) diag(sqrt(v̂_t) + ε)``, whose limit is
``(2 + 2β1) / ((1 - β1) η)`` (38/η for β1 = 0.9). ``P⁻¹H`` is not symmetric; we measure the
similar symmetric operator ``P^{-1/2} H P^{-1/2}`` (same eigenvalues), built as an operator
composition (:class:`DiagonalCongruence`), never densely. Parameter groups with different
learning rates are handled the same way (``S = diag(η_i / η_0)`` folded into the congruence).

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

from ._data import LossSpec, read_once
from .logging import SharpnessLog, read_log, truncate_log

__all__ = ["SharpnessMonitor", "SharpnessRecord", "Measurements", "StabilityBands", "LogOptions",
           "DiagonalCongruence", "stability_limit", "sharpness_status"]

_STATE_FILE = "monitor_state.pt"

#: The operators a record names in ``operator``, by the optimizer kind of :func:`stability_limit`.
_OPERATOR_NAMES = {"adam-preconditioned": "P^-1/2 H P^-1/2", "scaled": "S^1/2 H S^1/2 (per-group lr)",
                   "hessian": "hessian"}


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")


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

    SGD: ``(2 + 2β)/η`` (β = momentum, 0 for plain GD; Nesterov treated the same). Adam/AdamW:
    ``(2 + 2β1)/((1 - β1) η)`` (Cohen et al. 2022). Other optimizers: ``2/η`` with
    ``kind="gd-limit"`` (their dynamics are not modeled).

    Parameters
    ----------
    optimizer
        the ``torch.optim.Optimizer`` the training loop steps (its first parameter group's
        ``lr``, momentum and betas are read).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
                        "pass the optimizer your training loop steps.")
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if not lr > 0 or not math.isfinite(lr):
        raise ValueError(f"the optimizer's learning rate must be positive and finite, got {lr!r}.")
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1 = float(group["betas"][0])
        return (2 + 2 * beta1) / ((1 - beta1) * lr), lr, "adam-preconditioned"
    if isinstance(optimizer, torch.optim.SGD):
        beta = float(group.get("momentum", 0.0) or 0.0)
        return (2 + 2 * beta) / lr, lr, "sgd" if beta == 0 else "sgd-momentum"
    return 2 / lr, lr, "gd-limit"


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
        measure every ``every`` calls of :meth:`step`.
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

    def __init__(self, model: torch.nn.Module, loss_fn: Any = None, data: Any = None, every: int = 10, *,
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
        _positive_int("every", every)
        configs = _with_options({"measurements": measurements, "bands": bands, "logging": logging}, options)
        self.measurements: Measurements = configs["measurements"]
        self.bands: StabilityBands = configs["bands"]
        self.logging: LogOptions = configs["logging"]
        self.model, self.loss_fn, self.data, self.params = model, loss_fn, read_once(data), params
        self.every = every
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
        """Count one optimizer step; measure when ``num_steps % every == 0``. Returns the record or None."""
        stability_limit(optimizer)  # validate early, every call
        self.num_steps += 1
        if self.num_steps % self.every != 0:
            return None
        return self.measure(optimizer, step=self.num_steps)

    def measure(self, optimizer: torch.optim.Optimizer | None = None, step: int | None = None,
                lr: float | None = None) -> SharpnessRecord | None:
        """Measure at the current parameters now. ``lr`` instead of ``optimizer`` gives the GD limit 2/lr.

        Returns None (and measures nothing) when ``step`` is already in a resumed log.
        """
        step = self.num_steps if step is None else int(step)
        if self.records and step <= self.records[-1].step:
            return None  # already measured (resumed run replaying steps)
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
        return (f"SharpnessMonitor(every={self.every}, k={m.k}, negative={m.negative}, "
                f"trace={m.trace}, density={m.density}, records={len(self.records)}, "
                f"log_dir={self.log_dir!r})")

    # ------------------------------------------------------------------ internals
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
        lr0 = float(optimizer.param_groups[0]["lr"])
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
            scale = float(group["lr"]) / lr0
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
        path = os.path.join(log_dir, "sharpness.jsonl")
        if not os.path.exists(path):
            return
        fields = [f.name for f in dataclasses.fields(SharpnessRecord)]
        for rec in read_log(path):
            values: dict[str, Any] = {k: rec.get(k) for k in fields if k in rec}
            self.records.append(SharpnessRecord(**values))
        state_path = os.path.join(log_dir, _STATE_FILE)
        if os.path.exists(state_path):
            state = torch.load(state_path, weights_only=True)
            if self.records and state["last_step"] == self.records[-1].step:
                self.num_steps = int(state["num_steps"])
                self._operator_kind = state["operator_kind"]
                self._v_top, self._v_bottom = state["v_top"], state["v_bottom"]
            elif self.records:  # the state lags or leads the log (an interruption between the two)
                self.num_steps = self.records[-1].step
        elif self.records:
            self.num_steps = self.records[-1].step
        self.densities.extend(_read_densities(os.path.join(log_dir, "density.jsonl")))


def _read_densities(path: str) -> list[tuple[int, SpectralDensity]]:
    """The ``(step, density)`` snapshots of a ``density.jsonl`` (a torn last line is skipped)."""
    out: list[tuple[int, SpectralDensity]] = []
    if not os.path.exists(path):
        return out
    with open(path) as fh:
        for line in fh:
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue
            nodes = torch.tensor(e["nodes"], dtype=torch.float64)
            dens = SpectralDensity(torch.tensor(e["grid"], dtype=torch.float64),
                                   torch.tensor(e["density"], dtype=torch.float64),
                                   torch.full((len(e["grid"]),), float("nan"), dtype=torch.float64),
                                   nodes, torch.tensor(e["weights"], dtype=torch.float64),
                                   float(e["sigma"]), 0, nodes.shape[0], nodes.shape[1])
            out.append((int(e["step"]), dens))
    return out


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
