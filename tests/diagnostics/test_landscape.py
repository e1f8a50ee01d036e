"""Loss-landscape slices against closed forms (quadratic loss: the Taylor model is exact)."""

import pytest
import torch

from hesse.diagnostics import filter_normalized_direction, landscape


def test_eigen_slice_of_quadratic_is_exact_taylor_model(linear_regression):
    p = linear_regression
    before = p["model"].weight.detach().clone()
    res = landscape(p["model"], p["loss_fn"], p["data"], directions="eigen", dims=1, steps=9, span=2.0,
                    progress=False)
    lam = torch.linalg.eigvalsh(p["H"])
    assert res.eigenvalues[0] == pytest.approx(float(lam[-1]), rel=1e-10)
    a = res.coordinates[0]
    model = res.center_loss + res.directional_derivatives[0] * a + 0.5 * res.eigenvalues[0] * a**2
    # L is exactly quadratic in w: only float64 round-off separates the slice from its Taylor model
    assert torch.allclose(res.losses, model, rtol=1e-10, atol=1e-12)
    assert torch.equal(p["model"].weight.detach(), before)  # parameters untouched


def test_eigen_plane_of_quadratic(linear_regression):
    p = linear_regression
    res = landscape(p["model"], p["loss_fn"], p["data"], directions="eigen", dims=2, steps=5, span=1.0,
                    progress=False)
    a, b = res.coordinates
    A, B = torch.meshgrid(a, b, indexing="ij")
    g1, g2 = res.directional_derivatives
    l1, l2 = res.eigenvalues
    # orthogonal eigenvectors: no cross term in the quadratic model
    model = res.center_loss + g1 * A + g2 * B + 0.5 * (l1 * A**2 + l2 * B**2)
    assert res.losses.shape == (5, 5)
    assert torch.allclose(res.losses, model, rtol=1e-10, atol=1e-12)


def test_random_directions_are_filter_normalized(small_mlp):
    p = small_mlp
    params = [q.detach() for q in p["model"].parameters()]
    dirs = filter_normalized_direction(params, torch.Generator().manual_seed(1))
    for q, d in zip(params, dirs):
        if q.dim() <= 1:
            assert torch.count_nonzero(d) == 0  # biases ignored (Li et al. 2018, ignore="biasbn")
        else:
            assert torch.allclose(d.reshape(q.shape[0], -1).norm(dim=1), q.reshape(q.shape[0], -1).norm(dim=1),
                                  rtol=1e-12)
    res = landscape(p["model"], p["loss_fn"], p["data"], directions="random", dims=2, steps=3, progress=False)
    assert res.eigenvalues is None and res.losses.shape == (3, 3)
    assert res.losses[1, 1] == pytest.approx(res.center_loss, rel=1e-12)  # grid point (0, 0)
    assert bool(torch.isfinite(res.losses).all())


def test_landscape_bad_inputs(linear_regression):
    p = linear_regression
    args = (p["model"], p["loss_fn"], p["data"])
    with pytest.raises(ValueError, match="directions must be"):
        landscape(*args, directions="pca")
    with pytest.raises(ValueError, match="dims must be 1"):
        landscape(*args, dims=3)
    with pytest.raises(ValueError, match="steps must be"):
        landscape(*args, steps=1)
    with pytest.raises(ValueError, match="span must be"):
        landscape(*args, span=-1.0)
