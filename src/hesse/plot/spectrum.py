"""Figures of spectra: the SLQ spectral density (log scale) and the top eigenvalues."""

from __future__ import annotations

__all__ = ["plot_spectral_density", "plot_top_eigenvalues"]

#: The ±2 stderr band is drawn up to this multiple of the density's peak: where the estimate's error
#: is larger, the band says "uncertain" at that height instead of stretching the axis (a single
#: noisy grid point once pushed it to 1e7 for a density peaking at 4) and hiding the curve.
BAND_CEILING = 3.0


def _axes(ax):
    # the figure comes from pyplot's current backend: choosing one is the user's (or the CLI's) call
    if ax is None:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        return fig, ax
    return ax.figure, ax


def plot_spectral_density(density, ax=None, log: bool = True, floor: float = 1e-8):
    """Plot a :class:`hesse.SpectralDensity`: the smoothed density on a log axis (as in Ghorbani,
    Krishnan & Xiao 2019, Fig. 1), a ±2 standard-error band where available, and the node
    positions as ticks. Returns the Figure."""
    import torch

    fig, ax = _axes(ax)
    x = density.grid.cpu().numpy()
    y = density.density.cpu().numpy()
    ax.plot(x, y.clip(min=floor) if log else y, color="C0", lw=1.5, label="SLQ density")
    err = density.stderr
    if err is not None and bool(torch.isfinite(err).all()):
        ceiling = BAND_CEILING * max(float(density.density.max()), floor)
        lo = (density.density - 2 * err).clamp_min(floor if log else 0.0).cpu().numpy()
        hi = (density.density + 2 * err).clamp_max(ceiling).cpu().numpy()
        clipped = bool(((density.density + 2 * err) > ceiling).any())
        ax.fill_between(x, lo, hi, color="C0", alpha=0.2,
                        label="±2 stderr" + (f" (cut at {BAND_CEILING:g}x the peak)" if clipped else ""))
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    nodes = density.nodes[density.weights > 1e-12].cpu().numpy()
    ax.plot(nodes, [floor * 2 if log else 0.0] * len(nodes), "|", color="C3", ms=8, label="Ritz nodes")
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Spectral density ({density.num_probes} probes x {density.num_steps} steps, "
                 f"sigma={density.sigma:.2g})")
    ax.legend(loc="upper right")
    return fig


def plot_top_eigenvalues(result, ax=None):
    """Bar chart of the eigenvalues of an :class:`hesse.EigshResult`; unconverged pairs hatched."""
    fig, ax = _axes(ax)
    vals = result.values.cpu().numpy()
    conv = result.converged.cpu().numpy()
    idx = range(1, len(vals) + 1)
    bars = ax.bar(idx, vals, color=["C0" if c else "0.7" for c in conv])
    for b, c in zip(bars, conv):
        if not c:
            b.set_hatch("//")
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set_xlabel("index")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"Eigenvalues ({result.which}, {result.method}, {result.num_matvecs} products)")
    ax.set_xticks(list(idx))
    return fig
