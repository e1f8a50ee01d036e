"""Guards of every run: the gradient checked against f at a claimed minimum, half-precision
starts, trust-region eta, the callback's copy, the bounded history."""

import pytest
import torch

import hesse
from hesse.optimize import METHODS
from hesse.optimize.result import GRADIENT_MISMATCH, HISTORY_MAX_ENTRIES, OptimizeHistory
from hesse.testing.functions import get_problem

UNBATCHED = [m for m in METHODS]
BATCHED = [m for m, s in METHODS.items() if s.batched]


def _opts(method):
    return {"lr": 0.1} if method in ("gd", "momentum", "nesterov") else {}


# f = (x0 - 1)^2 + x1^2 with the x1 part cut off from autograd in three ways: the gradient
# autograd sees is (2(x0 - 1), 0), zero at [1, 2], where the true df/dx1 is 4
PARTLY_DISCONNECTED = {
    "item": lambda x: (x[0] - 1) ** 2 + x[1].item() ** 2,
    "detach": lambda x: (x[0] - 1) ** 2 + x[1].detach() ** 2,
    "float": lambda x: (x[0] - 1) ** 2 + torch.tensor(float(x[1]) ** 2, dtype=x.dtype),
}


@pytest.mark.parametrize("form", list(PARTLY_DISCONNECTED))
@pytest.mark.parametrize("method", UNBATCHED)
def test_partly_disconnected_f_is_not_called_a_minimum(method, form):
    r = hesse.minimize(PARTLY_DISCONNECTED[form], [0.0, 2.0], method=method, **_opts(method))
    assert not r.success
    if r.grad_norm <= 1e-5:  # the gradient test passed: the check must be what refused it
        assert r.status == GRADIENT_MISMATCH and "not connected to x" in r.message, r.message


@pytest.mark.parametrize("method", BATCHED)
def test_partly_disconnected_f_batched(method):
    X0 = torch.tensor([[0.0, 2.0], [0.5, -1.0], [3.0, 0.5]], dtype=torch.float64)
    for r in hesse.minimize(PARTLY_DISCONNECTED["detach"], X0, method=method, batched=True,
                            **_opts(method)):
        assert not r.success
        if r.grad_norm <= 1e-5:
            assert r.status == GRADIENT_MISMATCH and "not connected to x" in r.message


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["rosenbrock", "beale", "helical_valley", "wood", "powell_singular",
                                  "brown_badly_scaled", "watson", "trigonometric"])
@pytest.mark.parametrize("method", ["bfgs", "lbfgs", "newton-damped", "trust-exact", "trust-ncg"])
def test_connected_f_passes_the_gradient_check(method, name, dtype):
    # no false alarm: on smooth problems (badly scaled, singular minima, large f values) the
    # check never overrides a gradient test that held; float32 runs use a float32-sized gtol
    p = get_problem(name)
    gtol = 1e-5 if dtype == torch.float64 else 1e-2 * max(1.0, float(p.f(p.x0).abs()) ** 0.5)
    r = hesse.minimize(p.f, p.x0.to(dtype), method=method, gtol=gtol, max_iter=3000)
    assert r.status != GRADIENT_MISMATCH, r.message


def test_gradient_check_counts_its_evaluations():
    f = lambda x: ((x - 1) ** 2).sum()  # noqa: E731
    r = hesse.minimize(f, torch.zeros(3, dtype=torch.float64), method="newton", check_curvature=False)
    # pure Newton: one value+gradient at x0, one per step, and the check's two differences
    assert r.success and r.nfev == 1 + r.nit + 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["newton", "newton-damped", "saddle-free-newton", "trust-exact", "lbfgs"])
