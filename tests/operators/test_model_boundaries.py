"""Boundaries of the model operators: what they accept, what they copy, what they refuse.

Ground truth: dense ``torch.func`` Hessians of the flat mean loss, the GGN ``Σ_b w_b J_bᵀ H_b J_b``
and per-sample gradients, as in ``test_grid.py``; float64 throughout, so ``1e-9`` relative to the
matrix's largest entry covers the rounding of a few dozen terms.
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hesse
from hesse.operators import FisherOperator, GGNOperator, HessianOperator, KFACOperator

RTOL = 1e-9


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _data(n: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=g))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= RTOL * max(float(b.abs().max()), 1e-300)


def _dense_hessian(model, loss_fn, batches, names=None):
    """Hessian of L(θ) = Σ_b (n_b/N) loss_b (mean reduction) via torch.func."""
    from torch.func import functional_call, hessian

    params = dict(model.named_parameters())
    names = names or list(params)
    fixed = {k: v.detach() for k, v in params.items() if k not in names}
    shapes = [params[k].shape for k in names]
    sizes = [params[k].numel() for k in names]
    N = sum(int(y.shape[0]) for _, y in batches)

    def total(flat):
        parts = dict(zip(names, [c.reshape(s) for c, s in zip(torch.split(flat, sizes), shapes)]))
        out = 0.0
        for x, y in batches:
            out = out + y.shape[0] / N * loss_fn(functional_call(model, {**fixed, **parts}, (x,)), y)
        return out

    flat = torch.cat([params[k].detach().reshape(-1) for k in names])
    return hessian(total)(flat)


# ----------------------------------------------------------------------------- 18.4
def test_function_hessian_operator_is_a_sibling_not_a_false_subclass():
    """isinstance(op, HessianOperator) promised attributes a function operator does not have."""
    op = HessianOperator.from_function(lambda x: (x**4).sum(), torch.ones(3, dtype=torch.float64))
    assert not isinstance(op, HessianOperator)
    assert isinstance(op, hesse.operators.FunctionHessianOperator)
    assert isinstance(op, hesse.operators.CurvatureOperator)
    model_op = HessianOperator(_mlp(), nn.CrossEntropyLoss(), _data())
    for attr in ("graph_bytes", "world_size", "process_group", "matmat_strategy"):
        getattr(model_op, attr)  # the promises of the class


# ----------------------------------------------------------------------------- 17.3
@pytest.mark.parametrize("make", [
    lambda m, d: HessianOperator(m, nn.CrossEntropyLoss(), d, params=["2.weight"], keep_graph=False),
    lambda m, d: HessianOperator(m, nn.CrossEntropyLoss(), d, params=["2.weight"], keep_graph=True),
    lambda m, d: GGNOperator(m, nn.CrossEntropyLoss(), d, params=["2.weight"]),
    lambda m, d: FisherOperator(m, nn.CrossEntropyLoss(), d, params=["2.weight"]),
    lambda m, d: FisherOperator(m, nn.CrossEntropyLoss(), d, params=["2.weight"], kind="mc"),
    lambda m, d: KFACOperator(m, nn.CrossEntropyLoss(), d, params=["2.weight"]),
], ids=["hessian", "hessian-kept", "ggn", "fisher", "fisher-mc", "kfac"])
def test_training_after_construction_leaves_a_subset_operator_unchanged(make):
    model, data = _mlp(), _data()
    op = make(model, data)
    v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    before = op @ v
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(data[0]), data[1]).backward()
        opt.step()
    after = op @ v
    assert torch.equal(before, after)


# ----------------------------------------------------------------------------- 17.4
def _sum_ce(z, y):
    return F.cross_entropy(z, y, reduction="sum")


_UNDECLARED_SUMS = {
    "lambda": lambda z, y: F.cross_entropy(z, y, reduction="sum"),
    "partial": functools.partial(F.cross_entropy, reduction="sum"),
    "def": _sum_ce,
}
_UNDECLARED_MEANS = {
    "lambda": lambda z, y: F.cross_entropy(z, y),
    "partial": functools.partial(F.cross_entropy, reduction="mean"),
}


@pytest.mark.parametrize("kind", ["sum", "mean"])
@pytest.mark.parametrize("form", ["lambda", "partial", "def"])
@pytest.mark.parametrize("op_name", ["hessian", "ggn", "fisher", "kfac"])
def test_an_undeclared_reduction_is_measured_not_assumed(kind, form, op_name):
    """Batches of 2 and 8: a sum-reducing loss taken as a mean was off by x6 in ``loss``."""
    if form not in (_UNDECLARED_SUMS if kind == "sum" else _UNDECLARED_MEANS):
        pytest.skip("no such form")
    loss_fn = (_UNDECLARED_SUMS if kind == "sum" else _UNDECLARED_MEANS)[form]
    declared = nn.CrossEntropyLoss(reduction=kind)
    model = _mlp()
    x, y = _data(10)
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    make = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator,
            "kfac": lambda m, lf, d: KFACOperator(m, lf, d, kind="empirical")}[op_name]
    op, ref = make(model, loss_fn, batches), make(model, declared, batches)
    # the mean loss over the 10 samples, whatever the reduction (operators' definition of L)
    if op_name != "kfac":  # K-FAC keeps no loss value
        assert op.loss == pytest.approx(float(F.cross_entropy(model(x), y)), rel=1e-12)
    assert _close(op.to_dense(), ref.to_dense())
    if op_name == "hessian":
        assert _close(op.to_dense(), _dense_hessian(model, nn.CrossEntropyLoss(), [(x, y)]))


def test_an_undecidable_reduction_is_refused():
    model = _mlp()
    x = torch.randn(6, 4, dtype=torch.float64)

    def per_token_mean(z, y):  # neither the sum nor the mean of its halves: refused
        return (z - y).pow(2).sum() / (1 + z.shape[0] ** 2)

    with pytest.raises(ValueError, match="loss_fn.reduction"):
        HessianOperator(model, per_token_mean, (x, torch.zeros(6, 3, dtype=torch.float64)))
    per_token_mean.reduction = "sum"  # declared: accepted
    HessianOperator(model, per_token_mean, (x, torch.zeros(6, 3, dtype=torch.float64)))


# ----------------------------------------------------------------------------- 17.22
def test_kldiv_batchmean_is_a_mean_per_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3), nn.LogSoftmax(dim=1)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    y = torch.softmax(torch.randn(7, 3, generator=g, dtype=torch.float64), 1)
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    loss_fn = nn.KLDivLoss(reduction="batchmean")
    op = HessianOperator(model, loss_fn, batches)
    assert _close(op.to_dense(), _dense_hessian(model, loss_fn, batches))
    assert op.loss == pytest.approx(float(loss_fn(model(x), y)), rel=1e-12)
    fisher = FisherOperator(model, loss_fn, batches).to_dense()
    grads = []
    for i in range(7):  # per-sample gradients: the loss of a one-sample batch
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    G = torch.stack(grads)
    assert _close(fisher, G.T @ G / 7)


# ----------------------------------------------------------------------------- 17.5
class _Stream(torch.utils.data.IterableDataset):
    """A stream: ``__iter__`` returns one stored iterator, so a second pass sees nothing."""

    def __init__(self, x, y):
        self.it = iter(list(zip(x, y)))

    def __iter__(self):
        return self.it


@pytest.mark.parametrize("make", [
    lambda d: HessianOperator(_mlp(), nn.CrossEntropyLoss(), d, keep_graph=False),
    lambda d: GGNOperator(_mlp(), nn.CrossEntropyLoss(), d, keep_graph=False),
    lambda d: FisherOperator(_mlp(), nn.CrossEntropyLoss(), d),
    lambda d: FisherOperator(_mlp(), nn.CrossEntropyLoss(), d, kind="mc"),
], ids=["hessian", "ggn", "fisher", "fisher-mc"])
def test_data_that_iterates_once_is_refused_not_read_as_zero(make):
    x, y = _data(8)
    op = make(torch.utils.data.DataLoader(_Stream(x, y), batch_size=2))
    with pytest.raises(ValueError, match="list"):
        op @ torch.ones(op.shape[0], dtype=torch.float64)
    # the fix the message names gives the operator on the same data
    fixed = make(list(torch.utils.data.DataLoader(_Stream(x, y), batch_size=2)))
    assert float((fixed @ torch.ones(op.shape[0], dtype=torch.float64)).norm()) > 0


def test_a_second_operator_on_an_exhausted_stream_names_the_fix():
    x, y = _data(8)
    loader = torch.utils.data.DataLoader(_Stream(x, y), batch_size=2)
    KFACOperator(_mlp(), nn.CrossEntropyLoss(), loader)
    for make in (HessianOperator, KFACOperator):
        with pytest.raises(ValueError, match="iterated only once"):
            make(_mlp(), nn.CrossEntropyLoss(), loader)


# ----------------------------------------------------------------------------- 17.6
class _TimeMajor(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.head = nn.GRU(3, 4), nn.Linear(4, 2)

    def forward(self, x):  # (T, N, 3) -> (T, N, 2)
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("kind", ["empirical", "mc"])
def test_fisher_refuses_outputs_without_the_samples_first(kind):
    model = _TimeMajor().double()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    y = torch.randn(5, 6, 2, dtype=torch.float64)
    op = FisherOperator(model, nn.MSELoss(), (x, y), kind=kind, batch_size=lambda b: b[0].shape[1])
    with pytest.raises(ValueError, match="first dimension"):
        op @ torch.ones(op.shape[0], dtype=torch.float64)
    # samples first: the empirical Fisher is the mean outer product of per-sample gradients
    ok = FisherOperator(model, nn.MSELoss(), (x, y.transpose(0, 1)),
                        forward=lambda m, inp: m(inp).transpose(0, 1), kind="empirical")
    grads = []
    for i in range(6):
        model.zero_grad()
        nn.MSELoss()(model(x[:, i:i + 1]).transpose(0, 1), y[:, i:i + 1].transpose(0, 1)).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    G = torch.stack(grads)
    assert _close(ok.to_dense(), G.T @ G / 6)


# ----------------------------------------------------------------------------- 17.18
_DISCONNECTED = {
    "tensor-of-float": dict(loss_fn=lambda z, y: torch.tensor(float(F.cross_entropy(z, y)))),
    "detach": dict(loss_fn=lambda z, y: F.cross_entropy(z, y).detach()),
    "integer": dict(loss_fn=lambda z, y: (z.argmax(1) != y).sum()),
    "forward-detach": dict(loss_fn=nn.CrossEntropyLoss(), forward=lambda m, x: m(x).detach()),
    "batch_loss": dict(batch_loss=lambda m, b: torch.tensor(float(F.cross_entropy(m(b[0]), b[1])))),
}


@pytest.mark.parametrize("case", list(_DISCONNECTED))
@pytest.mark.parametrize("op_name", ["hessian", "ggn", "fisher", "kfac"])
def test_a_disconnected_loss_is_refused_with_the_fix(case, op_name):
    options = dict(_DISCONNECTED[case])
    if op_name in ("ggn", "fisher") and "batch_loss" in options:
        pytest.skip("GGN and Fisher refuse batch_loss on their own")
    if op_name == "kfac":
        if set(options) != {"loss_fn"}:
            pytest.skip("KFACOperator takes loss_fn only")
        options["kind"] = "empirical"
    make = {"hessian": HessianOperator, "ggn": GGNOperator, "fisher": FisherOperator,
            "kfac": KFACOperator}[op_name]
    loss_fn = options.pop("loss_fn", None)
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        make(_mlp(), loss_fn, _data(), **options)


# ----------------------------------------------------------------------------- 17.1
_NOT_LIKELIHOODS = {
    "ce-label-smoothing": nn.CrossEntropyLoss(label_smoothing=0.3),
    "ce-weight": nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)),
    "bce-pos-weight": nn.BCEWithLogitsLoss(pos_weight=torch.full((3,), 2.0, dtype=torch.float64)),
}


@pytest.mark.parametrize("loss", list(_NOT_LIKELIHOODS))
@pytest.mark.parametrize("who", ["fisher", "kfac", "natural-gradient"])
def test_sampling_refuses_a_loss_that_is_no_likelihood_everywhere(loss, who):
    """K-FAC's MC factor with label smoothing 0.3 was 51 % off its type-2 factor."""
    loss_fn = _NOT_LIKELIHOODS[loss]
    x = _data()[0]
    y = _data()[1] if loss.startswith("ce") else torch.rand(8, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="not such a loss"):
        if who == "fisher":
            FisherOperator(_mlp(), loss_fn, (x, y), kind="mc")
        elif who == "kfac":
            KFACOperator(_mlp(), loss_fn, (x, y), kind="mc")
        else:
            hesse.optim.NaturalGradient(_mlp(), loss_fn, kind="mc")


