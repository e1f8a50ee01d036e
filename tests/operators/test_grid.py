"""Every model operator on a grid of models x losses x reductions x data layouts, in float64.

Ground truth, computed independently of the operators:

* Hessian: ``torch.func.hessian`` of the flat total loss ``L(θ) = Σ_b w_b loss(model(x_b; θ), y_b)``
  with ``w_b = n_b / N`` (``reduction="mean"``) or ``1 / N`` (``"sum"``).
* GGN: the definition ``Σ_b w_b J_bᵀ H_b J_b`` with ``J_b`` from ``torch.func.jacrev`` and ``H_b``
  the ``torch.func.hessian`` of the loss in the outputs.
* empirical Fisher: ``(1/N) Σ_i g_i g_iᵀ`` with ``g_i`` the gradient of the loss of the one-sample
  batch ``(x_i, y_i)`` (so that ``L = (1/N) Σ_i ℓ_i`` for either reduction).
* Monte-Carlo Fisher: compared with the GGN (the exact Fisher for cross-entropy, Bernoulli and
  Gaussian likelihoods), within a tolerance from its Monte-Carlo standard error, which the test
  estimates from its own draws made with ``torch.distributions`` (see ``_mc_standard_error``).

The deterministic operators are exact up to rounding: ``1e-9`` relative to the matrix's largest
entry (products of a few dozen float64 terms, then a symmetrization).

Axes: every operator meets every value of every axis; the (model, loss, reduction, layout) cases
form a pairwise-covering subset of the full product (checked below); the rest of the product is
marked slow.
"""

from __future__ import annotations

import functools
import itertools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

import hesse

N = 7  # samples; the layouts split them unequally
OUT = 3  # classes / outputs


# ----------------------------------------------------------------------------- models
class _DictMLP(nn.Module):
    """Takes a mapping of inputs, as models of several modalities do."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, OUT)

    def forward(self, x):
        return self.head(torch.tanh(self.a(x["a"]) + self.b(x["b"])))


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, OUT))
    elif name == "cnn":  # convolution, max pooling, flatten
        model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(8, OUT))
    elif name == "bn":  # BatchNorm in eval mode with non-trivial running statistics
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, OUT))
        with torch.no_grad():
            model[1].running_mean.uniform_(-0.3, 0.3)
            model[1].running_var.uniform_(0.5, 1.5)
            model[1].weight.uniform_(0.5, 1.5)
    elif name == "seq":  # outputs (N, C, T): C classes/outputs at each of T = 4 positions
        model = nn.Sequential(nn.Conv1d(2, 4, 1), nn.Tanh(), nn.Conv1d(4, OUT, 1))
    else:
        model = _DictMLP()
    return model.double().eval()


def _inputs(name: str, n: int, g: torch.Generator):
    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {"mlp": lambda: randn(n, 4), "cnn": lambda: randn(n, 1, 4, 4),
            "bn": lambda: randn(n, 4), "seq": lambda: randn(n, 2, 4),
            "dict": lambda: {"a": randn(n, 3), "b": randn(n, 2)}}[name]()


def _loss(name: str, reduction: str) -> nn.Module:
    return {"ce": nn.CrossEntropyLoss, "bce": nn.BCEWithLogitsLoss, "mse": nn.MSELoss}[name](
        reduction=reduction)


def _targets(loss: str, out_shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    if loss == "ce":  # class indices at every position: (N,) or (N, T)
        return torch.randint(0, OUT, (out_shape[0], *out_shape[2:]), generator=g)
    if loss == "bce":  # several Bernoulli outputs per sample
        return torch.rand(out_shape, generator=g, dtype=torch.float64)
    return torch.randn(out_shape, generator=g, dtype=torch.float64)


def _take(x, idx):
    return {k: v[idx] for k, v in x.items()} if isinstance(x, dict) else x[idx]


# ----------------------------------------------------------------------------- data layouts
class _Pairs(torch.utils.data.Dataset):
    def __init__(self, X, Y):
        self.X, self.Y = X, Y

    def __len__(self):
        return N

    def __getitem__(self, i):
        return _take(self.X, i), self.Y[i]


def _layout(name: str, X, Y):
    """The same N samples as the operators' ``data``, and as the list of batches it yields."""
    sizes = {"single": [N], "list": [3, 2, 2], "loader": [3, 3, 1], "generator": [4, 3]}[name]
    bounds = list(itertools.accumulate([0, *sizes]))
    batches = [(_take(X, slice(a, b)), Y[a:b]) for a, b in zip(bounds, bounds[1:])]
    if name == "single":
        data = batches[0] if isinstance(X, torch.Tensor) else batches  # a pair of tensors
    elif name == "list":
        data = batches
    elif name == "loader":  # a short last batch
        data = torch.utils.data.DataLoader(_Pairs(X, Y), batch_size=3, shuffle=False)
    else:
        data = (b for b in batches)  # one-shot generator
    return data, batches