def test_half_precision_start_runs_in_float32_and_says_so(method, dtype):
    f = lambda x: ((x - 1) ** 2).sum() + (x ** 4).sum()  # noqa: E731  minimum where 2(x-1)+4x^3 = 0
    with pytest.warns(UserWarning, match="computes in torch.float32"):
        r = hesse.minimize(f, torch.zeros(3, dtype=dtype), method=method, gtol=1e-4)
    assert r.success and r.x.dtype == torch.float32
    ref = hesse.minimize(f, torch.zeros(3, dtype=torch.float64), method="newton")
    assert torch.allclose(r.x.double(), ref.x, atol=1e-4)  # float32 with gtol 1e-4 on a curvature ~ 4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_batched_and_least_squares(dtype):
    with pytest.warns(UserWarning, match="computes in torch.float32"):
        rs = hesse.minimize(lambda x: ((x - 1) ** 2).sum(), torch.zeros(2, 3, dtype=dtype),
                            method="newton-damped", batched=True)
    assert all(r.success and r.x.dtype == torch.float32 for r in rs)
    with pytest.warns(UserWarning, match="computes in torch.float32"):
        r = hesse.least_squares(lambda x: x - 1, torch.zeros(3, dtype=dtype))
    assert r.success and r.x.dtype == torch.float32


@pytest.mark.parametrize("eta", [2, 0.25, -0.1, float("nan"), "0.1", True])
@pytest.mark.parametrize("method", ["trust-ncg", "trust-exact", "sr1"])
def test_trust_region_eta_outside_scipy_range_refused(method, eta):
    with pytest.raises(ValueError, match=r"eta must be a number in \[0, 0.25\)"):
        hesse.minimize(lambda x: (x ** 2).sum(), [1.0, 2.0], method=method, eta=eta)


def test_trust_region_eta_zero_accepted():
    assert hesse.minimize(lambda x: (x ** 2).sum(), [1.0, 2.0], method="trust-exact", eta=0).success


@pytest.mark.parametrize("method", ["gd", "bfgs", "lbfgs", "newton", "trust-ncg", "newton-cg"])
@pytest.mark.parametrize("style", ["hesse", "scipy"])
def test_callback_gets_a_copy(method, style):
    f = lambda x: ((x - 1) ** 2).sum()  # noqa: E731
    seen = []

    def hesse_cb(x, fx, gnorm):
        seen.append(x.clone())
        x.mul_(0)

    def scipy_cb(xk):
        seen.append(xk.clone())
        xk.mul_(0)

    ref = hesse.minimize(f, [3.0, -2.0], method=method, **_opts(method))
    r = hesse.minimize(f, [3.0, -2.0], method=method, callback=hesse_cb if style == "hesse" else scipy_cb,
                       **_opts(method))
    assert seen and r.nit == ref.nit and torch.equal(r.x, ref.x)
    assert torch.equal(seen[-1], r.x)


def test_history_is_bounded_and_keeps_the_latest_iteration():
    h = OptimizeHistory(iterates_kept=True)
    total = 5 * HISTORY_MAX_ENTRIES + 7
    for k in range(total + 1):
        h.append(k, float(k), 1.0 / (k + 1), 0.1, k, torch.tensor([float(k)]))
    assert len(h.values) <= HISTORY_MAX_ENTRIES + 1
    assert h.iterations[0] == 0 and h.iterations[-1] == total and h.values[-1] == float(total)
    assert float(h.iterates[-1]) == float(total) and len(h.iterates) == len(h.values)
    # evenly spaced by the stride, apart from the latest entry
    assert all(k % h.stride == 0 for k in h.iterations[:-1]) and h.stride > 1
    assert h.values == [float(k) for k in h.iterations]


def test_history_of_a_long_run_is_bounded():
    r = hesse.minimize(lambda x: (x ** 2).sum(), [1.0, 1.0], method="gd", lr=1e-9,
                       max_iter=3 * HISTORY_MAX_ENTRIES, check_curvature=False)
    assert r.nit == 3 * HISTORY_MAX_ENTRIES and r.history.iterations[-1] == r.nit
    assert len(r.history.values) <= HISTORY_MAX_ENTRIES + 1
    assert r.convergence_order == "unknown"  # no consecutive tail in a thinned record


def test_max_time_is_a_library_option():
    r = hesse.minimize(lambda x: (x ** 2).sum(), [1.0, 1.0], method="gd", lr=1e-12,
                       max_iter=10 ** 9, options={"max_time": 0.5}, check_curvature=False)
    assert r.status == 2 and not r.success and r.wall_time < 20
