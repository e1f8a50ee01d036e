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

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from hesse._progress import message
from hesse.distributed import is_main_process
from hesse.operators import CurvatureOperator, HessianOperator
from hesse.spectrum import SpectralDensity, eigsh, spectral_density
from hesse.spectrum import trace as estimate_trace

from ._data import read_once
from .logging import SharpnessLog, read_log, truncate_log

__all__ = ["SharpnessMonitor", "SharpnessRecord", "DiagonalCongruence", "stability_limit"]

_STATE_FILE = "monitor_state.pt"


class DiagonalCongruence(CurvatureOperator):
    """``D^{1/2} A D^{1/2}`` for a symmetric operator ``A`` and a nonnegative vector ``d``.

    Congruence keeps symmetry and the inertia (signs) of ``A``; with ``d = 1/p`` its eigenvalues
    are those of ``P⁻¹A`` (``P = diag(p)``). One product of ``A`` per column.
    """

    def __init__(self, op: CurvatureOperator, d: torch.Tensor):
        d = torch.as_tensor(d, dtype=op.dtype, device=op.device).reshape(-1)
        if d.numel() != op.shape[0]:
            raise ValueError(f"d must have {op.shape[0]} entries (one per parameter), got {d.numel()}.")
        if not torch.isfinite(d).all() or bool((d < 0).any()):
            raise ValueError("d must be finite and nonnegative (a diagonal scaling).")
        self.base = op
        self.sqrt_d = d.sqrt()
        super().__init__(op.shape[0], op.dtype, op.device, op.is_psd)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        s = self.sqrt_d[:, None]
        return s * self.base.matmat(s * V)


@dataclass
class SharpnessRecord:
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)

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


