"""Plots: the contour figure of 3x² + 2xy + 2y² - 4x - 6y and the 3-D surface render and carry the right artists."""

import matplotlib
import pytest
import torch

import hesse
from hesse.geometry import KINDS
from hesse.plot.geometry import _STYLE


def quadratic(p):
    x, y = p[0], p[1]
    return 3 * x**2 + 2 * x * y + 2 * y**2 - 4 * x - 6 * y


def test_quadratic_contour_figure(tmp_path):
    fig = hesse.plot.plot_contour(quadratic, ((-1.5, 2.5), (-1.0, 3.0)), points=[[0.2, 1.4]], resolution=80)
    ax = fig.axes[0]
    assert ax.get_title().startswith("Contours of f")
    assert len(ax.collections) >= 3  # filled contours, contour lines, quiver
    assert any(type(c).__name__ == "Quiver" for c in ax.collections)
    # two eigen-axes of length 2/sqrt(λ) at the minimum
    arrows = [a for a in ax.texts if hasattr(a, "arrow_patch")]
    assert len(arrows) == 2
    lengths = sorted(float(torch.tensor(a.xy) .sub(torch.tensor(a.xyann)).norm()) for a in arrows)
    assert lengths == pytest.approx([2 / 7.236068**0.5, 2 / 2.763932**0.5], rel=1e-5)
    out = tmp_path / "contour.png"
    fig.savefig(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_contour_finds_points_itself_and_surface(tmp_path):
    def quartic(p):
        return p[0] ** 4 + p[1] ** 4 - 2 * p[0] ** 2 - 2 * p[1] ** 2 + 1

    fig = hesse.plot.plot_contour(quartic, ((-2, 2), (-2, 2)), resolution=60, quiver=8)
    labels = {t.get_text() for t in fig.axes[0].get_legend().get_texts()}
    assert labels == {"minimum", "saddle", "maximum"}
    fig3 = hesse.plot.plot_surface(quartic, ((-2, 2), (-2, 2)), resolution=30)
    assert fig3.axes[0].name == "3d"
    fig3.savefig(tmp_path / "surface.png")


def test_plot_bad_bounds():
    with pytest.raises(ValueError, match="2-D"):
        hesse.plot.plot_contour(quadratic, ((0, 1),))


def test_contour_axes_named_by_variables():
    from hesse.cli.expressions import parse_expression

    expr = parse_expression("3*a**2 + 2*a*b + 2*b**2 - 4*a - 6*b")
    ax = hesse.plot.plot_contour(expr, ((-1.5, 2.5), (-1.0, 3.0)), points=[], resolution=20).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == tuple(expr.variables)
    ax = hesse.plot.plot_contour(quadratic, ((-1, 1), (-1, 1)), points=[], resolution=20,
                                 variables=("u", "v")).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("u", "v")
    with pytest.raises(ValueError, match="2 axes"):
        hesse.plot.plot_contour(quadratic, ((-1, 1), (-1, 1)), points=[], variables=("u",))


def test_every_kind_has_a_marker():
    # a kind without a style would be drawn as an anonymous black dot
    assert set(KINDS) <= set(_STYLE)


def test_non_isolated_point_has_its_marker_and_legend_entry(tmp_path):
    def valley(p):  # the line x = y is a valley of non-strict minima
        return (p[0] - p[1]) ** 2

    cp = hesse.classify(valley, [0.5, 0.5])
    assert cp.kind == "non-isolated"
    backend = matplotlib.get_backend()
    fig = hesse.plot.plot_contour(valley, ((-1, 1), (-1, 1)), points=[cp], resolution=20, quiver=0)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["non-isolated"]
    (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "non-isolated"]
    assert (line.get_marker(), line.get_color()) == _STYLE["non-isolated"]
    fig.savefig(tmp_path / "valley.png")
    assert matplotlib.get_backend() == backend  # the user's backend is left alone


def test_point_without_coordinates_is_refused():
    cp = hesse.classify(torch.eye(2))  # a verdict on a Hessian alone: x is None
    with pytest.raises(ValueError, match="no coordinates"):
        hesse.plot.plot_contour(quadratic, ((-1, 1), (-1, 1)), points=[cp], resolution=10)
