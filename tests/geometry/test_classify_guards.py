"""classify's budgets: the non-isolated test is bounded in time and memory, and an allocation
failure inside it is never read as "no valley"."""

import sys
import time

import pytest
import torch

import hesse
import hesse.geometry.classify  # noqa: F401  (the module, not the function hesse.geometry re-exports)

classify_module = sys.modules["hesse.geometry.classify"]


def test_many_null_directions_are_bounded_in_time(monkeypatch):
    # (x**4).sum() at 0: nullity n, 2n Newton probes with n x n Hessians each; before the limit
    # n = 200 took 83 s and 1.4 GB. Now the probes stop at PROBE_TIME_LIMIT and the verdict says so
    # (a limit far below the probes' cost here, so that it binds on a fast machine too)
    monkeypatch.setattr(classify_module, "PROBE_TIME_LIMIT", 0.05)
    n = 120
    t0 = time.perf_counter()
    r = hesse.classify(lambda x: (x ** 4).sum(), torch.zeros(n, dtype=torch.float64))
    wall = time.perf_counter() - t0
    assert wall < 30  # the probes' limit plus the rest (one chunk runs to the deadline), loaded CPU
    assert r.kind == "inconclusive" and r.nullity == n
    assert "stopped at its" in r.reason and "not ruled out" in r.reason


def test_probe_chunks_respect_the_memory_budget(monkeypatch):
    sizes = []
    real = classify_module.batched_newton

    def spy(f, X0, **kw):
        sizes.append(X0.shape[0])
        return real(f, X0, **kw)

    monkeypatch.setattr(classify_module, "batched_newton", spy)
    monkeypatch.setattr(classify_module, "PROBE_TIME_LIMIT", 1e6)  # all probes run, however loaded
    n = 8
    # room for 3 starts per chunk: 3 x PROBE_MATRICES buffers of n x n float64
    monkeypatch.setattr(classify_module, "PROBE_CHUNK_BYTES", 3 * classify_module.PROBE_MATRICES * n * n * 8)
    r = hesse.classify(lambda x: (x ** 4).sum(), torch.zeros(n, dtype=torch.float64))
    assert r.nullity == n and max(sizes) <= 3 and sum(sizes) >= 2 * n, (sizes, r.reason)


@pytest.mark.parametrize("message", ["DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB",
                                     "CUDA out of memory. Tried to allocate 2.00 GiB"])
def test_allocation_failure_in_the_probe_is_not_swallowed(monkeypatch, message):
    def fail(*args, **kwargs):
        raise RuntimeError(message)

    monkeypatch.setattr(classify_module, "batched_newton", fail)
    with pytest.raises(RuntimeError, match="allocate"):
        hesse.classify(lambda x: (x ** 4).sum(), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_point_is_classified_in_float32(dtype):
    # eigh has no half-precision kernel: the point is taken to float32, with a warning
    with pytest.warns(UserWarning, match="computes in torch.float32"):
        r = hesse.classify(lambda x: x[0] ** 2 - x[1] ** 2, torch.zeros(2, dtype=dtype))
    assert r.kind == "saddle" and r.x.dtype == torch.float32
