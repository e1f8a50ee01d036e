"""Figures of a 2-D function's local geometry: a contour figure and a 3-D surface.

``plot_contour`` draws, e.g. for 3x² + 2xy + 2y² - 4x - 6y: filled contours with white contour
lines, the gradient field (quiver, pointing uphill, perpendicular to level
curves), critical points marked by kind and, at minima (and maxima), the Hessian eigenvector axes
scaled by 1/sqrt(|λ|) — the steep direction draws shorter (the displacement that raises the
quadratic model by ½).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from hesse.geometry import CriticalPoint, classify, critical_points

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_contour", "plot_surface"]

_STYLE = {  # kind -> (marker, color)
    "minimum": ("o", "crimson"), "degenerate minimum": ("o", "orange"),
    "maximum": ("^", "royalblue"), "degenerate maximum": ("^", "deepskyblue"),
    "saddle": ("X", "gold"), "degenerate saddle": ("X", "khaki"),
    "non-isolated": ("D", "mediumorchid"),  # one representative point of a valley or ridge
    "inconclusive": ("s", "gray"), "not critical": ("d", "white"),
}

POINTS_STARTS = 64
"""Newton starts of the critical-point search behind a plot: a 2-D picture of a few basins."""


def _function(f: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    func = f.function if hasattr(f, "function") and hasattr(f, "variables") else f
    if not callable(func):
        raise TypeError(f"f must be callable (a function of one flat tensor of length 2) or a parsed "
                        f"expression; got {type(f).__name__}.")
    return func


def _grid(func: Callable[[torch.Tensor], torch.Tensor], bounds: Any,
          resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    B = np.asarray(bounds, dtype=float)
    if B.shape != (2, 2) or not (B[:, 0] < B[:, 1]).all():
        raise ValueError(f"bounds must be two (low, high) pairs with low < high for a 2-D plot; got {bounds!r}.")
    xs = np.linspace(B[0, 0], B[0, 1], resolution)
    ys = np.linspace(B[1, 0], B[1, 1], resolution)
    X, Y = np.meshgrid(xs, ys)
    P = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], 1), dtype=torch.float64)
    try:
        Z = torch.func.vmap(func)(P)
    except RuntimeError:  # data-dependent control flow: evaluate point by point
        Z = torch.stack([func(p) for p in P])
    return X, Y, Z.detach().numpy().reshape(X.shape), B


def _points(func: Callable[[torch.Tensor], torch.Tensor], points: Sequence[Any] | None,
            bounds: Sequence[tuple[float, float]]) -> list[CriticalPoint]:
    if points is None:
        return list(critical_points(func, bounds, progress=False, num_starts=POINTS_STARTS))
    out = []
    for p in points:
        out.append(p if isinstance(p, CriticalPoint) else classify(func, torch.as_tensor(np.asarray(p, dtype=float))))
    return out


def _xy(cp: CriticalPoint) -> np.ndarray:
    """The point's two coordinates; a verdict on a Hessian alone has none to draw."""
    if cp.x is None:
        raise ValueError("a CriticalPoint from hesse.classify(H) (a Hessian alone) has no coordinates to "
                         "plot; pass points classified with the function, hesse.classify(f, x).")
    return cp.x.detach().numpy().reshape(-1)


def _axis_names(f: Any, variables: Sequence[str] | None) -> tuple[str, str]:
    """The two axis labels: ``variables`` if given, else a parsed expression's own names, else x, y."""
    names = variables if variables is not None else getattr(f, "variables", None) or ("x", "y")
    if len(names) != 2:
        raise ValueError(f"variables must name the 2 axes, e.g. ('x', 'y'); got {list(names)}.")
    return str(names[0]), str(names[1])


