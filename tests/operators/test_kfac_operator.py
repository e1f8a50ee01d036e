"""KFACOperator against independent ground truth.

What is exact, and tested to 1e-10 (float64 rounding on matrices of norm ~1):
* one datum (one row per layer): type-2 K-FAC equals the diagonal blocks of the GGN
  (``GGNOperator``), the whole GGN for a single layer; empirical / MC K-FAC equal those of
  ``FisherOperator`` with the same seed (Martens & Grosse 2015, §3: the Kronecker factorization
  only drops the correlation between rows, and there is one);
* type-2 factors of a last linear layer over many samples: ``A = mean a aᵀ`` and
  ``G = mean of the loss Hessians`` in closed form;
* trace, log-determinant and the damped inverse: identities of Kronecker products, compared with
  the dense matrix;
* Conv2d factors against patches cut out by explicit slicing and output gradients from the next
  layer's weight (Grosse & Martens 2016, §3.1).
The MC factor is compared with the type-2 one within 5 Monte-Carlo standard errors, computed from
the categorical distribution's exact fourth moments.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hesse
from hesse.operators.kfac import KFACOperator

TOL = 1e-10


@pytest.fixture(autouse=True)
def _float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _loss(name, reduction):
    return {"mse": nn.MSELoss, "ce": nn.CrossEntropyLoss,
            "bce": nn.BCEWithLogitsLoss}[name](reduction=reduction)


def _targets(name, shape, classes, gen):
    """Targets for outputs of ``shape``; ``classes`` is the class dimension's size for CE."""
    if name == "ce":
        return torch.randint(0, classes, (shape[0], *shape[2:]), generator=gen)
    if name == "bce":
        return torch.rand(shape, generator=gen)
    return torch.randn(shape, generator=gen)


def _block_mask(model, n):
    """1 on the diagonal blocks of each layer (its weight and bias), 0 elsewhere."""
    mask = torch.zeros(n, n)
    start = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            size = sum(p.numel() for p in module.parameters(recurse=False))
            mask[start:start + size, start:start + size] = 1
            start += size
    assert start == n
    return mask


def _mlp(bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5, bias=bias), nn.Tanh(), nn.Linear(5, 3, bias=bias))


# ------------------------------------------------------------------ (a) one datum: exact
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["mse", "ce", "bce"])
@pytest.mark.parametrize("bias", [True, False])
def test_one_datum_type2_is_ggn_blocks(reduction, loss, bias):
    gen = torch.Generator().manual_seed(1)
    model = _mlp(bias)
    x = torch.randn(1, 4, generator=gen)
    data = (x, _targets(loss, (1, 3), 3, gen))
    loss_fn = _loss(loss, reduction)
    K = KFACOperator(model, loss_fn, data, kind="type2").to_dense()
    G = hesse.GGNOperator(model, loss_fn, data).to_dense()
    assert torch.allclose(K, G * _block_mask(model, K.shape[0]), atol=TOL, rtol=0)
    # a single layer: the whole GGN
    single = nn.Linear(4, 3, bias=bias)
    Ks = KFACOperator(single, loss_fn, data).to_dense()
    assert torch.allclose(Ks, hesse.GGNOperator(single, loss_fn, data).to_dense(), atol=TOL, rtol=0)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("kind", ["empirical", "mc"])
def test_one_datum_fisher_kinds_are_fisher_blocks(reduction, loss, kind):
    gen = torch.Generator().manual_seed(2)
    model = _mlp()
    data = (torch.randn(1, 4, generator=gen), _targets(loss, (1, 3), 3, gen))
    loss_fn = _loss(loss, reduction)
    K = KFACOperator(model, loss_fn, data, kind=kind, mc_samples=3, seed=5).to_dense()
    F = hesse.FisherOperator(model, loss_fn, data, kind=kind, mc_samples=3, seed=5).to_dense()
    assert K.abs().max() > 1e-3  # not trivially zero
    assert torch.allclose(K, F * _block_mask(model, K.shape[0]), atol=TOL, rtol=0)


