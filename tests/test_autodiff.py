"""Autodiff primitives against closed forms (sympy), the seeds' worked examples and finite differences.

Tolerances: float64 throughout; autodiff is exact up to rounding, so comparisons with closed forms
use 1e-10 (relative to the entries' scale); finite-difference checks use the step/rounding balance
documented in ``check_hessian`` (rtol 1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

import hesse


def _sympy_hessian(expr, symbols, point):
    H = sp.hessian(expr, symbols)
    subs = dict(zip(symbols, point))
    return np.array(H.subs(subs).evalf(), dtype=float)


def _sympy_gradient(expr, symbols, point):
    subs = dict(zip(symbols, point))
    return np.array([float(sp.diff(expr, s).subs(subs).evalf()) for s in symbols])


x_, y_ = sp.symbols("x y")


def test_seed_example_quadratic():
    """Seed 004 §6: f = 3x² + 2xy + 2y² − 4x − 6y has H = [[6, 2], [2, 4]], eigenvalues 2.763932 and
    7.236068, and its gradient vanishes at (0.2, 1.4)."""

    def f(p):
        return 3 * p[0] ** 2 + 2 * p[0] * p[1] + 2 * p[1] ** 2 - 4 * p[0] - 6 * p[1]

    H = hesse.hessian(f, [0.2, 1.4])
    assert torch.allclose(H, torch.tensor([[6.0, 2.0], [2.0, 4.0]], dtype=torch.float64), atol=1e-12)
    eig = torch.linalg.eigvalsh(H)
    assert eig.numpy() == pytest.approx([2.763932, 7.236068], abs=5e-7)
    assert float(hesse.gradient(f, [0.2, 1.4]).norm()) < 1e-12


def test_mixed_partials_equal_x2y_plus_sin_xy():
    """Seed 002 Example 1: f = x²y + sin(xy); f_xy = f_yx (Schwarz), compared with sympy."""
    expr = x_**2 * y_ + sp.sin(x_ * y_)

    def f(p):
        return p[0] ** 2 * p[1] + torch.sin(p[0] * p[1])

    for point in [(0.3, -1.2), (1.0, 2.0), (-0.7, 0.5)]:
        H = hesse.hessian(f, list(point)).numpy()
        assert H == pytest.approx(_sympy_hessian(expr, [x_, y_], point), abs=1e-10)
        assert H[0, 1] == H[1, 0]


def test_paraboloid_and_exp():
    """Seed 002: x² + 4y² has eigenvalues 2 and 8; e^(x+y) at 0 has Hessian [[1,1],[1,1]]
    with eigenvalues 0 and 2."""
    H = hesse.hessian(lambda p: p[0] ** 2 + 4 * p[1] ** 2, [0.5, -0.3])
    assert torch.linalg.eigvalsh(H).numpy() == pytest.approx([2.0, 8.0], abs=1e-12)
    H = hesse.hessian(lambda p: torch.exp(p[0] + p[1]), [0.0, 0.0])
    assert torch.linalg.eigvalsh(H).numpy() == pytest.approx([0.0, 2.0], abs=1e-12)


@pytest.mark.parametrize("point", [(-1.2, 1.0), (1.0, 1.0), (0.0, 0.0), (2.0, -1.5)])
def test_rosenbrock_against_sympy(point):
    expr = (1 - x_) ** 2 + 100 * (y_ - x_**2) ** 2

    def f(p):
        return (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2

    H = hesse.hessian(f, list(point)).numpy()
    ref = _sympy_hessian(expr, [x_, y_], point)
    assert H == pytest.approx(ref, rel=1e-12, abs=1e-10)
    g = hesse.gradient(f, list(point)).numpy()
    assert g == pytest.approx(_sympy_gradient(expr, [x_, y_], point), rel=1e-12, abs=1e-10)


def test_random_smooth_functions_against_sympy():
    """Random compositions of smooth functions of 3 variables against sympy's Hessian."""
    rng = np.random.default_rng(0)
    z_ = sp.Symbol("z")
    syms = [x_, y_, z_]
    atoms_sp = [sp.sin, sp.cos, sp.exp, sp.tanh]
    atoms_t = [torch.sin, torch.cos, torch.exp, torch.tanh]
    for _ in range(4):
        terms = []
        choices = []
        for _ in range(3):
            i, j, k = rng.integers(0, 3, size=3)
            a = int(rng.integers(0, 4))
            c = float(np.round(rng.normal(), 3))
            choices.append((i, j, k, a, c))
            terms.append(c * atoms_sp[a](syms[i] * syms[j]) * syms[k])
        expr = sum(terms)

        def f(p, choices=choices):
            return sum(c * atoms_t[a](p[i] * p[j]) * p[k] for i, j, k, a, c in choices)

        point = [float(v) for v in rng.normal(size=3)]
        H = hesse.hessian(f, point).numpy()
        assert H == pytest.approx(_sympy_hessian(expr, syms, point), rel=1e-10, abs=1e-10)


