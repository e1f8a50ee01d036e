"""Spectrum benchmarks, side by side in one run (prints JSON and a table; writes
benchmarks/results/bench_spectrum.json).

1. top-5 eigenvalues: products, wall time and relative error of hesse.eigsh vs scipy ARPACK eigsh
   (over the same hesse operator and over curvlinops' HessianLinearOperator), PyHessian
   ``eigenvalues(top_n=5)``, hessian-eigenthings ``lanczos`` and ``deflated_power_iteration``;
   on a digits MLP (float64, n = 7,215, truth = eigvalsh of the dense Hessian) and a digits CNN
   (float64, n >= 1e5, truth = ARPACK at tol=0).
2. trace: mean relative error over 10 seeds at 12 / 48 / 198 products (hesse xtrace and hutch++,
   curvlinops hutchinson / hutchpp / xtrace, PyHessian trace()), plus 3-stderr coverage for hesse.
3. density: Wasserstein-1 distance (over the spectrum's width) to the exact eigenvalues at 100
   products, and wall time, hesse SLQ (batched probes) vs PyHessian density().

Usage: .venv/bin/python benchmarks/bench_spectrum.py [--quick] [--no-cnn]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np
import torch

import hesse
from hesse.demo_models import digits_cnn, digits_data, digits_mlp, train
from hesse.testing.spectra import wasserstein1

warnings.filterwarnings("ignore")


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def rel_err(vals, truth):
    vals = np.sort(np.asarray(vals, dtype=np.float64))[::-1][: len(truth)]
    return float(np.max(np.abs(vals - truth) / np.abs(truth)))


def top5_rows(name, model, loss_fn, X, y, truth, peers=True, cheap=False):
    rows = []
    op = hesse.HessianOperator(model, loss_fn, (X, y))
    # hesse and ARPACK on the same operator, interleaved 3 times (median wall: the machine is noisy)
    from scipy.sparse.linalg import eigsh as arpack

    A = op.to_scipy()
    walls = {"hesse": [], "arpack": [], "arpack_tol": []}
    for _ in range(3):
        op.reset_counter()
        r, t = timed(lambda: hesse.eigsh(op, k=5, tol=1e-6))
        walls["hesse"].append(t)
        op.reset_counter()
        v, t = timed(lambda: arpack(A, k=5, which="LA", return_eigenvectors=False))
        walls["arpack"].append(t)
        arpack_products = op.num_matvecs
        # ARPACK told the accuracy asked of the benchmark (its default tol=0 is machine precision)
        op.reset_counter()
        v_tol, t = timed(lambda: arpack(A, k=5, which="LA", tol=1e-10, return_eigenvectors=False))
        walls["arpack_tol"].append(t)
        arpack_tol_products = op.num_matvecs
    rows.append(dict(problem=name, method="hesse.eigsh (Krylov-Schur)", products=r.num_matvecs,
                     wall_s=float(np.median(walls["hesse"])), rel_err=rel_err(r.values.numpy(), truth),
                     converged=r.all_converged))
    rows.append(dict(problem=name, method="scipy eigsh (ARPACK) on hesse op", products=arpack_products,
                     wall_s=float(np.median(walls["arpack"])), rel_err=rel_err(v, truth), converged=True))
    rows.append(dict(problem=name, method="scipy eigsh (ARPACK, tol=1e-10) on hesse op",
                     products=arpack_tol_products, wall_s=float(np.median(walls["arpack_tol"])),
                     rel_err=rel_err(v_tol, truth), converged=True))
    if not peers:
        return rows
    if cheap:  # the CNN: skip the second ARPACK run (same algorithm as above)
        return rows + _pyhessian_and_he(name, model, loss_fn, X, y, truth, op, cheap)
    # curvlinops + ARPACK
    from curvlinops import HessianLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    cl = HessianLinearOperator(model, loss_fn, params, [(X, y)], check_deterministic=False)
    counter = {"n": 0}
    Acl = cl.to_scipy()
    from scipy.sparse.linalg import LinearOperator

    def mv(x):
        counter["n"] += 1 if x.ndim == 1 else x.shape[1]
        return Acl @ x

    Lcl = LinearOperator(Acl.shape, matvec=mv, matmat=mv, dtype=np.float64)
    v, t = timed(lambda: arpack(Lcl, k=5, which="LA", return_eigenvectors=False))
    rows.append(dict(problem=name, method="curvlinops + scipy eigsh", products=counter["n"], wall_s=t,
                     rel_err=rel_err(v, truth), converged=True))
    return rows + _pyhessian_and_he(name, model, loss_fn, X, y, truth, op, cheap)


def _pyhessian_and_he(name, model, loss_fn, X, y, truth, op, cheap):
    rows = []
    # PyHessian
    from pyhessian import hessian as PyHessian

    model.zero_grad()
    ph = PyHessian(model, loss_fn, data=(X, y), cuda=False)
    calls = {"n": 0}
    import sys

    phmod = sys.modules["pyhessian.hessian"]

    orig = phmod.hessian_vector_product

    def counted(*a, **kw):
        calls["n"] += 1
        return orig(*a, **kw)

    phmod.hessian_vector_product = counted
    try:
        (ev, _), t = timed(lambda: ph.eigenvalues(top_n=5))
    finally:
        phmod.hessian_vector_product = orig
    rows.append(dict(problem=name, method="PyHessian eigenvalues(top_n=5)", products=calls["n"], wall_s=t,
                     rel_err=rel_err(ev, truth), converged=None))
    model.zero_grad(set_to_none=True)
    # hessian-eigenthings (over the same hesse product, counted)
    from hessian_eigenthings.algorithms import deflated_power_iteration, lanczos
    from hessian_eigenthings.operators.base import LambdaOperator

    n = op.shape[0]
    he = [
        ("hessian-eigenthings lanczos (default steps)", lambda L: lanczos(L, k=5, which="LA", seed=0)),
        ("hessian-eigenthings lanczos (60 steps)", lambda L: lanczos(L, k=5, max_iter=60, which="LA", seed=0)),
        ("hessian-eigenthings deflated power", lambda L: deflated_power_iteration(L, k=5, seed=0)),
    ]
    for label, fn in (he[:1] if cheap else he):
        op.reset_counter()
        L = LambdaOperator(lambda v: op.matvec(v.to(op.dtype)), n, dtype=op.dtype)
        try:
            res, t = timed(lambda: fn(L))
            vals = res.eigenvalues.detach().cpu().numpy()
            rows.append(dict(problem=name, method=label, products=op.num_matvecs, wall_s=t,
                             rel_err=rel_err(vals, truth), converged=None))
        except Exception as err:  # noqa: BLE001
            rows.append(dict(problem=name, method=label, products=op.num_matvecs, wall_s=None,
                             rel_err=None, converged=None, error=f"{type(err).__name__}: {err}"[:120]))
    return rows


def trace_rows(model, loss_fn, X, y, exact_trace, seeds=10):
    from curvlinops import HessianLinearOperator
    from curvlinops.trace.epperly2024xtrace import xtrace as cl_xtrace
    from curvlinops.trace.hutchinson import hutchinson_trace
    from curvlinops.trace.meyer2020hutch import hutchpp_trace
    from pyhessian import hessian as PyHessian

    op = hesse.HessianOperator(model, loss_fn, (X, y))
    params = [p for p in model.parameters() if p.requires_grad]
    cl = HessianLinearOperator(model, loss_fn, params, [(X, y)], check_deterministic=False)
    rows = []
    for m in (12, 48, 198):
        res = {}
        for meth in ("xtrace", "hutch++"):
            errs, cover, wall = [], 0, 0.0
            for s in range(seeds):
                e, t = timed(lambda: hesse.trace(op, meth, num_matvecs=m, seed=s))
                wall += t
                errs.append(abs(e.value - exact_trace) / abs(exact_trace))
                cover += abs(e.value - exact_trace) <= 3 * e.stderr
            res[f"hesse {meth}"] = (float(np.mean(errs)), cover / seeds, wall / seeds)
        for label, fn in (("curvlinops hutchinson", hutchinson_trace), ("curvlinops hutch++", hutchpp_trace),
                          ("curvlinops xtrace", cl_xtrace)):
            errs, wall = [], 0.0
            mm = m if label != "curvlinops hutch++" else m  # 12, 48, 198 are divisible by 2 and 3
            for s in range(seeds):
                torch.manual_seed(s)
                v, t = timed(lambda: float(fn(cl, mm)))
                wall += t
                errs.append(abs(v - exact_trace) / abs(exact_trace))
            res[label] = (float(np.mean(errs)), None, wall / seeds)
        errs, wall = [], 0.0
        for s in range(seeds):
            torch.manual_seed(s)
            model.zero_grad()
            ph = PyHessian(model, loss_fn, data=(X, y), cuda=False)
            v, t = timed(lambda: float(np.mean(ph.trace(maxIter=m, tol=-1.0))))
            wall += t
            errs.append(abs(v - exact_trace) / abs(exact_trace))
        model.zero_grad(set_to_none=True)
        res["PyHessian trace()"] = (float(np.mean(errs)), None, wall / seeds)
        for k, (err, cov, wall) in res.items():
            rows.append(dict(budget=m, method=k, mean_rel_err=err, coverage_3se=cov, wall_s=wall))
    return rows


def _torch_eig_shim(T, eigenvectors=False):
    """PyHessian 0.1 calls torch.eig (removed in torch 1.9+); T is symmetric, so eigh is exact."""
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], 1), V


def density_rows(model, loss_fn, X, y, evals, budget=100):
    from pyhessian import hessian as PyHessian

    torch.eig = _torch_eig_shim

    width = float(evals.max() - evals.min())
    op = hesse.HessianOperator(model, loss_fn, (X, y))
    rows = []
    for p in (1, 2, 4, 10):
        m = budget // p
        ws, wall = [], 0.0
        for s in range(3):
            d, t = timed(lambda: hesse.spectral_density(op, num_probes=p, num_steps=m, seed=s))
            wall += t
            ws.append(wasserstein1(d.nodes, d.weights, evals) / width)
        rows.append(dict(method=f"hesse SLQ {p} probes x {m} steps", products=p * m,
                         w1_over_width=float(np.mean(ws)), wall_s=wall / 3))
    ws, wall = [], 0.0
    for s in range(3):
        torch.manual_seed(s)
        model.zero_grad()
        ph = PyHessian(model, loss_fn, data=(X, y), cuda=False)
        (nodes, weights), t = timed(lambda: ph.density(iter=budget, n_v=1))
        wall += t
        ws.append(wasserstein1(torch.tensor(nodes), torch.tensor(weights), evals) / width)
    model.zero_grad(set_to_none=True)
    rows.append(dict(method=f"PyHessian density 1 probe x {budget} steps", products=budget,
                     w1_over_width=float(np.mean(ws)), wall_s=wall / 3))
    return rows


def table(rows, cols):
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    out = [" | ".join(cols), " | ".join("---" for _ in cols)]
    out += [" | ".join(fmt(r.get(c)) for c in cols) for r in rows]
    return "\n".join(out)


def cnn_top5(loss_fn, results):
    Xi, yi = digits_data(num_samples=128, dtype=torch.float64, image=True)
    cnn = digits_cnn(channels=66, seed=0, dtype=torch.float64)
    train(cnn, Xi, yi, steps=30, lr=0.05)
    cnn.eval()
    cop = hesse.HessianOperator(cnn, loss_fn, (Xi, yi))
    nc = cop.shape[0]
    print(f"CNN n={nc}: reference by ARPACK tol=1e-13...", flush=True)
    from scipy.sparse.linalg import eigsh as arpack

    ref = np.sort(arpack(cop.to_scipy(), k=5, which="LA", tol=1e-13, return_eigenvectors=False))[::-1]
    results["cnn_n"] = nc
    rows = top5_rows(f"CNN n={nc}", cnn, loss_fn, Xi, yi, ref, peers=True, cheap=True)
    print(table(rows, ["problem", "method", "products", "wall_s", "rel_err", "converged"]), flush=True)
    return rows


def cnn_only():
    results = {}
    results["top5_cnn"] = cnn_top5(torch.nn.CrossEntropyLoss(), results)
    path = os.path.join(os.path.dirname(__file__), "results", "bench_spectrum_cnn.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(f"written {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small MLP (n=2,410), 3 seeds, no CNN")
    ap.add_argument("--no-cnn", action="store_true")
    ap.add_argument("--cnn-only", action="store_true", help="only the CNN top-5 comparison")
    args = ap.parse_args()
    if args.cnn_only:
        return cnn_only()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    hidden = 24 if args.quick else 55
    X, y = digits_data(num_samples=512, dtype=torch.float64)
    model = digits_mlp(hidden=hidden, depth=2, seed=0, dtype=torch.float64)
    train(model, X, y, steps=100, lr=0.1)
    loss_fn = torch.nn.CrossEntropyLoss()
    op = hesse.HessianOperator(model, loss_fn, (X, y))
    n = op.shape[0]
    print(f"MLP n={n}: building the dense Hessian and eigvalsh (ground truth)...", flush=True)
    (H, t_dense) = timed(lambda: op.to_dense())
    evals, t_eig = timed(lambda: torch.linalg.eigvalsh(H))
    truth5 = evals[-5:].flip(0).numpy()
    results = {"mlp_n": n, "dense_s": t_dense, "eigvalsh_s": t_eig}
    print("top-5 (MLP)...", flush=True)
    top = top5_rows(f"MLP n={n}", model, loss_fn, X, y, truth5)
    print(table(top, ["problem", "method", "products", "wall_s", "rel_err", "converged"]), flush=True)
    if not (args.quick or args.no_cnn):
        top += cnn_top5(loss_fn, results)
    results["top5"] = top
    print(table(top, ["problem", "method", "products", "wall_s", "rel_err", "converged"]), flush=True)
    print("trace...", flush=True)
    exact_trace = float(evals.sum())
    results["trace"] = trace_rows(model, loss_fn, X, y, exact_trace, seeds=3 if args.quick else 10)
    print(table(results["trace"], ["budget", "method", "mean_rel_err", "coverage_3se", "wall_s"]), flush=True)
    print("density...", flush=True)
    results["density"] = density_rows(model, loss_fn, X, y, evals)
    print(table(results["density"], ["method", "products", "w1_over_width", "wall_s"]), flush=True)
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "bench_spectrum.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)
    print(json.dumps({k: v for k, v in results.items() if not isinstance(v, list)}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    main()
