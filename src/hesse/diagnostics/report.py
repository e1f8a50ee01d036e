"""The analysis behind ``hesse demo`` and ``hesse report``: train (optionally) under a
:class:`SharpnessMonitor`, analyse the final point, and write a report folder.

Steps (each number in ``report.json`` is computed here, none is hard-coded):

1. Training (``train_steps > 0``): full-batch gradient descent ``θ ← θ - η ∇L(θ)`` (the gradient of
   the mean loss over all of ``data``, accumulated over its batches) at learning rate ``lr``
   (default: ``1/λ_max`` at the start, half the stability limit), monitored every ``every`` steps:
   λ_max against 2/η (Cohen et al. 2021), the most negative eigenvalue, density snapshots.
2. Final point: top ``k`` eigenvalues (:func:`hesse.eigsh`), the SLQ spectral density
   (:func:`hesse.spectral_density`), the spectrum summary (:func:`hesse.summarize`: negative mass,
   fraction negative, trace, effective rank), and the outlier count: top eigenvalues larger than
   ``outlier_factor`` times the bulk edge, the 99th percentile of ``|λ|`` under the SLQ
   distribution (Ghorbani et al. 2019 and Papyan 2019 describe trained networks' Hessians as a few
   outliers over a bulk concentrated near zero).
3. Loss-landscape slices along the top eigenvector (1-D) and two filter-normalized random
   directions (2-D), :func:`hesse.landscape`.
4. The worked 2-D example ``f(x, y) = 3x² + 2xy + 2y² − 4x − 6y`` (:func:`quadratic_example`):
   critical point, Hessian, eigenvalues, classification and the contour figure.

Divergence (:func:`training_divergence`) is judged before any edge-of-stability statement: a run
whose loss ended far above its start (or became non-finite), or whose last λ_max is far above 2/η,
diverged, and the diagnosis says so instead of describing its sharpness as the edge of stability.

Resuming (``resume=True``): the checkpoint ``log_dir/checkpoint.pt`` (model, learning rate, losses
and the monitor's state, written to a temporary file and ``os.replace``'d) is the commit point. The
monitor's log may run ahead of it (an interruption between a log write and the next checkpoint);
records after the checkpoint's step are removed and measured again, so an interrupted and resumed
run writes the log an uninterrupted run writes.

Files: ``sharpness.png``, ``loss.png``, ``density_snapshots.png`` (when trained), ``density.png``,
``top_eigenvalues.png``, ``landscape_1d.png``, ``landscape_2d.png``, ``contour.png``, ``report.json``,
``summary.md`` and the monitor log ``log/sharpness.jsonl`` / ``.csv``.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

import torch

from hesse._autodiff import gradient, hessian
from hesse._progress import Progress, message
from hesse.geometry.classify import classify
from hesse.operators import FisherOperator, GGNOperator, HessianOperator
from hesse.spectrum import eigsh, spectral_density, summarize
from hesse.spectrum.analysis import OUTLIER_FACTOR, bulk_edge
from hesse.spectrum.summary import describe_bulk

from ._data import LossSpec, read_once, with_mode_warning_once
from .landscape import landscape
from .logging import load_saved_state
from .monitor import LogOptions, Measurements, SharpnessMonitor, StabilityBands

__all__ = ["analyze_training", "train_monitored", "quadratic_example", "bulk_edge", "describe_sharpness",
           "training_divergence", "diagnosis", "summary_markdown", "DIVERGENCE_LOSS_FACTOR", "DIVERGENCE_RATIO",
           "OUTLIER_FACTOR"]

QUADRATIC_EXAMPLE = "3x^2 + 2xy + 2y^2 - 4x - 6y"

CHECKPOINT_FILE = "checkpoint.pt"

#: A run diverged when its loss ended more than this factor above its starting loss. Gradient
#: descent at a stable step size decreases the loss; at the edge of stability it oscillates but
#: still decreases over a run (Cohen et al. 2021, sec. 3), and a catapult (Lewkowycz et al. 2020)
#: returns below its start. A tenfold rise at the end is none of these.
DIVERGENCE_LOSS_FACTOR = 10.0

#: ... or when the last λ_max / (2/η) exceeds this. At the edge of stability the ratio hovers at
#: 1 (Cohen et al. 2021 measure it within a few tens of percent above, the default band's upper edge
#: is 1.25); at ratio r the top eigen-coordinate of the quadratic model is multiplied by |1 - 2r| per
#: step, at least 3 for r >= 2: the iterates are leaving, not hovering.
DIVERGENCE_RATIO = 2.0


def quadratic_example() -> tuple[dict, Any]:
    """The worked example ``f(x, y) = 3x² + 2xy + 2y² − 4x − 6y`` analysed with hesse: ``(numbers, f)``.

    A convex quadratic with ``H = [[6, 2], [2, 4]]`` (eigenvalues ``5 ∓ √5``) and its minimum at
    ``H⁻¹ (4, 6) = (0.2, 1.4)``; the Taylor check compares ``f(x0 + v)`` with its second-order model,
    exact for a quadratic.
    """
    def f(p):
        x, y = p[0], p[1]
        return 3 * x**2 + 2 * x * y + 2 * y**2 - 4 * x - 6 * y

    H0 = hessian(f, [0.0, 0.0])
    g0 = gradient(f, [0.0, 0.0])
    x_star = torch.linalg.solve(H0, -g0)  # f is quadratic: one Newton step from 0 is exact
    H = hessian(f, x_star)
    eig = torch.linalg.eigvalsh(H)
    kind = "local minimum" if bool((eig > 0).all()) else "local maximum" if bool((eig < 0).all()) else "saddle point"
    verdict = getattr(classify(f, x_star), "kind", None)  # the geometry module's verdict
    verdict = getattr(verdict, "value", verdict)  # an Enum member: its value
    if verdict:
        kind = str(verdict)
    x0, v = torch.tensor([0.5, -0.5], dtype=torch.float64), torch.tensor([0.3, 0.4], dtype=torch.float64)
    taylor = float(f(x0) + gradient(f, x0) @ v + 0.5 * v @ hessian(f, x0) @ v)
    return {"function": QUADRATIC_EXAMPLE, "critical_point": x_star.tolist(),
            "gradient_norm": float(gradient(f, x_star).norm()), "hessian": H.tolist(),
            "eigenvalues": eig.tolist(), "condition_number": float(eig.max() / eig.min()),
            "classification": kind, "taylor_check": {"x0": x0.tolist(), "v": v.tolist(),
                                                     "exact": float(f(x0 + v)), "model": taylor}}, f




def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def training_divergence(records: list[dict], losses: list[float] | None = None) -> str | None:
    """Why a training run diverged, or ``None`` when it did not.

    Diverged: a non-finite loss (training or at a check); the loss at the end more than
    :data:`DIVERGENCE_LOSS_FACTOR` times the loss at the start; or the last check's
    ``λ_max / (2/η)`` above :data:`DIVERGENCE_RATIO`. ``records`` are monitor records (dicts),
    ``losses`` the training losses per step.
    """
    losses = [float("nan") if v is None else float(v) for v in (losses or [])]
    # a logged loss of None is a non-finite value written as JSON null; a record without one says nothing
    rec_losses = [float("nan") if r["loss"] is None else float(r["loss"]) for r in records if "loss" in r]
    bad = [v for v in losses + rec_losses if not math.isfinite(v)]
    if bad:
        return f"the loss became {bad[0]}"
    start = losses[0] if losses else (rec_losses[0] if rec_losses else None)
    ends = ([losses[-1]] if losses else []) + ([rec_losses[-1]] if rec_losses else [])
    if start is not None and ends:
        end = max(ends)
        if end > DIVERGENCE_LOSS_FACTOR * max(start, 0.0) and end > start:
            return (f"the loss rose from {start:.4g} to {end:.4g} (more than {DIVERGENCE_LOSS_FACTOR:g}x its "
                    "start)")
    if records:
        last = records[-1]
        ratio = last.get("sharpness_ratio")
        if ratio is None or not _finite(ratio):
            return "lambda_max / (2/lr) became non-finite"
        if ratio > DIVERGENCE_RATIO:
            return (f"lambda_max / (2/lr) = {ratio:.3g} at the last check (step {last['step']}), far above "
                    f"the stability limit (more than {DIVERGENCE_RATIO:g}x)")
    return None


def describe_sharpness(records: list[dict], eos_band: tuple[float, float], losses: list[float] | None = None) -> dict:
    """When λ_max first reached the limit (``ratio >= 1 - eos_band[0]``) and whether it stayed at or
    above that afterwards: plain numbers and a sentence. A diverged run (:func:`training_divergence`)
    gets ``diverged=True`` and a sentence saying so, with no edge-of-stability claim."""
    if not records:
        return {"sentence": "no sharpness checks were made", "reached_step": None, "diverged": False}
    ratios = [r["sharpness_ratio"] if _finite(r.get("sharpness_ratio")) else float("inf") for r in records]
    reached = next((i for i, q in enumerate(ratios) if q >= 1 - eos_band[0]), None)
    first, last = records[0], records[-1]
    out = {"initial_lambda_max": first["lambda_max"], "final_lambda_max": last["lambda_max"],
           "limit": last["stability_limit"], "max_ratio": max(ratios),
           "max_ratio_step": records[ratios.index(max(ratios))]["step"],
           "num_checks": len(records), "num_unstable": sum(r["status"] == "unstable" for r in records),
           "num_edge_of_stability": sum(r["status"] == "edge_of_stability" for r in records),
           "reached_step": None, "stayed_fraction": None, "diverged": False}
    reason = training_divergence(records, losses)
    if reason is not None:
        out.update(diverged=True, divergence=reason)
        out["sentence"] = (f"training diverged: {reason}; lambda_max went from {first['lambda_max']:.3g} to "
                           f"{last['lambda_max']:.3g} against 2/lr = {last['stability_limit']:.3g}. Lower the "
                           "learning rate (gradient descent is stable for lambda_max < 2/lr)")
        return out
    if reached is None:
        out["sentence"] = (f"lambda_max went from {first['lambda_max']:.3g} to {last['lambda_max']:.3g} and did not "
                           f"reach 2/lr = {last['stability_limit']:.3g} (at most {max(ratios):.0%} of it, "
                           f"step {out['max_ratio_step']}): gradient descent stayed in its stable regime")
        return out
    after = ratios[reached:]
    stayed = sum(q >= 1 - eos_band[0] for q in after) / len(after)
    mean_after = sum(after) / len(after)
    out.update(reached_step=records[reached]["step"], stayed_fraction=stayed, mean_ratio_after=mean_after)
    verb = "stayed there" if stayed >= 0.8 else "did not stay there"
    how = (f"({stayed:.0%} of the later checks at least {1 - eos_band[0]:.0%} of the limit; mean lambda_max / (2/lr) "
           f"= {mean_after:.2f}, max {max(ratios):.2f})")
    limit = records[reached]["stability_limit"]
    out["start"] = ("above the limit" if ratios[0] > 1 + eos_band[1] else
                    "at the limit" if reached == 0 else "below the limit")
    if out["start"] == "above the limit":
        # a run begun above 2/lr first sheds sharpness (the catapult phase, Lewkowycz et al. 2020);
        # that is not the progressive sharpening of a run that rises to the limit from below
        fell = next((i for i, q in enumerate(ratios) if q <= 1 + eos_band[1]), None)
        if fell is None:
            out["sentence"] = (f"lambda_max started above 2/lr = {limit:.3g} ({first['lambda_max']:.3g} at step "
                               f"{first['step']}, {ratios[0]:.2f} of the limit) and never fell back to it "
                               f"(last {last['lambda_max']:.3g}): gradient descent is not stable at this learning rate")
        else:
            after = ratios[fell:]
            stayed = sum(q >= 1 - eos_band[0] for q in after) / len(after)
            mean_after = sum(after) / len(after)
            out.update(stayed_fraction=stayed, mean_ratio_after=mean_after, fell_step=records[fell]["step"])
            verb = "stayed there" if stayed >= 0.8 else "did not stay there"
            how = (f"({stayed:.0%} of the later checks at least {1 - eos_band[0]:.0%} of the limit; mean "
                   f"lambda_max / (2/lr) = {mean_after:.2f})")
            out["sentence"] = (f"lambda_max started above 2/lr = {limit:.3g} ({first['lambda_max']:.3g} at step "
                               f"{first['step']}, {ratios[0]:.2f} of the limit), fell to "
                               f"{records[fell]['lambda_max']:.3g} by step {records[fell]['step']} and {verb} {how}: "
                               "the catapult of Lewkowycz et al. (2020), gradient descent shedding sharpness until "
                               "it is stable, then the edge of stability (Cohen et al. 2021)")
    elif out["start"] == "at the limit":
        out["sentence"] = (f"lambda_max started at 2/lr = {limit:.3g} ({first['lambda_max']:.3g} at step "
                           f"{first['step']}) and {verb} {how}: the edge of stability (Cohen et al. 2021)")
    else:
        out["sentence"] = (f"lambda_max rose from {first['lambda_max']:.3g} to 2/lr = {limit:.3g} at step "
                           f"{records[reached]['step']} and {verb} {how}: progressive sharpening to the edge of "
                           "stability (Cohen et al. 2021)")
    if out["num_unstable"]:
        out["sentence"] += f"; {out['num_unstable']} of {len(records)} checks were above the band (flagged unstable)"
    return out


#: Relative residual of the eigenvalues of the final point: the report prints them to four
#: significant digits and counts outliers against the bulk edge, far coarser than 1e-6.
_FINAL_TOL = 1e-6

#: Relative residual of the starting λ_max that sets the default learning rate 1/λ_max: a 1e-4 error
#: in λ_max moves the step size by 1e-4 of itself, far inside the factor 2 to the stability limit.
_LR_TOL = 1e-4

#: Density snapshots per training run when ``density_every`` is not given: at a quarter, half,
#: three quarters and the end of the run they show how the spectrum spreads (progressive
#: sharpening) for four times SLQ's cost.
_DENSITY_SNAPSHOTS = 4

#: The 2-D slice has half the 1-D slice's points per axis (its cost is their square), at least
#: this many so that a bowl or a saddle is still visible.
_MIN_PLANE_STEPS = 5

#: Learning rate when the starting Hessian has no positive eigenvalue (``1/λ_max`` is undefined):
#: gradient descent then has no curvature limit, and 0.1 is the usual SGD default.
_FALLBACK_LR = 0.1

#: The 1-D slice spans ``±2 r`` with ``r = sqrt(2 L / λ_max)``, the distance along the top
#: eigenvector at which the quadratic model's rise ``½ λ_max r²`` equals the loss; ``L`` is floored
#: at this value so that a near-zero loss still gives a visible slice.
_MIN_SLICE_LOSS = 0.05


def _full_batch_gradient_step(model, objective: LossSpec, data, lr: float) -> float:
    """One step of full-batch GD on the mean loss over ``data``; returns the loss before the step."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total, count = 0.0, 0
    for loss, size, weight in objective.batch_losses(model, data):
        batch_grads = torch.autograd.grad(loss * weight, params, allow_unused=True)
        for acc, gi in zip(grads, batch_grads):
            if gi is not None:
                acc.add_(gi)
        total += float(loss.detach()) * weight
        count += size
    with torch.no_grad():
        for p, g in zip(params, grads):
            p.sub_(lr * g / count)
    return total / count