class SharpnessMonitor:
    """Measure λ_max (and optionally λ_min, trace, density) every ``every`` training steps.

    Parameters
    ----------
    model, loss_fn, data : as for :class:`hesse.HessianOperator`; ``data`` is the fixed
        measurement set (one batch, a pair of tensors, or a DataLoader), the same every check.
    every : measure every ``every`` calls of :meth:`step`.
    k : number of top eigenvalues measured (``top_eigenvalues``; λ_max is the first).
    trace : also estimate the trace (XTrace, ``trace_matvecs`` products).
    density : also take a spectral density snapshot (SLQ, ``density_probes`` x ``density_steps``
        products), kept in ``densities`` and written to ``density.jsonl``.
    log_dir : directory for ``sharpness.jsonl``, ``sharpness.csv``, ``density.jsonl`` (and
        TensorBoard scalars when installed), written by rank 0 only under ``torch.distributed``;
        ``None`` keeps records in memory only.
    negative : also measure the most negative eigenvalue (enables the saddle/plateau flag).
    progress : one line per check on stderr.
    resume : continue the log in ``log_dir`` (records, step counter and warm-start vector are
        restored; steps already logged are not measured again). When resuming from a model
        checkpoint, save :meth:`state_dict` with it and call :meth:`load_state_dict` after
        construction: the log is cut back to the checkpoint's step.
    tol : eigsh tolerance (relative residual); ``eos_band``: the edge-of-stability band as a
        fraction of the limit, symmetric (a float) or ``(below, above)``: Cohen et al. (2021) see
        λ_max hover *just above* 2/η, so e.g. ``(0.05, 0.25)`` fits full-batch GD; ``saddle_grad_tol``, ``saddle_curvature_rtol``: see the
        module docs. ``params``: which parameters (as for HessianOperator).

    Use ``monitor.step(optimizer)`` after each ``optimizer.step()``; ``monitor.measure(optimizer)``
    measures now (e.g. before training, at step 0).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Any, data: Any, every: int = 10, k: int = 1,
                 trace: bool = False, density: bool = False, log_dir: str | os.PathLike | None = None,
                 negative: bool = False, progress: bool = True, *, resume: bool = False,
                 tol: float = 1e-4, eos_band: float | tuple[float, float] = 0.1, saddle_grad_tol: float = 1e-3,
                 saddle_curvature_rtol: float = 1e-3, params: Any = None, trace_matvecs: int = 48,
                 density_probes: int = 1, density_steps: int = 40, seed: int = 0,
                 max_matvecs: int | None = None):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable (outputs, targets) -> loss, got {type(loss_fn).__name__}.")
        for name, val in (("every", every), ("k", k), ("trace_matvecs", trace_matvecs),
                          ("density_probes", density_probes), ("density_steps", density_steps)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{name} must be a positive int, got {val!r}.")
        band = tuple(eos_band) if isinstance(eos_band, (tuple, list)) else (eos_band, eos_band)
        if len(band) != 2:
            raise ValueError(f"eos_band must be a float or a pair (below, above), got {eos_band!r}.")
        for name, val in (("tol", tol), ("eos_band", band[0]), ("eos_band", band[1])):
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not 0 < val < 1:
                raise ValueError(f"{name} must be a float in (0, 1), got {val!r}.")
        for name, val in (("saddle_grad_tol", saddle_grad_tol), ("saddle_curvature_rtol", saddle_curvature_rtol)):
            if not isinstance(val, (int, float)) or isinstance(val, bool) or not val >= 0:
                raise ValueError(f"{name} must be a nonnegative float, got {val!r}.")
        if resume and log_dir is None:
            raise ValueError("resume=True needs log_dir (the directory of the log to continue).")
        self.model, self.loss_fn, self.data, self.params = model, loss_fn, read_once(data), params
        self.every, self.k, self.trace, self.density = every, k, bool(trace), bool(density)
        self.negative, self.progress = bool(negative), bool(progress)
        self.tol, self.eos_band = float(tol), (float(band[0]), float(band[1]))
        self.saddle_grad_tol, self.saddle_curvature_rtol = float(saddle_grad_tol), float(saddle_curvature_rtol)
        self.trace_matvecs, self.density_probes, self.density_steps = trace_matvecs, density_probes, density_steps
        self.seed, self.max_matvecs = seed, max_matvecs
        self.records: list[SharpnessRecord] = []
        self.densities: list[tuple[int, Any]] = []
        self.num_steps = 0  # calls of step() so far (= optimizer steps taken)
        self._v_top: torch.Tensor | None = None
        self._v_bottom: torch.Tensor | None = None
        self._operator_kind: str | None = None
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self.log: SharpnessLog | None = None
        if self.log_dir is not None:
            if resume:
                self._restore()
            if is_main_process():  # under torch.distributed every rank computes, rank 0 writes
                self.log = SharpnessLog(self.log_dir, resume=resume)

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
        if optimizer is None:
            if lr is None:
                raise ValueError("measure() needs the optimizer (or lr=... for plain gradient descent).")
            if not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr):
                raise ValueError(f"lr must be a positive float, got {lr!r}.")
            limit, lr, kind = 2 / float(lr), float(lr), "sgd"
        else:
            limit, lr, kind = stability_limit(optimizer)
            if kind == "adam-preconditioned" and not any("exp_avg_sq" in st for st in optimizer.state.values()):
                limit, kind = 2 / lr, "gd-limit"  # before Adam's first step there is no preconditioner yet

        try:
            H = HessianOperator(self.model, self.loss_fn, self.data, self.params)
        except ValueError as err:
            if "not finite" not in str(err):
                raise
            raise ValueError(f"at step {step} {err} Training has likely diverged: lower the learning rate "
                             f"(gradient descent is stable for lambda_max < 2/lr).") from err
        loss, grad_norm = float(H.loss), float(H.gradient.norm())
        if not math.isfinite(loss):
            raise ValueError(f"the loss on the measurement data is {loss} at step {step}: training has "
                             "diverged (lower the learning rate) or the data contains NaN/inf.")
        op = self._effective_operator(H, optimizer, kind)
        if kind != self._operator_kind:
            self._v_top = self._v_bottom = None  # a different operator: no warm start across kinds
            self._operator_kind = kind
        flags: list[str] = []
        k = min(self.k, op.shape[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # reported via flags/converged instead
            top = eigsh(op, k=k, which="largest", tol=self.tol, v0=self._v_top, seed=self.seed,
                              max_matvecs=self.max_matvecs)
        self._v_top = top.vectors[:, 0].detach().clone()
        converged = bool(top.converged.all())
        residual = float(top.residuals.max())
        lambda_max = float(top.values[0])
        lambda_min = None
        if self.negative:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                bottom = eigsh(op, k=1, which="smallest", tol=self.tol, v0=self._v_bottom,
                                     seed=self.seed + 1, max_matvecs=self.max_matvecs)
            self._v_bottom = bottom.vectors[:, 0].detach().clone()
            lambda_min = float(bottom.values[0])
            converged = converged and bool(bottom.converged.all())
            residual = max(residual, float(bottom.residuals.max()))
        trace_value = None
        if self.trace:
            trace_value = float(estimate_trace(op, num_matvecs=self.trace_matvecs, seed=self.seed).value)
        if self.density:
            dens = spectral_density(op, num_probes=self.density_probes,
                                          num_steps=min(self.density_steps, op.shape[0]), seed=self.seed)
            self.densities.append((step, dens))
            if self.log is not None:
                self.log.write_density(step, dens)
        ratio = lambda_max / limit
        if ratio > 1 + self.eos_band[1]:
            status = "unstable"
        elif ratio >= 1 - self.eos_band[0]:
            status = "edge_of_stability"
        else:
            status = "stable"
        flags.append(status)
        if (lambda_min is not None and grad_norm <= self.saddle_grad_tol
                and lambda_min < -self.saddle_curvature_rtol * abs(lambda_max)):
            flags.append("saddle_plateau")
        if not converged:
            flags.append("not_converged")
        record = SharpnessRecord(
            step=step, loss=loss, grad_norm=grad_norm, lr=lr, stability_limit=limit, lambda_max=lambda_max,
            sharpness_ratio=ratio, status=status, flags=flags,
            operator=("hessian" if op is H else "P^-1/2 H P^-1/2" if kind == "adam-preconditioned"
                      else "S^1/2 H S^1/2 (per-group lr)"),
            num_matvecs=op.num_matvecs, converged=converged, residual=residual, lambda_min=lambda_min,
            trace=trace_value, top_eigenvalues=[float(v) for v in top.values])
        self.records.append(record)
        if self.log is not None:
            self.log.write(record.as_dict())
            self._save_state()
        message(f"[monitor] step {step}: loss {loss:.4f}  lambda_max {lambda_max:.4g}  limit {limit:.4g} "
                f"({ratio:.2f})  {status}  [{op.num_matvecs} products]", self.progress)
        return record

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
            if reopen:
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
        return (f"SharpnessMonitor(every={self.every}, k={self.k}, negative={self.negative}, "
                f"trace={self.trace}, density={self.density}, records={len(self.records)}, "
                f"log_dir={self.log_dir!r})")

    # ------------------------------------------------------------------ internals
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

    def _state_path(self) -> str:
        return os.path.join(self.log_dir, _STATE_FILE)

    def _save_state(self) -> None:
        state = self.state_dict()
        tmp = self._state_path() + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, self._state_path())  # atomic: a crash leaves the old or the new state

    def _restore(self) -> None:
        path = os.path.join(self.log_dir, "sharpness.jsonl")
        if not os.path.exists(path):
            return  # nothing to resume: start fresh
        for rec in read_log(path):
            self.records.append(SharpnessRecord(**{k: rec.get(k) for k in SharpnessRecord.__dataclass_fields__
                                                   if k in rec}))
        if os.path.exists(self._state_path()):
            state = torch.load(self._state_path(), weights_only=True)
            if self.records and state["last_step"] == self.records[-1].step:
                self.num_steps = int(state["num_steps"])
                self._operator_kind = state["operator_kind"]
                self._v_top, self._v_bottom = state["v_top"], state["v_bottom"]
            elif self.records:  # the state lags or leads the log (an interruption between the two)
                self.num_steps = self.records[-1].step
        elif self.records:
            self.num_steps = self.records[-1].step
        density_path = os.path.join(self.log_dir, "density.jsonl")
        if os.path.exists(density_path):
            import json

            with open(density_path) as fh:
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
                    self.densities.append((int(e["step"]), dens))
