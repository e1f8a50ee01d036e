"""Influence functions on hesse's curvature operators: the effect of each training example on a
query's loss (Koh & Liang 2017), with the exact Hessian, the GGN, K-FAC or EK-FAC."""

from .scores import CURVATURES, SOLVERS, Influence

__all__ = ["CURVATURES", "SOLVERS", "Influence"]
