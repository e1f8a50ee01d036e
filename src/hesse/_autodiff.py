"""Autodiff primitives for functions of one tensor: gradient, Hessian-vector product, dense Hessian,
Jacobian, and a finite-difference check. ``torch.func`` and nothing else.

Conventions. ``f`` maps one tensor ``x`` (any shape) to a real scalar tensor. Lists, scalars and
NumPy arrays are converted to float64 tensors. Results keep the shape structure of
``torch.func``: the gradient has the shape of ``x``, the Hessian has shape ``x.shape + x.shape``.

Hessian-vector products follow Pearlmutter (1994), "Fast exact multiplication by the Hessian":
``H v = d/dr grad f(x + r v) |_{r=0}``, computed forward-over-reverse (``jvp`` of ``grad``) at the
cost of a few gradient evaluations, never forming ``H``. Operations that lack forward-mode rules
fall back to reverse-over-reverse (``vjp`` of ``grad``, using ``H = H^T``) with a one-time warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import grad, jacfwd, jacrev, jvp, vjp, vmap

from ._memory import guard_bytes, guard_dense
from ._result import Result
from ._validation import (
    as_point,
    call_torch_function,
    check_callable,
    check_connected,
    check_finite,
    check_finite_point,
    check_point,
    check_positive_int,
    check_scalar_output,
    disconnected_error,
)

__all__ = ["gradient", "hvp", "hessian", "jacobian", "check_hessian", "HessianCheck"]


class ForwardModeFallbackWarning(UserWarning):
    """Forward-mode AD was not available for an operation; reverse-over-reverse is used instead."""


_FORWARD_FAILURE_HINTS = ("forward", "jvp", "not implemented", "notimplemented", "derivative for")


def _is_forward_mode_failure(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, (NotImplementedError, RuntimeError)) and any(
        h in text for h in _FORWARD_FAILURE_HINTS
    )


def _scalar_fn(
    f: Callable[[torch.Tensor], torch.Tensor], require_connected: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap f so that a non-scalar or non-tensor output raises our message inside transforms.

    With ``require_connected=True`` the wrapper must run inside a ``torch.func`` reverse-mode
    transform (``grad``, ``vjp``): there ``requires_grad`` of the output says whether it is
    connected to the transform's input (an output built by ``torch.tensor(x.item())``, or from
    tensors captured outside ``f`` only, is not), and a disconnected output is refused instead of
    differentiated to zeros. A constant written with torch ops (``x.sum() * 0 + 1``) is connected.
    """

    def wrapped(x: torch.Tensor) -> torch.Tensor:
        if not require_connected:
            return check_scalar_output(call_torch_function(f, x))
        try:
            out = call_torch_function(f, x)
        except RuntimeError as err:
            # x.detach().numpy() (and anything else reading raw memory) fails on torch.func's
            # wrapped tensors with this message: f leaves the graph, so it cannot be differentiated
            if "data pointer" in str(err) or "doesn't have storage" in str(err):
                raise disconnected_error() from None
            raise
        value = check_scalar_output(out)
        if not value.requires_grad:
            raise disconnected_error()
        return value

    return wrapped


def _prepare(f, x, name: str = "x") -> tuple[Callable, torch.Tensor]:
    check_callable(f)
    return _scalar_fn(f, require_connected=True), check_point(x, name)


def gradient(f: Callable[[torch.Tensor], torch.Tensor], x) -> torch.Tensor:
    """Gradient ``∇f(x)`` by reverse mode; same shape as ``x``.

    Parameters
    ----------
    f
        function of one tensor returning a scalar tensor, written with torch operations.
    x
        the point: a tensor of any shape (lists and NumPy arrays become float64 tensors).

    Notes
    -----
    Raises ``ValueError`` when the gradient is not finite (the message says so instead of
    returning NaN silently).
    """
    fs, x = _prepare(f, x)
    g = grad(fs)(x)
    check_finite(g, "The gradient of f at x")
    return g


def _hvp_forward_over_reverse(fs, x, v):
    return jvp(grad(fs), (x,), (v,))[1]


def _hvp_reverse_over_reverse(fs, x, v):
    vjp_fn = vjp(grad(fs), x)[1]
    return vjp_fn(v)[0]


