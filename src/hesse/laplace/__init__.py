"""Laplace approximations of a network's posterior on hesse's curvature operators: full, diagonal,
K-FAC and EK-FAC GGN structures, the marginal likelihood and its prior tuning, posterior samples
and predictives (Daxberger et al. 2021, "Laplace Redux")."""

from .posterior import CURVATURES, Laplace, MarginalLikelihoodFit

__all__ = ["CURVATURES", "Laplace", "MarginalLikelihoodFit"]
