"""scipy.optimize.minimize's vocabulary in hesse.minimize: method spellings, options={...}, args,
"did you mean", and the unbounded stop. Where scipy solves the same problem, the answers are
compared with scipy's.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.optimize as so
import torch

import hesse
from hesse.optimize.result import MAX_ITER, UNBOUNDED


def rosen_args(x, a, b):
    return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2


def rosen_args_np(x, a, b):
    return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2


def rosen_args_grad_np(x, a, b):
    return np.array([-2 * (a - x[0]) - 4 * b * x[0] * (x[1] - x[0] ** 2), 2 * b * (x[1] - x[0] ** 2)])


def rosen_args_hess_np(x, a, b):
    return np.array([[2 - 4 * b * (x[1] - 3 * x[0] ** 2), -4 * b * x[0]], [-4 * b * x[0], 2 * b]])


def rosen(x):
    return rosen_args(x, 1.0, 100.0)


X0 = [-1.2, 1.0]


@pytest.mark.parametrize("spelling, name", [
    ("BFGS", "bfgs"), ("Newton-CG", "newton-cg"), ("trust-ncg", "trust-ncg"),
    ("trust-exact", "trust-exact"), ("TRUST-EXACT", "trust-exact"), ("newton_cg", "newton-cg"),
    (" lbfgs ", "lbfgs"), ("l-bfgs", "lbfgs"), ("newton-exact", "newton-damped"),
])
def test_scipy_and_torchmin_spellings_run_the_same_method_as_scipy(spelling, name):
    r = hesse.minimize(rosen, X0, method=spelling)
    assert r.method == name and r.success
    # both converge to the minimizer (1, 1); scipy's default gtol 1e-5 leaves |x - x*| ~ 1e-5
    scipy_method = {"lbfgs": "L-BFGS-B", "newton-damped": "Newton-CG"}.get(name, spelling.strip())
    if scipy_method.lower() in ("newton_cg",):
        scipy_method = "Newton-CG"
    ref = so.minimize(rosen_args_np, X0, args=(1.0, 100.0), method=scipy_method, jac=rosen_args_grad_np,
                      hess=None if scipy_method in ("BFGS", "L-BFGS-B") else rosen_args_hess_np)
    assert ref.success
    np.testing.assert_allclose(r.x.numpy(), ref.x, atol=1e-4)
    np.testing.assert_allclose(r.x.numpy(), [1.0, 1.0], atol=1e-5)


def test_l_bfgs_b_runs_unconstrained_lbfgs_with_a_note():
    with pytest.warns(UserWarning, match=r"no bound constraints.*'lbfgs'"):
        r = hesse.minimize(rosen, X0, method="L-BFGS-B")
    assert r.method == "lbfgs" and r.success


@pytest.mark.parametrize("method, alternative", [
    ("CG", "'lbfgs'"), ("Nelder-Mead", "'bfgs'"), ("Powell", "'bfgs'"), ("TNC", "'newton-cg'"),
    ("dogleg", "'trust-exact'"), ("trust-krylov", "'trust-ncg'"), ("SLSQP", "penalties"),
    ("COBYLA", "penalties"), ("trust-constr", "penalties"),
])
def test_scipy_methods_hesse_lacks_name_alternatives(method, alternative):
    with pytest.raises(ValueError, match=rf"method='{method}': .*not in hesse.*{alternative}"):
        hesse.minimize(rosen, X0, method=method)


@pytest.mark.parametrize("typo, meant", [("bgfs", "bfgs"), ("newton-dampd", "newton-damped"),
                                         ("trust_ncgg", "trust-ncg"), ("LBFGSB", "lbfgs")])
def test_near_miss_method_names_get_did_you_mean(typo, meant):
    with pytest.raises(ValueError, match=rf"Did you mean '{meant}'"):
        hesse.minimize(rosen, X0, method=typo)


def test_unrelated_method_name_lists_the_methods_without_a_guess():
    with pytest.raises(ValueError, match=r"method must be one of 'gd'.*got 'adam'\.$"):
        hesse.minimize(rosen, X0, method="adam")


def test_options_maxiter_stops_where_scipy_stops():
    # scipy counts iterations the same way: maxiter=5 gives nit == 5 and "maximum iterations"
    r = hesse.minimize(rosen, X0, method="BFGS", options={"maxiter": 5})
    ref = so.minimize(rosen_args_np, X0, args=(1.0, 100.0), method="BFGS", jac=rosen_args_grad_np,
                      options={"maxiter": 5})
    assert r.nit == ref.nit == 5
    assert r.status == MAX_ITER and not r.success and ref.status == 1


@pytest.mark.parametrize("how", ["options", "keyword"])
def test_maxiter_and_gtol_as_scipy_names(how):
    settings = {"maxiter": 200, "gtol": 1e-3}
    if how == "options":
        r = hesse.minimize(rosen, X0, method="bfgs", options=settings)
    else:
        r = hesse.minimize(rosen, X0, method="bfgs", **settings)
    assert r.success and r.grad_norm <= 1e-3
    # a looser gtol stops earlier than the default 1e-5 on the same path
    assert r.nit < hesse.minimize(rosen, X0, method="bfgs").nit


def test_tol_sets_gtol_like_scipy():
    r = hesse.minimize(rosen, X0, method="bfgs", tol=1e-2)
    assert r.grad_norm <= 1e-2 and r.nit < hesse.minimize(rosen, X0, method="bfgs").nit


def test_disp_prints_the_outcome_and_counts(capsys):
    r = hesse.minimize(rosen, X0, method="BFGS", options={"disp": True})
    out = capsys.readouterr().out
    assert r.message in out and f"Iterations: {r.nit}" in out and f"Function evaluations: {r.nfev}" in out


def test_return_all_false_drops_the_history_and_maxcor_is_lbfgs_memory():
    assert hesse.minimize(rosen, X0, options={"return_all": False}).history is None
    few = hesse.minimize(rosen, X0, method="L-BFGS", options={"maxcor": 1})
    many = hesse.minimize(rosen, X0, method="L-BFGS", options={"maxcor": 20})
    assert few.success and many.success and few.nit != many.nit  # the option reached the method


def test_trust_radius_options_use_scipy_names():
    small = hesse.minimize(rosen, X0, method="trust-ncg", options={"initial_trust_radius": 1e-3})
    default = hesse.minimize(rosen, X0, method="trust-ncg")
    assert small.success and small.nit > default.nit  # a tiny first radius costs iterations


def test_method_options_also_go_in_options():
    r = hesse.minimize(rosen, X0, method="newton-damped", options={"modification": "eigen", "maxiter": 100})
    assert r.success


@pytest.mark.parametrize("given, meant", [({"maxitre": 3}, "maxiter"), ({"gtl": 1e-3}, "gtol"),
                                          ({"memroy": 3}, "memory"), ({"max_iters": 3}, "max_iter")])
def test_near_miss_option_names_get_did_you_mean(given, meant):
    method = "lbfgs" if "memroy" in given else "bfgs"
    with pytest.raises(TypeError, match=rf"unknown option.*Did you mean '{meant}'"):
        hesse.minimize(rosen, X0, method=method, options=given)


@pytest.mark.parametrize("name, match", [("jac", "autograd"), ("hess", "autograd"), ("hessp", "autograd"),
                                         ("bounds", "unconstrained"), ("constraints", "penalties"),
                                         ("eps", "finite-difference"), ("norm", "2-norm")])
def test_scipy_arguments_without_counterpart_are_refused_with_the_reason(name, match):
    with pytest.raises(TypeError, match=rf"{name}= is not supported.*{match}"):
        hesse.minimize(rosen, X0, method="bfgs", **{name: None})


def test_a_setting_given_twice_is_refused():
    with pytest.raises(TypeError, match="given both"):
        hesse.minimize(rosen, X0, maxiter=3, options={"maxiter": 4})
    with pytest.raises(TypeError, match="given twice"):
        hesse.minimize(rosen, X0, options={"maxiter": 3, "max_iter": 4})


@pytest.mark.parametrize("method", ["bfgs", "newton-cg", "trust-exact"])
def test_args_are_passed_to_f_as_scipy_does(method):
    # minimizer of (a - x)^2 + b (y - x^2)^2 is (a, a^2); scipy with the same args agrees
    a, b = 2.0, 10.0
    r = hesse.minimize(rosen_args, [0.0, 0.0], method=method, args=(a, b))
    assert r.success
    # gtol = 1e-5 over the smallest Hessian eigenvalue at (2, 4), 0.117, bounds |x - x*| by ~8.5e-5
    np.testing.assert_allclose(r.x.numpy(), [a, a * a], atol=1e-4)
    ref = so.minimize(rosen_args_np, [0.0, 0.0], args=(a, b), method="BFGS", jac=rosen_args_grad_np)
    np.testing.assert_allclose(r.x.numpy(), ref.x, atol=1e-4)


def test_a_single_non_tuple_arg_is_wrapped_like_scipy():
    r = hesse.minimize(lambda x, c: ((x - c) ** 2).sum(), [0.0, 0.0], args=3.0)
    np.testing.assert_allclose(r.x.numpy(), [3.0, 3.0], atol=1e-6)


def test_args_with_batched_starts():
    rs = hesse.minimize(lambda x, c: ((x - c) ** 2).sum(), [[0.0, 0.0], [5.0, 1.0]], method="newton",
                        batched=True, args=(torch.tensor([1.0, -1.0], dtype=torch.float64),))
    for r in rs:
        np.testing.assert_allclose(r.x.numpy(), [1.0, -1.0], atol=1e-10)


def test_scipy_style_callback_gets_the_iterate():
    seen = []
    r = hesse.minimize(rosen, X0, method="BFGS", callback=lambda xk: seen.append(xk.clone()))
    assert len(seen) == r.nit and torch.equal(seen[-1], r.x)
    full = []
    hesse.minimize(rosen, X0, method="bfgs", callback=lambda x, f, g: full.append((f, g)))
    assert len(full) == r.nit and full[-1][0] == r.fun


# --- unbounded below ----------------------------------------------------------------------

UNBOUNDED_PROBLEMS = {
    "linear x + y": (lambda x: x[0] + x[1], [0.0, 0.0]),
    "concave -|x|^2": (lambda x: -(x**2).sum(), [0.1, 0.2]),
}


@pytest.mark.parametrize("problem", UNBOUNDED_PROBLEMS)
@pytest.mark.parametrize("method", ["bfgs", "lbfgs", "dfp", "newton-cg", "newton-damped"])
def test_unbounded_function_stops_early_with_status_unbounded(problem, method):
    # unguarded, bfgs on x + y spends 30,001 evaluations and suggests a second-order method
    f, x0 = UNBOUNDED_PROBLEMS[problem]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = hesse.minimize(f, x0, method=method)
    assert r.status == UNBOUNDED and not r.success
    assert r.message.startswith("unbounded") and "sign of f" in r.message
    assert r.nfev <= 200 and r.fun < -1e8


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy's own overflow warnings on x + y
def test_scipy_on_the_same_unbounded_problem_spends_thousands_of_evaluations():
    # the comparison behind the early stop: scipy's BFGS on x + y ends in "precision loss" after
    # thousands of evaluations, hesse stops after one line search
    ref = so.minimize(lambda x: x[0] + x[1], [0.0, 0.0], jac=lambda x: np.ones(2), method="BFGS")
    r = hesse.minimize(lambda x: x[0] + x[1], [0.0, 0.0], method="BFGS")
    assert not ref.success and ref.nfev > 10 * r.nfev


def test_batched_unbounded_rows_stop_and_bounded_rows_converge():
    def f(x):
        return -(x**2).sum()

    # gd with lr = 1 triples x per step on -|x|^2; the LM-shifted Newton step is huge
    for method, opts in (("gd", {"lr": 1.0}), ("newton-damped", {})):
        rs = hesse.minimize(f, [[0.1, 0.2], [0.3, -0.1]], method=method, batched=True, **opts)
        assert all(r.status == UNBOUNDED and not r.success and "sign of f" in r.message for r in rs)
        assert all(r.nit <= 25 for r in rs)
    rs = hesse.minimize(lambda x: ((x - 3) ** 2).sum(), [[0.1, 0.2]], method="newton-damped", batched=True)
    assert rs[0].success


@pytest.mark.parametrize("method", ["bfgs", "lbfgs", "newton-cg", "trust-ncg"])
def test_a_far_but_finite_minimum_is_not_called_unbounded(method):
    # minimizer 1e6 away from the start: below the runaway threshold 1e8 (1 + ||x0||)
    r = hesse.minimize(lambda x: ((x - 1e6) ** 2).sum() * 1e-12, [0.0, 0.0], method=method, gtol=1e-10)
    assert r.status != UNBOUNDED


def test_trust_region_at_max_iter_hints_at_unboundedness():
    # trust-ncg's steps are capped by max_radius, so the runaway threshold is not reached in
    # 20 iterations; the max_iter message says f may be unbounded below instead
    r = hesse.minimize(lambda x: x[0] + x[1], [0.0, 0.0], method="trust-ncg", max_iter=20)
    assert r.status == MAX_ITER and "may be unbounded below" in r.message
