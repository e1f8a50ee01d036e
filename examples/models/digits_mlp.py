"""A model file for ``hesse spectrum`` / ``hesse report``: an MLP on scikit-learn's digits.

    hesse spectrum --model examples/models/digits_mlp.py:make
    hesse report --model examples/models/digits_mlp.py:make --train 100

``make()`` returns the mapping the ``--model FILE.py:FACTORY`` protocol expects: ``model`` (an
``nn.Module``), ``loss_fn`` (``(outputs, targets) -> mean loss``) and ``data`` (``(inputs, targets)``
or a DataLoader). The loss is the mean cross-entropy over 512 images; the MLP 64-32-32-10 with tanh
has 3,466 parameters and is trained briefly so that the point is not a random initialization.
"""

import torch
from torch import nn

from hesse.demo_models import digits_data, train


class DigitsMLP(nn.Module):
    """64 -> 32 -> 32 -> 10 with tanh; named layers so per-layer tables read ``layers.0`` etc."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(x))


def make(num_samples: int = 512, train_steps: int = 100) -> dict:
    torch.manual_seed(0)
    X, y = digits_data(num_samples)
    model = DigitsMLP()
    train(model, X, y, steps=train_steps, lr=0.5)
    return {"model": model, "loss_fn": nn.CrossEntropyLoss(), "data": (X, y)}
