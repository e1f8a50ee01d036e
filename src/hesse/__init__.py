"""hesse: second-order analysis of functions and neural-network losses.

Layers (arrows point down): autodiff primitives (``_autodiff``) -> curvature operators
(``operators``) -> algorithms (``spectrum``, ``geometry``, ``optimize``, ``optim``) ->
diagnostics, plots, CLI. The public API is re-exported here; each subpackage lists its own in
``__all__``.
"""

from . import diagnostics, distributed, geometry, operators, optimize, spectrum  # noqa: F401
from ._autodiff import HessianCheck, check_hessian, gradient, hessian, hvp, jacobian
from .diagnostics import *  # noqa: F403
from .distributed import *  # noqa: F403
from .geometry import *  # noqa: F403
from .operators import (
    CurvatureOperator,
    DenseOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    LinearSolveResult,
)
from .optimize import *  # noqa: F403
from .spectrum import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "FisherOperator",
    "GGNOperator",
    "HessianCheck",
    "HessianOperator",
    "KFACOperator",
    "LinearSolveResult",
    "check_hessian",
    "gradient",
    "hessian",
    "hvp",
    "jacobian",
    *spectrum.__all__,
    *geometry.__all__,
    *optimize.__all__,
    *diagnostics.__all__,
    *distributed.__all__,
]


def __getattr__(name: str):
    # hesse.optim and hesse.plot are imported on first use (plot needs matplotlib)
    if name in ("optim", "plot", "testing", "demo_models"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'hesse' has no attribute {name!r}")
