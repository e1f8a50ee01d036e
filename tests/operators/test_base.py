"""The operator base class: algebra, export, solves, counting and validation, on dense ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import hesse
from hesse.operators import CurvatureOperator


def _spd(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.linspace(0.5, 20.0, n, dtype=torch.float64)
    return Q @ torch.diag(lam) @ Q.T


def test_dense_operator_products_and_counter():
    A = _spd()
    op = hesse.DenseOperator(A, is_psd=True)
    v = torch.randn(12, dtype=torch.float64)
    V = torch.randn(12, 3, dtype=torch.float64)
    assert torch.allclose(op @ v, A @ v) and torch.allclose(op @ V, A @ V)
    assert op.num_matvecs == 4
    op.reset_counter()
    assert op.num_matvecs == 0
    assert torch.allclose(op.to_dense(), A)
    assert op.shape == (12, 12) and op.dtype == torch.float64 and op.device.type == "cpu"
    # NumPy in, float32 vectors are cast to the operator's dtype
    assert torch.allclose(op @ v.numpy(), A @ v)
    assert (op @ v.float()).dtype == torch.float64


def test_algebra_matches_dense():
    A, B = _spd(seed=1), _spd(seed=2)
    a, b = hesse.DenseOperator(A, is_psd=True), hesse.DenseOperator(B)
    eye = torch.eye(12, dtype=torch.float64)
    cases = [
        (a + 0.5, A + 0.5 * eye),
        (0.5 + a, A + 0.5 * eye),
        (2.0 * a, 2 * A),
        (a * 3, 3 * A),
        (a + b, A + B),
        (a - b, A - B),
        (-a, -A),
        (a / 4, A / 4),
        (a - 1.0, A - eye),
    ]
    for op, dense in cases:
        assert torch.allclose(op.to_dense(), dense, atol=1e-12)
    assert (a + 0.5).is_psd is True and (-a).is_psd is None and (a + b).is_psd is None


def test_function_hessian_operator_matches_dense_hessian():
    def f(x):
        return torch.sin(x).sum() * (x**2).sum() + x.prod()

    x = torch.tensor([0.3, -0.2, 1.1, 0.7], dtype=torch.float64)
    op = hesse.HessianOperator.from_function(f, x)
    assert isinstance(op, CurvatureOperator) and not isinstance(op, hesse.HessianOperator)
    assert torch.allclose(op.to_dense(), hesse.hessian(f, x), atol=1e-13)
    assert torch.allclose(op.gradient, hesse.gradient(f, x))
    M = torch.randn(2, 3, dtype=torch.float64)
    op2 = hesse.HessianOperator.from_function(lambda m: (m**3).sum(), M)
    assert op2.shape == (6, 6)
    assert torch.allclose(op2.to_dense(), torch.diag(6 * M.reshape(-1)))


def test_function_hessian_operator_flatten_unflatten_round_trip():
    """The interface the model operators promise: unflatten(v) -> {name: tensor}, flatten back."""
    M = torch.randn(2, 3, dtype=torch.float64)
    op = hesse.HessianOperator.from_function(lambda m: (m**3).sum(), M)
    assert isinstance(op, hesse.operators.FunctionHessianOperator)
    assert op.param_names == ["x"] and op.num_samples == 1
    v = torch.arange(6, dtype=torch.float64)
    parts = op.unflatten(v)
    assert list(parts) == ["x"] and parts["x"].shape == (2, 3)
    assert torch.equal(parts["x"], v.reshape(2, 3))
    assert torch.equal(op.flatten(parts), v)
    assert torch.equal(op.flatten([parts["x"]]), v) and torch.equal(op.flatten(parts["x"]), v)
    assert torch.equal(op.unflatten(op.point)["x"], M)
    with pytest.raises(ValueError, match=r"\(6,\)"):
        op.unflatten(torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="shape"):
        op.flatten({"x": torch.zeros(3, 2, dtype=torch.float64)})
    assert "function of x" in repr(op)


def test_to_scipy_works_with_arpack():
    from scipy.sparse.linalg import eigsh

    A = _spd(30, seed=3)
    op = hesse.DenseOperator(A)
    vals = eigsh(op.to_scipy(), k=3, which="LA", return_eigenvectors=False)
    assert np.sort(vals) == pytest.approx(torch.linalg.eigvalsh(A)[-3:].numpy(), rel=1e-10)


def test_solves_cg_minres_direct():
    A = _spd(20, seed=4)
    op = hesse.DenseOperator(A, is_psd=True)
    b = torch.randn(20, dtype=torch.float64)
    x_true = torch.linalg.solve(A, b)
    for method in ("cg", "minres", "direct"):
        res = op.solve(b, method=method, tol=1e-12)
        assert res.converged, res
        assert torch.allclose(res.x, x_true, atol=1e-9), method
        assert res.relative_residual < 1e-9
    # indefinite: CG stops on negative curvature and says so; MINRES solves it
    Q, _ = torch.linalg.qr(torch.randn(20, 20, dtype=torch.float64))
    M = Q @ torch.diag(torch.linspace(-5.0, 5.0, 20, dtype=torch.float64) + 0.1) @ Q.T
    ind = hesse.DenseOperator(M)
    res = ind.solve(b, method="cg")
    assert not res.converged and "negative curvature" in res.message
    res = ind.solve(b, method="minres", tol=1e-12)
    assert res.converged and torch.allclose(res.x, torch.linalg.solve(M, b), atol=1e-6)
    # a budget that runs out is reported
    res = op.solve(b, method="cg", max_iter=2)
    assert not res.converged and "max_iter" in res.message


def test_validation_messages():
    with pytest.raises(ValueError, match="not symmetric"):
        hesse.DenseOperator(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        hesse.DenseOperator(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not finite"):
        hesse.DenseOperator(torch.tensor([[float("nan")]]))
    op = hesse.DenseOperator(torch.eye(3))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        op.matvec(torch.zeros(4))
    with pytest.raises(ValueError, match=r"\(3, k\)"):
        op.matmat(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="floating"):
        op.matvec(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="method"):
        op.solve(torch.ones(3), method="qr")
    with pytest.raises(ValueError, match="shapes"):
        op + hesse.DenseOperator(torch.eye(2))


class _MatrixProducts(CurvatureOperator):
    """Products with a stored matrix, but the base class's ``to_dense`` (DenseOperator has its own)."""

    def __init__(self, A: torch.Tensor):
        super().__init__(A.shape[0], A.dtype, A.device, None)
        self.A = A

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.A @ V


