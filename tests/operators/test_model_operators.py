"""Model curvature operators against independent ground truth.

Ground truth: ``torch.func.hessian`` of the flat full-batch loss (MLP, CNN with BatchNorm),
central finite differences of the autograd gradient (transformer, where functorch's own nested
transforms disagree with finite differences), per-sample gradients (empirical Fisher), and
published identities (GGN = Hessian for a linear model with MSE; GGN = exact Fisher for
cross-entropy). float64 everywhere: products are exact up to rounding, so 1e-10 (relative to the
matrix scale) unless stated.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import hesse
from hesse.operators.evaluation import math_attention
from hesse.testing import dense_hessian_of_model, flat_loss_of_model


@pytest.fixture(autouse=True)
def _float64_default():
    """These tests build models in float64; restore the process default afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _fd_hvp(L, theta, v, eps=1e-6):
    """Central difference of the autograd gradient along v: error O(eps²) + O(1e-16/eps) ≈ 1e-10."""
    grad = torch.func.grad(L)
    return (grad(theta + eps * v) - grad(theta - eps * v)) / (2 * eps)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()


def _data(seed=0, n=30, d=6, classes=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def _cnn(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 3)
    ).double()
    with torch.no_grad():  # non-trivial running statistics
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model


class _Tiny(nn.Module):
    """A transformer block: embedding, nn.TransformerEncoderLayer (attention + LayerNorm), head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def test_mlp_hessian_matches_torch_func():
    model, (X, y) = _mlp(), _data()
    op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    ref = dense_hessian_of_model(model, nn.CrossEntropyLoss(), X, y)
    assert op.shape == ref.shape
    assert torch.allclose(op.to_dense(), ref, atol=1e-12)
    L, theta = flat_loss_of_model(model, nn.CrossEntropyLoss(), X, y)
    assert op.loss == pytest.approx(float(L(theta)), rel=1e-13)
    assert torch.allclose(op.gradient, torch.func.grad(L)(theta), atol=1e-14)


def test_four_unequal_batches_equal_the_full_batch():
    model, (X, y) = _mlp(), _data(n=31)
    full = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y)).to_dense()
    cuts = [0, 3, 12, 25, 31]
    batches = [(X[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:])]
    for keep in (True, False):
        op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), batches, keep_graph=keep)
        assert torch.allclose(op.to_dense(), full, atol=1e-13)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)
    assert torch.allclose(hesse.HessianOperator(model, nn.CrossEntropyLoss(), loader).to_dense(), full,
                          atol=1e-13)
    # a generator is read once into a list and still gives the same operator
    gen = ((X[a:b], y[a:b]) for a, b in zip(cuts, cuts[1:]))
    op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), gen)
    assert torch.allclose(op.to_dense(), full, atol=1e-13)
    # reduction="sum" batches still give the Hessian of the mean loss
    op = hesse.HessianOperator(model, nn.CrossEntropyLoss(reduction="sum"), batches)
    assert torch.allclose(op.to_dense(), full, atol=1e-13)


def test_cnn_with_batchnorm_eval_and_batch_modes():
    model = _cnn()
    g = torch.Generator().manual_seed(3)
    X, y = torch.randn(10, 1, 4, 4, generator=g), torch.randint(0, 3, (10,), generator=g)
    model.train()  # the operator must still use running statistics by default, and say so
    with pytest.warns(UserWarning, match="eval mode"):
        op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    assert model.training and model[1].training  # mode restored
    running_before = model[1].running_mean.clone()
    ref = dense_hessian_of_model(model, nn.CrossEntropyLoss(), X, y)  # eval mode inside
    assert torch.allclose(op.to_dense(), ref, atol=1e-11)
    # batch statistics: compare with torch.func on the model in train mode (BN uses batch stats);
    # running statistics must not change
    op_b = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y), bn_mode="batch")
    import copy

    twin = copy.deepcopy(model).train()
    twin[1].track_running_stats = False  # train mode, batch statistics, no running updates
    L, theta = flat_loss_of_model(twin, nn.CrossEntropyLoss(), X, y)
    # torch.func's nested transforms give an asymmetric (wrong) Hessian through train-mode
    # BatchNorm in torch 2.13, so the reference is central differences of the gradient
    Hb = op_b.to_dense()
    for seed in range(3):
        v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(seed))
        assert torch.allclose(Hb @ v, _fd_hvp(L, theta, v), atol=1e-7)
    assert not torch.allclose(Hb, ref, atol=1e-6)  # the two functions really differ
    ggn_b = hesse.GGNOperator(model, nn.CrossEntropyLoss(), (X, y), bn_mode="batch").to_dense()
    assert float(torch.linalg.eigvalsh(ggn_b).min()) > -1e-10
    assert torch.equal(model[1].running_mean, running_before)


def test_transformer_block_hessian_and_ggn_match_finite_differences():
    """Fused CPU attention has no double-backward rule: the operator falls back to the math kernel
    (warning once) and its products match central differences of the autograd gradient."""
    torch.manual_seed(0)
    model = _Tiny().double()
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(6, 5, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
        v = torch.randn(op.shape[0], generator=g)
        hv = op @ v
        hv2 = op @ v
    msgs = [str(w.message) for w in caught]
    assert sum("math attention kernel" in m for m in msgs) == 1
    model.eval()
    L, theta = flat_loss_of_model(model, nn.CrossEntropyLoss(), X, y)
    eps = 1e-6
    with math_attention():
        fd = _fd_hvp(L, theta, v, eps)
    # central differences: truncation O(eps²) and rounding O(1e-16/eps): about 1e-9 here
    assert torch.allclose(hv, fd, atol=1e-7 * max(1.0, float(fd.abs().max())))
    assert torch.equal(hv, hv2)
    w = torch.randn(op.shape[0], generator=g)
    assert float(w @ hv) == pytest.approx(float(v @ (op @ w)), rel=1e-10)  # symmetry
    ggn = hesse.GGNOperator(model, nn.CrossEntropyLoss(), (X, y))
    gv = ggn @ v
    assert float(v @ gv) >= 0


def test_linear_model_mse_ggn_equals_hessian_and_closed_form():
    torch.manual_seed(0)
    model = nn.Linear(5, 2).double()
    X, Y = torch.randn(40, 5), torch.randn(40, 2)
    H = hesse.HessianOperator(model, nn.MSELoss(), (X, Y)).to_dense()
    G = hesse.GGNOperator(model, nn.MSELoss(), (X, Y)).to_dense()
    assert torch.allclose(G, H, atol=1e-13)
    # closed form: L = (1/(2N)) Σ ‖W x + b − y‖², so ∇²_W = (2/(N·2)) Σ x xᵀ ⊗ I per output
    Xa = torch.cat([X, torch.ones(40, 1)], 1)
    A = 2 * Xa.T @ Xa / (40 * 2)
    # parameters are [W (2x5) row-major, b (2)]: entry (o, j) and (o', j') couple iff o == o'
    ref = torch.zeros(12, 12)
    for o in range(2):
        idx = [o * 5 + j for j in range(5)] + [10 + o]
        ref[torch.tensor(idx)[:, None], torch.tensor(idx)[None, :]] = A
    assert torch.allclose(H, ref, atol=1e-13)


def test_ggn_and_fisher_are_psd_and_fisher_matches_definitions():
    model, (X, y) = _mlp(1), _data(1)
    lf = nn.CrossEntropyLoss()
    G = hesse.GGNOperator(model, lf, (X, y))
    Gd = G.to_dense()
    assert G.is_psd and float(torch.linalg.eigvalsh(Gd).min()) > -1e-12 * float(Gd.abs().max())
    # GGN from its definition: J^T H_L J with J from torch.func.jacrev
    L, theta = flat_loss_of_model(model, lf, X, y)
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def outputs(t):
        parts = torch.split(t, [s.numel() for s in shapes])
        return torch.func.functional_call(model, {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}, (X,))

    J = torch.func.jacrev(outputs)(theta).reshape(-1, theta.numel())
    z = outputs(theta).detach()
    HL = torch.func.hessian(lambda zz: lf(zz.reshape(z.shape), y))(z.reshape(-1))
    assert torch.allclose(Gd, J.T @ HL @ J, atol=1e-12)
    # empirical Fisher = mean of per-sample gradient outer products
    per_sample = torch.stack([
        torch.func.grad(lambda t, i=i: lf(outputs(t)[i : i + 1], y[i : i + 1]))(theta) for i in range(len(X))
    ])
    Fe = hesse.FisherOperator(model, lf, [(X[:11], y[:11]), (X[11:], y[11:])]).to_dense()
    assert torch.allclose(Fe, per_sample.T @ per_sample / len(X), atol=1e-13)
    assert float(torch.linalg.eigvalsh(Fe).min()) > -1e-12


@pytest.mark.parametrize("loss_fn, targets", [
    (nn.CrossEntropyLoss(), "classes"),
    (nn.MSELoss(), "real"),
])
def test_mc_fisher_converges_to_exact_fisher(loss_fn, targets):
    """For cross-entropy and squared error the exact Fisher is the GGN (Martens 2020, §9.2); the
    MC estimate's error falls like 1/sqrt(samples): with 16x the samples the error drops ~4x
    (asserted > 2x to leave room for randomness), and it is reproducible for a fixed seed."""
    model, (X, y) = _mlp(2), _data(2, n=20)
    if targets == "real":
        y = torch.randn(20, 4)
    G = hesse.GGNOperator(model, loss_fn, (X, y)).to_dense()
    errs = []
    for m in (20, 320):
        F = hesse.FisherOperator(model, loss_fn, (X, y), kind="mc", mc_samples=m, seed=0).to_dense()
        errs.append(float((F - G).norm() / G.norm()))
    assert errs[1] < errs[0] / 2 and errs[1] < 0.1
    a = hesse.FisherOperator(model, loss_fn, (X, y), kind="mc", seed=5)
    b = hesse.FisherOperator(model, loss_fn, (X, y), kind="mc", seed=5)
    v = torch.randn(a.shape[0])
    assert torch.equal(a @ v, b @ v)


@pytest.mark.parametrize("loss, out_shape", [
    ("bce", (2,)), ("ce", (3, 5)), ("bce", (5, 2)), ("mse", (2, 3)),
])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mc_fisher_counts_every_likelihood_term_of_a_sample(loss, out_shape, reduction):
    """A sample with K likelihood terms (CE on (N, C, T) logits, several Bernoulli or Gaussian
    outputs): the MC Fisher's mean is the exact Fisher = GGN for either reduction. Trace ratio
    within 0.05: the relative standard error of the trace is about CV / sqrt(N · draws) with a
    per-draw coefficient of variation CV below 2 here, 2 / sqrt(7 · 2000) = 0.017; a missing 1/K
    would give 1/K = 0.5, 0.2, 0.1."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 5), nn.ReLU(), nn.Linear(5, math.prod(out_shape)),
                      nn.Unflatten(1, out_shape)).double()
    X = torch.rand(7, 10, dtype=torch.float64)
    if loss == "ce":
        Y, loss_fn = torch.randint(0, 3, (7, 5)), nn.CrossEntropyLoss(reduction=reduction)
    elif loss == "bce":
        Y, loss_fn = torch.rand(7, *out_shape), nn.BCEWithLogitsLoss(reduction=reduction)
    else:
        Y, loss_fn = torch.randn(7, *out_shape), nn.MSELoss(reduction=reduction)
    G = hesse.GGNOperator(m, loss_fn, (X, Y)).to_dense()
    F = hesse.FisherOperator(m, loss_fn, (X, Y), kind="mc", mc_samples=2000).to_dense()
    assert abs(float(F.trace() / G.trace()) - 1) < 0.05