def test_hvp_modes_agree_with_dense():
    torch.manual_seed(0)
    A = torch.randn(5, 5, dtype=torch.float64)

    def f(x):
        return torch.sin(x @ A @ x) + (x**4).sum()

    x = torch.randn(5, dtype=torch.float64)
    v = torch.randn(5, dtype=torch.float64)
    H = hesse.hessian(f, x)
    for mode in ("auto", "forward", "reverse"):
        assert torch.allclose(hesse.hvp(f, x, v, mode=mode), H @ v, atol=1e-12)


def test_hvp_falls_back_when_forward_mode_is_missing():
    """A custom autograd.Function without a jvp rule: forward-over-reverse fails, the fallback
    (reverse-over-reverse) gives the right product and warns once."""

    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    def f(x):
        return Cube.apply(x).sum()

    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64)
    with pytest.warns(UserWarning, match="reverse-over-reverse"):
        out = hesse.hvp(f, x, v)
    assert torch.allclose(out, 6 * x * v, atol=1e-12)


def test_hessian_of_matrix_input_has_tensor_shape():
    X = torch.randn(2, 3, dtype=torch.float64)
    H = hesse.hessian(lambda M: (M**2).sum(), X)
    assert H.shape == (2, 3, 2, 3)
    assert torch.allclose(H.reshape(6, 6), 2 * torch.eye(6, dtype=torch.float64))


def test_hessian_chunks_give_the_same_matrix():
    torch.manual_seed(1)
    x = torch.randn(7, dtype=torch.float64)

    def f(z):
        return torch.logsumexp(z * torch.arange(7.0, dtype=torch.float64), 0) + (z**3).sum()

    assert torch.allclose(hesse.hessian(f, x, chunk_size=2), hesse.hessian(f, x), atol=1e-13)


def test_jacobian_both_shapes():
    def F(x):
        return torch.stack([x[0] * x[1], torch.sin(x[2]), x.sum()])

    x = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    J = hesse.jacobian(F, x)
    ref = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, float(np.cos(0.5))], [1.0, 1.0, 1.0]],
                       dtype=torch.float64)
    assert torch.allclose(J, ref, atol=1e-14)
    wide = hesse.jacobian(lambda z: z.sum().reshape(1), torch.ones(10, dtype=torch.float64))
    assert wide.shape == (1, 10)


def test_check_hessian_reports_agreement_and_catches_a_wrong_rule():
    res = hesse.check_hessian(lambda p: torch.exp(p[0]) * torch.sin(p[1]) + p[2] ** 4, [0.3, 0.4, 0.5])
    assert res.passed and res.max_rel_error < 1e-7

    class DetachedCube(torch.autograd.Function):
        """x³ with a correct gradient whose own derivative is lost (detach in backward): the
        second derivative by autodiff is 0, finite differences of the gradient see 6x."""

        generate_vmap_rule = True

        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x.detach() ** 2 * g

    bad = hesse.check_hessian(lambda p: DetachedCube.apply(p).sum(), [1.0, 2.0])
    assert not bad.passed
    assert bad.finite_difference.diagonal().numpy() == pytest.approx([6.0, 12.0], rel=1e-6)


# ---------------------------------------------------------------------------- bad input
def test_non_scalar_output_names_its_shape():
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        hesse.gradient(lambda x: x * 2, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="scalar"):
        hesse.hessian(lambda x: x * 2, [1.0, 2.0])


def test_integer_and_complex_input_refused():
    with pytest.raises(TypeError, match="int64"):
        hesse.hessian(lambda x: (x**2).sum(), torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="complex"):
        hesse.gradient(lambda x: (x**2).sum(), torch.tensor([1 + 1j]))
    with pytest.raises(TypeError, match="integer"):
        hesse.gradient(lambda x: (x**2).sum(), np.array([1, 2]))
    with pytest.raises(TypeError, match="callable"):
        hesse.gradient("x**2", [1.0])


def test_non_tensor_output_and_nonfinite_gradient():
    import math

    with pytest.raises(TypeError, match="torch operations"):
        hesse.gradient(lambda x: math.sin(1.0), [1.0])
    with pytest.raises(ValueError, match="not finite"):
        hesse.gradient(lambda x: torch.sqrt(x).sum(), [0.0, 1.0])


def test_lists_become_float64_and_v_shape_checked():
    g = hesse.gradient(lambda x: (x**2).sum(), [1, 2])
    assert g.dtype == torch.float64 and g.tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match="shape of x"):
        hesse.hvp(lambda x: (x**2).sum(), [1.0, 2.0], [1.0, 2.0, 3.0])


def test_memory_guard_refuses_and_points_to_matrix_free():
    with pytest.raises(ValueError, match=r"matrix-free.*HessianOperator"):
        hesse.hessian(lambda x: (x**2).sum(), torch.zeros(2000, dtype=torch.float64), max_memory=10**6)


# --- every entry point refuses outputs not connected to x, non-finite and empty points ---------

def _sum_squares(x):
    return (x**2).sum()