def plot_contour(f: Any, bounds: Sequence[tuple[float, float]], points: Sequence[Any] | None = None,
                 ax: Any = None, *, levels: int = 30,
                 resolution: int = 300, quiver: int = 18, cmap: str = "viridis", axes: bool = True,
                 title: str | None = "Contours of f, gradient field, and Hessian curvature axes",
                 variables: Sequence[str] | None = None) -> Figure:
    """Contour figure of the 2-D function ``f`` over ``bounds`` = [(x_lo, x_hi), (y_lo, y_hi)].

    ``points``: None (find them with :func:`hesse.critical_points`), a list of
    :class:`~hesse.geometry.CriticalPoint`, or a list of coordinates (each classified). ``axes``
    draws the Hessian eigenvector axes scaled by 1/sqrt(|λ|) at non-degenerate minima and maxima.
    ``variables`` names the two axes (default: a parsed expression's variables, else x and y). Returns the matplotlib Figure (save it with
    ``fig.savefig(path)``).
    """
    import matplotlib.pyplot as plt

    func = _function(f)
    X, Y, Z, B = _grid(func, bounds, resolution)
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.0, 5.5))
    else:
        fig = ax.figure
    cs = ax.contourf(X, Y, Z, levels=levels, cmap=cmap, alpha=0.85)
    ax.contour(X, Y, Z, levels=levels, colors="white", linewidths=0.4, alpha=0.5)
    fig.colorbar(cs, ax=ax, label="f(x, y)")
    if quiver:
        gx = np.linspace(B[0, 0], B[0, 1], quiver)
        gy = np.linspace(B[1, 0], B[1, 1], quiver)
        GX, GY = np.meshgrid(gx, gy)
        P = torch.as_tensor(np.stack([GX.ravel(), GY.ravel()], 1), dtype=torch.float64)
        try:
            G = torch.func.vmap(torch.func.grad(func))(P).detach().numpy()
        except RuntimeError:
            G = torch.stack([torch.func.grad(func)(p) for p in P]).detach().numpy()
        ax.quiver(GX, GY, G[:, 0].reshape(GX.shape), G[:, 1].reshape(GX.shape), color="white", alpha=0.8,
                  width=0.003)
    seen: set[str] = set()
    for cp in _points(func, points, [(float(lo), float(hi)) for lo, hi in B]):
        x = _xy(cp)
        marker, color = _STYLE.get(cp.kind, ("o", "black"))
        label = cp.kind if cp.kind not in seen else None
        seen.add(cp.kind)
        ax.plot(x[0], x[1], marker, color=color, markersize=9, markeredgecolor="black", label=label)
        if axes and cp.kind in ("minimum", "maximum") and cp.eigenvectors is not None:
            for lam, vec in zip(cp.eigenvalues.tolist(), cp.eigenvectors.T.detach().numpy()):
                step = vec / np.sqrt(abs(lam))
                ax.annotate("", xy=x + step, xytext=x - step,
                            arrowprops=dict(arrowstyle="<->", color=color, lw=2.0))
    ax.set_xlim(B[0]), ax.set_ylim(B[1])
    xlabel, ylabel = _axis_names(f, variables)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if seen:
        ax.legend(loc="upper left")
    ax.set_aspect("equal")
    fig.tight_layout()
    return fig


def plot_surface(f: Any, bounds: Sequence[tuple[float, float]], points: Sequence[Any] | None = None, *,
                 resolution: int = 80,
                 cmap: str = "viridis", title: str | None = "Surface of f",
                 variables: Sequence[str] | None = None) -> Figure:
    """3-D surface of the 2-D function ``f`` over ``bounds``, with ``points`` (as in
    :func:`plot_contour`; pass ``points=[]`` for none) marked by kind; ``variables`` names the
    horizontal axes. Returns the Figure."""
    import matplotlib.pyplot as plt

    func = _function(f)
    X, Y, Z, B = _grid(func, bounds, resolution)
    fig = plt.figure(figsize=(7.0, 5.5))
    ax = fig.add_subplot(projection="3d")
    ax.plot_surface(X, Y, Z, cmap=cmap, alpha=0.8, linewidth=0, antialiased=True)
    seen: set[str] = set()
    for cp in _points(func, points, [(float(lo), float(hi)) for lo, hi in B]):
        x = _xy(cp)
        marker, color = _STYLE.get(cp.kind, ("o", "black"))
        ax.scatter([x[0]], [x[1]], [cp.value], marker=marker, color=color, s=60, edgecolors="black",
                   label=cp.kind if cp.kind not in seen else None, depthshade=False)
        seen.add(cp.kind)
    xlabel, ylabel = _axis_names(f, variables)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_zlabel("f(x, y)")
    if title:
        ax.set_title(title)
    if seen:
        ax.legend(loc="upper left")
    fig.tight_layout()
    return fig
