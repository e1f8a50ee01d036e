"""The report's derived numbers (sharpness sentence, bulk edge) on inputs with known answers."""

import pytest
import torch

from hesse.diagnostics.report import bulk_edge, describe_sharpness, quadratic_example
from hesse.spectrum import SpectralDensity


def _recs(ratios, limit=2.0):
    return [{"step": 10 * i, "lambda_max": q * limit, "stability_limit": limit, "sharpness_ratio": q,
             "status": "unstable" if q > 1.25 else "edge_of_stability" if q >= 0.95 else "stable"}
            for i, q in enumerate(ratios)]


def test_describe_sharpness_reached_and_stayed():
    out = describe_sharpness(_recs([0.5, 0.7, 0.96, 1.1, 1.05, 1.2]), (0.05, 0.25))
    assert out["reached_step"] == 20 and out["stayed_fraction"] == 1.0
    assert "at step 20 and stayed there" in out["sentence"]
    assert out["max_ratio"] == pytest.approx(1.2)


def test_describe_sharpness_left_the_edge_and_never_reached():
    out = describe_sharpness(_recs([0.5, 1.0, 0.6, 0.5, 0.4]), (0.05, 0.25))
    assert out["reached_step"] == 10 and out["stayed_fraction"] == pytest.approx(0.25)
    assert "did not stay there" in out["sentence"]
    never = describe_sharpness(_recs([0.2, 0.3, 0.4]), (0.05, 0.25))
    assert never["reached_step"] is None and "did not reach 2/lr" in never["sentence"]


def test_bulk_edge_is_weighted_quantile():
    # 98% of the mass at |lambda| <= 0.1 and 2% at 5: the 99th percentile is the outlier node 5
    nodes = torch.tensor([[0.05, -0.1, 5.0]], dtype=torch.float64)
    weights = torch.tensor([[0.5, 0.48, 0.02]], dtype=torch.float64)
    d = SpectralDensity(torch.zeros(2), torch.zeros(2), torch.zeros(2), nodes, weights, 0.1, 0, 1, 3)
    assert bulk_edge(d, 0.99) == 5.0
    assert bulk_edge(d, 0.9) == pytest.approx(0.1)


def test_quadratic_example_numbers():
    ex, f = quadratic_example()
    # f = 3x^2 + 2xy + 2y^2 - 4x - 6y, H = [[6, 2], [2, 4]]: p* = H^{-1} (4, 6) = (0.2, 1.4);
    # eigenvalues 5 -+ sqrt(5); kappa = (5+sqrt5)/(5-sqrt5)
    assert ex["critical_point"] == pytest.approx([0.2, 1.4], abs=1e-12)
    assert ex["eigenvalues"] == pytest.approx([5 - 5**0.5, 5 + 5**0.5], rel=1e-12)
    assert ex["condition_number"] == pytest.approx((5 + 5**0.5) / (5 - 5**0.5), rel=1e-12)
    assert "minimum" in ex["classification"].lower()
    assert ex["taylor_check"]["exact"] == pytest.approx(ex["taylor_check"]["model"], abs=1e-12)
    assert ex["taylor_check"]["exact"] == pytest.approx(-0.82, abs=1e-12)


def test_summary_names_the_worked_example_by_its_function():
    from hesse.diagnostics.report import summary_markdown

    ex, _ = quadratic_example()
    summary = {"lambda_min": 0.1, "trace": 1.0, "negative_mass": 0.0, "fraction_negative": 0.0,
               "effective_rank": 1.0, "definiteness": "positive definite"}
    final = {"num_parameters": 3, "loss": 0.5, "gradient_norm": 0.1, "top_eigenvalues": [1.0],
             "top_converged": True, "top_num_matvecs": 3, "bulk_edge": 0.1, "num_outliers": 1,
             "outliers_at_least": True, "summary": summary}
    md = summary_markdown({"final": final, "example": ex, "files": []}, "t")
    assert "## Worked example: f(x, y) = 3x^2 + 2xy + 2y^2 - 4x - 6y" in md
    assert "seed" not in md.lower()
