"""`hesse minimize` in-process (needs the safe expression parser hesse.cli.expressions)."""

import json

import pytest

pytest.importorskip("hesse.cli.expressions")

from hesse.cli.main import BUG_EXIT_STATUS, main  # noqa: E402
from hesse.cli.minimize import NOT_SUCCESSFUL_EXIT_STATUS  # noqa: E402

ROSEN = "100*(y - x**2)**2 + (1 - x)**2"


def test_minimize_json(capsys):
    rc = main(["minimize", ROSEN, "--x0", "-1.2,1", "--method", "newton-damped", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["success"]
    assert out["x"] == pytest.approx([1.0, 1.0], abs=1e-6)
    assert out["variables"] == ["x", "y"]


def test_minimize_compare_and_plot(capsys, tmp_path):
    png = tmp_path / "traj.png"
    rc = main(["minimize", ROSEN, "--x0", "-1.2,1", "--compare", "gd,bfgs,newton-damped", "--lr", "0.001",
               "--max-iter", "200", "--plot", str(png), "--quiet"])
    text = capsys.readouterr().out
    assert rc == NOT_SUCCESSFUL_EXIT_STATUS == 3  # gd does not converge in 200 iterations: not success, said so
    assert "bfgs" in text and "gd" in text and "maximum number of iterations" in text
    assert png.exists() and (tmp_path / "traj_convergence.png").exists()


def test_minimize_saddle_reported(capsys):
    rc = main(["minimize", "x**2 - y**2", "--x0", "0.5,0.0", "--method", "newton", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == NOT_SUCCESSFUL_EXIT_STATUS and out["status"] == 4 and not out["success"]


def test_minimize_bad_input(capsys):
    assert main(["minimize", ROSEN, "--x0", "1,2,3", "--quiet"]) == 2
    assert "--x0 has 3 values" in capsys.readouterr().err
    assert main(["minimize", ROSEN, "--x0", "1,a", "--quiet"]) == 2
    assert main(["minimize", ROSEN, "--x0", "1,1", "--method", "adam", "--quiet"]) == 2
    assert "unknown method" in capsys.readouterr().err


@pytest.mark.parametrize("json_out", [False, True])
def test_minimize_plot_prints_every_file(capsys, tmp_path, json_out):
    png = tmp_path / "rosen.png"
    argv = ["minimize", ROSEN, "--x0", "-1.2,1", "--method", "bfgs", "--plot", str(png), "--quiet"]
    rc = main(argv + (["--json"] if json_out else []))
    captured = capsys.readouterr()
    files = [png, tmp_path / "rosen_convergence.png"]
    assert rc == 0 and all(f.stat().st_size > 1000 for f in files)
    # text mode lists them on stdout; with --json stdout stays one JSON document, the list on stderr
    listing = captured.err if json_out else captured.out
    assert all(f"wrote {f}" in listing for f in files)
    if json_out:
        assert json.loads(captured.out)["success"]


@pytest.mark.parametrize("spelling,name", [("BFGS", "bfgs"), ("Newton-CG", "newton-cg"),
                                           ("trust_exact", "trust-exact")])
def test_minimize_accepts_scipy_spellings(capsys, spelling, name):
    # the CLI reads method names as hesse.minimize does (resolve_method), not by its own list
    rc = main(["minimize", ROSEN, "--x0", "-1.2,1", "--method", spelling, "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["success"] and out["method"] == spelling
    # counts under the package's names: njev gradients (as scipy), num_matvecs products
    assert out["njev"] >= out["nit"] and out["num_matvecs"] >= 0


def test_minimize_scipy_method_hesse_lacks_names_the_alternative(capsys):
    assert main(["minimize", ROSEN, "--x0", "1,1", "--method", "Nelder-Mead", "--quiet"]) == 2
    assert "derivative-free methods are not in hesse" in capsys.readouterr().err


def test_not_successful_exit_status_is_not_the_bug_status():
    # exit 1 is documented as "a bug in hesse" (docs/guarantees.md); an honest non-success is 3
    assert NOT_SUCCESSFUL_EXIT_STATUS not in (0, 2, BUG_EXIT_STATUS)


def test_minimize_time_limit_stops_a_long_run(capsys):
    # gd with lr 1e-12 and a billion iterations would run for hours; --time-limit bounds it
    import time
    t0 = time.perf_counter()
    rc = main(["minimize", ROSEN, "--x0", "-1.2,1", "--method", "gd", "--lr", "1e-12",
               "--max-iter", "1000000000", "--time-limit", "1.5", "--json", "--quiet"])
    wall = time.perf_counter() - t0
    out = json.loads(capsys.readouterr().out)
    assert rc == NOT_SUCCESSFUL_EXIT_STATUS and out["status"] == 2 and not out["success"]
    assert "maximum time reached" in out["message"]
    assert wall < 30  # 1.5 s budget plus the final curvature check and start-up, on a loaded machine


@pytest.mark.parametrize("bad", ["0", "-1", "nan", "inf"])
def test_minimize_time_limit_refused(capsys, bad):
    assert main(["minimize", ROSEN, "--x0", "1,1", "--time-limit", bad, "--quiet"]) == 2
    assert "--time-limit must be a positive number" in capsys.readouterr().err
