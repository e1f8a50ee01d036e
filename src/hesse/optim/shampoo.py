"""Shampoo: preconditioned stochastic tensor optimization (Gupta, Koren & Singer 2018).

For a parameter viewed as a matrix ``W`` (``m × n``; a 1-D parameter is ``m × 1``; a tensor of
order > 2 is reshaped to ``shape[0] × rest``) with gradient ``G_t`` (Gupta et al. 2018, Alg. 1):

    L_t = β₂ L_{t-1} + G_t G_tᵀ,     R_t = β₂ R_{t-1} + G_tᵀ G_t     (β₂ = 1: the paper's sums)
    P_t = (L_t + εI)^{-1/4} G_t (R_t + εI)^{-1/4}

The inverse 4th roots are computed by ``eigh`` (eigenvalues clamped at 0, then ``+ ε``) every
``precond_every`` steps and kept in between. A side longer than ``max_precond_dim`` is not
preconditioned (identity); a parameter with one preconditioned side (a 1-D parameter, or one
side too long) uses the inverse square root on that side (the paper's order-1 case).

Learning-rate grafting (Agarwal et al. 2020, "Disentangling adaptive gradient methods"): the
direction ``P_t`` is rescaled to the norm of the direction of a first-order method,
``graft="adagrad"`` (``G / (√Σ G² + ε)``) or ``graft="adam"`` (``m̂ / (√v̂ + ε)``), per parameter,
so that the step size follows the grafted method and only the direction comes from Shampoo. Then
heavy-ball momentum and ``θ ← θ − lr (P + wd θ)``.

Cost per step: ``O(m² n + m n²)`` per parameter for the statistics and the product; ``O(m³ + n³)``
every ``precond_every`` steps for the eigendecompositions. No extra forward/backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._common import check_hyper, check_int, run_closure

__all__ = ["Shampoo"]

GRAFTS = ("adagrad", "adam", "none")


def inverse_root(M: torch.Tensor, p: int, eps: float) -> torch.Tensor:
    """``(M + εI)^{-1/p}`` of a symmetric PSD matrix by ``eigh`` (eigenvalues clamped at 0)."""
    d, Q = torch.linalg.eigh(M)
    d = d.clamp(min=0) + eps
    return (Q * d.pow(-1.0 / p)) @ Q.T


class Shampoo(torch.optim.Optimizer):
    """Shampoo with grafting: ``Shampoo(params, lr=0.01, momentum=0.9, beta2=1.0, epsilon=1e-4,
    precond_every=10, max_precond_dim=1024, graft="adagrad", graft_eps=1e-8, beta1_graft=0.9,
    beta2_graft=0.999, weight_decay=0.0)``.

    ``step(closure=None)`` takes the closure of ``torch.optim.LBFGS`` (optional). ``epsilon`` is
    relative: the added ``εI`` is ``epsilon`` times the largest eigenvalue of the statistic (plus
    1e-30), so it does not depend on the scale of the loss.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.9,
                 beta2: float = 1.0, epsilon: float = 1e-4, precond_every: int = 10,
                 max_precond_dim: int = 1024, graft: str = "adagrad", graft_eps: float = 1e-8,
                 beta1_graft: float = 0.9, beta2_graft: float = 0.999,
                 weight_decay: float = 0.0):
        check_hyper(lr, "lr")
        check_hyper(momentum, "momentum", allow_zero=True, upper=1.0, upper_open=True)
        check_hyper(beta2, "beta2", upper=1.0)
        check_hyper(epsilon, "epsilon")
        check_int(precond_every, "precond_every")
        check_int(max_precond_dim, "max_precond_dim")
        if graft not in GRAFTS:
            raise ValueError(f"graft must be one of {GRAFTS}; got {graft!r}.")
        check_hyper(graft_eps, "graft_eps")
        check_hyper(beta1_graft, "beta1_graft", allow_zero=True, upper=1.0, upper_open=True)
        check_hyper(beta2_graft, "beta2_graft", upper=1.0, upper_open=True)
        check_hyper(weight_decay, "weight_decay", allow_zero=True)
        defaults = dict(lr=lr, momentum=momentum, beta2=beta2, epsilon=epsilon,
                        precond_every=precond_every, max_precond_dim=max_precond_dim,
                        graft=graft, graft_eps=graft_eps, beta1_graft=beta1_graft,
                        beta2_graft=beta2_graft, weight_decay=weight_decay)
        super().__init__(params, defaults)

    @staticmethod
    def _matrix_shape(p: torch.Tensor) -> tuple[int, int]:
        if p.dim() == 0:
            return 1, 1
        return p.shape[0], max(1, p.numel() // p.shape[0])

    @torch.no_grad()
    def step(self, closure: Callable | None = None) -> Any:
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
        use_L = 1 < m <= group["max_precond_dim"]
        use_R = 1 < n <= group["max_precond_dim"]
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
        b2 = group["beta2"]
        if use_L:
            state["L"].mul_(b2).add_(G @ G.T)
        if use_R:
            state["R"].mul_(b2).add_(G.T @ G)
        if (t - 1) % group["precond_every"] == 0:
            for key in ("L", "R"):
                if key in state:
                    M = state[key]
                    eps = group["epsilon"] * float(torch.linalg.eigvalsh(M)[-1].clamp(min=0)) + 1e-30
                    power = 4 if (use_L and use_R) else 2
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
                b1, b2g = group["beta1_graft"], group["beta2_graft"]
                state["graft_m"].mul_(b1).add_(G, alpha=1 - b1)
                state["graft_sq"].mul_(b2g).addcmul_(G, G, value=1 - b2g)
                D = (state["graft_m"] / (1 - b1 ** t)) / (
                    (state["graft_sq"] / (1 - b2g ** t)).sqrt() + eps)
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
