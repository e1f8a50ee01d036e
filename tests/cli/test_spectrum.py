"""``hesse spectrum`` in-process (main([...]) + capsys) and the --model protocol."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from hesse.cli.main import CLIError, main

MODEL_FILE = textwrap.dedent("""
    import torch

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
        X = torch.randn(40, 4, dtype=torch.float64)
        y = torch.randint(0, 3, (40,))
        return {"model": model, "loss_fn": torch.nn.CrossEntropyLoss(), "data": (X, y)}

    def as_tuple():
        d = make()
        return d["model"], d["loss_fn"], d["data"]

    def wrong():
        return 3
""")


@pytest.fixture()
def model_file(tmp_path):
    p = tmp_path / "mymodel.py"
    p.write_text(MODEL_FILE)
    return p


def _dense_top(spec_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("m_ref", spec_path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    d = mod.make()
    from hesse.testing import dense_hessian_of_model

    H = dense_hessian_of_model(d["model"], d["loss_fn"], *d["data"])
    return torch.linalg.eigvalsh(H)


def test_spectrum_json_user_model(model_file, capsys, tmp_path):
    png = tmp_path / "dens.png"
    rc = main(["spectrum", "--model", f"{model_file}:make", "--k", "3", "--trace", "--density",
               "--steps", "10", "--per-layer", "--plot", str(png), "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["num_parameters"] == 51
    ev = _dense_top(model_file)
    # 51 parameters -> dense path; compare with torch.func ground truth to 1e-10
    assert out["eigenvalues"]["method"] == "dense"
    assert max(abs(a - b) for a, b in zip(out["eigenvalues"]["values"], ev[-3:].flip(0).tolist())) < 1e-10
    assert abs(out["trace"]["value"] - float(ev.sum())) < 1e-9  # small op: XTrace basis spans it
    assert len(out["per_layer"]) == 2 and png.stat().st_size > 1000
    assert abs(sum(out["density"]["weights"][0]) - 1.0) < 1e-10


def test_spectrum_text_and_tuple_protocol(model_file, capsys):
    rc = main(["spectrum", "--model", f"{model_file}:as_tuple", "--k", "2", "--which", "both"])
    cap = capsys.readouterr()
    assert rc == 0 and "eigenvalues" in cap.out and "lambda_1" in cap.out
    assert "Hessian operator" in cap.err  # progress goes to stderr


@pytest.mark.parametrize("spec, text", [
    ("nofile.py:make", "not found"),
    ("{file}:missing", "defines no function 'missing'"),
    ("{file}:wrong", "must return a dict"),
    ("{file}", "expects 'file.py:function'"),
])
def test_model_loader_errors(model_file, capsys, spec, text):
    rc = main(["spectrum", "--model", spec.format(file=model_file), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and text in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_load_model_factory_direct(model_file):
    from hesse.cli._model_loader import load_model_factory

    d = load_model_factory(f"{model_file}:make")
    assert set(d) == {"model", "loss_fn", "data"}
    with pytest.raises(CLIError, match="not found"):
        load_model_factory("/nonexistent/x.py:f")


def test_bad_k(capsys):
    assert main(["spectrum", "--k", "0", "--quiet"]) == 2
    assert "--k" in capsys.readouterr().err


def test_subprocess_demo_default(tmp_path):
    exe = Path(sys.executable).parent / "hesse"
    r = subprocess.run([str(exe), "spectrum", "--k", "2", "--json", "--quiet"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["num_parameters"] == 3466 and all(out["eigenvalues"]["converged"])
    assert out["eigenvalues"]["values"][0] >= out["eigenvalues"]["values"][1] > 0