def _save_checkpoint(path: str, step: int, lr: float, model, losses: list[float], monitor) -> None:
    """Model, learning rate, losses and monitor state at ``step``: a temporary file, then os.replace
    (an interruption leaves the previous checkpoint or this one, never half of one)."""
    tmp = path + ".tmp"
    torch.save({"step": step, "lr": lr, "model": model.state_dict(),
                "training_losses": torch.tensor(losses, dtype=torch.float64),
                "monitor": monitor.state_dict()}, tmp)
    os.replace(tmp, path)


def _load_checkpoint(log_dir: str | None, resume: bool, progress: bool, train_steps: int) -> dict | None:
    """The checkpoint to resume from (``None``: start afresh), checked (:func:`_check_checkpoint`)."""
    if not resume:
        return None
    if log_dir is None:
        raise ValueError("resume=True needs log_dir (the folder of the run to continue).")
    if os.path.exists(log_dir) and not os.path.isdir(log_dir):
        raise ValueError(f"cannot resume: the log folder {log_dir!r} is a file, not a folder of an earlier run; "
                         "move it away or write the report elsewhere.")
    path = os.path.join(log_dir, CHECKPOINT_FILE)
    if not os.path.exists(path):
        message(f"[train] no checkpoint in {log_dir!r} yet: starting afresh", progress)
        return None
    state = load_saved_state(path, "the training checkpoint")
    _check_checkpoint(state, path, train_steps)
    return state


