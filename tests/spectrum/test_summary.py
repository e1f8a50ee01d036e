"""summarize, definiteness verdicts and per-layer spectra against dense ground truth."""

import math

import pytest
import torch

import hesse
from hesse.spectrum.summary import describe_bulk
from hesse.testing.spectra import prescribed_spectrum


def test_dense_summary_formulas():
    lam = torch.tensor([-2.0, -1e-9, 0.5, 1.0, 4.0] + [0.0] * 5, dtype=torch.float64)
    op = prescribed_spectrum(lam, seed=0)
    s = hesse.summarize(op)
    assert s.method == "dense" and s.converged
    assert abs(s.lambda_max - 4.0) < 1e-12 and abs(s.lambda_min + 2.0) < 1e-12
    assert abs(s.trace - float(lam.sum())) < 1e-12
    # nonzero spectrum: |lambda| > 1e-6 * 4 -> {2, 0.5, 1, 4}: kappa = 4 / 0.5
    assert abs(s.condition_number - 8.0) < 1e-9
    a = lam.abs()
    assert abs(s.negative_mass - float((2.0 + 1e-9) / a.sum())) < 1e-9
    p = a[a > 0] / a.sum()
    assert abs(s.effective_rank - math.exp(-float((p * p.log()).sum()))) < 1e-6
    assert s.definiteness == "indefinite" and s.fraction_negative == 0.1
    assert "condition_number" in repr(s)


@pytest.mark.parametrize("lmin, lmax, verdict", [
    (1.0, 2.0, "positive definite"), (0.0, 2.0, "positive semidefinite"),
    (-2.0, -1.0, "negative definite"), (-2.0, 0.0, "negative semidefinite"),
    (-1.0, 1.0, "indefinite"), (0.0, 0.0, "zero"),
])
def test_definiteness_verdict(lmin, lmax, verdict):
    assert hesse.spectrum.definiteness_verdict(lmin, lmax, 1e-8) == verdict


def test_iterative_summary_close_to_exact(lowrank_op):
    lam = lowrank_op.eigenvalues
    # a max_memory below the dense matrix forces the iterative path
    s = hesse.summarize(lowrank_op, dense_threshold=0, trace_matvecs=60, seed=0, max_memory=10**6)
    assert s.method == "iterative" and s.converged
    assert abs(s.lambda_max - float(lam.max())) <= 1e-8 * float(lam.max())
    assert abs(s.lambda_min - float(lam.min())) <= 1e-8 * float(lam.max())
    assert abs(s.trace - float(lam.sum())) <= 3 * s.trace_stderr
    assert s.definiteness == "positive semidefinite" or s.definiteness == "positive definite"
    # what SLQ's nodes cannot resolve is not stated
    assert math.isnan(s.effective_rank) and math.isnan(s.condition_number)


@pytest.mark.parametrize("fixture", ["indefinite_op", "lowrank_op"])
def test_summary_is_dense_when_the_matrix_fits(fixture, request):
    """n = 1,000 and 2,000 (> 500) fit the 4 GiB budget: exact numbers, not SLQ's (a 3,466-parameter
    MLP reported 4.5 % negative eigenvalues from SLQ against 28 % in its dense spectrum)."""
    op = request.getfixturevalue(fixture)
    lam = torch.linalg.eigvalsh(op.to_dense().double())
    s = hesse.summarize(op)
    assert s.method == "dense" and s.resolution == 0.0
    t = s.tolerance
    assert s.fraction_negative == float((lam < -t).double().mean())
    a = lam.abs()
    p = a / a.sum()
    assert s.effective_rank == pytest.approx(math.exp(-float((p[p > 0] * p[p > 0].log()).sum())), rel=1e-10)
    assert s.condition_number == pytest.approx(float(a.max() / a[a > s.zero_threshold].min()), rel=1e-10)