MODELS = ["mlp", "cnn", "bn", "seq", "dict"]
LOSSES = ["ce", "bce", "mse"]
REDUCTIONS = ["mean", "sum"]
LAYOUTS = ["single", "list", "loader", "generator"]


def _pairwise_cases() -> list[tuple[str, str, str, str]]:
    """Greedy pairwise cover: one case per (model, layout), the loss and reduction chosen to
    cover the most pairs not yet covered."""
    covered: set = set()
    cases = []
    for model, layout in itertools.product(MODELS, LAYOUTS):
        def gain(lr):
            case = (model, lr[0], lr[1], layout)
            return sum(pair not in covered for pair in itertools.combinations(enumerate(case), 2))

        loss, red = max(itertools.product(LOSSES, REDUCTIONS), key=gain)
        case = (model, loss, red, layout)
        covered.update(itertools.combinations(enumerate(case), 2))
        cases.append(case)
    return cases


CASES = _pairwise_cases()
SLOW_CASES = [c for c in itertools.product(MODELS, LOSSES, REDUCTIONS, LAYOUTS) if c not in CASES]


def test_cases_cover_every_pair_of_axis_values():
    axes = [MODELS, LOSSES, REDUCTIONS, LAYOUTS]
    have = {pair for case in CASES for pair in itertools.combinations(enumerate(case), 2)}
    want = {((a, u), (b, v)) for a, b in itertools.combinations(range(4), 2)
            for u in axes[a] for v in axes[b]}
    assert want <= have


