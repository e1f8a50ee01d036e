"""AdaHessian (Yao et al. 2021): Adam with the Hutchinson estimate of the Hessian diagonal in place
of the squared gradient.

With a Rademacher vector ``z`` (entries ±1), ``D = z ⊙ (H z)`` is an unbiased estimate of
``diag(H)`` (Bekas, Kokiopoulou & Saad 2007; Yao et al. 2021, eq. 7). AdaHessian (Yao et al. 2021,
Alg. 1, §3.2-3.3) then uses

* spatial averaging: for a convolution kernel ``(out, in, kh, kw)``, ``|D|`` averaged over the
  kernel's spatial positions ``kh × kw``;
* ``m_t = β₁ m + (1-β₁) g``,  ``v_t = β₂ v + (1-β₂) D_s²``,
* ``θ ← θ − lr · (m_t/(1-β₁ᵗ)) / ((√(v_t/(1-β₂ᵗ)))^k + ε) − lr · wd · θ`` with the Hessian power
  ``k`` (``hessian_power``, 1 by default).

**Closure requirement**: the Hessian-vector product ``H z = ∂(g · z)/∂θ`` differentiates the
gradient, so the closure must call ``loss.backward(create_graph=True)`` (as the paper's code
does); ``step`` says so if the gradients carry no graph. The Hessian diagonal is re-estimated every
``hessian_every`` steps (kept in between; the paper's "Hessian update span"). The Rademacher draws come from a generator whose state is
kept in the optimizer's state (resumes bit-for-bit).

Cost per step: one forward/backward with ``create_graph`` plus one Hessian-vector product
(a second backward), about 2-3x an Adam step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from hesse._validation import check_betas, check_seed

from ._common import check_hyper, check_int, closure_loss, uniform_option

__all__ = ["AdaHessian"]


_WHY_ONE_CADENCE = "one Hutchinson draw covers all parameters"


class AdaHessian(torch.optim.Optimizer):
    """``AdaHessian(params, lr=0.15, betas=(0.9, 0.999), eps=1e-4, weight_decay=0.0,
    hessian_power=1.0, hessian_every=1, seed=0)``; ``step(closure)`` with a closure that calls
    ``loss.backward(create_graph=True)``."""

    def __init__(self, params: Iterable, lr: float = 0.15, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-4, weight_decay: float = 0.0, hessian_power: float = 1.0,
                 hessian_every: int = 1, seed: int = 0):
        check_hyper(lr, "lr")
        betas = check_betas(betas)
        check_hyper(eps, "eps")
        check_hyper(weight_decay, "weight_decay", allow_zero=True)
        check_hyper(hessian_power, "hessian_power", upper=1.0)
        check_int(hessian_every, "hessian_every")
        self.seed = check_seed(seed)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      hessian_power=hessian_power, hessian_every=hessian_every))
        uniform_option(self.param_groups, "hessian_every", "AdaHessian", _WHY_ONE_CADENCE)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _generator(self, first: torch.Tensor) -> torch.Generator:
        gen = torch.Generator(device=first.device)
        st = self.state[first]
        if "rng_state" in st:
            gen.set_state(st["rng_state"].to(torch.uint8).cpu())  # load_state_dict casts it
        else:
            gen.manual_seed(self.seed)
        return gen

    def step(  # type: ignore[override]  # torch's stub says float; the loss is a tensor
            self, closure: Callable | None = None) -> torch.Tensor:
        """One AdaHessian step; the closure must call ``loss.backward(create_graph=True)``."""
        hessian_every = uniform_option(self.param_groups, "hessian_every", "AdaHessian",
                                       _WHY_ONE_CADENCE)
        loss = closure_loss(closure, "AdaHessian", self._params())
        with_grad = [(p, p.grad) for p in self._params() if p.grad is not None]
        params = [p for p, _ in with_grad]
        grads = [g for _, g in with_grad]
        if not params:
            raise ValueError("AdaHessian.step: no parameter has a gradient; did the closure call "
                             "loss.backward(create_graph=True)?")
        first = self._params()[0]
        st0 = self.state[first]
        step = int(st0["step"]) + 1 if "step" in st0 else 1
        group_of = {id(p): g for g in self.param_groups for p in g["params"]}
        refresh = (step - 1) % hessian_every == 0 or any(
            "hess_diag" not in self.state[p] for p in params)
        if refresh:
            if any(g.grad_fn is None for g in grads):
                for p in params:
                    p.grad = None
                raise ValueError(
                    "AdaHessian needs Hessian-vector products of the gradient: the closure must "
                    "call loss.backward(create_graph=True) (the gradients it left carry no graph).")
            gen = self._generator(first)
            zs = [torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype) * 2 - 1
                  for p in params]
            hz = torch.autograd.grad(grads, params, grad_outputs=zs,
                                     allow_unused=True)
            diags = []
            for p, z, h in zip(params, zs, hz):
                d = (z * h).abs() if h is not None else torch.zeros_like(p)
                if p.dim() == 4:  # spatial averaging over the kernel (Yao et al. 2021, §3.3)
                    d = d.mean(dim=(2, 3), keepdim=True).expand_as(p).clone()
                diags.append(d.detach())
            if not all(bool(torch.isfinite(d).all()) for d in diags):
                raise ValueError("AdaHessian.step: the Hessian-diagonal estimate has non-finite "
                                 "entries; nothing was changed. Lower lr or check the batch.")
            st0["rng_state"] = gen.get_state()
            for p, d in zip(params, diags):
                self.state[p]["hess_diag"] = d
        with torch.no_grad():
            for p, grad in zip(params, grads):
                group = group_of[id(p)]
                state = self.state[p]
                g = grad.detach()
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.int64)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_hessian_diag_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = int(state["step"])
                b1, b2 = group["betas"]
                state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
                if "hessian_step" not in state:
                    state["hessian_step"] = torch.zeros((), dtype=torch.int64)
                if refresh:
                    d = state["hess_diag"]
                    state["exp_hessian_diag_sq"].mul_(b2).addcmul_(d, d, value=1 - b2)
                    state["hessian_step"] += 1
                th = int(state["hessian_step"])
                denom = ((state["exp_hessian_diag_sq"] / (1 - b2 ** th)).sqrt()
                         .pow(group["hessian_power"]).add_(group["eps"]))
                upd = (state["exp_avg"] / (1 - b1 ** t)) / denom
                if group["weight_decay"]:
                    upd = upd + group["weight_decay"] * p
                p.add_(upd, alpha=-group["lr"])
            if "step" not in st0:
                st0["step"] = torch.ones((), dtype=torch.int64)
            for p, grad in zip(params, grads):  # free the graph held by the gradients
                p.grad = grad.detach()
        return loss