class _Positions(nn.Module):
    """Linear layer on (N, T, d) -> logits (N, C, T), cross-entropy over each position."""

    def __init__(self, d, c):
        super().__init__()
        self.lin = nn.Linear(d, c)

    def forward(self, x):
        return self.lin(x).transpose(1, 2)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_sequence_positions_are_samples(reduction, loss):
    """T positions with the same input row a: the GGN is a aᵀ ⊗ Σ_t H_t exactly, so the type-2
    K-FAC with positions flattened into samples must equal it (checks the 1/(N T) scaling)."""
    torch.manual_seed(3)
    gen = torch.Generator().manual_seed(3)
    T, d, c = 4, 3, 5
    x = torch.randn(1, 1, d, generator=gen).expand(1, T, d).contiguous()
    if loss == "ce":
        model = _Positions(d, c)
        y = torch.randint(0, c, (1, T), generator=gen)
    else:
        model = nn.Linear(d, c)
        y = torch.randn(1, T, c, generator=gen)
    loss_fn = _loss(loss, reduction)
    K = KFACOperator(model, loss_fn, (x, y)).to_dense()
    G = hesse.GGNOperator(model, loss_fn, (x, y)).to_dense()
    assert torch.allclose(K, G, atol=TOL, rtol=0)


def test_ignore_index_positions_do_not_count():
    torch.manual_seed(4)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 1, 3, generator=gen).expand(1, 4, 3).contiguous()
    y = torch.tensor([[1, -100, 2, -100]])
    model = _Positions(3, 5)
    K = KFACOperator(model, nn.CrossEntropyLoss(), (x, y)).to_dense()
    G = hesse.GGNOperator(model, nn.CrossEntropyLoss(), (x, y)).to_dense()
    assert torch.allclose(K, G, atol=TOL, rtol=0)


def test_parameter_order_follows_model_parameters():
    """Layers registered in the opposite order of their use: the vector follows
    model.parameters() like GGNOperator."""

    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.second = nn.Linear(5, 2)
            self.first = nn.Linear(3, 5, bias=False)

        def forward(self, x):
            return self.second(torch.tanh(self.first(x)))

    torch.manual_seed(5)
    model = Swapped()
    data = (torch.randn(1, 3), torch.randn(1, 2))
    op = KFACOperator(model, nn.MSELoss(), data)
    assert op.param_names == ["second.weight", "second.bias", "first.weight"]
    G = hesse.GGNOperator(model, nn.MSELoss(), data).to_dense()
    mask = torch.zeros_like(G)
    mask[:12, :12] = 1
    mask[12:, 12:] = 1
    assert torch.allclose(op.to_dense(), G * mask, atol=TOL, rtol=0)


# ------------------------------------------------------------------ (b) many samples
def _ce_last_layer_problem(n, seed):
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(3, 4)
    x = torch.randn(n, 3, generator=gen)
    y = torch.randint(0, 4, (n,), generator=gen)
    return model, x, y


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_type2_factors_closed_form_over_batches(reduction):
    """Last layer, CE: A = mean [x;1][x;1]ᵀ, G = mean_i (diag p_i − p_i p_iᵀ); two batches of
    unequal sizes test the batch weights."""
    model, x, y = _ce_last_layer_problem(11, 6)
    data = [(x[:7], y[:7]), (x[7:], y[7:])]
    op = KFACOperator(model, nn.CrossEntropyLoss(reduction=reduction), data)
    A, G = op.factors[op.layer_names[0]]
    xa = torch.cat([x, torch.ones(11, 1)], 1)
    p = torch.softmax(model(x).detach(), 1)
    G_ref = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    assert torch.allclose(A, xa.T @ xa / 11, atol=TOL, rtol=0)
    assert torch.allclose(G, G_ref, atol=TOL, rtol=0)


def test_mc_factor_approximates_type2_within_standard_error():
    n, mc = 3000, 2
    model, x, y = _ce_last_layer_problem(n, 7)
    t2 = KFACOperator(model, nn.CrossEntropyLoss(), (x, y))
    mcop = KFACOperator(model, nn.CrossEntropyLoss(), (x, y), kind="mc", mc_samples=mc, seed=1)
    G2 = t2.factors[t2.layer_names[0]][1]
    Gm = mcop.factors[mcop.layer_names[0]][1]
    # r = e_y − p with y ~ p: Var(r_c r_d) = E[(r_c r_d)²] − (E r_c r_d)², per sample, exactly
    p = torch.softmax(model(x).detach(), 1)
    r = torch.eye(4)[None, :, :] - p[:, None, :]  # r[i, y, c] for each possible label y
    second = torch.einsum("iy,iyc,iyd->icd", p, r**2, r**2)
    mean = torch.einsum("iy,iyc,iyd->icd", p, r, r)
    se = ((second - mean**2).sum(0)).sqrt() / (n * mc**0.5)
    assert torch.allclose(mean.mean(0), G2, atol=TOL, rtol=0)
    assert ((Gm - G2).abs() <= 5 * se).all(), ((Gm - G2).abs() / se).max()
    assert (Gm - G2).abs().max() > 0  # an actual random draw


