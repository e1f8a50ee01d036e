"""K-FAC: the Kronecker-factored approximation of the GGN / Fisher of a model, as an operator.

For a layer ``s = W a`` applied to the rows ``a`` of its input (the bias folded in as a last
column of ``W`` with a constant 1 appended to ``a``), the curvature block of ``vec(W)`` is
approximated by a Kronecker product (Martens & Grosse 2015, "Optimizing neural networks with
Kronecker-factored approximate curvature", §3)::

    K_l = A ⊗ G,    A = (1/R) Σ_r a_r a_rᵀ,    G = Σ_r w_r g_r g_rᵀ

``r`` runs over the ``R`` rows of the layer over the whole data set: one per sample for
``nn.Linear`` on ``(N, d)``; one per sample and extra position for sequence inputs ``(N, T, d)``;
one per sample and spatial location for ``nn.Conv2d``, whose rows ``a_r`` are the input patches
(``unfold``) and ``g_r`` the output gradients at that location (the "expand" convention of Grosse &
Martens 2016, "A Kronecker-factored approximate Fisher matrix for convolution layers", §3.1,
spatially uncorrelated derivatives). ``K = blockdiag(K_l)`` over layers; a product
``K v`` is ``G V_l A`` for each layer with ``V_l`` the ``(out, in [+1])`` matrix of the layer's
part of ``v``.

``G`` comes from the loss of the model outputs ``z``. The operator approximates the curvature of
the same loss :class:`GGNOperator` and :class:`FisherOperator` use,
``L(θ) = Σ_b w_b L_b(z_b)`` (``w_b = n_b/N`` for ``reduction="mean"``, ``1/N`` for ``"sum"``):

* ``kind="type2"``: the exact output Hessian ``H_b = ∇²_z L_b = Σ_m S_m S_mᵀ`` is factored and each
  column ``S_m`` backpropagated: ``G = Σ_b w_b Σ_m Σ_r (J_rᵀ S_m)(J_rᵀ S_m)ᵀ`` (Botev, Ritter &
  Barber 2017, "Practical Gauss-Newton optimisation for deep learning"; curvlinops' KFAC type-2).
  ``S``: cross-entropy ``diag(p) − p pᵀ = S Sᵀ`` with ``S = diag(√p) − p √pᵀ`` per position;
  squared error ``2c I``; BCE with logits ``c diag(p(1−p))`` (``c`` the reduction's factor).
  (The square roots, the draws, the term counts and the refused options of each loss are those of
  :mod:`hesse.operators.likelihoods`, shared with :class:`FisherOperator`.)
* ``kind="empirical"``: ``g`` the gradient of each likelihood term's loss at the observed targets.
* ``kind="mc"``: the same with targets drawn from the model's predictive distribution
  (``mc_samples`` draws, seeded like :class:`FisherOperator`); its expectation is the type-2 ``G``.

Likelihood terms: a loss ``L_b = c_b Σ_t ℓ_t`` over ``R_b`` terms, ``c_b = 1/R_b`` for
``reduction="mean"`` and 1 for ``"sum"``. Cross-entropy has one term per sample and extra position
(class dimension 1, positions with ``ignore_index`` excluded); squared error and BCE one per row of
the last (feature) axis; other losses one per sample. Extra axes are flattened into terms, so for a
sequence model each position counts as a sample. For BCE with ``reduction="mean"`` over ``D > 1``
features a row's loss ``(1/D) Σ_e ℓ_e`` is a tempered likelihood; the MC factor is multiplied by
``D`` so that its expectation is still the type-2 factor.

The rows (``nn.Linear`` inputs and ``nn.Conv2d`` patches, padded as the layer pads) and the
damped inverses come from ``hesse.operators.kronecker``, shared with the optimizer
:class:`hesse.optim.KFAC`; :meth:`KFACOperator.inverse` offers the exact damping
``(K + λ I)⁻¹`` and the factored damping of Martens & Grosse (2015, §6.3) that the optimizer uses.

Exactness: for one datum (one row per layer), ``kind="type2"`` equals the GGN's diagonal blocks
(the whole GGN for a single layer) and ``kind="empirical"``/``"mc"`` equal those of
:class:`FisherOperator`. Cost: one forward pass and, per batch, ``C`` backward passes for type-2
(``C`` outputs per term), ``mc_samples`` for MC, one for empirical; then per layer
``O(d_in² + d_out²)`` memory and ``O(k (d_in d_out)(d_in + d_out))`` per block of ``k`` products.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from .._progress import Progress
from .._validation import all_finite, check_seed
from .base import CurvatureOperator
from .data import EMPTY_DATA_HINT
from .evaluation import ModelLoss, disconnected_message
from .fisher import mc_seed
from .kronecker import (
    DAMPING_MODES,
    FactorEigh,
    KroneckerInverse,
    damped_kronecker_inverse,
    factor_eigh,
    input_rows,
    output_gradient_scale,
    output_rows,
    supports_layer,
)
from .likelihoods import Likelihood, likelihood_of, require_likelihood

_KINDS = ("type2", "empirical", "mc")
# what each kind reads of the loss (hesse.operators.likelihoods)
_USES = {"type2": "hessian", "mc": "sample", "empirical": "gradient"}
_PD_RTOL = 1e-12  # an eigenvalue below this fraction of the largest counts as zero (rounding)


class _Layer:
    """One supported module and the positions of its selected weight/bias in the parameter list."""

    def __init__(self, name: str, module: nn.Module, weight_index: int | None,
                 bias_index: int | None):
        self.name, self.module = name, module
        self.weight_index, self.bias_index = weight_index, bias_index
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.versions: list[int] = []

    def rows_in(self, x: torch.Tensor) -> torch.Tensor:
        """The rows ``a_r`` (with the selected weight columns and a trailing 1 for the bias)."""
        return input_rows(self.module, x, weight=self.weight_index is not None,
                          bias=self.bias_index is not None)

    def rows_out(self, g: torch.Tensor) -> torch.Tensor:
        """Output gradients as rows ``g_r`` matching :meth:`rows_in`."""
        return output_rows(self.module, g)


class KFACOperator(CurvatureOperator):
    """K-FAC approximation ``blockdiag_l(A_l ⊗ G_l)`` of the GGN (``kind="type2"``) or Fisher
    (``"empirical"``, ``"mc"``) of ``loss_fn(model(x), y)`` over ``data``; PSD.

    Supported layers: ``nn.Linear`` and ``nn.Conv2d`` (``groups=1``). Every selected parameter must
    be the weight or bias of one such layer; select them with ``params`` (names or a predicate, as
    for :class:`HessianOperator`) otherwise. The vector order is that of ``model.parameters()``, as
    in the other operators. The factors are computed once, at construction, with the model in eval
    mode (its modes restored afterwards) and the parameters copied.

    Attributes: ``factors`` ``{layer name: (A, G)}``; ``layer_names``; ``param_names``;
    ``num_samples``. Methods beyond the operator's: :meth:`trace`, :meth:`logdet`,
    :meth:`inverse`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        params: Any = None,
        *,
        kind: str = "type2",
        mc_samples: int = 1,
        seed: int = 0,
        progress: bool = False,
    ):
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}; got {kind!r}.")
        self._likelihood: Likelihood | None = likelihood_of(loss_fn)
        if kind != "empirical" or self._likelihood is not None:
            self._likelihood = require_likelihood(loss_fn, _USES[kind], f"KFACOperator(kind={kind!r})",
                                                  "Use kind='empirical'.")
        if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
            raise ValueError(f"mc_samples must be an integer >= 1, got {mc_samples!r}.")
        self.kind, self.mc_samples, self.seed = kind, mc_samples, check_seed(seed)
        self._problem = ModelLoss(model, loss_fn, data, params)
        p = self._problem
        super().__init__(p.n, p.dtype, p.device, is_psd=True)
        self._layers = _find_layers(p)
        self._eig: dict[str, FactorEigh] = {}
        self.factors = self._compute_factors(progress)

    # ------------------------------------------------------------------ public helpers
    @property
    def param_names(self) -> list[str]:
        return list(self._problem.names)

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self._layers]

    @property
    def num_samples(self) -> int:
        return int(self._problem.num_samples or 0)

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map a flat vector of length n to ``{parameter name: tensor of its shape}``."""
        v = self._as_block(v, "v")
        if v.shape != (self._n,):
            raise ValueError(f"expected a vector of shape ({self._n},), got {tuple(v.shape)}.")
        return dict(zip(self._problem.names, self._problem.unflatten(v)))

    # ------------------------------------------------------------------ factors
    def _compute_factors(self, progress: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:

        p = self._problem
        layers = self._layers
        A_sum: list[torch.Tensor | None] = [None] * len(layers)
        G_sum: list[torch.Tensor | None] = [None] * len(layers)
        rows = [0] * len(layers)
        total = 0
        handles = []

        def make_hook(layer):
            def hook(module, args, output):
                layer.inputs.append(args[0].detach())
                layer.outputs.append(output)
                layer.versions.append(output._version)
            return hook

        try:
            for layer in layers:
                handles.append(layer.module.register_forward_hook(make_hook(layer)))
            with Progress(None, "K-FAC factors", progress) as bar:
                for index, x, y, nb in p.batches():
                    if nb == 0:
                        continue
                    for layer in layers:
                        layer.inputs, layer.outputs, layer.versions = [], [], []
                    params = tuple(q.detach().requires_grad_(True) for q in p.params)
                    with p.mode(), torch.enable_grad():
                        z = p.forward(params, x)
                        cotangents, weight = self._output_cotangents(z, y, nb, index, layers)
                        outputs = [t for layer in layers for t in layer.outputs]
                        # one backward pass per cotangent, accumulated at once: only one set of
                        # output gradients is alive at a time
                        for u in cotangents:
                            gs = iter(torch.autograd.grad(z, outputs, u, retain_graph=True,
                                                          allow_unused=True))
                            for j, layer in enumerate(layers):
                                parts = [next(gs) for _ in layer.outputs]
                                parts = [torch.zeros_like(o) if g is None else g
                                         for o, g in zip(layer.outputs, parts)]
                                if not parts:
                                    continue
                                g = torch.cat([layer.rows_out(t) for t in parts])
                                if not all_finite(g):
                                    raise ValueError(_nonfinite_rows("output gradients", layer, index))
                                G = weight * (g.T @ g)
                                G_prev = G_sum[j]
                                G_sum[j] = G if G_prev is None else G_prev + G
                        del z, outputs
                    for j, layer in enumerate(layers):
                        if not layer.inputs:
                            continue
                        a = torch.cat([layer.rows_in(t) for t in layer.inputs])
                        if not all_finite(a):
                            raise ValueError(_nonfinite_rows("inputs", layer, index))
                        A = a.T @ a
                        A_prev = A_sum[j]
                        A_sum[j] = A if A_prev is None else A_prev + A
                        rows[j] += a.shape[0]
                    for layer in layers:
                        layer.inputs, layer.outputs, layer.versions = [], [], []
                    total += nb
                    bar.update(1)
        finally:
            for h in handles:
                h.remove()
            for layer in layers:
                layer.inputs, layer.outputs, layer.versions = [], [], []
        if total == 0:
            raise ValueError(f"the data set is empty: no batch with samples was found. {EMPTY_DATA_HINT}")
        p.settle_reduction()
        p.num_samples = total
        unused = [layer.name for layer, r in zip(layers, rows) if r == 0]
        if unused:
            raise ValueError(f"layer(s) {unused} were not called by the model's forward pass; "
                             f"exclude their parameters with params=.")
        out = {}
        for layer, A_total, G_total, r in zip(layers, A_sum, G_sum, rows):
            # a layer with rows has inputs and, through its outputs, at least one cotangent
            if A_total is None or G_total is None:
                raise RuntimeError(f"K-FAC recorded no factor for layer {layer.name!r}.")
            out[layer.name] = (A_total / r, G_total / total)
        return out

    def _output_cotangents(self, z, y, nb, index, layers):
        """The vectors ``u`` (shaped like ``z``) to backpropagate to the layers' outputs, and the
        weight of the outer products of the results (before the division by N)."""
        p = self._problem
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            raise ValueError("the model's output must be a tensor that depends on the selected "
                             "parameters.")
        for layer in layers:
            if any(t._version != v for t, v in zip(layer.outputs, layer.versions)):
                raise ValueError(f"the output of layer {layer.name!r} is modified in place later in "
                                 f"the forward pass (e.g. an activation with inplace=True); K-FAC "
                                 f"needs the gradient with respect to it. Use inplace=False.")
        zd = z.detach()
        p.observe_reduction(zd, y, nb)
        loss_fn = cast(Callable, p.loss_fn)  # KFACOperator requires loss_fn (checked at construction)
        loss = loss_fn(zd.clone().requires_grad_(True), y)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar per batch; got "
                             f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss)}"
                             f" on batch {index}. Use reduction='mean' or 'sum'.")
        if not torch.isfinite(loss):
            raise ValueError(f"the loss is not finite ({float(loss)}) on batch {index}; check that "
                             f"batch's inputs and targets, and the model's outputs.")
        if not loss.requires_grad:
            raise ValueError(disconnected_message("loss_fn", index))
        reduction = "sum" if p.reduction == "sum" else "mean"  # undecided only for one sample
        batch_weight = 1.0 if reduction == "sum" else float(nb)
        lik = self._likelihood
        if self.kind == "type2":
            assert lik is not None  # type2 needs one, checked at construction
            cotangents: Any = lik.hessian_sqrt_columns(zd, y, reduction)
            weight = batch_weight
        else:
            if self.kind == "empirical":
                targets = [y]
                fix = 1.0
            else:
                assert lik is not None  # mc needs one, checked at construction
                gen = torch.Generator(device=zd.device)
                gen.manual_seed(mc_seed(self.seed, index))
                targets, fix = lik.kfac_draws(zd, y, reduction, self.mc_samples, gen)
            # other losses (empirical only): one term per sample
            terms = lik.num_terms(zd, y) if lik is not None else (zd.shape[0] if zd.ndim >= 1 else 1)
            cotangents = []
            for t in targets:
                zz = zd.clone().requires_grad_(True)
                cotangents.append(torch.autograd.grad(loss_fn(zz, t), zz)[0])
            # the rows' weight of hesse.optim.KFAC's factors too (one factor convention)
            weight = output_gradient_scale(reduction, nb, terms) ** 2 * fix / len(targets)
        return cotangents, weight

    # ------------------------------------------------------------------ products
    def _split(self, V: torch.Tensor) -> tuple[list[torch.Tensor], int]:
        return self._problem.unflatten_block(V), V.shape[1]

    def _apply_layers(self, V: torch.Tensor, fn) -> torch.Tensor:
        """Apply ``fn(layer, M)`` to each layer's block ``M`` of shape (k, out, in [+1])."""
        p = self._problem
        Vs, k = self._split(V)
        out = [None] * len(Vs)
        for layer in self._layers:
            parts = []
            if layer.weight_index is not None:
                w = Vs[layer.weight_index]
                parts.append(w.reshape(k, w.shape[1], -1))
            if layer.bias_index is not None:
                parts.append(Vs[layer.bias_index].unsqueeze(-1))
            M = fn(layer, torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0])
            if layer.weight_index is not None:
                nw = parts[0].shape[-1]
                out[layer.weight_index] = M[..., :nw].reshape(Vs[layer.weight_index].shape)
            if layer.bias_index is not None:
                out[layer.bias_index] = M[..., -1]
        return p.flatten_block(out, k).T

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        def block(layer, M):
            A, G = self.factors[layer.name]
            return G @ M @ A

        return self._apply_layers(V, block)

    # ------------------------------------------------------------------ structure
    def trace(self) -> float:
        """``tr K = Σ_l tr(A_l) tr(G_l)`` (exact for the Kronecker products; no products)."""
        return float(sum(torch.trace(A) * torch.trace(G) for A, G in self.factors.values()))

    def _eigh(self, name: str) -> FactorEigh:
        if name not in self._eig:
            self._eig[name] = factor_eigh(*self.factors[name])
        return self._eig[name]

    def _check_damping(self, damping: Any) -> float:
        if isinstance(damping, bool) or not isinstance(damping, (int, float)) or not damping >= 0 \
                or damping == float("inf"):
            raise ValueError(f"damping must be a finite number >= 0, got {damping!r}.")
        tiny = torch.finfo(self.dtype).tiny
        if 0 < damping < tiny:
            # below the smallest normal number the damping rounds away (or 1/damping overflows)
            # in the operator's dtype: a singular K would stay singular
            raise ValueError(f"damping {damping!r} is below the smallest normal {self.dtype} "
                             f"({tiny:.3g}), where it rounds to 0; pass 0 or a damping >= {tiny:.3g} "
                             f"(typically 1e-8 to 1e-2 times the trace / n).")
        return float(damping)

    def _singular_layers(self) -> list[str]:
        bad = []
        for name in self.factors:
            lA, _, lG, _ = self._eigh(name)
            if float(lA[0]) <= _PD_RTOL * float(lA[-1]) or float(lG[0]) <= _PD_RTOL * float(lG[-1]):
                bad.append(name)
        return bad

    def logdet(self, damping: float = 0.0) -> float:
        """``log det(K + damping I) = Σ_l Σ_ij log(λ_i(G_l) λ_j(A_l) + damping)``; with
        ``damping=0`` this is ``Σ_l d_G logdet A_l + d_A logdet G_l``. A singular ``K`` without
        damping raises ``ValueError``."""
        d = self._check_damping(damping)
        if d == 0:
            bad = self._singular_layers()
            if bad:
                raise ValueError(f"K-FAC is singular (a factor of layer(s) {bad} has a zero "
                                 f"eigenvalue): log det is -inf. Pass damping > 0 for "
                                 f"log det(K + damping I).")
        total = 0.0
        for name in self.factors:
            lA, _, lG, _ = self._eigh(name)
            total += float(torch.log(torch.outer(lG, lA) + d).sum())
        return total

    def inverse(self, damping: float = 0.0, *,
                damping_mode: str = "exact") -> KFACInverseOperator:
        """The operator ``(K + damping I)⁻¹`` from the factors' (cached) eigendecompositions
        ``A = Q_A Λ_A Q_Aᵀ``, ``G = Q_G Λ_G Q_Gᵀ``.

        ``damping_mode="exact"`` (default): exact for the block-diagonal Kronecker product,
        ``(A ⊗ G + d I)⁻¹ vec(V) = vec(Q_G [(Q_Gᵀ V Q_A) / (λ_G λ_Aᵀ + d)] Q_Aᵀ)``. A singular
        ``K`` with ``damping=0`` raises ``ValueError``.
        ``damping_mode="factored"``: ``(A + π√d I)⁻¹ ⊗ (G + √d/π I)⁻¹`` per layer, the factored
        Tikhonov damping of Martens & Grosse (2015, §6.3) that :class:`hesse.optim.KFAC`
        preconditions with (``damping > 0`` required).
        """
        d = self._check_damping(damping)
        if damping_mode not in DAMPING_MODES:
            raise ValueError(f"damping_mode must be 'exact' or 'factored', got {damping_mode!r}.")
        if d == 0 and damping_mode == "factored":
            raise ValueError("damping_mode='factored' needs damping > 0 (it splits √damping "
                             "between the factors); pass damping > 0 or damping_mode='exact'.")
        if d == 0:
            bad = self._singular_layers()
            if bad:
                raise ValueError(f"K-FAC is singular (a factor of layer(s) {bad} has a zero "
                                 f"eigenvalue) and has no inverse; pass damping > 0.")
        return KFACInverseOperator(self, d, damping_mode)

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", kind={self.kind!r}, {len(self._layers)} layers, "
                f"{self.num_samples} samples)")


