"""Built-in problems on real data that ships with scikit-learn: the digits MLP and CNN.

These are the defaults of ``hesse demo``, ``hesse spectrum`` and ``hesse report``, and the models
of the benchmarks. Each ``*_problem`` function follows the model protocol of the CLI
(``--model file.py:factory``): it returns a dict with ``model``, ``loss_fn`` and ``data``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def digits_data(num_samples: int | None = 512, dtype: torch.dtype = torch.float32,
                image: bool = False, test: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled 8x8 digits (1,797 images, 10 classes), scaled to [0, 1].

    The first ``num_samples`` images (``None``: all but a held-out test set of 297) as
    ``(X, y)``: ``X`` of shape ``(m, 64)`` or ``(m, 1, 8, 8)`` with ``image=True``. ``test=True``
    returns the 297 held-out images.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - sklearn is in the cli/test extras
        raise ImportError("the digits data set needs scikit-learn: pip install 'hesse[cli]'") from err
    digits = load_digits()
    X = torch.tensor(digits.data, dtype=dtype) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    if test:
        X, y = X[1500:], y[1500:]
    else:
        X, y = X[:1500], y[:1500]
        if num_samples is not None:
            X, y = X[:num_samples], y[:num_samples]
    if image:
        X = X.reshape(-1, 1, 8, 8)
    return X, y


def digits_mlp(hidden: int = 32, depth: int = 2, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> nn.Module:
    """An MLP 64 -> hidden (x depth, tanh) -> 10. ``hidden=32, depth=2`` has 3,466 parameters."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = 64
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.Tanh()]
        width = hidden
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers).to(dtype)


def digits_cnn(channels: int = 16, seed: int = 0, dtype: torch.dtype = torch.float32,
               batch_norm: bool = True) -> nn.Module:
    """A small CNN for 1x8x8 digits: two 3x3 convolutions (with BatchNorm) and a linear head."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(channels))
    layers += [nn.ReLU(), nn.Conv2d(channels, 2 * channels, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(2 * channels))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * channels * 16, 10)]
    return nn.Sequential(*layers).to(dtype)


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, steps: int = 200, lr: float = 0.1,
          batch_size: int | None = None, seed: int = 0) -> list[float]:
    """Plain (mini-batch) gradient descent with cross-entropy; returns the loss per step.

    The steps run in float64 on a copy of the model, and the trained weights are rounded to the
    model's own dtype once at the end. Gradient descent at a large step size amplifies roundoff
    (each step multiplies a perturbation by up to ``|1 - lr * lambda|``), so a float32 run's result
    would depend on the last bits of the CPU's float32 kernels; in float64 the amplified roundoff
    stays far below float32 resolution and the trained model is the same on every machine.
    """
    gen = torch.Generator().manual_seed(seed)
    work = copy.deepcopy(model).to(torch.float64)
    X64 = X.to(torch.float64) if X.is_floating_point() else X
    opt = torch.optim.SGD(work.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(steps):
        if batch_size is None:
            xb, yb = X64, y
        else:
            idx = torch.randint(0, len(X), (batch_size,), generator=gen)
            xb, yb = X64[idx], y[idx]
        opt.zero_grad()
        loss = loss_fn(work(xb), yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        for target, source in zip(model.state_dict().values(), work.state_dict().values()):
            target.copy_(source)
    return losses


def digits_mlp_problem(num_samples: int = 512, hidden: int = 32, train_steps: int = 100,
                       dtype: torch.dtype = torch.float32) -> dict:
    """The default problem: an MLP trained briefly on digits, its cross-entropy, its data."""
    X, y = digits_data(num_samples, dtype=dtype)
    model = digits_mlp(hidden=hidden, dtype=dtype)
    if train_steps:
        train(model, X, y, steps=train_steps, lr=0.5)
    return {"model": model, "loss_fn": nn.CrossEntropyLoss(), "data": (X, y)}