def _check_checkpoint(state: Any, path: str, train_steps: int) -> None:
    """What :func:`_save_checkpoint` writes: keys, a step within the run, one loss per step, a finite lr.

    The model's weights are checked against the model where they are loaded.
    """
    fix = "delete the log folder to start afresh"
    keys = ("step", "lr", "model", "training_losses", "monitor")
    if not isinstance(state, dict) or any(k not in state for k in keys):
        got = ", ".join(sorted(map(str, state))) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"cannot resume: {path!r} is not a training checkpoint of hesse (expected the keys "
                         f"{', '.join(keys)}; got {got}); {fix}.")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise ValueError(f"cannot resume: {path!r} has step {step!r}, not a non-negative integer; {fix}.")
    if step > train_steps:
        raise ValueError(f"cannot resume: {path!r} is at step {step}, beyond the {train_steps} training steps "
                         f"asked for; give at least {step} steps (--train {step}), or {fix}.")
    lr = state["lr"]
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or not lr > 0:
        raise ValueError(f"cannot resume: {path!r} has learning rate {lr!r}, not a positive number; {fix}.")
    losses = state["training_losses"]
    if not isinstance(losses, torch.Tensor) or losses.ndim != 1 or losses.numel() != step:
        got = f"shape {tuple(losses.shape)}" if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"cannot resume: {path!r} is at step {step} but holds training losses of {got} "
                         f"(one loss per step expected); {fix}.")
    if not bool(torch.isfinite(losses).all()):
        raise ValueError(f"cannot resume: {path!r} holds non-finite training losses; {fix}.")
    if not isinstance(state["model"], dict) or not isinstance(state["monitor"], dict):
        raise ValueError(f"cannot resume: {path!r} holds no model state_dict or monitor state; {fix}.")
    if state["monitor"].get("num_steps") != step:
        raise ValueError(f"cannot resume: {path!r} is at step {step} but its monitor state is at step "
                         f"{state['monitor'].get('num_steps')!r}; {fix}.")