class KFACInverseOperator(CurvatureOperator):
    """``(K + damping I)⁻¹`` for a :class:`KFACOperator` ``K`` (or its factored-damping
    approximation), from the factors' eigendecompositions; PSD. Build it with
    ``KFACOperator.inverse(damping, damping_mode=...)``."""

    def __init__(self, kfac: KFACOperator, damping: float, damping_mode: str = "exact"):
        super().__init__(kfac.shape[0], kfac.dtype, kfac.device, is_psd=True)
        self.kfac, self.damping, self.damping_mode = kfac, damping, damping_mode
        self._inverses: dict[str, KroneckerInverse] = {
            name: damped_kronecker_inverse(kfac._eigh(name), damping, damping_mode=damping_mode)
            for name in kfac.factors}

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return self.kfac._apply_layers(V, lambda layer, M: self._inverses[layer.name].matmul(M))


# ---------------------------------------------------------------------- layers
def _nonfinite_rows(what: str, layer: _Layer, index: int) -> str:
    """A factor's rows are not finite where the loss is: the curvature is not defined there (the
    model operators refuse the same batch through its gradient)."""
    return (f"KFACOperator: the {what} of layer {layer.name!r} are not finite on batch {index}, "
            f"although the loss there is finite: an infinite or NaN input reaches that layer (its "
            f"output squashed later, e.g. by tanh or a clamp). Check that batch's inputs, or leave "
            f"the layer out with params=[...].")