ENTRY_POINTS = {
    "gradient": lambda f, x: hesse.gradient(f, x),
    "hvp": lambda f, x: hesse.hvp(f, x, torch.ones_like(torch.as_tensor(x, dtype=torch.float64))),
    "hvp-reverse": lambda f, x: hesse.hvp(f, x, torch.ones_like(torch.as_tensor(x, dtype=torch.float64)),
                                          mode="reverse"),
    "hessian": lambda f, x: hesse.hessian(f, x),
    "jacobian": lambda f, x: hesse.jacobian(lambda z: f(z).reshape(1), x),
    "check_hessian": lambda f, x: hesse.check_hessian(f, x),
}

_OUTSIDE = torch.ones(2, dtype=torch.float64, requires_grad=True)
DISCONNECTED = {
    "item": lambda x: torch.tensor(x[0].item() ** 2 + x[1].item() ** 2),
    "torch.tensor": lambda x: torch.tensor(float(x.detach().sum()) ** 2, dtype=torch.float64),
    "numpy": lambda x: torch.as_tensor(np.sum(x.detach().numpy() ** 2)),
    "captured tensor only": lambda x: (_OUTSIDE**2).sum(),
}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind", DISCONNECTED)
def test_output_not_connected_to_x_is_refused(entry, kind):
    # before: zeros returned (gradient [0, 0], Hessian 0) as if f were constant
    with pytest.raises(ValueError, match=r"does not depend on x.*\.item\(\).*torch\.tensor.*NumPy"):
        ENTRY_POINTS[entry](DISCONNECTED[kind], [1.0, 2.0])


@pytest.mark.parametrize("entry", ["gradient", "hvp", "hvp-reverse", "hessian", "jacobian"])
def test_constant_written_with_torch_ops_is_connected_and_has_zero_derivatives(entry):
    # connected to x, so its zero derivatives are the truth (exact zeros, no tolerance needed)
    out = ENTRY_POINTS[entry](lambda x: x.sum() * 0 + 1, [1.0, 2.0])
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("point, where", [([float("nan"), 1.0], r"x\[0\] = nan"),
                                          ([1.0, float("inf")], r"x\[1\] = inf"),
                                          ([[1.0, 2.0], [-float("inf"), 0.0]], r"x\[\(1, 0\)\] = -inf")])
def test_non_finite_point_is_refused_with_its_positions(entry, point, where):
    # before: hessian(f, [nan, 1]) of a quadratic returned the finite matrix 2 I
    with pytest.raises(ValueError, match=rf"x is not finite at 1 position\(s\): {where}"):
        ENTRY_POINTS[entry](_sum_squares, point)


def test_non_finite_direction_v_is_refused():
    with pytest.raises(ValueError, match=r"v is not finite.*v\[1\] = nan"):
        hesse.hvp(_sum_squares, [1.0, 2.0], [0.0, float("nan")])


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_empty_point_is_refused_as_empty(entry):
    # before: hessian(f, torch.zeros(0)) said "chunk_size must be >= 1, got 0"
    with pytest.raises(ValueError, match=r"x is empty \(shape \(0,\)\)"):
        ENTRY_POINTS[entry](_sum_squares, torch.zeros(0, dtype=torch.float64))


@pytest.mark.parametrize("chunk_size", [0, -3, 1.5])
def test_bad_chunk_size_is_named(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        hesse.hessian(_sum_squares, [1.0, 2.0], chunk_size=chunk_size)


@pytest.mark.parametrize("n, chunk_size", [(7, 1), (7, 3), (7, 7), (12, 5)])
def test_blockwise_symmetrization_matches_torch_func(n, chunk_size):
    # the tiles of the in-place symmetrization must cover every entry once: compare with
    # torch.func.hessian (exact autodiff both ways, so 1e-12 absolute on O(1) entries)
    g = torch.Generator().manual_seed(n)
    A = torch.randn(n, n, generator=g, dtype=torch.float64)

    def f(x):
        return torch.sin(A @ x).sum() + (x**3).sum() * x[0]

    x = torch.randn(n, generator=g, dtype=torch.float64)
    H = hesse.hessian(f, x, chunk_size=chunk_size)
    assert torch.equal(H, H.T)
    torch.testing.assert_close(H, torch.func.hessian(f)(x), atol=1e-12, rtol=0)


def test_jacobian_memory_guard_refuses_before_allocating():
    # 10^5 x 10^5 float64 = 80 GB (plus the basis): refused with the size, the limit and the knob
    with pytest.raises(ValueError, match=r"Jacobian \(100000 x 100000.*max_memory.*HESSE_MAX_MEMORY"):
        hesse.jacobian(lambda z: 2 * z, torch.zeros(100_000, dtype=torch.float64))
    J = hesse.jacobian(lambda z: 2 * z, torch.zeros(3, dtype=torch.float64), max_memory=10**6)
    torch.testing.assert_close(J, 2 * torch.eye(3, dtype=torch.float64), atol=0, rtol=0)
