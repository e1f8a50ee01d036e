"""``hesse spectrum``: user mistakes are one line with exit status 2, internal bugs a traceback;
``--k`` above n refused; ``--trace`` on small models exact; ``--batches/--curvature/--device``."""

import json
import textwrap

import pytest
import torch

import hesse
import hesse.cli.spectrum
from hesse.cli.main import main

FACTORIES = textwrap.dedent("""
    import torch

    def _mlp():
        torch.manual_seed(0)
        # 5*4+4 + 4*4+4 = 44 parameters: below XTrace's default sketch width
        return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4)).double()

    def _xy(n=24, gen_seed=0):
        g = torch.Generator().manual_seed(gen_seed)
        return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (n,), generator=g)

    def small():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": _xy()}

    def batched():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(),
                "data": [_xy(8, s) for s in range(4)]}

    def generator():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": (_xy(8, s) for s in range(3))}

    def int_inputs():
        X, y = _xy()
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": (X.long(), y)}

    def float_targets():
        X, y = _xy()
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": (X, y.double())}

    def wrong_features():
        X, y = _xy()
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": [(X, y), (X[:, :3], y)]}

    class _Broken:
        def __iter__(self):
            yield _xy(8)
            raise OSError("[Errno 2] No such file or directory: 'shard-1.pt'")

    def oserror_loader():
        return {"model": _mlp(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": _Broken()}
""")


@pytest.fixture()
def mf(tmp_path):
    p = tmp_path / "factories.py"
    p.write_text(FACTORIES)
    return p



