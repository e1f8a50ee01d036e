"""Diagnostics figures: they draw what they are given (records as objects or as read_log dicts)."""

import pytest
import torch

from hesse.diagnostics import SharpnessMonitor, read_log
from hesse.plot import plot_density_snapshots, plot_loss_flags, plot_sharpness, save_figure


def test_plots_from_monitor_and_from_log(linear_regression, tmp_path):
    p = linear_regression
    opt = torch.optim.SGD(p["model"].parameters(), lr=1.2 * 2 / p["lambda_max"])  # unstable on purpose
    mon = SharpnessMonitor(p["model"], p["loss_fn"], p["data"], every=1, density=True, density_steps=5,
                           log_dir=tmp_path, progress=False)
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = p["loss_fn"](p["model"](p["data"][0]), p["data"][1])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        mon.step(opt)
    fig = plot_sharpness(mon, eos_band=(0.05, 0.25))
    line = fig.axes[0].lines[0]
    assert list(line.get_ydata()) == pytest.approx([r.lambda_max for r in mon.records])
    assert list(fig.axes[0].lines[1].get_ydata()) == pytest.approx([2 / opt.param_groups[0]["lr"]] * 3)
    fig2 = plot_loss_flags(read_log(tmp_path), losses=losses)
    labels = [t.get_text() for t in fig2.axes[0].get_legend().get_texts()]
    assert "unstable" in labels  # every check is flagged unstable at 1.2x the limit
    fig3 = plot_density_snapshots(mon)
    assert len(fig3.axes[0].lines) == 3
    for i, f in enumerate((fig, fig2, fig3)):
        assert (tmp_path / f"{i}.png").exists() is False
        save_figure(f, str(tmp_path / f"{i}.png"))
        assert (tmp_path / f"{i}.png").stat().st_size > 1000


def test_plots_reject_empty_input():
    with pytest.raises(ValueError, match="no monitor records"):
        plot_sharpness([])
    with pytest.raises(ValueError, match="density=True"):
        plot_density_snapshots([])


def _run(p, lr, steps=3, **options):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    mon = SharpnessMonitor(model, p["loss_fn"], p["data"], every=1, progress=False, **options)
    for _ in range(steps):
        opt.zero_grad()
        p["loss_fn"](model(p["data"][0]), p["data"][1]).backward()
        opt.step()
        mon.step(opt)
    return mon


def test_sharpness_runs_draw_each_run_and_its_limit_in_one_colour(linear_regression):
    from hesse.plot import plot_sharpness_runs

    p = linear_regression
    runs = {"lr 0.1": _run(p, 0.1), "lr 0.3": _run(p, 0.3)}
    fig = plot_sharpness_runs(runs)
    ax, twin = fig.axes
    lines = ax.lines
    assert [ln.get_label() for ln in lines] == ["λ_max, lr 0.1", "2/lr, lr 0.1", "λ_max, lr 0.3", "2/lr, lr 0.3"]
    for i, mon in enumerate(runs.values()):
        lam, limit = lines[2 * i], lines[2 * i + 1]
        assert list(lam.get_ydata()) == pytest.approx([r.lambda_max for r in mon.records])
        assert list(limit.get_ydata()) == pytest.approx([r.stability_limit for r in mon.records])
        assert lam.get_color() == limit.get_color()
        assert list(twin.lines[i].get_ydata()) == pytest.approx([r.loss for r in mon.records])
    assert lines[0].get_color() != lines[2].get_color() and twin.get_yscale() == "log"
    with pytest.raises(ValueError, match="no runs"):
        plot_sharpness_runs({})


def test_eigenvalue_evolution_draws_one_line_per_rank(linear_regression):
    from hesse.diagnostics import Measurements
    from hesse.plot import plot_eigenvalue_evolution

    p = linear_regression
    mon = _run(p, 0.1, measurements=Measurements(k=3))
    fig = plot_eigenvalue_evolution(mon)
    lines = fig.axes[0].lines
    assert len(lines) == 3
    for j, line in enumerate(lines):
        assert list(line.get_ydata()) == pytest.approx([r.top_eigenvalues[j] for r in mon.records])
    with pytest.raises(ValueError, match="no top eigenvalues"):
        plot_eigenvalue_evolution([{"step": 0, "lambda_max": 1.0, "top_eigenvalues": []}])


def test_density_grid_is_small_multiples_on_a_symlog_axis(linear_regression):
    from hesse.plot import plot_density_grid

    p = linear_regression
    mon = _run(p, 0.1, measurements=None, density=True, density_steps=5)
    top = {step: [1.0, 2.0] for step, _ in mon.densities}
    fig = plot_density_grid(mon, top=top)
    assert len(fig.axes) == len(mon.densities) == 3
    for ax in fig.axes:
        assert ax.get_xscale() == "symlog" and ax.get_yscale() == "log"
        assert sum(1 for ln in ax.lines if list(ln.get_xdata()) in ([1.0, 1.0], [2.0, 2.0])) == 2
