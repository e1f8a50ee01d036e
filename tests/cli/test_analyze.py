"""``hesse analyze``: point report, box table, JSON, plot, errors (in-process, one subprocess run)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hesse.cli.main import main


def test_point_report_quadratic(capsys):
    rc = main(["analyze", "3*x**2 + 2*x*y + 2*y**2 - 4*x - 6*y", "--at", "x=0.2,y=1.4", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "verdict: minimum" in out and "2.76393" in out and "7.23607" in out and "2.618" in out


def test_point_json_exp_not_critical(capsys):
    rc = main(["analyze", "exp(x + y)", "--at", "0,0", "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["kind"] == "not critical"
    assert data["eigenvalues"] == pytest.approx([0.0, 2.0], abs=1e-12)
    assert data["gradient"] == pytest.approx([1.0, 1.0])
    assert data["condition_number"] == "inf"


def test_box_table_nine_points_json(capsys):
    rc = main(["analyze", "x**4 + y**4 - 2*x**2 - 2*y**2 + 1", "--bounds", "-2:2,-2:2", "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["counts"] == {"minimum": 4, "saddle": 4, "maximum": 1}
    assert len(data["points"]) == 9 and data["symbolic"].startswith("solved")


def test_box_table_text_and_plot(tmp_path, capsys):
    png = tmp_path / "monkey.png"
    rc = main(["analyze", "x**3 - 3*x*y**2", "--bounds", "-1:1", "--plot", str(png), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "degenerate saddle" in out and "odd order 3" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv,needle", [
    (["x**2", "--at", "x=0", "--bounds", "-1:1"], "not both"),
    (["x**2 + y**2 + z**2", "--plot", "a.png", "--at", "0,0,0"], "2-D"),
    (["x**2", "--at", "y=0"], "not a variable"),
    (["x**2", "--plot", "a.txt"], ".png"),
    (["x**2", "--starts", "0"], "--starts"),
])
def test_user_errors_exit_2(argv, needle, capsys):
    assert main(["analyze", *argv, "--quiet"]) == 2
    assert needle in capsys.readouterr().err


def test_subprocess_entry_point(tmp_path):
    exe = Path(sys.executable).parent / "hesse"
    sentinel = tmp_path / "pwned"
    r = subprocess.run([str(exe), "analyze", f"__import__('os').system('touch {sentinel}')"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "cannot use expression" in r.stderr and not sentinel.exists()


@pytest.mark.parametrize("expr, headline", [
    ("x**3*y**3", "0 isolated points and 2 non-isolated sets"),
    ("x**2*y**2", "0 isolated points and 2 non-isolated sets"),
    ("x**3*y**3 + z**2", "0 isolated points and 2 non-isolated sets"),
    ("(x**2 + y**2 - 1)**2", "1 isolated point (1 maximum) and"),
    ("x**4 + y**4 - 2*x**2 - 2*y**2 + 1", ": 9 (4 minimum, 4 saddle, 1 maximum)"),
])
def test_headline_counts_sets_as_sets(expr, headline, capsys):
    rc = main(["analyze", expr, "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and headline in out.splitlines()[1], out
