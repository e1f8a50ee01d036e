"""Curvature operators: one symmetric linear-operator base class and its implementations."""

from .base import CurvatureOperator
from .composition import DenseOperator, ScaledOperator, ShiftedOperator, SumOperator
from .ekfac import EKFACInverseOperator, EKFACOperator
from .fisher import FisherOperator
from .ggn import GGNOperator
from .hessian import FunctionHessianOperator, HessianOperator
from .kfac import KFACOperator
from .per_sample import ggn_diagonal
from .solve import (
    CGState,
    LinearSolveResult,
    MartensProgress,
    NegativeCurvature,
    RecordIterates,
    ResidualTolerance,
    Stop,
    StoppingRule,
    TrustRegion,
    conjugate_gradient,
    solve,
)

__all__ = [
    "CGState",
    "CurvatureOperator",
    "DenseOperator",
    "EKFACInverseOperator",
    "EKFACOperator",
    "FisherOperator",
    "FunctionHessianOperator",
    "GGNOperator",
    "HessianOperator",
    "KFACOperator",
    "LinearSolveResult",
    "MartensProgress",
    "NegativeCurvature",
    "RecordIterates",
    "ResidualTolerance",
    "ScaledOperator",
    "ShiftedOperator",
    "Stop",
    "StoppingRule",
    "SumOperator",
    "TrustRegion",
    "conjugate_gradient",
    "ggn_diagonal",
    "solve",
]
