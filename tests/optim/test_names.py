"""Option names follow torch.optim (``eps``, ``betas``, ``<thing>_every``); spellings that were
never released are unknown keywords. Result records derive from hesse's Result and use its field
names."""

import math
import warnings

import pytest
import torch
from torch import nn

from hesse._result import Result
from hesse.optim import KFAC, AdaHessian, CGRecord, Shampoo
from hesse.optim.hessian_free import cg_with_iterates


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _kfac(model, **kw):
    return KFAC(model, lr=0.1, **kw)


def _shampoo(model, **kw):
    return Shampoo(model.parameters(), lr=0.01, graft="adam", **kw)


def _ada(model, **kw):
    return AdaHessian(model.parameters(), lr=0.01, **kw)


# (factory, a spelling that was never released, its value, the option's name, the value stored)
RENAMES = [
    (_kfac, "inv_every", 3, "inverse_every", 3),
    (_shampoo, "epsilon", 1e-3, "eps", 1e-3),
    (_shampoo, "beta2", 0.99, "stat_decay", 0.99),
    (_shampoo, "precond_every", 4, "precondition_every", 4),
    (_shampoo, "max_precond_dim", 4, "max_precondition_dim", 4),
    (_shampoo, "beta1_graft", 0.8, "graft_betas", (0.8, 0.999)),
    (_shampoo, "beta2_graft", 0.99, "graft_betas", (0.9, 0.99)),
    (_ada, "update_each", 2, "hessian_every", 2),
]
IDS = [f"{f.__name__[1:]}-{old}" for f, old, *_ in RENAMES]


def _step(model, opt):
    X = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(8) % 3

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X), y)
        loss.backward(create_graph=isinstance(opt, AdaHessian))
        return loss
    opt.step(closure)


@pytest.mark.parametrize("make, old, value, new, stored", RENAMES, ids=IDS)
def test_unreleased_spellings_are_unknown_keywords(make, old, value, new, stored):
    with pytest.raises(TypeError, match=old):
        make(_model(), **{old: value})


@pytest.mark.parametrize("make, old, value, new, stored", RENAMES, ids=IDS)
def test_options_are_stored_under_their_names(make, old, value, new, stored):
    opt = make(_model(), **{new: stored})
    assert opt.param_groups[0][new] == stored and old not in opt.param_groups[0]


def test_new_names_raise_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for make, _, _, new, stored in RENAMES:
            model = _model()
            _step(model, make(model, **{new: stored}))


def test_cg_record_is_a_result_with_the_glossary_names():
    """CGRecord derives from Result: nit, num_matvecs (counted here by the matvec itself),
    converged, message; mapping access, as_dict and the aligned repr."""
    A = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    b = torch.ones(4, dtype=torch.float64)
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    # warm start 0.1 b: the initial residual (0.9, 0.8, 0.7, 0.6) has a component along every
    # eigenvector, so CG needs all 4 steps
    x, _, rec = cg_with_iterates(matvec, b, 0.1 * b, 1e-12, 50, progress_test=False)
    assert isinstance(rec, Result) and isinstance(rec, CGRecord)
    assert rec.converged and rec.message == "tolerance"
    assert rec.nit == 4  # 4 distinct eigenvalues: CG terminates in 4 steps in exact arithmetic
    assert rec.num_matvecs == len(calls) == rec.nit + 1  # + the residual of the warm start
    torch.testing.assert_close(x, b / torch.diagonal(A), rtol=1e-10, atol=0)
    assert rec["nit"] == rec.nit and "num_matvecs" in rec
    d = rec.as_dict()
    assert list(d)[:5] == ["converged", "relative_residual", "nit", "num_matvecs", "message"]
    assert math.isnan(d["damping"])
    assert repr(rec).startswith("CGRecord(\n") and "num_matvecs: 5" in repr(rec)
    for never_released in ("num_iterations", "stop", "iterations"):
        with pytest.raises(AttributeError):
            getattr(rec, never_released)
