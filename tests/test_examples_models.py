"""The --model files in examples/models/ work with `hesse spectrum` and `hesse report`.

Each factory is run through the CLI in-process with small settings. The eigenvalues printed by
`hesse spectrum --json` are checked against an independent eigensolver, SciPy's ARPACK on the same
factory's Hessian operator (float32 products, so agreement to 1e-4 of lambda_max).
"""

import json
from pathlib import Path

import pytest
import torch
from scipy.sparse.linalg import eigsh as scipy_eigsh

from hesse.cli._model_loader import load_model_factory
from hesse.cli.main import main

MODELS = Path(__file__).resolve().parents[1] / "examples" / "models"
FILES = ["digits_mlp.py", "digits_cnn.py", "tiny_transformer.py"]


@pytest.mark.parametrize("name", FILES)
def test_factory_follows_the_protocol(name):
    problem = load_model_factory(f"{MODELS / name}:make")
    assert isinstance(problem["model"], torch.nn.Module)
    batches = problem["data"] if not isinstance(problem["data"], tuple) else [problem["data"]]
    X, y = next(iter(batches))
    loss = problem["loss_fn"](problem["model"](X), y)
    assert loss.ndim == 0 and torch.isfinite(loss)


@pytest.mark.parametrize("name", FILES)
def test_spectrum_of_model_file(name, capsys):
    import hesse

    rc = main(["spectrum", "--model", f"{MODELS / name}:make", "--k", "2", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    values = sorted(out["eigenvalues"]["values"], reverse=True)
    assert len(values) == 2 and all(out["eigenvalues"]["converged"])
    # reference: ARPACK on the same factory's Hessian (a fresh call builds the same seeded model)
    problem = load_model_factory(f"{MODELS / name}:make")
    H = hesse.HessianOperator(problem["model"], problem["loss_fn"], problem["data"])
    exact = sorted(scipy_eigsh(H.to_scipy(), k=2, which="LA", tol=1e-8, return_eigenvectors=False), reverse=True)
    assert values == pytest.approx(exact, abs=1e-4 * abs(exact[0]))


def test_report_of_model_file(tmp_path, capsys):
    out_dir = tmp_path / "report"
    rc = main(["report", "--model", f"{MODELS / 'digits_mlp.py'}:make", "--train", "5", "--every", "5",
               "--k", "2", "--out", str(out_dir), "--quiet"])
    assert rc == 0
    report = json.loads((out_dir / "report.json").read_text())
    assert report["final"]["num_parameters"] == 3466
    assert (out_dir / "summary.md").exists() and (out_dir / "sharpness.png").exists()
