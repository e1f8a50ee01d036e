"""torch.optim optimizers that use curvature: K-FAC, Shampoo, SAM, Hessian-free, natural gradient,
AdaHessian. Import as ``hesse.optim``.

All are ``torch.optim.Optimizer`` subclasses that accept param groups, take the closure of
``torch.optim.LBFGS`` and resume bit-for-bit from ``state_dict()``. Options that belong to the whole
step rather than to a parameter (HessianFree's damping and CG settings, NaturalGradient's CG
settings, AdaHessian's ``hessian_every``) must agree across groups (``ValueError`` otherwise). A
non-finite loss or gradient raises ``ValueError`` before any parameter or state changes. Hooks
placed on the model (KFAC, HessianFree, NaturalGradient) hold the optimizer weakly and are removed
by ``remove_hooks()`` or when the optimizer is garbage-collected. Those that need the module
structure take the model first: ``KFAC(model, ...)``, ``HessianFree(model, loss_fn, ...)``,
``NaturalGradient(model, loss_fn, ...)``; the others take parameters.

Option names follow ``torch.optim``: ``lr``, ``momentum``, ``weight_decay``, ``eps``, ``betas``
(``graft_betas`` for Shampoo's Adam grafting); a cadence is ``<thing>_every`` (``factor_every``,
``inverse_every``, ``precondition_every``, ``hessian_every``); the decay of curvature statistics
is ``stat_decay``. Records
(:class:`CGRecord`) are :class:`hesse._result.Result` dataclasses with the package's field names
(``nit``, ``num_matvecs``, ``converged``, ``message``).
"""

from .adahessian import AdaHessian
from .hessian_free import CGRecord, HessianFree
from .kfac import KFAC
from .natural_gradient import NaturalGradient
from .sam import SAM
from .shampoo import Shampoo

__all__ = ["KFAC", "Shampoo", "SAM", "HessianFree", "NaturalGradient", "AdaHessian", "CGRecord"]
