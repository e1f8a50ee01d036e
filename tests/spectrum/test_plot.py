"""Plot functions return Figures with the expected content (log-scale density, one bar per pair)."""

import hesse
from hesse.testing.spectra import prescribed_spectrum


def test_plots(tmp_path):
    op = prescribed_spectrum([-1.0, 0.5, 1.0, 2.0, 5.0] * 4, seed=0)
    d = hesse.spectral_density(op, num_probes=3, num_steps=8)
    fig = hesse.plot.plot_spectral_density(d)
    assert fig.axes[0].get_yscale() == "log"
    fig.savefig(tmp_path / "d.png")
    r = hesse.eigsh(op, k=3)
    fig2 = hesse.plot.plot_top_eigenvalues(r)
    assert len(fig2.axes[0].patches) == 3
    fig2.savefig(tmp_path / "e.png")
    assert (tmp_path / "d.png").stat().st_size > 1000