def test_mc_bce_mean_is_unbiased_for_type2():
    """BCE mean over D features: the MC factor is rescaled by D (a tempered likelihood)."""
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(8)
    model = nn.Linear(2, 3)
    x = torch.randn(4000, 2, generator=gen)
    y = torch.rand(4000, 3, generator=gen)
    t2 = KFACOperator(model, nn.BCEWithLogitsLoss(), (x, y))
    mc = KFACOperator(model, nn.BCEWithLogitsLoss(), (x, y), kind="mc", seed=2)
    G2, Gm = t2.factors["<root>"][1], mc.factors["<root>"][1]
    # each entry's MC error is below 1/(D sqrt(n)) ≈ 5e-3; the bias being fixed would be a factor 3
    assert torch.allclose(Gm, G2, atol=0.03, rtol=0)


# ------------------------------------------------------------------ (c, d) inverse, trace, logdet
def _cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 16, 4))


def _problem(name):
    """Built inside the test, after the float64 default is set."""
    gen = torch.Generator().manual_seed(9)
    if name == "mlp-mse":
        return _mlp(), nn.MSELoss(), (torch.randn(20, 4, generator=gen), torch.randn(20, 3, generator=gen))
    return _cnn(), nn.CrossEntropyLoss(), (torch.randn(6, 2, 4, 4, generator=gen),
                                           torch.randint(0, 4, (6,), generator=gen))


@pytest.mark.parametrize("name", ["mlp-mse", "cnn-ce"])
def test_inverse_trace_logdet(name):
    model, loss_fn, data = _problem(name)
    op = KFACOperator(model, loss_fn, data)
    K = op.to_dense()
    n = K.shape[0]
    d = 1e-2
    v = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    back = op.inverse(d) @ ((op + d) @ v)
    assert torch.allclose(back, v, atol=TOL, rtol=0)
    assert torch.allclose(op.inverse(d).to_dense(), torch.linalg.inv(K + d * torch.eye(n)), atol=1e-8)
    assert op.trace() == pytest.approx(float(torch.trace(K)), rel=TOL)
    assert op.logdet(d) == pytest.approx(float(torch.logdet(K + d * torch.eye(n))), rel=TOL)


def test_undamped_logdet_and_inverse_when_positive_definite():
    model, loss_fn, data = _problem("mlp-mse")
    op = KFACOperator(model, loss_fn, data)
    K = op.to_dense()
    assert op.logdet() == pytest.approx(float(torch.logdet(K)), rel=TOL)
    v = torch.randn(K.shape[0], dtype=torch.float64)
    # ‖K⁻¹‖ ~ 1e3 here: the round trip loses about that factor of precision
    assert torch.allclose(op.inverse() @ (op @ v), v, atol=1e-8, rtol=0)


def test_singular_kfac_refused_without_damping():
    # CE: diag(p) − p pᵀ has the null vector 1, so the last layer's G is singular
    model, x, y = _ce_last_layer_problem(10, 10)
    op = KFACOperator(model, nn.CrossEntropyLoss(), (x, y))
    with pytest.raises(ValueError, match="damping > 0"):
        op.logdet()
    with pytest.raises(ValueError, match="damping > 0"):
        op.inverse()
    with pytest.raises(ValueError, match="damping"):
        op.inverse(-1.0)
    assert op.logdet(1e-3) > -float("inf")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("structure", ["kfac", "ekfac"])
def test_a_damping_that_rounds_to_zero_is_refused(dtype, structure):
    """A positive damping below the dtype's smallest normal number rounds away: on a singular K
    the products were non-finite (blamed on "a kink") and log det was -inf. Refused by name."""
    model, x, y = _ce_last_layer_problem(10, 10)
    model = model.to(dtype)
    op = KFACOperator(model, nn.CrossEntropyLoss(), (x.to(dtype), y))
    if structure == "ekfac":
        op = hesse.EKFACOperator.from_kfac(op)
    tiny = torch.finfo(dtype).tiny
    for call in (lambda d: op.inverse(d), lambda d: op.logdet(d)):
        with pytest.raises(ValueError, match="smallest normal"):
            call(tiny / 4)
        assert call(1e-3) is not None
    v = torch.randn(op.shape[0], dtype=dtype)
    assert bool(torch.isfinite(op.inverse(tiny * 4) @ v).all())


