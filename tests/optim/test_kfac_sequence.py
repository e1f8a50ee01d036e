"""hesse.optim.KFAC and hesse.KFACOperator build the same factors on sequence outputs.

Ground truth: KFACOperator(kind="empirical"), whose type-2 factor is the GGN block for one datum
(tests/operators/test_kfac_operator.py) and whose empirical factor uses the same observed-target
gradients the optimizer records. Both are computed from one batch in float64, so the factors agree
to rounding (1e-12 relative).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesse


class _Permuted(nn.Module):
    """Linear(3, 3) at each of T positions; outputs (N, C, T) for cross-entropy."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x).permute(0, 2, 1)


def _case(loss: str, T: int, reduction: str):
    g = torch.Generator().manual_seed(T)
    x = torch.randn(6, T, 3, generator=g, dtype=torch.float64)
    if loss == "ce":
        model = _Permuted().double()
        y = torch.randint(0, 3, (6, T), generator=g)
        return model, nn.CrossEntropyLoss(reduction=reduction), x, y
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    y = torch.randn(6, T, 2, generator=g, dtype=torch.float64)
    return model, nn.MSELoss(reduction=reduction), x, y


@pytest.mark.parametrize("T", [1, 5, 8])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_optimizer_factors_are_the_operators(loss, T, reduction):
    model, loss_fn, x, y = _case(loss, T, reduction)
    op = hesse.KFACOperator(model, loss_fn, (x, y), kind="empirical")
    A_ref, G_ref = next(iter(op.factors.values()))
    opt = hesse.optim.KFAC(model, lr=1e-3, loss_fn=loss_fn, kl_clip=None, momentum=0.0)

    def closure():
        opt.zero_grad()
        out = loss_fn(model(x), y)
        out.backward()
        return out

    weight = model.lin.weight if loss == "ce" else model.weight
    opt.step(closure)
    A, G = opt.state[weight]["A"], opt.state[weight]["G"]
    scale = float(G_ref.abs().max())
    assert torch.allclose(A, A_ref, rtol=1e-12, atol=1e-12 * float(A_ref.abs().max()))
    assert float((G - G_ref).abs().max()) <= 1e-12 * scale, float(G.abs().max()) / scale


def test_loss_fn_must_be_the_module_the_closure_calls():
    model, loss_fn, x, y = _case("ce", 5, "mean")
    with pytest.raises(TypeError, match="nn loss module"):
        hesse.optim.KFAC(model, loss_fn=lambda z, t: loss_fn(z, t))
    opt = hesse.optim.KFAC(model, loss_fn=nn.CrossEntropyLoss())  # another instance

    def closure():
        opt.zero_grad()
        out = loss_fn(model(x), y)
        out.backward()
        return out

    with pytest.raises(ValueError, match="did not call loss_fn"):
        opt.step(closure)


def test_sequence_inputs_without_loss_fn_warn_once():
    model, loss_fn, x, y = _case("ce", 5, "mean")
    opt = hesse.optim.KFAC(model, lr=1e-3)

    def closure():
        opt.zero_grad()
        out = loss_fn(model(x), y)
        out.backward()
        return out

    with pytest.warns(UserWarning, match="loss_fn"):
        opt.step(closure)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step(closure)
