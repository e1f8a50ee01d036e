"""Kronecker factors of ``nn.Linear`` / ``nn.Conv2d`` layers and their damped inverses: the one
implementation behind :class:`hesse.KFACOperator` and the optimizer :class:`hesse.optim.KFAC`.

For a layer ``s = W a`` (the bias folded in as a last column of ``W``, a constant 1 appended to
``a``) the curvature block of ``vec(W)`` is approximated by ``A ⊗ G`` with ``A = E[a aᵀ]`` and
``G = E[g gᵀ]``, ``g`` an output gradient (Martens & Grosse 2015, "Optimizing neural networks with
Kronecker-factored approximate curvature", §3). A layer applied at several places per sample (the
positions of a sequence, the spatial locations of a convolution) contributes one *row* per place:
the input patch ``a_r`` and the output gradient ``g_r`` there (Grosse & Martens 2016, "A
Kronecker-factored approximate Fisher matrix for convolution layers", §3.1, the "expand"
convention: spatially uncorrelated derivatives, spatial homogeneity).

The inverse of the damped block is computed from the factors' eigendecompositions
``A = Q_A Λ_A Q_Aᵀ``, ``G = Q_G Λ_G Q_Gᵀ`` in one of two ways (:func:`damped_kronecker_inverse`):

* ``damping_mode="exact"``: ``(A ⊗ G + λ I)⁻¹``, applied as
  ``vec(V) ↦ vec(Q_G [(Q_Gᵀ V Q_A) / (λ_G λ_Aᵀ + λ)] Q_Aᵀ)``;
* ``damping_mode="factored"``: the factored Tikhonov damping of Martens & Grosse (2015, §6.3),
  ``(A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹`` with ``π = sqrt((tr A / dim A) / (tr G / dim G))``, which
  keeps the inverse a Kronecker product (two small dense inverses, two matrix products to apply)
  and is what K-FAC optimizers use; it adds ``π√λ G + √λ/π A`` besides ``λ I`` to the block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DAMPING_MODES",
    "REDUCTIONS",
    "FactorEigh",
    "KroneckerInverse",
    "conv2d_factors",
    "damped_kronecker_inverse",
    "factor_eigh",
    "input_rows",
    "layer_factors",
    "linear_factors",
    "num_samples",
    "output_gradient_scale",
    "output_rows",
    "pi_correction",
    "supports_layer",
]

REDUCTIONS = ("mean", "sum")
DAMPING_MODES = ("exact", "factored")


# ---------------------------------------------------------------------- rows
def supports_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a layer with Kronecker factors here: ``nn.Linear``, or ``nn.Conv2d``
    with ``groups=1`` (any padding and padding mode)."""
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1)


def num_samples(module: nn.Module, x: torch.Tensor) -> int:
    """The number of samples in the input ``x`` of a layer: its leading dimension, or 1 for an
    unbatched input (``(d,)`` for ``nn.Linear``, ``(C, H, W)`` for ``nn.Conv2d``)."""
    unbatched = x.ndim == (3 if isinstance(module, nn.Conv2d) else 1)
    return 1 if unbatched else int(x.shape[0])



def _conv2d_pad(module: nn.Conv2d) -> list[int]:
    """``F.pad``'s amounts (last axis first) for the padding a ``Conv2d`` applies: its
    ``padding`` on each side, or for ``"same"`` a total of ``dilation (kernel - 1)`` per axis with
    the extra unit on the right, as torch's convolution places it."""
    amounts: list[int] = []
    for axis in (1, 0):
        if module.padding == "valid":
            left = right = 0
        elif module.padding == "same":
            total = module.dilation[axis] * (module.kernel_size[axis] - 1)
            left, right = total // 2, total - total // 2
        else:
            left = right = int(module.padding[axis])
        amounts += [left, right]
    return amounts

