"""``hesse demo``: the main job on the built-in default."""

from __future__ import annotations

import json

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the main job on the built-in default (digits MLP)")
    p.add_argument("--quick", action="store_true", help="a shorter run (used by the tests)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args) -> int:
    import hesse
    from hesse._progress import message
    from hesse.demo_models import digits_mlp_problem

    verbose = not args.quiet
    out: dict = {}
    # 1. the seeds' worked example f(x, y) = 3x² + 2xy + 2y² − 4x − 6y
    message("[1/2] the seeds' example f(x, y) = 3x^2 + 2xy + 2y^2 - 4x - 6y", verbose)

    def f(p):
        x, y = p[0], p[1]
        return 3 * x**2 + 2 * x * y + 2 * y**2 - 4 * x - 6 * y

    H = hesse.hessian(f, [0.0, 0.0])
    g0 = hesse.gradient(f, [0.0, 0.0])
    x_star = torch.linalg.solve(H, -g0)  # f is quadratic: one Newton step from 0 is exact
    H_star = hesse.hessian(f, x_star)
    eig = torch.linalg.eigvalsh(H_star)
    kind = "minimum" if bool((eig > 0).all()) else "maximum" if bool((eig < 0).all()) else "saddle"
    out["example"] = {
        "critical_point": x_star.tolist(),
        "gradient_norm": float(hesse.gradient(f, x_star).norm()),
        "hessian": H_star.tolist(),
        "eigenvalues": eig.tolist(),
        "condition_number": float(eig.max() / eig.min()),
        "classification": kind,
    }
    # 2. top eigenvalues of a small MLP's loss on digits
    message("[2/2] top Hessian eigenvalues of an MLP trained briefly on digits", verbose)
    prob = digits_mlp_problem(num_samples=256 if args.quick else 512,
                              train_steps=30 if args.quick else 100)
    op = hesse.HessianOperator(prob["model"], prob["loss_fn"], prob["data"])
    from scipy.sparse.linalg import eigsh

    vals = eigsh(op.to_scipy(), k=5, which="LA", return_eigenvectors=False)
    out["mlp"] = {"num_parameters": op.shape[0], "loss": op.loss,
                  "top_eigenvalues": sorted(vals.tolist(), reverse=True),
                  "num_matvecs": op.num_matvecs}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    ex = out["example"]
    print("f(x, y) = 3x^2 + 2xy + 2y^2 - 4x - 6y")
    print(f"  critical point      {[round(v, 6) for v in ex['critical_point']]}")
    print(f"  Hessian             {ex['hessian']}")
    print(f"  eigenvalues         {[round(v, 6) for v in ex['eigenvalues']]}")
    print(f"  condition number    {ex['condition_number']:.6f}")
    print(f"  classification      {ex['classification']}")
    m = out["mlp"]
    print(f"MLP on digits ({m['num_parameters']} parameters, loss {m['loss']:.4f})")
    print(f"  top-5 Hessian eigenvalues {[round(v, 4) for v in m['top_eigenvalues']]}"
          f" ({m['num_matvecs']} Hessian-vector products)")
    return 0
