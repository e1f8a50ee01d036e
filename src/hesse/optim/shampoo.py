"""Shampoo: preconditioned stochastic tensor optimization (Gupta, Koren & Singer 2018).

For a parameter viewed as a matrix ``W`` (``m × n``; a 1-D parameter is ``m × 1``; a tensor of
order > 2 is reshaped to ``shape[0] × rest``) with gradient ``G_t`` (Gupta et al. 2018, Alg. 1):

    L_t = β L_{t-1} + G_t G_tᵀ,     R_t = β R_{t-1} + G_tᵀ G_t     (β = stat_decay; 1: the paper's sums)
    P_t = (L_t + εI)^{-1/4} G_t (R_t + εI)^{-1/4}

The inverse 4th roots are computed by ``eigh`` (eigenvalues clamped at 0, then ``+ ε``) every
``precondition_every`` steps and kept in between. A side longer than ``max_precondition_dim`` is
not preconditioned (identity); a parameter with one preconditioned side (a 1-D parameter, or one
side too long) uses the inverse square root on that side (the paper's order-1 case).

Learning-rate grafting (Agarwal et al. 2020, "Disentangling adaptive gradient methods"): the
direction ``P_t`` is rescaled to the norm of the direction of a first-order method,
``graft="adagrad"`` (``G / (√Σ G² + ε)``) or ``graft="adam"`` (``m̂ / (√v̂ + ε)`` with
``graft_betas``), per parameter, so that the step size follows the grafted method and only the
direction comes from Shampoo. Then heavy-ball momentum and ``θ ← θ − lr (P + wd θ)``.

Names: ``eps`` and ``graft_betas=(β₁, β₂)`` as in ``torch.optim.Adam``. The statistics' decay is
one number, ``stat_decay`` (as in :class:`hesse.optim.KFAC`), not half of a ``betas`` pair:
Shampoo's ``momentum`` is heavy-ball momentum on the step (``v ← μ v + P``, as in
``torch.optim.SGD``), not a decaying first-moment average paired with it. Unlike KFAC's average,
the statistics are sums (no ``1 − β`` factor), as in the paper.

Cost per step: ``O(m² n + m n²)`` per parameter for the statistics and the product; ``O(m³ + n³)``
every ``precondition_every`` steps for the eigendecompositions. No extra forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from hesse._validation import check_betas

from ._common import check_hyper, check_int, run_closure

__all__ = ["Shampoo"]

GRAFTS = ("adagrad", "adam", "none")
# Added to the relative ε: a statistic that is still zero (only zero gradients so far) has a zero
# largest eigenvalue, and the inverse root of (0 + 0·I) would be infinite.
_EPS_FLOOR = 1e-30
_GRAFT_BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults
_DEFAULT_STAT_DECAY = 1.0  # the paper's sums


def inverse_root(M: torch.Tensor, p: int, eps: float) -> torch.Tensor:
    """``(M + εI)^{-1/p}`` of a symmetric PSD matrix by ``eigh`` (eigenvalues clamped at 0)."""
    d, Q = torch.linalg.eigh(M)
    d = d.clamp(min=0) + eps
    return (Q * d.pow(-1.0 / p)) @ Q.T


class Shampoo(torch.optim.Optimizer):
    """Shampoo with grafting: ``Shampoo(params, lr=0.01, momentum=0.9, stat_decay=1.0, eps=1e-4,
    precondition_every=10, max_precondition_dim=1024, graft="adagrad", graft_eps=1e-8,
    graft_betas=(0.9, 0.999), weight_decay=0.0)``.

    ``step(closure=None)`` takes the closure of ``torch.optim.LBFGS`` (optional). ``eps`` is
    relative: the added ``εI`` is ``eps`` times the largest eigenvalue of the statistic (plus
    1e-30), so it does not depend on the scale of the loss.

    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.9,
                 stat_decay: float = _DEFAULT_STAT_DECAY, eps: float = 1e-4,
                 precondition_every: int = 10, max_precondition_dim: int = 1024,
                 graft: str = "adagrad", graft_eps: float = 1e-8,
                 graft_betas: tuple[float, float] = _GRAFT_BETAS, weight_decay: float = 0.0):
        opts: dict[str, Any] = dict(stat_decay=stat_decay, eps=eps, precondition_every=precondition_every,
                                    max_precondition_dim=max_precondition_dim, graft_betas=graft_betas)
        check_hyper(lr, "lr")
        check_hyper(momentum, "momentum", allow_zero=True, upper=1.0, upper_open=True)
        check_hyper(opts["stat_decay"], "stat_decay", upper=1.0)
        check_hyper(opts["eps"], "eps")
        check_int(opts["precondition_every"], "precondition_every")
        check_int(opts["max_precondition_dim"], "max_precondition_dim")
        if graft not in GRAFTS:
            raise ValueError(f"graft must be one of {GRAFTS}; got {graft!r}.")
        check_hyper(graft_eps, "graft_eps")
        opts["graft_betas"] = check_betas(opts["graft_betas"], "graft_betas")
        check_hyper(weight_decay, "weight_decay", allow_zero=True)
        defaults = dict(lr=lr, momentum=momentum, graft=graft, graft_eps=graft_eps,
                        weight_decay=weight_decay, **opts)
        super().__init__(params, defaults)

    @staticmethod
    def _matrix_shape(p: torch.Tensor) -> tuple[int, int]:
        if p.dim() == 0:
            return 1, 1
        return p.shape[0], max(1, p.numel() // p.shape[0])

    @torch.no_grad()
    def step(
            self, closure: Callable | None = None) -> Any:
        """One Shampoo step; returns the closure's loss (``None`` without a closure). A
        non-finite loss or gradient raises ``ValueError`` and changes nothing."""
        loss = run_closure(closure, "Shampoo", [p for g in self.param_groups for p in g["params"]])
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._update(p, p.grad, group)
        return loss

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        m, n = self._matrix_shape(p)
        G = grad.reshape(m, n)
        use_L = 1 < m <= group["max_precondition_dim"]
        use_R = 1 < n <= group["max_precondition_dim"]
        if "step" not in state:
            state["step"] = torch.zeros((), dtype=torch.int64)
            if use_L:
                state["L"] = G.new_zeros(m, m)
            if use_R:
                state["R"] = G.new_zeros(n, n)
            if group["graft"] != "none":
                state["graft_sq"] = torch.zeros_like(G)
            if group["graft"] == "adam":
                state["graft_m"] = torch.zeros_like(G)
        state["step"] += 1
        t = int(state["step"])
        decay = group["stat_decay"]
        if use_L:
            state["L"].mul_(decay).add_(G @ G.T)
        if use_R:
            state["R"].mul_(decay).add_(G.T @ G)
        if (t - 1) % group["precondition_every"] == 0:
            # inverse 4th roots with both sides preconditioned, the square root with one
            # (Gupta et al. 2018, Alg. 1 and the order-1 case)
            power = 4 if (use_L and use_R) else 2
            for key in ("L", "R"):
                if key in state:
                    M = state[key]
                    largest = float(torch.linalg.eigvalsh(M)[-1].clamp(min=0))
                    eps = group["eps"] * largest + _EPS_FLOOR
                    state[key + "_inv_root"] = inverse_root(M, power, eps)
        P = G
        if "L_inv_root" in state:
            P = state["L_inv_root"] @ P
        if "R_inv_root" in state:
            P = P @ state["R_inv_root"]
        graft = group["graft"]
        if graft != "none":
            eps = group["graft_eps"]
            if graft == "adagrad":
                state["graft_sq"].add_(G * G)
                D = G / (state["graft_sq"].sqrt() + eps)
            else:
                b1, b2 = group["graft_betas"]
                state["graft_m"].mul_(b1).add_(G, alpha=1 - b1)
                state["graft_sq"].mul_(b2).addcmul_(G, G, value=1 - b2)
                D = (state["graft_m"] / (1 - b1 ** t)) / (
                    (state["graft_sq"] / (1 - b2 ** t)).sqrt() + eps)
            pn = float(P.norm())
            P = P * (float(D.norm()) / pn) if pn > 0 else D
        P = P.reshape(p.shape)
        if group["weight_decay"]:
            P = P + group["weight_decay"] * p
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = P.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(P)
            P = state["momentum_buffer"]
        p.add_(P, alpha=-group["lr"])
