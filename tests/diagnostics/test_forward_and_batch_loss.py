"""SharpnessMonitor and landscape on a model that computes its own loss
(``batch_loss=``) and on a dict-input model (``forward=``): the numbers equal those of the plain
``loss_fn`` path on the same network (``analyze_training``: tests/cli/test_report_forward.py).

Tolerance: the three paths run the same float64 arithmetic in the same order (only the way the
outputs and loss are reached differs), so values agree to rounding: rel 1e-9.
"""

import runpy
from pathlib import Path

import pytest
import torch

from hesse.diagnostics import SharpnessMonitor, landscape

VARIANTS = ("batch_loss", "forward")

REL = 1e-9


@pytest.fixture(scope="module")
def variants():
    return runpy.run_path(str(Path(__file__).with_name("_variants.py")))


def _problem(variants, name):
    p = variants[f"make_{name}"]()
    return p["model"], p.pop("data"), {k: v for k, v in p.items() if k != "model"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_monitor_equals_plain_loss_fn(variants, variant):
    results = {}
    for name in ("plain", variant):
        model, data, loss = _problem(variants, name)
        mon = SharpnessMonitor(model, data=data, k=2, negative=True, progress=False, tol=1e-8, **loss)
        results[name] = mon.measure(lr=0.1)
    plain, other = results["plain"], results[variant]
    for field in ("loss", "grad_norm", "lambda_max", "lambda_min"):
        assert other[field] == pytest.approx(plain[field], rel=REL), field
    assert other.top_eigenvalues == pytest.approx(plain.top_eigenvalues, rel=REL)
    assert other.status == plain.status


@pytest.mark.parametrize("variant", VARIANTS)
def test_landscape_equals_plain_loss_fn(variants, variant):
    out = {}
    for name in ("plain", variant):
        model, data, loss = _problem(variants, name)
        out[name] = landscape(model, data=data, directions="eigen", dims=1, steps=5, span=0.5, progress=False,
                              **loss)
    plain, other = out["plain"], out[variant]
    assert other.center_loss == pytest.approx(plain.center_loss, rel=REL)
    assert other.eigenvalues == pytest.approx(plain.eigenvalues, rel=REL)
    # the slice is even in the eigenvector's sign only up to the gradient term: compare both orientations
    flip = float(other.directions[:, 0] @ plain.directions[:, 0]) < 0
    losses = other.losses.flip(0) if flip else other.losses
    assert losses.tolist() == pytest.approx(plain.losses.tolist(), rel=REL)


def test_monitor_dtype_computes_in_that_precision(variants):
    """A float32 copy of the network measured with dtype=float64 gives the float64 network's
    numbers to float32 rounding of the weights (rel 1e-5), and its records say so via the loss."""
    model, data, loss = _problem(variants, "plain")
    ref = SharpnessMonitor(model, data=data, progress=False, tol=1e-8, **loss).measure(lr=0.1)
    model32 = model.float()
    data32 = [(X.float(), y) for X, y in data]
    got = SharpnessMonitor(model32, data=data32, progress=False, tol=1e-8, dtype=torch.float64,
                           **loss).measure(lr=0.1)
    assert got.lambda_max == pytest.approx(ref.lambda_max, rel=1e-5)
    assert got.loss == pytest.approx(ref.loss, rel=1e-5)


def test_batch_loss_needs_no_loss_fn_but_not_both(variants):
    model, data, loss = _problem(variants, "batch_loss")
    with pytest.raises(ValueError, match="one of loss_fn and batch_loss"):
        SharpnessMonitor(model, torch.nn.CrossEntropyLoss(), data, progress=False, **loss)
    with pytest.raises(TypeError, match="loss_fn=.*or batch_loss"):
        SharpnessMonitor(model, data=data, progress=False)
