"""hesse.optimize: minimize() and least_squares() from gradient descent to trust regions
(see the user guide page "Minimize and least squares", docs/guide/optimize.md). One module per
method family; ``minimize`` dispatches through
the one registry ``hesse.optimize.methods.REGISTRY`` (viewed by problem as ``METHODS`` and
``LEAST_SQUARES_METHODS``)."""

from .least_squares import least_squares
from .methods import METHODS, MethodSpec
from .minimize import minimize, resolve_method
from .result import OptimizeHistory, OptimizeResult, estimate_convergence_order

__all__ = [
    "minimize",
    "least_squares",
    "OptimizeResult",
    "OptimizeHistory",
    "estimate_convergence_order",
    "METHODS",
    "MethodSpec",
    "resolve_method",
]
