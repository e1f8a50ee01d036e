"""The diagnostics example script runs (so it never rots) and shows what it claims."""

import importlib.util
from pathlib import Path

import pytest

from hesse.diagnostics import read_log

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "monitor_training.py"


def test_monitor_training_example(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("monitor_training", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--steps", "150", "--out", str(tmp_path)])
    # at lr = 1 on 256 samples lambda_max reaches 2/lr within 150 steps (measured: step ~110)
    assert out["reached"] is not None
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(0, 151, 10))
    assert log[-1]["lambda_max"] == pytest.approx(out["records"][-1].lambda_max)
    assert (tmp_path / "sharpness.png").stat().st_size > 5000
    assert (tmp_path / "landscape.png").stat().st_size > 5000
    assert "reached 2/lr" in capsys.readouterr().out
