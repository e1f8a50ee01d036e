"""Ground truth shipped with hesse: dense references, problems with known spectra and minima,
assert helpers. Used by hesse's own tests and available to users testing their code."""

from .reference import dense_hessian_of_model, flat_loss_of_model

__all__ = ["dense_hessian_of_model", "flat_loss_of_model"]
