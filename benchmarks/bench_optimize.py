"""hesse.minimize against scipy.optimize and torch.optim.LBFGS, side by side in one run.

1. Problem suite (Moré-Garbow-Hillstrom and friends, hesse.testing.functions): success, iterations
   and evaluation counts per method pair: bfgs/BFGS, lbfgs/L-BFGS-B, trust-ncg/trust-ncg,
   trust-exact/trust-exact, newton-cg/Newton-CG. "true ok" re-checks each returned point with
   ||g||_2 <= 1e-4 and no negative Hessian eigenvalue (scipy's own flag is printed as well).
2. Chained Rosenbrock n = 1000 (ANCHORS): where peers stop at saddles / report false success.
3. Extended Rosenbrock n = 10^6 to ||g||_2 < 1e-5: hesse lbfgs vs scipy L-BFGS-B vs torch.optim.LBFGS
   (tolerances 0, strong Wolfe, history 10), wall time and final gradient norm.
4. Batched multi-start throughput against a Python loop.

All tools evaluate the same torch function (scipy through a float64 NumPy wrapper of one fused
value+gradient pass). torch runs with 1 thread (the shared 2-core machine thrashes with 2).
Run:  .venv/bin/python benchmarks/bench_optimize.py [--quick]
Writes benchmarks/results/bench_optimize.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import scipy.optimize as so
import torch

import hesse
from hesse.testing.functions import get_problem, problem_suite

PAIRS = [("bfgs", "BFGS"), ("lbfgs", "L-BFGS-B"), ("trust-ncg", "trust-ncg"),
         ("trust-exact", "trust-exact"), ("newton-cg", "Newton-CG")]


def scipy_wrappers(f):
    def fg(z):
        x = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        v = f(x)
        (g,) = torch.autograd.grad(v, x)
        return float(v), g.numpy()

    def hess(z):
        return hesse.hessian(f, torch.tensor(z, dtype=torch.float64)).numpy()

    def hessp(z, p):
        return hesse.hvp(f, torch.tensor(z, dtype=torch.float64), torch.tensor(p), mode="reverse").numpy()

    return fg, hess, hessp


def true_ok(f, x) -> tuple[bool, float]:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    g = float(hesse.gradient(f, x).norm())
    if x.numel() <= 500:
        lam = float(torch.linalg.eigvalsh(hesse.hessian(f, x))[0])
        H_scale = 1.0
    else:
        from hesse.spectrum import eigsh

        lam = float(eigsh(hesse.HessianOperator.from_function(f, x), k=1, which="smallest", tol=1e-4).values[0])
        H_scale = 1.0
    return g <= 1e-4 and lam >= -1e-6 * H_scale, g


def run_scipy(p, method):
    fg, hess, hessp = scipy_wrappers(p.f)
    kw = {"jac": True}
    if method == "trust-exact":
        kw["hess"] = hess
    elif method in ("trust-ncg", "Newton-CG"):
        kw["hessp"] = hessp
    opts = {"maxiter": 5000}
    if method in ("BFGS", "L-BFGS-B", "trust-ncg", "trust-exact"):
        opts["gtol"] = 1e-5
    if method == "BFGS":
        opts["norm"] = 2  # the same stopping test as hesse (||g||_2 <= gtol); scipy's default is max|g_i|
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = so.minimize(fg, p.x0.numpy(), method=method, options=opts, **kw)
    wall = time.perf_counter() - t
    ok, g = true_ok(p.f, r.x)
    return dict(success=bool(r.success), true_ok=ok, nit=int(r.nit), nfev=int(r.nfev),
                njev=int(getattr(r, "njev", 0) or 0), nhev=int(getattr(r, "nhev", 0) or 0),
                fun=float(r.fun), grad_norm=g, wall=wall)


def run_hesse(p, method):
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = hesse.minimize(p.f, p.x0, method=method, gtol=1e-5, max_iter=5000)
    wall = time.perf_counter() - t
    return dict(success=r.success, status=r.status, nit=r.nit, nfev=r.nfev, njev=r.njev, nhev=r.nhev,
                num_matvecs=r.num_matvecs, fun=r.fun, grad_norm=r.grad_norm, wall=wall)


def suite_benchmark(quick: bool):
    rows = []
    problems = [p for p in problem_suite() if p.name != "chained_rosenbrock"]
    problems += [get_problem("extended_rosenbrock", 1000), get_problem("broyden_tridiagonal", 1000)]
    if not quick:
        problems += [get_problem("extended_rosenbrock", 10_000), get_problem("broyden_tridiagonal", 10_000)]
    for p in problems:
        for ours, theirs in PAIRS:
            if p.n >= 1000 and ours in ("bfgs", "trust-exact"):
                continue  # dense n x n matrices: minutes per problem in both tools at n = 1000
            h = run_hesse(p, ours)
            s = run_scipy(p, theirs)
            rows.append(dict(problem=p.name, n=p.n, hesse_method=ours, scipy_method=theirs, hesse=h, scipy=s))
            print(f"{p.name:26s} n={p.n:<6d} {ours:12s} hesse {'OK' if h['success'] else 'st' + str(h['status']):5s} "
                  f"it={h['nit']:<5d} nfev={h['nfev']:<5d} | scipy {theirs:12s} flag={'OK' if s['success'] else '--'} "
                  f"true={'OK' if s['true_ok'] else '--'} it={s['nit']:<5d} nfev={s['nfev']:<5d}", flush=True)
    summary = {}
    for ours, theirs in PAIRS:
        sub = [r for r in rows if r["hesse_method"] == ours]
        solved_by_scipy = [r for r in sub if r["scipy"]["true_ok"]]
        missed = [r["problem"] for r in solved_by_scipy if not r["hesse"]["success"]]
        both = [r for r in sub if r["scipy"]["true_ok"] and r["hesse"]["success"]]
        ratio = [r["hesse"]["nfev"] / max(1, r["scipy"]["nfev"]) for r in both]
        summary[ours] = dict(
            scipy_method=theirs, problems=len(sub), hesse_success=sum(r["hesse"]["success"] for r in sub),
            scipy_flag_success=sum(r["scipy"]["success"] for r in sub),
            scipy_true_success=len(solved_by_scipy), hesse_missed_where_scipy_solved=missed,
            scipy_false_success=[r["problem"] for r in sub if r["scipy"]["success"] and not r["scipy"]["true_ok"]],
            median_nfev_ratio=statistics.median(ratio) if ratio else None,
            median_hesse_nfev=statistics.median([r["hesse"]["nfev"] for r in both]) if both else None,
            median_scipy_nfev=statistics.median([r["scipy"]["nfev"] for r in both]) if both else None,
        )
    return rows, summary


def chained_rosenbrock_benchmark(quick: bool):
    p = get_problem("chained_rosenbrock", 1000)
    out = []
    for ours in ("lbfgs", "trust-ncg", "newton-cg"):
        h = run_hesse(p, ours)
        out.append(dict(tool="hesse", method=ours, **h))
    for theirs in ("L-BFGS-B", "trust-ncg", "Newton-CG"):
        s = run_scipy(p, theirs)
        out.append(dict(tool="scipy", method=theirs, **s))
    try:
        import torchmin

        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = torchmin.minimize(p.f, p.x0.clone(), method="newton-exact", max_iter=200 if quick else 1000)
        ok, g = true_ok(p.f, r.x.detach())
        out.append(dict(tool="torchmin", method="newton-exact", success=bool(r.success), true_ok=ok,
                        nit=int(r.nit), fun=float(r.fun), grad_norm=g, wall=time.perf_counter() - t))
    except Exception as err:  # noqa: BLE001 - the peer's failure is a result
        out.append(dict(tool="torchmin", method="newton-exact", error=str(err)[:200]))
    for r in out:
        print(f"chained n=1000 {r['tool']:8s} {r['method']:12s} success={r.get('success')} "
              f"true_ok={r.get('true_ok', r.get('success'))} f={r.get('fun', float('nan')):.4g} "
              f"|g|={r.get('grad_norm', float('nan')):.2e} it={r.get('nit')} wall={r.get('wall', 0):.2f}s", flush=True)
    return out


def large_scale_benchmark(n: int, repeats: int):
    p = get_problem("extended_rosenbrock", n)
    res = {"n": n, "hesse": [], "scipy": [], "torch": []}
    for _ in range(repeats):
        # hesse
        t = time.perf_counter()
        r = hesse.minimize(p.f, p.x0, method="lbfgs", gtol=1e-5, check_curvature=False, max_iter=10_000)
        res["hesse"].append(dict(wall=time.perf_counter() - t, nit=r.nit, nfev=r.nfev, grad_norm=r.grad_norm,
                                 success=r.success))
        # scipy L-BFGS-B, stopped by the same 2-norm test through the callback
        fg, _, _ = scipy_wrappers(p.f)
        last = {}

        def fg_track(z):
            v, g = fg(z)
            last["z"], last["g"] = z.copy(), g
            return v, g

        def cb(intermediate_result):
            if "g" in last and np.array_equal(last["z"], intermediate_result.x) and np.linalg.norm(last["g"]) < 1e-5:
                raise StopIteration

        t = time.perf_counter()
        s = so.minimize(fg_track, p.x0.numpy(), jac=True, method="L-BFGS-B", callback=cb,
                        options={"maxiter": 10_000, "ftol": 0.0, "gtol": 0.0, "maxcor": 10})
        gn = float(hesse.gradient(p.f, torch.tensor(s.x)).norm())
        res["scipy"].append(dict(wall=time.perf_counter() - t, nit=int(s.nit), nfev=int(s.nfev), grad_norm=gn))
        # torch.optim.LBFGS with tolerances 0, stopped by the same test
        x = p.x0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([x], lr=1, max_iter=1, max_eval=50, tolerance_grad=0, tolerance_change=0,
                                history_size=10, line_search_fn="strong_wolfe")
        evals = [0]

        def closure():
            opt.zero_grad()
            v = p.f(x)
            v.backward()
            evals[0] += 1
            return v

        t = time.perf_counter()
        it = 0
        while it < 10_000:
            opt.step(closure)
            it += 1
            if float(x.grad.norm()) < 1e-5:
                break
        gn = float(hesse.gradient(p.f, x.detach()).norm())
        res["torch"].append(dict(wall=time.perf_counter() - t, nit=it, nfev=evals[0], grad_norm=gn))
    for k in ("hesse", "scipy", "torch"):
        res[k + "_median_wall"] = statistics.median(r["wall"] for r in res[k])
    res["ratio_vs_scipy"] = res["hesse_median_wall"] / res["scipy_median_wall"]
    res["ratio_vs_torch"] = res["hesse_median_wall"] / res["torch_median_wall"]
    # the cost of the success check (Lanczos smallest eigenvalue) at the solution, separately
    t = time.perf_counter()
    r = hesse.minimize(p.f, p.x0, method="lbfgs", gtol=1e-5, check_curvature=True)
    res["hesse_with_curvature_check"] = dict(wall=time.perf_counter() - t, min_eigenvalue=r.min_eigenvalue,
                                             num_matvecs=r.num_matvecs, success=r.success)
    print(f"extended Rosenbrock n={n}: hesse {res['hesse_median_wall']:.2f}s, scipy L-BFGS-B "
          f"{res['scipy_median_wall']:.2f}s, torch.optim.LBFGS {res['torch_median_wall']:.2f}s -> "
          f"ratio vs scipy {res['ratio_vs_scipy']:.2f}, vs torch {res['ratio_vs_torch']:.2f}", flush=True)
    return res


def batched_benchmark(B: int):
    def himmelblau(x):
        return (x[0] ** 2 + x[1] - 11) ** 2 + (x[0] + x[1] ** 2 - 7) ** 2

    g = torch.Generator().manual_seed(0)
    X0 = torch.rand(B, 2, generator=g, dtype=torch.float64) * 10 - 5
    out = {}
    for method in ("bfgs", "newton-damped"):
        t = time.perf_counter()
        rb = hesse.minimize(himmelblau, X0, method=method, batched=True)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        rl = [hesse.minimize(himmelblau, x, method=method) for x in X0]
        tl = time.perf_counter() - t
        out[method] = dict(B=B, batched_wall=tb, loop_wall=tl, speedup=tl / tb,
                           batched_success=sum(r.success for r in rb), loop_success=sum(r.success for r in rl))
        print(f"batched {method} B={B}: {tb:.2f}s vs loop {tl:.2f}s (x{tl / tb:.1f}); "
              f"success {out[method]['batched_success']}/{B} vs {out[method]['loop_success']}/{B}", flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller large-scale n (10^5), one repeat")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows, summary = suite_benchmark(args.quick)
    print("\nmethod       vs scipy      solved(hesse/scipy-true/scipy-flag)  missed  median nfev ratio")
    for k, v in summary.items():
        print(f"{k:12s} {v['scipy_method']:12s} {v['hesse_success']}/{v['scipy_true_success']}/{v['scipy_flag_success']} "
              f"of {v['problems']:<3d}  {v['hesse_missed_where_scipy_solved']}  {v['median_nfev_ratio']}")
    chained = chained_rosenbrock_benchmark(args.quick)
    large = large_scale_benchmark(100_000 if args.quick else 1_000_000, 1 if args.quick else 2)
    batched = batched_benchmark(256)
    out = dict(suite=rows, suite_summary=summary, chained_rosenbrock=chained, large_scale=large,
               batched=batched, torch_threads=1)
    path = Path(__file__).parent / "results" / "bench_optimize.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(dict(suite_summary=summary, large_scale={k: v for k, v in large.items()
                                                                if not isinstance(v, list)},
                          batched=batched), indent=1, default=str))


if __name__ == "__main__":
    main()