def input_rows(module: nn.Module, x: torch.Tensor, *, weight: bool = True,
               bias: bool = False) -> torch.Tensor:
    """The rows ``a_r`` of a layer's input ``x``, ``(R, d_in [+1])``: the last axis of ``x`` for
    ``nn.Linear`` (other axes flattened into rows), the input patches for ``nn.Conv2d`` (one row
    per sample and output location, in the column order of ``weight.reshape(out, -1)``, padded as
    the layer pads: zeros, reflect, replicate, circular, or ``"same"``); the weight's columns if
    ``weight`` and a trailing column of ones if ``bias``."""
    if isinstance(module, nn.Linear):
        a = x.reshape(-1, x.shape[-1])
    elif isinstance(module, nn.Conv2d):
        if x.ndim == 3:
            x = x.unsqueeze(0)
        padding: Any = module.padding
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            # pad as Conv2d._conv_forward does, then unfold without padding
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, _conv2d_pad(module), mode=mode)
            padding = 0
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding,
                           stride=module.stride)  # (N, C k k, L)
        a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        raise TypeError(f"Kronecker factors exist for nn.Linear and nn.Conv2d, not "
                        f"{type(module).__name__}.")
    parts = [a] if weight else []
    if bias:
        parts.append(a.new_ones(a.shape[0], 1))
    if not parts:
        raise ValueError("input_rows needs weight=True or bias=True.")
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def output_rows(module: nn.Module, g: torch.Tensor) -> torch.Tensor:
    """Gradients ``g`` with respect to a layer's output as rows ``g_r``, ``(R, d_out)``, in the
    order of :func:`input_rows`."""
    if isinstance(module, nn.Linear):
        return g.reshape(-1, g.shape[-1])
    if g.ndim == 3:
        g = g.unsqueeze(0)
    return g.movedim(1, -1).reshape(-1, g.shape[1])


# ---------------------------------------------------------------------- factors of one batch
def output_gradient_scale(reduction: str, batch_size: int, terms: int | None = None) -> float:
    """The factor ``s`` by which the rows of ``g = ∂L/∂s`` of the batch loss enter
    ``G = (1/m) Σ_r (s g_r)(s g_r)ᵀ`` (``m = batch_size`` samples).

    ``reduction="sum"`` (``L = Σ ℓ``): ``s = 1``. ``reduction="mean"`` over ``R = terms``
    likelihood terms (``L = (1/R) Σ_t ℓ_t``; one per sample and sequence position for
    cross-entropy on ``(N, C, T)``, see :mod:`hesse.operators.likelihoods`): ``s = √(m R)``, so
    that ``G = R Σ_r g_r g_rᵀ = (1/R) Σ_r (R g_r)(R g_r)ᵀ``, the mean over the terms of the
    outer products of each term's own gradient — the factor whose Kronecker product with ``A``
    approximates the GGN / Fisher of the mean loss (:class:`hesse.KFACOperator`). Without
    ``terms``, one term per sample (``R = m``, ``s = m``)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    if reduction == "sum":
        return 1.0
    return float(batch_size) if terms is None else float(batch_size * terms) ** 0.5


def _factors_from_rows(a: torch.Tensor, g: torch.Tensor,
                       m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = (1/R) Σ_r a_r a_rᵀ`` (mean over all rows) and ``G = (1/m) Σ_r g_r g_rᵀ`` (mean over
    samples of the sum over each sample's rows)."""
    return a.T @ a / a.shape[0], g.T @ g / m


