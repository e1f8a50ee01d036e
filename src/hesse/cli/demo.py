"""``hesse demo``: the main job on the built-in default.

1. The quadratic ``f(x, y) = 3x² + 2xy + 2y² − 4x − 6y``: critical point, Hessian, eigenvalues,
   classification.
2. A 64-32-32-10 tanh MLP on scikit-learn's digits trained by full-batch gradient descent on the
   mean squared error to one-hot targets at a learning rate where λ_max rises to 2/lr and hovers
   there (the edge of stability, Cohen et al. 2021, who use the same MSE setting), monitored by
   :class:`hesse.SharpnessMonitor`; then the final point's top eigenvalues, spectral density,
   summary and loss-landscape slices, written to a report folder (``hesse.diagnostics.report``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hesse._progress import message
from hesse.cli._errors import CLIError
from hesse.cli._options import add_out, add_output
from hesse.demo_models import digits_data, digits_mlp
from hesse.diagnostics.report import analyze_training, diagnosis, quadratic_example

#: (num_samples, lr, train_steps, every, top k, density steps, landscape steps). The 2-D landscape
#: uses ``landscape_steps // 2`` points a side: 41 gives a 20 x 20 grid, enough to show its shape
#: (400 forward passes of a 3,466-parameter model, well under a second).
FULL: dict[str, Any] = dict(num_samples=512, lr=1.0, train_steps=400, every=10, k=20, density_steps=80, landscape_steps=41)
QUICK: dict[str, Any] = dict(num_samples=256, lr=1.0, train_steps=150, every=15, k=5, density_steps=40, landscape_steps=11)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="train a digits MLP to the edge of stability, monitor it, write a report",
                       description="Train a small MLP on scikit-learn's digits with full-batch gradient descent "
                       "at a learning rate that reaches the edge of stability, monitor lambda_max against 2/lr, "
                       "and write a report folder (figures, report.json, summary.md).")
    p.add_argument("--quick", action="store_true", help="a shorter run (about 4x fewer steps and samples)")
    add_out(p)
    add_output(p)
    p.set_defaults(func=run)


def demo_problem(num_samples: int, seed: int = 0) -> dict:
    """The demo's problem: digits MLP (3,466 parameters), MSE to one-hot targets, float32."""
    import torch


    X, y = digits_data(num_samples)
    Y = torch.nn.functional.one_hot(y, 10).to(X.dtype)
    return {"model": digits_mlp(hidden=32, depth=2, seed=seed), "loss_fn": torch.nn.MSELoss(), "data": (X, Y)}


def run(args) -> int:
    import torch

    threads = torch.get_num_threads()
    # The demo's model is tiny (3,466 parameters): intra-op threads only add synchronisation, which
    # on a loaded 2-core machine measured 30x slower per product than one thread. Restored below.
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args) -> int:
    import torch

    from hesse.plot.report import write_report

    verbose = not args.quiet
    cfg = QUICK if args.quick else FULL
    out_dir = args.out
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CLIError(f"--out {out_dir!r} exists and is not a directory; pick another folder.")
    torch.manual_seed(0)
    message("[1/3] f(x, y) = 3x^2 + 2xy + 2y^2 - 4x - 6y: critical point, Hessian, classification", verbose)
    example, f = quadratic_example()
    if not args.json:  # step 1's result before step 2 starts, not after step 3's report
        _print_example(example)
    message(f"[2/3] digits MLP, full-batch GD at lr = {cfg['lr']} (2/lr = {2 / cfg['lr']:.3g}), "
            f"{cfg['train_steps']} steps, sharpness every {cfg['every']}", verbose)
    prob = demo_problem(cfg["num_samples"])
    result = analyze_training(prob["model"], prob["loss_fn"], prob["data"], train_steps=cfg["train_steps"],
                              lr=cfg["lr"], every=cfg["every"], k=cfg["k"], density_steps=cfg["density_steps"],
                              landscape_steps=cfg["landscape_steps"], log_dir=os.path.join(out_dir, "log"),
                              progress=verbose)
    message(f"[3/3] report -> {out_dir}/", verbose)
    files = write_report(out_dir, result, example, f, title="hesse demo: a digits MLP at the edge of stability",
                         progress=verbose)
    if not files:  # another rank of a torchrun job: rank 0 writes and prints
        return 0
    with open(files["report.json"]) as fh:
        payload = json.load(fh)
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    fin = payload["final"]
    print(f"MLP on digits ({fin['num_parameters']} parameters, final loss {fin['loss']:.4f})")
    print(f"  top Hessian eigenvalues {[round(v, 4) for v in fin['top_eigenvalues']]}")

    print("Diagnosis: " + diagnosis(payload))
    print(f"Report written to {out_dir}/ ({', '.join(payload['files'])})")
    return 0


def _print_example(ex: dict) -> None:
    """Step 1's result: the quadratic's critical point, Hessian, eigenvalues and classification."""
    print("f(x, y) = 3x^2 + 2xy + 2y^2 - 4x - 6y")
    print(f"  critical point      {[round(v, 6) for v in ex['critical_point']]}")
    print(f"  Hessian             {ex['hessian']}")
    print(f"  eigenvalues         {[round(v, 6) for v in ex['eigenvalues']]}")
    print(f"  condition number    {ex['condition_number']:.6f}")
    print(f"  classification      {ex['classification']}", flush=True)
