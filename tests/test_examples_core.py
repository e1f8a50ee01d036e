"""The core example runs end to end (so it never rots) and prints what it promises."""

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "curvature_of_a_model.py"


def test_curvature_example_runs(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "top-3 Hessian eigenvalues" in out and "converged" in out
