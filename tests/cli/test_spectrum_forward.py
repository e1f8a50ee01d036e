"""``hesse spectrum`` with factories returning ``batch_loss`` or ``forward``, and ``--dtype``.

The factories (tests/diagnostics/_variants.py) build one network three ways; the eigenvalues and
the loss must equal those of the plain ``loss_fn`` factory to rounding (rel 1e-9: the same float64
arithmetic in the same order).
"""

import json
from pathlib import Path

import pytest

from hesse.cli.main import main

VARIANTS_FILE = str(Path(__file__).resolve().parents[1] / "diagnostics" / "_variants.py")



def _spectrum(capsys, factory, *argv):
    rc = main(["spectrum", "--model", f"{VARIANTS_FILE}:{factory}", "--k", "3", "--quiet", "--json", *argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("variant", ["batch_loss", "forward"])
def test_spectrum_equals_plain_loss_fn(capsys, variant):
    plain = _spectrum(capsys, "make_plain", "--trace", "--trace-matvecs", "10")
    other = _spectrum(capsys, f"make_{variant}", "--trace", "--trace-matvecs", "10")
    assert other["loss"] == pytest.approx(plain["loss"], rel=1e-9)
    assert other["eigenvalues"]["values"] == pytest.approx(plain["eigenvalues"]["values"], rel=1e-9)
    assert other["trace"]["value"] == pytest.approx(plain["trace"]["value"], rel=1e-9)


def test_spectrum_dtype_sets_the_operator_precision(capsys):
    """--dtype float32 computes in float32: the operator says so, and the eigenvalues agree with the
    float64 ones to float32 rounding (rel 1e-4 for a well-separated top eigenvalue of this 43-parameter net)."""
    ref = _spectrum(capsys, "make_plain")
    got = _spectrum(capsys, "make_plain", "--dtype", "float32")
    assert ref["dtype"] == "float64" and got["dtype"] == "float32"
    assert got["eigenvalues"]["values"][0] == pytest.approx(ref["eigenvalues"]["values"][0], rel=1e-4)


def test_batch_loss_with_ggn_is_refused(capsys):
    rc = main(["spectrum", "--model", f"{VARIANTS_FILE}:make_batch_loss", "--curvature", "ggn", "--quiet"])
    assert rc == 2
    assert "needs the model's outputs and a loss_fn" in capsys.readouterr().err


def test_bad_dtype_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["spectrum", "--dtype", "int8"])
    assert exc.value.code == 2
    assert "--dtype" in capsys.readouterr().err