@pytest.mark.parametrize("make", [
    lambda: nn.CrossEntropyLoss(weight=torch.ones(4)), lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
    lambda: nn.BCEWithLogitsLoss(pos_weight=torch.ones(4)),
])
def test_mc_fisher_refuses_losses_that_are_not_a_likelihood(make):
    model, (X, y) = _mlp(1), _data(1)
    with pytest.raises(ValueError, match="not such a loss"):
        hesse.FisherOperator(model, make(), (X, y), kind="mc")


def test_mc_fisher_refuses_ignored_targets():
    model, (X, y) = _mlp(1), _data(1)
    y[3] = -100
    with pytest.raises(ValueError, match="ignore_index=-100"):
        hesse.FisherOperator(model, nn.CrossEntropyLoss(), (X, y), kind="mc").matvec(
            torch.ones(sum(q.numel() for q in model.parameters())))


def test_matmat_equals_columnwise_matvec_for_every_operator():
    model, (X, y) = _mlp(3), _data(3)
    lf = nn.CrossEntropyLoss()
    batches = [(X[:13], y[:13]), (X[13:], y[13:])]
    V = torch.randn(sum(p.numel() for p in model.parameters()), 4)
    for op in (hesse.HessianOperator(model, lf, batches), hesse.HessianOperator(model, lf, batches, keep_graph=False),
               hesse.HessianOperator(model, lf, batches, matmat_strategy="vmap"),
               hesse.HessianOperator(model, lf, batches, keep_graph=False, matmat_strategy="vmap"),
               hesse.GGNOperator(model, lf, batches), hesse.FisherOperator(model, lf, batches),
               hesse.FisherOperator(model, lf, batches, kind="mc", mc_samples=3)):
        cols = torch.stack([op.matvec(V[:, j]) for j in range(4)], 1)
        assert torch.allclose(op.matmat(V), cols, atol=1e-13), type(op).__name__
        assert op.num_matvecs == 8