class _LargeStorages(TorchFunctionMode):
    """Records the distinct storages of at least ``numel`` elements that torch functions return."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel, self.seen = numel, set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.untyped_storage().nbytes() >= self.numel * out.element_size():
            self.seen.add(out.untyped_storage().data_ptr())
        return out


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 7, 13, 50])
def test_to_dense_in_chunks_is_the_matrix_with_one_n_by_n_allocation(chunk_size):
    """``to_dense`` multiplies blocks of unit vectors: A e_i is column i exactly (a float64 product
    with a unit vector adds exact zeros), and symmetrizing a symmetric matrix changes nothing, so
    the result equals A bit for bit, in n products, for every chunking. The memory guard counts one
    n x n matrix: with blocks narrower than n no second one (e.g. a transposed copy) may be made."""
    n = 13
    A = _spd(n)
    A = 0.5 * (A + A.T)
    op = _MatrixProducts(A)
    with _LargeStorages(n * n) as storages:
        dense = op.to_dense(chunk_size=chunk_size)
    assert torch.equal(dense, A)
    assert op.num_matvecs == n
    if chunk_size is not None and chunk_size < n:  # else the unit block itself is n x n
        assert len(storages.seen) == 1  # the result itself


@pytest.mark.parametrize("chunk_size", [0, -1, 2.5, True])
def test_to_dense_refuses_a_chunk_size_that_covers_nothing(chunk_size):
    """A chunk of 0 or fewer columns would leave the (uninitialized) matrix unfilled."""
    op = _MatrixProducts(_spd(4))
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        op.to_dense(chunk_size=chunk_size)
    assert op.num_matvecs == 0


def test_to_dense_memory_guard_refuses_before_any_product():
    A = _spd(10)
    op = _MatrixProducts(0.5 * (A + A.T))
    with pytest.raises(ValueError, match="max_memory"):
        op.to_dense(max_memory=10 * 10 * 8 - 1)
    assert op.num_matvecs == 0
    assert torch.equal(op.to_dense(max_memory=10 * 10 * 8), op.A)
