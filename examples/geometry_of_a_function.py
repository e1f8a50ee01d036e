"""Critical points of a function and how different methods reach a minimum.

Run: ``python examples/geometry_of_a_function.py [--out geometry-example]``. Finds and classifies
every critical point of ``f(x, y) = x⁴ + y⁴ − 2x² − 2y² + 1`` in the box [−2, 2]² (four minima,
four saddles, one maximum) and draws them over the contours; then minimizes Rosenbrock's function
from (−1.2, 1) with gradient descent, BFGS and damped Newton and draws their paths and the decay of
the gradient norm (linear convergence for gradient descent, quadratic for Newton).
"""

import argparse
import os

import torch

import hesse


def quartic(p: torch.Tensor) -> torch.Tensor:
    return p[0] ** 4 + p[1] ** 4 - 2 * p[0] ** 2 - 2 * p[1] ** 2 + 1


def rosenbrock(p: torch.Tensor) -> torch.Tensor:
    return 100 * (p[1] - p[0] ** 2) ** 2 + (1 - p[0]) ** 2


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="geometry-example")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    points = hesse.critical_points(quartic, [(-2, 2), (-2, 2)], num_starts=64, progress=False)
    print(points)
    from hesse.plot import plot_contour, plot_convergence, plot_trajectories

    fig = plot_contour(quartic, [(-2, 2), (-2, 2)], points=list(points), title="x⁴ + y⁴ − 2x² − 2y² + 1")
    fig.savefig(os.path.join(args.out, "critical_points.png"), dpi=80)

    results = {
        "gd": hesse.minimize(rosenbrock, [-1.2, 1.0], method="gd", lr=1e-3, max_iter=1000),
        "bfgs": hesse.minimize(rosenbrock, [-1.2, 1.0], method="bfgs"),
        "newton-damped": hesse.minimize(rosenbrock, [-1.2, 1.0], method="newton-damped"),
    }
    for name, r in results.items():
        print(f"{name:14s} success={r.success!s:5s} iterations={r.nit:4d} |g|={r.grad_norm:.1e} "
              f"order={r.convergence_order}")
    plot_trajectories(rosenbrock, results, variables=("x", "y"), title="Rosenbrock from (-1.2, 1)").savefig(
        os.path.join(args.out, "trajectories.png"), dpi=80)
    plot_convergence(results).savefig(os.path.join(args.out, "convergence.png"), dpi=80)
    print(f"figures in {args.out}/")
    return {"points": points, "results": results}


if __name__ == "__main__":
    main()