def test_parameter_selection_by_name_predicate_and_frozen():
    model, (X, y) = _mlp(4), _data(4)
    lf = nn.CrossEntropyLoss()
    full = hesse.HessianOperator(model, lf, (X, y)).to_dense()
    op = hesse.HessianOperator(model, lf, (X, y), params=["2.weight", "2.bias"])
    assert op.param_names == ["2.weight", "2.bias"] and op.shape == (36, 36)
    assert torch.allclose(op.to_dense(), full[-36:, -36:], atol=1e-13)
    op = hesse.HessianOperator(model, lf, (X, y), params=lambda name, p: name.endswith("bias"))
    assert op.param_names == ["0.bias", "2.bias"]
    model[0].weight.requires_grad_(False)
    op = hesse.HessianOperator(model, lf, (X, y))
    assert "0.weight" not in op.param_names and op.shape[0] == full.shape[0] - 48
    assert torch.allclose(op.to_dense(), full[48:, 48:], atol=1e-13)


def test_operator_is_fixed_at_its_point():
    model, (X, y) = _mlp(5), _data(5)
    op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y))
    v = torch.randn(op.shape[0])
    before = op @ v
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert torch.equal(op @ v, before)
    d = op.unflatten(op.point)
    assert set(d) == set(op.param_names) and torch.equal(op.flatten(d), op.point)


