"""torch.optim optimizers that use curvature: K-FAC, Shampoo, SAM, Hessian-free, natural gradient,
AdaHessian. Import as ``hesse.optim``."""

__all__: list[str] = []