def _find_layers(p: ModelLoss) -> list[_Layer]:
    owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
    for mname, module in p.model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            owners.setdefault(id(param), []).append((mname, module, pname))
    selected = dict(p.model.named_parameters())
    layers: dict[int, _Layer] = {}
    unsupported, shared = [], []
    for index, name in enumerate(p.names):
        found = owners.get(id(selected[name]), [])
        if len(found) > 1:
            shared.append(f"{name} (in {', '.join(m or '<root>' for m, _, _ in found)})")
            continue
        mname, module, pname = found[0]
        if not supports_layer(module) or pname not in ("weight", "bias"):
            unsupported.append(f"{name} ({type(module).__name__})")
            continue
        layer = layers.setdefault(id(module), _Layer(mname or "<root>", module, None, None))
        if pname == "weight":
            layer.weight_index = index
        else:
            layer.bias_index = index
    if shared:
        raise ValueError(f"K-FAC gives each parameter one layer; these are shared between "
                         f"modules: {shared}. Exclude them with params=.")
    if unsupported:
        raise ValueError(
            f"K-FAC supports nn.Linear and nn.Conv2d (groups=1) layers; these parameters are in "
            f"none: {unsupported}. Select the supported layers' parameters with params=[names] "
            f"or a predicate, or use GGNOperator/FisherOperator for the whole model.")
    return sorted(layers.values(), key=lambda layer: min(
        i for i in (layer.weight_index, layer.bias_index) if i is not None))
