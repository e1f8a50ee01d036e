"""EK-FAC: K-FAC's Kronecker eigenbasis with the eigenvalues refitted to the data.

K-FAC approximates a layer's curvature block by ``A ⊗ G`` (:class:`KFACOperator`). With the
factors' eigendecompositions ``A = Q_A Λ_A Q_Aᵀ`` and ``G = Q_G Λ_G Q_Gᵀ`` this is
``(Q_A ⊗ Q_G) diag(λ_G λ_Aᵀ) (Q_A ⊗ Q_G)ᵀ``. EK-FAC (George, Laurent, Bouthillier, Ballas &
Vincent 2018, "Fast approximate natural gradient descent in a Kronecker-factored eigenbasis",
§3) keeps the basis and replaces the eigenvalues by the second moments of the per-sample
vectors in it::

    E_l = (Q_A ⊗ Q_G) diag(s) (Q_A ⊗ Q_G)ᵀ,    s = (1/N) Σ ω (Q_Gᵀ R_l Q_A)²

(squares elementwise), with ``R_l`` a layer's part of the per-sample vectors of
:func:`hesse.operators.per_sample.curvature_roots`: the per-sample gradients for
``kind="empirical"`` (the paper's choice) and the loss-Hessian square-root columns backpropagated
per sample for ``kind="type2"`` (so ``E`` approximates the GGN). Then ``s`` is exactly the
diagonal of the approximated matrix ``M`` (empirical Fisher or GGN) in the eigenbasis, the
defining property, and among all matrices ``U diag(d) Uᵀ`` in that basis ``E`` is the closest
to ``M`` in Frobenius norm; in particular it is at least as close as K-FAC (George et al. 2018,
Thm. 1).

Cost: the K-FAC factors (one pass over the data), their eigendecompositions, then a second pass
with per-sample gradients: one ``vmap``-ed backward per batch for ``"empirical"``, ``C`` for
``"type2"`` (``C`` outputs per sample), ``O(n_b n)`` memory per batch. Products, inverses and
log-determinants cost what K-FAC's exact-damping inverse costs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._progress import Progress
from .base import CurvatureOperator
from .kfac import KFACOperator
from .kronecker import KroneckerInverse
from .per_sample import curvature_roots

_KINDS = ("type2", "empirical")


class EKFACOperator(CurvatureOperator):
    """EK-FAC approximation of the GGN (``kind="type2"``) or the empirical Fisher
    (``kind="empirical"``) of ``loss_fn(model(x), y)`` over ``data``; PSD.

    Parameters
    ----------
    model, loss_fn, data, params :
        As for :class:`KFACOperator` (supported layers: ``nn.Linear``, ``nn.Conv2d`` with
        ``groups=1``; the vector order is that of ``model.parameters()``).
    kind : {"empirical", "type2"}
        The matrix approximated: the empirical Fisher (George et al. 2018) or the GGN. The K-FAC
        basis is computed with the same ``kind``.
    refit : bool
        ``True`` (default): EK-FAC. ``False``: keep K-FAC's eigenvalues ``λ_G λ_Aᵀ``, which is
        K-FAC itself written in its eigenbasis (no second pass over the data).
    progress : bool
        Progress bars for the two passes.

    Attributes
    ----------
    kfac : KFACOperator
        The K-FAC operator whose eigenbasis is used.
    eigenvalues : dict[str, torch.Tensor]
        ``{layer name: s}`` with ``s`` of shape ``(d_out, d_in [+1])``: ``s[i, j]`` the eigenvalue
        of the basis vector ``q_G,i q_A,jᵀ``.

    Notes
    -----
    A product ``E v`` is ``Q_G [(Q_Gᵀ V Q_A) ⊙ s] Q_Aᵀ`` per layer; :meth:`trace`,
    :meth:`logdet` and :meth:`inverse` use the eigenvalues directly (no products).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        params: Any = None,
        *,
        kind: str = "empirical",
        refit: bool = True,
        progress: bool = False,
    ):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))} for EK-FAC; got "
                             f"{kind!r} (a Monte-Carlo Fisher's per-sample refit is not offered: use "
                             f"'type2', its expectation).")
        if not isinstance(refit, bool):
            raise TypeError(f"refit must be True or False, got {refit!r}.")
        kfac = KFACOperator(model, loss_fn, data, params, kind=kind, progress=progress)
        self._init_from(kfac, refit, progress)

    @classmethod
    def from_kfac(cls, kfac: KFACOperator, *, refit: bool = True,
                  progress: bool = False) -> EKFACOperator:
        """EK-FAC in the eigenbasis of an existing :class:`KFACOperator` (``kind="type2"`` or
        ``"empirical"``), refitted to the same matrix (or not, ``refit=False``)."""
        if not isinstance(kfac, KFACOperator):
            raise TypeError(f"kfac must be a KFACOperator, got {type(kfac).__name__}.")
        if kfac.kind not in _KINDS:
            raise ValueError(f"EK-FAC refits to the GGN ('type2') or the empirical Fisher; this "
                             f"K-FAC has kind={kfac.kind!r}.")
        self = cls.__new__(cls)
        self._init_from(kfac, refit, progress)
        return self

    def _init_from(self, kfac: KFACOperator, refit: bool, progress: bool) -> None:
        super().__init__(kfac.shape[0], kfac.dtype, kfac.device, is_psd=True)
        self.kfac, self.kind, self.refit = kfac, kfac.kind, refit
        self._basis = {name: kfac._eigh(name) for name in kfac.factors}
        if refit:
            self.eigenvalues = self._refit(progress)
        else:
            self.eigenvalues = {name: torch.outer(e.G_eigenvalues, e.A_eigenvalues)
                                for name, e in self._basis.items()}

    # ------------------------------------------------------------------ refit
    def _refit(self, progress: bool) -> dict[str, torch.Tensor]:
        p = self.kfac._problem
        sums = {name: torch.zeros_like(torch.outer(e.G_eigenvalues, e.A_eigenvalues))
                for name, e in self._basis.items()}

        def accumulate(weight: float):
            def fn(layer, M):  # M: (n_b, d_out, d_in [+1]) per-sample blocks
                e = self._basis[layer.name]
                sums[layer.name] += weight * (e.G_eigenvectors.T @ M @ e.A_eigenvectors).square().sum(0)
                return M
            return fn

        with Progress(None, "EK-FAC eigenvalues", progress) as bar, torch.enable_grad():
            for weight, rows in curvature_roots(p, self.kind):
                self.kfac._apply_layers(rows.T, accumulate(weight))
                bar.update(1)
        return {name: s / self.kfac.num_samples for name, s in sums.items()}

    # ------------------------------------------------------------------ products
    @property
    def param_names(self) -> list[str]:
        return self.kfac.param_names

    @property
    def layer_names(self) -> list[str]:
        return self.kfac.layer_names

    @property
    def num_samples(self) -> int:
        return self.kfac.num_samples

    def spectral_matmat(self, V: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``f(E) V = Q diag(f(s)) Qᵀ V`` for a function ``fn`` of the eigenvalues tensor (applied
        elementwise, e.g. ``lambda s: (s + d) ** -0.5``); ``V`` of shape ``(n, k)``."""
        V = self._as_block(V, "V")
        if V.ndim != 2 or V.shape[0] != self.shape[0]:
            raise ValueError(f"V must have shape ({self.shape[0]}, k), got {tuple(V.shape)}.")
        scaled = {name: fn(s) for name, s in self.eigenvalues.items()}
        return self.kfac._apply_layers(V, lambda layer, M: self._in_basis(layer.name, M,
                                                                            scaled[layer.name]))

    def _in_basis(self, name: str, M: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        e = self._basis[name]
        QG, QA = e.G_eigenvectors, e.A_eigenvectors
        return QG @ ((QG.T @ M @ QA) * scale) @ QA.T

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.kfac._apply_layers(
            V, lambda layer, M: self._in_basis(layer.name, M, self.eigenvalues[layer.name]))

    # ------------------------------------------------------------------ structure
    def trace(self) -> float:
        """``tr E = Σ s`` (no products)."""
        return float(sum(s.sum() for s in self.eigenvalues.values()))

    def _singular_layers(self) -> list[str]:
        top = max(float(s.max()) for s in self.eigenvalues.values())
        return [name for name, s in self.eigenvalues.items() if float(s.min()) <= 1e-12 * top]

    def logdet(self, damping: float = 0.0) -> float:
        """``log det(E + damping I) = Σ log(s + damping)``; a singular ``E`` without damping raises
        ``ValueError``."""
        d = self.kfac._check_damping(damping)
        if d == 0:
            bad = self._singular_layers()
            if bad:
                raise ValueError(f"EK-FAC is singular (layer(s) {bad} have a zero eigenvalue): "
                                 f"log det is -inf. Pass damping > 0 for log det(E + damping I).")
        return float(sum(torch.log(s + d).sum() for s in self.eigenvalues.values()))

    def inverse(self, damping: float = 0.0) -> EKFACInverseOperator:
        """The operator ``(E + damping I)⁻¹ = Q diag(1/(s + damping)) Qᵀ`` (exact; no products).
        A singular ``E`` with ``damping=0`` raises ``ValueError``."""
        d = self.kfac._check_damping(damping)
        if d == 0:
            bad = self._singular_layers()
            if bad:
                raise ValueError(f"EK-FAC is singular (layer(s) {bad} have a zero eigenvalue) and "
                                 f"has no inverse; pass damping > 0.")
        return EKFACInverseOperator(self, d)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", kind={self.kind!r}, refit={self.refit}, "
                f"{len(self.eigenvalues)} layers, {self.num_samples} samples)")


class EKFACInverseOperator(CurvatureOperator):
    """``(E + damping I)⁻¹`` for an :class:`EKFACOperator` ``E``; PSD. Build it with
    ``EKFACOperator.inverse(damping)``."""

    def __init__(self, ekfac: EKFACOperator, damping: float):
        super().__init__(ekfac.shape[0], ekfac.dtype, ekfac.device, is_psd=True)
        self.ekfac, self.damping = ekfac, damping
        self._inverses = {
            name: KroneckerInverse(e.G_eigenvectors, e.A_eigenvectors,
                                   ekfac.eigenvalues[name] + damping)
            for name, e in ekfac._basis.items()}

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.ekfac.kfac._apply_layers(
            V, lambda layer, M: self._inverses[layer.name].matmul(M))
