"""Suite-wide guard: a test that changes torch's default dtype must not leak it into the next test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_default_dtype():
    previous = torch.get_default_dtype()
    yield
    if torch.get_default_dtype() != previous:
        torch.set_default_dtype(previous)
        pytest.fail(f"test left torch's default dtype at {torch.get_default_dtype()}; restore it in the test")


def pytest_configure(config):
    """Under pytest-xdist, one intra-op thread per worker.

    ``make test`` runs two workers on two cores; with torch's default of one thread per core each
    worker's OpenMP threads spin-wait against the other worker's, which slows small products by
    up to 100x (measured: a 2,410-parameter Hessian column block went from 0.06 s to 7.8 s).
    """
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # for the subprocesses the CLI tests start
