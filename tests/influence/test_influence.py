"""Influence scores against leave-one-out retraining and dense algebra, float64.

* L2-regularised logistic regression (convex; the Hessian exact): the predicted change of a test
  loss when one training example is removed, ``−s(q, i)/N``, against the actual change after
  retraining to convergence (Newton's method to 1e-12) for 100 removed examples; Pearson
  correlation >= 0.99 (Koh & Liang 2017, Fig. 2).
* a tiny MLP: ``hessian``/``direct`` scores equal ``−g_qᵀ (H + λI)⁻¹ g_i`` with ``H`` from
  ``torch.autograd.functional.hessian`` and per-sample gradients from ``torch.autograd.grad``
  one sample at a time, to 1e-8; ``cg`` and ``lissa`` agree with ``direct``; ``kfac``/``ekfac``
  scores equal those of their dense matrices.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hesse
from hesse.influence import Influence

TOL = 1e-8


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _train_logistic(X, y, lam, w0=None):
    """Minimize ``mean BCE(X w + b) + λ/2 ‖(w, b)‖²`` by Newton's method."""
    Xb = torch.cat([X, torch.ones(len(X), 1)], 1)
    theta = torch.zeros(Xb.shape[1]) if w0 is None else w0.clone()
    for _ in range(50):
        p = torch.sigmoid(Xb @ theta)
        g = Xb.T @ (p - y) / len(X) + lam * theta
        if float(g.norm()) < 1e-12:
            break
        H = (Xb * (p * (1 - p))[:, None]).T @ Xb / len(X) + lam * torch.eye(len(theta))
        theta = theta - torch.linalg.solve(H, g)
    return theta


def test_leave_one_out_logistic_regression():
    gen = torch.Generator().manual_seed(0)
    N, d, lam = 200, 5, 1e-2
    X = torch.randn(N, d, generator=gen)
    y = (torch.rand(N, generator=gen) < torch.sigmoid(X @ torch.randn(d, generator=gen))).double()
    xq, yq = torch.randn(1, d, generator=gen), torch.tensor([1.0])
    theta = _train_logistic(X, y, lam)
    model = nn.Linear(d, 1)
    with torch.no_grad():
        model.weight.copy_(theta[:d][None])
        model.bias.copy_(theta[d:])
    loss = nn.BCEWithLogitsLoss()
    inf = Influence(model, loss, [(X[:120], y[:120, None]), (X[120:], y[120:, None])],
                    curvature="hessian", solver="direct", damping=lam)
    predicted = -inf.scores((xq, yq[:, None]))[0] / N

    def query_loss(t):
        return float(nn.functional.binary_cross_entropy_with_logits(xq @ t[:d] + t[d], yq))

    base = query_loss(theta)
    actual = []
    for i in range(100):
        keep = torch.arange(N) != i
        actual.append(query_loss(_train_logistic(X[keep], y[keep], lam, theta)) - base)
    actual = torch.tensor(actual)
    r = torch.corrcoef(torch.stack([predicted[:100], actual]))[0, 1]
    assert r >= 0.99, float(r)


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(12, 3, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    Xq, yq = torch.randn(4, 3, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    return model, nn.CrossEntropyLoss(), [(X[:7], y[:7]), (X[7:], y[7:])], X, y, Xq, yq


def _dense_scores(model, X, y, Xq, yq, lam, H=None):
    params = list(model.parameters())
    theta = torch.cat([p.detach().reshape(-1) for p in params])
    names = [n for n, _ in model.named_parameters()]

    def unflat(t):
        out, i = {}, 0
        for n, p in zip(names, params):
            out[n] = t[i:i + p.numel()].reshape(p.shape)
            i += p.numel()
        return out

    def mean_loss(t):
        return nn.functional.cross_entropy(torch.func.functional_call(model, unflat(t), (X,)), y)

    if H is None:
        H = torch.autograd.functional.hessian(mean_loss, theta)

    def grads(A, b):
        rows = []
        for a, c in zip(A, b):
            t = theta.clone().requires_grad_(True)
            out = torch.func.functional_call(model, unflat(t), (a[None],))
            rows.append(torch.autograd.grad(nn.functional.cross_entropy(out, c[None]), t)[0])
        return torch.stack(rows)

    Gq, Gt = grads(Xq, yq), grads(X, y)
    A = H + lam * torch.eye(len(theta))
    return -Gq @ torch.linalg.solve(A, Gt.T), Gt, A


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_hessian_direct_equals_dense(lam):
    model, loss, data, X, y, Xq, yq = _mlp()
    S, Gt, A = _dense_scores(model, X, y, Xq, yq, lam)
    inf = Influence(model, loss, data, curvature="hessian", solver="direct", damping=lam)
    assert torch.allclose(inf.scores((Xq, yq)), S, atol=TOL, rtol=0)
    self_inf = torch.einsum("in,ni->i", Gt, torch.linalg.solve(A, Gt.T))
    assert torch.allclose(inf.self_influence(), self_inf, atol=TOL, rtol=0)
    values, index = inf.top_k([(Xq[:2], yq[:2]), (Xq[2:], yq[2:])], 3)
    assert torch.equal(index, torch.topk(S, 3, dim=1, largest=False).indices)
    _, harmful = inf.top_k((Xq, yq), 2, kind="harmful")
    assert torch.equal(harmful, torch.topk(S, 2, dim=1).indices)


def test_cg_and_lissa_agree_with_direct():
    model, loss, data, X, y, Xq, yq = _mlp()
    lam = 1.0
    direct = Influence(model, loss, data, curvature="ggn", solver="direct", damping=lam)
    S = direct.scores((Xq, yq))
    cg = Influence(model, loss, data, curvature="ggn", solver="cg", damping=lam)
    assert torch.allclose(cg.scores((Xq, yq)), S, atol=1e-8, rtol=0)
    top = float(torch.linalg.eigvalsh(direct.operator.to_dense())[-1]) + lam
    lissa = Influence(model, loss, data, curvature="ggn", solver="lissa", damping=lam,
                      lissa_scale=1.1 * top, lissa_depth=400)
    # the series contracts by 1 − λ/scale per step at worst: (1 − 1/1.1/top)^400 is tiny
    assert torch.allclose(lissa.scores((Xq, yq)), S, atol=1e-8, rtol=0)


@pytest.mark.parametrize("curvature", ["kfac", "ekfac"])
def test_kronecker_curvatures_equal_their_dense_matrices(curvature):
    model, loss, data, X, y, Xq, yq = _mlp()
    lam = 0.5
    op = (hesse.KFACOperator(model, loss, data) if curvature == "kfac"
          else hesse.EKFACOperator(model, loss, data, kind="type2"))
    S, _, _ = _dense_scores(model, X, y, Xq, yq, lam, H=op.to_dense())
    inf = Influence(model, loss, data, curvature=curvature, damping=lam)
    assert torch.allclose(inf.scores((Xq, yq)), S, atol=TOL, rtol=0)


def test_query_loss_measures_a_logit():
    model, loss, data, X, y, Xq, yq = _mlp()
    inf = Influence(model, loss, data, curvature="ggn", damping=1.0,
                    query_loss=lambda z, t: z[:, 0])
    params = dict(model.named_parameters())
    grads = []
    for a in Xq:
        model.zero_grad()
        model(a[None])[0, 0].backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in params.values()]))
    Q = torch.linalg.solve(inf.operator.to_dense() + torch.eye(inf.n), torch.stack(grads).T)
    assert torch.allclose(inf.query_vectors((Xq, yq)), Q, atol=TOL, rtol=0)
    assert math.isfinite(float(inf.scores((Xq, yq)).sum()))


