"""Laplace against closed forms and dense algebra, float64.

* Bayesian linear regression ``y = X w + ε``, ``ε ~ N(0, σ²)``, ``w ~ N(0, λ⁻¹ I)``: at the exact
  MAP the Laplace evidence is the exact evidence ``log N(y | 0, σ² I + X Xᵀ/λ)`` and the GLM
  predictive is ``N(x*ᵀ w_MAP, x*ᵀ Σ x* + σ²)`` (Bishop 2006, §3.3 and §3.5), to 1e-8
  relative (float64 rounding of sums of ~100 terms). For one output without bias K-FAC and
  EK-FAC are the GGN ``XᵀX/σ²`` exactly (``G`` is a scalar); the diagonal is exact for an
  orthogonal design only, and a correlated design shows it is not.
* logistic regression: the probit and GLM predictives against the dense Hessian of the
  negative log joint (``torch.autograd.functional.hessian``) and the Jacobian of the logits.
* a tiny MLP: "full" evidence and predictive against a dense GGN assembled from
  ``torch.func.jacrev`` of the outputs and the loss Hessian; "kfac", "ekfac", "diag" against
  their structures assembled densely from the operators.
* marginal-likelihood tuning recovers the prior precision the weights were drawn with.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hesse
from hesse.laplace import Laplace

TOL = 1e-8


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _blr(N=60, d=5, sigma=0.3, lam=2.0, seed=0, reduction="mean", diagonal_design=False):
    gen = torch.Generator().manual_seed(seed)
    if diagonal_design:  # orthogonal columns: XᵀX diagonal, so every structure is exact
        Q, _ = torch.linalg.qr(torch.randn(N, d, generator=gen))
        X = Q * torch.linspace(1.0, 3.0, d) * math.sqrt(N)
    else:
        X = torch.randn(N, d, generator=gen)
    w = torch.randn(d, generator=gen) / math.sqrt(lam)
    y = X @ w + sigma * torch.randn(N, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    A = X.T @ X / sigma**2 + lam * torch.eye(d)
    w_map = torch.linalg.solve(A, X.T @ y / sigma**2)
    with torch.no_grad():
        model.weight.copy_(w_map[None])
    data = [(X[:25], y[:25, None]), (X[25:], y[25:, None])]
    evidence = torch.distributions.MultivariateNormal(
        torch.zeros(N), sigma**2 * torch.eye(N) + X @ X.T / lam).log_prob(y)
    return model, nn.MSELoss(reduction=reduction), data, X, A, w_map, float(evidence)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("curvature,diagonal_design",
                         [("full", False), ("full", True), ("diag", True), ("kfac", False),
                          ("ekfac", False)])
def test_bayesian_linear_regression_closed_form(reduction, curvature, diagonal_design):
    sigma, lam = 0.3, 2.0
    model, loss, data, X, A, w_map, evidence = _blr(sigma=sigma, lam=lam, reduction=reduction,
                                                    diagonal_design=diagonal_design)
    la = Laplace(model, loss, data, curvature=curvature, prior_precision=lam,
                 sigma_noise=sigma).fit()
    assert abs(la.log_marginal_likelihood() - evidence) < TOL * abs(evidence)
    xs = torch.randn(7, X.shape[1], generator=torch.Generator().manual_seed(5))
    mean, var = la.predictive(xs, method="glm")
    Sigma = torch.linalg.inv(A)
    assert torch.allclose(mean[:, 0], xs @ w_map, atol=TOL, rtol=0)
    assert torch.allclose(var[:, 0], torch.einsum("md,de,me->m", xs, Sigma, xs) + sigma**2,
                          atol=TOL, rtol=0)


def test_kfac_on_correlated_design_is_not_exact():
    # the grid above would pass for any structure if the design made them all equal
    model, loss, data, X, A, w_map, evidence = _blr()
    la = Laplace(model, loss, data, curvature="diag", prior_precision=2.0, sigma_noise=0.3).fit()
    assert abs(la.log_marginal_likelihood() - evidence) > 1e-3


def _logistic(N=40, d=3, C=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=gen)
    y = torch.randint(0, C, (N,), generator=gen)
    torch.manual_seed(seed)
    model = nn.Linear(d, C)
    return model, X, y


def _dense_precision(model, loss_fn_sum, X, y, lam):
    """Hessian of the negative log joint ``Σ_i NLL_i + λ/2 ‖θ‖²`` at the model's parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def unflat(t):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            out[n] = t[i:i + k].reshape(s)
            i += k
        return out

    def f(t, x):
        return torch.func.functional_call(model, unflat(t), (x,))

    def joint(t):
        return loss_fn_sum(f(t, X), y) + 0.5 * lam * (t @ t)

    H = torch.autograd.functional.hessian(joint, theta)
    return H, theta, f


