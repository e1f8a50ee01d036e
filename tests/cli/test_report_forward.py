"""``hesse report --train 3`` with factories returning ``batch_loss`` or ``forward``.

Training steps, sharpness checks and the final point must equal those of the plain ``loss_fn``
factory on the same network (tests/diagnostics/_variants.py) to rounding: rel 1e-9, the same
float64 arithmetic in the same order.
"""

import json
from pathlib import Path

import pytest

from hesse.cli.main import main

VARIANTS_FILE = str(Path(__file__).resolve().parents[1] / "diagnostics" / "_variants.py")



@pytest.fixture
def no_figures(monkeypatch):
    """Figures are drawn and checked in tests/diagnostics/test_plots.py; here only the numbers
    matter, and drawing eight figures per run would take most of the test's time."""
    import types

    import hesse.plot.report as report_files

    def touch(fig, path):
        open(path, "wb").close()

    stub = types.SimpleNamespace(plot_sharpness=lambda *a, **k: None, plot_loss_flags=lambda *a, **k: None,
                                 plot_density_snapshots=lambda *a, **k: None, plot_landscape=lambda *a, **k: None,
                                 save_figure=touch)
    monkeypatch.setattr(report_files, "dplot", stub)
    monkeypatch.setattr(report_files, "plot_spectral_density", lambda *a, **k: None)
    monkeypatch.setattr(report_files, "plot_top_eigenvalues", lambda *a, **k: None)


def _report(capsys, tmp_path, factory):
    rc = main(["report", "--model", f"{VARIANTS_FILE}:{factory}", "--train", "3", "--every", "1", "--lr", "0.5",
               "--k", "2", "--out", str(tmp_path / factory), "--quiet", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


def test_report_equals_plain_loss_fn(capsys, tmp_path, no_figures):
    plain = _report(capsys, tmp_path, "make_plain")
    for variant in ("batch_loss", "forward"):
        other = _report(capsys, tmp_path, f"make_{variant}")
        assert other["training_losses"] == pytest.approx(plain["training_losses"], rel=1e-9), variant
        assert [r["lambda_max"] for r in other["records"]] == pytest.approx(
            [r["lambda_max"] for r in plain["records"]], rel=1e-9), variant
        assert other["final"]["top_eigenvalues"] == pytest.approx(plain["final"]["top_eigenvalues"], rel=1e-9)
        assert other["final"]["loss"] == pytest.approx(plain["final"]["loss"], rel=1e-9)
        assert other["landscape_1d"]["center_loss"] == pytest.approx(plain["landscape_1d"]["center_loss"], rel=1e-9)
