"""A small ResNet (convolutions, BatchNorm, skip connections, global pooling) written in torch, as
vision models are tested here without torchvision: Hessian and GGN against dense float64 ground
truth computed independently, in BatchNorm's eval mode (running statistics, so the loss is a
function of the parameters alone).

Tolerance 1e-9 relative: float64 evaluations of the same derivatives by different routes
(hesse's batched products against one autograd double backward per unit vector; the GGN against
its definition ``Jᵀ H_L J`` with ``J`` from ``torch.autograd.functional.jacobian``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

import hesse


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))  # the skip connection


def resnet() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), Block(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(2, 3)).double()
    with torch.no_grad():  # non-trivial running statistics, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)


def _flat(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(t):
        return {n: c.reshape(s) for n, c, s in zip(names, torch.split(t, [s.numel() for s in shapes]), shapes)}

    return theta, unflat


def test_resnet_hessian_matches_autograd():
    model, (X, y), loss_fn = resnet(), _data(), nn.CrossEntropyLoss()
    theta, unflat = _flat(model)
    H = torch.autograd.functional.hessian(lambda t: loss_fn(functional_call(model, unflat(t), (X,)), y), theta)
    A = hesse.HessianOperator(model, loss_fn, (X, y)).to_dense()
    assert float((A - H).norm() / H.norm()) < 1e-9


def test_resnet_ggn_is_jt_hl_j():
    model, (X, y), loss_fn = resnet(), _data(), nn.CrossEntropyLoss()
    theta, unflat = _flat(model)
    z = model(X).detach()
    J = torch.autograd.functional.jacobian(lambda t: functional_call(model, unflat(t), (X,)), theta)
    J = J.reshape(-1, theta.numel())
    HL = torch.autograd.functional.hessian(lambda zz: loss_fn(zz.reshape(z.shape), y), z.reshape(-1))
    G = J.T @ HL @ J
    A = hesse.GGNOperator(model, loss_fn, (X, y)).to_dense()
    assert float((A - G).norm() / G.norm()) < 1e-9
