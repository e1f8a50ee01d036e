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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster and deterministic (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def load_factory():
    """``load_factory(path, name)``: call the factory ``name`` of the model file at ``path``, as
    ``hesse --model path:name`` does, to compute a reference in-process."""
    import importlib.util

    def load(path, name):
        spec = importlib.util.spec_from_file_location(f"ref_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return getattr(mod, name)()

    return load


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
