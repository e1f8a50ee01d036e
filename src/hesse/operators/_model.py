"""Former home of :class:`ModelLoss`; it lives in :mod:`._evaluation` (re-exported here)."""

from ._evaluation import (
    AttentionFallbackWarning,
    HesseModeWarning,
    ModelLoss,
    is_derivative_rule_failure,
    math_attention,
    select_parameters,
)

__all__ = [
    "AttentionFallbackWarning",
    "HesseModeWarning",
    "ModelLoss",
    "is_derivative_rule_failure",
    "math_attention",
    "select_parameters",
]
