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
