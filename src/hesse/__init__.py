"""hesse: second-order analysis of functions and neural-network losses.

Layers (arrows point down): autodiff primitives (``_autodiff``) -> curvature operators
(``operators``) -> algorithms (``spectrum``, ``geometry``, ``optimize``, ``optim``) ->
diagnostics, plots, CLI.

The names in ``hesse.__all__`` are what a user needs: the autodiff functions, the curvature
operators and :func:`solve`, the spectral and geometric algorithms, ``minimize``, the sharpness
monitor and landscape slices, and the result types these return. Everything else lives in its
subpackage: engines such as ``hesse.geometry.higher_order_analysis`` or ``hesse.optimize.METHODS``,
the process-group helpers in ``hesse.distributed`` (``torchrun_session``, ``init_from_env``,
``get_rank``, ...), the ``torch.optim`` optimizers in ``hesse.optim`` and the figures in
``hesse.plot``.
"""

from . import (  # noqa: F401
    diagnostics,
    distributed,
    geometry,
    influence,
    laplace,
    operators,
    optimize,
    spectrum,
)
from ._autodiff import HessianCheck, check_hessian, gradient, hessian, hvp, jacobian
from .diagnostics import (
    LandscapeResult,
    SharpnessMonitor,
    SharpnessRecord,
    compare,
    landscape,
    stability_limit,
)
from .geometry import (
    CriticalPoint,
    CriticalPointList,
    DefinitenessResult,
    TaylorModel,
    classify,
    critical_points,
    definiteness,
    taylor,
)
from .influence import Influence
from .laplace import Laplace
from .operators import (
    CurvatureOperator,
    DenseOperator,
    EKFACOperator,
    FisherOperator,
    GGNOperator,
    HessianOperator,
    KFACOperator,
    LinearSolveResult,
    solve,
)
from .optimize import OptimizeHistory, OptimizeResult, least_squares, minimize
from .spectrum import (
    DiagonalEstimate,
    EigshResult,
    PerLayerSpectrum,
    SpectralDensity,
    SpectrumSummary,
    TraceEstimate,
    diagonal,
    eigsh,
    layer_groups,
    outliers,
    per_layer,
    power_iteration,
    spectral_density,
    subspace_overlap,
    summarize,
    trace,
)

__version__ = "0.1.0"

__all__ = [
    # autodiff
    "gradient",
    "hessian",
    "hvp",
    "jacobian",
    "check_hessian",
    "HessianCheck",
    # curvature operators and linear solves
    "CurvatureOperator",
    "DenseOperator",
    "HessianOperator",
    "GGNOperator",
    "FisherOperator",
    "KFACOperator",
    "EKFACOperator",
    "solve",
    "LinearSolveResult",
    # spectra
    "outliers",
    "subspace_overlap",
    "eigsh",
    "EigshResult",
    "power_iteration",
    "trace",
    "TraceEstimate",
    "diagonal",
    "DiagonalEstimate",
    "spectral_density",
    "SpectralDensity",
    "summarize",
    "SpectrumSummary",
    "per_layer",
    "layer_groups",
    "PerLayerSpectrum",
    # geometry of critical points
    "classify",
    "CriticalPoint",
    "critical_points",
    "CriticalPointList",
    "definiteness",
    "DefinitenessResult",
    "taylor",
    "TaylorModel",
    # optimization
    "minimize",
    "least_squares",
    "OptimizeResult",
    "OptimizeHistory",
    # Laplace approximations
    "Laplace",
    # influence functions
    "Influence",
    # training diagnostics
    "SharpnessMonitor",
    "SharpnessRecord",
    "stability_limit",
    "landscape",
    "LandscapeResult",
    "compare",
]


def __getattr__(name: str):
    # hesse.optim, hesse.plot, hesse.testing and hesse.demo_models are imported on first use
    # (plot needs matplotlib)
    if name in ("optim", "plot", "testing", "demo_models"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'hesse' has no attribute {name!r}")