def test_factored_damping_inverse_is_the_kronecker_product_of_damped_factor_inverses():
    """damping_mode="factored": (A + π√d I)⁻¹ ⊗ (G + √d/π I)⁻¹ with π = sqrt((tr A/dim A) /
    (tr G/dim G)) (Martens & Grosse 2015, §6.3), built densely with torch.linalg.inv for one
    bias-free layer, whose row-major vec(W) makes the operator G ⊗ A. It differs from the exact
    (K + d I)⁻¹ by the cross terms π√d G ⊗ I + √d/π I ⊗ A, which is checked too."""
    torch.manual_seed(3)
    model = nn.Linear(4, 3, bias=False).double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64)
    op = KFACOperator(model, nn.MSELoss(), (x, y))
    A, G = op.factors["<root>"]
    assert torch.allclose(op.to_dense(), torch.kron(G, A), atol=1e-12, rtol=0)
    d = 1e-2
    pi = float(((torch.trace(A) / 4) / (torch.trace(G) / 3)).sqrt())
    I3, I4 = torch.eye(3, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    expected = torch.kron(torch.linalg.inv(G + d ** 0.5 / pi * I3),
                          torch.linalg.inv(A + pi * d ** 0.5 * I4))
    factored = op.inverse(d, damping_mode="factored").to_dense()
    assert torch.allclose(factored, expected, atol=1e-9, rtol=0)  # cond <= ~1e3, float64
    assert not torch.allclose(factored, op.inverse(d).to_dense(), atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match="damping > 0"):
        op.inverse(0.0, damping_mode="factored")
    with pytest.raises(ValueError, match="damping_mode must be"):
        op.inverse(d, damping_mode="tikhonov")


# ------------------------------------------------------------------ (e) Conv2d
def _patches_by_slicing(x, conv):
    """Rows a_t: the input patch at each output location, cut out with explicit loops."""
    ph, pw = conv.padding
    xp = torch.nn.functional.pad(x, (pw, pw, ph, ph))
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    H = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    W = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    rows = []
    for i in range(x.shape[0]):
        for h in range(H):
            for w in range(W):
                patch = xp[i, :, h * sh:h * sh + dh * (kh - 1) + 1:dh, w * sw:w * sw + dw * (kw - 1) + 1:dw]
                rows.append(patch.reshape(-1))
    return torch.stack(rows), H, W


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("config", [dict(padding=1), dict(padding=(0, 1), stride=2, dilation=(1, 2))],
                         ids=["pad1", "stride2-dil"])
def test_conv2d_factors_against_explicit_patches(config, bias):
    torch.manual_seed(11)
    gen = torch.Generator().manual_seed(11)
    conv = nn.Conv2d(2, 3, 3, bias=bias, **config)
    N = 3
    x = torch.randn(N, 2, 6, 7, generator=gen)
    rows, H, W = _patches_by_slicing(x, conv)
    head = nn.Linear(3 * H * W, 2)
    model = nn.Sequential(conv, nn.Flatten(), head)
    y = torch.randn(N, 2, generator=gen)
    op = KFACOperator(model, nn.MSELoss(), (x, y))
    # independent: A = mean over N·H·W patch rows. MSE mean over N·2 outputs has H_L = (2/(2N)) I
    # = Σ_m S_m S_mᵀ, S_m = sqrt(1/N) e_m in every sample; the gradient of e_m w.r.t. the conv
    # output is head.weight[m] reshaped (3, H, W), the same for every sample. So
    # G = w_b Σ_i Σ_m Σ_t (1/N) g_mt g_mtᵀ = Σ_m Σ_t g_mt g_mtᵀ (one batch: w_b = 1)
    a = torch.cat([rows, torch.ones(len(rows), 1)], 1) if bias else rows
    A = a.T @ a / len(rows)
    g = head.weight.detach().reshape(2, 3, H * W)  # (m, out, t)
    G = torch.einsum("mot,mpt->op", g, g)
    A_op, G_op = op.factors["0"]
    assert torch.allclose(A_op, A, atol=TOL, rtol=0)
    assert torch.allclose(G_op, G, atol=TOL, rtol=0)
    # the conv block of the dense operator: kron(G, A) on (out, in [+1]) row-major, then the
    # weight's entries followed by the bias's
    n_in = rows.shape[1]
    idx = [o * a.shape[1] + j for o in range(3) for j in range(n_in)]
    if bias:
        idx += [o * a.shape[1] + n_in for o in range(3)]
    block = torch.kron(G, A)[idx][:, idx]
    nc = len(idx)
    assert torch.allclose(op.to_dense()[:nc, :nc], block, atol=TOL, rtol=0)


@pytest.mark.parametrize("config", [dict(kernel_size=3, padding=1, padding_mode="reflect", stride=3),
                                    dict(kernel_size=(2, 3), padding="same")],
                         ids=["reflect", "same-even-kernel"])
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_conv2d_padding_modes_one_datum_is_ggn_block(config):
    """Non-zero padding modes and padding='same' (asymmetric for an even kernel) pad before
    unfolding: one datum and a 1x1 output location make K-FAC exact."""
    torch.manual_seed(12)
    size = 3 if config.get("stride") == 3 else 1
    conv = nn.Conv2d(2, 3, **config)
    model = nn.Sequential(conv, nn.Flatten(), nn.Linear(3, 2))
    data = (torch.randn(1, 2, size, size), torch.randn(1, 2))
    K = KFACOperator(model, nn.MSELoss(), data).to_dense()
    G = hesse.GGNOperator(model, nn.MSELoss(), data).to_dense()
    assert torch.allclose(K, G * _block_mask(model, K.shape[0]), atol=TOL, rtol=0)


# ------------------------------------------------------------------ (f) algorithms
def test_eigsh_and_solve():
    model, loss_fn, data = _problem("cnn-ce")
    op = KFACOperator(model, loss_fn, data)
    K = op.to_dense()
    n = K.shape[0]
    res = hesse.eigsh(op, k=3, tol=1e-8)
    ref = torch.linalg.eigvalsh(K)[-3:]
    assert torch.allclose(torch.sort(torch.as_tensor(res.values)).values, ref, rtol=1e-8, atol=1e-12)
    b = torch.randn(n, generator=torch.Generator().manual_seed(1))
    d = 1e-1
    sol = (op + d).solve(b, tol=1e-12, max_iter=2000)
    x_ref = torch.linalg.solve(K + d * torch.eye(n), b)
    assert sol.converged
    assert torch.allclose(sol.x, x_ref, atol=1e-8, rtol=0)
    assert torch.allclose(op.inverse(d) @ b, x_ref, atol=TOL, rtol=0)


# ------------------------------------------------------------------ user errors
def test_unsupported_parameters_are_listed_and_params_selects():
    torch.manual_seed(13)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    data = (torch.randn(8, 3), torch.randn(8, 2))
    with pytest.raises(ValueError, match=r"1\.weight \(BatchNorm1d\).*1\.bias"):
        KFACOperator(model, nn.MSELoss(), data)
    op = KFACOperator(model, nn.MSELoss(), data, params=lambda name, p: not name.startswith("1."))
    assert op.layer_names == ["0", "2"]
    # only a weight: its block is the weight part of the factor (no ones column)
    only = KFACOperator(model, nn.MSELoss(), data, params=["2.weight"])
    full = KFACOperator(model, nn.MSELoss(), data, params=["2.weight", "2.bias"])
    assert torch.allclose(only.to_dense(), full.to_dense()[:8, :8], atol=TOL, rtol=0)


def test_parameter_shared_between_modules_refused():
    torch.manual_seed(14)
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 3))
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match=r"shared between modules.*0\.weight \(in 0, 2\)"):
        KFACOperator(model, nn.MSELoss(), (torch.randn(4, 3), torch.randn(4, 3)))


