"""The Laplace approximation of a network's posterior, on hesse's curvature operators.

With a likelihood ``p(y | f(x; θ))`` whose negative log is the loss, a prior ``N(0, λ⁻¹ I)`` on
the selected parameters and a trained (MAP) point ``θ*``, the posterior is approximated by
(MacKay 1992; Daxberger et al. 2021, "Laplace Redux", §2)::

    q(θ) = N(θ*, Σ),    Σ⁻¹ = P = H / T + λ I,

``H`` the GGN of the summed negative log-likelihood ``Σ_i −log p(y_i | f(x_i; θ))`` at ``θ*`` in
the chosen structure, ``T`` the temperature. hesse's operators use the mean loss
``L = (1/N) Σ_i ℓ_i``; the two differ by a known factor, ``H = N κ ∇²_GGN L``, with ``κ = K``
(terms per sample, 1 for classification with one label) for ``reduction="mean"`` and 1 for
``"sum"``, times ``1/(2σ²)`` for the squared error (the Gaussian likelihood ``N(f, σ²)``;
``σ = sigma_noise``).

Every structure is a symmetric matrix with a known eigendecomposition ``H = U diag(h) Uᵀ``:
``"full"`` (the dense GGN, ``eigh``), ``"diag"`` (its exact diagonal, ``U = I``), ``"kfac"``
(K-FAC's Kronecker eigenbasis and eigenvalues), ``"ekfac"`` (the same basis, refitted
eigenvalues) and ``"lowrank"`` (the top-k eigenpairs by Lanczos, the other eigenvalues 0). So ``log det P = Σ log(h/T + λ)``, ``Σ^α V = U diag((h/T + λ)^α) Uᵀ V`` and the
marginal likelihood is cheap for any ``λ`` once ``H`` is known.

Log marginal likelihood (the Laplace evidence; MacKay 1992, Eq. 2.11; Immer et al. 2021)::

    log p(D | λ) ≈ log p(D | θ*) / T − ½ (log det P − n log λ) − ½ λ ‖θ*‖²

exact for a linear-Gaussian model at its MAP point. Predictive at ``x``: ``"glm"`` the
linearized network ``f(x; θ) ≈ f(x; θ*) + J (θ − θ*)`` (Immer, Korzepa & Bauer 2021), its
Gaussian ``N(f(x; θ*), J Σ Jᵀ)`` in closed form for regression (plus ``σ²``) and by Monte-Carlo
through the softmax for classification; ``"probit"`` the same Gaussian through the softmax with
the probit approximation ``softmax(f / sqrt(1 + π/8 diag(J Σ Jᵀ)))`` (MacKay 1992; Daxberger et
al. 2021, §3); ``"mc"`` the network itself at samples ``θ ~ q``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from torch import nn
from torch.func import jacrev

from ..operators import EKFACOperator, GGNOperator, KFACOperator, ggn_diagonal
from ..operators.evaluation import ModelLoss
from ..spectrum import eigsh

__all__ = ["CURVATURES", "Laplace", "MarginalLikelihoodFit"]

CURVATURES = ("kfac", "ekfac", "diag", "full", "lowrank")
PREDICTIVE_METHODS = ("glm", "probit", "mc")
_LOSSES = (nn.CrossEntropyLoss, nn.BCEWithLogitsLoss, nn.MSELoss)
_LIKELIHOODS = {nn.CrossEntropyLoss: "classification", nn.BCEWithLogitsLoss: "binary",
                nn.MSELoss: "regression"}
_LOG_LAMBDA_BOUNDS = (-8.0, 8.0)  # natural-log bounds on λ (and σ) for the marglik search


@dataclass(frozen=True)
class _Spectrum:
    """``H = U diag(values) Uᵀ``; ``apply(V, f)`` is ``U diag(f(values)) Uᵀ V``."""

    values: torch.Tensor
    apply: Callable[[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class MarginalLikelihoodFit:
    """Result of :meth:`Laplace.optimize_prior_precision`."""

    prior_precision: float
    sigma_noise: float | None
    log_marginal_likelihood: float
    method: str
    message: str


class Laplace:
    """Laplace approximation ``N(θ*, (H/T + λ I)⁻¹)`` of ``model``'s posterior (module docstring).

    Parameters
    ----------
    model : nn.Module
        The trained network; its current parameters are ``θ*``.
    loss_fn : nn.CrossEntropyLoss | nn.BCEWithLogitsLoss | nn.MSELoss
        Classification (categorical likelihood on logits, class dimension 1), binary or
        multi-label classification (a Bernoulli per output, ``likelihood="binary"``) or regression
        (Gaussian likelihood with standard deviation ``sigma_noise``), reduction ``"mean"`` or
        ``"sum"``, without class weights, ``pos_weight`` or label smoothing.
    data : iterable of (inputs, targets) batches, or one such pair
        The training data the curvature and the likelihood are summed over.
    curvature : {"kfac", "ekfac", "diag", "full", "lowrank"}
        Structure of the GGN: K-FAC, EK-FAC (both ``kind="type2"``), its exact diagonal, the
        dense matrix (``n x n``; small models and ``subset="last_layer"``), or its top ``rank``
        eigenpairs by Lanczos (:func:`hesse.eigsh`; the rest of the spectrum taken as 0).
    subset : "all" | "last_layer" | parameter names or predicate
        The parameters that get a posterior; the others stay at their values. ``"last_layer"``
        is the last ``nn.Linear`` in ``model.modules()``.
    prior_precision : float > 0
        The precision ``λ`` of the isotropic Gaussian prior ``N(0, λ⁻¹ I)`` on the parameters
        (tune it with :meth:`optimize_prior_precision`).
    temperature : float > 0
        Divides the likelihood term: the posterior precision is ``H / temperature + λ I``
        (cold posteriors below 1).
    sigma_noise : float > 0
        Observation noise of regression; ignored for classification.
    rank : int
        Eigenpairs kept by ``curvature="lowrank"``.

    Use :meth:`fit` once, then :meth:`log_marginal_likelihood`, :meth:`optimize_prior_precision`,
    :meth:`sample`, :meth:`predictive`.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, data: Any, curvature: str = "kfac",
                 subset: Any = "all", prior_precision: float = 1.0, temperature: float = 1.0,
                 sigma_noise: float = 1.0, *, rank: int = 20):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
        if not isinstance(loss_fn, _LOSSES):
            raise ValueError(f"Laplace needs a likelihood loss: nn.CrossEntropyLoss "
                             f"(classification), nn.BCEWithLogitsLoss (binary) or nn.MSELoss "
                             f"(regression); got "
                             f"{type(loss_fn).__name__}.")
        if getattr(loss_fn, "weight", None) is not None or \
                getattr(loss_fn, "pos_weight", None) is not None or \
                float(getattr(loss_fn, "label_smoothing", 0.0) or 0.0) != 0.0:
            raise ValueError(f"Laplace needs the loss to be a negative log-likelihood: use "
                             f"{type(loss_fn).__name__} without weight, pos_weight and "
                             f"label_smoothing.")
        if curvature not in CURVATURES:
            raise ValueError(f"curvature must be one of {', '.join(map(repr, CURVATURES))}; got "
                             f"{curvature!r}.")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}.")
        self.model, self.loss_fn, self.data, self.curvature = model, loss_fn, data, curvature
        self.rank = rank
        self.likelihood = next(v for k, v in _LIKELIHOODS.items() if isinstance(loss_fn, k))
        self.prior_precision = _positive(prior_precision, "prior_precision")
        self.temperature = _positive(temperature, "temperature")
        self.sigma_noise = _positive(sigma_noise, "sigma_noise")
        self.params = _subset(model, subset)
        self._problem = ModelLoss(model, loss_fn, data, self.params)
        self.param_names = list(self._problem.names)
        self.n = self._problem.n
        self._spectrum: _Spectrum | None = None

    # ------------------------------------------------------------------ fit
    def fit(self, progress: bool = False) -> Laplace:
        """Compute the curvature, the mean loss and the data size at ``θ*`` (one or two passes
        over the data). Returns ``self``."""
        p = self._problem
        self.mean = p.flatten(p.params).detach().clone()
        total, num, terms = 0.0, 0, None
        with torch.no_grad(), p.mode():
            for _, x, y, nb in p.batches():
                if nb == 0:
                    continue
                z = p.forward(p.params, x)
                total += float(self.loss_fn(z, y)) * (nb if p.reduction == "mean" else 1.0)
                num += nb
                k = _terms_per_sample(self.loss_fn, z)
                if terms is not None and k != terms:
                    raise ValueError(f"every sample must have the same number of likelihood "
                                     f"terms; batches have {terms} and {k}.")
                terms = k
        if num == 0 or terms is None:
            raise ValueError("the data set is empty: no batch with samples was found.")
        self.num_samples, self._terms = num, terms
        self._mean_loss = total / num
        self._spectrum = self._curvature_spectrum(progress)
        return self

    def _curvature_spectrum(self, progress: bool) -> _Spectrum:
        args = (self.model, self.loss_fn, self.data, self.params)
        if self.curvature == "full":
            G = GGNOperator(*args, progress=progress).to_dense()
            h, U = torch.linalg.eigh(G)
            return _Spectrum(h.clamp(min=0), lambda V, f: U @ (f(h.clamp(min=0))[:, None] * (U.T @ V)))
        if self.curvature == "lowrank":
            return self._lowrank(GGNOperator(*args, progress=progress))
        if self.curvature == "diag":
            d = ggn_diagonal(*args)
            return _Spectrum(d, lambda V, f: f(d)[:, None] * V)
        kfac = KFACOperator(*args, kind="type2", progress=progress)
        e = EKFACOperator.from_kfac(kfac, refit=self.curvature == "ekfac", progress=progress)
        values = torch.cat([s.reshape(-1) for s in e.eigenvalues.values()])
        return _Spectrum(values, e.spectral_matmat)

    def _lowrank(self, G: GGNOperator) -> _Spectrum:
        """The top ``rank`` eigenpairs of the GGN by Lanczos; the rest of the spectrum is 0, so
        ``P`` is ``λ I`` off the top eigenspace."""
        if self.rank > self.n:
            raise ValueError(f"rank={self.rank} exceeds the number of parameters ({self.n}).")
        tol = 1e-10 if G.dtype == torch.float64 else 1e-5
        result = eigsh(G, k=self.rank, which="largest", tol=tol)
        if not bool(result.converged.all()) or result.vectors is None:
            raise ValueError(f"Lanczos did not converge on the top {self.rank} eigenpairs of the "
                             f"GGN ({result.message}); lower rank or use curvature='kfac'.")
        h, U = result.values.clamp(min=0), result.vectors
        values = torch.cat([h, h.new_zeros(self.n - self.rank)])

        def apply(V, f):
            UtV = U.T @ V
            rest = f(h.new_zeros(1))
            return U @ (f(h)[:, None] * UtV) + rest * (V - U @ UtV)

        return _Spectrum(values, apply)

    def _fitted(self) -> _Spectrum:
        if self._spectrum is None:
            raise ValueError("call fit() first: the curvature is computed there.")
        return self._spectrum

    # ------------------------------------------------------------------ scalings
    def _likelihood_scale(self, sigma_noise: float) -> float:
        """``N κ``: the factor from the GGN of the mean loss to that of the summed NLL."""
        kappa = float(self._terms) if self._problem.reduction == "mean" else 1.0
        if self.likelihood == "regression":
            kappa /= 2.0 * sigma_noise ** 2
        return self.num_samples * kappa

    def _precision_values(self, prior_precision: float, sigma_noise: float) -> torch.Tensor:
        scale = self._likelihood_scale(sigma_noise) / self.temperature
        return scale * self._fitted().values + prior_precision

    def _log_likelihood(self, sigma_noise: float) -> float:
        """``log p(D | θ*)``: ``−N κ L(θ*)`` minus the Gaussian's normalizer for regression."""
        value = -self._likelihood_scale(sigma_noise) * self._mean_loss
        if self.likelihood == "regression":
            value -= 0.5 * self.num_samples * self._terms * math.log(2 * math.pi * sigma_noise ** 2)
        return value

    # ------------------------------------------------------------------ evidence
    def log_marginal_likelihood(self, prior_precision: float | None = None,
                                sigma_noise: float | None = None) -> float:
        """The Laplace evidence ``log p(D | θ*)/T − ½(log det P − n log λ) − ½ λ ‖θ*‖²`` at
        ``prior_precision`` (default: the current one) and ``sigma_noise`` (regression)."""
        self._fitted()
        lam = self.prior_precision if prior_precision is None else _positive(prior_precision,
                                                                              "prior_precision")
        sigma = self.sigma_noise if sigma_noise is None else _positive(sigma_noise, "sigma_noise")
        logdet = float(torch.log(self._precision_values(lam, sigma)).sum())
        scatter = lam * float(self.mean @ self.mean)
        return (self._log_likelihood(sigma) / self.temperature
                - 0.5 * (logdet - self.n * math.log(lam)) - 0.5 * scatter)

    def optimize_prior_precision(self, method: str = "marglik", *,
                                 learn_sigma_noise: bool = False, val_data: Any = None,
                                 grid: Any = None, predictive: str = "probit") -> MarginalLikelihoodFit:
        """Choose the scalar prior precision ``λ`` (and, with ``learn_sigma_noise``, the
        regression noise ``σ``) and set it on the object.

        ``method="marglik"``: maximize :meth:`log_marginal_likelihood` over ``log λ`` (bounded
        scalar search; L-BFGS-B over ``(log λ, log σ)`` with ``learn_sigma_noise``), ``θ*`` and
        ``H`` fixed, as in Immer et al. (2021). ``method="gridsearch"``: the ``λ`` of ``grid``
        (default ``logspace(-4, 4, 21)``) with the smallest negative log predictive density on
        ``val_data`` (``predictive`` method).
        """
        self._fitted()
        if method == "marglik":
            lo, hi = _LOG_LAMBDA_BOUNDS
            if learn_sigma_noise:
                if self.likelihood != "regression":
                    raise ValueError("learn_sigma_noise=True needs a regression Laplace "
                                     "(nn.MSELoss).")
                res = minimize(lambda t: -self.log_marginal_likelihood(math.exp(t[0]),
                                                                       math.exp(t[1])),
                               x0=np.array([math.log(self.prior_precision),
                                            math.log(self.sigma_noise)]),
                               method="L-BFGS-B", bounds=[(lo, hi), (lo, hi)])
                lam, sigma = math.exp(res.x[0]), math.exp(res.x[1])
                message = str(res.message)
            else:
                res1 = minimize_scalar(lambda t: -self.log_marginal_likelihood(math.exp(t)),
                                       bounds=(lo, hi), method="bounded",
                                       options={"xatol": 1e-8})
                lam, sigma, message = math.exp(res1.x), self.sigma_noise, str(res1.message)
            self.prior_precision, self.sigma_noise = lam, sigma
        elif method == "gridsearch":
            if val_data is None:
                raise ValueError("method='gridsearch' needs val_data=(inputs, targets) batches to "
                                 "score each prior precision on.")
            values = np.logspace(-4, 4, 21) if grid is None else np.asarray(grid, dtype=float)
            if values.ndim != 1 or values.size == 0 or not np.all(values > 0):
                raise ValueError("grid must be a non-empty 1-D sequence of positive precisions.")
            scores = []
            for lam in values:
                self.prior_precision = float(lam)
                scores.append(self._validation_nll(val_data, predictive))
            self.prior_precision = float(values[int(np.argmin(scores))])
            message = f"best of {values.size} grid values by validation NLL"
        else:
            raise ValueError(f"method must be 'marglik' or 'gridsearch', got {method!r}.")
        return MarginalLikelihoodFit(self.prior_precision,
                                     self.sigma_noise if self.likelihood == "regression" else None,
                                     self.log_marginal_likelihood(), method, message)

    def _validation_nll(self, val_data: Any, predictive: str) -> float:
        total, num = 0.0, 0
        batches = [val_data] if isinstance(val_data, tuple) else val_data
        for x, y in batches:
            if self.likelihood == "classification":
                probs = self.predictive(x, method=predictive)
                total -= float(torch.log(probs.gather(1, y.reshape(-1, 1)).clamp_min(1e-300)).sum())
            elif self.likelihood == "binary":
                probs = self.predictive(x, method=predictive)
                t = y.reshape(probs.shape).to(probs.dtype)
                total -= float((t * torch.log(probs.clamp_min(1e-300))
                                + (1 - t) * torch.log((1 - probs).clamp_min(1e-300))).sum())
            else:
                mean, var = self.predictive(x, method="glm")
                total += float((0.5 * torch.log(2 * math.pi * var)
                                + 0.5 * (y.reshape(mean.shape) - mean) ** 2 / var).sum())
            num += len(x)
        return total / max(num, 1)

    # ------------------------------------------------------------------ posterior
    def posterior_covariance(self, V: torch.Tensor) -> torch.Tensor:
        """``Σ V = P⁻¹ V`` for a block ``V`` of shape ``(n, k)``."""
        return self._power(V, -1.0)

    def _power(self, V: torch.Tensor, alpha: float) -> torch.Tensor:
        spectrum = self._fitted()
        scale = self._likelihood_scale(self.sigma_noise) / self.temperature
        lam = self.prior_precision
        return spectrum.apply(V.to(self.mean.dtype), lambda h: (scale * h + lam) ** alpha)

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``num`` draws ``θ* + Σ^{1/2} ε`` (``ε ~ N(0, I)``) as rows of a ``(num, n)`` tensor."""
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be an integer >= 1, got {num!r}.")
        self._fitted()
        eps = torch.randn(self.n, num, generator=generator, dtype=self.mean.dtype,
                          device=self.mean.device)
        return (self.mean[:, None] + self._power(eps, -0.5)).T

    # ------------------------------------------------------------------ predictive
    def _outputs(self, theta: torch.Tensor, x: Any) -> torch.Tensor:
        p = self._problem
        if isinstance(x, torch.Tensor) and x.is_floating_point():
            x = x.to(device=p.device, dtype=p.dtype)  # as the training batches are cast
        return p.forward(tuple(p.unflatten(theta)), x)

    def function_posterior(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The linearized network's Gaussian at inputs ``x``: mean ``f(x; θ*)`` ``(m, C)`` and
        covariance ``J Σ Jᵀ`` ``(m, C, C)`` per sample."""
        self._fitted()
        p = self._problem
        with p.mode():
            f = self._outputs(self.mean, x).detach()
            J = jacrev(lambda t: self._outputs(t, x))(self.mean).detach()  # (m, C, n)
        m = f.shape[0]
        if self.likelihood != "regression" and f.ndim != 2:
            raise ValueError(f"the classification predictive needs logits of shape (samples, "
                             f"classes); the model gives {tuple(f.shape)}. Predict per position "
                             f"by reshaping the outputs in a forward wrapper.")
        J = J.reshape(m, -1, self.n)
        C = J.shape[1]
        SJ = self.posterior_covariance(J.reshape(-1, self.n).T).T.reshape(m, C, self.n)
        return f.reshape(m, C), torch.einsum("mcn,mdn->mcd", J, SJ)

    def predictive(self, x: Any, method: str = "glm", num_samples: int = 100,
                   generator: torch.Generator | None = None):
        """Posterior predictive at inputs ``x`` (module docstring).

        Classification: the class probabilities ``(m, C)`` (binary: the probability of 1 per
        output, the probit link ``σ(f / √(1 + π/8 var))``); ``"glm"`` samples the linearized
        logits' Gaussian (``num_samples`` draws), ``"probit"`` is closed form, ``"mc"`` averages
        the network at ``num_samples`` posterior draws. Regression: ``(mean, variance)`` of the
        predictive per output, the variance including ``σ²``; ``"glm"`` is closed form, ``"mc"``
        the moments of the network at posterior draws.
        """
        if method not in PREDICTIVE_METHODS:
            raise ValueError(f"method must be one of {', '.join(map(repr, PREDICTIVE_METHODS))}; "
                             f"got {method!r}.")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}.")
        self._fitted()
        if self.likelihood == "regression" and method == "probit":
            raise ValueError("method='probit' is a link approximation for classification; use "
                             "'glm' (closed form) for regression.")
        if method == "mc":
            thetas = self.sample(num_samples, generator)
            with torch.no_grad(), self._problem.mode():
                outs = torch.stack([self._outputs(t, x) for t in thetas])
            if self.likelihood != "regression":
                if outs.ndim != 3:
                    raise ValueError(f"the classification predictive needs logits of shape "
                                     f"(samples, classes); the model gives {tuple(outs.shape[1:])}.")
                return self._link(outs).mean(0)
            return outs.mean(0), outs.var(0, unbiased=False) + self.sigma_noise ** 2
        f, cov = self.function_posterior(x)
        if self.likelihood == "regression":
            return f, torch.diagonal(cov, dim1=1, dim2=2) + self.sigma_noise ** 2
        if method == "probit":
            var = torch.diagonal(cov, dim1=1, dim2=2)
            return self._link(f / torch.sqrt(1 + math.pi / 8 * var))
        # a Cholesky factor of each C x C covariance; jitter-free: a PSD covariance of rank < C
        # (a softmax's shift direction) is factored by eigh instead
        w, Q = torch.linalg.eigh(cov)
        root = Q * w.clamp(min=0).sqrt().unsqueeze(1)
        eps = torch.randn(num_samples, *f.shape, generator=generator, dtype=f.dtype,
                          device=f.device)
        logits = f + torch.einsum("mcd,smd->smc", root, eps)
        return self._link(logits).mean(0)

    def _link(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes (categorical) or a sigmoid per output (Bernoulli)."""
        if self.likelihood == "binary":
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=-1)

    def __repr__(self) -> str:
        state = "fitted" if self._spectrum is not None else "not fitted"
        return (f"Laplace(curvature={self.curvature!r}, likelihood={self.likelihood!r}, "
                f"n={self.n}, prior_precision={self.prior_precision:.4g}, "
                f"temperature={self.temperature:.4g}, {state})")


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _subset(model: nn.Module, subset: Any) -> Any:
    if isinstance(subset, str):
        if subset == "all":
            return None
        if subset == "last_layer":
            last = None
            for name, module in model.named_modules():
                if isinstance(module, nn.Linear) and any(True for _ in module.parameters(False)):
                    last = name
            if last is None:
                raise ValueError("subset='last_layer' needs an nn.Linear layer in the model; pass "
                                 "the parameter names instead.")
            prefix = f"{last}." if last else ""
            return [prefix + n for n, _ in model.get_submodule(last).named_parameters(recurse=False)]
        raise ValueError(f"subset must be 'all', 'last_layer' or parameter names/a predicate; got "
                         f"{subset!r}.")
    return subset


def _terms_per_sample(loss_fn: Any, z: torch.Tensor) -> int:
    """Likelihood terms of one sample: positions for cross-entropy, elements for squared error."""
    per_sample = z[0].numel() if z.ndim > 1 else 1
    if isinstance(loss_fn, nn.CrossEntropyLoss) and z.ndim > 1:
        per_sample //= z.shape[1]
    return per_sample
