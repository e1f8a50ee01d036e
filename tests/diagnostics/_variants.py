"""One small classifier written three ways: loss_fn on pairs, a model computing its own loss
(batch_loss), and a model taking a dict and returning a dict (forward=). The weights are equal, so
every curvature number of the three must agree.

Loaded by path (``runpy``) by the diagnostics tests and given to the CLI as ``--model`` factories
(``make_plain``, ``make_batch_loss``, ``make_forward``).
"""

import runpy
from pathlib import Path

import torch
import torch.nn.functional as F

SIZES = (20, 12)  # unequal batches: the mean loss weights them by their sizes


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()


def _xy():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(sum(SIZES), 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (sum(SIZES),), generator=gen)
    return X.split(SIZES), y.split(SIZES)


class SelfLoss(torch.nn.Module):
    """Computes its own loss, like a Hugging Face model given labels."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x, labels):
        return F.cross_entropy(self.net(x), labels)


class DictNet(torch.nn.Module):
    """Takes a dict and returns a dict: the outputs need forward=."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, batch):
        return {"logits": self.net(batch["features"])}


def make_plain():
    Xs, ys = _xy()
    return {"model": _net(), "loss_fn": torch.nn.CrossEntropyLoss(), "data": list(zip(Xs, ys))}


def make_batch_loss():
    Xs, ys = _xy()
    return {"model": SelfLoss(), "batch_loss": lambda m, b: m(b["x"], b["labels"]),
            "data": [{"x": X, "labels": y} for X, y in zip(Xs, ys)]}


def make_forward():
    Xs, ys = _xy()
    return {"model": DictNet(), "loss_fn": torch.nn.CrossEntropyLoss(),
            "forward": lambda m, inputs: m(inputs)["logits"],
            "data": [({"features": X}, y) for X, y in zip(Xs, ys)]}


VARIANTS = ("batch_loss", "forward")

PATH = str(Path(__file__).resolve())


def load() -> dict:
    """This file's namespace (for tests that cannot import it: pytest runs with import-mode=importlib)."""
    return runpy.run_path(PATH)
