import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import hesse
from hesse.optim import KFAC

# Tolerances: float64 throughout; the identities below are exact algebra, so 1e-10 relative only
# absorbs rounding in eigh-based inverses of matrices with condition number <= ~1e6.


def _per_sample_grads(model, loss_fn, X, y):
    """Rows: flat per-sample gradient [W row-major | b] of ℓ(model(x_i), y_i) (ground truth)."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p, x, t):
        return loss_fn(functional_call(model, p, (x[None],)), t[None])

    gs = vmap(grad(loss_one), in_dims=(None, 0, 0))(params, X, y)
    W, b = gs["weight"].reshape(len(X), model.weight.shape[0], -1), gs["bias"]
    return torch.cat([W, b[..., None]], dim=2).reshape(len(X), -1)


def _kfac(model, **kw):
    opts = dict(lr=1.0, damping=1e-2, inverse_every=1, stat_decay=0.0, momentum=0.0, kl_clip=None)
    opts.update(kw)
    return KFAC(model, **opts)


def _run_step(model, opt, X, y, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        loss.backward()
        return loss
    return opt.step(closure)


@pytest.mark.parametrize("m", [1, 5])
def test_linear_factors_equal_exact_fisher_block(m):
    """One input repeated m times: F = mean_i ∇ℓ_i ∇ℓ_iᵀ = (ã ãᵀ) ⊗ E[g gᵀ] exactly (row-major vec:
    vec(g ãᵀ) = g ⊗ ã, so F = G ⊗ A)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3).double()
    X = torch.randn(1, 4, dtype=torch.float64).repeat(m, 1)
    y = torch.arange(m) % 3
    loss_fn = nn.CrossEntropyLoss()
    opt = _kfac(model)
    J = _per_sample_grads(model, loss_fn, X, y)
    F = J.T @ J / m
    _run_step(model, opt, X, y, loss_fn)
    st = opt.state[model.weight]
    torch.testing.assert_close(torch.kron(st["G"], st["A"]), F, rtol=1e-10, atol=1e-12)


def test_linear_step_equals_exact_damped_natural_gradient_step():
    """With one sample, the step is −((G + √λ/π I) ⊗ (A + π√λ I))⁻¹ ∇, built here densely from
    torch.func quantities (a, g = ∂ℓ/∂s) and solved by torch.linalg.solve."""
    torch.manual_seed(1)
    model = nn.Linear(4, 3).double()
    X = torch.randn(1, 4, dtype=torch.float64)
    y = torch.tensor([2])
    loss_fn = nn.CrossEntropyLoss()
    lam = 1e-2
    opt = _kfac(model, damping=lam)
    theta0 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], 1).reshape(-1).clone()
    a = torch.cat([X[0], torch.ones(1, dtype=torch.float64)])
    s = model(X).detach()
    g = grad(lambda z: loss_fn(z, y))(s)[0]
    A, G = torch.outer(a, a), torch.outer(g, g)
    pi = ((A.trace() / 5) / (G.trace() / 3)).sqrt()
    Fd = torch.kron(G + lam ** 0.5 / pi * torch.eye(3, dtype=torch.float64),
                    A + pi * lam ** 0.5 * torch.eye(5, dtype=torch.float64))
    grad_flat = _per_sample_grads(model, loss_fn, X, y)[0]
    expected = theta0 - torch.linalg.solve(Fd, grad_flat)
    _run_step(model, opt, X, y, loss_fn)
    theta1 = torch.cat([model.weight.detach(), model.bias.detach()[:, None]], 1).reshape(-1)
    torch.testing.assert_close(theta1, expected, rtol=1e-9, atol=1e-12)


def test_conv_factors_equal_exact_fisher_block_single_location():
    """A 3x3 convolution over a 3x3 input without padding has one spatial location: KFC's
    A = patch patchᵀ, G = g gᵀ, and F = G ⊗ A exactly (one sample)."""
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3).double()
    model = nn.Sequential(conv, nn.Flatten())
    X = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([1])
    loss_fn = nn.CrossEntropyLoss()
    opt = _kfac(model)
    params = {k: v.detach() for k, v in model.named_parameters()}
    gs = grad(lambda p: loss_fn(functional_call(model, p, (X,)), y))(params)
    J = torch.cat([gs["0.weight"].reshape(3, -1), gs["0.bias"][:, None]], 1).reshape(1, -1)
    _run_step(model, opt, X, y, loss_fn)
    st = opt.state[conv.weight]
    torch.testing.assert_close(torch.kron(st["G"], st["A"]), J.T @ J, rtol=1e-10, atol=1e-12)


