"""Diagnostics benchmark: the cost of tracking lambda_max during training, side by side in one run.

Along the demo's trajectory (digits MLP 64-32-32-10, 3,466 parameters, full-batch GD at lr = 1 on
the MSE to one-hot targets, which reaches the edge of stability near step 110), every ``every``
steps we measure lambda_max three ways at the same parameters:

- hesse ``SharpnessMonitor`` (Krylov-Schur Lanczos warm-started from the previous top eigenvector,
  tol 1e-4 on the relative residual),
- hesse ``eigsh`` cold (random start, same tol),
- PyHessian ``hessian(...).eigenvalues(top_n=1)`` (power iteration, its defaults maxIter=100,
  tol=1e-3), what a user would otherwise call in a training loop,

and report Hessian-vector products (counted), wall time and relative error against a tight
reference (eigsh tol 1e-10). Prints JSON and a table; writes benchmarks/results/bench_diagnostics.json.

Usage: .venv/bin/python benchmarks/bench_diagnostics.py [--steps 300] [--every 10]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np
import torch

import hesse
from hesse.demo_models import digits_data, digits_mlp

warnings.filterwarnings("ignore")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from pyhessian import hessian as PyHessian

    phmod = sys.modules["pyhessian.hessian"]
    counter = {"n": 0}
    orig = phmod.hessian_vector_product

    def counted(*a, **kw):
        counter["n"] += 1
        return orig(*a, **kw)

    phmod.hessian_vector_product = counted

    X, y = digits_data(512)
    Y = torch.nn.functional.one_hot(y, 10).float()
    model, loss_fn = digits_mlp(hidden=32), torch.nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    monitor = hesse.SharpnessMonitor(model, loss_fn, (X, Y), every=args.every, progress=False)
    rows = []
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss_fn(model(X), Y).backward()
        opt.step()
        if step % args.every:
            continue
        t = time.perf_counter()
        rec = monitor.measure(opt, step=step)
        t_warm = time.perf_counter() - t
        H = hesse.HessianOperator(model, loss_fn, (X, Y))
        ref = float(hesse.eigsh(H, k=1, tol=1e-10, dense_threshold=0).values[0])
        H.reset_counter()
        t = time.perf_counter()
        cold = hesse.eigsh(H, k=1, tol=1e-4, seed=step)
        t_cold = time.perf_counter() - t + 0.0
        counter["n"] = 0
        t = time.perf_counter()
        ph = PyHessian(model, loss_fn, data=(X, Y), cuda=False)
        ph_vals, _ = ph.eigenvalues(top_n=1)
        t_ph = time.perf_counter() - t
        rows.append(dict(step=step, ratio=rec.sharpness_ratio, reference=ref,
                         warm_products=rec.num_matvecs, warm_s=t_warm, warm_err=abs(rec.lambda_max - ref) / ref,
                         cold_products=cold.num_matvecs, cold_s=t_cold,
                         cold_err=abs(float(cold.values[0]) - ref) / ref,
                         pyhessian_products=counter["n"], pyhessian_s=t_ph,
                         pyhessian_err=abs(float(ph_vals[0]) - ref) / ref))
        # the warm monitor's time includes building its operator (one forward/backward); so does PyHessian's
    phmod.hessian_vector_product = orig

    def med(key):
        return float(np.median([r[key] for r in rows]))

    def worst(key):
        return float(np.max([r[key] for r in rows]))

    summary = {name: {"median_products": med(f"{name}_products"), "median_seconds": med(f"{name}_s"),
                      "max_rel_error": worst(f"{name}_err"), "total_products": int(sum(r[f"{name}_products"] for r in rows))}
               for name in ("warm", "cold", "pyhessian")}
    summary["ratios"] = {
        "pyhessian_over_warm_products": summary["pyhessian"]["total_products"] / summary["warm"]["total_products"],
        "cold_over_warm_products": summary["cold"]["total_products"] / summary["warm"]["total_products"],
        "pyhessian_over_warm_median_time": summary["pyhessian"]["median_seconds"] / summary["warm"]["median_seconds"],
    }
    reached = next((r["step"] for r in rows if r["ratio"] >= 0.95), None)
    summary["phases"] = {}
    for phase, sel in (("before_edge", [r for r in rows if reached is None or r["step"] < reached]),
                       ("at_edge", [r for r in rows if reached is not None and r["step"] >= reached])):
        if sel:
            summary["phases"][phase] = {k: float(np.median([r[k] for r in sel])) for k in
                                        ("warm_products", "cold_products", "pyhessian_products",
                                         "warm_err", "pyhessian_err")} | {"checks": len(sel)}
    summary["reached_step"] = reached
    out = {"problem": "digits MLP 3,466 params, 512 samples, MSE one-hot, GD lr=1", "steps": args.steps,
           "every": args.every, "threads": args.threads, "checks": len(rows), "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=2))
    print(f"{'method':<34}{'median products':>16}{'total':>8}{'median s':>10}{'max rel err':>13}")
    labels = {"warm": "hesse SharpnessMonitor (warm)", "cold": "hesse eigsh cold", "pyhessian": "PyHessian eigenvalues(top_n=1)"}
    for name, label in labels.items():
        s = summary[name]
        print(f"{label:<34}{s['median_products']:>16.0f}{s['total_products']:>8d}{s['median_seconds']:>10.3f}"
              f"{s['max_rel_error']:>13.2e}")
    for phase, v in summary["phases"].items():
        print(f"{phase} ({v['checks']} checks): median products warm {v['warm_products']:.1f} / cold "
              f"{v['cold_products']:.1f} / PyHessian {v['pyhessian_products']:.1f}; median rel. error warm "
              f"{v['warm_err']:.1e}, PyHessian {v['pyhessian_err']:.1e}")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    with open(os.path.join(os.path.dirname(__file__), "results", "bench_diagnostics.json"), "w") as fh:
        json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