@pytest.mark.parametrize("batches", [1, 3])
def test_logistic_regression_predictive_vs_dense(batches):
    lam = 0.7
    model, X, y = _logistic()
    data = list(zip(X.chunk(batches), y.chunk(batches)))
    la = Laplace(model, nn.CrossEntropyLoss(), data, curvature="full", prior_precision=lam).fit()
    H, theta, f = _dense_precision(model, nn.CrossEntropyLoss(reduction="sum"), X, y, lam)
    Sigma = torch.linalg.inv(H)
    xs = torch.randn(5, X.shape[1], generator=torch.Generator().manual_seed(3))
    J = torch.autograd.functional.jacobian(lambda t: f(t, xs), theta)  # (m, C, n)
    cov = torch.einsum("mcn,nk,mdk->mcd", J, Sigma, J)
    logits = f(theta, xs)
    probit = torch.softmax(logits / torch.sqrt(1 + math.pi / 8 * torch.diagonal(cov, 0, 1, 2)), -1)
    assert torch.allclose(la.predictive(xs, method="probit"), probit, atol=TOL, rtol=0)
    mean, fcov = la.function_posterior(xs)
    assert torch.allclose(fcov, cov, atol=TOL, rtol=0)
    # GLM by sampling: the same draws pushed through the dense root give the same probabilities
    gen = torch.Generator().manual_seed(11)
    glm = la.predictive(xs, method="glm", num_samples=50, generator=gen)
    w, Q = torch.linalg.eigh(cov)
    eps = torch.randn(50, *logits.shape, generator=torch.Generator().manual_seed(11))
    draws = logits + torch.einsum("mcd,smd->smc", Q * w.clamp(min=0).sqrt().unsqueeze(1), eps)
    assert torch.allclose(glm, torch.softmax(draws, -1).mean(0), atol=TOL, rtol=0)
    # evidence: the GGN of a linear model is its Hessian
    logdet = torch.logdet(H)
    expected = (-float(nn.CrossEntropyLoss(reduction="sum")(logits_all := f(theta, X), y))
                - 0.5 * (float(logdet) - len(theta) * math.log(lam)) - 0.5 * lam * float(theta @ theta))
    del logits_all
    assert abs(la.log_marginal_likelihood() - expected) < TOL * abs(expected)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_binary_logistic_regression_vs_dense(reduction):
    """Bernoulli likelihood (``BCEWithLogitsLoss``) on two outputs: the evidence and the probit
    predictive ``σ(f / √(1 + π/8 var))`` against the dense Hessian of the negative log joint."""
    lam = 0.7
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(30, 3, generator=gen)
    y = (torch.rand(30, 2, generator=gen) < 0.5).double()
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    la = Laplace(model, nn.BCEWithLogitsLoss(reduction=reduction), [(X[:20], y[:20]), (X[20:], y[20:])],
                 curvature="full", prior_precision=lam).fit()
    assert la.likelihood == "binary"
    nll_sum = nn.BCEWithLogitsLoss(reduction="sum")
    H, theta, f = _dense_precision(model, nll_sum, X, y, lam)
    xs = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    J = torch.autograd.functional.jacobian(lambda t: f(t, xs), theta)
    var = torch.einsum("mcn,nk,mck->mc", J, torch.linalg.inv(H), J)
    expected = torch.sigmoid(f(theta, xs) / torch.sqrt(1 + math.pi / 8 * var))
    assert torch.allclose(la.predictive(xs, method="probit"), expected, atol=TOL, rtol=0)
    evidence = (-float(nll_sum(f(theta, X), y)) - 0.5 * (float(torch.logdet(H)) - len(theta)
                * math.log(lam)) - 0.5 * lam * float(theta @ theta))
    assert abs(la.log_marginal_likelihood() - evidence) < TOL * abs(evidence)