def test_float32_model_gives_float32_operator():
    gen = torch.Generator().manual_seed(15)
    x, y = torch.randn(9, 4, generator=gen), torch.randn(9, 3, generator=gen)
    model = _mlp()
    ref = KFACOperator(model, nn.MSELoss(), (x, y)).to_dense()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x.float(), y.float()),
                                         batch_size=4)
    op = KFACOperator(model.float(), nn.MSELoss(), loader)
    assert op.dtype == torch.float32 and op.factors["0"][0].dtype == torch.float32
    # float32 rounding on entries of size ~1
    assert torch.allclose(op.to_dense().double(), ref, atol=1e-5, rtol=0)


def test_user_errors_leave_model_unchanged():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(inplace=True), nn.Linear(4, 2))
    data = (torch.randn(5, 3), torch.randn(5, 2))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="inplace=False"):
        KFACOperator(model, nn.MSELoss(), data)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="kind"):
        KFACOperator(model, nn.MSELoss(), data, kind="exact")
    with pytest.raises(ValueError, match="empirical"):
        KFACOperator(model, nn.L1Loss(), data, kind="type2")
    with pytest.raises(ValueError, match="mc_samples"):
        KFACOperator(model, nn.MSELoss(), data, kind="mc", mc_samples=0)
    with pytest.raises(ValueError, match="class weights"):
        KFACOperator(model, nn.CrossEntropyLoss(weight=torch.ones(2)), (data[0], torch.zeros(5).long()))
    model[1].inplace = False
    op = KFACOperator(model, nn.L1Loss(), data, kind="empirical")  # any loss for the empirical kind
    assert op.is_psd and op.dtype == torch.float64
    assert all(not m._forward_hooks for m in model.modules())
