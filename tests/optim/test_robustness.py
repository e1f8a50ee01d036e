"""Every optimizer refuses non-finite losses and gradients without changing anything, leaves no
hook on the model once deleted or told to remove them, and refuses per-group options it cannot
honour."""

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

from hesse import FisherOperator
from hesse.optim import KFAC, SAM, AdaHessian, HessianFree, NaturalGradient, Shampoo

FACTORIES = {
    "KFAC": lambda m, lf: KFAC(m, lr=0.1, inverse_every=1),
    "Shampoo": lambda m, lf: Shampoo(m.parameters(), lr=0.01, precondition_every=1),
    "SAM": lambda m, lf: SAM(m.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9),
    "HessianFree": lambda m, lf: HessianFree(m, lf, cg_max_iter=5),
    "NaturalGradient": lambda m, lf: NaturalGradient(m, lf, cg_max_iter=5, momentum=0.5),
    "AdaHessian": lambda m, lf: AdaHessian(m.parameters(), lr=0.01),
}


def _problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(8, 4, dtype=torch.float64)
    y = torch.arange(8) % 3
    return model, nn.CrossEntropyLoss(), X, y


def _step(name, model, opt, loss_fn, X, y, inf_grad=False):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward(create_graph=name == "AdaHessian")
        if inf_grad:
            with torch.no_grad():
                model[2].weight.grad[1, 2] = float("inf")
        return loss
    return opt.step(closure)


def _assert_same(a, b, path="state_dict"):
    """Deep comparison: same keys and types, tensors equal in shape, dtype and values (NaN where
    NaN)."""
    assert type(a) is type(b), path
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, path
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=path)
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{path}: {sorted(map(str, a))} != {sorted(map(str, b))}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_same(u, v, f"{path}[{i}]")
    else:
        assert a == b or (a != a and b != b), path