def _mlp_problem(loss_name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(16, 3, generator=gen)
    if loss_name == "ce":
        y, loss = torch.randint(0, 2, (16,), generator=gen), nn.CrossEntropyLoss()
    else:
        y, loss = torch.randn(16, 2, generator=gen), nn.MSELoss()
    return model, loss, [(X[:10], y[:10]), (X[10:], y[10:])], X, y


def _dense_ggn_sum_nll(model, loss_name, X, y, sigma):
    """``Σ_i J_iᵀ Λ_i J_i`` with the NLL's output Hessians ``Λ_i`` in closed form."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    J = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (X,)))(params)
    J = torch.cat([j.reshape(X.shape[0], 2, -1) for j in J.values()], dim=2)  # (N, C, n)
    z = model(X).detach()
    if loss_name == "ce":
        p = torch.softmax(z, -1)
        Lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    else:
        Lam = torch.eye(2).expand(X.shape[0], 2, 2) / sigma**2
    return torch.einsum("icn,icd,idm->nm", J, Lam, J)


@pytest.mark.parametrize("loss_name", ["ce", "mse"])
def test_full_mlp_vs_dense(loss_name):
    lam, sigma = 0.5, 0.8
    model, loss, data, X, y = _mlp_problem(loss_name)
    la = Laplace(model, loss, data, curvature="full", prior_precision=lam, sigma_noise=sigma).fit()
    H = _dense_ggn_sum_nll(model, loss_name, X, y, sigma)
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    P = H + lam * torch.eye(len(theta))
    z = model(X).detach()
    if loss_name == "ce":
        loglik = -float(nn.CrossEntropyLoss(reduction="sum")(z, y))
    else:
        loglik = float(torch.distributions.Normal(z, sigma).log_prob(y).sum())
    expected = loglik - 0.5 * (float(torch.logdet(P)) - len(theta) * math.log(lam)) \
        - 0.5 * lam * float(theta @ theta)
    assert abs(la.log_marginal_likelihood() - expected) < TOL * abs(expected)
    V = torch.randn(len(theta), 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(la.posterior_covariance(V), torch.linalg.solve(P, V), atol=TOL, rtol=0)


@pytest.mark.parametrize("curvature", ["kfac", "ekfac", "diag"])
@pytest.mark.parametrize("subset", ["all", "last_layer"])
def test_structures_vs_their_dense_matrices(curvature, subset):
    lam = 0.5
    model, loss, data, X, y = _mlp_problem("ce")
    params = None if subset == "all" else ["2.weight", "2.bias"]
    if curvature == "kfac":
        G = hesse.KFACOperator(model, loss, data, params).to_dense()
    elif curvature == "ekfac":
        G = hesse.EKFACOperator(model, loss, data, params, kind="type2").to_dense()
    else:
        G = torch.diag(hesse.GGNOperator(model, loss, data, params).to_dense().diagonal())
    la = Laplace(model, loss, data, curvature=curvature, subset=subset, prior_precision=lam).fit()
    names = [n for n, _ in model.named_parameters() if params is None or n in params]
    assert la.param_names == names
    theta = torch.cat([dict(model.named_parameters())[n].detach().reshape(-1) for n in names])
    P = len(X) * G + lam * torch.eye(len(theta))  # CE with mean: the sum's GGN is N times
    loglik = -float(nn.CrossEntropyLoss(reduction="sum")(model(X).detach(), y))
    expected = loglik - 0.5 * (float(torch.logdet(P)) - len(theta) * math.log(lam)) \
        - 0.5 * lam * float(theta @ theta)
    assert abs(la.log_marginal_likelihood() - expected) < TOL * abs(expected)
    # samples are θ* + P^{-1/2} ε with the symmetric (unique PSD) root of the dense P
    eps_gen = torch.Generator().manual_seed(4)
    draws = la.sample(3, generator=eps_gen) - theta
    eps = torch.randn(len(theta), 3, generator=torch.Generator().manual_seed(4))
    w, Q = torch.linalg.eigh(P)
    assert torch.allclose(draws.T, Q @ ((Q.T @ eps) / w.sqrt()[:, None]), atol=TOL, rtol=0)


@pytest.mark.parametrize("rank", [5, 26])
def test_lowrank_vs_truncated_dense_ggn(rank):
    """``lowrank`` is the GGN truncated to its top eigenpairs (from a dense ``eigh`` here);
    rank = n is ``full``."""
    lam = 0.5
    model, loss, data, X, y = _mlp_problem("ce")
    G = hesse.GGNOperator(model, loss, data).to_dense()
    w, Q = torch.linalg.eigh(G)
    top = Q[:, -rank:]
    Gk = top @ torch.diag(w[-rank:].clamp(min=0)) @ top.T
    la = Laplace(model, loss, data, curvature="lowrank", rank=rank, prior_precision=lam).fit()
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    P = len(X) * Gk + lam * torch.eye(len(theta))
    loglik = -float(nn.CrossEntropyLoss(reduction="sum")(model(X).detach(), y))
    expected = loglik - 0.5 * (float(torch.logdet(P)) - len(theta) * math.log(lam)) \
        - 0.5 * lam * float(theta @ theta)
    # Lanczos to 1e-10 relative residual: eigenvalues to ~1e-10 relative, the logdet likewise
    assert abs(la.log_marginal_likelihood() - expected) < 1e-7 * abs(expected)
    V = torch.randn(len(theta), 2, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(la.posterior_covariance(V), torch.linalg.solve(P, V), atol=1e-7, rtol=0)
    if rank == len(theta):
        full = Laplace(model, loss, data, curvature="full", prior_precision=lam).fit()
        assert abs(la.log_marginal_likelihood() - full.log_marginal_likelihood()) < 1e-7


def test_last_layer_is_full_on_last_layer_parameters():
    model, loss, data, X, y = _mlp_problem("ce")
    a = Laplace(model, loss, data, curvature="full", subset="last_layer").fit()
    b = Laplace(model, loss, data, curvature="full", subset=["2.weight", "2.bias"]).fit()
    assert a.param_names == ["2.weight", "2.bias"]
    assert abs(a.log_marginal_likelihood() - b.log_marginal_likelihood()) < 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_marglik_recovers_prior_precision(seed):
    """Weights ``w ~ N(0, λ₀⁻¹ I)`` with ``d = 200``, ``N = 2000``, ``σ = 0.1``: the evidence
    maximizer is ``≈ d / ‖w‖²``, whose relative standard deviation is ``√(2/d) = 0.1``; 30% is
    three of them."""
    lam0, d, N, sigma = 4.0, 200, 2000, 0.1
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(N, d, generator=gen)
    w = torch.randn(d, generator=gen) / math.sqrt(lam0)
    y = X @ w + sigma * torch.randn(N, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    with torch.no_grad():  # MAP at a weak prior; the evidence is then maximized at fixed θ*, H
        model.weight.copy_(torch.linalg.solve(X.T @ X + 1e-3 * torch.eye(d), X.T @ y)[None])
    la = Laplace(model, nn.MSELoss(), [(X, y[:, None])], curvature="diag", prior_precision=1.0,
                 sigma_noise=sigma).fit()
    fit = la.optimize_prior_precision()
    assert abs(fit.prior_precision / lam0 - 1) < 0.3
    assert la.prior_precision == fit.prior_precision
    # a maximum: the evidence is lower on both sides
    for f in (0.8, 1.25):
        assert la.log_marginal_likelihood(f * fit.prior_precision) < fit.log_marginal_likelihood


def test_marglik_learns_sigma_noise():
    """Joint ``(λ, σ)``: ``σ`` of 2000 residuals is within 10% of the true 0.1 (relative standard
    deviation ``1/√(2N)`` ≈ 1.6%)."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(2000, 20, generator=gen)
    w = torch.randn(20, generator=gen)
    y = X @ w + 0.1 * torch.randn(2000, generator=gen)
    model = nn.Linear(20, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, y[:, None]).solution.T)
    la = Laplace(model, nn.MSELoss(), [(X, y[:, None])], curvature="full").fit()
    fit = la.optimize_prior_precision(learn_sigma_noise=True)
    assert abs(fit.sigma_noise / 0.1 - 1) < 0.1


