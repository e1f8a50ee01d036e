"""The losses that are negative log-likelihoods, one class each: what curvature code needs of them.

The Monte-Carlo Fisher (:class:`FisherOperator` ``kind="mc"``), K-FAC (:class:`KFACOperator`
``kind="type2"`` and ``"mc"``) and :class:`hesse.optim.NaturalGradient` read a loss as a
likelihood ``p(y | z)`` of the model outputs ``z``. Each supported ``nn`` loss is described once,
here (Martens 2020, "New insights and perspectives on the natural gradient method", §9.2):

* :class:`Categorical` — ``nn.CrossEntropyLoss``: classes on dimension 1 of ``(N, C, d_1, ...)``
  (or the last of ``(C,)``), one categorical term per sample and extra position; loss Hessian
  ``diag(p) − p pᵀ = S Sᵀ`` with ``S = diag(√p) − p √pᵀ`` per position.
* :class:`Gaussian` — ``nn.MSELoss``: ``(z − y)² = −log N(y; z, ½) + const`` per element, one
  term per row of the last (feature) axis; loss Hessian ``2 I``.
* :class:`Bernoulli` — ``nn.BCEWithLogitsLoss``: one Bernoulli per element, one term per row of
  the last axis; loss Hessian ``diag(σ(z)(1 − σ(z)))``.

Each says how to draw targets (:meth:`Likelihood.sample`), the loss Hessian's square root
(:meth:`Likelihood.hessian_sqrt_columns`), how many likelihood terms a sample and a batch hold,
and which options of the loss it refuses for which use (:meth:`Likelihood.check`): class weights
change the mean's divisor and the likelihood; label smoothing keeps the Hessian in ``z`` (a
linear change of the targets) but is no negative log-likelihood to sample from.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["Bernoulli", "Categorical", "Gaussian", "Likelihood", "likelihood_of",
           "require_likelihood", "LIKELIHOOD_LOSSES"]

#: uses of a likelihood: ``"sample"`` (targets drawn from it: MC Fisher, MC K-FAC),
#: ``"hessian"`` (its Hessian in the outputs: type-2 K-FAC), ``"gradient"`` (observed-target
#: gradients with K-FAC's per-term weighting: empirical K-FAC)
USES = ("sample", "hessian", "gradient")


class Likelihood:
    """One loss read as ``−log p(y | z)``: subclasses say how for their ``nn`` loss type."""

    loss_type: ClassVar[type]

    def __init__(self, loss_fn: Any):
        self.loss_fn = loss_fn

    # ---------------------------------------------------------------- what is refused
    def options_not_likelihood(self) -> list[str]:
        """Options set on the loss under which it is no negative log-likelihood."""
        return []

    def options_reweighting(self) -> list[str]:
        """Options set on the loss that reweight its terms (the mean's divisor changes)."""
        return []

    def check(self, use: str, who: str) -> None:
        """Refuse the loss's options that ``use`` (one of :data:`USES`) cannot honour."""
        if use == "sample":
            bad = self.options_not_likelihood()
            if bad:
                raise ValueError(
                    f"{who} samples targets from the likelihood whose negative log is the loss; "
                    f"{type(self.loss_fn).__name__} with {', '.join(bad)} set is not such a loss. "
                    f"Use kind='empirical', GGNOperator, or the loss without {', '.join(bad)}.")
            return
        bad = self.options_reweighting()
        if bad:
            raise ValueError(
                f"{who} does not support {type(self.loss_fn).__name__} with class weights "
                f"({', '.join(bad)}): they change the reduction's divisor and the likelihood. Use "
                f"the unweighted loss.")

    # ---------------------------------------------------------------- structure
    def terms_per_sample(self, z: torch.Tensor) -> int:
        """``K`` of the Fisher: independent likelihood terms in one sample's loss (the entries of
        ``z[i]``: one Gaussian or Bernoulli per element)."""
        return z[0].numel() if z.ndim > 1 else 1

    def num_terms(self, z: torch.Tensor, y: Any) -> int:
        """``R_b`` of K-FAC: the rows of the last (feature) axis in the batch ``(z, y)``, the
        divisor of ``reduction="mean"`` per row (see :mod:`hesse.operators.kfac`)."""
        return z.numel() // (z.shape[-1] if z.ndim >= 2 else 1)

    # ---------------------------------------------------------------- derivatives and draws
    def sample(self, z: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
        """``num`` draws of the targets from ``p(y | z)``, stacked on a leading dimension."""
        raise TypeError(f"{type(self).__name__} defines no sampler")

    def hessian_diagonal(self, z: torch.Tensor) -> torch.Tensor:
        """The loss Hessian per element, for the losses whose Hessian is diagonal in ``z``."""
        raise TypeError(f"the loss Hessian of {type(self).__name__} is not diagonal in the outputs")

    def hessian_sqrt_columns(self, z: torch.Tensor, y: Any, reduction: str) -> Iterator[torch.Tensor]:
        """Tensors ``S_m`` shaped like ``z`` with ``∇²_z loss(z, y) = Σ_m vec(S_m) vec(S_m)ᵀ``,
        block-diagonal over the terms; one at a time (``C`` of them, the size of ``z`` each)."""
        c = 1.0 / z.numel() if reduction == "mean" else 1.0
        diag = torch.sqrt(c * self.hessian_diagonal(z))
        if z.ndim < 2:
            yield diag
            return
        for m in range(z.shape[-1]):
            col = torch.zeros_like(z)
            col[..., m] = diag[..., m]
            yield col

    def kfac_draws(self, z: torch.Tensor, y: Any, reduction: str, num: int,
                   generator: torch.Generator) -> tuple[list[torch.Tensor], float]:
        """Draws for K-FAC's MC factor and the factor that makes its expectation the type-2 one
        (the draws of :meth:`sample`, shared with the MC Fisher for the same seed)."""
        return list(self.sample(z, num, generator).unbind(0)), 1.0


class Categorical(Likelihood):
    """``nn.CrossEntropyLoss`` on logits, classes on dimension 1 (see the module docs)."""

    loss_type = nn.CrossEntropyLoss

    def options_not_likelihood(self) -> list[str]:
        out = self.options_reweighting()
        if float(getattr(self.loss_fn, "label_smoothing", 0.0) or 0.0) != 0.0:
            out.append("label_smoothing")
        return out

    def options_reweighting(self) -> list[str]:
        return ["weight"] if getattr(self.loss_fn, "weight", None) is not None else []

    def _class_dim(self, z: torch.Tensor) -> int:
        return 1 if z.ndim > 1 else 0

    def terms_per_sample(self, z: torch.Tensor) -> int:
        # one categorical term per position, over the C classes
        return z[0].numel() // z.shape[1] if z.ndim > 1 else 1

    def mask(self, z: torch.Tensor, y: Any) -> torch.Tensor | None:
        """Positions that count (targets != ignore_index), the shape of z without the classes."""
        if isinstance(y, torch.Tensor) and not y.is_floating_point():
            return torch.ne(y, int(self.loss_fn.ignore_index))
        return None

    def num_terms(self, z: torch.Tensor, y: Any) -> int:
        mask = self.mask(z, y)
        count = int(mask.sum()) if mask is not None else z.numel() // z.shape[self._class_dim(z)]
        return max(count, 1)

    def sample(self, z: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
        zd = z.detach()
        logits = zd.movedim(1, -1) if zd.ndim > 2 else zd
        probs = torch.softmax(logits, dim=-1).reshape(-1, logits.shape[-1])
        y = torch.multinomial(probs, num, replacement=True, generator=generator)  # (rows, num)
        return y.T.reshape(num, *logits.shape[:-1])

    def hessian_sqrt_columns(self, z: torch.Tensor, y: Any, reduction: str) -> Iterator[torch.Tensor]:
        cdim = self._class_dim(z)
        prob = torch.softmax(z, dim=cdim)
        mask = self.mask(z, y)
        c = 1.0 / self.num_terms(z, y) if reduction == "mean" else 1.0
        root = torch.sqrt(c * prob)
        if mask is not None:
            root = root * mask.unsqueeze(cdim).to(z.dtype)
        for m in range(z.shape[cdim]):
            onehot = torch.zeros_like(z)
            onehot.select(cdim, m).fill_(1.0)
            yield root.narrow(cdim, m, 1) * (onehot - prob)

    def kfac_draws(self, z, y, reduction, num, generator):
        draws = self.sample(z, num, generator)
        mask = self.mask(z, y)
        if mask is not None:  # ignored positions stay ignored
            draws = torch.where(mask, draws, torch.full_like(draws, self.loss_fn.ignore_index))
        return list(draws.unbind(0)), 1.0


class Gaussian(Likelihood):
    """``nn.MSELoss``: ``N(z, ½)`` per element (see the module docs)."""

    loss_type = nn.MSELoss

    def sample(self, z: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
        zd = z.detach()
        noise = torch.randn((num, *zd.shape), generator=generator, device=zd.device, dtype=zd.dtype)
        return zd + 0.5**0.5 * noise

    def hessian_diagonal(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full_like(z, 2.0)

    def kfac_draws(self, z, y, reduction, num, generator):
        # a row's loss ‖z − y‖²/D (mean) or ‖z − y‖² (sum): Gaussian with variance D/2 or 1/2;
        # the shared draws have variance 1/2, so their noise is rescaled
        draws = self.sample(z, num, generator)
        per_row = z.shape[-1] if z.ndim >= 2 else 1
        var = per_row / 2.0 if reduction == "mean" else 0.5
        zd = z.detach()
        return list((zd + (var / 0.5) ** 0.5 * (draws - zd)).unbind(0)), 1.0


class Bernoulli(Likelihood):
    """``nn.BCEWithLogitsLoss``: one Bernoulli per element (see the module docs)."""

    loss_type = nn.BCEWithLogitsLoss

    def options_reweighting(self) -> list[str]:
        return [name for name in ("weight", "pos_weight")
                if getattr(self.loss_fn, name, None) is not None]

    def options_not_likelihood(self) -> list[str]:
        return self.options_reweighting()

    def sample(self, z: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
        zd = z.detach()
        u = torch.rand((num, *zd.shape), generator=generator, device=zd.device, dtype=zd.dtype)
        return (u < torch.sigmoid(zd)).to(zd.dtype)

    def hessian_diagonal(self, z: torch.Tensor) -> torch.Tensor:
        prob = torch.sigmoid(z)
        return prob * (1 - prob)

    def kfac_draws(self, z, y, reduction, num, generator):
        # a row's mean (1/D) Σ_e ℓ_e over D > 1 features is a tempered likelihood: the factor D
        # makes the MC factor's expectation the type-2 one
        fix = float(z.shape[-1]) if reduction == "mean" and z.ndim >= 2 else 1.0
        return list(self.sample(z, num, generator).unbind(0)), fix


_CLASSES: tuple[type[Likelihood], ...] = (Categorical, Gaussian, Bernoulli)
LIKELIHOOD_LOSSES: tuple[type, ...] = tuple(c.loss_type for c in _CLASSES)


def likelihood_of(loss_fn: Any) -> Likelihood | None:
    """The :class:`Likelihood` of ``loss_fn``, or ``None`` if it is none hesse knows."""
    for cls in _CLASSES:
        if isinstance(loss_fn, cls.loss_type):
            return cls(loss_fn)
    return None


def require_likelihood(loss_fn: Callable | None, use: str, who: str, fix: str) -> Likelihood:
    """The likelihood of ``loss_fn`` checked for ``use``; a ``ValueError`` naming ``fix`` if the
    loss is no likelihood hesse knows or has options ``use`` cannot honour."""
    found = likelihood_of(loss_fn)
    if found is None:
        raise ValueError(
            f"{who} needs the loss's likelihood (or its Hessian), which hesse knows for "
            f"{', '.join(c.__name__ for c in LIKELIHOOD_LOSSES)}; got {type(loss_fn).__name__}. "
            f"{fix}")
    found.check(use, who)
    return found
