"""hesse.spectrum: eigenpairs, trace, diagonal, density and summaries of curvature operators.

One module per concept: ``lanczos`` (:func:`eigsh`), ``power`` (:func:`power_iteration`), ``trace``,
``diagonal``, ``density`` (stochastic Lanczos quadrature), ``summary`` (:func:`summarize`) and
``per_layer``; ``analysis`` reads outliers and subspace overlaps off a spectrum. See the user
guide page "Spectrum" (docs/guide/spectrum.md).
"""

from .analysis import OutlierAnalysis, outliers, principal_angles, subspace_overlap
from .density import DensityEstimate, SpectralDensity, spectral_density
from .diagonal import DiagonalEstimate, diagonal
from .lanczos import EigshResult, eigsh
from .per_layer import LayerSpectrumRow, PerLayerSpectrum, layer_groups, per_layer
from .power import power_iteration
from .summary import SpectrumSummary, definiteness_verdict, summarize
from .trace import TraceEstimate, trace

__all__ = [
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
    "definiteness_verdict",
    "per_layer",
    "PerLayerSpectrum",
    "LayerSpectrumRow",
    "layer_groups",
    "outliers",
    "OutlierAnalysis",
    "subspace_overlap",
    "principal_angles",
    "DensityEstimate",
]
