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
