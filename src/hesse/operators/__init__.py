"""Curvature operators: one symmetric linear-operator base class and its implementations."""

from .base import CurvatureOperator
from .composition import DenseOperator, ScaledOperator, ShiftedOperator, SumOperator
from .fisher import FisherOperator
from .ggn import GGNOperator
from .hessian import FunctionHessianOperator, HessianOperator
from .kfac import KFACOperator
from .solve import LinearSolveResult, solve

__all__ = [
    "CurvatureOperator",
    "DenseOperator",
    "FisherOperator",
    "FunctionHessianOperator",
    "GGNOperator",
    "HessianOperator",
    "KFACOperator",
    "LinearSolveResult",
    "ScaledOperator",
    "ShiftedOperator",
    "SumOperator",
    "solve",
]