def _load_model_state(model, state: dict, path: str) -> None:
    """``model.load_state_dict`` with the mismatch named in one line (missing keys, wrong shapes)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise ValueError(f"cannot resume: the model in {path!r} does not fit this model ({detail}); "
                         "resume with the model the run was started with, or delete the log folder.") from None


def _initial_lr(model, objective: LossSpec, data, seed: int, progress: bool) -> float:
    """``1/λ_max`` at the start: half the stability limit 2/λ_max of gradient descent."""
    H0 = HessianOperator(model, objective.loss_fn, data, **objective.operator_options())
    lam0 = float(eigsh(H0, k=1, tol=_LR_TOL, seed=seed).values[0])
    lr = 1.0 / lam0 if lam0 > 0 else _FALLBACK_LR
    message(f"[train] lr not given: 1/lambda_max = {lr:.4g} (half the stability limit)", progress)
    return lr


def _make_monitor(model, objective: LossSpec, data, *, every: int, log_dir: str | None, resume: bool,
                  eos_band: tuple[float, float], seed: int) -> SharpnessMonitor:
    """The monitor of a report: λ_max and λ_min per check, densities when asked, quiet."""
    return SharpnessMonitor(model, objective.loss_fn, data, every,
                            measurements=Measurements(k=1, negative=True, seed=seed),
                            bands=StabilityBands(eos_band=eos_band),
                            logging=LogOptions(log_dir=log_dir, resume=resume, progress=False),
                            **objective.operator_options())


@with_mode_warning_once
def train_monitored(model, loss_fn=None, data=None, *, train_steps: int, lr: float | None = None,
                    every: int = 10, density_every: int | None = None, log_dir: str | None = None,
                    resume: bool = False, eos_band: tuple[float, float] = (0.05, 0.25), seed: int = 0,
                    progress: bool = False, forward=None, batch_loss=None, batch_size=None,
                    dtype: torch.dtype | None = None,
                    eval_mode: bool = True) -> tuple[SharpnessMonitor, float, list[float]]:
    """Full-batch gradient descent for ``train_steps`` steps under a :class:`SharpnessMonitor`.

    Returns ``(monitor, lr, training_losses)``. With ``log_dir`` the monitor log and a checkpoint
    (``checkpoint.pt``, after step 0 and after every check) are written there; ``resume=True``
    continues from the checkpoint (module docs: the log is cut back to the checkpoint's step), or
    starts afresh when there is none yet. ``lr=None``: ``1/λ_max`` at the start. ``forward``,
    ``batch_loss``, ``batch_size``: the loss as for :class:`hesse.HessianOperator` (training and
    checks use the same loss); ``dtype``: the precision of the checks' Hessians; ``eval_mode``: the
    checks evaluate in eval mode (the default) or, ``False``, in the model's own mode.
    """
    objective = LossSpec(loss_fn, forward, batch_loss, batch_size, dtype, eval_mode)
    data = read_once(data)
    ckpt = None if log_dir is None else os.path.join(log_dir, CHECKPOINT_FILE)
    state = _load_checkpoint(log_dir, resume, progress, train_steps)
    monitor = _make_monitor(model, objective, data, every=every, log_dir=log_dir, resume=state is not None,
                            eos_band=eos_band, seed=seed)
    if state is not None:
        _load_model_state(model, state["model"], str(ckpt))
        monitor.load_state_dict(state["monitor"])  # cuts the log back to the checkpoint's step
        training_losses = [float(v) for v in state["training_losses"]]
        lr = float(state["lr"])
        start = int(state["step"])
        message(f"[train] resumed at step {start} from {ckpt}", progress)
    else:
        if lr is None:
            lr = _initial_lr(model, objective, data, seed, progress)
        training_losses = []
        start = 0
        monitor.measure(lr=lr, step=0)
        if ckpt is not None:
            _save_checkpoint(ckpt, 0, lr, model, training_losses, monitor)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    density_every = density_every or max(every, train_steps // _DENSITY_SNAPSHOTS)
    with Progress(train_steps - start, "training (full-batch GD)", progress) as bar:
        for step in range(start + 1, train_steps + 1):
            loss = _full_batch_gradient_step(model, objective, data, lr)
            training_losses.append(loss)
            if not math.isfinite(loss):
                raise ValueError(f"training diverged at step {step} (loss {loss}); lower --lr "
                                 f"(the stability limit is 2/lambda_max).")
            monitor.measurements.density = step % density_every == 0 or step == train_steps
            rec = monitor.step(opt)
            if ckpt is not None and (rec is not None or step == train_steps):
                _save_checkpoint(ckpt, step, lr, model, training_losses, monitor)
            info = f"loss {loss:.4f}"
            if monitor.last is not None:
                info += f"  lambda_max {monitor.last.lambda_max:.3g} / 2/lr {monitor.last.stability_limit:.3g}"
            bar.update(1, info=info)
    monitor.measurements.density = False
    monitor.close()
    return monitor, lr, training_losses


@with_mode_warning_once
def analyze_training(model, loss_fn=None, data=None, *, train_steps: int = 0, lr: float | None = None,
                     every: int = 10, k: int = 10, density_every: int | None = None, log_dir: str | None = None,
                     resume: bool = False, eos_band: tuple[float, float] = (0.05, 0.25), density_probes: int = 2,
                     density_steps: int = 60, landscape_steps: int = 41, seed: int = 0,
                     curvature: str = "hessian", progress: bool = False, forward=None, batch_loss=None,
                     batch_size=None, dtype: torch.dtype | None = None, eval_mode: bool = True) -> dict:
    """Train (full-batch GD, monitored) for ``train_steps`` steps, then analyse the final point.

    Returns a dict with ``records`` (monitor records as dicts), ``training_losses``,
    ``sharpness`` (:func:`describe_sharpness`), ``final`` (eigenvalues, summary, outliers),
    and the objects needed for the figures (``_monitor``, ``_density``, ``_top``, ``_landscape1``,
    ``_landscape2``; keys starting with ``_`` are not written to JSON). ``curvature``
    (``"hessian"``, ``"ggn"``, ``"fisher"``) picks the matrix of the final-point analysis; the
    sharpness monitor always measures the Hessian, whose λ_max the stability limit 2/η is about.
    ``data`` may be a one-shot iterator: it is read once into a list. ``forward``, ``batch_loss``,
    ``batch_size`` and ``dtype`` are passed to every operator, the landscape and the training
    steps (as for :class:`hesse.HessianOperator`; the GGN and Fisher need ``loss_fn``); so is
    ``eval_mode`` (``False``: the model's own modes, e.g. BatchNorm on batch statistics).
    """
    objective = LossSpec(loss_fn, forward, batch_loss, batch_size, dtype, eval_mode)
    operator_cls = _check_analysis_options(model, train_steps, lr, k, curvature)
    data = read_once(data)  # read several times below: once per operator and loss evaluation
    # the training steps run the model in its own mode (dropout on in train mode); the checks and
    # the final point evaluate in eval mode (the operators' default): losses of the two differ
    training_mode = loss_mode(model, model.training)
    t0 = time.perf_counter()
    monitor, lr, training_losses = _training_phase(model, objective, data, train_steps=train_steps, lr=lr,
                                                   every=every, density_every=density_every, log_dir=log_dir,
                                                   resume=resume, eos_band=eos_band, seed=seed, progress=progress)
    out: dict[str, Any] = {"lr": lr, "eos_band": eos_band, "train_steps": train_steps, "curvature": curvature,
                           "training_losses": training_losses, "records": [r.as_dict() for r in monitor.records],
                           "training_loss_mode": training_mode}
    out["sharpness"] = describe_sharpness(out["records"], eos_band, training_losses) if train_steps else None
    out["training_seconds"] = time.perf_counter() - t0
    divergence = training_divergence(out["records"], training_losses) if train_steps else None
    try:
        _analyze_final_point(out, model, objective, data, operator_cls, k=k, density_probes=density_probes,
                             density_steps=density_steps, landscape_steps=landscape_steps, seed=seed,
                             progress=progress)
    except ValueError as err:
        if divergence is None:
            raise
        raise ValueError(f"training diverged ({divergence}); the final point cannot be analysed ({err}). "
                         "Lower --lr (gradient descent is stable for lambda_max < 2/lr).") from err
    out["final"]["loss_mode"] = loss_mode(model, False)
    out["seconds"] = time.perf_counter() - t0
    out["_monitor"] = monitor
    return out


#: Layers whose output depends on train / eval mode: a loss printed for such a model names its mode.
_MODE_DEPENDENT = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                   torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout, torch.nn.BatchNorm1d,
                   torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def loss_mode(model: torch.nn.Module, training: bool) -> str | None:
    """``"train"`` / ``"eval"``: the mode a loss of ``model`` was evaluated in, or None when the
    model has no layer that behaves differently in the two (Dropout, BatchNorm)."""
    if not any(isinstance(m, _MODE_DEPENDENT) for m in model.modules()):
        return None
    return "train" if training else "eval"


def _mode_note(mode: str | None) -> str:
    """`` (train mode)`` after a loss, or nothing for a model without mode-dependent layers."""
    return "" if mode is None else f" ({mode} mode{', dropout on' if mode == 'train' else ''})"


_OPERATORS = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator}


def _check_analysis_options(model, train_steps: Any, lr: Any, k: Any, curvature: Any) -> type:
    """Validate the options of :func:`analyze_training`; returns the operator class of ``curvature``."""
    if not isinstance(train_steps, int) or isinstance(train_steps, bool) or train_steps < 0:
        raise ValueError(f"train_steps must be a nonnegative int, got {train_steps!r}.")
    if lr is not None and (not isinstance(lr, (int, float)) or not lr > 0 or not math.isfinite(lr)):
        raise ValueError(f"lr must be a positive float (or None: 1/lambda_max at the start), got {lr!r}.")
    if curvature not in _OPERATORS:
        raise ValueError(f"curvature must be one of {', '.join(_OPERATORS)}, got {curvature!r}.")
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= n_params:
        raise ValueError(f"k must be an int between 1 and the number of parameters ({n_params}), got {k!r}.")
    return _OPERATORS[curvature]


def _training_phase(model, objective: LossSpec, data, *, train_steps: int, lr: float | None, every: int,
                    density_every: int | None, log_dir: str | None, resume: bool,
                    eos_band: tuple[float, float], seed: int,
                    progress: bool) -> tuple[SharpnessMonitor, float | None, list[float]]:
    """Monitored training when ``train_steps > 0``; otherwise the monitor of an earlier log (if any)."""
    if train_steps:
        return train_monitored(model, objective.loss_fn, data, train_steps=train_steps, lr=lr, every=every,
                               density_every=density_every, log_dir=log_dir, resume=resume, eos_band=eos_band,
                               seed=seed, progress=progress, **objective.operator_options())
    monitor = _make_monitor(model, objective, data, every=every, log_dir=log_dir, resume=resume,
                            eos_band=eos_band, seed=seed)
    monitor.close()
    return monitor, lr, []


def _analyze_final_point(out: dict, model, objective: LossSpec, data, operator_cls, *, k: int,
                         density_probes: int, density_steps: int, landscape_steps: int, seed: int,
                         progress: bool) -> None:
    """Top eigenvalues, SLQ density, summary and landscape slices at the current parameters, into ``out``."""
    message("[analyze] final point: top eigenvalues, spectral density, summary", progress)
    H = operator_cls(model, objective.loss_fn, data, **objective.operator_options())
    n = H.shape[0]
    top = eigsh(H, k=k, which="largest", tol=_FINAL_TOL, seed=seed)
    density = spectral_density(H, num_probes=density_probes, num_steps=min(density_steps, n), seed=seed)
    summary = summarize(H, seed=seed)
    edge = bulk_edge(density)
    values = [float(v) for v in top.values]
    outliers = [v for v in values if v > OUTLIER_FACTOR * edge]
    out["final"] = {
        "num_parameters": n, "loss": float(H.loss), "gradient_norm": float(H.gradient.norm()),
        "top_eigenvalues": values, "top_converged": bool(top.converged.all()),
        "top_residuals": [float(r) for r in top.residuals], "top_num_matvecs": top.num_matvecs,
        "bulk_edge": edge, "num_outliers": len(outliers), "outliers_at_least": len(outliers) == len(values),
        "summary": {k_: (v if not isinstance(v, torch.Tensor) else v.tolist()) for k_, v in summary.as_dict().items()},
        "density": {"num_probes": density.num_probes, "num_steps": density.num_steps, "sigma": density.sigma,
                    "num_matvecs": density.num_matvecs, "integral": density.integral()},
        "num_matvecs": H.num_matvecs,
    }
    out.update(_density=density, _top=top)
    _landscape_slices(out, model, objective, data, top_eigenvalue=values[0], loss=float(H.loss),
                      landscape_steps=landscape_steps, seed=seed, progress=progress)


def _landscape_slices(out: dict, model, objective: LossSpec, data, *, top_eigenvalue: float, loss: float,
                      landscape_steps: int, seed: int, progress: bool) -> None:
    """The 1-D slice along the top eigenvector and the 2-D filter-normalized slice, into ``out``."""
    lam = max(top_eigenvalue, 1e-12)  # a nonpositive top eigenvalue: the widest slice the floor allows
    span = 2.0 * math.sqrt(2.0 * max(loss, _MIN_SLICE_LOSS) / lam)
    options = objective.operator_options()
    land1 = landscape(model, objective.loss_fn, data, directions="eigen", dims=1, steps=landscape_steps,
                      span=span, seed=seed, progress=progress, **options)
    land2 = landscape(model, objective.loss_fn, data, directions="random", dims=2,
                      steps=max(_MIN_PLANE_STEPS, landscape_steps // 2), span=1.0, seed=seed, progress=progress, **options)
    out["landscape_1d"] = land1.as_dict()
    out["landscape_2d"] = land2.as_dict()
    out.update(_landscape1=land1, _landscape2=land2)


def _below(summary: dict) -> str:
    """Where the negative count starts: zero for a dense spectrum, ``-3 sigma`` of SLQ's resolution."""
    sigma = summary.get("resolution") or 0.0
    if sigma > 0:
        return f"below {-summary['negative_threshold']:.2g}, 3 sigma of SLQ's resolution sigma = {sigma:.2g}"
    return "below zero"


def _effective_rank_text(summary: dict) -> str:
    erank = summary["effective_rank"]
    if erank != erank:  # nan: SLQ does not resolve it
        return "effective rank and condition number not resolved by SLQ"
    return f"effective rank {erank:.1f}"


def _final_sentence(final: dict) -> str:
    s = final["summary"]
    n_out = final["num_outliers"]
    at_least = "at least " if final["outliers_at_least"] else ""
    top = ", ".join(f"{v:.3g}" for v in final["top_eigenvalues"][: max(1, min(n_out, 6))])
    frac_neg = s.get("fraction_negative")
    neg_mass = s.get("negative_mass")
    parts = [f"final point: {at_least}{n_out} outlier eigenvalue{'s' if n_out != 1 else ''} "
             f"(> {OUTLIER_FACTOR:g}x the bulk edge {final['bulk_edge']:.3g}; largest {top}) over "
             f"{describe_bulk(final['bulk_edge'], final['top_eigenvalues'][0])}"]
    if neg_mass is not None and frac_neg is not None:
        # in words: how many eigenvalues are negative, and how large they are next to the positive ones
        small = ", small next to the positive ones" if neg_mass < 0.5 * frac_neg else ""
        parts.append(f"{frac_neg:.1%} of the eigenvalues are {_below(s)} and together make up "
                     f"{neg_mass:.1%} of the sum of |eigenvalue|{small} (the most negative is "
                     f"{s['lambda_min']:.3g})")
    return "; ".join(parts)


def diagnosis(payload: dict) -> str:
    """The one-paragraph diagnosis: sharpness history and the final spectrum, from the numbers.

    Divergence comes first (:func:`training_divergence` on the payload's records and training
    losses): a diverged run is said to have diverged, and its sharpness is not described as the
    edge of stability (a ratio far above 1 there means the iterates are leaving, not hovering).
    """
    parts = []
    if payload.get("train_steps"):
        records, losses = payload.get("records") or [], payload.get("training_losses") or []
        reason = training_divergence(records, losses)
        if reason is not None:
            parts.append(f"training diverged: {reason}. Lower the learning rate (gradient descent is stable "
                         "for lambda_max < 2/lr); the final point below is where the diverged run stopped")
        elif payload.get("sharpness"):
            parts.append(payload["sharpness"]["sentence"])
    elif payload.get("sharpness"):
        parts.append(payload["sharpness"]["sentence"])
    if payload.get("final"):
        parts.append(_final_sentence(payload["final"]))
    return ". ".join(p[0].upper() + p[1:] for p in parts) + "."


def summary_markdown(payload: dict, title: str) -> str:
    final = payload["final"]
    s = final["summary"]
    lines = [f"# {title}", "", "## Diagnosis", "", diagnosis(payload), ""]
    if payload.get("train_steps"):
        sh = payload["sharpness"]
        losses = payload["training_losses"]
        lines += ["## Training", "",
                  f"- full-batch gradient descent, lr = {payload['lr']:.4g}, stability limit 2/lr = "
                  f"{2 / payload['lr']:.4g}, {payload['train_steps']} steps, {sh['num_checks']} sharpness checks",
                  (f"- loss{_mode_note(payload.get('training_loss_mode'))} {losses[0]:.4g} -> {losses[-1]:.4g}"
                   if losses else "- (resumed: no new steps)"),
                  f"- lambda_max {sh['initial_lambda_max']:.4g} -> {sh['final_lambda_max']:.4g} "
                  f"(max ratio to 2/lr {sh['max_ratio']:.3f} at step {sh['max_ratio_step']}); "
                  + (f"training diverged ({sh['divergence']}), {sh['num_unstable']} checks above the band"
                     if sh.get("diverged") else
                     f"checks: {sh['num_edge_of_stability']} edge of stability, {sh['num_unstable']} unstable"),
                  "- figures: `sharpness.png`, `loss.png`, `density_snapshots.png`", ""]
    lines += ["## Final point", "",
              f"- {final['num_parameters']} parameters, loss{_mode_note(final.get('loss_mode'))} {final['loss']:.4g}, "
              f"gradient norm {final['gradient_norm']:.3g}",
              f"- top eigenvalues: {', '.join(f'{v:.4g}' for v in final['top_eigenvalues'])} "
              f"({'converged' if final['top_converged'] else 'NOT converged'}, {final['top_num_matvecs']} products)",
              f"- bulk edge (99th percentile of |lambda| under SLQ): {final['bulk_edge']:.4g}; outliers: {final['num_outliers']}",
              f"- lambda_min {s['lambda_min']:.4g}, trace {s['trace']:.4g}, negative mass {s['negative_mass']:.2%}, "
              f"fraction negative {s['fraction_negative']:.2%} ({_below(s)}), {_effective_rank_text(s)} "
              f"(definiteness: {s['definiteness']})",
              "- figures: `top_eigenvalues.png`, `density.png`, `landscape_1d.png`, `landscape_2d.png`", ""]
    ex = payload.get("example")
    if ex:
        lines += [f"## Worked example: f(x, y) = {ex['function']}", "",
                  f"- critical point ({ex['critical_point'][0]:.6g}, {ex['critical_point'][1]:.6g}), "
                  f"gradient norm {ex['gradient_norm']:.2g}",
                  f"- Hessian {ex['hessian']}, eigenvalues {', '.join(f'{v:.6g}' for v in ex['eigenvalues'])}, "
                  f"condition number {ex['condition_number']:.6g}: {ex['classification']}",
                  f"- Taylor check at x0 = {ex['taylor_check']['x0']}, v = {ex['taylor_check']['v']}: exact "
                  f"{ex['taylor_check']['exact']:.6g}, quadratic model {ex['taylor_check']['model']:.6g}",
                  "- figure: `contour.png`" if "contour.png" in payload.get("files", []) else "", ""]
    for note in payload.get("notes", []):
        lines.append(f"Note: {note}.")
    lines += ["", f"Computed by hesse in {payload.get('seconds', 0):.1f} s; every number is in `report.json`.", ""]
    return "\n".join(lines)