def linear_factors(a: torch.Tensor, g: torch.Tensor, has_bias: bool,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``A = E[ã ãᵀ]`` (``ã = [a, 1]`` with a bias) over samples and positions and
    ``G = (1/m) Σᵢ Σ_t gᵢₜ gᵢₜᵀ`` for an ``nn.Linear`` with inputs ``a`` (``m × ... × d_in``) and
    output gradients ``∂L/∂s`` ``g`` (``m × ... × d_out``); ``scale`` takes ``g`` to per-sample
    output gradients (:func:`output_gradient_scale`). Martens & Grosse (2015), §3."""
    m = a.shape[0] if a.ndim >= 2 else 1
    rows_a = a.reshape(-1, a.shape[-1])
    if has_bias:
        rows_a = torch.cat([rows_a, rows_a.new_ones(rows_a.shape[0], 1)], dim=1)
    return _factors_from_rows(rows_a, g.reshape(-1, g.shape[-1]) * scale, m)


def conv2d_factors(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, has_bias: bool,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """KFC factors of an ``nn.Conv2d`` (Grosse & Martens 2016, §3.1): ``A`` the mean of
    ``ã ãᵀ`` over samples and the ``T`` patch locations, ``G = (1/m) Σᵢ Σ_t gᵢₜ gᵢₜᵀ`` with the
    per-sample output gradients ``scale · g``."""
    return _factors_from_rows(input_rows(module, a, bias=has_bias),
                              output_rows(module, g) * scale, num_samples(module, a))


def layer_factors(module: nn.Module, a: torch.Tensor, g: torch.Tensor, has_bias: bool,
                  reduction: str, terms: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, G)`` of one batch for an ``nn.Linear`` or ``nn.Conv2d`` layer, from its inputs ``a``
    and the output gradients ``g = ∂L/∂s`` of a loss with the given ``reduction`` over ``terms``
    likelihood terms (default one per sample; :func:`output_gradient_scale`)."""
    m = num_samples(module, a)
    scale = output_gradient_scale(reduction, m, terms)
    return _factors_from_rows(input_rows(module, a, bias=has_bias),
                              output_rows(module, g) * scale, m)


# ---------------------------------------------------------------------- damped inverses
class FactorEigh(NamedTuple):
    """Eigendecompositions of a layer's factors, eigenvalues ascending and clamped at 0."""

    A_eigenvalues: torch.Tensor
    A_eigenvectors: torch.Tensor
    G_eigenvalues: torch.Tensor
    G_eigenvectors: torch.Tensor


def factor_eigh(A: torch.Tensor, G: torch.Tensor) -> FactorEigh:
    """``eigh`` of both factors. They are Gram matrices (PSD), so their negative eigenvalues are
    rounding and are set to 0."""
    lA, QA = torch.linalg.eigh(A)
    lG, QG = torch.linalg.eigh(G)
    return FactorEigh(lA.clamp(min=0), QA, lG.clamp(min=0), QG)


def pi_correction(eig: FactorEigh) -> float:
    """``π = sqrt((tr A / dim A) / (tr G / dim G))`` of Martens & Grosse (2015, §6.3), the split
    of the damping between the factors that minimises the norm of the extra terms; 1 when a
    factor is zero."""
    mean_A = float(eig.A_eigenvalues.mean())
    mean_G = float(eig.G_eigenvalues.mean())
    return (mean_A / mean_G) ** 0.5 if mean_A > 0 and mean_G > 0 else 1.0


@dataclass(frozen=True)
class KroneckerInverse:
    """A damped inverse of one layer's ``A ⊗ G``, applied to ``(..., d_out, d_in)`` blocks ``V``
    (the layer's part of a vector, as its weight is shaped) by :meth:`matmul`.

    With ``divisor`` ``None`` (factored damping) ``left = (G + √λ/π I)⁻¹``,
    ``right = (A + π√λ I)⁻¹`` and the product is ``left V right``; otherwise (exact damping)
    ``left = Q_G``, ``right = Q_A``, ``divisor = λ_G λ_Aᵀ + λ`` and the product is
    ``Q_G [(Q_Gᵀ V Q_A) / divisor] Q_Aᵀ``. Build it with :func:`damped_kronecker_inverse`.
    """

    left: torch.Tensor
    right: torch.Tensor
    divisor: torch.Tensor | None = None

    def matmul(self, V: torch.Tensor) -> torch.Tensor:
        if self.divisor is None:
            return self.left @ V @ self.right
        return self.left @ ((self.left.mT @ V @ self.right) / self.divisor) @ self.right.mT


def damped_kronecker_inverse(eig: FactorEigh, damping: float, *,
                             damping_mode: str = "exact") -> KroneckerInverse:
    """The damped inverse of ``A ⊗ G`` from the factors' eigendecompositions (see the module
    docstring): ``"exact"`` ``(A ⊗ G + λ I)⁻¹``; ``"factored"``
    ``(A + π√λ I)⁻¹ ⊗ (G + √λ/π I)⁻¹`` (Martens & Grosse 2015, §6.3). Exact damping with
    ``damping=0`` needs both factors positive definite (the caller checks)."""
    if damping_mode not in DAMPING_MODES:
        raise ValueError(f"damping_mode must be 'exact' or 'factored', got {damping_mode!r}.")
    lA, QA, lG, QG = eig
    if damping_mode == "exact":
        return KroneckerInverse(QG, QA, torch.outer(lG, lA) + damping)
    pi = pi_correction(eig)
    root = damping ** 0.5
    return KroneckerInverse((QG / (lG + root / pi)) @ QG.T, (QA / (lA + pi * root)) @ QA.T)
