"""The geometry records are hesse.Result records: fields by name and by key, plain-data export."""

import json
import math

import pytest
import torch

import hesse
from hesse._result import Result
from hesse.geometry import DefinitenessResult, HigherOrderResult, TaylorErrorReport
from hesse.geometry.critical_points import CriticalPointList


def test_critical_point_is_a_result_with_json_ready_dict():
    cp = hesse.classify(lambda p: p[0] ** 2 - p[1] ** 2, [0.0, 0.0])
    assert isinstance(cp, Result)
    assert cp["kind"] == cp.kind == "saddle" and "reason" in cp
    d = cp.as_dict()
    assert "eigenvectors" not in d  # the Hessian is kept, its eigenvectors are not exported
    json.dumps(d)  # strict JSON: no tensors, no inf
    singular = hesse.classify(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert math.isinf(singular.condition_number) and singular.as_dict()["condition_number"] == "inf"
    with pytest.raises(KeyError, match="fields are"):
        cp["kinds"]


@pytest.mark.parametrize("method", ["eigenvalues", "cholesky", "ldl", "sylvester", "discriminant"])
def test_definiteness_result_fields(method):
    r = hesse.definiteness([[2.0, 1.0], [1.0, 2.0]], method=method)
    assert isinstance(r, DefinitenessResult) and isinstance(r, Result)
    assert r["verdict"] == "positive definite"
    assert repr(r).startswith("DefinitenessResult(\n") and "verdict: 'positive definite'" in repr(r)
    assert list(r.as_dict()) == ["verdict", "method", "tol", "inertia", "details"]


def test_higher_order_result_and_taylor_report_are_results():
    f = lambda p: p[0] ** 3 + p[1] ** 2  # noqa: E731  monkey-saddle-like: order 3 along x
    x = torch.zeros(2, dtype=torch.float64)
    lam, Q = torch.linalg.eigh(hesse.hessian(f, x))
    res = hesse.geometry.higher_order_analysis(f, x, lam, Q, 1e-8)
    assert isinstance(res, HigherOrderResult) and isinstance(res, Result)
    assert (res.kind, res.order, res["num_directions"]) == ("degenerate saddle", 3, 1)
    rep = hesse.taylor(f, [0.3, 0.2]).error_slope()
    assert isinstance(rep, TaylorErrorReport) and isinstance(rep, Result)
    assert len(rep.as_dict()["radii"]) == 6


def test_critical_point_list_names_iterations_nit():
    pts = hesse.critical_points(lambda p: (p[0] - 1) ** 2 + p[1] ** 2, [(-2, 2), (-2, 2)], num_starts=8,
                                progress=False, symbolic=False)
    assert isinstance(pts, CriticalPointList) and pts.nit >= 1
    assert [p.kind for p in pts] == ["minimum"]
