"""The examples shown in the docs gallery run, and `make bench`'s runner finds and runs scripts."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_geometry_example(tmp_path, capsys):
    mod = _load(ROOT / "examples" / "geometry_of_a_function.py")
    out = mod.main(["--out", str(tmp_path)])
    # the quartic's 9 critical points, known in closed form: (0|±1, 0|±1)
    assert out["points"].counts() == {"minimum": 4, "saddle": 4, "maximum": 1}
    assert out["results"]["newton-damped"].success and out["results"]["bfgs"].success
    for name in ("critical_points.png", "trajectories.png", "convergence.png"):
        assert (tmp_path / name).stat().st_size > 5000
    assert "figures in" in capsys.readouterr().out


def test_every_example_has_a_docs_page():
    docs = "\n".join(p.read_text() for p in (ROOT / "docs" / "examples").glob("*.md"))
    for script in (ROOT / "examples").glob("*.py"):
        assert f"examples/{script.name}" in docs, f"{script.name} has no page in docs/examples/"


def test_run_all_runs_scripts_and_tabulates(tmp_path, monkeypatch, capsys):
    run_all = _load(ROOT / "benchmarks" / "run_all.py")
    names = [p.name for p in run_all.scripts()]
    assert names and all(n.startswith("bench_") for n in names) and "run_all.py" not in names
    with pytest.raises(SystemExit, match="no such benchmark"):
        run_all.scripts(["nonexistent"])
    # two fake benchmarks: one with --quick that prints a table, one without that fails
    (tmp_path / "bench_a.py").write_text(
        'import sys\nap = "--quick"\nprint("| a | %s |" % ("quick" if "--quick" in sys.argv else "full"))\n')
    (tmp_path / "bench_b.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(run_all, "HERE", tmp_path)
    assert run_all.main([]) == 1
    text = capsys.readouterr().out
    assert "| a | quick |" in text  # --quick passed to the script that declares it
    assert "bench_b.py" in text and "| 3 " in text
    assert run_all.main(["--only", "a", "--full"]) == 0
    assert "| a | full |" in capsys.readouterr().out