def test_dropout_model_eval_by_default_and_nondeterminism_refused():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)).double()
    X, y = _data(6)
    model.train()
    with pytest.warns(UserWarning, match="dropout off"):
        op = hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y), check_deterministic=True)
    assert model.training
    model.eval()
    ref = dense_hessian_of_model(model, nn.CrossEntropyLoss(), X, y)
    assert torch.allclose(op.to_dense(), ref, atol=1e-12)
    model.train()
    with pytest.raises(ValueError, match="not deterministic"):
        hesse.HessianOperator(model, nn.CrossEntropyLoss(), (X, y), eval_mode=False, check_deterministic=True)


def test_scipy_export_and_solve():
    model, (X, y) = _mlp(7), _data(7)
    G = hesse.GGNOperator(model, nn.CrossEntropyLoss(), (X, y))
    A = G.to_scipy()
    v = torch.randn(G.shape[0])
    assert A.dtype == "float64"
    assert (A @ v.numpy()) == pytest.approx((G @ v).numpy(), abs=1e-13)
    damped = G + 0.1
    res = damped.solve(v, tol=1e-10)
    assert res.converged and res.relative_residual < 1e-9
    dense = G.to_dense() + 0.1 * torch.eye(G.shape[0])
    assert torch.allclose(res.x, torch.linalg.solve(dense, v), atol=1e-7)


# ---------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors():
    model, (X, y) = _mlp(8), _data(8)
    lf = nn.CrossEntropyLoss()
    op = hesse.HessianOperator(model, lf, (X, y))
    with pytest.raises(ValueError, match=r"shape \(92,\)"):
        op @ torch.zeros(5)
    with pytest.raises(ValueError, match="empty"):
        hesse.HessianOperator(model, lf, [])
    with pytest.raises(ValueError, match="empty"):
        hesse.HessianOperator(model, lf, (X[:0], y[:0]))
    frozen = _mlp(8)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hesse.HessianOperator(frozen, lf, (X, y))
    Xbad = X.clone()
    Xbad[17, 0] = float("nan")
    batches = [(X[:10], y[:10]), (Xbad[10:], y[10:])]
    with pytest.raises(ValueError, match="batch 1"):
        hesse.HessianOperator(model, lf, batches)
    with pytest.raises(ValueError, match="unknown parameter"):
        hesse.HessianOperator(model, lf, (X, y), params=["nope"])
    with pytest.raises(ValueError, match="reduction"):
        hesse.HessianOperator(model, nn.CrossEntropyLoss(reduction="none"), (X, y))
    with pytest.raises(TypeError, match="pair"):
        hesse.HessianOperator(model, lf, [(X, y, y)])
    with pytest.raises(TypeError, match="nn.Module"):
        hesse.HessianOperator(lambda x: x, lf, (X, y))
    with pytest.raises(ValueError, match="max_memory"):
        op.to_dense(max_memory=100)
    with pytest.raises(ValueError, match="kind"):
        hesse.FisherOperator(model, lf, (X, y), kind="exact")
    with pytest.raises(ValueError, match="likelihood"):
        hesse.FisherOperator(model, nn.L1Loss(), (X, torch.randn(30, 4)), kind="mc")
    with pytest.raises(ValueError, match="bn_mode"):
        hesse.HessianOperator(model, lf, (X, y), bn_mode="train")


def test_nonfinite_gradient_names_the_parameter():
    class SqrtHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self, x):
            return (x[:, :3] * torch.sqrt(self.w)).sum(1, keepdim=True)

    X = torch.randn(4, 6)
    with pytest.raises(ValueError, match="parameter 'w'"):
        hesse.HessianOperator(SqrtHead().double(), nn.MSELoss(), (X, torch.zeros(4, 1)))
