"""``hesse analyze`` on inputs that used to hang, mislead or need ``--``."""

import json
import time

import pytest

from hesse.cli.main import main


def test_leading_minus_expression_needs_no_double_dash(capsys):
    rc = main(["analyze", "-x**2+y**2", "--at", "0,0", "--json", "--quiet"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["kind"] == "saddle"


def test_leading_minus_expression_after_options(capsys):
    rc = main(["analyze", "--quiet", "--json", "--at", "x=1,y=0", "-x**2-y**2"])
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["kind"] == "not critical"


def test_overflowing_bounds_refused_one_line(capsys):
    rc = main(["analyze", "x**2+y**2", "--bounds=-1e308:1e308", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "bounds" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("option", ["--timeout", "--time-limit"])
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0"])
def test_time_options_must_be_finite_positive(capsys, option, value):
    rc = main(["analyze", "x**2+y**2", f"{option}={value}", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and option in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("starts", ["1000000000", "0"])
def test_starts_bounded(capsys, starts):
    rc = main(["analyze", "x**2+y**2", "--starts", starts, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "--starts" in err


def test_line_of_critical_points_with_time_limit(capsys):
    t = time.perf_counter()
    rc = main(["analyze", "(x - y)**2", "--json", "--quiet", "--time-limit", "20"])
    assert time.perf_counter() - t < 15
    data = json.loads(capsys.readouterr().out)
    assert rc == 0 and data["counts"] == {"non-isolated": 1}


def test_time_limit_note_in_output(capsys):
    rc = main(["analyze", "sin(3*x)*sin(3*y) + (x-y)**2", "--starts", "4096", "--time-limit", "0.5", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "time limit" in out


def test_time_limit_must_be_positive(capsys):
    assert main(["analyze", "x**2", "--time-limit", "0", "--quiet"]) == 2
    assert "--time-limit" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["(x+y)**1000", "(x**1000)**1000 + y**2", "x**-1000 + y**2"])
def test_huge_exponents_return_quickly(capsys, text):
    t = time.perf_counter()
    rc = main(["analyze", text, "--json", "--quiet", "--time-limit", "10"])
    assert time.perf_counter() - t < 15
    data = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert "degenerate minimum" not in data["counts"] or text != "x**-1000 + y**2"
