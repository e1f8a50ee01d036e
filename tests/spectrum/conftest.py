"""Shared ground-truth problems for the spectrum tests (built once per session).

- ``indefinite_op``: DenseOperator Q diag(lambda) Q^T, n = 2,000, known eigenvalues (negative tail).
- ``lowrank_op``: low-rank-plus-noise spectrum, n = 1,000 (10 outliers over a [0, 1] bulk).
- ``mlp_problem`` / ``untrained_problem``: digits MLP in float64 (hidden 24 -> 2,410 parameters),
  with the dense Hessian from ``op.to_dense()`` and its ``eigvalsh`` as ground truth.
"""

import pytest
import torch

import hesse
from hesse.demo_models import digits_data, digits_mlp, train
from hesse.testing.spectra import (
    indefinite_spectrum,
    low_rank_plus_noise_spectrum,
    prescribed_spectrum,
)


@pytest.fixture(scope="session")
def indefinite_op():
    return prescribed_spectrum(indefinite_spectrum(2000, num_negative=50, seed=3), seed=1)


@pytest.fixture(scope="session")
def lowrank_op():
    return prescribed_spectrum(low_rank_plus_noise_spectrum(1000, rank=10, seed=2), seed=2)


def _mlp(train_steps):
    X, y = digits_data(num_samples=256, dtype=torch.float64)
    model = digits_mlp(hidden=24, depth=2, seed=0, dtype=torch.float64)
    if train_steps:
        train(model, X, y, steps=train_steps, lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    op = hesse.HessianOperator(model, loss_fn, (X, y))
    H = op.to_dense()
    evals = torch.linalg.eigvalsh(H)
    op.reset_counter()
    return {"model": model, "loss_fn": loss_fn, "data": (X, y), "op": op, "H": H, "evals": evals}


@pytest.fixture(scope="session")
def mlp_problem():
    return _mlp(train_steps=100)


@pytest.fixture(scope="session")
def untrained_problem():
    return _mlp(train_steps=0)
