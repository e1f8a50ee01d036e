"""Figures for :func:`hesse.minimize` results: trajectories on a 2-D contour plot (gradient
descent's zig-zag against Newton's direct path) and convergence curves (log gradient norm against
iterations and against function evaluations)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

__all__ = ["plot_trajectories", "plot_convergence"]


def _as_named(results) -> dict:
    if isinstance(results, Mapping):
        items = dict(results)
    elif isinstance(results, (list, tuple)):
        items = {}
        for r in results:
            items[getattr(r, "method", str(len(items)))] = r
    else:
        items = {getattr(results, "method", "result"): results}
    for name, r in items.items():
        if getattr(r, "history", None) is None or not r.history.values:
            raise ValueError(
                f"result {name!r} has no history; run hesse.minimize(..., history=True) to plot it."
            )
    return items


def plot_trajectories(
    f: Callable[[torch.Tensor], torch.Tensor],
    results,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    levels: int = 30,
    log_scale: bool = True,
    grid: int = 200,
    title: str | None = None,
    variables: Sequence[str] | None = None,
):
    """Iterates of each result over filled contours of the 2-D function ``f``.

    ``results``: an ``OptimizeResult``, a list of them, or a dict ``{label: result}`` (from
    ``hesse.minimize(..., history=True)`` on a function of 2 variables). ``log_scale`` draws the
    contours of ``log(f - f_min + 1e-12)`` (Rosenbrock's valley is invisible otherwise).
    ``variables`` names the two axes (e.g. ``("x", "y")``; default ``x[0]``, ``x[1]``).
    Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    if variables is not None and len(variables) != 2:
        raise ValueError(f"variables must name the 2 axes, e.g. ('x', 'y'); got {list(variables)}.")
    xlabel, ylabel = variables if variables is not None else ("x[0]", "x[1]")

    items = _as_named(results)
    paths = {}
    for name, r in items.items():
        if not r.history.iterates_kept or not r.history.iterates:
            raise ValueError(f"result {name!r} kept no iterates (n > 10^4 or history=False).")
        P = torch.stack([x.reshape(-1) for x in r.history.iterates]).to(torch.float64).numpy()
        if P.shape[1] != 2:
            raise ValueError(f"plot_trajectories needs a function of 2 variables; result {name!r} has n={P.shape[1]}.")
        paths[name] = P
    allp = np.concatenate(list(paths.values()))
    allp = allp[np.isfinite(allp).all(1)]
    lo, hi = allp.min(0), allp.max(0)
    pad = 0.15 * np.maximum(hi - lo, 1e-3) + 0.2
    xlim = xlim or (lo[0] - pad[0], hi[0] + pad[0])
    ylim = ylim or (lo[1] - pad[1], hi[1] + pad[1])
    xs = np.linspace(*xlim, grid)
    ys = np.linspace(*ylim, grid)
    XX, YY = np.meshgrid(xs, ys)
    pts = torch.tensor(np.stack([XX.ravel(), YY.ravel()], 1), dtype=torch.float64)
    with torch.no_grad():
        Z = torch.vmap(f)(pts).reshape(XX.shape).numpy()
    if log_scale:
        Z = np.log10(Z - np.nanmin(Z) + 1e-12)
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    cs = ax.contourf(XX, YY, Z, levels=levels, cmap="viridis")
    fig.colorbar(cs, ax=ax, label="log10(f - min f)" if log_scale else "f")
    for name, P in paths.items():
        r = items[name]
        ax.plot(P[:, 0], P[:, 1], "o-", ms=2.5, lw=1.2, label=f"{name} ({r.nit} it, {r.nfev} f-evals)")
    start = next(iter(paths.values()))[0]
    ax.plot(*start, "w*", ms=12, label="start")
    ax.set_xlim(xlim)
    ax.set_ylim(ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "optimization trajectories")
    fig.tight_layout()
    return fig


#: When the longest run is this many times the shortest, the x axes are log-scaled (symlog, linear
#: below 1 so iteration 0 stays on the axis): 20 Newton steps next to 1000 gradient steps would
#: otherwise be squeezed against the left edge.
LOG_X_RATIO = 20


def plot_convergence(results, title: str | None = None, log_x: bool | None = None):
    """Two panels: ``||grad f||`` (log scale) against iterations and against function evaluations
    (the fair axis when methods differ in cost per iteration).

    ``log_x=None`` log-scales the x axes when the longest run has more than ``LOG_X_RATIO`` times
    the iterations of the shortest; ``True``/``False`` force it. Returns the Figure.
    """
    import matplotlib.pyplot as plt

    items = _as_named(results)
    lengths = [len(r.history.grad_norms) for r in items.values()]
    if log_x is None:
        log_x = max(lengths) > LOG_X_RATIO * max(1, min(lengths))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, r in items.items():
        g = np.maximum(np.asarray(r.history.grad_norms, dtype=float), 1e-300)
        a1.semilogy(np.arange(len(g)), g, label=f"{name} ({r.nit} it, {r.convergence_order})")
        a2.semilogy(np.asarray(r.history.evaluations), g, label=name)
    a1.set_xlabel("iteration (log scale)" if log_x else "iteration")
    a2.set_xlabel("function evaluations (log scale)" if log_x else "function evaluations")
    for a in (a1, a2):
        if log_x:
            a.set_xscale("symlog", linthresh=1.0)
        a.set_ylabel("||grad f||")
        a.grid(True, which="both", alpha=0.3)
        a.legend(fontsize=8)
    fig.suptitle(title or "convergence")
    fig.tight_layout()
    return fig