def hvp(
    f: Callable[[torch.Tensor], torch.Tensor],
    x,
    v,
    mode: str = "auto",
) -> torch.Tensor:
    """Hessian-vector product ``∇²f(x) v`` without forming the Hessian (Pearlmutter 1994).

    ``mode="forward"`` (forward-over-reverse: ``jvp(grad f)``), ``"reverse"``
    (reverse-over-reverse: ``vjp(grad f)``, exact because ``H`` is symmetric) or ``"auto"``:
    forward-over-reverse, falling back to reverse-over-reverse with a warning when an operation
    has no forward-mode rule. Cost: about two to three gradient evaluations.

    Parameters
    ----------
    f
        function of one tensor returning a scalar tensor, written with torch operations.
    x
        the point: a tensor of any shape (lists and NumPy arrays become float64 tensors).
    v
        the direction, a tensor of the shape of ``x``.
    mode
        ``"auto"`` (default), ``"forward"`` or ``"reverse"``, as above.
    """
    fs, x = _prepare(f, x)
    v = as_point(v, "v", dtype=x.dtype).to(x.device)
    if v.shape != x.shape:
        raise ValueError(
            f"v must have the shape of x, {tuple(x.shape)}; got {tuple(v.shape)}."
        )
    check_finite_point(v, "v")
    if mode not in ("auto", "forward", "reverse"):
        raise ValueError(f"mode must be 'auto', 'forward' or 'reverse'; got {mode!r}.")
    if mode == "reverse":
        out = _hvp_reverse_over_reverse(fs, x, v)
    elif mode == "forward":
        out = _hvp_forward_over_reverse(fs, x, v)
    else:
        try:
            out = _hvp_forward_over_reverse(fs, x, v)
        except (RuntimeError, NotImplementedError) as err:
            if not _is_forward_mode_failure(err):
                raise
            _warn_fallback(err)
            out = _hvp_reverse_over_reverse(fs, x, v)
    check_finite(out, "The Hessian-vector product of f at x")
    return out


def _warn_fallback(err: BaseException) -> None:
    first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    warnings.warn(
        "forward-mode AD is not available for an operation in f "
        f"({first_line}); using reverse-over-reverse Hessian-vector products instead.",
        ForwardModeFallbackWarning,
        stacklevel=3,
    )


def hessian(
    f: Callable[[torch.Tensor], torch.Tensor],
    x,
    chunk_size: int | None = None,
    max_memory: int | None = None,
) -> torch.Tensor:
    """Dense Hessian ``∇²f(x)`` of shape ``x.shape + x.shape``.

    Built column block by column block from batched Hessian-vector products: the gradient's
    graph is built once (reverse mode) and ``vjp`` is vmapped over ``chunk_size`` unit vectors at
    a time, so peak memory is the matrix plus one chunk of products (the unit vectors are made
    per chunk, never as an ``n x n`` identity). ``max_memory`` (bytes, default 4 GiB or
    ``HESSE_MAX_MEMORY``) refuses a matrix that would not fit; use
    :class:`hesse.HessianOperator` and matrix-free algorithms instead.

    Parameters
    ----------
    f
        function of one tensor returning a scalar tensor, written with torch operations.
    x
        the point: a tensor of any shape (lists and NumPy arrays become float64 tensors).
    chunk_size
        unit vectors per batched product (default ``min(n, 512)``).
    max_memory
        bytes the matrix and one chunk of products may take (default 4 GiB or
        ``HESSE_MAX_MEMORY``).
    """
    fs, x = _prepare(f, x)
    n = x.numel()
    if chunk_size is None:
        chunk_size = min(n, 512)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    guard_dense(n, x.dtype, max_memory)
    flat_f = _flatten_input(fs, x.shape)
    x_flat = x.reshape(-1)
    vjp_fn = vjp(grad(flat_f), x_flat)[1]
    H = torch.empty((n, n), dtype=x.dtype, device=x.device)
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        basis = torch.zeros((stop - start, n), dtype=x.dtype, device=x.device)
        basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        H[:, start:stop] = vmap(lambda e: vjp_fn(e)[0])(basis).T
    _symmetrize_in_place(H, chunk_size)
    check_finite(H, "The Hessian of f at x")
    return H.reshape(*x.shape, *x.shape)


def _symmetrize_in_place(H: torch.Tensor, block: int) -> None:
    """``H <- (H + H^T) / 2`` block by block: reverse-mode columns agree with rows only up to
    rounding. Works on ``block x block`` tiles so that no second ``n x n`` matrix is made."""
    n = H.shape[0]
    for i in range(0, n, block):
        i_end = min(n, i + block)
        for j in range(i, n, block):
            j_end = min(n, j + block)
            avg = 0.5 * (H[i:i_end, j:j_end] + H[j:j_end, i:i_end].T)
            H[i:i_end, j:j_end] = avg
            H[j:j_end, i:i_end] = avg.T


def _flatten_input(fs, shape):
    def flat(z):
        return fs(z.reshape(shape))

    return flat


