"""hesse.geometry: critical points and local geometry (user guide page "Critical points and local
geometry", docs/guide/geometry.md).

Modules: ``classify`` (CriticalPoint, classify), ``definiteness`` (four definiteness tests),
``higher_order`` (splitting lemma + nested forward-mode derivatives), ``taylor`` (Taylor models),
``critical_points`` (multi-start Newton + sympy). Exports are listed in __all__.
"""

from hesse.geometry.classify import KINDS, CriticalPoint, classify
from hesse.geometry.critical_points import CriticalPointList, critical_points
from hesse.geometry.definiteness import DefinitenessResult, definiteness
from hesse.geometry.higher_order import HigherOrderResult, higher_order_analysis
from hesse.geometry.taylor import TaylorErrorReport, TaylorModel, taylor

__all__ = [
    "KINDS",
    "CriticalPoint",
    "CriticalPointList",
    "DefinitenessResult",
    "HigherOrderResult",
    "TaylorErrorReport",
    "TaylorModel",
    "classify",
    "critical_points",
    "definiteness",
    "higher_order_analysis",
    "taylor",
]
