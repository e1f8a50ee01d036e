"""hesse.diagnostics: watch curvature while a network trains, slice the loss landscape, write reports.

``monitor`` (:class:`SharpnessMonitor`), ``landscape`` (:func:`landscape`), ``logging`` (JSON lines /
CSV / TensorBoard writer, :func:`read_log`), ``report`` (the analysis behind ``hesse demo`` and
``hesse report``) and, when PyTorch Lightning is installed, ``lightning`` (a callback).
See the user guide page "Training diagnostics and reports" (docs/guide/diagnostics.md).
"""

from .landscape import LandscapeResult, filter_normalized_direction, landscape
from .logging import read_log
from .monitor import (
    DiagonalCongruence,
    LogOptions,
    Measurements,
    SharpnessMonitor,
    SharpnessRecord,
    StabilityBands,
    stability_limit,
)
from .sharpness import (
    SharpnessComparison,
    SharpnessValue,
    adaptive_sharpness,
    compare,
    epsilon_sharpness,
    filter_normalized_sharpness,
    filter_scales,
)

__all__ = [
    "SharpnessMonitor",
    "SharpnessRecord",
    "Measurements",
    "StabilityBands",
    "LogOptions",
    "DiagonalCongruence",
    "stability_limit",
    "read_log",
    "landscape",
    "LandscapeResult",
    "filter_normalized_direction",
    "epsilon_sharpness",
    "adaptive_sharpness",
    "filter_normalized_sharpness",
    "filter_scales",
    "compare",
    "SharpnessComparison",
    "SharpnessValue",
]