# ----------------------------------------------------------------------------- ground truth
class _Problem:
    def __init__(self, model_name, loss_name, reduction, layout):
        g = torch.Generator().manual_seed(1)
        self.model = _model(model_name)
        self.loss_fn = _loss(loss_name, reduction)
        self.loss_name, self.reduction, self.layout = loss_name, reduction, layout
        X = _inputs(model_name, N, g)
        with torch.no_grad():
            Y = _targets(loss_name, self.model(X).shape, g)
        self.X, self.Y = X, Y
        _, self.batches = _layout(layout, X, Y)
        named = [(n, p) for n, p in self.model.named_parameters()]
        self.names = [n for n, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.theta = torch.cat([p.detach().reshape(-1) for _, p in named])
        self.buffers = dict(self.model.named_buffers())

    def data(self):
        return _layout(self.layout, self.X, self.Y)[0]

    def f(self, theta, x):
        sizes = [math.prod(s) for s in self.shapes]
        params = {n: t.reshape(s) for n, t, s in zip(self.names, theta.split(sizes), self.shapes)}
        return functional_call(self.model, {**params, **self.buffers}, (x,))

    def weight(self, nb):
        return (nb if self.reduction == "mean" else 1.0) / N

    def hessian(self):
        def total(theta):
            return sum(self.weight(len(y)) * self.loss_fn(self.f(theta, x), y) for x, y in self.batches)

        return torch.func.hessian(total)(self.theta)

    def jacobians(self, x):
        J = jacrev(self.f)(self.theta, x)
        return J.reshape(-1, self.theta.numel())

    def ggn(self):
        G = torch.zeros(self.theta.numel(), self.theta.numel(), dtype=torch.float64)
        for x, y in self.batches:
            z = self.f(self.theta, x).detach()
            J = self.jacobians(x)
            H = torch.func.hessian(lambda zz, y=y: self.loss_fn(zz, y))(z).reshape(z.numel(), -1)
            G += self.weight(len(y)) * J.T @ H @ J
        return G

    def samples(self):
        for i in range(N):
            yield _take(self.X, slice(i, i + 1)), self.Y[i:i + 1]

    def empirical_fisher(self):
        rows = [jacrev(lambda t, x=x, y=y: self.loss_fn(self.f(t, x), y))(self.theta)
                for x, y in self.samples()]
        Gs = torch.stack(rows)
        return Gs.T @ Gs / N


def _likelihood(loss_name: str, z: torch.Tensor):
    """The distribution whose negative log-likelihood (summed over the sample's terms) the loss
    is, up to a constant and the 1/K of reduction='mean'."""
    d = torch.distributions
    if loss_name == "ce":
        return d.Categorical(logits=z.movedim(1, -1), validate_args=False)
    if loss_name == "bce":
        return d.Bernoulli(logits=z, validate_args=False)
    return d.Normal(z, math.sqrt(0.5), validate_args=False)  # (z - y)² = -log N(y; z, ½) + c


def _mc_standard_error(prob: _Problem, draws: int = 64):
    """Per-entry standard error of a Monte-Carlo Fisher with one draw per sample and its
    expectation, both from this test's own draws: the Fisher of ``ℓ_i = c · (−log p(y | z_i))``
    (``c = 1/K`` for ``reduction="mean"`` over the sample's ``K`` terms, 1 for ``"sum"``) is
    ``c E[g gᵀ]`` with ``g = ∇_θ log p``; F̂ averages it over the N samples."""
    torch.manual_seed(7)  # torch.distributions samples from the global generator
    var = torch.zeros(prob.theta.numel(), prob.theta.numel(), dtype=torch.float64)
    mean = torch.zeros_like(var)
    for x, _ in prob.samples():
        z0 = prob.f(prob.theta, x).detach()
        K = z0[0].numel() // (z0.shape[1] if prob.loss_name == "ce" else 1)
        c = 1.0 / K if prob.reduction == "mean" else 1.0
        ys = _likelihood(prob.loss_name, z0).sample((draws,))

        def nll(theta, y, x=x):
            return -_likelihood(prob.loss_name, prob.f(theta, x)).log_prob(y).sum()

        grads = vmap(jacrev(nll), in_dims=(None, 0))(prob.theta, ys)  # (draws, n)
        outer = c * grads[:, :, None] * grads[:, None, :]
        mean += outer.mean(0) / N
        var += outer.var(0) / N**2
    return var.sqrt(), mean


@functools.cache
def _truth(case):
    prob = _Problem(*case)
    return prob, {"hessian": prob.hessian(), "ggn": prob.ggn(),
                  "empirical": prob.empirical_fisher()}


OPERATORS = {
    "hessian": lambda p: hesse.HessianOperator(p.model, p.loss_fn, p.data()),
    "ggn": lambda p: hesse.GGNOperator(p.model, p.loss_fn, p.data()),
    "empirical": lambda p: hesse.FisherOperator(p.model, p.loss_fn, p.data()),
}
MC_SAMPLES = 400


def _check_exact(name, case):
    prob, truth = _truth(case)
    op = OPERATORS[name](prob)
    assert op.num_samples == N
    A, T = op.to_dense(), truth[name]
    scale = float(T.abs().max())
    assert scale > 1e-6  # the ground truth is not trivially zero
    err = float((A - T).abs().max())
    assert err <= 1e-9 * scale, f"{name} {case}: max error {err:.2e} (scale {scale:.2e})"
    # a block product and a single product agree with the dense matrix (different code paths)
    v = torch.linspace(-1, 1, A.shape[0], dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), T @ v, rtol=1e-9, atol=1e-9 * scale)


def _check_mc(case):
    prob, truth = _truth(case)
    op = hesse.FisherOperator(prob.model, prob.loss_fn, prob.data(), kind="mc",
                              mc_samples=MC_SAMPLES, seed=3)
    F, G = op.to_dense(), truth["ggn"]
    se1, mean = _mc_standard_error(prob)
    # the test's own Monte-Carlo mean agrees with the exact Fisher (= GGN): a check of the
    # likelihood scaling independent of hesse; 64 draws, so within 6 of its standard errors
    assert float(((mean - G).abs() - 6 * se1 / 8).max()) <= 1e-9 * float(G.abs().max())
    # hesse's estimate, with MC_SAMPLES draws per sample: entrywise within 6 standard errors
    # (an entry misses with probability ~1e-9 for a Gaussian error; draws are seeded), and the
    # trace within 6 standard errors of the trace (its per-entry errors add at most linearly)
    se = se1 / math.sqrt(MC_SAMPLES)
    slack = 1e-9 * float(G.abs().max())
    assert float(((F - G).abs() - 6 * se).max()) <= slack, f"mc {case}"
    assert abs(float(F.trace() - G.trace())) <= 6 * float(se.diagonal().sum()) + slack, f"mc {case}"


@pytest.mark.parametrize("case", CASES, ids="-".join)
@pytest.mark.parametrize("name", list(OPERATORS))
def test_operator_matches_ground_truth(name, case):
    _check_exact(name, case)


@pytest.mark.parametrize("case", CASES, ids="-".join)
def test_mc_fisher_matches_exact_fisher(case):
    _check_mc(case)


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES, ids="-".join)
def test_full_product_of_axes(case):
    for name in OPERATORS:
        _check_exact(name, case)
    _check_mc(case)
