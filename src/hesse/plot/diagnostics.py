"""Figures of training diagnostics: sharpness against the stability limit, the loss with the
monitor's flags, spectral density snapshots over training, and loss-landscape slices."""

from __future__ import annotations

__all__ = ["plot_sharpness", "plot_sharpness_runs", "plot_eigenvalue_evolution", "plot_loss_flags",
           "plot_density_snapshots", "plot_density_grid", "plot_landscape", "save_figure"]

_FLAG_COLORS = {"unstable": "C3", "edge_of_stability": "C1", "saddle_plateau": "C4", "not_converged": "0.5"}


def _axes(ax, figsize=(6.5, 4)):
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def save_figure(fig, path: str, dpi: int = 110) -> str:
    """``tight_layout``, save to ``path`` and close the figure (frees pyplot's reference). Returns path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _records(records):
    """Accept SharpnessRecord objects, dicts (read_log) or a SharpnessMonitor."""
    records = getattr(records, "records", records)
    out = [r if isinstance(r, dict) else r.as_dict() for r in records]
    if not out:
        raise ValueError("no monitor records to plot: run the monitor for at least one check.")
    return out


def plot_sharpness(records, ax=None, eos_band: float | tuple[float, float] | None = None,
                   label: str | None = None, color: str | None = None):
    """λ_max over training against the stability limit 2/lr (Cohen et al. 2021, Fig. 1 style).

    ``records``: a :class:`hesse.SharpnessMonitor`, its ``records`` or :func:`hesse.diagnostics.read_log`
    output. The limit is drawn dashed; ``eos_band`` (a fraction, or ``(below, above)``) shades the
    edge-of-stability band. ``label`` and ``color`` name and colour this run's curves (its limit
    in the same colour), so that several runs can share one axis.
    Returns the Figure.
    """
    recs = _records(records)
    fig, ax = _axes(ax)
    steps = [r["step"] for r in recs]
    curve = "λ_max (sharpness)" if label is None else f"λ_max, {label}"
    ax.plot(steps, [r["lambda_max"] for r in recs], "o-", ms=3, color=color or "C0", label=curve)
    limit = [r["stability_limit"] for r in recs]
    ax.plot(steps, limit, "--", color=color or "k", lw=1.2,
            label="stability limit (2/lr)" if label is None else f"2/lr, {label}")
    if eos_band:
        below, above = eos_band if isinstance(eos_band, (tuple, list)) else (eos_band, eos_band)
        ax.fill_between(steps, [v * (1 - below) for v in limit], [v * (1 + above) for v in limit],
                        color="C1", alpha=0.15, label=f"edge-of-stability band (-{below:.0%}, +{above:.0%})")
    if any(r.get("lambda_min") is not None for r in recs):
        ax.plot(steps, [r.get("lambda_min") for r in recs], "s-", ms=2, color="C2", lw=0.8, label="λ_min")
    ax.set_xlabel("training step")
    ax.set_ylabel("eigenvalue")
    ops = {r.get("operator", "hessian") for r in recs}
    ax.set_title("Sharpness vs the stability limit" + ("" if ops == {"hessian"} else " (preconditioned)"))
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_sharpness_runs(runs, ax=None, loss: bool = True):
    """Several training runs on one figure (Cohen et al. 2021, Fig. 1): each run's λ_max and its
    stability limit 2/lr in the run's colour and, with ``loss=True``, its loss on a twin axis
    (log scale, thin lines).

    ``runs``: ``{label: monitor or records}``, e.g. ``{f"lr {lr}": monitor}``; the labels appear in
    the legend in this order. Returns the Figure.
    """
    if not runs:
        raise ValueError("no runs to plot: pass {label: SharpnessMonitor (or its records)}.")
    fig, ax = _axes(ax, figsize=(7.5, 4.5))
    twin = ax.twinx() if loss else None
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i % 10}"
        plot_sharpness(records, ax=ax, label=str(label), color=color)
        if twin is not None:
            recs = _records(records)
            twin.plot([r["step"] for r in recs], [r["loss"] for r in recs], "-", color=color, lw=0.7,
                      alpha=0.6)
    if twin is not None:
        twin.set_yscale("log")
        twin.set_ylabel("loss (thin lines)")
    ax.set_title("Sharpness against 2/lr, one colour per run")
    ax.legend(loc="best", fontsize=7, ncol=2)
    return fig


def plot_eigenvalue_evolution(records, ax=None, k: int | None = None):
    """The top eigenvalues over training: one line per rank (λ_1 darkest), from the monitor's
    ``top_eigenvalues`` (``Measurements(k=...)`` sets how many), at most ``k`` of them. Returns the
    Figure."""
    recs = _records(records)
    depth = max((len(r.get("top_eigenvalues") or []) for r in recs), default=0)
    if depth == 0:
        raise ValueError("the records hold no top eigenvalues: create the monitor with Measurements(k=...).")
    depth = depth if k is None else min(depth, int(k))
    fig, ax = _axes(ax)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for j in range(depth):
        points = [(r["step"], r["top_eigenvalues"][j]) for r in recs if len(r.get("top_eigenvalues") or []) > j]
        ax.plot([p[0] for p in points], [p[1] for p in points], "-", lw=1.2,
                color=cmap(j / max(1, depth - 1) * 0.85), label=f"λ_{j + 1}")
    ax.set_xlabel("training step")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"Top {depth} Hessian eigenvalues over training")
    ax.legend(loc="best", fontsize=7, ncol=2)
    return fig


def plot_density_grid(densities, top=None, floor: float = 1e-6, linthresh: float | None = None):
    """Spectral densities as small multiples on one symmetric-log eigenvalue axis, with the top
    eigenvalues drawn over them as vertical ticks.

    ``densities``: ``[(step, SpectralDensity)]`` (the monitor's ``densities``, or the monitor);
    ``top``: optional ``{step: [eigenvalues]}`` (or a sequence aligned with ``densities``);
    ``linthresh``: the linear range of the symlog axis (default 1 % of the largest |node|). Best
    with densities that share one grid and width (``SpectralDensity.resmooth``). Returns the Figure.
    """
    densities = getattr(densities, "densities", densities)
    if not densities:
        raise ValueError("no density snapshots: create the monitor with density=True.")
    import matplotlib.pyplot as plt

    count = len(densities)
    fig, axes = plt.subplots(count, 1, figsize=(6.5, 1.3 * count + 0.8), sharex=True, squeeze=False)
    span = max(float(d.nodes.abs().max()) for _, d in densities)
    thresh = linthresh if linthresh is not None else max(span * 1e-2, 1e-12)
    for i, ((step, d), ax) in enumerate(zip(densities, axes[:, 0])):
        y = d.density.cpu().numpy()
        ax.fill_between(d.grid.cpu().numpy(), floor, y.clip(min=floor), color="C0", alpha=0.4, lw=0)
        ax.plot(d.grid.cpu().numpy(), y.clip(min=floor), color="C0", lw=0.8)
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
        ax.set_xscale("symlog", linthresh=thresh)
        ax.set_ylabel(f"step {step}", fontsize=8)
        values = None
        if isinstance(top, dict):
            values = top.get(step)
        elif top is not None:
            values = top[i]
        for v in values or []:
            ax.axvline(float(v), color="C3", lw=0.8, alpha=0.8)
    axes[-1, 0].set_xlabel(f"eigenvalue (symmetric log, linear within ±{thresh:.2g}); red: top eigenvalues")
    axes[0, 0].set_title("Hessian spectral density over training")
    return fig


def plot_loss_flags(records, ax=None, losses=None):
    """The training loss (``losses[i]``: the loss after i steps, optional) and the monitored loss, with each
    check's flag marked (unstable red, edge of stability orange, saddle/plateau purple). Returns the Figure."""
    recs = _records(records)
    fig, ax = _axes(ax)
    if losses is not None:
        ax.plot(range(len(losses)), losses, color="0.6", lw=0.8, label="training loss (per step)")
    ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], "o-", ms=3, color="C0",
            label="loss at checks")
    seen = set()
    for r in recs:
        for flag in r.get("flags") or []:
            if flag in _FLAG_COLORS:
                ax.plot([r["step"]], [r["loss"]], "o", ms=7, mfc="none", color=_FLAG_COLORS[flag],
                        label=None if flag in seen else flag.replace("_", " "))
                seen.add(flag)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title("Loss with curvature flags")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_density_snapshots(densities, ax=None, log: bool = True, floor: float = 1e-6):
    """Spectral densities at several training steps on one axis (``densities``: the monitor's
    ``densities`` list of ``(step, SpectralDensity)``, or the monitor itself). Returns the Figure."""
    densities = getattr(densities, "densities", densities)
    if not densities:
        raise ValueError("no density snapshots: create the monitor with density=True.")
    fig, ax = _axes(ax)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    for i, (step, d) in enumerate(densities):
        color = cmap(i / max(1, len(densities) - 1))
        y = d.density.cpu().numpy()
        ax.plot(d.grid.cpu().numpy(), y.clip(min=floor) if log else y, color=color, lw=1.2, label=f"step {step}")
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title("Hessian spectral density over training (SLQ)")
    ax.legend(loc="upper right", fontsize=7)
    return fig


