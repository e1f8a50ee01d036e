"""Figures: they draw the paths they were given."""

import numpy as np
import pytest

import hesse
from hesse.plot.optimize import plot_convergence, plot_trajectories


def test_trajectories_and_convergence(tmp_path, rosen):
    res = {m: hesse.minimize(rosen, [-1.2, 1.0], method=m, **({"lr": 1e-3} if m == "gd" else {}),
                             max_iter=300) for m in ("gd", "newton-damped", "bfgs")}
    fig = plot_trajectories(rosen, res)
    ax = fig.axes[0]
    lines = [ln for ln in ax.get_lines() if ln.get_label().startswith("newton-damped")]
    xy = np.column_stack(lines[0].get_data())
    expected = np.stack([x.numpy() for x in res["newton-damped"].history.iterates])
    np.testing.assert_allclose(xy, expected)  # exactly the iterates, no resampling
    fig.savefig(tmp_path / "traj.png")
    fig2 = plot_convergence(res)
    assert len(fig2.axes) == 2 and len(fig2.axes[0].get_lines()) == 3
    fig2.savefig(tmp_path / "conv.png")
    assert (tmp_path / "traj.png").stat().st_size > 1000


def test_plot_errors(rosen):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="bfgs", history=False)
    with pytest.raises(ValueError, match="history"):
        plot_convergence(r)
    r3 = hesse.minimize(lambda x: (x ** 2).sum(), [1.0, 2.0, 3.0], method="bfgs")
    with pytest.raises(ValueError, match="2 variables"):
        plot_trajectories(lambda x: (x ** 2).sum(), r3)


def test_trajectory_axes_named_by_variables(rosen):
    r = hesse.minimize(rosen, [-1.2, 1.0], method="bfgs")
    ax = plot_trajectories(rosen, {"bfgs": r}, variables=("a", "b")).axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("a", "b")
    with pytest.raises(ValueError, match="2 axes"):
        plot_trajectories(rosen, r, variables=("a",))


@pytest.mark.parametrize("lengths_differ", [True, False])
def test_convergence_log_x_when_runs_differ_in_length(rosen, lengths_differ):
    # gd at a small step runs its 1000 iterations; Newton stops after about 20: on a linear axis
    # Newton's curve would be squeezed into the first 2% of the panel
    res = {"newton-damped": hesse.minimize(rosen, [-1.2, 1.0], method="newton-damped")}
    if lengths_differ:
        res["gd"] = hesse.minimize(rosen, [-1.2, 1.0], method="gd", lr=1e-3, max_iter=1000)
    else:
        res["bfgs"] = hesse.minimize(rosen, [-1.2, 1.0], method="bfgs")
    lengths = [len(r.history.grad_norms) for r in res.values()]
    assert (max(lengths) > 20 * min(lengths)) is lengths_differ
    fig = plot_convergence(res)
    scale = "symlog" if lengths_differ else "linear"
    assert [a.get_xscale() for a in fig.axes] == [scale, scale]
    assert ("log scale" in fig.axes[0].get_xlabel()) is lengths_differ
    assert plot_convergence(res, log_x=True).axes[0].get_xscale() == "symlog"


def test_plots_leave_the_backend_alone(rosen):
    # a user's backend (here svg) is theirs: figures must not switch it to Agg
    import matplotlib

    import hesse.plot.diagnostics
    import hesse.plot.geometry

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        r = hesse.minimize(rosen, [-1.2, 1.0], method="bfgs")
        plot_trajectories(rosen, r)
        plot_convergence(r)
        hesse.plot.geometry.plot_contour(rosen, [(-2, 2), (-1, 3)], points=[], resolution=10)
        hesse.plot.diagnostics.plot_density_snapshots([])
    except ValueError:
        pass  # an empty snapshot list may be refused; the backend is what is checked
    finally:
        after = matplotlib.get_backend()
        matplotlib.use(before)
    assert after == "svg"
