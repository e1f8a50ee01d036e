"""Non-finite curvature and random losses are refused with a ValueError that says where and why.

The model ``lin(x) + |w|^1.5`` at ``w = 0`` has a finite loss and gradient (d|w|^1.5/dw = 0 there)
but no second derivative (d²|w|^1.5/dw² = 0.75 |w|^-0.5 is infinite at 0; autograd gives NaN).
"""

from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

import hesse
from hesse.cli.main import main


class _Kink(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.lin(x).squeeze(-1) + self.w.abs() ** 1.5


def _kink_problem():
    torch.manual_seed(0)
    model = _Kink().double()
    X, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    return model, nn.MSELoss(), [(X[:5], y[:5]), (X[5:], y[5:])]


OPERATORS = {  # the Hessian needs second derivatives of the model, which do not exist here
    "hessian": lambda m, lf, d: hesse.HessianOperator(m, lf, d),
    "hessian-no-graph": lambda m, lf, d: hesse.HessianOperator(m, lf, d, keep_graph=False),
    "hessian-vmap": lambda m, lf, d: hesse.HessianOperator(m, lf, d, matmat_strategy="vmap"),
}


@pytest.mark.parametrize("name", list(OPERATORS))
def test_nonfinite_curvature_names_batch_and_parameter(name):
    model, loss_fn, data = _kink_problem()
    op = OPERATORS[name](model, loss_fn, data)
    assert torch.isfinite(op.gradient).all() and torch.isfinite(torch.tensor(op.loss))
    n = op.shape[0]
    calls = {
        "to_dense": lambda: op.to_dense(),
        "matvec": lambda: op.matvec(torch.ones(n, dtype=torch.float64)),
        "matmat": lambda: op.matmat(torch.eye(n, dtype=torch.float64)[:, :3]),
        "trace": lambda: hesse.trace(op),
        "eigsh": lambda: hesse.eigsh(op, k=1),
        "spectral_density": lambda: hesse.spectral_density(op, num_steps=4),
        "summarize": lambda: hesse.summarize(op),
        "classify": lambda: hesse.classify(op),
        "composition": lambda: (2.0 * op + 1.0).matvec(torch.ones(n, dtype=torch.float64)),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=r"not finite on batch 0, parameter 'w'") as info:
            call()
        assert "'lin.weight'" not in str(info.value), what  # the smooth parameters are not blamed


@pytest.mark.parametrize("kind", ["ggn", "empirical", "mc"])
def test_first_order_curvatures_exist_at_the_kink(kind):
    """GGN and Fisher need only J = ∂z/∂θ, finite at the kink (∂|w|^1.5/∂w = 0 at 0): they are
    computed, and the w row and column are zero. Exact arithmetic, so 1e-12."""
    model, loss_fn, data = _kink_problem()
    if kind == "ggn":
        op = hesse.GGNOperator(model, loss_fn, data)
    else:
        op = hesse.FisherOperator(model, loss_fn, data, kind=kind, mc_samples=2)
    M = op.to_dense()
    is_w = op.flatten({n: torch.full_like(t, float(n == "w")) for n, t in
                       op.unflatten(op.point).items()}).bool()
    assert torch.isfinite(M).all() and float(M[:, is_w].abs().max()) < 1e-12
    if kind == "ggn":  # MSE on a model linear in (lin.weight, lin.bias): G = 2 AᵀA / N there
        X = torch.cat([x for x, _ in data])
        A = torch.cat([X, torch.ones(8, 1, dtype=torch.float64)], 1)
        torch.testing.assert_close(M[~is_w][:, ~is_w], 2 * A.T @ A / 8, rtol=1e-12, atol=1e-12)


def test_nonfinite_parameter_left_out_is_accepted():
    """The message's advice works: without ``w`` the curvature exists (exact for a linear model)."""
    model, loss_fn, data = _kink_problem()
    H = hesse.HessianOperator(model, loss_fn, data, params=["lin.weight", "lin.bias"]).to_dense()
    X = torch.cat([x for x, _ in data])
    A = torch.cat([X, torch.ones(8, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(H, 2 * A.T @ A / 8, rtol=1e-12, atol=1e-12)  # MSE on a linear model


def test_function_hessian_nonfinite_refused():
    op = hesse.HessianOperator.from_function(lambda x: (x.abs() ** 1.5).sum() + x.sum() ** 2,
                                             torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"not finite \(rows 0\)"):
        op.to_dense()


def test_nonfinite_input_vector_refused():
    op = hesse.DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-finite entries"):
        op.matvec(torch.tensor([1.0, float("nan"), 0.0], dtype=torch.float64))


@pytest.mark.parametrize("make", [
    lambda A: A + float("nan"), lambda A: A - float("inf"), lambda A: A * float("inf"),
    lambda A: float("nan") * A, lambda A: A / float("nan"), lambda A: A / float("inf"),
])
def test_nonfinite_scalar_algebra_refused(make):
    A = hesse.DenseOperator(torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite real number"):
        make(A)


def test_composition_constructors_refuse_nonfinite():
    from hesse.operators.composition import ScaledOperator, ShiftedOperator

    A = hesse.DenseOperator(torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="sigma"):
        ShiftedOperator(A, float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        ScaledOperator(A, float("-inf"))


KINK_FILE = textwrap.dedent("""
    import torch

    class Kink(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 1)
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return self.lin(x).squeeze(-1) + self.w.abs() ** 1.5

    def make():
        torch.manual_seed(0)
        X, y = torch.randn(8, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
        return {"model": Kink().double(), "loss_fn": torch.nn.MSELoss(), "data": (X, y)}
""")


@pytest.mark.parametrize("extra", [[], ["--trace", "--density", "--steps", "4"]])
def test_cli_spectrum_nonfinite_is_one_line_exit_2(tmp_path, capsys, extra):
    path = tmp_path / "kink.py"
    path.write_text(KINK_FILE)
    rc = main(["spectrum", "--model", f"{path}:make", "--k", "1", "--quiet", *extra])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "parameter 'w'" in err


# -------------------------------------------------------------------- random losses
def _dropout_problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Dropout(0.5), nn.Linear(6, 2)).double().train()
    X = torch.randn(10, 3, dtype=torch.float64)
    return model, X, torch.randint(0, 2, (10,))


RANDOM_OPERATORS = {
    "hessian": lambda m, d, **kw: hesse.HessianOperator(m, nn.CrossEntropyLoss(), d, **kw),
    "ggn": lambda m, d, **kw: hesse.GGNOperator(m, nn.CrossEntropyLoss(), d, **kw),
    "fisher-empirical": lambda m, d, **kw: hesse.FisherOperator(m, nn.CrossEntropyLoss(), d, **kw),
    "fisher-mc": lambda m, d, **kw: hesse.FisherOperator(m, nn.CrossEntropyLoss(), d, kind="mc",
                                                          **kw),
}


@pytest.mark.parametrize("name", list(RANDOM_OPERATORS))
def test_check_deterministic_refuses_dropout(name):
    model, X, y = _dropout_problem()
    with pytest.raises(ValueError, match="loss is not deterministic"):
        RANDOM_OPERATORS[name](model, (X, y), eval_mode=False, check_deterministic=True)
    assert model.training  # the model's mode is as before


@pytest.mark.parametrize("name", list(RANDOM_OPERATORS))
@pytest.mark.parametrize("width", [1, 2, 5])
def test_random_loss_products_refused_or_finite(name, width):
    """Without the check, a block product on a random model either runs (one graph per batch,
    as the Hessian's) or says the loss is random; never torch's vmap randomness error."""
    model, X, y = _dropout_problem()
    op = RANDOM_OPERATORS[name](model, (X, y), eval_mode=False)
    V = torch.randn(op.shape[0], width, dtype=torch.float64)
    try:
        out = op.matmat(V)
    except ValueError as err:
        assert "loss is not deterministic" in str(err)
    else:
        assert torch.isfinite(out).all()