def test_fallback_and_errors():
    from hesse.demo_models import digits_cnn

    opt = KFAC(digits_cnn())
    assert opt.fallback_params == ["1.weight", "1.bias", "4.weight", "4.bias"]
    with pytest.raises(ValueError, match="fall back to SGD with momentum"):
        KFAC(nn.Sequential(nn.BatchNorm1d(3)))
    with pytest.raises(ValueError, match="lr must be"):
        KFAC(nn.Linear(2, 2), lr=-1.0)
    with pytest.raises(ValueError, match="damping must be"):
        KFAC(nn.Linear(2, 2), damping=-1e-3)
    with pytest.raises(TypeError, match="model first"):
        KFAC(nn.Linear(2, 2).parameters())


def test_factor_every_updates_statistics_only_on_its_steps():
    """factor_every=3, stat_decay=d: A after 7 steps is the running average of the batches of steps
    1, 4 and 7 only (the hooks record nothing in between), computed here by hand from the inputs."""
    torch.manual_seed(3)
    model = nn.Linear(4, 3).double()
    loss_fn = nn.CrossEntropyLoss()
    d = 0.5
    opt = _kfac(model, factor_every=3, stat_decay=d, lr=0.1)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randint(0, 3, (6,), generator=gen))
               for _ in range(7)]
    for X, y in batches:
        _run_step(model, opt, X, y, loss_fn)

    def a_factor(X):
        a = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], dim=1)
        return a.T @ a / len(X)

    expected = a_factor(batches[0][0])
    for i in (3, 6):
        expected = d * expected + (1 - d) * a_factor(batches[i][0])
    torch.testing.assert_close(opt.state[model.weight]["A"], expected, rtol=1e-12, atol=1e-14)
    assert not opt._cache  # nothing left recorded after a non-statistics step


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("positions", [None, 4], ids=["one-term", "sequence-of-4"])
def test_factors_match_their_definition_for_both_reductions(reduction, positions):
    """A = E[ã ãᵀ] over samples (and positions), G = (1/m) Σᵢ Σ_t gᵢₜ gᵢₜᵀ with gᵢ = ∂ℓᵢ/∂sᵢ the
    output gradient of the per-sample loss ℓᵢ (the loss of sample i alone: mean or sum over its
    tokens, as the batch loss reduces them), computed by torch.func for both layers of an MLP.
    A batch of 6 with reduction="sum" would otherwise give G 36x too large. Tolerance 1e-10: exact
    algebra in float64."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    lin1, lin2 = model[0], model[2]
    m = 6
    shape = (m,) if positions is None else (m, positions)
    X = torch.randn(*shape, 4, dtype=torch.float64)
    y = torch.randint(0, 3, shape)
    ce = nn.CrossEntropyLoss(reduction=reduction)

    def batch_loss(out, t):
        return ce(out.reshape(-1, 3), t.reshape(-1))

    def per_sample_loss(out_i, t_i):
        return batch_loss(out_i[None], t_i[None])

    with torch.no_grad():
        s1 = lin1(X)
        h = torch.tanh(s1)
        s2 = lin2(h)
    g2 = vmap(grad(per_sample_loss))(s2, y)
    g1 = vmap(grad(lambda s, t: per_sample_loss(lin2(torch.tanh(s)), t)))(s1, y)
    opt = _kfac(model, reduction=reduction)
    _run_step(model, opt, X, y, batch_loss)  # factors of this batch, at the parameters above

    def A_def(a):
        a = a.reshape(-1, a.shape[-1])
        a = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype)], dim=1)
        return a.T @ a / len(a)

    def G_def(g):
        g = g.reshape(-1, g.shape[-1])
        return g.T @ g / m

    for layer, a, g in ((lin1, X, g1), (lin2, h, g2)):
        st = opt.state[layer.weight]
        torch.testing.assert_close(st["A"], A_def(a), rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(st["G"], G_def(g), rtol=1e-10, atol=1e-13)


def test_reduction_is_validated():
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        KFAC(nn.Linear(2, 2), reduction="none")


def test_statistics_of_a_refused_batch_do_not_enter_the_factors():
    """good, NaN batch (refused), good gives exactly the factors of good, good: the activations the
    hooks recorded during the NaN batch's forward pass are discarded."""
    torch.manual_seed(5)
    loss_fn = nn.CrossEntropyLoss()
    X1, X2 = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    y = torch.arange(6) % 3
    bad = X1.clone()
    bad[0, 0] = float("nan")
    results = []
    for with_bad in (False, True):
        model = nn.Linear(4, 3).double()
        model.load_state_dict({k: torch.ones_like(v) * 0.1 for k, v in model.state_dict().items()})
        opt = _kfac(model, stat_decay=0.5)
        _run_step(model, opt, X1, y, loss_fn)
        if with_bad:
            with pytest.raises(ValueError, match="non-finite"):
                _run_step(model, opt, bad, y, loss_fn)
        _run_step(model, opt, X2, y, loss_fn)
        results.append((opt.state[model.weight]["A"], opt.state[model.weight]["G"], model.weight.detach()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_conv_factors_match_their_definition_for_both_reductions(reduction):
    """KFC with 3 samples and 4 locations: A the mean of patch patchᵀ over samples and locations,
    G = (1/m) Σᵢ Σ_t gᵢₜ gᵢₜᵀ with gᵢ = ∂ℓᵢ/∂sᵢ of the per-sample loss (torch.func), for both
    reductions. Tolerance 1e-10: exact algebra in float64."""
    torch.manual_seed(6)
    conv = nn.Conv2d(2, 3, 2).double()
    model = nn.Sequential(conv, nn.Flatten())
    m = 3
    X = torch.randn(m, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([1, 5, 10])
    ce = nn.CrossEntropyLoss(reduction=reduction)
    with torch.no_grad():
        s = conv(X)
    g = vmap(grad(lambda s_i, t: ce(s_i.reshape(1, -1), t[None])))(s, y)  # (m, 3, 2, 2)
    patches = nn.functional.unfold(X, 2).transpose(1, 2).reshape(-1, 8)
    patches = torch.cat([patches, torch.ones(len(patches), 1, dtype=X.dtype)], dim=1)
    gg = g.permute(0, 2, 3, 1).reshape(-1, 3)
    opt = _kfac(model, reduction=reduction)
    _run_step(model, opt, X, y, ce)
    st = opt.state[conv.weight]
    torch.testing.assert_close(st["A"], patches.T @ patches / len(patches), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(st["G"], gg.T @ gg / m, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("padding,padding_mode", [(1, "reflect"), (1, "circular"), ("same", "zeros"),
                                                  ("same", "replicate")])
def test_conv_factors_follow_the_layers_padding(padding, padding_mode):
    """A of a Conv2d that pads with reflect/circular/replicate or padding="same": the mean of
    patch patchᵀ over the patches the layer actually convolves (F.pad with the layer's mode, then
    unfold without padding), cut out here by explicit slicing. Zero-padded patches would give a
    different A; a padding="same" layer would not be preconditioned at all. Tolerance 1e-10:
    exact algebra in float64."""
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, 2 if padding == "same" else 3, padding=padding,
                     padding_mode=padding_mode).double()
    model = nn.Sequential(conv, nn.Flatten())
    X = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y = torch.tensor([0, 7])
    opt = _kfac(model)
    assert opt.fallback_params == []
    _run_step(model, opt, X, y, nn.CrossEntropyLoss())
    mode = "constant" if padding_mode == "zeros" else padding_mode
    Xp = nn.functional.pad(X, conv._reversed_padding_repeated_twice, mode=mode)
    k = conv.kernel_size[0]
    rows = [torch.cat([Xp[i, :, r:r + k, c:c + k].reshape(-1), torch.ones(1, dtype=X.dtype)])
            for i in range(len(X)) for r in range(4) for c in range(4)]  # 4x4 output locations
    a = torch.stack(rows)
    torch.testing.assert_close(opt.state[conv.weight]["A"], a.T @ a / len(a), rtol=1e-10,
                               atol=1e-13)


def _mlp():
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _cnn():
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.Tanh(),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 3)).double()


@pytest.mark.parametrize("make,shape", [(_mlp, (4,)), (_cnn, (2, 3, 3))], ids=["mlp", "cnn"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_optimizer_and_operator_share_factors_and_damped_inverse(make, shape, reduction):
    """KFAC's factors after one batch (stat_decay=0) are KFACOperator(kind="empirical")'s on that
    batch, and its step (lr=1, no momentum, no KL clipping) is −(K + λ)⁻¹ ∇L with the operator's
    factored-damping inverse (Martens & Grosse 2015, §6.3): both use the one Kronecker
    implementation. Tolerance 1e-10: the same float64 algebra in a different order."""
    torch.manual_seed(8)
    model = make()
    X = torch.randn(6, *shape, dtype=torch.float64)
    y = torch.arange(6) % 3
    loss_fn = nn.CrossEntropyLoss(reduction=reduction)
    lam = 1e-2
    model.eval()
    op = hesse.KFACOperator(model, loss_fn, (X, y), kind="empirical")
    grad_flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(
        loss_fn(model(X), y), list(model.parameters()))])
    expected = -(op.inverse(lam, damping_mode="factored") @ grad_flat)
    model.train()
    opt = _kfac(model, damping=lam, reduction=reduction)
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    _run_step(model, opt, X, y, loss_fn)
    for name, layer in zip(op.layer_names, [m for m in model if isinstance(m, (nn.Linear, nn.Conv2d))]):
        A, G = op.factors[name]
        torch.testing.assert_close(opt.state[layer.weight]["A"], A, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(opt.state[layer.weight]["G"], G, rtol=1e-10, atol=1e-13)
    theta1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    torch.testing.assert_close(theta1 - theta0, expected, rtol=1e-10, atol=1e-12)