def jacobian(F: Callable[[torch.Tensor], torch.Tensor], x, max_memory: int | None = None) -> torch.Tensor:
    """Jacobian of a tensor-valued ``F`` at ``x``, shape ``F(x).shape + x.shape``.

    Reverse mode (``jacrev``) when the output is smaller than the input, forward mode otherwise,
    each falling back to the other if an operation lacks the needed rule. Memory: the ``m x n``
    matrix plus the ``min(m, n)``-square basis of unit vectors that the transform vmaps over;
    refused over ``max_memory`` bytes (default 4 GiB or ``HESSE_MAX_MEMORY``). An output not
    connected to ``x`` (``.item()``, ``torch.tensor(...)``, NumPy inside ``F``) is refused.

    Parameters
    ----------
    F
        function of one tensor returning a tensor, written with torch operations.
    x
        the point: a tensor of any shape (lists and NumPy arrays become float64 tensors).
    max_memory
        bytes the Jacobian and the basis may take (default 4 GiB or ``HESSE_MAX_MEMORY``).
    """
    check_callable(F, "F")
    x = check_point(x)
    out = check_connected(F, x, "F")
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"F(x) must return a torch.Tensor, got {type(out).__name__}.")
    m, n = out.numel(), x.numel()
    itemsize = out.element_size() if out.is_floating_point() else x.element_size()
    guard_bytes((m * n + min(m, n) ** 2) * itemsize, max_memory,
                f"The Jacobian ({m} x {n}, plus the {min(m, n)}-square basis of unit vectors)",
                "hesse.HessianOperator / GGNOperator products, or torch.func.jvp / vjp one vector "
                "at a time")
    first, second = (jacrev, jacfwd) if m < n else (jacfwd, jacrev)
    try:
        J = first(F)(x)
    except (RuntimeError, NotImplementedError) as err:
        if not _is_forward_mode_failure(err):
            raise
        J = second(F)(x)
    check_finite(J, "The Jacobian of F at x")
    return J


@dataclass(frozen=True, repr=False)
class HessianCheck(Result):
    """Autodiff Hessian against central finite differences of the gradient.

    ``passed`` is ``max_rel_error <= rtol``; the relative error is taken against
    ``max(1, max|H|)`` so that entries near zero do not inflate it.
    """

    hessian: torch.Tensor
    finite_difference: torch.Tensor
    max_abs_error: float
    max_rel_error: float
    step: float
    rtol: float
    passed: bool

    def __repr__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"HessianCheck({verdict}: max |H_ad - H_fd| = {self.max_abs_error:.3e}, "
            f"relative {self.max_rel_error:.3e} <= rtol {self.rtol:.1e}? step h = {self.step:.2e})"
        )


def check_hessian(
    f: Callable[[torch.Tensor], torch.Tensor],
    x,
    step: float | None = None,
    rtol: float | None = None,
) -> HessianCheck:
    """Compare ``hessian(f, x)`` with central differences of the gradient.

    Column ``j`` of the reference is ``(∇f(x + h e_j) − ∇f(x − h e_j)) / (2h)``, with truncation
    error ``O(h²)`` and rounding error ``O(ε/h)``; the default ``h = ε^{1/3} max(1, ‖x‖_∞)``
    balances the two (Nocedal & Wright 2006, §8.1). Default ``rtol``: ``1e-6`` in float64,
    ``1e-2`` in float32.

    Parameters
    ----------
    f
        function of one tensor returning a scalar tensor, written with torch operations.
    x
        the point: a tensor of any shape (lists and NumPy arrays become float64 tensors).
    step
        the difference step ``h`` (default ``ε^{1/3} max(1, ‖x‖_∞)``).
    rtol
        largest accepted ``max |H - H_fd| / max(1, max |H|)`` (default by dtype, above).
    """
    fs, x = _prepare(f, x)
    n = x.numel()
    # the Hessian, the scaled identity and the two gradient stacks: four n x n matrices
    guard_dense(n, x.dtype, None, what="finite-difference check", count=4)
    H = hessian(fs, x).reshape(n, n)
    eps = torch.finfo(x.dtype).eps
    scale = max(1.0, float(x.abs().max())) if n else 1.0
    h = float(step) if step is not None else eps ** (1.0 / 3.0) * scale
    if rtol is None:
        rtol = 1e-6 if x.dtype == torch.float64 else 1e-2
    g = grad(_flatten_input(fs, x.shape))
    x_flat = x.reshape(-1)
    E = torch.eye(n, dtype=x.dtype, device=x.device) * h
    G_plus = vmap(g)(x_flat.unsqueeze(0) + E)
    G_minus = vmap(g)(x_flat.unsqueeze(0) - E)
    H_fd = ((G_plus - G_minus) / (2 * h)).T
    H_fd = 0.5 * (H_fd + H_fd.T)
    abs_err = float((H - H_fd).abs().max()) if n else 0.0
    denom = max(1.0, float(H.abs().max())) if n else 1.0
    rel = abs_err / denom
    return HessianCheck(
        hessian=H,
        finite_difference=H_fd,
        max_abs_error=abs_err,
        max_rel_error=rel,
        step=h,
        rtol=float(rtol),
        passed=rel <= rtol,
    )
