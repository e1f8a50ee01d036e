"""EKFACOperator against the matrices it approximates (George et al. 2018).

Ground truth is the dense empirical Fisher (``FisherOperator(kind="empirical")``) or GGN
(``GGNOperator``), implementations independent of the per-sample refit. Tested on a grid of
models (linear, MLPs with and without bias, a small CNN), losses and reductions:
* in K-FAC's eigenbasis ``U``, ``Uᵀ E U`` is diagonal and its diagonal equals that of ``Uᵀ M U``
  (the defining property), to 1e-10 (float64 rounding on matrices of norm ~1);
* ``‖E − M‖_F ≤ ‖K − M‖_F`` (George et al. 2018, Thm. 1), with a 1e-12 slack for rounding;
* ``inverse(d) @ ((E + d I) v) == v`` to 1e-10, ``logdet`` and ``trace`` against the dense matrix;
* ``refit=False`` is K-FAC itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesse

TOL = 1e-10


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _model(name, out):
    torch.manual_seed(1)
    if name == "linear":
        return nn.Sequential(nn.Linear(4, out)), (4,)
    if name == "mlp":
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out)), (4,)
    if name == "mlp_nobias":
        return nn.Sequential(nn.Linear(4, 3, bias=False), nn.Sigmoid(), nn.Linear(3, 4),
                             nn.Tanh(), nn.Linear(4, out, bias=False)), (4,)
    if name == "seq":  # sequence outputs (N, T, out): one K-FAC row per position
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, out)), (3, 4)
    return nn.Sequential(nn.Conv2d(2, 3, 2), nn.ReLU(), nn.Flatten(), nn.Linear(12, out)), (2, 3, 3)


def _problem(model_name, loss_name, reduction):
    out = 3
    model, shape = _model(model_name, out)
    gen = torch.Generator().manual_seed(2)
    X = torch.randn(14, *shape, generator=gen)
    lead = (14, 3) if model_name == "seq" else (14,)
    if loss_name == "ce" and model_name == "seq":
        raise ValueError("the sequence case uses the squared error and BCE")
    if loss_name == "ce":
        y = torch.randint(0, out, (14,), generator=gen)
        loss = nn.CrossEntropyLoss(reduction=reduction)
    elif loss_name == "mse":
        y = torch.randn(*lead, out, generator=gen)
        loss = nn.MSELoss(reduction=reduction)
    else:
        y = (torch.rand(*lead, out, generator=gen) < 0.5).double()
        loss = nn.BCEWithLogitsLoss(reduction=reduction)
    data = [(X[:9], y[:9]), (X[9:], y[9:])]  # unequal batches: the weights matter
    return model, loss, data


def _target(model, loss, data, kind):
    if kind == "empirical":
        return hesse.FisherOperator(model, loss, data, kind="empirical").to_dense()
    return hesse.GGNOperator(model, loss, data).to_dense()


def _basis(E):
    """The columns of ``U = blockdiag(Q_A ⊗ Q_G)`` in the operator's vector order."""
    n = E.shape[0]
    return E.kfac._apply_layers(torch.eye(n), lambda layer, M: (
        E._basis[layer.name].G_eigenvectors @ M @ E._basis[layer.name].A_eigenvectors.T))


GRID = [(m, lo, r, k) for m in ("linear", "mlp", "mlp_nobias", "cnn") for lo in ("ce", "mse", "bce")
        for r in ("mean", "sum") for k in ("empirical", "type2")
        if m in ("mlp", "cnn") or (r == "mean")]
GRID += [("seq", lo, r, k) for lo in ("mse", "bce") for r in ("mean", "sum")
         for k in ("empirical", "type2")]


@pytest.mark.parametrize("model_name,loss_name,reduction,kind", GRID)
def test_refit_matches_target_diagonal_and_beats_kfac(model_name, loss_name, reduction, kind):
    model, loss, data = _problem(model_name, loss_name, reduction)
    E = hesse.EKFACOperator(model, loss, data, kind=kind)
    M = _target(model, loss, data, kind)
    U = _basis(E)
    assert torch.allclose(U.T @ U, torch.eye(len(U)), atol=TOL)
    D = E.to_dense()
    in_basis = U.T @ D @ U
    scale = float(M.abs().max())
    assert torch.allclose(in_basis, torch.diag(torch.diagonal(in_basis)), atol=TOL * scale)
    assert torch.allclose(torch.diagonal(in_basis), torch.diagonal(U.T @ M @ U), atol=TOL * scale)
    K = E.kfac.to_dense()
    assert torch.linalg.norm(D - M) <= torch.linalg.norm(K - M) + 1e-12 * scale


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("damping", [1e-3, 0.5])
def test_inverse_logdet_trace(model_name, damping):
    model, loss, data = _problem(model_name, "ce", "mean")
    E = hesse.EKFACOperator(model, loss, data, kind="type2")
    D = E.to_dense()
    n = len(D)
    V = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    back = E.inverse(damping) @ (E @ V + damping * V)
    assert torch.allclose(back, V, atol=TOL, rtol=0)
    assert abs(E.logdet(damping) - float(torch.logdet(D + damping * torch.eye(n)))) < 1e-8
    assert abs(E.trace() - float(torch.trace(D))) < TOL * n
    assert torch.allclose(E.spectral_matmat(V, lambda s: s), E @ V, atol=TOL)


def test_refit_false_is_kfac_and_from_kfac():
    model, loss, data = _problem("mlp", "mse", "mean")
    K = hesse.KFACOperator(model, loss, data, kind="empirical")
    same = hesse.EKFACOperator.from_kfac(K, refit=False)
    assert torch.allclose(same.to_dense(), K.to_dense(), atol=TOL)
    assert torch.allclose(hesse.EKFACOperator.from_kfac(K).to_dense(),
                          hesse.EKFACOperator(model, loss, data).to_dense(), atol=TOL)


def test_errors():
    model, loss, data = _problem("mlp", "ce", "mean")
    with pytest.raises(ValueError, match="kind must be one of"):
        hesse.EKFACOperator(model, loss, data, kind="mc")
    E = hesse.EKFACOperator(model, loss, data)
    with pytest.raises(ValueError, match="damping must be"):
        E.inverse(-1.0)
    with pytest.raises(TypeError, match="KFACOperator"):
        hesse.EKFACOperator.from_kfac(E)
    singular = hesse.EKFACOperator(model, loss, data[:1][:1])
    X, y = data[0]
    single = hesse.EKFACOperator(model, loss, [(X[:1], y[:1])])
    with pytest.raises(ValueError, match="singular"):
        single.logdet()
    assert singular.logdet(1.0) > -float("inf")