def test_iterative_summary_counts_only_below_its_resolution(indefinite_op):
    lam = torch.linalg.eigvalsh(indefinite_op.to_dense().double())
    s = hesse.summarize(indefinite_op, max_memory=10**6, num_probes=16)
    assert s.method == "iterative" and s.resolution > 0
    assert s.negative_threshold == pytest.approx(3 * s.resolution)
    assert "SLQ resolution sigma" in repr(s)
    exact = float((lam < -s.negative_threshold).double().mean())
    # 16 probes: a quadrature mass's standard error is about sqrt(f (1 - f) / (16 n)) per node
    # summed over nodes; 0.03 absolute is several of them for the 2.5 % negative tail
    assert abs(s.fraction_negative - exact) <= 0.03, (s.fraction_negative, exact)


def test_per_layer_matches_dense_blocks(untrained_problem):
    prob = untrained_problem
    model, loss_fn, data, H = prob["model"], prob["loss_fn"], prob["data"], prob["H"]
    groups = hesse.spectrum.layer_groups(model)
    assert list(groups) == ["0 (Linear)", "2 (Linear)", "4 (Linear)"]
    res = hesse.per_layer(lambda names: hesse.HessianOperator(model, loss_fn, data, params=names), groups,
                          dense_threshold=1000)
    # block offsets follow named_parameters order
    sizes = [sum(p.numel() for n, p in model.named_parameters() if n in names) for names in groups.values()]
    start = 0
    for row, size in zip(res.rows, sizes):
        block = H[start:start + size, start:start + size]
        ev = torch.linalg.eigvalsh(block)
        assert row.n == size
        # first block (1,560 > 1,000) is iterative: eigenvalues to 1e-8 of ||block||, trace to 3 stderr
        tol = 1e-8 * float(ev.abs().max())
        assert abs(row.lambda_max - float(ev[-1])) <= tol and abs(row.lambda_min - float(ev[0])) <= tol
        assert abs(row.trace - float(ev.sum())) <= max(3 * row.trace_stderr, 1e-10)
        start += size
    assert "lambda_max" in res.table and len(res.as_dicts()) == 3


@pytest.mark.parametrize("make, labels", [
    # a Sequential's paths are bare indices: the class says which layer a row is
    (lambda: torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1)),
     {"0 (Linear)": ["0.weight", "0.bias"], "2 (Linear)": ["2.weight", "2.bias"]}),
    # nested named modules: the full path, not the last index
    (lambda: torch.nn.ModuleDict({"layers": torch.nn.Sequential(torch.nn.Linear(2, 2)),
                                  "norm": torch.nn.LayerNorm(2)}),
     {"layers.0 (Linear)": ["layers.0.weight", "layers.0.bias"],
      "norm (LayerNorm)": ["norm.weight", "norm.bias"]}),
])
def test_layer_groups_labels_name_the_module(make, labels):
    assert hesse.spectrum.layer_groups(make()) == labels


def test_layer_groups_root_parameter_and_frozen():
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))
            self.lin = torch.nn.Linear(2, 2)
            self.lin.bias.requires_grad_(False)

    assert hesse.spectrum.layer_groups(Scaled()) == {"scale": ["scale"], "lin (Linear)": ["lin.weight"]}


def test_per_layer_bad_input():
    with pytest.raises(TypeError, match="op_factory"):
        hesse.per_layer(3, {"a": ["x"]})
    with pytest.raises(ValueError, match="groups"):
        hesse.per_layer(lambda n: None, {})
    with pytest.raises(TypeError, match="nn.Module"):
        hesse.spectrum.layer_groups("model")


def test_prescribed_spectrum_ground_truth():
    op = prescribed_spectrum([3.0, -1.0, 2.0], seed=5)
    assert torch.allclose(torch.linalg.eigvalsh(op.to_dense()), torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="finite"):
        prescribed_spectrum([1.0, float("nan")])


@pytest.mark.parametrize("edge, lambda_max, near_zero", [
    (0.0997, 2.11, True),    # 4.7% of lambda_max: near zero
    (1.38, 2.11, False),     # 65%: a wide bulk, never "near zero"
    (0.2, 2.0, False),       # 10%
    (0.0, 0.0, True),
])
def test_describe_bulk_follows_the_numbers(edge, lambda_max, near_zero):
    text = describe_bulk(edge, lambda_max)
    assert ("near zero" in text) is near_zero
    assert f"{edge:.3g}" in text
    with pytest.raises(ValueError, match="finite"):
        describe_bulk(float("nan"), 1.0)