def plot_landscape(result, ax=None):
    """A :class:`hesse.LandscapeResult`: a curve for 1-D (with the quadratic Taylor model along an
    eigenvector), filled contours for 2-D. Returns the Figure."""
    import numpy as np

    fig, ax = _axes(ax)
    if result.dims == 1:
        a = result.coordinates[0].numpy()
        ax.plot(a, result.losses.numpy(), color="C0", lw=1.8, label="loss")
        if result.eigenvalues is not None:
            lam, g = result.eigenvalues[0], result.directional_derivatives[0]
            ax.plot(a, result.center_loss + g * a + 0.5 * lam * a**2, "--", color="C3", lw=1,
                    label=f"quadratic model (λ={lam:.3g})")
        ax.axvline(0.0, color="k", lw=0.6)
        ax.set_xlabel("step along " + ("top eigenvector" if result.kind == "eigen" else "random direction"))
        ax.set_ylabel("loss")
        ax.legend(loc="best", fontsize=8)
    else:
        a, b = (c.numpy() for c in result.coordinates)
        A, B = np.meshgrid(a, b, indexing="ij")
        Z = result.losses.numpy()
        cs = ax.contourf(A, B, Z, levels=30, cmap="viridis")
        ax.contour(A, B, Z, levels=30, colors="white", linewidths=0.3, alpha=0.5)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.plot([0], [0], "o", color="crimson")
        names = ("eigenvector 1", "eigenvector 2") if result.kind == "eigen" else ("direction 1", "direction 2")
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.set_title(f"Loss landscape ({result.kind} directions)")
    return fig