def test_label_smoothing_keeps_the_type2_factor_the_ggn():
    """Smoothing moves the targets linearly, so the loss Hessian in the outputs, and with it the
    type-2 K-FAC (exact for one datum and one layer), is the GGN's."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    x, y = _data(1)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.3)
    kfac = KFACOperator(model, loss_fn, (x, y), kind="type2").to_dense()
    ggn = GGNOperator(model, loss_fn, (x, y)).to_dense()
    assert _close(kfac, ggn)


# ----------------------------------------------------------------------------- 17.12
@pytest.mark.parametrize("make", [HessianOperator, GGNOperator, FisherOperator, KFACOperator,
                                  lambda m, lf, d: KFACOperator(m, lf, d, kind="empirical")],
                         ids=["hessian", "ggn", "fisher", "kfac", "kfac-empirical"])
def test_an_infinite_input_with_a_finite_loss_is_refused_by_every_operator(make):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    x[0, 1] = float("inf")  # tanh squashes the first layer's infinite outputs: the loss is finite
    y = torch.randint(0, 2, (5,))
    assert torch.isfinite(nn.CrossEntropyLoss()(model(x), y))
    with pytest.raises(ValueError, match="not finite"):
        make(model, nn.CrossEntropyLoss(), (x, y))


def test_an_undeclared_token_mean_with_a_mask_is_a_mean():
    """A mean over the tokens a mask leaves (unequal counts per half) is neither the sum nor the
    sample mean of its halves, but lies between them: a mean, weighted by the batch's samples."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (6, 5), generator=g)
    y[0, :4] = -100  # the first half keeps fewer tokens

    def token_mean(z, t):
        return F.cross_entropy(z.reshape(-1, 3), t.reshape(-1), ignore_index=-100)

    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    op = HessianOperator(model, token_mean, batches)
    token_mean.reduction = "mean"
    declared = HessianOperator(model, token_mean, batches)
    assert _close(op.to_dense(), declared.to_dense())


@pytest.mark.parametrize("seed", ["a", float("nan"), 1.5, -1, True])
@pytest.mark.parametrize("make", [
    lambda m, lf, d, s: hesse.KFACOperator(m, lf, d, kind="mc", seed=s),
    lambda m, lf, d, s: hesse.FisherOperator(m, lf, d, kind="mc", seed=s),
    lambda m, lf, d, s: hesse.optim.NaturalGradient(m, lf, kind="mc", seed=s),
    lambda m, lf, d, s: hesse.optim.AdaHessian(m.parameters(), seed=s),
], ids=["kfac-mc", "fisher-mc", "natural-gradient", "adahessian"])
def test_a_seed_that_is_no_integer_is_refused_by_name(make, seed):
    """A seed is an integer >= 0: anything else is one line naming 'seed', not int()'s error."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    data = (torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,)))
    with pytest.raises(ValueError, match=r"seed must be an integer >= 0"):
        make(model, nn.CrossEntropyLoss(), data, seed)