def test_dtype_of_gradients_and_scores():
    """float32 per-sample gradients of a float64 model: the scores to float32 accuracy (relative
    1e-5: a few roundings of size 6e-8 in sums of ~30 terms)."""
    model, loss, data, X, y, Xq, yq = _mlp()
    exact = Influence(model, loss, data, curvature="ggn", damping=1.0).scores((Xq, yq))
    low = Influence(model, loss, data, curvature="ggn", damping=1.0, dtype=torch.float32,
                    progress=True)
    S = low.scores((Xq, yq))
    assert S.dtype == torch.float32
    assert torch.allclose(S.double(), exact, atol=1e-5 * float(exact.abs().max()), rtol=0)
    assert low.self_influence().dtype == torch.float32
    with pytest.raises(TypeError, match="dtype"):
        Influence(model, loss, data, curvature="ggn", damping=1.0, dtype=torch.int64)


def test_errors():
    model, loss, data, *_ = _mlp()
    with pytest.raises(ValueError, match="curvature must be"):
        Influence(model, loss, data, curvature="fisher")
    with pytest.raises(ValueError, match="solver='direct'"):
        Influence(model, loss, data, curvature="kfac", solver="cg", damping=1.0)
    with pytest.raises(ValueError, match="lissa_scale"):
        Influence(model, loss, data, curvature="ggn", solver="lissa", damping=1.0)
    with pytest.raises(ValueError, match="singular"):
        Influence(model, loss, data, curvature="ggn", solver="direct", damping=0.0)
    inf = Influence(model, loss, data, curvature="ggn", damping=1.0)
    with pytest.raises(ValueError, match="k must be"):
        inf.top_k(data[0], 0)