def _json(capsys, *argv):
    rc = main(["spectrum", *argv, "--json", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return json.loads(cap.out)


def _one_line_error(capsys, argv, *texts):
    rc = main(["spectrum", *argv, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for t in texts:
        assert t in err, err
    return err


def test_k_above_n_is_refused_not_clamped(mf, capsys):
    _one_line_error(capsys, ["--model", f"{mf}:small", "--k", "600"], "k=600 exceeds the operator size n=44")


def test_trace_on_small_model_is_exact(load_factory, mf, capsys):
    # default --trace-matvecs 100 >= n = 44: the exact trace from 44 unit-vector products
    out = _json(capsys, "--model", f"{mf}:small", "--k", "1", "--trace")
    d = load_factory(mf, "small")
    from hesse.testing import dense_hessian_of_model

    H = dense_hessian_of_model(d["model"], d["loss_fn"], *d["data"])
    assert out["trace"]["method"] == "exact" and out["trace"]["stderr"] == 0.0
    assert out["trace"]["num_matvecs"] == 44
    assert out["trace"]["value"] == pytest.approx(float(torch.trace(H)), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("factory, texts", [
    ("int_inputs", ["batch 0", "integer", "X = X.to(torch.float64)"]),
    ("float_targets", ["batch 0", "class indices", "y.long()"]),
    ("wrong_features", ["batch 1", "shape (24, 3)", "feature size"]),
    ("oserror_loader", ["batch 1", "OSError", "shard-1.pt"]),
])
def test_user_model_mistakes_are_one_line(mf, capsys, factory, texts):
    _one_line_error(capsys, ["--model", f"{mf}:{factory}", "--k", "1"], *texts)


def test_plot_into_missing_folder_refused_before_work(mf, capsys, tmp_path):
    _one_line_error(capsys, ["--model", f"{mf}:small", "--plot", str(tmp_path / "nope" / "f.png")],
                    "--plot", "does not exist")


def test_internal_error_is_a_traceback_not_a_user_error(mf, capsys, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("internal failure")

    monkeypatch.setattr(hesse.cli.spectrum, "eigsh", broken)  # where hesse spectrum looks it up
    rc = main(["spectrum", "--model", f"{mf}:small", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and "this is a bug in hesse, please report it" in err


def test_generator_data(load_factory, mf, capsys):
    out = _json(capsys, "--model", f"{mf}:generator", "--k", "2")
    d = load_factory(mf, "generator")
    ref = hesse.eigsh(hesse.HessianOperator(d["model"], d["loss_fn"], list(d["data"])), k=2)
    assert out["eigenvalues"]["values"] == pytest.approx(ref.values.tolist(), rel=1e-10)


def test_batches_flag_equals_library_on_the_subset(load_factory, mf, capsys):
    out = _json(capsys, "--model", f"{mf}:batched", "--k", "3", "--batches", "2")
    d = load_factory(mf, "batched")
    ref = hesse.eigsh(hesse.HessianOperator(d["model"], d["loss_fn"], d["data"][:2]), k=3)
    full = hesse.eigsh(hesse.HessianOperator(d["model"], d["loss_fn"], d["data"]), k=3)
    # n = 44: dense eigensolver on both sides, equal to rounding; the subset differs from all batches
    assert out["eigenvalues"]["values"] == pytest.approx(ref.values.tolist(), rel=1e-10)
    assert abs(out["eigenvalues"]["values"][0] - float(full.values[0])) > 1e-6
    _one_line_error(capsys, ["--model", f"{mf}:batched", "--batches", "9"], "only 4 batch")
    _one_line_error(capsys, ["--model", f"{mf}:batched", "--batches", "0"], "--batches")


@pytest.mark.parametrize("curvature, cls", [("ggn", hesse.GGNOperator), ("fisher", hesse.FisherOperator),
                                            ("hessian", hesse.HessianOperator)])
def test_curvature_flag_equals_library_operator(load_factory, mf, capsys, curvature, cls):
    out = _json(capsys, "--model", f"{mf}:small", "--k", "3", "--curvature", curvature)
    d = load_factory(mf, "small")
    ref = hesse.eigsh(cls(d["model"], d["loss_fn"], d["data"]), k=3)
    assert out["curvature"] == curvature
    assert out["eigenvalues"]["values"] == pytest.approx(ref.values.tolist(), rel=1e-10, abs=1e-14)


def test_device_flag(load_factory, mf, capsys):
    out = _json(capsys, "--model", f"{mf}:small", "--k", "2", "--device", "cpu")
    d = load_factory(mf, "small")
    ref = hesse.eigsh(hesse.HessianOperator(d["model"], d["loss_fn"], d["data"]), k=2)
    assert out["eigenvalues"]["values"] == pytest.approx(ref.values.tolist(), rel=1e-10)
    _one_line_error(capsys, ["--model", f"{mf}:small", "--device", "cuda:99"], "--device cuda:99")
    _one_line_error(capsys, ["--model", f"{mf}:small", "--device", "toaster"], "--device 'toaster'")
    # meta tensors hold no values: was "internal error: this is a bug"
    _one_line_error(capsys, ["--model", f"{mf}:small", "--device", "meta"], "--device meta", "no values")


def test_prepare_problem_leaves_the_model_as_it_was():
    # the check pass evaluates in eval mode: BatchNorm statistics and the train/eval flag unchanged
    from hesse.cli._model_loader import prepare_problem

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    X, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    out = prepare_problem({"model": model, "loss_fn": torch.nn.CrossEntropyLoss(), "data": iter([(X, y)] * 3)})
    assert model.training and len(out["data"]) == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="batch 1: the loss is nan"):
        prepare_problem({"model": model, "loss_fn": torch.nn.CrossEntropyLoss(),
                         "data": [(X, y), (X * float("nan"), y)]})


def test_density_over_the_memory_guard_is_refused(mf, capsys):
    # --probes 100000000 was killed at 24 GB; 2000000 gave "internal error" under a ulimit
    for probes in ("100000000", "2000000"):
        _one_line_error(capsys, ["--model", f"{mf}:small", "--k", "1", "--density", "--probes", probes],
                        "max_memory guard", "fewer probes")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_residuals_are_the_measured_ones(load_factory, mf, capsys, dtype):
    # the CLI printed "residual 4.8e-16" for float16 curvature: the recurrence's, not the pair's
    out = _json(capsys, "--model", f"{mf}:small", "--k", "2", "--dtype", dtype)
    d = load_factory(mf, "small")
    op = hesse.HessianOperator(d["model"], d["loss_fn"], d["data"], dtype=getattr(torch, dtype))
    res = hesse.eigsh(op, k=2)
    V = res.vectors.double()
    A = op.to_dense().double()
    true = (A @ V - V * res.values).norm(dim=0)
    eps = torch.finfo(getattr(torch, dtype)).eps
    norm = float(torch.linalg.eigvalsh(A).abs().max())
    # n = 44: the dense path, whose residuals are those of the returned (rounded) vectors
    assert out["eigenvalues"]["residuals"] == pytest.approx(true.tolist(), rel=1e-6)
    # the 16-bit vectors' own rounding: residuals of about eps ||A||, never 1e-16
    assert all(eps * norm / 100 < r <= 2 * eps * norm for r in true.tolist()), (true, eps * norm)
    assert all(out["eigenvalues"]["converged"])