@pytest.mark.parametrize("bad", ["nan_loss", "inf_grad"])
@pytest.mark.parametrize("name", list(FACTORIES))
def test_non_finite_step_is_refused_and_changes_nothing(name, bad):
    """After one finite step (so that factors, momentum and damping exist), a batch with a NaN
    input (NaN loss) or an infinite gradient entry in one parameter raises ValueError; the
    parameters and the deep-compared state_dict are exactly as before; the next finite step
    moves every parameter and keeps them finite."""
    model, loss_fn, X, y = _problem()
    opt = FACTORIES[name](model, loss_fn)
    _step(name, model, opt, loss_fn, X, y)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    Xb = X.clone()
    if bad == "nan_loss":
        Xb[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        _step(name, model, opt, loss_fn, Xb, y, inf_grad=bad == "inf_grad")
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    _assert_same(opt.state_dict(), state)
    _step(name, model, opt, loss_fn, X, y)
    for p, q in zip(model.parameters(), params):
        assert bool(torch.isfinite(p).all()) and not torch.equal(p.detach(), q)


def test_sam_refuses_a_non_finite_loss_at_the_perturbed_point():
    """The second closure call (at θ + ε̂) returns NaN: ValueError, parameters back at θ exactly,
    no state entry left behind."""
    model, loss_fn, X, y = _problem()
    opt = SAM(model.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    _step("SAM", model, opt, loss_fn, X, y)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        return loss * float("nan") if len(calls) == 2 else loss

    with pytest.raises(ValueError, match="non-finite loss"):
        opt.step(closure)
    assert len(calls) == 2
    for p, q in zip(model.parameters(), params):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    _assert_same(opt.state_dict(), state)


HOOKED = ["KFAC", "HessianFree", "NaturalGradient"]


def _hooks(modules):
    return [h for m in modules for d in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks,
                                         m._backward_pre_hooks) for h in d]


def _make_and_step(name, model, loss_fn, X, y):
    opt = FACTORIES[name](model, loss_fn)
    _step(name, model, opt, loss_fn, X, y)
    return opt


@pytest.mark.parametrize("how", ["del", "remove_hooks"])
@pytest.mark.parametrize("name", HOOKED)
def test_no_hook_left_on_the_model(name, how):
    """A deleted optimizer (collected: the model's hooks hold it weakly) and one told
    remove_hooks() leave no forward, pre-forward or backward hook on the model, any submodule or
    the loss module."""
    model, loss_fn, X, y = _problem()
    opt = _make_and_step(name, model, loss_fn, X, y)
    modules = [*model.modules(), loss_fn]
    assert _hooks(modules)  # the optimizer did install hooks
    if how == "del":
        ref = weakref.ref(opt)
        del opt
        gc.collect()
        assert ref() is None
    else:
        opt.remove_hooks()
        opt.remove_hooks()  # idempotent
    assert not _hooks(modules)
    model(X)  # nothing records any more (no error, no hook)


@pytest.mark.parametrize("name", HOOKED)
def test_remove_hooks_keeps_state_dict_round_trip(name):
    """state_dict of an optimizer whose hooks were removed loads into a fresh one, which steps."""
    model, loss_fn, X, y = _problem()
    opt = _make_and_step(name, model, loss_fn, X, y)
    opt.remove_hooks()
    sd = copy.deepcopy(opt.state_dict())
    opt2 = FACTORIES[name](model, loss_fn)
    opt2.load_state_dict(sd)
    _assert_same(opt2.state_dict(), sd)
    _step(name, model, opt2, loss_fn, X, y)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _two_groups(model, **second):
    return [{"params": list(model[0].parameters())},
            {"params": list(model[2].parameters()), **second}]


@pytest.mark.parametrize("make,key,value", [
    (lambda m, lf, g: HessianFree(m, lf, params=g), "damping", 5.0),
    (lambda m, lf, g: HessianFree(m, lf, params=g), "cg_max_iter", 3),
    (lambda m, lf, g: HessianFree(m, lf, params=g), "cg_tol", 1e-2),
    (lambda m, lf, g: HessianFree(m, lf, params=g), "cg_decay", 0.5),
    (lambda m, lf, g: NaturalGradient(m, lf, params=g), "cg_max_iter", 3),
    (lambda m, lf, g: NaturalGradient(m, lf, params=g), "cg_tol", 1e-2),
    (lambda m, lf, g: AdaHessian(g), "hessian_every", 3),
], ids=["HF-damping", "HF-cg_max_iter", "HF-cg_tol", "HF-cg_decay", "NG-cg_max_iter", "NG-cg_tol",
        "AdaHessian-hessian_every"])
def test_per_group_step_options_are_refused(make, key, value):
    """An option of the whole step given in a second group is refused (at construction, and at
    step when set on param_groups afterwards, before anything changes), not silently ignored."""
    model, loss_fn, X, y = _problem()
    with pytest.raises(ValueError, match=f"doesn't support per-group {key}"):
        make(model, loss_fn, _two_groups(model, **{key: value}))
    opt = make(model, loss_fn, _two_groups(model))
    opt.param_groups[1][key] = value
    params = [p.detach().clone() for p in model.parameters()]
    name = "AdaHessian" if isinstance(opt, AdaHessian) else "x"
    with pytest.raises(ValueError, match=f"doesn't support per-group {key}"):
        _step(name, model, opt, loss_fn, X, y)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), params))
    assert not opt.state


def test_natural_gradient_honours_per_group_damping():
    """Groups with damping 0.1 and 5.0: the direction solves (F + Λ) p = −g with the block-diagonal
    Λ = diag(0.1 I, 5.0 I), F and g the empirical Fisher and gradient built densely by
    FisherOperator. CG to 1e-12; tolerance 1e-8 (cond(F + Λ) <= ~1e3)."""
    model, loss_fn, X, y = _problem()
    opt = NaturalGradient(model, loss_fn, lr=0.1, damping=0.1, cg_tol=1e-12, cg_max_iter=500,
                          params=_two_groups(model, damping=5.0))
    op = FisherOperator(model, loss_fn, (X, y), kind="empirical")
    Fd, g = op.to_dense(), op.gradient
    n0 = sum(p.numel() for p in model[0].parameters())
    lam = torch.full((len(g),), 5.0, dtype=g.dtype)
    lam[:n0] = 0.1
    expected = torch.linalg.solve(Fd + torch.diag(lam), -g)
    _step("NaturalGradient", model, opt, loss_fn, X, y)
    p = torch.cat([opt.state[q]["direction"].reshape(-1) for q in model.parameters()])
    torch.testing.assert_close(p, expected, rtol=1e-8, atol=1e-10)
    assert opt.last_solve.damping != opt.last_solve.damping  # NaN: the groups differ