def test_gridsearch_and_mc_predictive():
    model, loss, data, X, y = _mlp_problem("ce")
    la = Laplace(model, loss, data, curvature="kfac").fit()
    fit = la.optimize_prior_precision(method="gridsearch", val_data=data, grid=[0.1, 1.0, 10.0])
    assert fit.prior_precision in (0.1, 1.0, 10.0)
    probs = la.predictive(X, method="mc", num_samples=20, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (16, 2) and torch.allclose(probs.sum(1), torch.ones(16))
    # float32 inputs to a float64 model are cast like the training batches (to 1e-6: their rounding)
    assert torch.allclose(la.predictive(X.float(), method="probit"),
                          la.predictive(X, method="probit"), atol=1e-6, rtol=0)


def test_errors():
    model, loss, data, X, y = _mlp_problem("ce")
    with pytest.raises(ValueError, match="likelihood loss"):
        Laplace(model, nn.L1Loss(), data)
    with pytest.raises(ValueError, match="curvature must be"):
        Laplace(model, loss, data, curvature="lowrnk")
    with pytest.raises(ValueError, match="rank"):
        Laplace(model, loss, data, curvature="lowrank", rank=100).fit()
    with pytest.raises(ValueError, match="prior_precision"):
        Laplace(model, loss, data, prior_precision=0.0)
    la = Laplace(model, loss, data)
    with pytest.raises(ValueError, match="call fit"):
        la.log_marginal_likelihood()
    la.fit()
    with pytest.raises(ValueError, match="method must be"):
        la.predictive(X, method="bridge")
    with pytest.raises(ValueError, match="val_data"):
        la.optimize_prior_precision(method="gridsearch")
    with pytest.raises(ValueError, match="label_smoothing"):
        Laplace(model, nn.CrossEntropyLoss(label_smoothing=0.1), data)
    with pytest.raises(ValueError, match="regression"):
        la.optimize_prior_precision(learn_sigma_noise=True)
    with pytest.raises(ValueError, match="pos_weight"):
        Laplace(model, nn.BCEWithLogitsLoss(pos_weight=torch.ones(2)), data)
    seq = nn.Sequential(nn.Linear(3, 2), nn.Unflatten(1, (2, 1)))  # logits (m, C, 1)
    la_seq = Laplace(seq, loss, [(X, y[:, None])], curvature="diag").fit()
    with pytest.raises(ValueError, match="samples, classes"):
        la_seq.predictive(X, method="probit")
